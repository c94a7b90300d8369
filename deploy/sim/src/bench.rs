//! `replicate-sim bench …`: measurements for `deploy/bench`, each written as JSON under
//! `target/bench/`, and the report that puts every figure beside its reference.
//!
//! - `broker`: persistent, confirmed publishes/s of one webhook-sized payload into a quorum
//!   queue of its own, confirms pipelined over `--concurrency` publishers: the ceiling
//!   ingest is measured against.
//! - `ingest`: correctly signed webhooks/s that a running ingest confirms at saturation
//!   (`--concurrency` kept-alive connections, everything signed ahead of time), then the
//!   latency at half that rate, paced (latency counted from when each request was due, so
//!   a stall is not hidden), and the load generator's own CPU.
//! - `report`: `report.md` and `report.json` from what was measured.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use indicatif::{ProgressBar, ProgressStyle};
use lapin::options::{ConfirmSelectOptions, QueueDeclareOptions, QueueDeleteOptions};
use lapin::types::{AMQPValue, FieldTable, LongString};
use lapin::{BasicProperties, Connection, ConnectionProperties};
use serde_json::{Value, json};
use shared::amqp::{Outgoing, PERSISTENT, publish_confirmed};
use shared::webhook::WebhookSecret;

/// The body every measurement sends: a succeeded prediction padded with logs to about the
/// size of a real image webhook (2.7 KB).
pub fn webhook_body(id: &str) -> Vec<u8> {
    let mut body = json!({
        "id": id, "status": "succeeded", "model": "black-forest-labs/flux-schnell",
        "version": "hidden", "input": {"prompt": "a studio photo of a rainbow colored corgi"},
        "output": [format!("https://replicate.delivery/xezq/{id}/out-0.webp")],
        "error": null, "logs": "", "data_removed": false, "source": "api",
        "created_at": "2026-11-29T10:00:00.000000Z", "completed_at": "2026-11-29T10:00:02.500000Z",
        "metrics": {"predict_time": 2.41, "total_time": 2.5},
        "urls": {"get": format!("https://api.replicate.com/v1/predictions/{id}")},
    });
    let size = serde_json::to_vec(&body).expect("JSON").len();
    body["logs"] = json!("x".repeat(2700usize.saturating_sub(size)));
    serde_json::to_vec(&body).expect("JSON")
}

fn bar(seconds: u64, what: &str) -> ProgressBar {
    ProgressBar::new(seconds).with_style(
        ProgressStyle::with_template(&format!("{what:<28} {{bar:30}} {{pos}}/{{len}} s {{msg}}"))
            .expect("valid template"),
    )
}

/// Ticks a progress bar once a second until `done`.
fn tick(bar: ProgressBar, done: Arc<AtomicBool>, count: Arc<AtomicU64>) {
    tokio::spawn(async move {
        let started = Instant::now();
        while !done.load(Ordering::Relaxed) {
            tokio::time::sleep(Duration::from_secs(1)).await;
            bar.set_position(started.elapsed().as_secs());
            let per_second = count.load(Ordering::Relaxed) as f64 / started.elapsed().as_secs_f64();
            bar.set_message(format!("{per_second:.0}/s"));
        }
        bar.finish();
    });
}

/// How many more `count` reached each second, until `done`.
fn sample_each_second(
    done: Arc<AtomicBool>,
    count: Arc<AtomicU64>,
) -> tokio::task::JoinHandle<Vec<u64>> {
    tokio::spawn(async move {
        let mut series = Vec::new();
        let mut last = 0;
        let mut ticks = tokio::time::interval(Duration::from_secs(1));
        ticks.tick().await;
        while !done.load(Ordering::Relaxed) {
            ticks.tick().await;
            let now = count.load(Ordering::Relaxed);
            series.push(now - last);
            last = now;
        }
        series
    })
}

/// CPU seconds this process has used (user + system).
fn own_cpu_seconds() -> f64 {
    cpu_seconds("self")
}

/// CPU seconds process `pid` ("self" for this one) has used (user + system), from
/// `/proc/<pid>/stat`; 0 when it cannot be read.
fn cpu_seconds(pid: &str) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name (which may hold spaces) start after the last ')'.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest.split_whitespace().collect())
        .unwrap_or_default();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    // utime and stime are the 14th and 15th fields: 12th and 13th after the name.
    (ticks(11) + ticks(12)) / 100.0
}

