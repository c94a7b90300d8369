//! A webhook that arrives before the jobs API stored Replicate's id binds the job to the row
//! its webhook URL names (`?job=<row id>`): once, only a row still waiting for an id that the
//! ledger debited, and a row that already ended sends the webhook to the dead letters at
//! once, saying why.

use diesel::prelude::*;
use diesel_async::RunQueryDsl;
use serde_json::{Value, json};
use shared::db::schema::credit_transactions;

use crate::helpers::{Debited, TestEnv, prediction};
use crate::images;

const HOOK: &str = "https://hooks.example.com/api/webhooks/replicate";

fn tagged(job_id: &str, status: &str, output: Value, tag: &str) -> Value {
    let mut body = prediction(job_id, status, output);
    body["webhook"] = json!(format!("{HOOK}?job={tag}"));
    body
}

async fn debits_of(env: &TestEnv, key: &str) -> usize {
    credit_transactions::table
        .filter(credit_transactions::job_id.eq(key))
        .filter(credit_transactions::kind.eq("DEBIT"))
        .count()
        .get_result::<i64>(&mut env.conn().await)
        .await
        .unwrap() as usize
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_webhook_binds_only_the_waiting_row_its_url_names() -> anyhow::Result<()> {
    let images = images::start().await;
    let env = TestEnv::new(&images.host).await;
    env.insert_user("u1", 100).await;
    env.insert_unbound("waiting", "PENDING", Debited::Yes, chrono::Duration::zero())
        .await;
    env.insert_unbound(
        "header-only",
        "PENDING",
        Debited::Yes,
        chrono::Duration::zero(),
    )
    .await;
    env.insert_unbound(
        "not-debited",
        "PENDING",
        Debited::No,
        chrono::Duration::zero(),
    )
    .await;
    env.insert_unbound("gave-up", "FAILED", Debited::Yes, chrono::Duration::zero())
        .await;
    env.insert_generation("taken", "u1", "r-taken", "a corgi", 4)
        .await;
    let mut events = env.observe_events().await;
    let mut config = env.config.clone();
    config.unknown_job_retry_secs = 1;
    let worker = env.spawn_worker_with(config).await;

    // The body's own webhook URL (signed with it) names the row: bound, then run to the end.
    env.send("w1", &tagged("r-1", "starting", json!(null), "waiting"))
        .await;
    // The worker processes webhooks concurrently: wait for `starting` before `succeeded`, or
    // the late `starting` is (rightly) ignored and the browser never sees `PROCESSING`.
    env.wait_for_statuses(&[("waiting", "PROCESSING")]).await;
    let image = images.url("/img/one.png");
    env.send("w2", &tagged("r-1", "succeeded", json!([image]), "waiting"))
        .await;
    // A body without a webhook URL: the tag ingest read from the URL it was posted to.
    env.send_tagged(
        "w3",
        &prediction("r-2", "processing", json!(null)),
        Some("header-only"),
    )
    .await;
    env.wait_for_statuses(&[("waiting", "COMPLETED"), ("header-only", "PROCESSING")])
        .await;
    assert_eq!(env.job_id_of("waiting").await.as_deref(), Some("r-1"));
    assert_eq!(env.job_id_of("header-only").await.as_deref(), Some("r-2"));
    assert_eq!(
        debits_of(&env, "r-1").await,
        1,
        "the debit moved to Replicate's id"
    );
    assert_eq!(debits_of(&env, "waiting").await, 0);
    let statuses: Vec<(String, String)> = events
        .collect(std::time::Duration::from_millis(500))
        .await
        .iter()
        .map(|event| serde_json::to_value(event).unwrap())
        .filter(|event| event["job"]["id"] == "waiting" && event["seq"].is_i64())
        .map(|event| {
            (
                event["job"]["job_id"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned(),
                event["job"]["status"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned(),
            )
        })
        .collect();
    assert_eq!(
        statuses,
        [
            ("r-1".to_owned(), "PENDING".to_owned()),
            ("r-1".to_owned(), "PROCESSING".to_owned()),
            ("r-1".to_owned(), "COMPLETED".to_owned()),
        ],
        "the browser learns the job's id, then its progress"
    );

    // Tags that bind nothing: a row this ledger never debited, a row bound to another job,
    // a body whose own URL names no row (the header's tag is not believed over it).
    env.send("w4", &tagged("r-4", "starting", json!(null), "not-debited"))
        .await;
    env.send("w5", &tagged("r-5", "starting", json!(null), "taken"))
        .await;
    let mut untagged_body = prediction("r-6", "starting", json!(null));
    untagged_body["webhook"] = json!(HOOK);
    env.send_tagged("w6", &untagged_body, Some("not-debited"))
        .await;
    // A row that ended before Replicate's id was stored: dead-lettered at once, with why.
    env.send("w7", &tagged("r-7", "succeeded", json!([image]), "gave-up"))
        .await;

    let letters = shared::testing::eventually(std::time::Duration::from_secs(30), || async {
        env.queue_depth(&env.topology.dead_letter_queue()).await == 4
    })
    .await;
    assert!(
        letters.is_ok(),
        "the four unbindable webhooks end in the dead letters"
    );
    let letters = env.dead_letters().await;
    let reason_of = |job: &str| {
        letters
            .iter()
            .find(|(body, _)| body.contains(&format!("\"{job}\"")))
            .map(|(_, reason)| reason.clone())
            .unwrap()
    };
    assert!(
        reason_of("r-7").contains("before Replicate's id r-7 was stored"),
        "{letters:?}"
    );
    for job in ["r-4", "r-5", "r-6"] {
        assert!(
            reason_of(job).contains("job not found"),
            "{job}: {letters:?}"
        );
    }
    assert_eq!(env.job_id_of("not-debited").await, None);
    assert_eq!(env.status_of("not-debited").await, "PENDING");
    assert_eq!(env.job_id_of("taken").await.as_deref(), Some("r-taken"));
    assert_eq!(env.job_id_of("gave-up").await, None);
    worker.stop().await;
    env.cleanup().await;
    Ok(())
}
