//! `GET /api/jobs`: every job once, newest first, page by page, read through an index.

use std::sync::Arc;
use std::time::Duration;

use diesel_async::RunQueryDsl;
use serde_json::json;

use crate::harness::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pages_cover_every_job_once_newest_first() -> anyhow::Result<()> {
    let api = Arc::new(Api::start(Replicate::Simulator).await);
    api.user("u1", 1000).await;
    let mut created = Vec::new();
    for i in 0..5 {
        let (status, answer) = if i == 2 {
            api.post(
                "/api/models",
                "u1",
                json!({"name": "me", "input_images": "https://example.com/me.zip"}),
            )
            .await
        } else {
            api.post("/api/generations", "u1", json!({"prompt": format!("p{i}")}))
                .await
        };
        assert_eq!(status, 201, "{answer}");
        created.push(answer["job"]["id"].as_str().unwrap().to_owned());
    }
    let mut seen = Vec::new();
    let mut path = "/api/jobs?limit=2".to_owned();
    loop {
        let (status, page) = api.get(&path, "u1").await;
        assert_eq!(status, 200, "{page}");
        let jobs = page["jobs"].as_array().unwrap();
        assert!(jobs.len() <= 2);
        seen.extend(jobs.iter().map(|j| j["id"].as_str().unwrap().to_owned()));
        match page["next"].as_str() {
            Some(next) => {
                path = format!(
                    "/api/jobs?limit=2&before={}",
                    form_urlencoded::byte_serialize(next.as_bytes()).collect::<String>()
                )
            }
            None => break,
        }
    }
    created.reverse();
    assert_eq!(seen, created, "every job once, newest first");
    let api = Arc::into_inner(api).unwrap();
    api.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listing_reads_an_index_however_many_rows_other_users_have() -> anyhow::Result<()> {
    let api = Api::start(Replicate::Simulator).await;
    api.user("crowd", 0).await;
    api.user("u1", 10).await;
    let mut conn = shared::db::connection(&api.services.pool).await?;
    // A million jobs of someone else in each table, and a few of ours.
    for (table, extra) in [("generations", "prompt"), ("ai_models", "name")] {
        diesel::sql_query(format!(
            "INSERT INTO {table} (id, user_id, {extra}, status, created_at) \
             SELECT 'crowd-' || i, 'crowd', 'x', 'COMPLETED', now() - i * interval '1 second' \
             FROM generate_series(1, 1000000) AS i"
        ))
        .execute(&mut conn)
        .await?;
        diesel::sql_query(format!(
            "INSERT INTO {table} (id, user_id, {extra}, status) \
             SELECT 'mine-' || i, 'u1', 'x', 'COMPLETED' FROM generate_series(1, 5) AS i"
        ))
        .execute(&mut conn)
        .await?;
        diesel::sql_query(format!("ANALYZE {table}"))
            .execute(&mut conn)
            .await?;
    }
    // Statistics reach the shared counters when a session goes idle (at most once a second).
    let settled = || async {
        let before = (
            scans(&api, "generations").await,
            scans(&api, "ai_models").await,
        );
        tokio::time::sleep(Duration::from_millis(1200)).await;
        before
            == (
                scans(&api, "generations").await,
                scans(&api, "ai_models").await,
            )
    };
    assert!(
        shared::testing::eventually(Duration::from_secs(20), settled)
            .await
            .is_ok()
    );
    let before = (
        scans(&api, "generations").await,
        scans(&api, "ai_models").await,
    );

    let (status, page) = api.get("/api/jobs?limit=3", "u1").await;
    assert_eq!(status, 200, "{page}");
    assert_eq!(page["jobs"].as_array().unwrap().len(), 3);
    let next = page["next"].as_str().unwrap().to_owned();
    let (status, page) = api
        .get(&format!("/api/jobs?limit=3&before={next}"), "u1")
        .await;
    assert_eq!(status, 200, "{page}");

    let after = || async {
        (
            scans(&api, "generations").await,
            scans(&api, "ai_models").await,
        )
    };
    let counted = shared::testing::eventually(Duration::from_secs(10), || async {
        let now = after().await;
        now.0.1 > before.0.1 && now.1.1 > before.1.1
    })
    .await;
    assert!(
        counted.is_ok(),
        "the listing's index scans were never counted"
    );
    let now = after().await;
    assert_eq!(
        (now.0.0, now.1.0),
        (before.0.0, before.1.0),
        "GET /api/jobs scanned a whole table (sequential scans before {before:?}, after {now:?})"
    );
    api.stop().await;
    Ok(())
}