/// Where the CPU went while a measurement ran: each group's share of one core.
struct CpuShares {
    groups: Vec<(&'static str, Vec<String>, f64)>,
    started: Instant,
}

impl CpuShares {
    fn start(groups: Vec<(&'static str, Vec<String>)>) -> Self {
        Self {
            groups: groups
                .into_iter()
                .map(|(name, pids)| {
                    let used = pids.iter().map(|pid| cpu_seconds(pid)).sum();
                    (name, pids, used)
                })
                .collect(),
            started: Instant::now(),
        }
    }

    /// `{"server": 0.68, "client": 0.75, …}`: cores used by each group since the start.
    fn finish(&self) -> Value {
        let elapsed = self.started.elapsed().as_secs_f64().max(0.001);
        let shares: serde_json::Map<String, Value> = self
            .groups
            .iter()
            .map(|(name, pids, before)| {
                let used: f64 = pids.iter().map(|pid| cpu_seconds(pid)).sum();
                (
                    (*name).to_owned(),
                    json!(((used - before) / elapsed * 100.0).round() / 100.0),
                )
            })
            .collect();
        Value::Object(shares)
    }
}

/// The pids of RabbitMQ's Erlang VM on this machine (none when it runs elsewhere).
fn broker_pids() -> Vec<String> {
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| {
            let pid = entry.file_name().to_string_lossy().into_owned();
            let comm = std::fs::read_to_string(entry.path().join("comm")).ok()?;
            (comm.trim() == "beam.smp").then_some(pid)
        })
        .collect()
}

/// `broker`: the ceiling.
pub async fn broker(amqp_url: &str, seconds: u64, concurrency: usize) -> anyhow::Result<Value> {
    let connection = Connection::connect(amqp_url, ConnectionProperties::default())
        .await
        .context("connecting to RabbitMQ")?;
    let channel = connection.create_channel().await?;
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await?;
    let queue = format!("bench.broker.{}", crate::prediction::new_id());
    let mut args = FieldTable::default();
    args.insert(
        "x-queue-type".into(),
        AMQPValue::LongString(LongString::from("quorum")),
    );
    channel
        .queue_declare(
            queue.as_str().into(),
            QueueDeclareOptions {
                durable: true,
                ..Default::default()
            },
            args,
        )
        .await?;
    let body = Arc::new(webhook_body("bench"));
    let done = Arc::new(AtomicBool::new(false));
    let confirmed = Arc::new(AtomicU64::new(0));
    tick(
        bar(seconds, "broker: confirmed publishes"),
        done.clone(),
        confirmed.clone(),
    );
    let started = Instant::now();
    let deadline = started + Duration::from_secs(seconds);
    let mut publishers = Vec::new();
    for _ in 0..concurrency.max(1) {
        let (channel, queue, body, confirmed) = (
            channel.clone(),
            queue.clone(),
            body.clone(),
            confirmed.clone(),
        );
        publishers.push(tokio::spawn(async move {
            while Instant::now() < deadline {
                if publish_persistent(&channel, &queue, &body).await {
                    confirmed.fetch_add(1, Ordering::Relaxed);
                }
            }
        }));
    }
    for publisher in publishers {
        publisher.await?;
    }
    let elapsed = started.elapsed().as_secs_f64();
    done.store(true, Ordering::Relaxed);
    let total = confirmed.load(Ordering::Relaxed);
    let per_second = total as f64 / elapsed;

    // Half that rate, paced as the ingest run is: publish → confirm latency, the floor of
    // ingest's own latency at half rate.
    let publishers = (0..concurrency.max(1))
        .map(|_| (channel.clone(), queue.clone(), body.clone()))
        .collect();
    let (latencies, _) = paced(
        "broker: half rate, paced",
        publishers,
        per_second / 2.0,
        seconds,
        |(channel, queue, body)| Box::pin(publish_persistent(channel, queue, body)),
    )
    .await?;
    channel
        .queue_delete(queue.as_str().into(), QueueDeleteOptions::default())
        .await?;
    Ok(json!({
        "part": "broker",
        "confirmed": total,
        "seconds": elapsed,
        "per_second": per_second,
        "concurrency": concurrency,
        "payload_bytes": body.len(),
        "half_rate_p50_ms": percentile(&latencies, 0.5),
        "half_rate_p99_ms": percentile(&latencies, 0.99),
    }))
}

/// `senders` send on staggered schedules, together `rate` per second, for `seconds`.
/// Returns each answered send's latency in ms from when it was due (sorted), and the rate
/// answered.
async fn paced<S, F>(
    label: &str,
    senders: Vec<S>,
    rate: f64,
    seconds: u64,
    send: F,
) -> anyhow::Result<(Vec<f64>, f64)>
where
    S: Send + 'static,
    F: for<'a> Fn(&'a mut S) -> futures_util::future::BoxFuture<'a, bool> + Clone + Send + 'static,
{
    let count = senders.len().max(1);
    let interval = Duration::from_secs_f64(count as f64 / rate.max(1.0));
    let done = Arc::new(AtomicBool::new(false));
    let answered = Arc::new(AtomicU64::new(0));
    tick(bar(seconds, label), done.clone(), answered.clone());
    let started = Instant::now();
    let deadline = started + Duration::from_secs(seconds);
    let tasks: Vec<_> = senders
        .into_iter()
        .enumerate()
        .map(|(index, mut sender)| {
            let (send, answered) = (send.clone(), answered.clone());
            tokio::spawn(async move {
                let mut latencies = Vec::new();
                let mut due = started + interval.mul_f64(index as f64 / count as f64);
                while due < deadline {
                    tokio::time::sleep_until(due.into()).await;
                    if send(&mut sender).await {
                        answered.fetch_add(1, Ordering::Relaxed);
                        latencies.push(due.elapsed().as_secs_f64() * 1000.0);
                    }
                    due += interval;
                }
                latencies
            })
        })
        .collect();
    let mut latencies = Vec::new();
    for task in tasks {
        latencies.extend(task.await?);
    }
    done.store(true, Ordering::Relaxed);
    latencies.sort_by(f64::total_cmp);
    let answered_rate = answered.load(Ordering::Relaxed) as f64 / started.elapsed().as_secs_f64();
    Ok((latencies, answered_rate))
}

/// One persistent publish into `queue`, confirmed by the broker.
async fn publish_persistent(channel: &lapin::Channel, queue: &str, body: &[u8]) -> bool {
    publish_confirmed(
        channel,
        Outgoing {
            exchange: "",
            routing_key: queue,
            body,
            properties: BasicProperties::default().with_delivery_mode(PERSISTENT),
            mandatory: true,
        },
        Duration::from_secs(10),
    )
    .await
    .is_ok()
}

/// `worker`: webhooks/s two workers drain from a preloaded queue: `processing` then
/// `failed` (a refund) for each of `jobs` generations across 100 users.
pub async fn worker(
    database: &shared::config::DatabaseConfig,
    amqp_url: &str,
    worker_bin: &Path,
    jobs: usize,
) -> anyhow::Result<Value> {
    let prefix = format!("bench-worker-{}.", crate::prediction::new_id());
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
    let started = Instant::now();
    let mut workers = vec![spawn(0)?, spawn(0)?];
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
    drain.finish();
    for worker in &mut workers {
        let _ = worker.kill();
        let _ = worker.wait();
    }
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
    }))
}

