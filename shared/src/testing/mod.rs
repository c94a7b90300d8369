//! What every integration test needs to stay out of the others' way: unique names for
//! databases and queue prefixes, and the addresses of the real services.

pub mod browser;
mod proxy;

pub use proxy::{Mode, ServiceProxy, upstream_of};

use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use crate::config::DatabaseUrl;

pub const DEFAULT_AMQP_URL: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";
pub const DEFAULT_DATABASE_URL: &str = "postgres://postgres@127.0.0.1:5432/postgres";

/// `test_<kind>_<pid>_<nanos>_<n>`: unique across tests, processes and runs; usable as a
/// database name and a queue-name prefix.
pub fn unique_name(kind: &str) -> String {
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .subsec_nanos();
    format!(
        "test_{kind}_{}_{nanos}_{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}

/// The broker tests use: `AMQP_URL`, or the local default.
pub fn amqp_url() -> String {
    std::env::var("AMQP_URL").unwrap_or_else(|_| DEFAULT_AMQP_URL.to_owned())
}

/// Database `name` on the server tests use (`DATABASE_URL`'s, or the local default).
pub fn database_url(name: &str) -> DatabaseUrl {
    let base: DatabaseUrl = std::env::var("DATABASE_URL")
        .unwrap_or_else(|_| DEFAULT_DATABASE_URL.to_owned())
        .parse()
        .expect("DATABASE_URL is a postgres URL");
    base.with_database(name)
}

/// A test's own slice of the real services: a fresh database (migrated), a queue-name
/// prefix with the topology declared, a media directory, and a broker channel in confirm
/// mode for the test to publish and look with.
pub struct Isolated {
    pub name: String,
    pub database: crate::config::DatabaseConfig,
    pub pool: crate::db::Pool,
    pub amqp: crate::config::AmqpConfig,
    pub topology: crate::amqp::Topology,
    pub media_dir: std::path::PathBuf,
    pub channel: lapin::Channel,
    pub connection: lapin::Connection,
    cleaned: std::sync::atomic::AtomicBool,
}

impl Isolated {
    pub async fn new(kind: &str) -> Self {
        crate::telemetry::init(crate::config::LogFormat::Pretty);
        let name = unique_name(kind);
        let database = crate::config::DatabaseConfig {
            url: database_url(&name),
            pool_size: 8,
        };
        let pool = crate::db::prepare(&database)
            .await
            .expect("a test database on the real PostgreSQL");
        let amqp = crate::config::AmqpConfig::new(&amqp_url(), &format!("{name}."))
            .expect("AMQP_URL is an AMQP URL");
        let connection =
            lapin::Connection::connect(amqp.url.as_str(), lapin::ConnectionProperties::default())
                .await
                .expect("the test connects to the real RabbitMQ");
        let topology = amqp.topology();
        topology
            .declare(&connection)
            .await
            .expect("topology declared");
        let channel = connection.create_channel().await.expect("a channel");
        channel
            .confirm_select(Default::default())
            .await
            .expect("confirm mode");
        let media_dir = std::env::temp_dir().join(&name);
        Self {
            name,
            database,
            pool,
            amqp,
            topology,
            media_dir,
            channel,
            connection,
            cleaned: std::sync::atomic::AtomicBool::new(false),
        }
    }

    /// `STORAGE_URL` of the media directory.
    pub fn storage(&self) -> crate::config::StorageConfig {
        crate::config::StorageConfig {
            url: format!("file://{}", self.media_dir.display()),
        }
    }

    /// Drops the database, deletes the queues and exchange, removes the media directory.
    pub async fn cleanup(&self) {
        self.cleaned.store(true, Ordering::Relaxed);
        self.pool.close();
        crate::db::drop_database(&self.database.url)
            .await
            .expect("drop the test database");
        self.topology
            .delete(&self.channel)
            .await
            .expect("delete the test topology");
        let _ = std::fs::remove_dir_all(&self.media_dir);
    }
}

impl Drop for Isolated {
    /// A test that failed before its cleanup leaves nothing behind either.
    fn drop(&mut self) {
        if self.cleaned.load(Ordering::Relaxed) {
            return;
        }
        remove_from_any_thread(
            self.database.url.clone(),
            self.amqp.clone(),
            self.media_dir.clone(),
        );
    }
}

/// Drops the database, deletes the queues and exchange and removes the media directory,
/// from a thread of its own: callers may be a `Drop` while the test's runtime unwinds.
pub fn remove_from_any_thread(
    database: crate::config::DatabaseUrl,
    amqp: crate::config::AmqpConfig,
    media_dir: std::path::PathBuf,
) {
    let _ = std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a runtime for the cleanup");
        runtime.block_on(async {
            let _ = crate::db::drop_database(&database).await;
            let connection = lapin::Connection::connect(
                amqp.url.as_str(),
                lapin::ConnectionProperties::default(),
            )
            .await;
            if let Ok(connection) = connection
                && let Ok(channel) = connection.create_channel().await
            {
                let _ = amqp.topology().delete(&channel).await;
            }
        });
        let _ = std::fs::remove_dir_all(media_dir);
    })
    .join();
}

