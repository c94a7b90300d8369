//! End to end: every program as its own process on free ports against the real PostgreSQL
//! and RabbitMQ, a few hundred jobs of every kind created through the jobs API, with
//! duplicated, reordered and delayed webhooks, failures, cancellations and missing outputs
//! switched on in the simulator.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use diesel::prelude::*;
use diesel_async::RunQueryDsl;
use futures_util::StreamExt;
use lapin::options::QueueDeclareOptions;
use lapin::types::FieldTable;
use replicate_sim::jobs_client::{JobsClient, Submitted, random_prompt};
use replicate_sim::{accounts, images};
use serde_json::Value;
use shared::db::schema::{ai_models, credit_transactions, generations, users};
use shared::events::JobKind;
use tokio_tungstenite::tungstenite::Message;

mod common;

use common::{JWT_SECRET, Pipeline};

const JOBS: usize = 300;
const USERS: usize = 10;
const START_CREDITS: i32 = 10_000;

/// Everything one user's browser received, across reconnects.
#[derive(Default)]
struct Inbox {
    events: Vec<Value>,
}

async fn watch_user(
    notifier: String,
    token: String,
    inbox: Arc<Mutex<Inbox>>,
    disconnect_after: Option<usize>,
) {
    let mut since: Option<i64> = None;
    let mut drop_after = disconnect_after;
    loop {
        let query = match since {
            Some(seq) => format!("token={token}&since={seq}"),
            None => format!("token={token}"),
        };
        let (mut socket, _) =
            tokio_tungstenite::connect_async(format!("ws://{notifier}/ws?{query}"))
                .await
                .unwrap();
        let mut received_here = 0;
        let mut dropped = false;
        while let Some(Ok(message)) = socket.next().await {
            let Message::Text(text) = message else {
                continue;
            };
            let event: Value = serde_json::from_str(&text).unwrap();
            if event["seq"].is_null() || event["type"] == "hello" {
                continue;
            }
            since = event["seq"].as_i64();
            inbox.lock().unwrap().events.push(event);
            received_here += 1;
            if drop_after == Some(received_here) {
                dropped = true;
                break;
            }
        }
        if !dropped {
            return;
        }
        // Gone mid-run; back in a moment, resuming with `since`.
        drop_after = None;
        let _ = socket.close(None).await;
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_few_hundred_jobs_with_faults_end_exactly_as_the_simulator_decided() {
    let pipeline = Pipeline::start(
        &[
            "--step-ms",
            "40",
            "--duplicate-rate",
            "0.2",
            "--reorder-rate",
            "0.2",
            "--max-delay-ms",
            "300",
            "--fail-rate",
            "0.15",
            "--cancel-rate",
            "0.1",
            "--missing-output-rate",
            "0.05",
        ],
        2,
    )
    .await;
    let (http, pool, notifier, sim) = (
        pipeline.http.clone(),
        pipeline.pool.clone(),
        pipeline.notifier.clone(),
        pipeline.sim.clone(),
    );
    let (logs, media) = (&pipeline.logs, &pipeline.media);
    let health: Value = http
        .get(format!("http://{notifier}/api/health"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
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

    // Wait until the simulator delivered every terminal webhook and every row is final.
    let deadline = Instant::now() + Duration::from_secs(180);
    let report = loop {
        let report: Vec<Value> = http
            .get(format!("http://{sim}/sim/jobs"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let delivered = report
            .iter()
            .filter(|job| job["terminal_delivered"] == true)
            .count();
        let mut conn = shared::db::connection(&pool).await.unwrap();
        let open_generations: i64 = generations::table
            .filter(generations::status.eq_any(["PENDING", "PROCESSING"]))
            .count()
            .get_result(&mut conn)
            .await
            .unwrap();
        let open_trainings: i64 = ai_models::table
            .filter(ai_models::status.eq_any(["PENDING", "PROCESSING"]))
            .count()
            .get_result(&mut conn)
            .await
            .unwrap();
        if delivered == total && open_generations + open_trainings == 0 {
            break report;
        }
        assert!(
            Instant::now() < deadline,
            "not settled: {delivered}/{total} terminal webhooks delivered, {open_generations} generations and {open_trainings} trainings open; logs in {}",
            logs.display()
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    let decided: HashMap<String, Value> = report
        .into_iter()
        .map(|job| (job["id"].as_str().unwrap().to_owned(), job))
        .collect();

    // Every job's row matches what the simulator decided; stored images are byte-identical.
    let mut conn = shared::db::connection(&pool).await.unwrap();
    let mut expected_final = HashMap::new();
    for job in &submitted {
        let sim = &decided[&job.job_id];
        let sim_status = sim["status"].as_str().unwrap();
        let broken = sim["outputs_broken"] == true;
        let expected = match (sim_status, broken) {
            ("succeeded", false) => "COMPLETED",
            ("succeeded", true) | ("failed", _) => "FAILED",
            ("canceled", _) | ("aborted", _) => "CANCELLED",
            other => panic!("simulator left {} at {other:?}", job.job_id),
        };
        let refunds: Vec<i32> = credit_transactions::table
            .filter(credit_transactions::job_id.eq(&job.job_id))
            .filter(credit_transactions::kind.eq("REFUND"))
            .select(credit_transactions::amount)
            .load(&mut conn)
            .await
            .unwrap();
        let debits: Vec<i32> = credit_transactions::table
            .filter(credit_transactions::job_id.eq(&job.job_id))
            .filter(credit_transactions::kind.eq("DEBIT"))
            .select(credit_transactions::amount)
            .load(&mut conn)
            .await
            .unwrap();
        assert_eq!(debits, vec![-job.cost], "{} debited once", job.job_id);
        if job.kind == JobKind::Training {
            let (status, version): (String, Option<String>) = ai_models::table
                .find(&job.id)
                .select((ai_models::status, ai_models::model_version))
                .first(&mut conn)
                .await
                .unwrap();
            assert_eq!(status, expected, "training {}", job.job_id);
            if expected == "COMPLETED" {
                assert_eq!(
                    version.as_deref(),
                    sim["output"]["version"].as_str(),
                    "training {}",
                    job.job_id
                );
            }
        } else {
            let (status, urls, error): (String, Vec<String>, Option<String>) = generations::table
                .find(&job.id)
                .select((
                    generations::status,
                    generations::image_urls,
                    generations::error_message,
                ))
                .first(&mut conn)
                .await
                .unwrap();
            assert_eq!(status, expected, "{} {} ({sim})", job.kind, job.job_id);
            if expected == "COMPLETED" {
                let outputs = sim["outputs"].as_u64().unwrap() as usize;
                assert_eq!(urls.len(), outputs, "{}", job.job_id);
                for (index, url) in urls.iter().enumerate() {
                    assert_eq!(
                        url,
                        &format!("http://{notifier}/media/generations/{}/{index}.png", job.id)
                    );
                    let stored =
                        std::fs::read(media.join(format!("generations/{}/{index}.png", job.id)))
                            .unwrap();
                    assert_eq!(
                        stored,
                        images::png(&job.job_id, index),
                        "{} output {index}",
                        job.job_id
                    );
                }
            }
            if broken {
                assert!(error.unwrap_or_default().contains("404"), "{}", job.job_id);
            }
        }
        if expected == "COMPLETED" {
            assert!(refunds.is_empty(), "{} refunded but completed", job.job_id);
        } else {
            assert_eq!(
                refunds,
                vec![job.cost],
                "{} must be refunded exactly once",
                job.job_id
            );
        }
        expected_final.insert(job.job_id.clone(), expected);
    }

    // Credits: start − debits + refunds, for every user.
    for user in &users {
        let balance: i32 = users::table
            .find(user)
            .select(users::credits)
            .first(&mut conn)
            .await
            .unwrap();
        let movements: Vec<i32> = credit_transactions::table
            .filter(credit_transactions::user_id.eq(user))
            .select(credit_transactions::amount)
            .load(&mut conn)
            .await
            .unwrap();
        assert_eq!(
            balance,
            START_CREDITS + movements.iter().sum::<i32>(),
            "{user}"
        );
    }

    // Every browser got every change, in order, gapless, only its own, and each job's last
    // event says its final status. The first user's browser reconnected with `since`.
    tokio::time::sleep(Duration::from_secs(2)).await;
    for user in &users {
        let latest: i64 = users::table
            .find(user)
            .select(users::event_seq)
            .first(&mut conn)
            .await
            .unwrap();
        let inbox = inboxes[user].lock().unwrap();
        let seqs: Vec<i64> = inbox
            .events
            .iter()
            .map(|e| e["seq"].as_i64().unwrap())
            .collect();
        assert_eq!(
            seqs,
            (1..=latest).collect::<Vec<_>>(),
            "{user}: seqs in order without gaps or duplicates"
        );
        assert!(
            inbox.events.iter().all(|e| e["user_id"] == user.as_str()),
            "{user} saw someone else's event"
        );
        let mut last_status = HashMap::new();
        for event in &inbox.events {
            last_status.insert(
                event["job"]["id"].as_str().unwrap().to_owned(),
                event["job"]["status"].as_str().unwrap().to_owned(),
            );
        }
        for job in submitted.iter().filter(|job| &job.user_id == user) {
            assert_eq!(
                last_status.get(&job.id).map(String::as_str),
                Some(expected_final[&job.job_id]),
                "{user} {}",
                job.job_id
            );
        }
    }

    // Nothing left behind in the queues; nothing dead-lettered.
    let connection =
        lapin::Connection::connect(&pipeline.amqp_url, lapin::ConnectionProperties::default())
            .await
            .unwrap();
    let channel = connection.create_channel().await.unwrap();
    let topology = shared::amqp::Topology::new(&pipeline.prefix);
    let depth = |queue: String| {
        let channel = channel.clone();
        async move {
            channel
                .queue_declare(
                    queue.as_str().into(),
                    QueueDeclareOptions {
                        passive: true,
                        ..Default::default()
                    },
                    FieldTable::default(),
                )
                .await
                .unwrap()
                .message_count()
        }
    };
    let mut settled = false;
    for _ in 0..150 {
        let mut total = depth(topology.webhooks_queue()).await;
        for delay in shared::amqp::RETRY_DELAYS {
            total += depth(topology.retry_queue(*delay)).await;
        }
        if total == 0 {
            settled = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(settled, "webhooks left in the work or retry queues");
    assert_eq!(
        depth(topology.dead_letter_queue()).await,
        0,
        "dead letters; see {}",
        logs.display()
    );
    let mut outcomes = BTreeMap::new();
    for status in expected_final.values() {
        *outcomes.entry(*status).or_insert(0) += 1;
    }
    println!(
        "e2e: {total} jobs {kinds_seen:?} ended {outcomes:?}; {} webhooks sent by the simulator",
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
