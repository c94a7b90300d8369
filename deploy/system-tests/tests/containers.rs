//! The compose deployment `deploy/containers` started, checked through its front door only:
//! the gallery page loads, browsers follow their jobs over WebSockets, jobs created through
//! the jobs API end as the simulator decided while one of three workers is killed, and a
//! correctly signed webhook is accepted while a forged one is not. Run by
//! `deploy/containers` (it sets the variables below), never by `cargo test` alone.

mod common;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use common::oracle::{self, Deployment, Inbox, watch_user};
use replicate_sim::jobs_client::{JobsClient, random_prompt};
use shared::config::{DatabaseConfig, DatabaseUrl};
use shared::webhook::WebhookSecrets;

const USERS: usize = 6;
const JOBS_BEFORE_KILL: usize = 40;
const JOBS_AFTER_KILL: usize = 40;
const START_CREDITS: i32 = 10_000;

fn var(name: &str) -> anyhow::Result<String> {
    std::env::var(name).with_context(|| format!("{name} is not set: run deploy/containers"))
}

/// A pool on the deployment's database (`DATABASE_URL`, its published port).
async fn deployment_database(pool_size: usize) -> anyhow::Result<shared::db::Pool> {
    let database = DatabaseConfig {
        url: var("DATABASE_URL")?
            .parse::<DatabaseUrl>()
            .map_err(anyhow::Error::msg)?,
        pool_size,
    };
    Ok(shared::db::prepare(&database).await?)
}

