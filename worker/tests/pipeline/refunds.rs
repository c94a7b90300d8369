//! Refunds happen exactly once per job, whatever arrives twice and however many workers race.

use serde_json::json;

use crate::helpers::{TestEnv, prediction};
use crate::images;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_failed_webhook_five_times_refunds_once() {
    let server = images::start().await;
    let env = TestEnv::new(&server.host).await;
    env.insert_user("u1", 100).await;
    env.insert_generation("g1", "u1", "r1", "a corgi", 25).await;
    let worker = env.spawn_worker().await;
    for _ in 0..5 {
        env.send("same-webhook-id", &prediction("r1", "failed", json!(null)))
            .await;
    }
    env.wait_for_statuses(&[("g1", "FAILED")]).await;
    env.wait_until_idle().await;
    assert_eq!(env.refunds_for("r1").await, vec![25]);
    assert_eq!(env.credits("u1").await, 125);
    worker.stop().await;
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_then_canceled_refunds_once() {
    let server = images::start().await;
    let env = TestEnv::new(&server.host).await;
    env.insert_user("u1", 0).await;
    env.insert_training("m1", "u1", "t1", 40).await;
    let worker = env.spawn_worker().await;
    env.send("a", &prediction("t1", "failed", json!(null)))
        .await;
    env.wait_for_statuses(&[("m1", "FAILED")]).await;
    env.send("b", &prediction("t1", "canceled", json!(null)))
        .await;
    env.send("c", &prediction("t1", "aborted", json!(null)))
        .await;
    env.wait_until_idle().await;
    assert_eq!(env.status_of("m1").await, "FAILED");
    assert_eq!(env.refunds_for("t1").await, vec![40]);
    assert_eq!(env.credits("u1").await, 40);
    worker.stop().await;
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_workers_racing_on_duplicates_refund_once() {
    let server = images::start().await;
    let env = TestEnv::new(&server.host).await;
    env.insert_user("u1", 0).await;
    let jobs = 20;
    for i in 0..jobs {
        env.insert_generation(&format!("g{i}"), "u1", &format!("r{i}"), "a corgi", 3)
            .await;
    }
    let first = env.spawn_worker().await;
    let second = env.spawn_worker().await;
    // Every job fails, and every webhook arrives four times (also as cancelled).
    for round in 0..4 {
        for i in 0..jobs {
            let status = if round % 2 == 0 { "failed" } else { "canceled" };
            env.send(
                &format!("m{i}-{round}"),
                &prediction(&format!("r{i}"), status, json!(null)),
            )
            .await;
        }
    }
    env.wait_until_idle().await;
    for i in 0..jobs {
        assert_eq!(env.refunds_for(&format!("r{i}")).await, vec![3], "job {i}");
    }
    assert_eq!(env.credits("u1").await, 3 * jobs);
    // One event per job, numbered 1..=jobs without gaps.
    assert_eq!(
        env.stored_seqs("u1").await,
        (1..=i64::from(jobs)).collect::<Vec<_>>()
    );
    first.stop().await;
    second.stop().await;
    env.cleanup().await;
}
