use std::time::{Duration, SystemTime, UNIX_EPOCH};

use actix_web::dev::ServerHandle;
use ingest::config::IngestConfig;
use ingest::startup::Application;
use lapin::message::Delivery;
use lapin::options::BasicGetOptions;
use lapin::{Channel, Connection, ConnectionProperties};
use shared::config::{AmqpConfig, LogFormat};
use shared::webhook::WebhookSecret;

pub use shared::testing::amqp_url as broker_url;

/// A name prefix no other test (or run) uses.
pub fn unique_prefix() -> String {
    format!("{}.", shared::testing::unique_name("ingest"))
}

pub fn now_secs() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

pub struct TestApp {
    pub address: String,
    pub secret: WebhookSecret,
    pub prefix: String,
    pub client: reqwest::Client,
    pub handle: ServerHandle,
    inspector: Option<(Connection, Channel)>,
}

/// Settings for a test instance: a fresh secret, a small body limit, a short confirm wait.
pub fn test_config(amqp_url: &str) -> (IngestConfig, WebhookSecret) {
    let secret = WebhookSecret::from_bytes(b"integration-test-secret-32-bytes".to_vec());
    let config = IngestConfig::for_test(
        secret.clone(),
        64 * 1024,
        1000,
        AmqpConfig::new(amqp_url, &unique_prefix()).unwrap(),
    );
    (config, secret)
}

/// Starts ingest with `config` and, when `wait_for_broker`, waits until it is connected.
pub async fn spawn_app(
    config: IngestConfig,
    secret: WebhookSecret,
    wait_for_broker: bool,
) -> TestApp {
    shared::telemetry::init(LogFormat::Pretty);
    let app = Application::build(&config).expect("ingest starts");
    let address = format!("http://127.0.0.1:{}", app.port());
    let publisher = app.publisher();
    let handle = app.handle();
    tokio::spawn(app.run_until_stopped());
    if wait_for_broker {
        assert!(
            publisher.wait_connected(Duration::from_secs(10)).await,
            "ingest did not connect to RabbitMQ"
        );
    }
    TestApp {
        address,
        secret,
        prefix: config.amqp.name_prefix.clone(),
        client: shared::http::client_builder()
            .timeout(Duration::from_secs(10))
            .build()
            .unwrap(),
        handle,
        inspector: None,
    }
}

/// Ingest against the real broker, connected.
pub async fn spawn_connected() -> TestApp {
    let (config, secret) = test_config(&broker_url());
    spawn_app(config, secret, true).await
}

impl TestApp {
    pub fn webhooks_queue(&self) -> String {
        shared::amqp::Topology::new(&self.prefix).webhooks_queue()
    }

    /// Headers signed with this instance's secret for `body`, timestamped `timestamp`.
    pub fn signed_headers(
        &self,
        id: &str,
        timestamp: i64,
        body: &[u8],
    ) -> Vec<(&'static str, String)> {
        vec![
            ("webhook-id", id.to_owned()),
            ("webhook-timestamp", timestamp.to_string()),
            ("webhook-signature", self.secret.sign(id, timestamp, body)),
        ]
    }

    pub async fn post(
        &self,
        headers: &[(&str, String)],
        body: impl Into<Vec<u8>>,
    ) -> reqwest::Response {
        self.post_to("/api/webhooks/replicate", headers, body).await
    }

    /// [`TestApp::post`] to `path` (with a query string, as Replicate calls a tagged URL).
    pub async fn post_to(
        &self,
        path: &str,
        headers: &[(&str, String)],
        body: impl Into<Vec<u8>>,
    ) -> reqwest::Response {
        let mut request = self
            .client
            .post(format!("{}{path}", self.address))
            .header("content-type", "application/json")
            .body(body.into());
        for (name, value) in headers {
            request = request.header(*name, value);
        }
        request.send().await.expect("request reaches ingest")
    }

    /// A correctly signed webhook, timestamped now.
    pub async fn post_signed(&self, id: &str, body: &[u8]) -> reqwest::Response {
        let headers = self.signed_headers(id, now_secs(), body);
        self.post(&headers, body.to_vec()).await
    }

    pub async fn get(&self, path: &str) -> reqwest::Response {
        self.client
            .get(format!("{}{path}", self.address))
            .send()
            .await
            .expect("request reaches ingest")
    }

    /// A channel of the test's own on the real broker, to look at what landed.
    pub async fn inspector(&mut self) -> &Channel {
        if self.inspector.is_none() {
            let connection = Connection::connect(&broker_url(), ConnectionProperties::default())
                .await
                .expect("test connects to RabbitMQ");
            let channel = connection.create_channel().await.unwrap();
            self.inspector = Some((connection, channel));
        }
        &self.inspector.as_ref().unwrap().1
    }

    /// Takes every message currently in this instance's webhook queue.
    pub async fn drain_queue(&mut self) -> Vec<Delivery> {
        let queue = self.webhooks_queue();
        let channel = self.inspector().await;
        let mut messages = Vec::new();
        while let Some(message) = channel
            .basic_get(queue.as_str().into(), BasicGetOptions { no_ack: true })
            .await
            .expect("basic.get")
        {
            messages.push(message.delivery);
        }
        messages
    }

    /// The `message_id`s (webhook-ids) of every message in the webhook queue, taken out.
    pub async fn drain_queued_ids(&mut self) -> Vec<String> {
        self.drain_queue()
            .await
            .iter()
            .map(|m| m.properties.message_id().as_ref().unwrap().to_string())
            .collect()
    }

    /// Stops the server gracefully and deletes this instance's queues and exchange.
    pub async fn cleanup(mut self) {
        self.handle.stop(true).await;
        let topology = shared::amqp::Topology::new(&self.prefix);
        let channel = self.inspector().await;
        topology
            .delete(channel)
            .await
            .expect("delete test topology");
    }
}
