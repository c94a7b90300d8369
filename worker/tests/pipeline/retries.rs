//! Webhooks for jobs not in the database yet are retried with growing delays, then
//! dead-lettered with the reason; webhooks that can never be processed go there at once.

use std::time::{Duration, Instant};

use serde_json::json;

use crate::helpers::{TestEnv, prediction};
use crate::images;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_inserted_after_its_webhook_was_retried_twice_is_processed() {
    let server = images::start().await;
    let env = TestEnv::new(&server.host).await;
    env.insert_user("u1", 0).await;
    let worker = env.spawn_worker().await;
    env.send("early", &prediction("r-late", "failed", json!(null)))
        .await;
    // Not found at first, then again after the first delay: waiting for the next.
    shared::testing::eventually(Duration::from_secs(10), || async {
        shared::testing::metric_sum("worker_retries_total") >= 2.0
    })
    .await
    .expect("the webhook is retried");
    env.insert_generation("g-late", "u1", "r-late", "a corgi", 8)
        .await;
    env.wait_for_statuses(&[("g-late", "FAILED")]).await;
    assert_eq!(env.refunds_for("r-late").await, vec![8]);
    assert!(env.dead_letters().await.is_empty());
    worker.stop().await;
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_that_never_appears_is_dead_lettered_with_the_reason() {
    let server = images::start().await;
    let env = TestEnv::new(&server.host).await;
    let mut config = env.config.clone();
    config.unknown_job_retry_secs = 2;
    let worker = env.spawn_worker_with(config).await;
    let body = prediction(
        "r-never",
        "succeeded",
        json!(["https://replicate.delivery/x.png"]),
    );
    env.send("never", &body).await;
    // Also a body that is no prediction at all: dead-lettered at once.
    env.send("garbage", &json!({"id": 5, "status": []})).await;

    let deadline = Instant::now() + Duration::from_secs(30);
    let mut dead = Vec::new();
    while dead.len() < 2 {
        assert!(Instant::now() < deadline, "dead letters: {dead:?}");
        dead.extend(env.dead_letters().await);
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    dead.sort();
    let (never_body, never_reason) = dead.iter().find(|(b, _)| b.contains("r-never")).unwrap();
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(never_body).unwrap(),
        body
    );
    assert!(never_reason.contains("job not found"), "{never_reason}");
    let (_, garbage_reason) = dead.iter().find(|(b, _)| !b.contains("r-never")).unwrap();
    assert!(
        garbage_reason.contains("not a Replicate prediction"),
        "{garbage_reason}"
    );
    env.wait_until_idle().await;
    worker.stop().await;
    env.cleanup().await;
}