/// Polls `check` every 50 ms until it holds; `Err` with the time waited if it never did
/// within `timeout`. The one way tests wait for something to happen.
pub async fn eventually<F, Fut>(timeout: std::time::Duration, mut check: F) -> Result<(), String>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = std::time::Instant::now() + timeout;
    loop {
        if check().await {
            return Ok(());
        }
        if std::time::Instant::now() >= deadline {
            return Err(format!("still not true after {timeout:?}"));
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

/// `GET url` and its JSON body; panics (with the URL) when either fails.
#[cfg(feature = "http")]
pub async fn get_json<T: serde::de::DeserializeOwned>(
    http: &reqwest::Client,
    url: impl AsRef<str>,
) -> T {
    let url = url.as_ref();
    http.get(url)
        .send()
        .await
        .unwrap_or_else(|err| panic!("GET {url}: {err}"))
        .json()
        .await
        .unwrap_or_else(|err| panic!("GET {url}: not JSON: {err}"))
}

/// Messages ready in `queue` (a passive declare: the queue must exist).
pub async fn queue_depth(channel: &lapin::Channel, queue: &str) -> u32 {
    passive_declare(channel, queue).await.message_count()
}

/// Consumers of `queue` (a passive declare: the queue must exist).
pub async fn queue_consumers(channel: &lapin::Channel, queue: &str) -> u32 {
    passive_declare(channel, queue).await.consumer_count()
}

async fn passive_declare(channel: &lapin::Channel, queue: &str) -> lapin::Queue {
    channel
        .queue_declare(
            queue.into(),
            lapin::options::QueueDeclareOptions {
                passive: true,
                ..Default::default()
            },
            lapin::types::FieldTable::default(),
        )
        .await
        .unwrap_or_else(|err| panic!("queue {queue}: {err}"))
}

/// A binary of the workspace, built beside the running test: `target/<profile>/<name>` (the
/// test itself runs from `target/<profile>/deps/`). Panics with what to do when it is not
/// built yet.
pub fn workspace_binary(name: &str) -> std::path::PathBuf {
    let test = std::env::current_exe().expect("the test's own path");
    let path = test
        .parent()
        .and_then(std::path::Path::parent)
        .expect("tests run from target/<profile>/deps")
        .join(name);
    assert!(
        path.exists(),
        "{} is missing: run `cargo build --workspace --bins` first (deploy/test does)",
        path.display()
    );
    path
}

/// The sum of a metric over all its label sets in this process's recorder (each test runs
/// in a process of its own under nextest): how a test observes that something happened.
pub fn metric_sum(name: &str) -> f64 {
    crate::metrics::sum_in(&crate::metrics::prometheus().render(), name, None)
}
