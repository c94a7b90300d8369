//! Creations waiting on a slow Replicate hold no database connection and are bounded per
//! user.

use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};

use crate::harness::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_creations_hold_no_database_connection_and_are_bounded_per_user() -> anyhow::Result<()>
{
    const WAIT: Duration = Duration::from_secs(12);
    let api = Arc::new(Api::start(Replicate::Slow(WAIT)).await);
    let creators = ["a", "b", "c"];
    for user in creators {
        api.user(user, 100).await;
    }
    api.user("d", 100).await;
    // 24 creations (8 per user, the per-user bound) waiting on Replicate: more than the
    // pool has connections.
    let mut waiting = Vec::new();
    for user in creators {
        for _ in 0..8 {
            let api = api.clone();
            waiting.push(tokio::spawn(async move {
                api.post("/api/generations", user, json!({"prompt": "a corgi"}))
                    .await
            }));
        }
    }
    let http = shared::http::client_builder().build()?;
    let all_on_replicate = shared::testing::eventually(Duration::from_secs(10), || async {
        let jobs: Vec<Value> =
            shared::testing::get_json(&http, format!("{}/sim/jobs", api.simulator)).await;
        jobs.len() == 24
    })
    .await;
    assert!(
        all_on_replicate.is_ok(),
        "the 24 creations reached Replicate"
    );

    // Meanwhile another user's page and the health answer, before any creation has.
    let (status, page) = api.get("/api/jobs", "d").await;
    assert_eq!(status, 200, "{page}");
    let health = http.get(format!("{}/api/health", api.base)).send().await?;
    assert_eq!(health.status(), 200);
    assert!(
        waiting.iter().all(|creation| !creation.is_finished()),
        "the other calls were answered while every creation still waited on Replicate"
    );

    // A ninth creation of one user is refused, and costs nothing.
    let (status, answer) = api
        .post("/api/generations", "a", json!({"prompt": "one more"}))
        .await;
    assert_eq!(status, 429, "{answer}");
    assert_eq!(api.credits("a").await, 100 - 8 * 4);

    for creation in waiting {
        let (status, answer) = creation.await?;
        assert_eq!(status, 201, "{answer}");
    }
    let (status, _) = api
        .post(
            "/api/generations",
            "a",
            json!({"prompt": "now there is room"}),
        )
        .await;
    assert_eq!(status, 201);
    match Arc::try_unwrap(api) {
        Ok(api) => api.stop().await,
        Err(_) => panic!("the API is still shared"),
    }
    Ok(())
}
