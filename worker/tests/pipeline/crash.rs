//! A worker process killed in the middle of a batch (its connection dropped without acks),
//! or after its batch committed but before its acks reached the broker: after a restart
//! every webhook is processed, and nothing takes effect twice.

use std::time::Duration;

use serde_json::json;
use tokio::process::{Child, Command};

use shared::testing::{Mode, ServiceProxy, upstream_of};

use crate::helpers::{TestEnv, prediction};
use crate::images;

fn spawn_worker_process(env: &TestEnv) -> Child {
    spawn_worker_process_on(env, env.config.amqp.url.as_str(), 8)
}

/// A worker process talking to the broker at `amqp_url` (the real one or a proxy), with
/// `concurrency` webhooks in flight at most.
fn spawn_worker_process_on(env: &TestEnv, amqp_url: &str, concurrency: usize) -> Child {
    let config = &env.config;
    Command::new(env!("CARGO_BIN_EXE_worker"))
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("DATABASE_URL", config.database.url.as_str())
        .env("AMQP_URL", amqp_url)
        .env("AMQP_NAME_PREFIX", &config.amqp.name_prefix)
        .env("STORAGE_URL", &config.storage.url)
        .env("MEDIA_BASE_URL", &config.media_base_url)
        .env("WORKER_METRICS_ADDR", "127.0.0.1:0")
        .env("DOWNLOAD_ALLOWED_HOSTS", "127.0.0.1")
        .env("DOWNLOAD_ALLOW_HTTP", "true")
        .env("WORKER_CONCURRENCY", concurrency.to_string())
        .env("RUST_LOG", "warn")
        .kill_on_drop(true)
        .spawn()
        .expect("worker binary starts")
}

