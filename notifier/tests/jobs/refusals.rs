//! Requests refused before anything is debited, and the one upscale a user may ask for:
//! their own completed image.

use std::time::Duration;

use shared::auth::Auth;

use diesel::prelude::*;
use diesel_async::RunQueryDsl;
use serde_json::json;
use shared::db::schema::generations;

use crate::harness::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_requests_change_nothing() -> anyhow::Result<()> {
    let api = Api::start(Replicate::Simulator).await;
    api.user("u1", 10).await;

    let no_token = api
        .call(
            reqwest::Method::POST,
            "/api/generations",
            None,
            Some(json!({"prompt": "x"})),
        )
        .await;
    assert_eq!(no_token.0, 401, "{}", no_token.1);
    let forged =
        Auth::new("another-secret-of-at-least-32-bytes").mint("u1", Duration::from_secs(60));
    let forged = api
        .http
        .get(format!("{}/api/jobs", api.base))
        .bearer_auth(forged)
        .send()
        .await?;
    assert_eq!(forged.status(), 401);

    for (body, why) in [
        (json!({"prompt": ""}), "empty"),
        (json!({"prompt": "   "}), "blank"),
        (json!({"prompt": "é".repeat(2001)}), "over 2,000 characters"),
        (json!({"text": "a corgi"}), "no prompt"),
        (
            json!({"prompt": "[UPSCALED] a corgi"}),
            "a person's prompt taken for an upscale",
        ),
    ] {
        let (status, answer) = api.post("/api/generations", "u1", body).await;
        assert_eq!(status, 400, "{why}: {answer}");
        assert!(answer["error"].as_str().is_some(), "{why}: {answer}");
    }
    let not_json = api
        .http
        .post(format!("{}/api/generations", api.base))
        .bearer_auth(api.auth.mint("u1", Duration::from_secs(60)))
        .body("prompt=a corgi")
        .send()
        .await?;
    assert_eq!(not_json.status(), 400);
    let (status, _) = api
        .post(
            "/api/generations",
            "u1",
            json!({"prompt": "é".repeat(2000)}),
        )
        .await;
    assert_eq!(status, 201, "2,000 characters are allowed");

    for (body, why) in [
        (
            json!({"name": "", "input_images": "https://example.com/a.zip"}),
            "no name",
        ),
        (
            json!({"name": "me", "input_images": "http://example.com/a.zip"}),
            "not https",
        ),
        (json!({"name": "me", "input_images": "a.zip"}), "not a URL"),
    ] {
        let (status, answer) = api.post("/api/models", "u1", body).await;
        assert_eq!(status, 400, "{why}: {answer}");
    }

    // 6 credits left: one more generation (4), then the balance (2) is below the cost.
    let (status, _) = api
        .post("/api/generations", "u1", json!({"prompt": "a corgi"}))
        .await;
    assert_eq!(status, 201);
    let before = api.movements("u1").await;
    let (status, answer) = api
        .post("/api/generations", "u1", json!({"prompt": "a corgi"}))
        .await;
    assert_eq!(status, 402, "{answer}");
    assert!(
        answer["error"].as_str().unwrap().contains("balance is 2"),
        "{answer}"
    );
    assert_eq!(api.credits("u1").await, 2);
    assert_eq!(api.movements("u1").await, before, "nothing changed");
    let (_, page) = api.get("/api/jobs", "u1").await;
    assert_eq!(page["jobs"].as_array().unwrap().len(), 2);
    assert_eq!(page["seq"], 2, "no event for a refused request");

    // A user the app never created has no credits.
    let (status, _) = api
        .post("/api/generations", "ghost", json!({"prompt": "a corgi"}))
        .await;
    assert_eq!(status, 402);

    let (status, _) = api.get("/api/generations", "u1").await;
    assert_eq!(status, 405);
    let (status, _) = api.get("/api/nothing-here", "u1").await;
    assert_eq!(status, 404);
    for query in ["limit=0", "limit=101", "limit=x", "before=garbage"] {
        let (status, answer) = api.get(&format!("/api/jobs?{query}"), "u1").await;
        assert_eq!(status, 400, "{query}: {answer}");
    }
    api.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_ones_own_completed_image_can_be_upscaled_once_at_a_time() -> anyhow::Result<()> {
    let api = Api::start(Replicate::Simulator).await;
    api.user("u1", 100).await;
    api.user("u2", 100).await;
    let (_, created) = api
        .post("/api/generations", "u1", json!({"prompt": "a corgi"}))
        .await;
    let source = created["job"]["id"].as_str().unwrap().to_owned();
    let upscale = format!("/api/generations/{source}/upscale");

    let (status, answer) = api.post(&upscale, "u1", json!({})).await;
    assert_eq!(status, 409, "still PENDING: {answer}");

    // The worker completes it (as a webhook would).
    let mut conn = shared::db::connection(&api.services.pool).await?;
    diesel::update(generations::table.find(&source))
        .set((
            generations::status.eq("COMPLETED"),
            generations::image_urls.eq(vec![
                "http://localhost:8081/media/generations/x/0.png".to_owned(),
            ]),
        ))
        .execute(&mut conn)
        .await?;

    let (status, answer) = api.post(&upscale, "u2", json!({})).await;
    assert_eq!(status, 404, "another user's image: {answer}");
    assert_eq!(api.credits("u2").await, 100);
    let (status, _) = api
        .post("/api/generations/gen_nope/upscale", "u1", json!({}))
        .await;
    assert_eq!(status, 404);

    let (status, answer) = api.post(&upscale, "u1", json!({})).await;
    assert_eq!(status, 201, "{answer}");
    assert_eq!(answer["job"]["kind"], "upscale");
    assert_eq!(answer["job"]["prompt"], "[UPSCALED] a corgi");
    assert_eq!(answer["credits"], 100 - 4 - 2);
    let on_replicate = api
        .on_replicate("predictions", answer["job"]["job_id"].as_str().unwrap())
        .await;
    assert_eq!(
        on_replicate["input"]["image"],
        "http://localhost:8081/media/generations/x/0.png"
    );
    assert_eq!(
        on_replicate["version"], "f121d640bd286e1fdc67f9799164c1d5be36ff74576ee11c803ae5b665dd46aa",
        "a pinned version is sent as such"
    );
    assert_eq!(
        answer["job"]["source_id"],
        source.as_str(),
        "linked to its source"
    );
    // One upscale of an image at a time: a second press does not pay twice.
    let (status, again) = api.post(&upscale, "u1", json!({})).await;
    assert_eq!(status, 409, "{again}");
    assert_eq!(api.credits("u1").await, 100 - 4 - 2);

    // A training: the trainer's version route and the destination.
    let (status, answer) = api
        .post(
            "/api/models",
            "u2",
            json!({"name": "my portraits", "input_images": "https://example.com/me.zip"}),
        )
        .await;
    assert_eq!(status, 201, "{answer}");
    assert_eq!(answer["job"]["kind"], "training");
    assert_eq!(answer["job"]["name"], "my portraits");
    assert_eq!(answer["credits"], 60);
    let training = api
        .on_replicate("trainings", answer["job"]["job_id"].as_str().unwrap())
        .await;
    assert_eq!(
        training["input"]["input_images"],
        "https://example.com/me.zip"
    );
    api.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_replicate_token_creation_is_unavailable_and_listing_works() -> anyhow::Result<()>
{
    let api = Api::start(Replicate::NotConfigured).await;
    api.user("u1", 10).await;
    let (status, answer) = api
        .post("/api/generations", "u1", json!({"prompt": "a corgi"}))
        .await;
    assert_eq!(status, 503, "{answer}");
    assert!(
        answer["error"]
            .as_str()
            .unwrap()
            .contains("REPLICATE_API_TOKEN")
    );
    assert_eq!(api.credits("u1").await, 10);
    let (status, page) = api.get("/api/jobs", "u1").await;
    assert_eq!(status, 200);
    assert_eq!(page["jobs_api"]["enabled"], false);
    assert_eq!(page["credits"], 10);
    api.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_nul_byte_is_the_clients_mistake() -> anyhow::Result<()> {
    let api = Api::start(Replicate::Simulator).await;
    api.user("u1", 10).await;
    let (status, answer) = api
        .post("/api/generations", "u1", json!({"prompt": "a \u{0}corgi"}))
        .await;
    assert_eq!(status, 400, "{answer}");
    assert!(
        answer["error"].as_str().unwrap().contains("NUL"),
        "{answer}"
    );
    let (status, answer) = api
        .get("/api/jobs?before=1764400000000000_gen%00x", "u1")
        .await;
    assert_eq!(status, 400, "{answer}");
    assert_eq!(api.credits("u1").await, 10, "nothing debited");
    assert!(api.movements("u1").await.is_empty());
    api.stop().await;
    Ok(())
}
