//! `POST /api/jobs/{id}/cancel`: Replicate is asked to cancel a running job (its `canceled`
//! webhook then ends it and refunds it, as any other); a job Replicate has not named yet is
//! cancelled as soon as it is; another user's job is not found, an ended one is a conflict.

use std::time::Duration;

use diesel::prelude::*;
use diesel_async::RunQueryDsl;
use serde_json::json;
use shared::db::schema::generations;

use crate::harness::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_running_job_is_cancelled_on_replicate() -> anyhow::Result<()> {
    // Steps of 20 ms and a prompt that asks for many: the job runs for seconds.
    let api = Api::start_stepping(Replicate::Simulator, Duration::from_millis(20)).await;
    api.user("u1", 10).await;
    api.user("u2", 10).await;
    let (status, created) = api
        .post(
            "/api/generations",
            "u1",
            json!({"prompt": "sim:slow a corgi"}),
        )
        .await;
    assert_eq!(status, 201, "{created}");
    let id = created["job"]["id"].as_str().unwrap().to_owned();
    let replicate_id = created["job"]["job_id"].as_str().unwrap().to_owned();

    let (status, answer) = api
        .post(&format!("/api/jobs/{id}/cancel"), "u2", json!({}))
        .await;
    assert_eq!(status, 404, "another user's job: {answer}");
    let (status, answer) = api
        .post(&format!("/api/jobs/{id}/cancel"), "u1", json!({}))
        .await;
    assert_eq!(status, 202, "{answer}");
    assert_eq!(answer["job"]["id"], id.as_str());
    // The simulator, as Replicate, stops the job at its next step.
    let cancelled = shared::testing::eventually(Duration::from_secs(10), || async {
        api.on_replicate("predictions", &replicate_id).await["status"] == "canceled"
    })
    .await;
    assert!(cancelled.is_ok(), "cancelled on Replicate");
    // The job itself ends through its webhook (the worker's), not here: nothing refunded yet.
    assert_eq!(api.credits("u1").await, 6);
    let (status, answer) = api.get("/api/jobs/nope/cancel", "u1").await;
    assert_eq!(status, 405, "{answer}");
    api.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ended_job_cannot_be_cancelled() -> anyhow::Result<()> {
    let api = Api::start(Replicate::WrongToken).await;
    api.user("u1", 10).await;
    // Replicate refuses it: failed and refunded at once.
    let (status, failed) = api
        .post("/api/generations", "u1", json!({"prompt": "a corgi"}))
        .await;
    assert_eq!(status, 502, "{failed}");
    let id = failed["job"]["id"].as_str().unwrap();
    let (status, answer) = api
        .post(&format!("/api/jobs/{id}/cancel"), "u1", json!({}))
        .await;
    assert_eq!(status, 409, "{answer}");
    assert!(
        answer["error"].as_str().unwrap().contains("already ended"),
        "{answer}"
    );
    assert_eq!(api.credits("u1").await, 10, "refunded once, nothing more");
    api.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_cancelled_before_replicate_names_it_is_cancelled_once_named() -> anyhow::Result<()> {
    let api = std::sync::Arc::new(
        Api::start_stepping(
            Replicate::Slow(Duration::from_secs(2)),
            Duration::from_millis(20),
        )
        .await,
    );
    api.user("u1", 10).await;
    let creating = {
        let api = api.clone();
        tokio::spawn(async move {
            api.post(
                "/api/generations",
                "u1",
                json!({"prompt": "sim:slow a corgi"}),
            )
            .await
        })
    };
    // The row exists (debited) while Replicate has not answered yet.
    let pool = api.services.pool.clone();
    let waiting_row = || async {
        generations::table
            .filter(generations::job_id.is_null())
            .select(generations::id)
            .first::<String>(&mut shared::db::connection(&pool).await.unwrap())
            .await
            .ok()
    };
    shared::testing::eventually(Duration::from_secs(10), || async {
        waiting_row().await.is_some()
    })
    .await
    .expect("the creation is under way");
    let id = waiting_row().await.unwrap();
    let (status, answer) = api
        .post(&format!("/api/jobs/{id}/cancel"), "u1", json!({}))
        .await;
    assert_eq!(status, 202, "{answer}");
    assert_eq!(answer["job"]["job_id"], json!(null), "not named yet");

    let (status, created) = creating.await?;
    assert_eq!(status, 201, "{created}");
    let replicate_id = created["job"]["job_id"].as_str().unwrap().to_owned();
    let cancelled = shared::testing::eventually(Duration::from_secs(10), || async {
        api.on_replicate("predictions", &replicate_id).await["status"] == "canceled"
    })
    .await;
    assert!(cancelled.is_ok(), "cancelled on Replicate once named");
    let api = std::sync::Arc::into_inner(api).expect("the creation task has ended");
    api.stop().await;
    Ok(())
}
