//! What must hold after any run, however many faults: compared with what the simulator
//! decided, every job in its final state with its images stored byte for byte, refunds
//! exactly once, credits balancing, every browser with each of its user's events once in
//! `seq` order, and the queues drained.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use diesel::prelude::*;
use diesel_async::RunQueryDsl;
use replicate_sim::images;
use serde_json::Value;
use shared::db::schema::{ai_models, credit_transactions, generations, users};
use shared::testing::browser;

/// Where the oracle looks: a [`super::Pipeline`] of processes, or the compose deployment
/// `deploy/containers` runs.
pub struct Deployment<'a> {
    pub http: &'a reqwest::Client,
    /// `host:port` of the simulator (its `/sim/jobs` holds what it decided).
    pub sim: &'a str,
    pub pool: &'a shared::db::Pool,
    pub amqp_url: &'a str,
    /// Queue and exchange name prefix.
    pub prefix: &'a str,
    /// What stored images' URLs start with (MEDIA_BASE_URL); they are fetched from there.
    pub media_base: String,
    /// Where to look when something is wrong.
    pub logs: String,
}

/// Everything one user's browser received, across reconnects.
#[derive(Default)]
pub struct Inbox {
    pub events: Vec<Value>,
    pub reconnects: usize,
    /// Whether the browser got its first `hello`: subscribed, so it misses nothing after.
    pub greeted: bool,
}

/// Waits until every browser got its `hello`: events published before a browser
/// subscribed are not its (the `hello`'s `seq` says where it starts), so a run creates
/// jobs only after this.
pub async fn wait_greeted<'b>(browsers: impl IntoIterator<Item = &'b Arc<Mutex<Inbox>>>) {
    let browsers: Vec<_> = browsers.into_iter().collect();
    let greeted = shared::testing::eventually(Duration::from_secs(30), || async {
        browsers.iter().all(|inbox| inbox.lock().unwrap().greeted)
    })
    .await;
    assert!(greeted.is_ok(), "a browser never got its hello");
}

