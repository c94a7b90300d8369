//! The broker unreachable, hanging, losing a queue, and coming back: never a 200 for a
//! webhook that is not durably enqueued, never a hanging request, no restart needed.

use std::time::Duration;

use serde_json::Value;

use crate::helpers::{TestApp, broker_url, spawn_app, test_config};
use shared::testing::{Mode, ServiceProxy, upstream_of};

const BODY: &[u8] = br#"{"id":"p-outage","status":"succeeded"}"#;

async fn wait_for_health(app: &TestApp, expected: u16) -> Value {
    for _ in 0..100 {
        let response = app.get("/api/health").await;
        if response.status() == expected {
            return response.json().await.unwrap();
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("/api/health never answered {expected}");
}

#[tokio::test]
async fn broker_unreachable_at_start_up_gives_503_and_unhealthy() {
    // Nothing listens on port 1: ingest must still start.
    let (config, secret) = test_config("amqp://guest:guest@127.0.0.1:1/%2f");
    let app = spawn_app(config, secret, false).await;

    let response = app.post_signed("msg_down", BODY).await;
    assert_eq!(response.status(), 503);
    let error: Value = response.json().await.unwrap();
    assert!(error["error"].as_str().unwrap().contains("broker"));

    let health = app.get("/api/health").await;
    assert_eq!(health.status(), 503);
    let health: Value = health.json().await.unwrap();
    assert_eq!(health["status"], "unhealthy");
    assert_eq!(health["broker"], "disconnected");
}

#[tokio::test]
async fn broker_going_away_and_coming_back_needs_no_restart() {
    let proxy = ServiceProxy::start(upstream_of(&broker_url())).await;
    let (config, secret) = test_config(&proxy.url(&broker_url()));
    let mut app = spawn_app(config, secret, true).await;
    assert_eq!(app.post_signed("msg_before", BODY).await.status(), 200);

    proxy.set(Mode::Down);
    wait_for_health(&app, 503).await;
    assert_eq!(app.post_signed("msg_during", BODY).await.status(), 503);

    proxy.set(Mode::Forward);
    let health = wait_for_health(&app, 200).await;
    assert_eq!(health["broker"], "connected");
    assert_eq!(app.post_signed("msg_after", BODY).await.status(), 200);

    assert_eq!(app.drain_queued_ids().await, ["msg_before", "msg_after"]);
    app.cleanup().await;
}

#[tokio::test]
async fn a_webhook_whose_node_goes_away_under_it_is_published_on_the_next() {
    // Two nodes: a proxy in front of the broker first, the broker itself second.
    let proxy = ServiceProxy::start(upstream_of(&broker_url())).await;
    let nodes = format!("{} {}", proxy.url(&broker_url()), broker_url());
    let (config, secret) = test_config(&nodes);
    let mut app = spawn_app(config, secret, true).await;
    assert_eq!(app.post_signed("msg_first_node", BODY).await.status(), 200);

    // The node in use goes away just before the webhook comes: no 503 for Replicate, the
    // webhook waits for the link on the second node and is enqueued there.
    proxy.set(Mode::Down);
    let response = app.post_signed("msg_failed_over", BODY).await;
    assert_eq!(response.status(), 200, "{}", response.text().await.unwrap());

    assert_eq!(
        app.drain_queued_ids().await,
        ["msg_first_node", "msg_failed_over"]
    );
    app.cleanup().await;
}

#[tokio::test]
async fn confirm_not_received_in_time_is_503() {
    let proxy = ServiceProxy::start(upstream_of(&broker_url())).await;
    let (config, secret) = test_config(&proxy.url(&broker_url()));
    let mut app = spawn_app(config, secret, true).await;

    // The connection stays open but the broker's confirm never comes back.
    proxy.set(Mode::Freeze);
    let response = app.post_signed("msg_frozen", BODY).await;
    assert_eq!(response.status(), 503);
    let error: Value = response.json().await.unwrap();
    assert!(
        error["error"].as_str().unwrap().contains("confirm"),
        "{error}"
    );

    proxy.set(Mode::Forward);
    wait_for_health(&app, 200).await;
    // Whether the frozen message reached the queue is the broker's business: it was not
    // acknowledged with a 200, so Replicate retries it.
    app.drain_queue().await;
    app.cleanup().await;
}

#[tokio::test]
async fn unroutable_publish_is_503() {
    let (config, secret) = test_config(&broker_url());
    let mut app = spawn_app(config, secret, true).await;
    // The queue vanishes under a connected ingest: the broker returns the message.
    let queue = app.webhooks_queue();
    app.inspector()
        .await
        .queue_delete(queue.as_str().into(), Default::default())
        .await
        .unwrap();

    let response = app.post_signed("msg_unroutable", BODY).await;
    assert_eq!(response.status(), 503);
    let error: Value = response.json().await.unwrap();
    assert!(
        error["error"].as_str().unwrap().contains("route"),
        "{error}"
    );
    app.cleanup().await;
}

#[tokio::test]
async fn graceful_shutdown_finishes_in_flight_webhooks() {
    let proxy = ServiceProxy::start(upstream_of(&broker_url())).await;
    let (config, secret) = test_config(&proxy.url(&broker_url()));
    let mut app = spawn_app(config, secret, true).await;

    // A webhook is in flight, waiting for its confirm, when the shutdown starts.
    proxy.set(Mode::Freeze);
    let in_flight = {
        let client = app.client.clone();
        let url = format!("{}/api/webhooks/replicate", app.address);
        let headers = app.signed_headers("msg_in_flight", crate::helpers::now_secs(), BODY);
        tokio::spawn(async move {
            let mut request = client.post(url).body(BODY.to_vec());
            for (name, value) in headers {
                request = request.header(name, value);
            }
            request
                .send()
                .await
                .map(|response| response.status().as_u16())
        })
    };
    // The webhook's publish is held by the frozen broker: it is in flight.
    proxy.wait_until_holding().await;
    let stopping = tokio::spawn(app.handle.clone().stop(true));
    // The server has stopped taking connections: the shutdown is under way.
    let address = app.address.trim_start_matches("http://").to_owned();
    shared::testing::eventually(Duration::from_secs(10), || {
        let address = address.clone();
        async move { tokio::net::TcpStream::connect(address).await.is_err() }
    })
    .await
    .expect("the server stops accepting");
    proxy.set(Mode::Forward);

    assert_eq!(
        in_flight.await.unwrap().unwrap(),
        200,
        "the in-flight webhook is confirmed and answered"
    );
    stopping.await.unwrap();
    assert!(
        app.client
            .get(format!("{}/api/health", app.address))
            .send()
            .await
            .is_err(),
        "no new requests after the shutdown"
    );
    assert_eq!(app.drain_queued_ids().await, ["msg_in_flight"]);
    app.cleanup().await;
}
