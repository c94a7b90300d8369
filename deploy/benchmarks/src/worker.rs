//! `worker`: webhooks/s two workers drain from a preloaded queue (a database of its own).

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use lapin::options::ConfirmSelectOptions;
use lapin::{Connection, ConnectionProperties};
use serde_json::{Value, json};

use crate::measure::*;

/// `worker`: webhooks/s two workers drain from a preloaded queue: `processing` then
/// `failed` (a refund) for each of `jobs` generations across 100 users.
pub async fn worker(
    database: &shared::config::DatabaseConfig,
    amqp_url: &str,
    worker_bin: &Path,
    jobs: usize,
) -> anyhow::Result<Value> {
    let prefix = format!("bench-worker-{}.", replicate_sim::prediction::new_id());
    let pool = shared::db::prepare(database).await?;
    seed_jobs(&pool, jobs).await?;

    // The queue, preloaded before any worker runs.
    let connection = Connection::connect(amqp_url, ConnectionProperties::default()).await?;
    let topology = shared::amqp::Topology::new(&prefix);
    topology.declare(&connection).await?;
    let channel = connection.create_channel().await?;
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await?;
    let preload = bar(jobs as u64 * 2, "worker: preloading");
    let mut pending = Vec::new();
    for (status, round) in [("processing", 0), ("failed", 1)] {
        for i in 0..jobs {
            let id = format!("msg_{round}_{i}");
            let mut value: Value =
                serde_json::from_slice(&webhook_body(&format!("bench-job-{i}")))?;
            value["status"] = json!(status);
            value["output"] = Value::Null;
            value["error"] = json!("CUDA out of memory");
            let body = serde_json::to_vec(&value)?;
            let confirm = channel
                .basic_publish(
                    "".into(),
                    topology.webhooks_queue().as_str().into(),
                    Default::default(),
                    &body,
                    shared::amqp::webhook_properties(&id, "0", None),
                )
                .await?;
            pending.push(confirm);
            if pending.len() >= 500 {
                for confirm in pending.drain(..) {
                    confirm.await?;
                }
            }
            preload.inc(1);
        }
    }
    for confirm in pending {
        confirm.await?;
    }
    preload.finish();

    let spawn = |port: u16| {
        std::process::Command::new(worker_bin)
            .env("DATABASE_URL", database.url.as_str())
            .env("AMQP_URL", amqp_url)
            .env("AMQP_NAME_PREFIX", &prefix)
            .env("WORKER_METRICS_ADDR", format!("127.0.0.1:{port}"))
            .env("RUST_LOG", "warn")
            .stdout(std::process::Stdio::null())
            .spawn()
    };
    let ports = [free_port()?, free_port()?];
    let started = Instant::now();
    let mut workers = vec![spawn(ports[0])?, spawn(ports[1])?];
    let pids: Vec<String> = workers.iter().map(|w| w.id().to_string()).collect();
    let cpu = CpuShares::start(vec![("workers", Who::Pids(pids)), ("broker", BROKER)]);
    let finished = AtomicU64::new(0);
    let expected = jobs as u64;
    let drain = bar(0, "worker: draining");
    drain.set_length(expected);
    loop {
        let failed = count_failed(&pool).await?;
        finished.store(failed, Ordering::Relaxed);
        drain.set_position(failed);
        if failed >= expected || started.elapsed() > Duration::from_secs(300) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let elapsed = started.elapsed().as_secs_f64();
    let cpu = cpu.finish();
    drain.finish();
    // The operator console's record, written in batches beside the webhooks: proof that the
    // figure above paid for it (a moment for the last batch first).
    tokio::time::sleep(Duration::from_millis(500)).await;
    let recorded = count_recorded(&pool).await?;
    // How the workers took the queue: the mean batch, and the webhooks a batch left to be
    // processed alone (their job raced by the other worker).
    let metrics = scrape(&ports).await;
    for worker in &mut workers {
        let _ = worker.kill();
        let _ = worker.wait();
    }
    let metrics = metrics?;
    let batches = shared::metrics::sum_in(&metrics, "worker_batch_webhooks_count", None);
    let batched = shared::metrics::sum_in(&metrics, "worker_batch_webhooks_sum", None);
    let alone = shared::metrics::sum_in(&metrics, "worker_batch_alone_total", None);
    pool.close();
    topology.delete(&channel).await?;
    shared::db::drop_database(&database.url).await?;
    let completed = finished.load(Ordering::Relaxed);
    Ok(json!({
        "part": "worker",
        "jobs": jobs,
        "webhooks": jobs * 2,
        "seconds": elapsed,
        "per_second": (completed * 2) as f64 / elapsed,
        "complete": completed == expected,
        "recorded": recorded,
        "mean_batch": batched / batches.max(1.0),
        "alone": alone,
        "cpu_cores": cpu,
    }))
}

/// The workers' `/metrics`, one after the other.
async fn scrape(ports: &[u16]) -> anyhow::Result<String> {
    let client = shared::http::client_builder().build()?;
    let mut text = String::new();
    for port in ports {
        let url = format!("http://127.0.0.1:{port}/metrics");
        text += &client.get(&url).send().await?.text().await?;
    }
    Ok(text)
}

/// A port free on this machine now, for a worker's `/metrics`.
fn free_port() -> std::io::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// Rows of the webhook record (`webhook_attempts`) the workers wrote.
async fn count_recorded(pool: &shared::db::Pool) -> anyhow::Result<u64> {
    use diesel::prelude::*;
    use diesel_async::RunQueryDsl;
    use shared::db::schema::webhook_attempts;

    let mut conn = shared::db::connection(pool).await?;
    let rows: i64 = webhook_attempts::table
        .count()
        .get_result(&mut conn)
        .await?;
    Ok(rows as u64)
}

/// 100 users and `jobs` generations with Replicate ids `bench-job-<i>`.
pub async fn seed_jobs(pool: &shared::db::Pool, jobs: usize) -> anyhow::Result<()> {
    use diesel::prelude::*;
    use diesel_async::RunQueryDsl;
    use shared::db::schema::{generations, users};

    let mut conn = shared::db::connection(pool).await?;
    let user_ids: Vec<String> = (0..100).map(|i| format!("bench-user-{i}")).collect();
    let rows: Vec<_> = user_ids
        .iter()
        .map(|id| (users::id.eq(id), users::credits.eq(0)))
        .collect();
    diesel::insert_into(users::table)
        .values(rows)
        .execute(&mut conn)
        .await?;
    for start in (0..jobs).step_by(1000) {
        let rows: Vec<_> = (start..(start + 1000).min(jobs))
            .map(|i| {
                (
                    generations::id.eq(format!("bench-gen-{i}")),
                    generations::user_id.eq(user_ids[i % user_ids.len()].clone()),
                    generations::job_id.eq(format!("bench-job-{i}")),
                    generations::prompt.eq("a corgi"),
                    generations::credits_used.eq(4),
                )
            })
            .collect();
        diesel::insert_into(generations::table)
            .values(rows)
            .execute(&mut conn)
            .await?;
    }
    Ok(())
}

pub async fn count_failed(pool: &shared::db::Pool) -> anyhow::Result<u64> {
    use diesel::prelude::*;
    use diesel_async::RunQueryDsl;
    use shared::db::schema::generations;

    let mut conn = shared::db::connection(pool).await?;
    let failed: i64 = generations::table
        .filter(generations::status.eq("FAILED"))
        .count()
        .get_result(&mut conn)
        .await?;
    Ok(failed as u64)
}