/// 100 users and `jobs` generations with Replicate ids `bench-job-<i>`.
async fn seed_jobs(pool: &shared::db::Pool, jobs: usize) -> anyhow::Result<()> {
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

async fn count_failed(pool: &shared::db::Pool) -> anyhow::Result<u64> {
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

/// Resident memory of process `pid` in KiB (`VmRSS`).
fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| rest.split_whitespace().next()?.parse().ok())
        .unwrap_or_default()
}

fn micros_now() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_micros()
}

/// What the fan-out is measured on.
pub enum FanoutTarget {
    /// The notifier: sockets at `/ws?token=`, events published to `jobs.events`.
    Notifier {
        url: String,
        amqp_url: String,
        prefix: String,
        jwt_secret: String,
    },
    /// nginx with nchan, the reference: sockets at `/sub/<user>`, events POSTed to
    /// `/pub/<user>`.
    Nchan { url: String },
}

/// Publishes one event to one user's sockets.
enum Publisher {
    Amqp {
        channel: lapin::Channel,
        exchange: String,
    },
    Http {
        http: reqwest::Client,
        url: String,
        in_flight: Arc<tokio::sync::Semaphore>,
    },
}

impl Publisher {
    async fn publish(&self, user: &str, body: Vec<u8>) -> anyhow::Result<()> {
        match self {
            Self::Amqp { channel, exchange } => {
                channel
                    .basic_publish(
                        exchange.as_str().into(),
                        shared::events::routing_key(user).as_str().into(),
                        Default::default(),
                        &body,
                        BasicProperties::default(),
                    )
                    .await?;
            }
            Self::Http {
                http,
                url,
                in_flight,
            } => {
                let permit = in_flight.clone().acquire_owned().await?;
                let request = http.post(format!("{url}/pub/{user}")).body(body);
                tokio::spawn(async move {
                    let _ = request.send().await;
                    drop(permit);
                });
            }
        }
        Ok(())
    }
}

/// `fanout`: `sockets` WebSockets over `users` users on `target`, then live events at each
/// rate: delivery latency (the publish time travels in the event) and the memory per
/// connection of the processes `pids` (summed).
pub async fn fanout(
    target: &FanoutTarget,
    pids: &[u32],
    sockets: usize,
    users: usize,
    rates: &[u64],
    seconds: u64,
) -> anyhow::Result<Value> {
    use futures_util::StreamExt;
    use tokio_tungstenite::tungstenite::Message;

    let users = users.max(1);
    let rss = || pids.iter().map(|pid| rss_kib(*pid)).sum::<u64>();
    let before_kib = rss();
    let mut growth = Vec::new();
    let recording = Arc::new(AtomicBool::new(false));
    let latencies = Arc::new(std::sync::Mutex::new(Vec::<f64>::new()));
    let connecting = ProgressBar::new(sockets as u64).with_style(
        ProgressStyle::with_template("fanout: connecting          {bar:30} {pos}/{len} sockets")
            .expect("valid template"),
    );
    let urls: Vec<String> = match target {
        FanoutTarget::Notifier {
            url, jwt_secret, ..
        } => {
            let auth = shared::auth::Auth::new(jwt_secret);
            let base = url.replacen("http", "ws", 1);
            (0..users)
                .map(|u| {
                    let token = auth.mint(&format!("fan-{u}"), Duration::from_secs(3600));
                    format!("{base}/ws?token={token}")
                })
                .collect()
        }
        FanoutTarget::Nchan { url } => {
            let base = url.replacen("http", "ws", 1);
            (0..users).map(|u| format!("{base}/sub/fan-{u}")).collect()
        }
    };
    let greets = matches!(target, FanoutTarget::Notifier { .. });
    for i in 0..sockets {
        let url = urls[i % users].clone();
        let (mut socket, _) = tokio_tungstenite::connect_async(url)
            .await
            .with_context(|| format!("socket {i}"))?;
        if greets {
            // The hello: the socket is registered and bound.
            let _ = socket.next().await;
        }
        let (recording, latencies) = (recording.clone(), latencies.clone());
        tokio::spawn(async move {
            while let Some(Ok(message)) = socket.next().await {
                let Message::Text(text) = message else {
                    continue;
                };
                if !recording.load(Ordering::Relaxed) {
                    continue;
                }
                // The send time travels as the job id `t<micros>`; read it without parsing
                // the whole event, so that the client spends its CPU on receiving.
                if let Some(sent) = sent_micros(&text) {
                    let ms = micros_now().saturating_sub(sent) as f64 / 1000.0;
                    latencies.lock().expect("not poisoned").push(ms);
                }
            }
        });
        connecting.inc(1);
        // Memory per connection as the count grows: ten points on the way.
        if (i + 1) % (sockets / 10).max(1) == 0 {
            let kib = rss();
            growth.push(json!({
                "sockets": i + 1,
                "bytes_per_socket": (kib.saturating_sub(before_kib) * 1024) as f64 / (i + 1) as f64,
            }));
        }
    }
    connecting.finish();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let after_kib = rss();

    let publisher = match target {
        FanoutTarget::Notifier {
            amqp_url, prefix, ..
        } => {
            let connection = Connection::connect(amqp_url, ConnectionProperties::default()).await?;
            Publisher::Amqp {
                channel: connection.create_channel().await?,
                exchange: shared::amqp::Topology::new(prefix).events_exchange(),
            }
        }
        FanoutTarget::Nchan { url } => Publisher::Http {
            http: shared::http::client_builder()
                .pool_max_idle_per_host(64)
                .build()?,
            url: url.clone(),
            in_flight: Arc::new(tokio::sync::Semaphore::new(64)),
        },
    };
    let mut runs = Vec::new();
    for &rate in rates {
        latencies.lock().expect("not poisoned").clear();
        recording.store(true, Ordering::Relaxed);
        let cpu = CpuShares::start(vec![
            ("server", pids.iter().map(u32::to_string).collect()),
            ("broker", broker_pids()),
            ("client", vec!["self".into()]),
        ]);
        let done = Arc::new(AtomicBool::new(false));
        let published = Arc::new(AtomicU64::new(0));
        tick(
            bar(seconds, &format!("fanout: {rate} events/s")),
            done.clone(),
            published.clone(),
        );
        let mut ticks = tokio::time::interval(Duration::from_secs_f64(1.0 / rate as f64));
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
        let deadline = Instant::now() + Duration::from_secs(seconds);
        let mut n = 0u64;
        while Instant::now() < deadline {
            ticks.tick().await;
            let user = format!("fan-{}", n as usize % users);
            let event = shared::events::Event::JobProgress {
                user_id: user.clone(),
                job: shared::events::JobProgress {
                    kind: shared::events::JobKind::Generation,
                    id: format!("t{}", micros_now()),
                    job_id: "bench".into(),
                    progress: 0.5,
                },
            };
            publisher
                .publish(&user, serde_json::to_vec(&event)?)
                .await?;
            n += 1;
            published.fetch_add(1, Ordering::Relaxed);
        }
        let cpu = cpu.finish();
        tokio::time::sleep(Duration::from_secs(2)).await;
        recording.store(false, Ordering::Relaxed);
        done.store(true, Ordering::Relaxed);
        let mut got = std::mem::take(&mut *latencies.lock().expect("not poisoned"));
        got.sort_by(f64::total_cmp);
        let expected = n as usize * (sockets / users);
        runs.push(json!({
            "rate": rate,
            "events": n,
            "deliveries_expected": expected,
            "delivered": got.len(),
            "p50_ms": percentile(&got, 0.5),
            "p99_ms": percentile(&got, 0.99),
            "max_ms": got.last().copied().unwrap_or_default(),
            "cpu_cores": cpu,
        }));
    }
    Ok(json!({
        "part": match target {
            FanoutTarget::Notifier { .. } => "fanout",
            FanoutTarget::Nchan { .. } => "fanout-nchan",
        },
        "sockets": sockets,
        "users": users,
        "rss_before_kib": before_kib,
        "rss_after_kib": after_kib,
        "bytes_per_socket": (after_kib.saturating_sub(before_kib) * 1024) as f64 / sockets.max(1) as f64,
        "growth": growth,
        "runs": runs,
    }))
}

