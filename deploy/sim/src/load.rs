//! `replicate-sim load`: many jobs at a given rate through the real pipeline, with the same
//! signing, payloads and lifecycle as `serve`; one WebSocket per user; at the end webhooks/s
//! accepted, webhook → WebSocket latency, and whether every expected event arrived.

use std::collections::HashMap;
use std::net::TcpListener;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use indicatif::{ProgressBar, ProgressStyle};
use notifier::auth::Auth;
use tokio_tungstenite::tungstenite::Message;

use crate::config::LoadArgs;
use crate::lifecycle::Simulator;
use crate::webapp::{WebApp, random_kind};

/// What a load run measured.
#[derive(Debug, Clone)]
pub struct LoadReport {
    pub jobs: usize,
    pub elapsed: Duration,
    pub webhooks_accepted: u64,
    pub latencies: Vec<Duration>,
    pub missing: usize,
    pub out_of_order: usize,
}

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
        write!(
            f,
            "missing final events: {}, out-of-order events: {}",
            self.missing, self.out_of_order
        )
    }
}

#[derive(Default)]
struct Received {
    /// Replicate id → when its final event arrived.
    finals: HashMap<String, Instant>,
    out_of_order: usize,
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
    let server = crate::api::server(TcpListener::bind(args.sim_addr)?, simulator.clone(), None)?;
    let server_handle = server.handle();
    tokio::spawn(server);
    let app = WebApp::new(pool, &sim_url, &args.app.api_token, &args.app.webhook_url);
    let auth = Auth::new(args.jwt_secret.expose());
    let run_id = crate::prediction::new_id();
    let users: Vec<String> = (0..args.users.max(1))
        .map(|i| format!("load-{}-{i}", &run_id[..6]))
        .collect();

    let received = Arc::new(Mutex::new(Received::default()));
    let progress = ProgressBar::new(args.jobs as u64).with_style(
        ProgressStyle::with_template("{bar:40} {pos}/{len} jobs finished ({elapsed})")
            .expect("valid template"),
    );
    let ws_base = args.notifier_url.replacen("http", "ws", 1);
    for user in &users {
        app.ensure_user(user, (args.jobs as i32 + 1) * 40).await?;
        let url = format!(
            "{ws_base}/ws?token={}",
            auth.mint(user, Duration::from_secs(3600))
        );
        let (mut socket, _) = tokio_tungstenite::connect_async(url).await?;
        let received = received.clone();
        let progress = progress.clone();
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
                let status = event["job"]["status"].as_str().unwrap_or_default();
                if matches!(status, "COMPLETED" | "FAILED" | "CANCELLED")
                    && let Some(job_id) = event["job"]["job_id"].as_str()
                    && received
                        .finals
                        .insert(job_id.to_owned(), Instant::now())
                        .is_none()
                {
                    progress.inc(1);
                }
            }
        });
    }

    let started = Instant::now();
    let mut ticks = tokio::time::interval(Duration::from_secs_f64(1.0 / args.rate.max(0.001)));
    let mut submitted = Vec::with_capacity(args.jobs);
    for i in 0..args.jobs {
        ticks.tick().await;
        let user = &users[i % users.len()];
        match app.submit(user, random_kind()).await {
            Ok(job) => submitted.push(job),
            Err(err) => tracing::warn!(error = %err, "job not submitted"),
        }
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

    server_handle.stop(true).await;
    let received = received.lock().expect("not poisoned");
    let mut latencies = Vec::new();
    let mut missing = args.jobs - submitted.len();
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
        jobs: args.jobs,
        elapsed,
        webhooks_accepted: simulator
            .accepted
            .load(std::sync::atomic::Ordering::Relaxed),
        latencies,
        missing,
        out_of_order: received.out_of_order,
    })
}
