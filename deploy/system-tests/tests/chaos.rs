//! Chaos: while jobs are created through the jobs API (with duplicated, reordered, failing
//! and cancelled webhooks, Replicate answering each creation 400 ms late while the job
//! already runs, and one client in five hanging up before the answer), workers are
//! SIGKILLed and restarted, RabbitMQ and PostgreSQL are restarted, the notifier is SIGKILLed
//! mid-creation under connected browsers, and ingest is cut for longer than Replicate
//! retries (the reconciler must recover those jobs). Then the oracle compares everything
//! with what the simulator decided: every job Replicate ran has its row and its end.
//!
//! It restarts this machine's RabbitMQ and PostgreSQL, so it is not part of the normal
//! suite: `deploy/chaos` runs it (`--quick` in `deploy/test`, after the suite).
//! Jobs are created all through the faults, `CHAOS_RATE` a second (default 15).

mod common;

use std::collections::HashMap;
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::creations::{Creations, rate_from_env};
use common::oracle::{self, Inbox, watch_user};
use common::report::RunReport;
use common::{FAULTY_REPLICATE, JWT_SECRET, Pipeline};
use replicate_sim::accounts;
use replicate_sim::jobs_client::JobsClient;

const USERS: usize = 8;
const START_CREDITS: i32 = 1_000_000;

