//! The whole pipeline for a test: every program as its own process on free ports, against
//! the real PostgreSQL and RabbitMQ, isolated by a database and queue prefix of its own.
//! Dropping it stops the processes and removes the database, the queues and the media.

#![allow(dead_code)] // each test binary uses its own part

pub mod audience;
pub mod browser;
pub mod control;
pub mod creations;
pub mod logs;
pub mod oracle;
pub mod report;

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use shared::config::DatabaseConfig;
use shared::db::Pool;
use shared::webhook::WebhookSecret;
use tokio::process::{Child, Command};

pub const JWT_SECRET: &str = "pipeline-test-jwt-secret-32-bytes!";
/// The token the simulator expects and the notifier sends.
pub const REPLICATE_TOKEN: &str = "pipeline-test-token";

/// The simulator's arguments for runs under faults: duplicated, reordered and late
/// webhooks, failures, cancellations and outputs that cannot be fetched; Replicate's
/// terminal retries (1 + 2 + … + 32 s) compressed tenfold.
pub const FAULTY_REPLICATE: &[&str] = &[
    "--step-ms",
    "40",
    "--duplicate-rate",
    "0.2",
    "--reorder-rate",
    "0.2",
    "--max-delay-ms",
    "200",
    "--fail-rate",
    "0.1",
    "--cancel-rate",
    "0.1",
    "--missing-output-rate",
    "0.05",
    "--retry-scale",
    "0.1",
];

/// The secret Replicate (the simulator) signs this pipeline's webhooks with.
pub fn webhook_secret() -> WebhookSecret {
    WebhookSecret::from_bytes(b"e2e-webhook-secret-of-32-bytes!!".to_vec())
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// How many of each program run, and the broker nodes they are given.
pub struct Shape<'a> {
    pub ingests: usize,
    pub workers: usize,
    pub notifiers: usize,
    /// Every node of a RabbitMQ cluster: each program gets all of them, starting at a
    /// different one so that the programs spread over the cluster. Empty: this machine's
    /// broker.
    pub amqp_nodes: &'a [String],
}

/// The name of the `index`th replica of a program: `ingest`, `ingest-2`, …
pub fn replica_name(program: &str, index: usize) -> String {
    if index == 0 {
        program.to_owned()
    } else {
        format!("{program}-{}", index + 1)
    }
}

pub struct Pipeline {
    pub name: String,
    /// Every process's log, `<name>.log`.
    pub logs: PathBuf,
    pub media: PathBuf,
    pub database: DatabaseConfig,
    pub pool: Pool,
    pub amqp_url: String,
    /// Queue and exchange name prefix of this pipeline.
    pub prefix: String,
    /// `host:port` of each program; `ingest` and `notifier` are the first replicas.
    pub sim: String,
    pub ingest: String,
    pub notifier: String,
    pub ingests: Vec<String>,
    pub notifiers: Vec<String>,
    pub worker_ports: Vec<u16>,
    pub http: reqwest::Client,
    children: Vec<(String, Child)>,
    /// How each program was started, to start it again.
    specs: std::collections::HashMap<String, Spec>,
    stopped: bool,
}

#[derive(Clone)]
struct Spec {
    program: String,
    args: Vec<String>,
    env: Vec<(String, String)>,
}

