//! `replicate-sim send` against a real ingest: the webhook is accepted and lands in the
//! queue; the printed curl command carries a signature ingest accepts.

use std::time::Duration;

use ingest::config::IngestConfig;
use ingest::startup::Application;
use lapin::options::BasicGetOptions;
use replicate_sim::send;
use shared::config::AmqpConfig;
use shared::webhook::{SignedHeaders, Verifier, WebhookSecret, WebhookSecrets};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn send_posts_a_correctly_signed_webhook_and_prints_curl() {
    let secret = WebhookSecret::from_bytes(b"sim-send-test-secret-of-32-bytes".to_vec());
    let prefix = format!("{}.", shared::testing::unique_name("send"));
    let amqp_url = shared::testing::amqp_url();
    let config = IngestConfig::for_test(
        secret.clone(),
        1024 * 1024,
        3000,
        AmqpConfig::new(&amqp_url, &prefix).unwrap(),
    );
    let app = Application::build(&config).unwrap();
    let to = format!("http://127.0.0.1:{}/api/webhooks/replicate", app.port());
    let publisher = app.publisher();
    let handle = app.handle();
    tokio::spawn(app.run_until_stopped());
    assert!(publisher.wait_connected(Duration::from_secs(10)).await);

    let body = send::body(
        "p-send",
        "succeeded",
        serde_json::json!(["https://replicate.delivery/x/out-0.png"]),
    );
    let (status, answer) = send::send(&secret, &to, "msg_send_1", &body).await.unwrap();
    assert_eq!(status, 200, "{answer}");
    assert!(answer.contains("msg_send_1"));

    let connection = lapin::Connection::connect(&amqp_url, lapin::ConnectionProperties::default())
        .await
        .unwrap();
    let channel = connection.create_channel().await.unwrap();
    let topology = config.amqp.topology();
    let message = channel
        .basic_get(
            topology.webhooks_queue().into(),
            BasicGetOptions { no_ack: true },
        )
        .await
        .unwrap()
        .expect("the webhook is in the queue");
    assert_eq!(message.delivery.data, body);

    // The curl command's headers verify against the same secret.
    let curl = send::curl_command(&secret, &to, "msg_curl", &body);
    let header = |name: &str| {
        curl.lines()
            .find_map(|line| line.trim().strip_prefix(&format!("-H '{name}: ")))
            .map(|rest| {
                rest.trim_end_matches(" \\")
                    .trim_end_matches('\'')
                    .to_owned()
            })
            .unwrap()
    };
    let (id, timestamp, signature) = (
        header("webhook-id"),
        header("webhook-timestamp"),
        header("webhook-signature"),
    );
    let verifier = Verifier::new(
        WebhookSecrets::new(vec![secret]).unwrap(),
        Duration::from_secs(300),
    );
    let signed = SignedHeaders {
        id: &id,
        timestamp: &timestamp,
        signature: &signature,
    };
    assert_eq!(verifier.verify(&signed, &body), Ok(()));
    assert!(curl.contains(&to) && curl.contains("--data-raw '{"));

    handle.stop(true).await;
    topology.delete(&channel).await.unwrap();
}
