//! End to end: every program as its own process on free ports against the real PostgreSQL
//! and RabbitMQ, a few hundred jobs of every kind created through the jobs API, with
//! duplicated, reordered and delayed webhooks, failures, cancellations and missing outputs
//! switched on in the simulator.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use diesel::prelude::*;
use diesel_async::RunQueryDsl;
use replicate_sim::accounts;
use replicate_sim::jobs_client::{JobsClient, Submitted, random_prompt};
use serde_json::Value;
use shared::db::schema::generations;
use shared::events::JobKind;

mod common;

use common::oracle::{self, Inbox, watch_user};
use common::{FAULTY_REPLICATE, JWT_SECRET, Pipeline};

const JOBS: usize = 300;
const USERS: usize = 10;
const START_CREDITS: i32 = 10_000;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_few_hundred_jobs_with_faults_end_exactly_as_the_simulator_decided() {
    let pipeline = Pipeline::start(FAULTY_REPLICATE, 2).await;
    let (http, pool, notifier) = (
        pipeline.http.clone(),
        pipeline.pool.clone(),
        pipeline.notifier.clone(),
    );
    let health: Value =
        shared::testing::get_json(&http, format!("http://{notifier}/api/health")).await;
    assert_eq!(health["webhook"], "configured", "{health}");
    assert_eq!(health["database"], "connected", "{health}");

    let client = JobsClient::new(&format!("http://{notifier}"), JWT_SECRET);
    let users: Vec<String> = (0..USERS).map(|i| format!("user-{i}")).collect();
    let mut inboxes = HashMap::new();
    let mut watchers = Vec::new();
    for (i, user) in users.iter().enumerate() {
        accounts::ensure_user(&pool, user, START_CREDITS)
            .await
            .unwrap();
        let inbox = Arc::new(Mutex::new(Inbox::default()));
        inboxes.insert(user.clone(), inbox.clone());
        // The first user's browser drops its connection after 5 events and resumes.
        let disconnect_after = (i == 0).then_some(5);
        watchers.push(tokio::spawn(watch_user(
            notifier.clone(),
            client.token(user, Duration::from_secs(3600)),
            inbox,
            disconnect_after,
        )));
    }
    oracle::wait_greeted(inboxes.values()).await;

    // Generations and trainings through the jobs API; now and then an upscale of a
    // generation that has completed meanwhile, as a user would.
    let mut submitted: Vec<Submitted> = Vec::new();
    let mut upscaled = std::collections::HashSet::new();
    for i in 0..JOBS {
        let user = &users[i % USERS];
        let job = if i % 10 == 2 {
            client.train(user, "my portraits").await.unwrap()
        } else {
            client.generate(user, random_prompt()).await.unwrap()
        };
        submitted.push(job);
        if i % 5 == 4 {
            let mut conn = shared::db::connection(&pool).await.unwrap();
            let done: Vec<(String, String)> = generations::table
                .filter(generations::status.eq("COMPLETED"))
                .filter(generations::prompt.not_like("[UPSCALED]%"))
                .select((generations::id, generations::user_id))
                .load(&mut conn)
                .await
                .unwrap();
            if let Some((id, owner)) = done.into_iter().find(|(id, _)| !upscaled.contains(id)) {
                upscaled.insert(id.clone());
                submitted.push(client.upscale(&owner, &id).await.unwrap());
            }
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let mut kinds_seen = BTreeMap::new();
    for job in &submitted {
        *kinds_seen.entry(job.kind.as_str()).or_insert(0) += 1;
    }
    for kind in [JobKind::Generation, JobKind::Upscale, JobKind::Training] {
        assert!(
            kinds_seen.contains_key(kind.as_str()),
            "no {kind} among {kinds_seen:?}"
        );
    }
    let total = submitted.len();

    // Everything ends as the simulator decided, and every browser saw it.
    let decided = oracle::settle(&pipeline.deployment(), Duration::from_secs(180)).await;
    assert_eq!(decided.len(), total, "one Replicate job per job created");
    oracle::wait_delivered(&pipeline.deployment(), &inboxes, Duration::from_secs(30)).await;
    let verdict = oracle::check(&pipeline.deployment(), &decided, START_CREDITS, &inboxes).await;
    verdict.assert_clean(total, pipeline.logs.display());
    println!(
        "e2e: {total} jobs {kinds_seen:?}, {} events checked; {} webhooks sent by the simulator",
        verdict.events_checked,
        decided
            .values()
            .map(|j| j["webhooks_sent"].as_u64().unwrap())
            .sum::<u64>()
    );
    for watcher in watchers {
        watcher.abort();
    }
    pipeline.stop().await;
}