/// The publish time in a fan-out event: its job id is `t<microseconds>`.
fn sent_micros(event: &str) -> Option<u128> {
    let start = event.find("\"id\":\"t")? + 7;
    let digits = &event[start..];
    let end = digits.find('"')?;
    digits[..end].parse().ok()
}

/// "CPU: notifier 0.68, broker 0.50, client 0.75 cores" from a run's `cpu_cores`.
fn cpu_text(cores: &Value, server: &str, with_broker: bool) -> String {
    let share = |name: &str| cores[name].as_f64().unwrap_or_default();
    let mut parts = vec![format!("{server} {:.2}", share("server"))];
    if with_broker {
        parts.push(format!("broker {:.2}", share("broker")));
    }
    parts.push(format!("client {:.2}", share("client")));
    format!("CPU: {} cores", parts.join(", "))
}

/// Signed requests, made before the clock starts.
struct Signed {
    id: String,
    timestamp: String,
    signature: String,
    body: bytes::Bytes,
}

fn sign_ahead(secret: &WebhookSecret, count: usize) -> Vec<Signed> {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs() as i64;
    let run = crate::prediction::new_id();
    (0..count)
        .map(|i| {
            let id = format!("msg_bench_{run}_{i}");
            let body = webhook_body(&format!("bench{i}"));
            Signed {
                signature: secret.sign(&id, now, &body),
                timestamp: now.to_string(),
                id,
                body: body.into(),
            }
        })
        .collect()
}

/// One kept-alive HTTP/1.1 connection to ingest: the lightest client there is, so the
/// load generator takes as little of the shared CPU as it can.
struct KeptAlive {
    sender: hyper::client::conn::http1::SendRequest<http_body_util::Full<bytes::Bytes>>,
    authority: String,
    path: String,
}

impl KeptAlive {
    async fn connect(url: &str) -> anyhow::Result<Self> {
        let parsed = reqwest::Url::parse(url)?;
        let authority = format!(
            "{}:{}",
            parsed.host_str().unwrap_or("127.0.0.1"),
            parsed.port_or_known_default().unwrap_or(80)
        );
        let stream = tokio::net::TcpStream::connect(&authority).await?;
        stream.set_nodelay(true)?;
        let (sender, connection) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream)).await?;
        tokio::spawn(connection);
        Ok(Self {
            sender,
            authority,
            path: parsed.path().to_owned(),
        })
    }

    /// Posts one signed webhook; true when ingest answered 200.
    async fn post(&mut self, signed: &Signed) -> bool {
        use http_body_util::BodyExt;
        if self.sender.ready().await.is_err() {
            return false;
        }
        let request = hyper::Request::post(self.path.as_str())
            .header("host", self.authority.as_str())
            .header("content-type", "application/json")
            .header(shared::webhook::HEADER_ID, signed.id.as_str())
            .header(shared::webhook::HEADER_TIMESTAMP, signed.timestamp.as_str())
            .header(shared::webhook::HEADER_SIGNATURE, signed.signature.as_str())
            .body(http_body_util::Full::new(signed.body.clone()))
            .expect("a valid request");
        match self.sender.send_request(request).await {
            Ok(response) => {
                let ok = response.status() == 200;
                // Read the answer to the end so the connection can carry the next one.
                ok && response.into_body().collect().await.is_ok()
            }
            Err(_) => false,
        }
    }
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