/// A browser: connects, keeps the last `seq`, and whenever the connection ends (the
/// notifier restarting, or `disconnect_after` events on purpose) comes back with `since`.
pub async fn watch_user(
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
        let Ok(mut socket) = browser::connect(&notifier, &query).await else {
            tokio::time::sleep(Duration::from_millis(300)).await;
            continue;
        };
        let mut received_here = 0;
        while let Some(event) = browser::next_json(&mut socket, Duration::from_secs(3600)).await {
            if event["type"] == "hello" {
                inbox.lock().unwrap().greeted = true;
                continue;
            }
            if event["seq"].is_null() {
                continue;
            }
            since = event["seq"].as_i64();
            inbox.lock().unwrap().events.push(event);
            received_here += 1;
            if drop_after == Some(received_here) {
                drop_after = None;
                let _ = socket.close(None).await;
                break;
            }
        }
        inbox.lock().unwrap().reconnects += 1;
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

/// Waits until the simulator ended every job and the database has no unfinished one;
/// returns the simulator's decisions by Replicate id.
pub async fn settle(pipeline: &Deployment<'_>, timeout: Duration) -> HashMap<String, Value> {
    let deadline = Instant::now() + timeout;
    loop {
        let report: Vec<Value> =
            shared::testing::get_json(pipeline.http, format!("http://{}/sim/jobs", pipeline.sim))
                .await;
        let ended = report
            .iter()
            .filter(|job| {
                shared::replicate::Status::from(job["status"].as_str().unwrap_or_default())
                    .is_terminal()
            })
            .count();
        let mut conn = shared::db::connection(pipeline.pool).await.unwrap();
        let open: i64 = generations::table
            .filter(generations::status.eq_any(["PENDING", "PROCESSING"]))
            .count()
            .get_result::<i64>(&mut conn)
            .await
            .unwrap()
            + ai_models::table
                .filter(ai_models::status.eq_any(["PENDING", "PROCESSING"]))
                .count()
                .get_result::<i64>(&mut conn)
                .await
                .unwrap();
        if ended == report.len() && open == 0 {
            return report
                .into_iter()
                .map(|job| (job["id"].as_str().unwrap().to_owned(), job))
                .collect();
        }
        assert!(
            Instant::now() < deadline,
            "not settled: {ended}/{} jobs ended on the simulator, {open} open in the database; logs in {}",
            report.len(),
            pipeline.logs
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Waits (up to `timeout`) until every browser has received its user's last event, as
/// the database numbers them (`users.event_seq`): events are published after commit, so a
/// settled database may still have some on their way. Returns either way: what is missing
/// then is the oracle's to report.
pub async fn wait_delivered<'b>(
    pipeline: &Deployment<'_>,
    browsers: impl IntoIterator<Item = (&'b String, &'b Arc<Mutex<Inbox>>)>,
    timeout: Duration,
) {
    let browsers: Vec<_> = browsers.into_iter().collect();
    let ids: Vec<&String> = browsers.iter().map(|(user, _)| *user).collect();
    let _ = shared::testing::eventually(timeout, || async {
        let mut conn = shared::db::connection(pipeline.pool).await.unwrap();
        let latest: HashMap<String, i64> = users::table
            .filter(users::id.eq_any(&ids))
            .select((users::id, users::event_seq))
            .load::<(String, i64)>(&mut conn)
            .await
            .unwrap()
            .into_iter()
            .collect();
        browsers.iter().all(|(user, inbox)| {
            let received = inbox
                .lock()
                .unwrap()
                .events
                .last()
                .and_then(|event| event["seq"].as_i64())
                .unwrap_or(0);
            received >= latest.get(*user).copied().unwrap_or(0)
        })
    })
    .await;
}

/// The status a job must end with, given what the simulator decided.
fn expected_status(decided: &Value) -> &'static str {
    match (
        decided["status"].as_str().unwrap_or_default(),
        decided["outputs_broken"] == true,
    ) {
        ("succeeded", false) => "COMPLETED",
        ("succeeded", true) | ("failed", _) => "FAILED",
        _ => "CANCELLED",
    }
}

/// What the oracle looked at.
#[derive(Debug, Default)]
pub struct Verdict {
    pub jobs_checked: usize,
    pub events_checked: usize,
    pub mismatches: Vec<String>,
}

impl Verdict {
    /// Panics with every mismatch, and where the logs are, unless there is none and each
    /// of the `jobs_created` was checked.
    pub fn assert_clean(&self, jobs_created: usize, logs: impl std::fmt::Display) {
        assert!(
            self.mismatches.is_empty(),
            "{} mismatches: {:#?}; logs in {logs}",
            self.mismatches.len(),
            self.mismatches,
        );
        // Creations whose client hung up (or whose notifier was killed) made jobs too.
        assert!(
            self.jobs_checked >= jobs_created,
            "{} jobs checked, {jobs_created} created",
            self.jobs_checked
        );
    }
}

/// Compares every job row with the simulator's decisions, the credits with their
/// movements, and what each browser received with each user's log. `browsers` pairs
/// each browser's inbox with its user (a user may have several browsers).
pub async fn check<'b>(
    pipeline: &Deployment<'_>,
    decided: &HashMap<String, Value>,
    start_credits: i32,
    browsers: impl IntoIterator<Item = (&'b String, &'b Arc<Mutex<Inbox>>)>,
) -> Verdict {
    let mut verdict = Verdict::default();
    let mut conn = shared::db::connection(pipeline.pool).await.unwrap();
    let mut final_status: HashMap<String, String> = HashMap::new();

    type GenerationRow = (
        String,
        Option<String>,
        String,
        Vec<String>,
        Option<String>,
        i32,
    );
    let rows: Vec<GenerationRow> = generations::table
        .select((
            generations::id,
            generations::job_id,
            generations::status,
            generations::image_urls,
            generations::error_message,
            generations::credits_used,
        ))
        .load(&mut conn)
        .await
        .unwrap();
    type TrainingRow = (String, Option<String>, String, Option<String>, i32);
    let trainings: Vec<TrainingRow> = ai_models::table
        .select((
            ai_models::id,
            ai_models::job_id,
            ai_models::status,
            ai_models::model_version,
            ai_models::credits_used,
        ))
        .load(&mut conn)
        .await
        .unwrap();
    let mut jobs: Vec<(String, Option<String>, String, i32)> = Vec::new();
    for (id, job_id, status, urls, error, cost) in &rows {
        jobs.push((id.clone(), job_id.clone(), status.clone(), *cost));
        let Some(decision) = job_id.as_ref().and_then(|j| decided.get(j)) else {
            continue;
        };
        if expected_status(decision) == "COMPLETED" {
            let outputs = decision["outputs"].as_u64().unwrap_or_default() as usize;
            if urls.len() != outputs {
                verdict
                    .mismatches
                    .push(format!("{id}: {} images, {outputs} made", urls.len()));
            }
            for (index, url) in urls.iter().enumerate() {
                let key = format!("generations/{id}/{index}.png");
                if url != &format!("{}/{key}", pipeline.media_base) {
                    verdict.mismatches.push(format!("{id}: image URL {url}"));
                }
                let stored = fetch(pipeline.http, url).await;
                if stored != images::png(job_id.as_deref().unwrap(), index) {
                    verdict
                        .mismatches
                        .push(format!("{id}: image {index} differs"));
                }
            }
        }
        if decision["outputs_broken"] == true
            && !error.as_deref().unwrap_or_default().contains("404")
        {
            verdict
                .mismatches
                .push(format!("{id}: missing outputs not reported: {error:?}"));
        }
    }
    for (id, job_id, status, version, cost) in &trainings {
        jobs.push((id.clone(), job_id.clone(), status.clone(), *cost));
        if let Some(decision) = job_id.as_ref().and_then(|j| decided.get(j))
            && expected_status(decision) == "COMPLETED"
            && version.as_deref() != decision["output"]["version"].as_str()
        {
            verdict
                .mismatches
                .push(format!("{id}: model version {version:?}"));
        }
    }

    for (id, job_id, status, cost) in &jobs {
        verdict.jobs_checked += 1;
        final_status.insert(id.clone(), status.clone());
        let Some(job_id) = job_id else {
            // A creation abandoned before Replicate was reached (the notifier killed while
            // creating it): failed and refunded once under the row's id, nothing else.
            let movements = movements_of(&mut conn, id).await;
            let want = vec![("DEBIT".to_owned(), -cost), ("REFUND".to_owned(), *cost)];
            if status != "FAILED" || movements != want {
                verdict.mismatches.push(format!(
                    "{id}: never created on Replicate, {status} with {movements:?}"
                ));
            }
            continue;
        };
        let Some(decision) = decided.get(job_id) else {
            verdict
                .mismatches
                .push(format!("{id}: {job_id} unknown to the simulator"));
            continue;
        };
        let expected = expected_status(decision);
        if status != expected {
            verdict.mismatches.push(format!(
                "{id} ({job_id}): {status}, simulator says {expected} ({decision})"
            ));
        }
        let movements = movements_of(&mut conn, job_id).await;
        let debits: Vec<i32> = movements
            .iter()
            .filter(|m| m.0 == "DEBIT")
            .map(|m| m.1)
            .collect();
        let refunds: Vec<i32> = movements
            .iter()
            .filter(|m| m.0 == "REFUND")
            .map(|m| m.1)
            .collect();
        if debits != vec![-cost] {
            verdict.mismatches.push(format!("{id}: debits {debits:?}"));
        }
        let expected_refunds = if expected == "COMPLETED" {
            vec![]
        } else {
            vec![*cost]
        };
        if refunds != expected_refunds {
            verdict.mismatches.push(format!(
                "{id}: refunds {refunds:?}, want {expected_refunds:?}"
            ));
        }
    }

    // Every job Replicate ran has its row: none ran unseen, its results lost.
    let bound: std::collections::HashSet<&str> = jobs
        .iter()
        .filter_map(|(_, job_id, _, _)| job_id.as_deref())
        .collect();
    for job_id in decided.keys() {
        if !bound.contains(job_id.as_str()) {
            verdict.mismatches.push(format!(
                "{job_id} ran on Replicate without a job here: its results are lost"
            ));
        }
    }

    // Credits: start + every movement, per user; each browser got its user's log exactly.
    for (user, inbox) in browsers {
        let (balance, latest): (i32, i64) = users::table
            .find(user)
            .select((users::credits, users::event_seq))
            .first(&mut conn)
            .await
            .unwrap();
        let movements: Vec<i32> = credit_transactions::table
            .filter(credit_transactions::user_id.eq(user))
            .select(credit_transactions::amount)
            .load(&mut conn)
            .await
            .unwrap();
        if balance != start_credits + movements.iter().sum::<i32>() {
            verdict
                .mismatches
                .push(format!("{user}: balance {balance} does not add up"));
        }
        let inbox = inbox.lock().unwrap();
        verdict.events_checked += inbox.events.len();
        let seqs: Vec<i64> = inbox
            .events
            .iter()
            .map(|e| e["seq"].as_i64().unwrap())
            .collect();
        if seqs != (1..=latest).collect::<Vec<_>>() {
            verdict.mismatches.push(format!(
                "{user}: browser got seqs {}… ({} events), the log has 1..={latest}",
                seqs.iter()
                    .take(12)
                    .map(i64::to_string)
                    .collect::<Vec<_>>()
                    .join(","),
                seqs.len()
            ));
        }
        if inbox.events.iter().any(|e| e["user_id"] != user.as_str()) {
            verdict
                .mismatches
                .push(format!("{user}: got someone else's event"));
        }
        let mut last = HashMap::new();
        for event in &inbox.events {
            last.insert(
                event["job"]["id"].as_str().unwrap().to_owned(),
                event["job"]["status"].as_str().unwrap().to_owned(),
            );
        }
        for (id, status) in &last {
            if final_status.get(id) != Some(status) {
                verdict
                    .mismatches
                    .push(format!("{user}: browser last saw {id} {status}"));
            }
        }
    }

    // Nothing left in the work or retry queues, nothing dead-lettered.
    let connection =
        lapin::Connection::connect(pipeline.amqp_url, lapin::ConnectionProperties::default())
            .await
            .unwrap();
    let channel = connection.create_channel().await.unwrap();
    let topology = shared::amqp::Topology::new(pipeline.prefix);
    let depth = |queue: String| {
        let channel = channel.clone();
        async move { shared::testing::queue_depth(&channel, &queue).await }
    };
    // Late duplicates may still wait in a retry queue for a few seconds.
    let mut waiting = 0;
    for _ in 0..150 {
        waiting = depth(topology.webhooks_queue()).await;
        for delay in shared::amqp::RETRY_DELAYS {
            waiting += depth(topology.retry_queue(*delay)).await;
        }
        if waiting == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    if waiting > 0 {
        verdict.mismatches.push(format!(
            "{waiting} webhooks left in the work and retry queues"
        ));
    }
    let dead = depth(topology.dead_letter_queue()).await;
    if dead > 0 {
        verdict
            .mismatches
            .push(format!("{dead} webhooks dead-lettered"));
    }
    verdict
}

/// `(kind, amount)` of every credit movement under one key (Replicate's id, or the row's
/// while it has none).
async fn movements_of(conn: &mut shared::db::Connection, key: &str) -> Vec<(String, i32)> {
    credit_transactions::table
        .filter(credit_transactions::job_id.eq(key))
        .select((credit_transactions::kind, credit_transactions::amount))
        .load(conn)
        .await
        .unwrap()
}

/// A stored file as served, or nothing when it cannot be fetched.
async fn fetch(http: &reqwest::Client, url: &str) -> Vec<u8> {
    match http.get(url).send().await {
        Ok(response) if response.status().is_success() => response
            .bytes()
            .await
            .map(|b| b.to_vec())
            .unwrap_or_default(),
        _ => Vec::new(),
    }
}