/// Runs `docker <args>` and returns its standard output.
fn docker(args: &[&str]) -> anyhow::Result<String> {
    let docker = std::env::var("DOCKER").unwrap_or_else(|_| "docker".into());
    let output = std::process::Command::new(&docker).args(args).output()?;
    ensure!(
        output.status.success(),
        "docker {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&output.stderr)
    );
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

/// Webhooks a worker container has processed, from its own metrics endpoint.
fn webhooks_processed(container: &str) -> anyhow::Result<u64> {
    let metrics = docker(&[
        "exec",
        container,
        "curl",
        "-fs",
        "http://127.0.0.1:9091/metrics",
    ])?;
    Ok(metrics
        .lines()
        .filter(|line| line.starts_with("worker_webhooks_total{"))
        .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64)
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs the compose deployment: run deploy/containers"]
async fn through_the_front_door_with_a_worker_killed() -> anyhow::Result<()> {
    let front = var("CONTAINERS_FRONTDOOR")?;
    let sim = var("CONTAINERS_SIM")?;
    let amqp_url = var("AMQP_URL")?;
    let workers: Vec<String> = var("CONTAINERS_WORKERS")?
        .split_whitespace()
        .map(str::to_owned)
        .collect();
    ensure!(
        workers.len() == 3,
        "three worker containers, got {workers:?}"
    );
    let pool = deployment_database(4).await?;
    let http = shared::http::client_builder().build()?;
    let deployment = Deployment {
        http: &http,
        sim: &sim,
        pool: &pool,
        amqp_url: &amqp_url,
        prefix: "",
        media_base: format!("http://{front}/media"),
        logs: "`docker-compose logs`".into(),
    };

    // The gallery page, through the front door.
    let page = http.get(format!("http://{front}/")).send().await?;
    ensure!(page.status() == 200, "gallery page: {}", page.status());
    ensure!(page.text().await?.contains("<title>Gallery</title>"));

    // Browsers over the front door's /ws, one per user.
    let client = JobsClient::new(&format!("http://{front}"), &var("NOTIFIER_JWT_SECRET")?);
    let run = &shared::testing::unique_name("c")[..10];
    let users: Vec<String> = (0..USERS).map(|i| format!("{run}-user-{i}")).collect();
    let mut inboxes = HashMap::new();
    let mut watchers = Vec::new();
    for user in &users {
        replicate_sim::accounts::ensure_user(&pool, user, START_CREDITS).await?;
        let inbox = Arc::new(Mutex::new(Inbox::default()));
        inboxes.insert(user.clone(), inbox.clone());
        let token = client.token(user, Duration::from_secs(3600));
        watchers.push(tokio::spawn(watch_user(front.clone(), token, inbox, None)));
    }
    oracle::wait_greeted(inboxes.values()).await;

    // Jobs through the jobs API until every worker has processed some of their webhooks.
    let mut created = 0;
    let submit = |index: usize| {
        let client = &client;
        let user = users[index % USERS].clone();
        async move { client.generate(&user, random_prompt()).await }
    };
    for _ in 0..JOBS_BEFORE_KILL {
        submit(created).await?;
        created += 1;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    let processed = loop {
        let processed = workers
            .iter()
            .map(|w| webhooks_processed(w))
            .collect::<anyhow::Result<Vec<_>>>()?;
        if processed.iter().all(|&n| n > 0) {
            break processed;
        }
        if Instant::now() > deadline {
            bail!("not every worker consumed: {processed:?} webhooks processed");
        }
        submit(created).await?;
        created += 1;
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    println!("webhooks processed per worker before the kill: {processed:?}");

    // Kill one worker while jobs keep arriving: its unacknowledged webhooks go to the others.
    let victim = &workers[0];
    let mut killed = false;
    for index in 0..JOBS_AFTER_KILL {
        if index == JOBS_AFTER_KILL / 4 {
            docker(&["kill", victim])?;
            killed = true;
            println!("killed {victim} (SIGKILL) with jobs running");
        }
        submit(created).await?;
        created += 1;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    ensure!(killed);

    let decided = oracle::settle(&deployment, Duration::from_secs(180)).await;
    ensure!(
        decided.len() == created,
        "{created} jobs created, the simulator ran {}",
        decided.len()
    );

    // A correctly signed webhook (a late duplicate of a finished job) is accepted; the same
    // body signed with another secret is refused.
    let secrets: WebhookSecrets = var("REPLICATE_WEBHOOK_SECRET")?.parse()?;
    let to = format!("http://{front}/api/webhooks/replicate");
    let (job_id, decision) = decided.iter().next().context("no job")?;
    let body = replicate_sim::send::body(
        job_id,
        decision["status"].as_str().unwrap_or("succeeded"),
        decision["output"].clone(),
    );
    let webhook_id = format!("msg_{run}");
    let (status, text) = replicate_sim::send::send(secrets.primary(), &to, &webhook_id, &body)
        .await
        .map_err(anyhow::Error::msg)?;
    ensure!(status == 200, "signed webhook: {status} {text}");
    let forged =
        shared::webhook::WebhookSecret::from_bytes(b"not-the-secret-of-this-pipeline".to_vec());
    let (status, _) =
        replicate_sim::send::send(&forged, &to, &format!("{webhook_id}-forged"), &body)
            .await
            .map_err(anyhow::Error::msg)?;
    ensure!(status == 401, "forged webhook: {status}");

    oracle::wait_delivered(&deployment, &inboxes, Duration::from_secs(30)).await;
    let verdict = oracle::check(&deployment, &decided, START_CREDITS, &inboxes).await;
    for watcher in watchers {
        watcher.abort();
    }
    ensure!(
        verdict.mismatches.is_empty(),
        "{} mismatches: {:#?}",
        verdict.mismatches.len(),
        verdict.mismatches
    );
    ensure!(verdict.jobs_checked == created);
    println!(
        "containers: {created} jobs, {} events checked in {USERS} browsers, 0 mismatches; {} webhooks sent by the simulator",
        verdict.events_checked,
        decided
            .values()
            .map(|j| j["webhooks_sent"].as_u64().unwrap_or_default())
            .sum::<u64>()
    );
    Ok(())
}

/// The state of alert `name` in Prometheus (`firing`, `pending`), `None` when inactive.
async fn alert_state(
    http: &reqwest::Client,
    prometheus: &str,
    name: &str,
) -> anyhow::Result<Option<String>> {
    let answer: serde_json::Value = http
        .get(format!("http://{prometheus}/api/v1/alerts"))
        .send()
        .await?
        .json()
        .await?;
    Ok(answer["data"]["alerts"]
        .as_array()
        .context("Prometheus's alerts")?
        .iter()
        .find(|alert| alert["labels"]["alertname"] == name)
        .and_then(|alert| alert["state"].as_str().map(str::to_owned)))
}

/// One instant query's single value.
async fn query(http: &reqwest::Client, prometheus: &str, expr: &str) -> anyhow::Result<f64> {
    let answer: serde_json::Value = http
        .get(reqwest::Url::parse_with_params(
            &format!("http://{prometheus}/api/v1/query"),
            [("query", expr)],
        )?)
        .send()
        .await?
        .json()
        .await?;
    answer["data"]["result"][0]["value"][1]
        .as_str()
        .and_then(|v| v.parse().ok())
        .with_context(|| format!("no value for {expr}: {answer}"))
}

/// The console through the front door, Prometheus scraping every service, and the backlog
/// alert proven: the workers stopped while webhooks arrive, `WebhooksBackingUp` fires; the
/// workers back, it clears. Runs after the test above, on the same deployment.
#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs the compose deployment: run deploy/containers"]
async fn the_backlog_alert_fires_when_workers_stop_and_clears_when_they_return()
-> anyhow::Result<()> {
    const ALERT: &str = "WebhooksBackingUp";
    let front = var("CONTAINERS_FRONTDOOR")?;
    let prometheus = var("CONTAINERS_PROMETHEUS")?;
    let operator_token = var("OPERATOR_TOKEN")?;
    let workers: Vec<String> = var("CONTAINERS_WORKERS")?
        .split_whitespace()
        .map(str::to_owned)
        .collect();
    let http = shared::http::client_builder().build()?;

    // The operator console, behind the front door, only with its token.
    let refused = http
        .get(format!("http://{front}/ops/api/now"))
        .send()
        .await?;
    ensure!(
        refused.status() == 401,
        "console without the token: {}",
        refused.status()
    );
    let now: serde_json::Value = http
        .get(format!("http://{front}/ops/api/now"))
        .bearer_auth(&operator_token)
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?;
    ensure!(now["queues"][0]["name"] == "replicate.webhooks", "{now}");

    // Every service is scraped.
    let mut up = String::new();
    for _ in 0..30 {
        let targets: serde_json::Value = http
            .get(format!("http://{prometheus}/api/v1/targets"))
            .send()
            .await?
            .json()
            .await?;
        let healthy: std::collections::BTreeSet<String> = targets["data"]["activeTargets"]
            .as_array()
            .context("targets")?
            .iter()
            .filter(|t| t["health"] == "up")
            .filter_map(|t| t["labels"]["job"].as_str().map(str::to_owned))
            .collect();
        up = healthy.iter().cloned().collect::<Vec<_>>().join(", ");
        if [
            "ingest",
            "worker",
            "notifier",
            "rabbitmq",
            "rabbitmq-queues",
        ]
        .iter()
        .all(|job| healthy.contains(*job))
        {
            break;
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    println!("prometheus targets up: {up}");
    ensure!(
        up.contains("notifier") && up.contains("rabbitmq-queues"),
        "targets up: {up}"
    );
    ensure!(
        alert_state(&http, &prometheus, ALERT).await?.is_none(),
        "{ALERT} active before anything happened"
    );

    // A finished job's late webhooks: accepted, and applied as no-ops once workers return.
    let pool = deployment_database(2).await?;
    let job_id: String = {
        use diesel::prelude::*;
        use diesel_async::RunQueryDsl;
        use shared::db::schema::generations;
        let mut conn = shared::db::connection(&pool).await?;
        generations::table
            .filter(generations::status.eq("COMPLETED"))
            .filter(generations::job_id.is_not_null())
            .select(generations::job_id.assume_not_null())
            .first(&mut conn)
            .await?
    };
    let secrets: WebhookSecrets = var("REPLICATE_WEBHOOK_SECRET")?.parse()?;
    let to = format!("http://{front}/api/webhooks/replicate");
    let body = replicate_sim::send::body(&job_id, "processing", serde_json::Value::Null);

    for worker in &workers {
        // One was killed by the test above; starting and stopping it again is harmless.
        let _ = docker(&["start", worker]);
        docker(&["stop", "-t", "10", worker])?;
    }
    let stopped = Instant::now();
    println!("stopped the workers: {}", workers.join(" "));
    let run = shared::testing::unique_name("alert");
    for index in 0..150 {
        let (status, text) =
            replicate_sim::send::send(secrets.primary(), &to, &format!("{run}-{index}"), &body)
                .await
                .map_err(anyhow::Error::msg)?;
        ensure!(
            status == 200,
            "webhook {index} with the workers stopped: {status} {text}"
        );
    }
    let fired = loop {
        if alert_state(&http, &prometheus, ALERT).await?.as_deref() == Some("firing") {
            break stopped.elapsed();
        }
        ensure!(
            stopped.elapsed() < Duration::from_secs(240),
            "{ALERT} did not fire within 240 s of the workers stopping"
        );
        tokio::time::sleep(Duration::from_secs(2)).await;
    };
    let waiting = query(
        &http,
        &prometheus,
        "max(pipeline_queue_messages{queue=\"replicate.webhooks\"})",
    )
    .await?;

    for worker in &workers {
        docker(&["start", worker])?;
    }
    let back = Instant::now();
    let cleared = loop {
        if alert_state(&http, &prometheus, ALERT).await?.is_none() {
            break back.elapsed();
        }
        ensure!(
            back.elapsed() < Duration::from_secs(180),
            "{ALERT} still active 180 s after the workers came back"
        );
        tokio::time::sleep(Duration::from_secs(2)).await;
    };
    println!(
        "alerts: {ALERT} fired {} s after the workers stopped ({waiting} webhooks waiting), cleared {} s after they were back",
        fired.as_secs(),
        cleared.as_secs()
    );
    Ok(())
}
