//! Creating a job is as safe as receiving its webhooks: with Replicate answering creations
//! two seconds late (the job already running and sending webhooks), a client that hangs up
//! after half a second and a notifier SIGKILLed between Replicate's answer and storing its
//! id both leave a job that ends exactly as Replicate decided, with its images, debited
//! once and nothing dead-lettered.

mod common;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::oracle::{self, Inbox, watch_user};
use common::{JWT_SECRET, Pipeline};
use replicate_sim::accounts;
use replicate_sim::jobs_client::JobsClient;
use serde_json::{Value, json};

const START_CREDITS: i32 = 100;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_creation_survives_its_client_hanging_up_and_its_notifier_killed() {
    let mut pipeline = Pipeline::start_with(
        &["--step-ms", "40", "--create-delay-ms", "2000"],
        1,
        &[
            ("REPLICATE_CREATE_TIMEOUT_SECS", "5"),
            ("RECONCILE_AFTER_SECS", "10"),
            ("RECONCILE_INTERVAL_SECS", "1"),
        ],
    )
    .await;
    let client = JobsClient::new(&format!("http://{}", pipeline.notifier), JWT_SECRET);
    let user = "creator".to_owned();
    accounts::ensure_user(&pipeline.pool, &user, START_CREDITS)
        .await
        .unwrap();
    let inbox = Arc::new(Mutex::new(Inbox::default()));
    let watcher = tokio::spawn(watch_user(
        pipeline.notifier.clone(),
        client.token(&user, Duration::from_secs(3600)),
        inbox.clone(),
        None,
    ));
    oracle::wait_greeted([&inbox]).await;
    let create = |timeout: Duration| {
        let http = shared::http::client_builder()
            .timeout(timeout)
            .build()
            .unwrap();
        http.post(format!("http://{}/api/generations", pipeline.notifier))
            .bearer_auth(client.token(&user, Duration::from_secs(60)))
            .json(&json!({"prompt": "a corgi in the rain"}))
            .send()
    };
    let on_replicate = |count: usize| {
        let http = pipeline.http.clone();
        let sim = pipeline.sim.clone();
        async move {
            shared::testing::eventually(Duration::from_secs(10), || async {
                let jobs: Vec<Value> =
                    shared::testing::get_json(&http, format!("http://{sim}/sim/jobs")).await;
                jobs.len() >= count
            })
            .await
            .is_ok()
        }
    };

    // A browser that hangs up after half a second of a two-second creation.
    assert!(create(Duration::from_millis(500)).await.is_err());
    assert!(on_replicate(1).await, "the first job reached Replicate");

    // The notifier killed once Replicate has the job, before its answer arrives.
    let patient = tokio::spawn(create(Duration::from_secs(30)));
    assert!(on_replicate(2).await, "the second job reached Replicate");
    pipeline.kill("notifier").await;
    assert!(
        patient.await.unwrap().is_err(),
        "the creation's answer died with the notifier"
    );
    pipeline.restart("notifier");
    pipeline.wait_notifier_healthy().await;

    let decided = oracle::settle(&pipeline.deployment(), Duration::from_secs(60)).await;
    assert_eq!(decided.len(), 2, "two jobs ran on Replicate");
    let inboxes = HashMap::from([(user.clone(), inbox)]);
    let verdict = oracle::check(&pipeline.deployment(), &decided, START_CREDITS, &inboxes).await;
    watcher.abort();
    verdict.assert_clean(0, pipeline.logs.display());
    assert_eq!(verdict.jobs_checked, 2, "each creation made one job");
    pipeline.stop().await;
}