impl Pipeline {
    /// This pipeline as the oracle sees it.
    pub fn deployment(&self) -> oracle::Deployment<'_> {
        oracle::Deployment {
            http: &self.http,
            sim: &self.sim,
            pool: &self.pool,
            amqp_url: &self.amqp_url,
            prefix: &self.prefix,
            media_base: format!("http://{}/media", self.notifier),
            logs: self.logs.display().to_string(),
        }
    }

    /// Starts the simulator (with `sim_args` after `serve`), ingest, `workers` workers and
    /// the notifier (its jobs API pointed at the simulator), and waits until all are healthy.
    pub async fn start(sim_args: &[&str], workers: usize) -> Self {
        Self::start_with(sim_args, workers, &[]).await
    }

    /// [`Pipeline::start`] with extra environment for every program.
    pub async fn start_with(sim_args: &[&str], workers: usize, extra: &[(&str, &str)]) -> Self {
        let shape = Shape {
            ingests: 1,
            workers,
            notifiers: 1,
            amqp_nodes: &[],
        };
        Self::start_shaped(sim_args, shape, extra).await
    }

    /// Starts the simulator and the programs `shape` asks for, with extra environment for
    /// each. Notifier `i` gives Replicate ingest `i mod ingests` as its webhook URL, so
    /// jobs created through different notifiers spread their webhooks over the ingests.
    pub async fn start_shaped(sim_args: &[&str], shape: Shape<'_>, extra: &[(&str, &str)]) -> Self {
        let workers = shape.workers;
        shared::telemetry::init(shared::config::LogFormat::Pretty);
        let name = shared::testing::unique_name("e2e");
        let logs = Path::new(env!("CARGO_TARGET_TMPDIR")).join(&name);
        std::fs::create_dir_all(&logs).unwrap();
        let media = std::env::temp_dir().join(&name);
        let database = DatabaseConfig {
            url: shared::testing::database_url(&name),
            pool_size: 8,
        };
        let pool = shared::db::prepare(&database).await.unwrap();
        let amqp_url = shape
            .amqp_nodes
            .first()
            .cloned()
            .unwrap_or_else(shared::testing::amqp_url);
        let prefix = format!("{name}.");
        let secret = webhook_secret().to_whsec();
        let sim = format!("127.0.0.1:{}", free_port());
        let ingests: Vec<String> = (0..shape.ingests.max(1))
            .map(|_| format!("127.0.0.1:{}", free_port()))
            .collect();
        let notifiers: Vec<String> = (0..shape.notifiers.max(1))
            .map(|_| format!("127.0.0.1:{}", free_port()))
            .collect();
        let mut pipeline = Self {
            name,
            logs,
            media,
            database,
            pool,
            amqp_url,
            prefix,
            sim,
            ingest: ingests[0].clone(),
            notifier: notifiers[0].clone(),
            ingests,
            notifiers,
            worker_ports: (0..workers).map(|_| free_port()).collect(),
            http: shared::http::client_builder().build().unwrap(),
            children: Vec::new(),
            specs: std::collections::HashMap::new(),
            stopped: false,
        };
        let common = vec![
            ("DATABASE_URL", pipeline.database.url.as_str().to_owned()),
            ("AMQP_URL", pipeline.amqp_url.clone()),
            ("AMQP_NAME_PREFIX", pipeline.prefix.clone()),
            ("REPLICATE_WEBHOOK_SECRET", secret),
            ("REPLICATE_API_TOKEN", REPLICATE_TOKEN.to_owned()),
            ("REPLICATE_API_URL", format!("http://{}/v1", pipeline.sim)),
            ("NOTIFIER_JWT_SECRET", JWT_SECRET.to_owned()),
            (
                "STORAGE_URL",
                format!("file://{}", pipeline.media.display()),
            ),
            (
                "MEDIA_BASE_URL",
                format!("http://{}/media", pipeline.notifier),
            ),
            ("DOWNLOAD_ALLOWED_HOSTS", pipeline.sim.clone()),
            ("DOWNLOAD_ALLOW_HTTP", "true".to_owned()),
        ];
        // Each program's broker nodes, the list turned by one for each program started.
        let started = std::cell::Cell::new(0usize);
        let with = |own: &[(&'static str, String)]| {
            let mut env = common.clone();
            env.extend(extra.iter().map(|(k, v)| (*k, (*v).to_owned())));
            let nodes = shape.amqp_nodes;
            if !nodes.is_empty() {
                let first = started.replace(started.get() + 1) % nodes.len();
                let turned: Vec<&str> = nodes[first..]
                    .iter()
                    .chain(&nodes[..first])
                    .map(String::as_str)
                    .collect();
                env.push(("AMQP_URL", turned.join(" ")));
            }
            env.extend_from_slice(own);
            env
        };
        let mut sim_command = vec!["serve"];
        sim_command.extend_from_slice(sim_args);
        pipeline.spawn(
            "replicate-sim",
            "replicate-sim",
            &sim_command,
            &with(&[("SIM_ADDR", pipeline.sim.clone())]),
        );
        for (i, addr) in pipeline.ingests.clone().iter().enumerate() {
            pipeline.spawn(
                &replica_name("ingest", i),
                "ingest",
                &[],
                &with(&[("INGEST_ADDR", addr.clone())]),
            );
        }
        for (i, port) in pipeline.worker_ports.clone().into_iter().enumerate() {
            pipeline.spawn(
                &format!("worker-{i}"),
                "worker",
                &[],
                &with(&[("WORKER_METRICS_ADDR", format!("127.0.0.1:{port}"))]),
            );
        }
        for (i, addr) in pipeline.notifiers.clone().iter().enumerate() {
            let ingest = &pipeline.ingests[i % pipeline.ingests.len()];
            pipeline.spawn(
                &replica_name("notifier", i),
                "notifier",
                &[],
                &with(&[
                    ("NOTIFIER_ADDR", addr.clone()),
                    (
                        "PUBLIC_WEBHOOK_URL",
                        format!("http://{ingest}/api/webhooks/replicate"),
                    ),
                    ("TRAINING_DESTINATION", "e2e/portraits".to_owned()),
                    ("INGEST_URL", format!("http://{ingest}")),
                ]),
            );
        }
        let health = |addr: &String| format!("http://{addr}/api/health");
        let ingests: Vec<String> = pipeline.ingests.iter().map(health).collect();
        let notifiers: Vec<String> = pipeline.notifiers.iter().map(health).collect();
        let workers: Vec<String> = (pipeline.worker_ports.iter())
            .map(|port| health(&format!("127.0.0.1:{port}")))
            .collect();
        for (program, urls) in [
            ("ingest", ingests),
            ("worker", workers),
            ("notifier", notifiers),
        ] {
            for (i, url) in urls.iter().enumerate() {
                pipeline.wait_healthy(&replica_name(program, i), url).await;
            }
        }
        pipeline
    }

    fn spawn(&mut self, name: &str, program: &str, args: &[&str], env: &[(&str, String)]) {
        let spec = Spec {
            program: program.to_owned(),
            args: args.iter().map(|a| (*a).to_owned()).collect(),
            env: env
                .iter()
                .map(|(k, v)| ((*k).to_owned(), v.clone()))
                .collect(),
        };
        self.specs.insert(name.to_owned(), spec.clone());
        self.launch(name, &spec);
    }

    fn launch(&mut self, name: &str, spec: &Spec) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.logs.join(format!("{name}.log")))
            .unwrap();
        let mut command = Command::new(shared::testing::workspace_binary(&spec.program));
        command
            .args(&spec.args)
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("RUST_LOG", "info")
            .stdout(Stdio::from(log.try_clone().unwrap()))
            .stderr(Stdio::from(log))
            .kill_on_drop(true);
        for (key, value) in &spec.env {
            command.env(key, value);
        }
        self.children.retain(|(existing, _)| existing != name);
        self.children
            .push((name.to_owned(), command.spawn().unwrap()));
    }

    /// SIGKILL: the program dies at once, mid-work.
    pub async fn kill(&mut self, name: &str) {
        let child = &mut self
            .children
            .iter_mut()
            .find(|(existing, _)| existing == name)
            .unwrap_or_else(|| panic!("no program {name}"))
            .1;
        child.kill().await.unwrap();
    }

    /// The process id of a running program.
    pub fn pid(&self, name: &str) -> Option<u32> {
        self.children
            .iter()
            .find(|(existing, _)| existing == name)
            .and_then(|(_, child)| child.id())
    }

    /// Starts a killed program again, as it was started first.
    pub fn restart(&mut self, name: &str) {
        let spec = self.specs[name].clone();
        self.launch(name, &spec);
    }

    /// Waits until `url` answers 200.
    pub async fn wait_healthy(&self, name: &str, url: &str) {
        let healthy = shared::testing::eventually(Duration::from_secs(20), || async {
            matches!(self.http.get(url).send().await, Ok(response) if response.status() == 200)
        })
        .await;
        assert!(
            healthy.is_ok(),
            "{name} never became healthy at {url}; logs in {}",
            self.logs.display()
        );
    }

    /// Waits until the (first) notifier answers healthy.
    pub async fn wait_notifier_healthy(&self) {
        let url = format!("http://{}/api/health", self.notifier);
        self.wait_healthy("notifier", &url).await;
    }

    /// The log of one program, for assertions on what operators see.
    pub fn log(&self, name: &str) -> String {
        std::fs::read_to_string(self.logs.join(format!("{name}.log"))).unwrap_or_default()
    }

    /// SIGTERM to every program; each must exit 0 (graceful shutdown) within its own drain
    /// time (`SHUTDOWN_TIMEOUT_SECS`, 30 s) and a margin. Then the database, queues and
    /// media are removed.
    pub async fn stop(mut self) {
        for (_, child) in &self.children {
            let pid = child.id().unwrap().to_string();
            std::process::Command::new("kill")
                .args(["-TERM", &pid])
                .status()
                .unwrap();
        }
        for (name, child) in &mut self.children {
            let status = tokio::time::timeout(Duration::from_secs(45), child.wait())
                .await
                .unwrap()
                .unwrap();
            assert!(
                status.success(),
                "{name} exited with {status}; see {}",
                self.logs.display()
            );
        }
        self.stopped = true;
        self.remove_resources();
    }

    fn remove_resources(&self) {
        self.pool.close();
        shared::testing::remove_from_any_thread(
            self.database.url.clone(),
            shared::config::AmqpConfig::new(&self.amqp_url, &self.prefix)
                .expect("the test's AMQP settings are valid"),
            self.media.clone(),
        );
    }
}

impl Drop for Pipeline {
    /// A test that failed midway leaves nothing behind: processes are killed (kill on
    /// drop), then the database, queues and media are removed.
    fn drop(&mut self) {
        if self.stopped {
            return;
        }
        self.children.clear();
        self.remove_resources();
    }
}
