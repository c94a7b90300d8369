//! Building and running the notifier: database (created and migrated if needed), the
//! broker link, and the HTTP/WebSocket server. Tests bind to port 0, the same code path.

use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use shared::db;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::api::jobs::JobsApi;
use crate::config::NotifierConfig;
use crate::ops::Operations;
use crate::push::hub::Hub;
use crate::web::dependencies::Dependencies;
use crate::web::router::route;
use crate::web::state::AppState;
use shared::auth::Auth;

/// How long a shutdown waits for sockets to close after telling them to.
const CLOSE_WAIT: Duration = Duration::from_secs(5);

pub struct Notifier {
    listener: TcpListener,
    port: u16,
    state: Arc<AppState>,
    shutdown: watch::Sender<bool>,
}

impl Notifier {
    pub async fn build(config: &NotifierConfig) -> anyhow::Result<Self> {
        let pool = db::prepare(&config.database)
            .await
            .with_context(|| format!("preparing the database {}", config.database.url))?;
        let media_root = match shared::storage::local_directory(&config.storage.url) {
            Some(dir) => {
                std::fs::create_dir_all(dir)
                    .with_context(|| format!("creating the media directory {dir}"))?;
                Some(PathBuf::from(dir))
            }
            None => None,
        };
        let listener = TcpListener::bind(config.addr)
            .await
            .with_context(|| format!("binding NOTIFIER_ADDR {}", config.addr))?;
        let port = listener.local_addr()?.port();
        shared::metrics::prometheus();
        if let Some(token) = &config.ops.operator_token
            && token.expose() == config.jwt_secret.expose()
        {
            anyhow::bail!(
                "OPERATOR_TOKEN must not be NOTIFIER_JWT_SECRET: whoever can mint a user's token would hold the console"
            );
        }
        let (shutdown, shutdown_rx) = watch::channel(false);
        let hub = Hub::start(
            &config.amqp,
            config.sockets,
            pool.clone(),
            shutdown_rx.clone(),
        );
        let jobs = JobsApi::new(&config.jobs, pool.clone(), &config.amqp);
        let ops = Operations::new(
            &config.ops,
            &config.amqp,
            &config.ingest_url,
            pool.clone(),
            jobs.clone(),
            hub.clone(),
        );
        tokio::spawn(db::watch_database(pool.clone(), shutdown_rx.clone()));
        tokio::spawn(ops.clone().export(shutdown_rx));
        metrics::gauge!("notifier_connections_limit").set(config.sockets.max_connections as f64);
        let state = Arc::new(AppState {
            auth: Auth::new(config.jwt_secret.expose()),
            hub,
            jobs,
            ops,
            operator_token: config.ops.operator_token.clone(),
            creation_deadline: config.jobs.replicate.creation_deadline(),
            pool,
            media_root,
            dependencies: Dependencies::new(
                format!("{}/api/health", config.ingest_url.trim_end_matches('/')),
                shared::http::client_builder()
                    .build()
                    .context("building the HTTP client")?,
            ),
        });
        tracing::info!(
            addr = %config.addr,
            port,
            broker = %config.amqp.url,
            database = %config.database.url,
            replicate = %config.jobs.replicate.url,
            job_creation = config.jobs.replicate.token.is_some(),
            operator_console = config.ops.operator_token.is_some(),
            webhook_url = %config.jobs.public_webhook_url,
            "notifier listening"
        );
        Ok(Self {
            listener,
            port,
            state,
            shutdown,
        })
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn state(&self) -> Arc<AppState> {
        self.state.clone()
    }

    /// Serves until `stop` resolves; then stops accepting, closes every socket with 1001
    /// (clients reconnect elsewhere) and closes the broker connection.
    pub async fn run_until_stopped(self, stop: impl Future<Output = ()>) {
        tokio::pin!(stop);
        loop {
            let accepted = tokio::select! {
                _ = &mut stop => break,
                accepted = self.listener.accept() => accepted,
            };
            let Ok((stream, _)) = accepted else {
                continue;
            };
            let state = self.state.clone();
            tokio::spawn(async move {
                let service = service_fn(move |request| route(request, state.clone()));
                let connection = http1::Builder::new()
                    .timer(TokioTimer::new())
                    .header_read_timeout(Duration::from_secs(10))
                    .serve_connection(TokioIo::new(stream), service)
                    .with_upgrades();
                let _ = connection.await;
            });
        }
        tracing::info!(
            connections = self.state.hub.open_connections(),
            "shutdown requested: closing sockets"
        );
        let _ = self.shutdown.send(true);
        let deadline = Instant::now() + CLOSE_WAIT;
        while self.state.hub.open_connections() > 0 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        // Creations under way end bound to their Replicate id or failed and refunded
        // before the exit (a debit is never left waiting for the reconciler).
        if !self.state.jobs.drain(self.state.creation_deadline).await {
            tracing::warn!("creations still under way at exit; the reconciler finishes them");
        }
        self.state.jobs.close().await;
        self.state.ops.close().await;
        self.state.hub.close().await;
        tracing::info!("notifier stopped");
    }
}
