//! `pipeline-bench load`: many jobs at a given rate through the real pipeline, created through
//! the notifier's jobs API, run by a simulator with the same signing, payloads and lifecycle
//! as `serve`; one WebSocket per user; a share of the completed generations upscaled; at the
//! end webhooks/s accepted, webhook → WebSocket latency, and whether every expected event
//! arrived.

use std::collections::HashMap;
use std::net::TcpListener;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use indicatif::{ProgressBar, ProgressStyle};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message;

use replicate_sim::accounts;
use replicate_sim::jobs_client::{JobsClient, Submitted, random_prompt};
use replicate_sim::lifecycle::Simulator;

use crate::config::LoadArgs;
use crate::measure::{BROKER, CpuShares, Who};

/// Share of the jobs that are trainings; the rest are generations.
const TRAINING_SHARE: f64 = 0.1;
/// Share of completed generations that get upscaled.
const UPSCALE_SHARE: f64 = 0.3;

/// What a load run measured.
#[derive(Debug, Clone)]
pub struct LoadReport {
    pub jobs: usize,
    pub elapsed: Duration,
    pub webhooks_accepted: u64,
    pub latencies: Vec<Duration>,
    /// Jobs created whose final event never reached their user's browser: lost.
    pub missing: usize,
    /// Creations the jobs API answered with an error (and refunded): not lost, not run.
    pub refused: usize,
    pub out_of_order: usize,
    /// Cores each part of the machine used during the run (see [`MACHINE_PARTS`]), and the
    /// machine's busy cores.
    pub cpu_cores: serde_json::Value,
}

/// What a load run's CPU is counted for, by program: every service of the pipeline, the
/// two servers it relies on, and this generator (which also runs the simulator and the
/// browsers' sockets).
const MACHINE_PARTS: [(&str, Who); 5] = [
    ("postgres", Who::Program("postgres")),
    ("broker", BROKER),
    ("workers", Who::Program("worker")),
    ("notifier", Who::Program("notifier")),
    ("ingest", Who::Program("ingest")),
];

impl LoadReport {
    pub fn percentile(&self, p: f64) -> Duration {
        if self.latencies.is_empty() {
            return Duration::ZERO;
        }
        let mut sorted = self.latencies.clone();
        sorted.sort();
        let index = ((sorted.len() as f64 - 1.0) * p).round() as usize;
        sorted[index]
    }
}

impl LoadReport {
    /// The figures as JSON (`bench report` reads them).
    pub fn to_json(&self) -> serde_json::Value {
        let ms = |d: Duration| d.as_secs_f64() * 1000.0;
        let seconds = self.elapsed.as_secs_f64();
        serde_json::json!({
            "jobs": self.jobs,
            "seconds": seconds,
            "webhooks_accepted": self.webhooks_accepted,
            "webhooks_per_second": self.webhooks_accepted as f64 / seconds,
            "p50_ms": ms(self.percentile(0.5)),
            "p99_ms": ms(self.percentile(0.99)),
            "max_ms": ms(self.latencies.iter().max().copied().unwrap_or_default()),
            "samples": self.latencies.len(),
            "missing": self.missing,
            "refused": self.refused,
            "out_of_order": self.out_of_order,
            "cpu_cores": self.cpu_cores,
            "latencies_ms": self.latencies.iter().map(|d| ms(*d)).collect::<Vec<_>>(),
        })
    }
}

impl std::fmt::Display for LoadReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let seconds = self.elapsed.as_secs_f64();
        writeln!(f, "jobs:                {}", self.jobs)?;
        writeln!(
            f,
            "webhooks accepted:   {} in {seconds:.1}s ({:.0}/s)",
            self.webhooks_accepted,
            self.webhooks_accepted as f64 / seconds
        )?;
        writeln!(
            f,
            "webhook → WebSocket: p50 {:.1?}, p99 {:.1?}, max {:.1?} ({} samples)",
            self.percentile(0.5),
            self.percentile(0.99),
            self.latencies.iter().max().copied().unwrap_or_default(),
            self.latencies.len()
        )?;
        writeln!(
            f,
            "missing final events: {}, out-of-order events: {}, creations refused (and refunded) by the jobs API: {}",
            self.missing, self.out_of_order, self.refused
        )?;
        write!(f, "{}", machine_text(&self.cpu_cores))
    }
}

