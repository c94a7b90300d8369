//! Building and running the server: the same code path in production and in tests (which
//! bind to port 0 and read the chosen port back).

use std::net::TcpListener;
use std::sync::Arc;
use std::time::Duration;

use actix_web::dev::{Server, ServerHandle};
use actix_web::{App, HttpServer, web};

use crate::body::BodyBudget;
use crate::config::IngestConfig;
use crate::publish::Publisher;
use crate::routes;
use crate::state::AppState;

pub struct Application {
    port: u16,
    server: Server,
    publisher: Arc<Publisher>,
}

impl Application {
    /// Binds the listener and starts connecting to the broker in the background. Starts
    /// even while RabbitMQ is down: webhooks are then answered 503 until it is back.
    pub fn build(config: &IngestConfig) -> std::io::Result<Self> {
        let listener = TcpListener::bind(config.addr)?;
        let port = listener.local_addr()?.port();
        let publisher = Arc::new(Publisher::start(
            &config.amqp,
            Duration::from_millis(config.publish_timeout_ms),
        ));
        let state = web::Data::new(AppState {
            verifier: config.webhook.verifier(),
            max_body_bytes: config.webhook.max_body_bytes,
            bodies: BodyBudget::new(
                config.body.slots.max(1),
                config.body.budget_bytes,
                Duration::from_secs(config.body.timeout_secs.max(1)),
            ),
            publisher: publisher.clone(),
        });
        // Install the recorder before the first request records anything.
        shared::metrics::prometheus();

        let server = HttpServer::new(move || {
            App::new()
                .app_data(state.clone())
                .route(
                    "/api/webhooks/replicate",
                    web::post().to(routes::webhook::receive),
                )
                .route("/api/health", web::get().to(routes::health::health))
                .route("/metrics", web::get().to(routes::health::metrics))
        })
        .listen(listener)?
        .shutdown_timeout(config.shutdown_timeout_secs)
        // actix treats SIGINT as a forced stop; both signals must drain gracefully.
        .disable_signals()
        .run();
        tokio::spawn(stop_gracefully_on_signal(server.handle()));
        tracing::info!(addr = %config.addr, port, broker = %config.amqp.url, "ingest listening");
        Ok(Self {
            port,
            server,
            publisher,
        })
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn publisher(&self) -> Arc<Publisher> {
        self.publisher.clone()
    }

    /// Stops the server gracefully when called (SIGINT/SIGTERM do the same).
    pub fn handle(&self) -> ServerHandle {
        self.server.handle()
    }

    /// Serves until SIGINT/SIGTERM or [`ServerHandle::stop`]: then stops accepting,
    /// finishes in-flight requests (and their confirms), and closes the broker connection.
    pub async fn run_until_stopped(self) -> std::io::Result<()> {
        let served = self.server.await;
        self.publisher.close().await;
        tracing::info!("ingest stopped");
        served
    }
}

/// Waits for SIGINT or SIGTERM, then stops the server gracefully.
async fn stop_gracefully_on_signal(server: ServerHandle) {
    shared::shutdown::signal().await;
    tracing::info!("shutdown requested: finishing in-flight webhooks");
    server.stop(true).await;
}
