//! Jobs whose webhooks never came: the reconciler asks Replicate (here a stand-in serving
//! the prediction objects) and the answers take the webhook's path; one worker asks.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use actix_web::{App, HttpResponse, HttpServer, web};
use diesel::prelude::*;
use diesel_async::RunQueryDsl;
use serde_json::{Value, json};
use shared::db::schema::generations;

use crate::helpers::{Debited, TestEnv};
use crate::images;

/// Replicate's `GET /v1/predictions/{id}`: the objects it knows, and every id asked for.
#[derive(Default)]
struct Replicate {
    known: Mutex<HashMap<String, Value>>,
    asked: Mutex<Vec<String>>,
}

fn start_replicate(replicate: Arc<Replicate>) -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/v1", listener.local_addr().unwrap());
    let state = web::Data::from(replicate);
    let server = HttpServer::new(move || {
        App::new().app_data(state.clone()).route(
            "/v1/predictions/{id}",
            web::get().to(
                |id: web::Path<String>,
                 request: actix_web::HttpRequest,
                 state: web::Data<Replicate>| async move {
                    assert_eq!(
                        request.headers().get("authorization").unwrap(),
                        "Bearer r8_test",
                        "the token is sent"
                    );
                    state.asked.lock().unwrap().push(id.to_string());
                    match state.known.lock().unwrap().get(id.as_str()) {
                        Some(object) => HttpResponse::Ok().json(object),
                        None => HttpResponse::NotFound().json(json!({"detail": "Not found."})),
                    }
                },
            ),
        )
    })
    .workers(1)
    .disable_signals()
    .listen(listener)
    .unwrap()
    .run();
    tokio::spawn(server);
    url
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jobs_without_news_are_asked_about_and_end_as_replicate_says_once() -> anyhow::Result<()> {
    let images = images::start().await;
    let env = TestEnv::new(&images.host).await;
    let replicate = Arc::new(Replicate::default());
    let api_url = start_replicate(replicate.clone());
    env.insert_user("u1", 0).await;
    for (id, status) in [
        ("done", "succeeded"),
        ("broke", "failed"),
        ("gone", "unknown to Replicate"),
        ("running", "processing"),
        ("fresh", "succeeded"),
    ] {
        env.insert_generation(id, "u1", &format!("r-{id}"), "a corgi", 4)
            .await;
        let mut object = json!({"id": format!("r-{id}"), "status": status, "output": null,
                                "error": null, "logs": ""});
        match status {
            "succeeded" => object["output"] = json!([images.url(&format!("/img/{id}.png"))]),
            "failed" => object["error"] = json!("CUDA out of memory"),
            _ => {}
        }
        if status != "unknown to Replicate" {
            replicate
                .known
                .lock()
                .unwrap()
                .insert(format!("r-{id}"), object);
        }
    }
    // Every job but `fresh` was last touched twenty minutes ago, its webhooks lost.
    diesel::update(generations::table.filter(generations::id.ne("fresh")))
        .set((
            generations::status.eq("PROCESSING"),
            generations::updated_at.eq(chrono::Utc::now() - chrono::Duration::minutes(20)),
        ))
        .execute(&mut env.conn().await)
        .await?;

    // A job the jobs API debited but never got to create on Replicate (no job_id), and a
    // row written by hand (or by the app before this pipeline): never debited here, so
    // never refunded here, however old.
    let twenty_minutes = chrono::Duration::minutes(20);
    env.insert_unbound("abandoned", "PENDING", Debited::Yes, twenty_minutes)
        .await;
    env.insert_unbound("legacy", "PENDING", Debited::No, twenty_minutes)
        .await;

    // Two workers, one reconciler.
    let mut config = env.config.clone();
    config.reconcile.replicate.url = api_url;
    config.reconcile.replicate.token = Some("r8_test").into();
    config.reconcile.interval_secs = 1;
    let first = env.spawn_worker_with(config.clone()).await;
    let mut second_config = config.clone();
    second_config.metrics_addr = "127.0.0.1:0".parse().unwrap();
    let second = env.spawn_worker_with(second_config).await;

    env.wait_for_statuses(&[
        ("done", "COMPLETED"),
        ("broke", "FAILED"),
        ("abandoned", "FAILED"),
    ])
    .await;
    // Replicate's 404 is reported, not acted on: recorded with since when.
    let unconfirmed = || async {
        shared::db::schema::unconfirmed_jobs::table
            .select(shared::db::schema::unconfirmed_jobs::job_id)
            .load::<String>(&mut env.conn().await)
            .await
            .unwrap()
    };
    shared::testing::eventually(std::time::Duration::from_secs(10), || async {
        !unconfirmed().await.is_empty()
    })
    .await
    .expect("the 404 is recorded");
    assert_eq!(unconfirmed().await, ["r-gone"]);
    assert_eq!(
        env.refunds_for("abandoned").await,
        vec![4],
        "refunded under its debit's key"
    );
    assert_eq!(env.generation("done").await.image_urls.len(), 1);
    assert_eq!(env.refunds_for("r-broke").await, vec![4]);
    assert_eq!(
        env.status_of("gone").await,
        "PROCESSING",
        "a 404 fails nothing: it may be a wrong URL or token"
    );
    assert!(env.refunds_for("r-gone").await.is_empty(), "nor refunds");
    assert_eq!(
        env.status_of("legacy").await,
        "PENDING",
        "never debited here"
    );
    assert!(env.refunds_for("legacy").await.is_empty());
    assert_eq!(env.status_of("running").await, "PROCESSING");
    assert_eq!(
        env.status_of("fresh").await,
        "PENDING",
        "not stale: not asked"
    );

    // Three more passes of the reconciler: only one of the two workers asks, each job once
    // (a job Replicate still runs is asked again only after RECONCILE_AFTER_SECS).
    let passes = shared::testing::metric_sum("worker_reconcile_passes_total");
    shared::testing::eventually(std::time::Duration::from_secs(15), || async {
        shared::testing::metric_sum("worker_reconcile_passes_total") >= passes + 3.0
    })
    .await
    .expect("the reconciler keeps passing");
    let mut asked = replicate.asked.lock().unwrap().clone();
    asked.sort();
    assert_eq!(asked, ["r-broke", "r-done", "r-gone", "r-running"]);
    first.stop().await;
    second.stop().await;
    env.cleanup().await;
    Ok(())
}
