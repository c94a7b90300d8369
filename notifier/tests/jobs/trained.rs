//! Generating with a model the user trained: `GET /api/models` lists them for the picker,
//! `POST /api/generations {"prompt", "model"}` runs on the model's version and the job names
//! the model; another user's model is not found, one not completed is a conflict, and a
//! version Replicate never made is refused (failed and refunded, as any refusal).

use std::time::Duration;

use diesel::prelude::*;
use diesel_async::RunQueryDsl;
use serde_json::{Value, json};
use shared::db::schema::ai_models;

use crate::harness::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_generation_runs_on_a_model_the_user_trained() -> anyhow::Result<()> {
    let api = Api::start(Replicate::Quick).await;
    api.user("u1", 100).await;
    api.user("u2", 100).await;
    let (status, training) = api
        .post(
            "/api/models",
            "u1",
            json!({"name": "Me", "input_images": "https://example.com/me.zip"}),
        )
        .await;
    assert_eq!(status, 201, "{training}");
    let model_id = training["job"]["id"].as_str().unwrap().to_owned();
    let training_id = training["job"]["job_id"].as_str().unwrap().to_owned();

    // Not completed yet (the worker has not applied the training's webhook here).
    let (status, refused) = api
        .post(
            "/api/generations",
            "u1",
            json!({"prompt": "me as an astronaut", "model": model_id}),
        )
        .await;
    assert_eq!(status, 409, "{refused}");
    // What the worker stores when the training succeeds: the version Replicate made.
    shared::testing::eventually(Duration::from_secs(20), || async {
        api.on_replicate("trainings", &training_id).await["status"] == "succeeded"
    })
    .await
    .expect("the training succeeds on Replicate");
    let on_replicate: Value = api.on_replicate("trainings", &training_id).await;
    let version = on_replicate["output"]["version"]
        .as_str()
        .unwrap()
        .to_owned();
    let mut conn = shared::db::connection(&api.services.pool).await?;
    diesel::update(ai_models::table.find(&model_id))
        .set((
            ai_models::status.eq("COMPLETED"),
            ai_models::model_version.eq(&version),
        ))
        .execute(&mut conn)
        .await?;

    let (status, models) = api.get("/api/models", "u1").await;
    assert_eq!(status, 200, "{models}");
    assert_eq!(models["models"][0]["id"], model_id.as_str());
    assert_eq!(models["models"][0]["status"], "COMPLETED");
    assert_eq!(models["models"][0]["model_version"], version.as_str());
    let (_, none) = api.get("/api/models", "u2").await;
    assert_eq!(none["models"], json!([]), "only one's own models");

    let (status, answer) = api
        .post(
            "/api/generations",
            "u2",
            json!({"prompt": "me", "model": model_id}),
        )
        .await;
    assert_eq!(status, 404, "another user's model: {answer}");

    let (status, created) = api
        .post(
            "/api/generations",
            "u1",
            json!({"prompt": "me as an astronaut", "model": model_id}),
        )
        .await;
    assert_eq!(status, 201, "{created}");
    assert_eq!(
        created["job"]["model"],
        json!({"id": model_id, "name": "Me"})
    );
    let prediction = api
        .on_replicate("predictions", created["job"]["job_id"].as_str().unwrap())
        .await;
    let (_, hash) = version.split_once(':').unwrap();
    assert_eq!(prediction["version"], hash, "runs on the trained version");
    let (_, page) = api.get("/api/jobs", "u1").await;
    let listed = page["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .find(|job| job["id"] == created["job"]["id"])
        .unwrap();
    assert_eq!(
        listed["model"]["name"], "Me",
        "the list names the model too"
    );

    // A version Replicate never made: refused, failed and refunded.
    diesel::update(ai_models::table.find(&model_id))
        .set(ai_models::model_version.eq("sim/forged:0123456789abcdef"))
        .execute(&mut conn)
        .await?;
    let before = api.credits("u1").await;
    let (status, refused) = api
        .post(
            "/api/generations",
            "u1",
            json!({"prompt": "me", "model": model_id}),
        )
        .await;
    assert_eq!(status, 502, "{refused}");
    assert!(
        refused["error"].as_str().unwrap().contains("version"),
        "{refused}"
    );
    assert_eq!(api.credits("u1").await, before, "refunded");
    drop(conn);
    api.stop().await;
    Ok(())
}
