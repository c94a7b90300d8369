//! The contract's status table, for each kind of job.

use serde_json::json;

use crate::helpers::{TestEnv, prediction};
use crate::images::{self, image_bytes};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_row_of_the_status_table_for_every_kind() {
    let server = images::start().await;
    let env = TestEnv::new(&server.host).await;
    let worker = env.spawn_worker().await;
    let table = [
        ("starting", "PROCESSING", false),
        ("processing", "PROCESSING", false),
        ("succeeded", "COMPLETED", false),
        ("failed", "FAILED", true),
        ("canceled", "CANCELLED", true),
        ("aborted", "CANCELLED", true),
    ];
    let kinds = ["generation", "upscale", "training"];
    let mut expected = Vec::new();
    for kind in kinds {
        for (incoming, stored, refunded) in table {
            let user = format!("u-{kind}-{incoming}");
            let id = format!("{kind}-{incoming}");
            let job_id = format!("r-{kind}-{incoming}");
            env.insert_user(&user, 100).await;
            match kind {
                "training" => env.insert_training(&id, &user, &job_id, 30).await,
                "upscale" => {
                    env.insert_generation(&id, &user, &job_id, "[UPSCALED] corgi", 30)
                        .await
                }
                _ => {
                    env.insert_generation(&id, &user, &job_id, "a corgi", 30)
                        .await
                }
            }
            let output = match (kind, incoming) {
                ("training", "succeeded") => {
                    json!({"version": "me/model:abc123", "weights": "https://weights.replicate.delivery/w.tar"})
                }
                ("upscale", "succeeded") => json!(server.url(&format!("/img/{id}.png"))),
                (_, "succeeded") => json!([
                    server.url(&format!("/img/{id}-0.png")),
                    server.url(&format!("/img/{id}-1.png"))
                ]),
                _ => json!(null),
            };
            env.send(&format!("msg-{id}"), &prediction(&job_id, incoming, output))
                .await;
            expected.push((id, user, job_id, kind, incoming, stored, refunded));
        }
    }
    let statuses: Vec<(&str, &str)> = expected.iter().map(|e| (e.0.as_str(), e.5)).collect();
    env.wait_for_statuses(&statuses).await;
    env.wait_until_idle().await;

    for (id, user, job_id, kind, incoming, _, refunded) in &expected {
        let credits = env.credits(user).await;
        let refunds = env.refunds_for(job_id).await;
        if *refunded {
            assert_eq!((credits, refunds), (130, vec![30]), "{kind} {incoming}");
        } else {
            assert_eq!((credits, refunds), (100, vec![]), "{kind} {incoming}");
        }
        match (*kind, *incoming) {
            ("training", "succeeded") => {
                let (_, version, weights) = env.training(id).await;
                assert_eq!(version.as_deref(), Some("me/model:abc123"));
                assert_eq!(
                    weights.as_deref(),
                    Some("https://weights.replicate.delivery/w.tar")
                );
            }
            ("upscale", "succeeded") => {
                let row = env.generation(id).await;
                assert_eq!(
                    row.image_urls,
                    [format!("http://media.test/media/generations/{id}/0.png")]
                );
                let stored =
                    std::fs::read(env.media_dir.join(format!("generations/{id}/0.png"))).unwrap();
                assert_eq!(stored, image_bytes(id));
            }
            ("generation", "succeeded") => {
                let row = env.generation(id).await;
                assert_eq!(row.image_urls.len(), 2);
                for index in 0..2 {
                    assert_eq!(
                        row.image_urls[index],
                        format!("http://media.test/media/generations/{id}/{index}.png")
                    );
                    let stored =
                        std::fs::read(env.media_dir.join(format!("generations/{id}/{index}.png")))
                            .unwrap();
                    assert_eq!(
                        stored,
                        image_bytes(&format!("{id}-{index}")),
                        "output order"
                    );
                }
            }
            ("generation" | "upscale", "failed") => {
                assert_eq!(
                    env.generation(id).await.error_message.as_deref(),
                    Some("CUDA out of memory")
                );
            }
            _ => {}
        }
    }
    worker.stop().await;
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn out_of_order_and_late_webhooks_change_nothing() {
    let server = images::start().await;
    let env = TestEnv::new(&server.host).await;
    env.insert_user("u1", 50).await;
    env.insert_generation("g1", "u1", "r1", "a corgi", 10).await;
    env.insert_generation("g2", "u1", "r2", "a corgi", 10).await;
    let worker = env.spawn_worker().await;

    let done = json!([server.url("/img/g1.png")]);
    env.send("m1", &prediction("r1", "succeeded", done)).await;
    env.wait_for_statuses(&[("g1", "COMPLETED")]).await;
    // Late, out of order: a processing, a starting and a failed after the end.
    env.send("m2", &prediction("r1", "processing", json!(null)))
        .await;
    env.send("m3", &prediction("r1", "starting", json!(null)))
        .await;
    env.send("m4", &prediction("r1", "failed", json!(null)))
        .await;
    // Unknown statuses are accepted and ignored.
    env.send("m5", &prediction("r2", "queued_for_gpu", json!(null)))
        .await;
    env.wait_until_idle().await;

    let row = env.generation("g1").await;
    assert_eq!(row.status, "COMPLETED");
    assert_eq!(row.image_urls.len(), 1);
    assert_eq!(row.error_message, None);
    assert_eq!(env.refunds_for("r1").await, Vec::<i32>::new());
    assert_eq!(env.status_of("g2").await, "PENDING");
    assert_eq!(env.credits("u1").await, 50);
    assert!(env.dead_letters().await.is_empty());

    let client = shared::http::client_builder().build().unwrap();
    let base = format!("http://127.0.0.1:{}", worker.metrics_port);
    let health: serde_json::Value =
        shared::testing::get_json(&client, format!("{base}/api/health")).await;
    assert_eq!(
        health,
        json!({"status": "healthy", "broker": "connected", "database": "connected"})
    );
    let metrics = client
        .get(format!("{base}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains(r#"worker_webhooks_total{kind="generation",outcome="already_terminal"}"#),
        "{metrics}"
    );
    assert!(
        metrics.contains("worker_processing_duration_seconds_bucket"),
        "{metrics}"
    );
    worker.stop().await;
    env.cleanup().await;
}