/// `ingest`: saturation, then latency at half the rate.
pub async fn ingest(
    url: &str,
    secret: &WebhookSecret,
    seconds: u64,
    concurrency: usize,
) -> anyhow::Result<Value> {
    let concurrency = concurrency.max(1);
    // Enough distinct webhooks for the whole run (each id sent once).
    let signed = Arc::new(sign_ahead(secret, 40_000 * seconds as usize / 10 + 1000));

    // Saturation: every connection sends as fast as answers come.
    let done = Arc::new(AtomicBool::new(false));
    let accepted = Arc::new(AtomicU64::new(0));
    let next = Arc::new(AtomicU64::new(0));
    tick(
        bar(seconds, "ingest: saturation"),
        done.clone(),
        accepted.clone(),
    );
    let series = sample_each_second(done.clone(), accepted.clone());
    let cpu_before = own_cpu_seconds();
    let started = Instant::now();
    let deadline = started + Duration::from_secs(seconds);
    let mut senders = Vec::new();
    for _ in 0..concurrency {
        let mut connection = KeptAlive::connect(url).await?;
        let (signed, accepted, next) = (signed.clone(), accepted.clone(), next.clone());
        senders.push(tokio::spawn(async move {
            while Instant::now() < deadline {
                let i = next.fetch_add(1, Ordering::Relaxed) as usize % signed.len();
                if connection.post(&signed[i]).await {
                    accepted.fetch_add(1, Ordering::Relaxed);
                }
            }
        }));
    }
    for sender in senders {
        sender.await?;
    }
    let elapsed = started.elapsed().as_secs_f64();
    done.store(true, Ordering::Relaxed);
    let generator_cpu = (own_cpu_seconds() - cpu_before) / elapsed;
    let mut series = series.await?;
    // A last sample taken after the deadline counts a partial second.
    series.truncate(seconds as usize);
    let saturation = accepted.load(Ordering::Relaxed) as f64 / elapsed;

    // Half the rate, paced: each connection sends on its own schedule.
    let mut connections = Vec::with_capacity(concurrency);
    for _ in 0..concurrency {
        connections.push(KeptAlive::connect(url).await?);
    }
    let (latencies, half_rate) = paced(
        "ingest: half rate, paced",
        connections,
        saturation / 2.0,
        seconds,
        move |connection| {
            let i = next.fetch_add(1, Ordering::Relaxed) as usize % signed.len();
            let signed = signed.clone();
            Box::pin(async move { connection.post(&signed[i]).await })
        },
    )
    .await?;
    Ok(json!({
        "part": "ingest",
        "saturation_per_second": saturation,
        "half_rate_per_second": half_rate,
        "p50_ms": percentile(&latencies, 0.5),
        "p99_ms": percentile(&latencies, 0.99),
        "max_ms": latencies.last().copied().unwrap_or_default(),
        "concurrency": concurrency,
        "generator_cpu": generator_cpu,
        "saturation_series": series,
        "latencies_ms": latencies,
    }))
}

fn read(dir: &Path, part: &str) -> Option<Value> {
    let text = std::fs::read_to_string(dir.join(format!("{part}.json"))).ok()?;
    serde_json::from_str(&text).ok()
}

/// One row of the report's first table.
struct Row {
    figure: String,
    value: String,
    reference: String,
    ratio: Option<f64>,
    target: String,
    met: Option<bool>,
}

