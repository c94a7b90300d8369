//! Creating a job: debited once, created on Replicate, pushed live; Replicate unreachable
//! or refusing (failed and refunded once); a client hanging up; a notifier stopping.

use std::time::Duration;

use anyhow::Context;
use shared::testing::{Mode, ServiceProxy, browser, upstream_of};

use diesel::prelude::*;
use diesel_async::RunQueryDsl;
use serde_json::{Value, json};
use shared::db::schema::generations;

use crate::harness::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_generation_is_debited_once_created_on_replicate_and_pushed_live() -> anyhow::Result<()> {
    let api = Api::start(Replicate::Simulator).await;
    api.user("u1", 10).await;
    let token = api.auth.mint("u1", Duration::from_secs(60));
    let mut socket = browser::connect(
        api.base.trim_start_matches("http://"),
        &format!("token={token}"),
    )
    .await?;
    let hello = browser::next_json(&mut socket, Duration::from_secs(10))
        .await
        .context("no hello")?;
    assert_eq!(hello["type"], "hello");

    let (status, answer) = api
        .post("/api/generations", "u1", json!({"prompt": "  a corgi  "}))
        .await;
    assert_eq!(status, 201, "{answer}");
    assert_eq!(answer["credits"], 6);
    let job = &answer["job"];
    assert_eq!(job["kind"], "generation");
    assert_eq!(job["status"], "PENDING");
    assert_eq!(job["prompt"], "a corgi");
    assert_eq!(job["credits_used"], 4);
    let replicate_id = job["job_id"].as_str().expect("Replicate's id").to_owned();
    let id = job["id"].as_str().unwrap().to_owned();

    // On Replicate: the official model's route, our webhook URL and every event.
    let created = api.on_replicate("predictions", &replicate_id).await;
    assert_eq!(created["model"], "black-forest-labs/flux-schnell");
    assert_eq!(created["input"]["prompt"], "a corgi");
    // The webhook URL is tagged with the row, so its first webhook can bind the job.
    assert_eq!(
        created["webhook"],
        format!("http://127.0.0.1:9/api/webhooks/replicate?job={id}").as_str()
    );
    assert_eq!(
        created["webhook_events_filter"],
        json!(["start", "output", "logs", "completed"])
    );

    // In the database: the balance, one debit under Replicate's id, the row.
    assert_eq!(api.credits("u1").await, 6);
    assert_eq!(
        api.movements("u1").await,
        vec![("DEBIT".to_owned(), -4, replicate_id.clone())]
    );
    let mut conn = shared::db::connection(&api.services.pool).await?;
    let row: (String, Option<String>, i32) = generations::table
        .find(&id)
        .select((
            generations::status,
            generations::job_id,
            generations::credits_used,
        ))
        .first(&mut conn)
        .await?;
    assert_eq!(row, ("PENDING".to_owned(), Some(replicate_id.clone()), 4));

    // Live: the new job and the balance reach the user's browser.
    let pushed = browser::next_json(&mut socket, Duration::from_secs(10))
        .await
        .expect("the creation is pushed");
    assert_eq!(pushed["type"], "generation_status_changed");
    assert_eq!(pushed["seq"], 1);
    assert_eq!(pushed["credits"], 6);
    assert_eq!(pushed["refunded"], 0);
    assert_eq!(pushed["job"]["id"], id.as_str());
    assert_eq!(pushed["job"]["status"], "PENDING");

    // The list shows the state as of its seq.
    let (status, page) = api.get("/api/jobs", "u1").await;
    assert_eq!(status, 200);
    assert_eq!(page["seq"], 1);
    assert_eq!(page["credits"], 6);
    assert_eq!(page["next"], Value::Null);
    assert_eq!(page["jobs"].as_array().unwrap().len(), 1);
    assert_eq!(page["jobs"][0]["job_id"], replicate_id.as_str());
    assert_eq!(page["jobs_api"]["enabled"], true);
    assert_eq!(page["jobs_api"]["costs"]["generation"], 4);
    api.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicate_unreachable_fails_the_job_and_refunds_it_once() -> anyhow::Result<()> {
    creation_fails_and_refunds(Replicate::Down, "could not be reached").await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicate_refusing_the_job_fails_it_with_replicates_reason() -> anyhow::Result<()> {
    creation_fails_and_refunds(Replicate::WrongToken, "valid authentication token").await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_lost_while_replicate_answers_is_waited_out_and_the_creation_completes()
-> anyhow::Result<()> {
    // The notifier reaches PostgreSQL through a proxy the test cuts, as a primary dying
    // (and a standby taking over) would, while Replicate takes 1.5 s to answer.
    let proxy =
        ServiceProxy::start(upstream_of(shared::testing::database_url("any").as_str())).await;
    let api = Api::start_configured(
        Replicate::Slow(Duration::from_millis(1500)),
        Duration::from_secs(30),
        |config| {
            config.database.url = proxy.url(config.database.url.as_str()).parse().unwrap();
        },
    )
    .await;
    api.user("u1", 10).await;
    let creating = {
        let (http, base, token) = (
            api.http.clone(),
            api.base.clone(),
            api.auth.mint("u1", Duration::from_secs(60)),
        );
        tokio::spawn(async move {
            let response = http
                .post(format!("{base}/api/generations"))
                .bearer_auth(token)
                .json(&json!({"prompt": "a corgi"}))
                .send()
                .await
                .unwrap();
            let status = response.status().as_u16();
            (
                status,
                response.json::<Value>().await.unwrap_or(Value::Null),
            )
        })
    };
    // Debited (the row is there), then the database goes away until after Replicate answered.
    let debited = shared::testing::eventually(Duration::from_secs(5), || async {
        api.credits("u1").await == 6
    })
    .await;
    assert!(debited.is_ok(), "the creation was never debited");
    proxy.set(Mode::Down);
    tokio::time::sleep(Duration::from_millis(2500)).await;
    proxy.set(Mode::Forward);

    let (status, answer) = creating.await?;
    assert_eq!(status, 201, "{answer}");
    let job_id = answer["job"]["job_id"].as_str().expect("Replicate's id");
    assert_eq!(answer["job"]["status"], "PENDING");
    assert_eq!(answer["credits"], 6);
    assert_eq!(
        api.movements("u1").await,
        vec![("DEBIT".to_owned(), -4, job_id.to_owned())],
        "debited once"
    );
    api.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_hanging_up_mid_creation_leaves_the_job_bound_to_replicate() -> anyhow::Result<()>
{
    let api = Api::start(Replicate::Slow(Duration::from_secs(2))).await;
    api.user("u1", 10).await;
    let impatient = shared::http::client_builder()
        .timeout(Duration::from_millis(500))
        .build()?;
    let hung_up = impatient
        .post(format!("{}/api/generations", api.base))
        .bearer_auth(api.auth.mint("u1", Duration::from_secs(60)))
        .json(&json!({"prompt": "a corgi"}))
        .send()
        .await;
    assert!(
        hung_up.is_err(),
        "the client gave up before Replicate answered"
    );

    // The creation goes on without it: Replicate's id is stored on the row and its debit.
    let mut conn = shared::db::connection(&api.services.pool).await?;
    let bound = shared::testing::eventually(Duration::from_secs(10), || async {
        generations::table
            .select(generations::job_id)
            .first::<Option<String>>(&mut shared::db::connection(&api.services.pool).await.unwrap())
            .await
            .ok()
            .flatten()
            .is_some()
    })
    .await;
    assert!(bound.is_ok(), "Replicate's id was never stored");
    let (id, job_id, status): (String, Option<String>, String) = generations::table
        .select((generations::id, generations::job_id, generations::status))
        .first(&mut conn)
        .await?;
    let job_id = job_id.unwrap();
    assert_eq!(status, "PENDING");
    assert_eq!(api.credits("u1").await, 6);
    assert_eq!(
        api.movements("u1").await,
        vec![("DEBIT".to_owned(), -4, job_id.clone())]
    );
    let on_replicate = api.on_replicate("predictions", &job_id).await;
    assert_eq!(
        on_replicate["webhook"],
        format!("http://127.0.0.1:9/api/webhooks/replicate?job={id}").as_str()
    );
    api.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_notifier_stopping_finishes_the_creations_under_way() -> anyhow::Result<()> {
    let mut api = Api::start(Replicate::Slow(Duration::from_secs(2))).await;
    api.user("u1", 10).await;
    let waiting = {
        let request = api
            .http
            .post(format!("{}/api/generations", api.base))
            .bearer_auth(api.auth.mint("u1", Duration::from_secs(60)))
            .json(&json!({"prompt": "a corgi"}));
        tokio::spawn(request.send())
    };
    let http = shared::http::client_builder().build()?;
    let on_replicate = shared::testing::eventually(Duration::from_secs(10), || async {
        let jobs: Vec<Value> =
            shared::testing::get_json(&http, format!("{}/sim/jobs", api.simulator)).await;
        !jobs.is_empty()
    })
    .await;
    assert!(on_replicate.is_ok(), "the creation reached Replicate");

    // SIGTERM while Replicate has not answered yet: the notifier waits for the answer and
    // stores the id before it exits.
    api.shut_down().await;
    let mut conn = shared::db::connection(&api.services.pool).await?;
    let job_id: Option<String> = generations::table
        .select(generations::job_id)
        .first(&mut conn)
        .await?;
    let job_id = job_id.expect("Replicate's id stored before the notifier exited");
    assert_eq!(
        api.movements("u1").await,
        vec![("DEBIT".to_owned(), -4, job_id)]
    );
    let _ = waiting.await;
    api.services.cleanup().await;
    Ok(())
}