#[derive(Default)]
struct Received {
    /// Replicate id → when its final event arrived.
    finals: HashMap<String, Instant>,
    out_of_order: usize,
}

/// Keeps a created job, or counts a refusal.
fn record(
    created: Result<Submitted, replicate_sim::jobs_client::ClientError>,
    submitted: &mut Vec<Submitted>,
    refused: &mut usize,
) {
    match created {
        Ok(job) => submitted.push(job),
        Err(err) => {
            *refused += 1;
            tracing::warn!(error = %err, "job not submitted");
        }
    }
}

/// A generation that completed with an image: a candidate for an upscale.
struct Completed {
    user_id: String,
    id: String,
}

pub async fn run(args: LoadArgs) -> anyhow::Result<LoadReport> {
    let pool = shared::db::prepare(&args.app.database).await?;
    let sim_url = format!("http://{}", args.sim_addr);
    let simulator = Simulator::new(
        args.signing.secrets.primary().clone(),
        args.faults,
        sim_url.clone(),
        Duration::from_millis(args.step_ms),
    );
    let server =
        replicate_sim::api::server(TcpListener::bind(args.sim_addr)?, simulator.clone(), None)?;
    let server_handle = server.handle();
    tokio::spawn(server);
    let client = JobsClient::new(&args.app.notifier_url, args.app.jwt_secret.expose());
    let run_id = replicate_sim::prediction::new_id();
    let users: Vec<String> = (0..args.users.max(1))
        .map(|i| format!("load-{}-{i}", &run_id[..6]))
        .collect();

    let received = Arc::new(Mutex::new(Received::default()));
    let progress = ProgressBar::new(args.jobs as u64).with_style(
        ProgressStyle::with_template("{bar:40} {pos}/{len} jobs finished ({elapsed})")
            .expect("valid template"),
    );
    let (completed_tx, mut completed_rx) = mpsc::unbounded_channel::<Completed>();
    let ws_base = args.app.notifier_url.replacen("http", "ws", 1);
    for user in &users {
        accounts::ensure_user(&pool, user, (args.jobs as i32 + 1) * 40).await?;
        let url = format!(
            "{ws_base}/ws?token={}",
            client.token(user, Duration::from_secs(3600))
        );
        let (mut socket, _) = tokio_tungstenite::connect_async_with_config(
            url,
            Some(crate::measure::client_socket_config()),
            false,
        )
        .await?;
        let received = received.clone();
        let progress = progress.clone();
        let completed_tx = completed_tx.clone();
        let user = user.clone();
        tokio::spawn(async move {
            let mut last_seq = 0;
            while let Some(Ok(message)) = socket.next().await {
                let Message::Text(text) = message else {
                    continue;
                };
                let Ok(event) = serde_json::from_str::<serde_json::Value>(&text) else {
                    continue;
                };
                let Some(seq) = event["seq"].as_i64().filter(|_| event["type"] != "hello") else {
                    continue;
                };
                let mut received = received.lock().expect("not poisoned");
                if seq != last_seq + 1 {
                    received.out_of_order += 1;
                }
                last_seq = seq;
                let job = &event["job"];
                let status = job["status"].as_str().unwrap_or_default();
                if matches!(status, "COMPLETED" | "FAILED" | "CANCELLED")
                    && let Some(job_id) = job["job_id"].as_str()
                    && received
                        .finals
                        .insert(job_id.to_owned(), Instant::now())
                        .is_none()
                {
                    progress.inc(1);
                    if status == "COMPLETED"
                        && job["kind"] == "generation"
                        && let Some(id) = job["id"].as_str()
                    {
                        let _ = completed_tx.send(Completed {
                            user_id: user.clone(),
                            id: id.to_owned(),
                        });
                    }
                }
            }
        });
    }
    drop(completed_tx);

    let started = Instant::now();
    let cpu = CpuShares::start(
        MACHINE_PARTS
            .into_iter()
            .chain([("generator", Who::Pids(vec!["self".into()]))])
            .collect(),
    );
    let mut ticks = tokio::time::interval(Duration::from_secs_f64(1.0 / args.rate.max(0.001)));
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    // Creations run concurrently (as many browsers would), so the rate holds whatever one
    // creation takes; at most this many at once.
    let in_flight = Arc::new(tokio::sync::Semaphore::new(64));
    let client = Arc::new(client);
    let mut creations = tokio::task::JoinSet::new();
    for i in 0..args.jobs {
        ticks.tick().await;
        let user = users[i % users.len()].clone();
        let (creator, permit) = (
            client.clone(),
            in_flight
                .clone()
                .acquire_owned()
                .await
                .expect("never closed"),
        );
        creations.spawn(async move {
            let created = if fastrand::f64() < TRAINING_SHARE {
                creator.train(&user, "load portraits").await
            } else {
                creator.generate(&user, random_prompt()).await
            };
            drop(permit);
            created
        });
        // Upscale some of what has completed so far, as users do.
        while let Ok(done) = completed_rx.try_recv() {
            if fastrand::f64() < UPSCALE_SHARE {
                progress.inc_length(1);
                let client = client.clone();
                creations.spawn(async move { client.upscale(&done.user_id, &done.id).await });
            }
        }
    }
    let mut submitted: Vec<Submitted> = Vec::with_capacity(args.jobs);
    let mut refused = 0;
    while let Some(created) = creations.join_next().await {
        record(
            created.expect("creation task"),
            &mut submitted,
            &mut refused,
        );
    }

    let deadline = Instant::now() + Duration::from_secs(args.timeout_secs);
    loop {
        let done = submitted
            .iter()
            .filter(|job| {
                received
                    .lock()
                    .expect("not poisoned")
                    .finals
                    .contains_key(&job.job_id)
            })
            .count();
        if done == submitted.len() || Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    progress.finish();
    let elapsed = started.elapsed();
    let cpu_cores = cpu.finish();

    server_handle.stop(true).await;
    let received = received.lock().expect("not poisoned");
    let mut latencies = Vec::new();
    let mut missing = 0;
    for job in &submitted {
        match (
            received.finals.get(&job.job_id),
            simulator.terminal_sent_at(&job.job_id),
        ) {
            (Some(arrived), Some(sent)) => latencies.push(arrived.saturating_duration_since(sent)),
            (Some(_), None) => {}
            (None, _) => missing += 1,
        }
    }
    Ok(LoadReport {
        jobs: submitted.len() + refused,
        elapsed,
        webhooks_accepted: simulator
            .accepted
            .load(std::sync::atomic::Ordering::Relaxed),
        latencies,
        missing,
        refused,
        out_of_order: received.out_of_order,
        cpu_cores,
    })
}

/// "CPU: machine 1.63 cores busy (postgres 0.43, broker 0.42, …, generator 0.16)"
/// from a load run's `cpu_cores`.
pub fn machine_text(cores: &serde_json::Value) -> String {
    let share = |name: &str| cores[name].as_f64().unwrap_or_default();
    let parts: Vec<String> = MACHINE_PARTS
        .iter()
        .map(|(part, _)| *part)
        .chain(["generator"])
        .map(|part| format!("{part} {:.2}", share(part)))
        .collect();
    format!(
        "CPU: machine {:.2} cores busy ({})",
        share("machine"),
        parts.join(", ")
    )
}