/// `report`: the first table (figure, reference, ratio, target, met) and the details.
pub fn report(dir: &Path, notes: &Path) -> anyhow::Result<PathBuf> {
    let broker = read(dir, "broker");
    let ingest = read(dir, "ingest");
    let mut rows = Vec::new();
    if let (Some(broker), Some(ingest)) = (&broker, &ingest) {
        let limit = broker["per_second"].as_f64().unwrap_or_default();
        let saturation = ingest["saturation_per_second"].as_f64().unwrap_or_default();
        let ratio = saturation / limit.max(1.0);
        rows.push(Row {
            figure: "ingest: confirmed webhooks/s at saturation".into(),
            value: format!("{saturation:.0}/s"),
            reference: format!("broker limit {limit:.0}/s"),
            ratio: Some(ratio),
            target: "≥ 0.8 × broker".into(),
            met: Some(ratio >= 0.8),
        });
        let p99 = ingest["p99_ms"].as_f64().unwrap_or_default();
        rows.push(Row {
            figure: format!(
                "ingest: p50 / p99 at half rate ({:.0}/s)",
                ingest["half_rate_per_second"].as_f64().unwrap_or_default()
            ),
            value: format!(
                "{:.1} / {p99:.1} ms",
                ingest["p50_ms"].as_f64().unwrap_or_default()
            ),
            reference: match (
                broker["half_rate_p50_ms"].as_f64(),
                broker["half_rate_p99_ms"].as_f64(),
            ) {
                (Some(p50), Some(p99)) => {
                    format!("broker alone at half its limit: {p50:.1} / {p99:.1} ms")
                }
                _ => "—".into(),
            },
            ratio: None,
            target: "p99 ≤ 10 ms".into(),
            met: Some(p99 <= 10.0),
        });
    }
    if let (Some(worker), Some(pgbench)) = (read(dir, "worker"), read(dir, "pgbench")) {
        let rate = worker["per_second"].as_f64().unwrap_or_default();
        let tps = pgbench["tps"].as_f64().unwrap_or_default();
        let ratio = rate / tps.max(1.0);
        rows.push(Row {
            figure: format!(
                "worker: webhooks/s drained by 2 workers ({} jobs: processing, then failed with a refund)",
                worker["jobs"]
            ),
            value: format!("{rate:.0}/s"),
            reference: format!("pgbench -N, 8 clients: {tps:.0} tps"),
            ratio: Some(ratio),
            target: "≥ 0.5 × pgbench".into(),
            met: Some(ratio >= 0.5 && worker["complete"] == true),
        });
    }
    for (name, target_ms) in [("e2e-500", 20.0), ("e2e-1000", 50.0)] {
        let Some(run) = read(dir, name) else { continue };
        let p99 = run["p99_ms"].as_f64().unwrap_or_default();
        let lost = run["missing"].as_u64().unwrap_or_default()
            + run["out_of_order"].as_u64().unwrap_or_default();
        rows.push(Row {
            figure: format!(
                "end to end: webhook → WebSocket p50 / p99 at {:.0} webhooks/s ({} jobs)",
                run["webhooks_per_second"].as_f64().unwrap_or_default(),
                run["jobs"]
            ),
            value: format!(
                "{:.1} / {p99:.1} ms, {lost} lost, {} creations refused and refunded",
                run["p50_ms"].as_f64().unwrap_or_default(),
                run["refused"].as_u64().unwrap_or_default()
            ),
            reference: "—".into(),
            ratio: None,
            target: format!("p99 ≤ {target_ms} ms, zero lost"),
            met: Some(p99 <= target_ms && lost == 0),
        });
    }
    if let Some(memory) = read(dir, "memory") {
        let peaks = memory["peak_rss_kib"]
            .as_object()
            .map(|services| {
                services
                    .iter()
                    .map(|(service, kib)| {
                        format!(
                            "{service} {:.0} MB",
                            kib.as_f64().unwrap_or_default() / 1024.0
                        )
                    })
                    .collect::<Vec<_>>()
                    .join(", ")
            })
            .unwrap_or_default();
        rows.push(Row {
            figure: "peak RSS of each service in the end-to-end runs".into(),
            value: peaks,
            reference: "—".into(),
            ratio: None,
            target: "reported".into(),
            met: None,
        });
    }
    if let Some(fanout) = read(dir, "fanout") {
        let nchan = read(dir, "fanout-nchan");
        let per_socket = fanout["bytes_per_socket"].as_f64().unwrap_or_default();
        let nchan_per_socket = nchan.as_ref().and_then(|n| n["bytes_per_socket"].as_f64());
        rows.push(Row {
            figure: format!(
                "notifier: memory per connection ({} sockets over {} users)",
                fanout["sockets"], fanout["users"]
            ),
            value: format!("{:.1} KB", per_socket / 1000.0),
            reference: nchan_per_socket.map_or("nchan: not measured".into(), |n| {
                format!("nchan {:.1} KB", n / 1000.0)
            }),
            ratio: nchan_per_socket.map(|n| per_socket / n.max(1.0)),
            target: "≤ 5 KB, and below nchan".into(),
            met: Some(per_socket <= 5000.0 && nchan_per_socket.is_none_or(|n| per_socket < n)),
        });
        let nchan_runs = nchan
            .as_ref()
            .and_then(|n| n["runs"].as_array().cloned())
            .unwrap_or_default();
        for run in fanout["runs"].as_array().cloned().unwrap_or_default() {
            let rate = run["rate"].as_u64().unwrap_or_default();
            let p99 = run["p99_ms"].as_f64().unwrap_or_default();
            let target = if rate <= 1000 { 10.0 } else { 50.0 };
            let complete = run["delivered"] == run["deliveries_expected"];
            rows.push(Row {
                figure: format!("notifier: delivery p50 / p99 at {rate} events/s"),
                value: format!(
                    "{:.1} / {p99:.1} ms ({} of {} delivered; {})",
                    run["p50_ms"].as_f64().unwrap_or_default(),
                    run["delivered"],
                    run["deliveries_expected"],
                    cpu_text(&run["cpu_cores"], "notifier", true)
                ),
                reference: nchan_runs.iter().find(|n| n["rate"] == run["rate"]).map_or(
                    "nchan: not measured".into(),
                    |n| {
                        format!(
                            "nchan {:.1} / {:.1} ms ({} of {}; {})",
                            n["p50_ms"].as_f64().unwrap_or_default(),
                            n["p99_ms"].as_f64().unwrap_or_default(),
                            n["delivered"],
                            n["deliveries_expected"],
                            cpu_text(&n["cpu_cores"], "nginx", false)
                        )
                    },
                ),
                ratio: None,
                target: format!("p99 ≤ {target} ms"),
                met: Some(p99 <= target && complete),
            });
        }
    }
    let mut markdown = String::from(
        "# Benchmark report\n\nEvery figure beside a reference measured in the same run on this machine (2 cores, everything on it: ratios, not absolute times).\n\n| figure | value | reference | ratio | target | met |\n|---|---|---|---|---|---|\n",
    );
    for row in &rows {
        markdown.push_str(&format!(
            "| {} | {} | {} | {} | {} | {} |\n",
            row.figure,
            row.value,
            row.reference,
            row.ratio.map_or("—".into(), |r| format!("{r:.2}")),
            row.target,
            match row.met {
                Some(true) => "yes",
                Some(false) => "**no**",
                None => "—",
            }
        ));
    }
    if let Some(broker) = &broker {
        markdown.push_str(&format!(
            "\n## Broker limit\n\n{} persistent publishes of {} bytes into a quorum queue, {} publishers sharing one channel with pipelined confirms: {:.0}/s.\n",
            broker["confirmed"], broker["payload_bytes"], broker["concurrency"],
            broker["per_second"].as_f64().unwrap_or_default()
        ));
    }
    if let Some(ingest) = &ingest {
        markdown.push_str(&format!(
            "\n## Ingest\n\n{} kept-alive connections, every webhook signed before the clock starts. Saturation: {:.0} confirmed webhooks/s. Paced at half that rate: p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms (from when each request was due). The load generator used {:.0}% of one core.\n",
            ingest["concurrency"],
            ingest["saturation_per_second"].as_f64().unwrap_or_default(),
            ingest["p50_ms"].as_f64().unwrap_or_default(),
            ingest["p99_ms"].as_f64().unwrap_or_default(),
            ingest["max_ms"].as_f64().unwrap_or_default(),
            ingest["generator_cpu"].as_f64().unwrap_or_default() * 100.0,
        ));
    }
    markdown.push_str("\nnchan is Debian's `libnginx-mod-nchan` in nginx (sockets at `/sub/<user>`, events POSTed to `/pub/<user>`), with the same sockets, users and rates.\n");
    let summary: Vec<Value> = rows
        .iter()
        .map(|row| {
            json!({"figure": row.figure, "value": row.value, "reference": row.reference,
                          "ratio": row.ratio, "target": row.target, "met": row.met})
        })
        .collect();
    let mut details = json!({"table": summary});
    if let Some(broker) = broker {
        details["broker"] = broker;
    }
    if let Some(mut ingest) = ingest {
        ingest.as_object_mut().map(|o| o.remove("latencies_ms"));
        details["ingest"] = ingest;
    }
    let mut charts = Vec::new();
    if let Some(chart) = latency_chart(dir)? {
        charts.push(chart);
    }
    if let Some(chart) = throughput_chart(dir)? {
        charts.push(chart);
    }
    if let Some(chart) = memory_chart(dir)? {
        charts.push(chart);
    }
    if !charts.is_empty() {
        markdown.push_str("\n## Charts\n\n");
        for chart in &charts {
            markdown.push_str(&format!("![{chart}]({chart})\n\n"));
        }
    }
    if let Ok(text) = std::fs::read_to_string(notes) {
        markdown.push_str("\n---\n\n");
        markdown.push_str(&text);
    }
    std::fs::write(
        dir.join("report.json"),
        serde_json::to_vec_pretty(&details)?,
    )?;
    let path = dir.join("report.md");
    std::fs::write(&path, markdown)?;
    Ok(path)
}

