//! RabbitMQ or PostgreSQL going away and coming back: the worker reconnects by itself and
//! nothing is lost or applied twice.

use std::time::Duration;

use serde_json::json;
use shared::testing::{Mode, ServiceProxy, upstream_of};

use crate::helpers::{TestEnv, prediction};
use crate::images;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_worker_rides_out_broker_and_database_outages() {
    let server = images::start().await;
    let env = TestEnv::new(&server.host).await;
    env.insert_user("u1", 0).await;
    for i in 1..=2 {
        env.insert_generation(&format!("g{i}"), "u1", &format!("r{i}"), "a corgi", 5)
            .await;
    }
    let broker = ServiceProxy::start(upstream_of(env.config.amqp.url.as_str())).await;
    let database = ServiceProxy::start(upstream_of(env.config.database.url.as_str())).await;
    let mut config = env.config.clone();
    config.amqp.url = broker.url(env.config.amqp.url.as_str()).parse().unwrap();
    config.database.url = database
        .url(env.config.database.url.as_str())
        .parse()
        .unwrap();
    let worker = env.spawn_worker_with(config).await;
    let health = format!("http://127.0.0.1:{}/api/health", worker.metrics_port);
    let http = shared::http::client_builder().build().unwrap();

    // The broker goes away; a webhook waits in the (real) queue meanwhile.
    broker.set(Mode::Down);
    env.send(
        "during-broker-outage",
        &prediction("r1", "failed", json!(null)),
    )
    .await;
    health_says(&http, &health, "broker", "disconnected").await;
    assert_eq!(env.status_of("g1").await, "PENDING");
    broker.set(Mode::Forward);
    env.wait_for_statuses(&[("g1", "FAILED")]).await;

    // The database goes away; the webhook is retried until it is back.
    database.set(Mode::Down);
    env.send(
        "during-database-outage",
        &prediction("r2", "failed", json!(null)),
    )
    .await;
    health_says(&http, &health, "database", "disconnected").await;
    database.set(Mode::Forward);
    env.wait_for_statuses(&[("g2", "FAILED")]).await;
    env.wait_until_idle().await;

    assert_eq!(env.refunds_for("r1").await, vec![5]);
    assert_eq!(env.refunds_for("r2").await, vec![5]);
    assert_eq!(env.credits("u1").await, 10);
    assert!(env.dead_letters().await.is_empty());
    worker.stop().await;
    env.cleanup().await;
}

/// Waits until the worker's health reports `field` as `value`.
async fn health_says(http: &reqwest::Client, url: &str, field: &str, value: &str) {
    shared::testing::eventually(Duration::from_secs(20), || async {
        let Ok(response) = http.get(url).send().await else {
            return false;
        };
        response
            .json::<serde_json::Value>()
            .await
            .is_ok_and(|status| status[field] == value)
    })
    .await
    .unwrap_or_else(|err| panic!("health never said {field} {value}: {err}"));
}
