//! Output downloads within the operator's limits; permanent failures end the job FAILED
//! with the reason and a refund, transient ones are retried.

use serde_json::json;

use crate::helpers::{TestEnv, prediction};
use crate::images::{self, image_bytes};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn downloads_follow_the_policy() {
    let server = images::start().await;
    let env = TestEnv::new(&server.host).await;
    env.insert_user("u1", 0).await;
    // (generation id, output URL, expected status, expected error fragment)
    let cases = [
        ("allowed", server.url("/img/allowed.png"), "COMPLETED", ""),
        (
            "redirect-in",
            server.url("/redirect-in/inside"),
            "COMPLETED",
            "",
        ),
        ("flaky", server.url("/flaky/flaky.png"), "COMPLETED", ""),
        (
            "host",
            "http://not-allowed.example/x.png".to_owned(),
            "FAILED",
            "not allowed",
        ),
        (
            "redirect-out",
            server.url("/redirect-out"),
            "FAILED",
            "redirect refused",
        ),
        ("missing", server.url("/missing.png"), "FAILED", "404"),
        ("big", server.url("/big.png"), "FAILED", "larger than"),
        ("html", server.url("/page.html"), "FAILED", "not an image"),
        (
            "disguised",
            server.url("/disguised.png"),
            "FAILED",
            "not the image it claims",
        ),
    ];
    for (id, url, _, _) in &cases {
        env.insert_generation(id, "u1", &format!("r-{id}"), "a corgi", 5)
            .await;
        env.send(
            &format!("m-{id}"),
            &prediction(&format!("r-{id}"), "succeeded", json!([url])),
        )
        .await;
    }
    let worker = env.spawn_worker().await;
    let expected: Vec<(&str, &str)> = cases.iter().map(|c| (c.0, c.2)).collect();
    env.wait_for_statuses(&expected).await;
    env.wait_until_idle().await;

    for (id, _, status, error) in &cases {
        let row = env.generation(id).await;
        if *status == "COMPLETED" {
            assert_eq!(row.image_urls.len(), 1, "{id}");
            assert_eq!(row.error_message, None, "{id}");
            assert!(env.refunds_for(&format!("r-{id}")).await.is_empty(), "{id}");
        } else {
            let message = row.error_message.unwrap_or_default();
            assert!(
                message.contains(error),
                "{id}: {message:?} should mention {error:?}"
            );
            assert!(row.image_urls.is_empty(), "{id}");
            assert_eq!(env.refunds_for(&format!("r-{id}")).await, vec![5], "{id}");
        }
    }
    let stored =
        |id: &str| std::fs::read(env.media_dir.join(format!("generations/{id}/0.png"))).unwrap();
    assert_eq!(stored("allowed"), image_bytes("allowed"));
    assert_eq!(stored("redirect-in"), image_bytes("inside"));
    assert_eq!(stored("flaky"), image_bytes("flaky"));
    // Six failures refunded 5 credits each.
    assert_eq!(env.credits("u1").await, 30);
    worker.stop().await;
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_only_unless_http_is_allowed() {
    let server = images::start().await;
    let env = TestEnv::new(&server.host).await;
    env.insert_user("u1", 0).await;
    env.insert_generation("g1", "u1", "r1", "a corgi", 5).await;
    let mut config = env.config.clone();
    config.download.allow_http = false;
    let worker = env.spawn_worker_with(config).await;
    env.send(
        "m1",
        &prediction("r1", "succeeded", json!(server.url("/img/a.png"))),
    )
    .await;
    env.wait_for_statuses(&[("g1", "FAILED")]).await;
    let message = env.generation("g1").await.error_message.unwrap();
    assert!(message.contains("scheme http not allowed"), "{message}");
    worker.stop().await;
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn downloads_stay_within_their_concurrency_and_memory_budget() {
    let server = images::start().await;
    let env = TestEnv::new(&server.host).await;
    env.insert_user("u1", 0).await;
    // 12 jobs of 3 outputs at once, with room for 2 downloads and 3 files in memory: all
    // complete (a job never waits for memory while holding some), never more at once.
    let mut config = env.config.clone();
    config.download.concurrency = 2;
    config.download.budget_bytes = 3 * 64 * 1024;
    let mut expected = Vec::new();
    for job in 0..12 {
        let id = format!("g{job}");
        env.insert_generation(&id, "u1", &format!("r{job}"), "a corgi", 1)
            .await;
        let urls: Vec<String> = (0..3)
            .map(|i| server.url(&format!("/counted/{id}-{i}.png")))
            .collect();
        env.send(
            &format!("m{job}"),
            &prediction(&format!("r{job}"), "succeeded", json!(urls)),
        )
        .await;
        expected.push((id, "COMPLETED"));
    }
    let worker = env.spawn_worker_with(config).await;
    let statuses: Vec<(&str, &str)> = expected.iter().map(|(id, s)| (id.as_str(), *s)).collect();
    env.wait_for_statuses(&statuses).await;
    assert!(
        server.most_in_flight() <= 2,
        "{} downloads at once",
        server.most_in_flight()
    );
    for (id, _) in &expected {
        assert_eq!(env.generation(id).await.image_urls.len(), 3, "{id}");
    }
    worker.stop().await;
    env.cleanup().await;
}