fn values(run: &Value, field: &str) -> Vec<f64> {
    run[field]
        .as_array()
        .map(|values| values.iter().filter_map(Value::as_f64).collect())
        .unwrap_or_default()
}

/// One line chart: titled, with axes named, a line per series and a legend.
struct LineChart<'a> {
    file: &'static str,
    caption: &'a str,
    x: (&'a str, f64),
    y: (&'a str, f64),
    series: Vec<(String, Vec<(f64, f64)>)>,
    /// A horizontal reference line, labelled.
    reference: Option<(&'a str, f64)>,
}

impl LineChart<'_> {
    /// Draws `<dir>/<file>` and returns the file name.
    fn draw(self, dir: &Path) -> anyhow::Result<&'static str> {
        use plotters::prelude::*;
        let path = dir.join(self.file);
        let root = SVGBackend::new(&path, (800, 420)).into_drawing_area();
        root.fill(&WHITE)?;
        let mut chart = ChartBuilder::on(&root)
            .caption(self.caption, ("sans-serif", 20))
            .margin(12)
            .x_label_area_size(36)
            .y_label_area_size(60)
            .build_cartesian_2d(0f64..self.x.1, 0f64..self.y.1)?;
        chart
            .configure_mesh()
            .x_desc(self.x.0)
            .y_desc(self.y.0)
            .draw()?;
        for (index, (label, points)) in self.series.iter().enumerate() {
            let color = Palette99::pick(index).to_rgba();
            chart
                .draw_series(LineSeries::new(
                    points.iter().copied(),
                    color.stroke_width(2),
                ))?
                .label(label.as_str())
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 16, y)], color));
        }
        if let Some((label, value)) = self.reference {
            chart
                .draw_series(LineSeries::new([(0.0, value), (self.x.1, value)], RED))?
                .label(label)
                .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 16, y)], RED));
        }
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .position(SeriesLabelPosition::LowerRight)
            .draw()?;
        root.present()?;
        Ok(self.file)
    }
}

/// `latency.svg`: the latency distribution (percentile against milliseconds) of each run
/// that recorded its latencies.
fn latency_chart(dir: &Path) -> anyhow::Result<Option<&'static str>> {
    let series: Vec<(String, Vec<(f64, f64)>)> = [
        ("ingest (half rate)", "ingest"),
        ("end to end ~500/s", "e2e-500"),
        ("end to end ~1,000/s", "e2e-1000"),
    ]
    .into_iter()
    .filter_map(|(label, part)| {
        let mut latencies = values(&read(dir, part)?, "latencies_ms");
        latencies.sort_by(f64::total_cmp);
        let n = latencies.len() as f64;
        let points = latencies
            .iter()
            .enumerate()
            .step_by((latencies.len() / 500).max(1))
            .map(|(i, ms)| (*ms, 100.0 * (i as f64 + 1.0) / n))
            .filter(|(_, percentile)| *percentile <= 99.9)
            .collect::<Vec<_>>();
        (!points.is_empty()).then(|| (label.to_owned(), points))
    })
    .collect();
    if series.is_empty() {
        return Ok(None);
    }
    let max = series
        .iter()
        .flat_map(|(_, points)| points.iter().map(|p| p.0))
        .fold(1.0, f64::max);
    LineChart {
        file: "latency.svg",
        caption: "Latency distribution (to the 99.9th percentile)",
        x: ("milliseconds", max * 1.05),
        y: ("percentile", 100.0),
        series,
        reference: None,
    }
    .draw(dir)
    .map(Some)
}

