//! Building and running a worker: database (created and migrated), storage, downloader,
//! broker link, the consume loop, the outbox sweep and the `/metrics` + `/api/health`
//! server. Tests bind the metrics server to port 0, the same code path as production.

use std::future::Future;
use std::net::TcpListener;
use std::sync::Arc;
use std::time::Duration;

use actix_web::dev::Server;
use actix_web::{App, HttpServer, web};
use anyhow::Context;
use shared::db;
use shared::jobs::published_marks::PublishedMarks;
use tokio::sync::watch;

use crate::broker::Broker;
use crate::config::WorkerConfig;
use crate::consume::{Consumer, RetryPolicy};
use crate::download::Downloader;
use crate::process::Processor;
use crate::progress::ProgressTracker;
use crate::reconcile::Reconciler;
use crate::record::WebhookRecord;
use crate::store::MediaStore;
use crate::{health, sweep};

/// Jobs whose last progress is remembered (see [`ProgressTracker`]).
const PROGRESS_MEMORY: usize = 10_000;

pub struct Worker {
    consumer: Arc<Consumer>,
    reconciler: Reconciler,
    processor: Arc<Processor>,
    metrics_server: Server,
    metrics_port: u16,
    sweep_interval: Duration,
    drain: Duration,
}

impl Worker {
    pub async fn build(config: &WorkerConfig) -> anyhow::Result<Self> {
        config.reconcile.check()?;
        let pool = db::prepare(&config.database)
            .await
            .with_context(|| format!("preparing the database {}", config.database.url))?;
        let store = shared::storage::open(&config.storage.url)?;
        let downloader = Downloader::new(config.download.policy(), config.download.limits())
            .context("building the HTTP client")?;
        let broker = Arc::new(Broker::start(&config.amqp, config.prefetch));
        let processor = Arc::new(Processor {
            marks: PublishedMarks::start(pool.clone()),
            pool,
            broker: broker.clone(),
            downloader,
            media: MediaStore::new(store, &config.media_base_url),
            progress: ProgressTracker::new(PROGRESS_MEMORY),
        });
        let consumer = Arc::new(Consumer {
            broker,
            processor: processor.clone(),
            record: WebhookRecord::start(
                processor.pool.clone(),
                Duration::from_secs(config.webhook_record_retention_hours.saturating_mul(3600)),
            ),
            concurrency: config.concurrency.max(1),
            batch_size: config.batch_size.clamp(1, config.concurrency.max(1)),
            retry: RetryPolicy {
                unknown_job: Duration::from_secs(config.unknown_job_retry_secs),
                transient: Duration::from_secs(config.transient_retry_secs),
            },
        });

        shared::metrics::prometheus();
        let listener = TcpListener::bind(config.metrics_addr)
            .with_context(|| format!("binding WORKER_METRICS_ADDR {}", config.metrics_addr))?;
        let metrics_port = listener.local_addr()?.port();
        let state = web::Data::new(health::HealthState {
            processor: processor.clone(),
        });
        let metrics_server = HttpServer::new(move || {
            App::new()
                .app_data(state.clone())
                .route("/metrics", web::get().to(health::metrics))
                .route("/api/health", web::get().to(health::health))
        })
        .workers(1)
        .disable_signals()
        .listen(listener)?
        .run();
        let reconciler = Reconciler {
            api_url: config.reconcile.replicate.url.clone(),
            api_token: config.reconcile.replicate.token.get().cloned(),
            after: Duration::from_secs(config.reconcile.after_secs),
            interval: Duration::from_secs(config.reconcile.interval_secs.max(1)),
            database: config.database.url.clone(),
        };
        tracing::info!(metrics_addr = %config.metrics_addr, port = metrics_port, broker = %config.amqp.url, database = %config.database.url, reconciler = reconciler.api_token.is_some(), "worker ready");
        if reconciler.api_token.is_none() {
            tracing::warn!(
                "no REPLICATE_API_TOKEN: jobs whose webhooks go missing are not reconciled with Replicate (abandoned creations are still failed and refunded)"
            );
        }

        Ok(Self {
            consumer,
            reconciler,
            processor,
            metrics_server,
            metrics_port,
            sweep_interval: Duration::from_secs(config.outbox_sweep_secs.max(1)),
            drain: Duration::from_secs(config.shutdown_timeout_secs),
        })
    }

    pub fn metrics_port(&self) -> u16 {
        self.metrics_port
    }

    pub fn processor(&self) -> Arc<Processor> {
        self.processor.clone()
    }

    /// Processes webhooks until `shutdown` resolves; then stops taking deliveries,
    /// finishes those in flight and closes its connections.
    pub async fn run_until_stopped(self, shutdown: impl Future<Output = ()>) {
        let (stop, stopped) = watch::channel(false);
        let metrics_handle = self.metrics_server.handle();
        tokio::spawn(self.metrics_server);
        let sweeper = tokio::spawn(sweep::run(
            self.processor.clone(),
            self.sweep_interval,
            stopped.clone(),
        ));
        let reconciler = tokio::spawn(self.reconciler.run(self.processor.clone(), stopped.clone()));
        tokio::spawn(db::watch_database(
            self.processor.pool.clone(),
            stopped.clone(),
        ));
        let consumer = tokio::spawn(self.consumer.clone().run(stopped, self.drain));
        shutdown.await;
        tracing::info!("shutdown requested: finishing in-flight webhooks");
        let _ = stop.send(true);
        let _ = consumer.await;
        self.consumer.record.flush().await;
        let _ = sweeper.await;
        self.processor.marks.flush().await;
        let _ = reconciler.await;
        metrics_handle.stop(true).await;
        tracing::info!("worker stopped");
    }
}