async fn count_with_status(env: &TestEnv, ids: &[String], status: &str) -> usize {
    let mut count = 0;
    for id in ids {
        if env.status_of(id).await == status {
            count += 1;
        }
    }
    count
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_mid_batch_then_restarted_processes_everything_once() {
    let server = images::start().await;
    let env = TestEnv::new(&server.host).await;
    let users = ["u1", "u2", "u3"];
    for user in users {
        env.insert_user(user, 1000).await;
    }
    let mut completed = Vec::new();
    let mut failed = Vec::new();
    for i in 0..60 {
        let user = users[i % users.len()];
        let id = format!("g{i}");
        env.insert_generation(&id, user, &format!("r{i}"), "a corgi", 10)
            .await;
        if i % 3 == 0 {
            failed.push(id);
        } else {
            completed.push(id);
        }
    }
    // Every webhook twice; downloads are slow (300 ms) so the kill lands mid-batch.
    for round in 0..2 {
        for i in 0..60 {
            let body = if i % 3 == 0 {
                prediction(&format!("r{i}"), "failed", json!(null))
            } else {
                prediction(
                    &format!("r{i}"),
                    "succeeded",
                    json!([server.url(&format!("/slow/g{i}.png"))]),
                )
            };
            env.send(&format!("m{i}-{round}"), &body).await;
        }
    }

    let mut first = spawn_worker_process(&env);
    shared::testing::eventually(Duration::from_secs(30), || async {
        count_with_status(&env, &completed, "COMPLETED").await >= 5
    })
    .await
    .expect("the first worker makes progress");
    first.kill().await.unwrap(); // SIGKILL: no ack, no goodbye
    let done_before = count_with_status(&env, &completed, "COMPLETED").await;
    assert!(
        done_before < completed.len(),
        "the kill should land mid-batch"
    );

    let second = spawn_worker_process(&env);
    let expected: Vec<(&str, &str)> = completed
        .iter()
        .map(|id| (id.as_str(), "COMPLETED"))
        .chain(failed.iter().map(|id| (id.as_str(), "FAILED")))
        .collect();
    env.wait_for_statuses(&expected).await;
    env.wait_until_idle().await;

    for id in &completed {
        assert_eq!(env.generation(id).await.image_urls.len(), 1, "{id}");
    }
    for (i, id) in failed.iter().enumerate() {
        let job_id = id.replacen('g', "r", 1);
        assert_eq!(env.refunds_for(&job_id).await, vec![10], "{id} ({i})");
    }
    for user in users {
        // 20 jobs per user, a third of them failed and refunded 10 each.
        let refunded = failed.iter().filter(|id| {
            let i: usize = id[1..].parse().unwrap();
            users[i % users.len()] == user
        });
        assert_eq!(
            env.credits(user).await,
            1000 + 10 * refunded.count() as i32,
            "{user}"
        );
        // One event per job, numbered without gaps or duplicates.
        assert_eq!(
            env.stored_seqs(user).await,
            (1..=20).collect::<Vec<i64>>(),
            "{user}"
        );
    }
    assert!(env.dead_letters().await.is_empty());

    // SIGTERM: a graceful stop exits 0.
    let pid = second.id().unwrap();
    let status = std::process::Command::new("kill")
        .arg("-TERM")
        .arg(pid.to_string())
        .status()
        .unwrap();
    assert!(status.success());
    let mut second = second;
    let exit = tokio::time::timeout(Duration::from_secs(20), second.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(exit.success(), "graceful stop: {exit:?}");
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_between_commit_and_ack_loses_and_doubles_nothing() {
    let server = images::start().await;
    let env = TestEnv::new(&server.host).await;
    let users = ["u1", "u2"];
    for user in users {
        env.insert_user(user, 1000).await;
    }
    let mut expected = Vec::new();
    // u1's jobs fail, u2's succeed.
    for i in 0..40 {
        env.insert_generation(
            &format!("g{i}"),
            users[i % 2],
            &format!("r{i}"),
            "a corgi",
            10,
        )
        .await;
        expected.push((
            format!("g{i}"),
            if i % 2 == 0 { "FAILED" } else { "COMPLETED" },
        ));
    }

    // The worker reaches the broker through a proxy; once it consumes, what it sends (acks,
    // event publishes) is held while what the broker sends (deliveries) still arrives.
    let proxy = ServiceProxy::start(upstream_of(env.config.amqp.url.as_str())).await;
    // All 40 in flight at once: each batch waits for its events' confirms, which never come.
    let amqp_url = proxy.url(env.config.amqp.url.as_str());
    let mut first = spawn_worker_process_on(&env, &amqp_url, 64);
    let queue = env.topology.webhooks_queue();
    shared::testing::eventually(Duration::from_secs(30), || async {
        shared::testing::queue_consumers(&env.channel, &queue).await == 1
    })
    .await
    .expect("the first worker consumes");
    proxy.set(Mode::HoldRequests);
    for i in 0..40 {
        let body = if i % 2 == 0 {
            prediction(&format!("r{i}"), "failed", json!(null))
        } else {
            prediction(
                &format!("r{i}"),
                "succeeded",
                json!([server.url(&format!("/img/g{i}.png"))]),
            )
        };
        env.send(&format!("m{i}"), &body).await;
    }
    let ended: Vec<(&str, &str)> = expected.iter().map(|(id, s)| (id.as_str(), *s)).collect();
    env.wait_for_statuses(&ended).await;
    proxy.wait_until_holding().await;
    // Every change is committed; not one ack has reached the broker.
    first.kill().await.unwrap(); // SIGKILL
    proxy.set(Mode::Down);

    let second = spawn_worker_process(&env);
    shared::testing::eventually(Duration::from_secs(30), || async {
        handled_again(&env).await == 40
    })
    .await
    .expect("every webhook is delivered again to the second worker");
    env.wait_until_idle().await;
    shared::testing::eventually(Duration::from_secs(30), || async {
        env.unpublished_events().await == 0
    })
    .await
    .expect("the events the first worker could not publish go out with the sweep");

    for i in 0..40 {
        let refunds = env.refunds_for(&format!("r{i}")).await;
        assert_eq!(refunds, if i % 2 == 0 { vec![10] } else { vec![] }, "r{i}");
        if i % 2 == 1 {
            assert_eq!(env.generation(&format!("g{i}")).await.image_urls.len(), 1);
        }
    }
    // u1's 20 jobs failed and were refunded 10 each, u2's completed; one event per job.
    for (user, credits) in [("u1", 1200), ("u2", 1000)] {
        assert_eq!(env.credits(user).await, credits, "{user}");
        assert_eq!(
            env.stored_seqs(user).await,
            (1..=20).collect::<Vec<i64>>(),
            "{user}"
        );
    }
    assert!(env.dead_letters().await.is_empty());
    drop(second);
    env.cleanup().await;
}

/// Handlings the console's record holds that found their job already changed: the second
/// worker's, of the webhooks the first one had committed.
async fn handled_again(env: &TestEnv) -> i64 {
    use diesel::prelude::*;
    use diesel_async::RunQueryDsl;
    use shared::db::schema::webhook_attempts;
    webhook_attempts::table
        .filter(webhook_attempts::outcome.eq("duplicate"))
        .count()
        .get_result(&mut env.conn().await)
        .await
        .unwrap()
}