/// `throughput.svg`: confirmed webhooks each second while ingest was saturated, beside
/// the broker's limit.
fn throughput_chart(dir: &Path) -> anyhow::Result<Option<&'static str>> {
    let Some(ingest) = read(dir, "ingest") else {
        return Ok(None);
    };
    let per_second = values(&ingest, "saturation_series");
    if per_second.is_empty() {
        return Ok(None);
    }
    let limit = read(dir, "broker")
        .and_then(|b| b["per_second"].as_f64())
        .unwrap_or_default();
    let top = per_second.iter().fold(limit, |a, b| a.max(*b)) * 1.1;
    let points = per_second
        .iter()
        .enumerate()
        .map(|(i, v)| (i as f64 + 1.0, *v))
        .collect();
    LineChart {
        file: "throughput.svg",
        caption: "Ingest at saturation: confirmed webhooks per second",
        x: ("seconds", per_second.len() as f64),
        y: ("webhooks/s", top.max(1.0)),
        series: vec![("ingest".into(), points)],
        reference: (limit > 0.0).then_some(("broker limit", limit)),
    }
    .draw(dir)
    .map(Some)
}

/// `memory.svg`: memory per connection against the number of connections, the notifier
/// beside nchan.
fn memory_chart(dir: &Path) -> anyhow::Result<Option<&'static str>> {
    let series: Vec<(String, Vec<(f64, f64)>)> =
        [("notifier", "fanout"), ("nginx + nchan", "fanout-nchan")]
            .into_iter()
            .filter_map(|(label, part)| {
                let points: Vec<(f64, f64)> = read(dir, part)?["growth"]
                    .as_array()?
                    .iter()
                    .filter_map(|p| {
                        Some((
                            p["sockets"].as_f64()?,
                            p["bytes_per_socket"].as_f64()? / 1000.0,
                        ))
                    })
                    .collect();
                (!points.is_empty()).then(|| (label.to_owned(), points))
            })
            .collect();
    if series.is_empty() {
        return Ok(None);
    }
    let bound = |axis: fn(&(f64, f64)) -> f64| {
        series
            .iter()
            .flat_map(|(_, points)| points.iter().map(axis))
            .fold(1.0, f64::max)
    };
    let (max_x, max_y) = (bound(|p| p.0), bound(|p| p.1));
    LineChart {
        file: "memory.svg",
        caption: "Memory per connection against connections",
        x: ("open WebSockets", max_x * 1.02),
        y: ("KB per connection", max_y * 1.2),
        series,
        reference: None,
    }
    .draw(dir)
    .map(Some)
}

/// Writes one measurement as `<dir>/<part>.json`.
pub fn save(dir: &Path, result: &Value) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir)?;
    let part = result["part"].as_str().unwrap_or("result");
    std::fs::write(
        dir.join(format!("{part}.json")),
        serde_json::to_vec(result)?,
    )?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_publish_time_of_a_fanout_event() {
        let event = shared::events::Event::JobProgress {
            user_id: "fan-1".into(),
            job: shared::events::JobProgress {
                kind: shared::events::JobKind::Generation,
                id: "t1795973878123456".into(),
                job_id: "bench".into(),
                progress: 0.5,
            },
        };
        let json = serde_json::to_string(&event).unwrap();
        assert_eq!(sent_micros(&json), Some(1_795_973_878_123_456));
        assert_eq!(sent_micros(r#"{"type":"hello","seq":3}"#), None);
    }

    #[test]
    fn the_payload_is_webhook_sized_json() {
        let body = webhook_body("abc");
        assert!((2600..=2800).contains(&body.len()), "{}", body.len());
        let value: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(value["id"], "abc");
        assert!(shared::replicate::JobRef::parse(&body).is_ok());
    }

    #[test]
    fn the_report_compares_with_the_reference() {
        let dir = std::env::temp_dir().join(format!("bench-{}", crate::prediction::new_id()));
        save(&dir, &json!({"part": "broker", "per_second": 1000.0, "confirmed": 10000, "payload_bytes": 2700, "concurrency": 64})).unwrap();
        save(&dir, &json!({"part": "ingest", "saturation_per_second": 700.0, "half_rate_per_second": 350.0,
                           "p50_ms": 2.0, "p99_ms": 12.0, "max_ms": 20.0, "concurrency": 64, "generator_cpu": 0.5,
                           "latencies_ms": [1.0, 2.0]})).unwrap();
        save(
            &dir,
            &json!({"part": "worker", "jobs": 10, "per_second": 600.0, "complete": true}),
        )
        .unwrap();
        save(&dir, &json!({"part": "pgbench", "tps": 1000.0})).unwrap();
        let markdown =
            std::fs::read_to_string(report(&dir, Path::new("no-notes-here.md")).unwrap()).unwrap();
        assert!(
            markdown.contains("| 0.60 | ≥ 0.5 × pgbench | yes |"),
            "{markdown}"
        );
        assert!(
            markdown.contains("| 0.70 | ≥ 0.8 × broker | **no** |"),
            "{markdown}"
        );
        assert!(markdown.contains("p99 ≤ 10 ms | **no** |"), "{markdown}");
        let json: Value =
            serde_json::from_slice(&std::fs::read(dir.join("report.json")).unwrap()).unwrap();
        assert_eq!(json["table"][0]["met"], false);
        assert!(json["ingest"].get("latencies_ms").is_none());
        std::fs::remove_dir_all(dir).unwrap();
    }
}