/// Runs a service-control command; its failure stops the run with what it printed.
fn control(program: &str, args: &[&str]) {
    let output = Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|err| panic!("cannot run {program}: {err}"));
    assert!(
        output.status.success(),
        "{program} {args:?}: {}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

fn restart_rabbitmq() {
    control("rabbitmqctl", &["-q", "stop_app"]);
    std::thread::sleep(Duration::from_secs(1));
    control("rabbitmqctl", &["-q", "start_app"]);
    control("rabbitmqctl", &["-q", "await_startup"]);
}

fn restart_postgresql() {
    let version = std::fs::read_dir("/etc/postgresql")
        .expect("PostgreSQL from Debian's packages")
        .filter_map(Result::ok)
        .map(|entry| entry.file_name().to_string_lossy().into_owned())
        .next()
        .expect("a PostgreSQL cluster");
    control(
        "pg_ctlcluster",
        &["--skip-systemctl-redirect", &version, "main", "restart"],
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "restarts this machine's RabbitMQ and PostgreSQL: run by deploy/chaos"]
async fn nothing_is_lost_under_crashes_restarts_and_cut_webhooks() {
    let rate = rate_from_env("CHAOS_RATE", 15.0);
    let started = Instant::now();
    let replicate: Vec<&str> = [FAULTY_REPLICATE, &["--create-delay-ms", "400"]].concat();
    let mut pipeline = Pipeline::start_with(
        &replicate,
        2,
        &[
            ("REPLICATE_CREATE_TIMEOUT_SECS", "3"),
            ("RECONCILE_AFTER_SECS", "8"),
            ("RECONCILE_INTERVAL_SECS", "2"),
            ("OUTBOX_SWEEP_SECS", "1"),
            (
                "AMQP_URL",
                "amqp://guest:guest@127.0.0.1:5672/%2f?heartbeat=5",
            ),
        ],
    )
    .await;
    let client = Arc::new(JobsClient::new(
        &format!("http://{}", pipeline.notifier),
        JWT_SECRET,
    ));
    let users: Vec<String> = (0..USERS).map(|i| format!("chaos-{i}")).collect();
    let mut inboxes = HashMap::new();
    let mut watchers = Vec::new();
    for user in &users {
        accounts::ensure_user(&pipeline.pool, user, START_CREDITS)
            .await
            .unwrap();
        let inbox = Arc::new(Mutex::new(Inbox::default()));
        inboxes.insert(user.clone(), inbox.clone());
        watchers.push(tokio::spawn(watch_user(
            pipeline.notifier.clone(),
            client.token(user, Duration::from_secs(3600)),
            inbox,
            None,
        )));
    }

    oracle::wait_greeted(inboxes.values()).await;
    // Browsers that close the page 150 ms into a creation Replicate answers after 400 ms.
    let impatient = Arc::new(JobsClient::with_timeout(
        &format!("http://{}", pipeline.notifier),
        JWT_SECRET,
        Duration::from_millis(150),
    ));
    let (creations, creating) =
        Creations::start(vec![client.clone()], vec![impatient], users.clone(), rate);
    let mut faults: Vec<String> = Vec::new();
    let worker_health = |pipeline: &Pipeline, i: usize| {
        format!("http://127.0.0.1:{}/api/health", pipeline.worker_ports[i])
    };
    let moment = || tokio::time::sleep(Duration::from_secs(2));

    // Workers SIGKILLed mid-batch, twice each, and restarted.
    for round in 0..2 {
        for i in 0..2 {
            moment().await;
            let name = format!("worker-{i}");
            pipeline.kill(&name).await;
            tokio::time::sleep(Duration::from_millis(500)).await;
            pipeline.restart(&name);
            pipeline
                .wait_healthy(&name, &worker_health(&pipeline, i))
                .await;
            faults.push(format!("SIGKILL {name} (round {})", round + 1));
        }
    }

    // RabbitMQ restarted under load.
    moment().await;
    restart_rabbitmq();
    faults.push("restart RabbitMQ".into());

    // PostgreSQL restarted (job creation paused: see `pause`).
    moment().await;
    creations.pause().await;
    restart_postgresql();
    faults.push("restart PostgreSQL".into());
    pipeline.wait_notifier_healthy().await;
    creations.resume();

    // The notifier SIGKILLed under connected browsers and creations under way (Replicate
    // has some of them and answers into the void); browsers come back with `since`, and
    // each of those jobs is bound by its first webhook or, never sent, failed and refunded.
    moment().await;
    pipeline.kill("notifier").await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    pipeline.restart("notifier");
    pipeline.wait_notifier_healthy().await;
    faults.push("SIGKILL notifier mid-creation, restart".into());

    // Ingest cut for longer than Replicate retries: those jobs' webhooks are lost for good
    // and only the reconciler can finish them.
    moment().await;
    pipeline.kill("ingest").await;
    tokio::time::sleep(Duration::from_secs(8)).await;
    pipeline.restart("ingest");
    pipeline
        .wait_healthy("ingest", &format!("http://{}/api/health", pipeline.ingest))
        .await;
    faults.push("ingest cut for 8 s (Replicate's retries span 6.3 s here)".into());

    moment().await;
    creations.finish(creating).await;
    let decided = oracle::settle(&pipeline.deployment(), Duration::from_secs(240)).await;
    oracle::wait_delivered(&pipeline.deployment(), &inboxes, Duration::from_secs(30)).await;
    let verdict = oracle::check(&pipeline.deployment(), &decided, START_CREDITS, &inboxes).await;
    let reconnects: usize = inboxes.values().map(|i| i.lock().unwrap().reconnects).sum();
    let mut report = RunReport::new(&pipeline, &decided, &creations).await;
    report.faults(&faults);
    let worker_logs: String = (0..2)
        .map(|i| pipeline.log(&format!("worker-{i}")))
        .collect();
    report.row(
        "jobs bound by their webhook's tag (Replicate's answer not stored yet)",
        worker_logs.matches("bound to its Replicate id").count(),
    );
    report.row(
        "creations abandoned before reaching Replicate (failed, refunded)",
        worker_logs
            .matches("abandoned before Replicate's id")
            .count(),
    );
    report.verdict(reconnects, &verdict);
    report.print(&format!(
        "chaos run ({:.0} s)",
        started.elapsed().as_secs_f64()
    ));
    for watcher in watchers {
        watcher.abort();
    }
    verdict.assert_clean(creations.created(), pipeline.logs.display());
    pipeline.stop().await;
}
