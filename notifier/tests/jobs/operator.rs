//! The operator API under `/ops/`: only the operator token opens it (and it opens nothing
//! else), stuck jobs asked about or failed and refunded once, dead letters listed and
//! replayed with a mark, the webhook record filtered and searched.

use std::time::Duration;

use diesel::prelude::*;
use diesel_async::RunQueryDsl;
use lapin::BasicProperties;
use lapin::options::{BasicGetOptions, BasicPublishOptions};
use lapin::types::{AMQPValue, FieldTable, LongString};
use reqwest::Method;
use serde_json::{Value, json};
use shared::db::schema::{
    generations, job_events, operator_actions, unconfirmed_jobs, webhook_attempts,
};

use crate::harness::{Api, OPERATOR_TOKEN, Replicate};

const OPS_CALLS: [(&str, &str); 9] = [
    ("GET", "/ops/"),
    ("GET", "/ops/api/now"),
    ("GET", "/ops/api/webhooks"),
    ("GET", "/ops/api/jobs/g-1"),
    ("GET", "/ops/api/stuck"),
    ("GET", "/ops/api/dead-letters"),
    ("POST", "/ops/api/jobs/g-1/fail"),
    ("POST", "/ops/api/jobs/g-1/ask-replicate"),
    ("POST", "/ops/api/dead-letters/replay"),
];

fn method(name: &str) -> Method {
    name.parse().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_operator_token_opens_the_console_and_it_opens_nothing_else() {
    let api = Api::start(Replicate::Simulator).await;
    api.user("u1", 100).await;
    let user_token = api.auth.mint("u1", Duration::from_secs(60));
    let near_miss = format!("{}x", OPERATOR_TOKEN);
    for (verb, path) in OPS_CALLS {
        for token in [None, Some(user_token.as_str()), Some(near_miss.as_str())] {
            let (status, _) = api.ops(method(verb), path, token, Some(json!({}))).await;
            assert_eq!(status, 401, "{verb} {path} with {token:?}");
        }
        let (status, answer) = api
            .ops(method(verb), path, Some(OPERATOR_TOKEN), Some(json!({})))
            .await;
        assert_ne!(status, 401, "{verb} {path}: {answer}");
    }
    // Without the token the page is the sign-in form (a browser cannot send a header when
    // it opens a page); with it, the console itself.
    let signin = api
        .http
        .get(format!("{}/ops/", api.base))
        .send()
        .await
        .unwrap();
    assert_eq!(signin.status(), 401);
    let text = signin.text().await.unwrap();
    assert!(
        text.contains("Operator token") && !text.contains("Dead letters"),
        "{text}"
    );
    let page = api
        .http
        .get(format!("{}/ops/", api.base))
        .bearer_auth(OPERATOR_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(page.status(), 200);
    assert_eq!(page.headers()["cache-control"], "no-store");
    let text = page.text().await.unwrap();
    assert!(text.contains("Dead letters") && !text.contains("/*CONSOLE_JS*/"));

    // No user endpoint takes the operator token.
    for (verb, path) in [
        ("GET", "/api/jobs"),
        ("POST", "/api/generations"),
        ("GET", "/api/models"),
    ] {
        let (status, _) = api
            .ops(
                method(verb),
                path,
                Some(OPERATOR_TOKEN),
                Some(json!({"prompt": "a corgi"})),
            )
            .await;
        assert_eq!(status, 401, "{verb} {path}");
    }
    let socket = api
        .http
        .get(format!("{}/ws?token={OPERATOR_TOKEN}", api.base))
        .send()
        .await
        .unwrap();
    assert_eq!(socket.status(), 401);
    assert_eq!(api.credits("u1").await, 100);
    api.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_an_operator_token_there_is_no_console() {
    let api = Api::start_configured(Replicate::Simulator, Duration::from_secs(30), |config| {
        config.ops.operator_token = None;
    })
    .await;
    for (verb, path) in OPS_CALLS {
        let (status, _) = api
            .ops(method(verb), path, Some(OPERATOR_TOKEN), None)
            .await;
        assert_eq!(status, 404, "{verb} {path}");
    }
    api.stop().await;
}

/// Makes job `id` look as if nothing was heard of it for an hour.
async fn age(api: &Api, id: &str) {
    let mut conn = shared::db::connection(&api.services.pool).await.unwrap();
    diesel::update(generations::table.find(id))
        .set(generations::updated_at.eq(chrono::Utc::now() - chrono::Duration::hours(1)))
        .execute(&mut conn)
        .await
        .unwrap();
}

fn stuck_ids(answer: &Value) -> Vec<String> {
    answer["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|job| job["id"].as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stuck_job_is_failed_and_refunded_once_by_an_operator() {
    let api = Api::start(Replicate::Simulator).await;
    api.user("u1", 100).await;
    let (status, created) = api
        .post("/api/generations", "u1", json!({"prompt": "a corgi"}))
        .await;
    assert_eq!(status, 201, "{created}");
    let id = created["job"]["id"].as_str().unwrap().to_owned();
    let (_, fresh) = api
        .ops(Method::GET, "/ops/api/stuck", Some(OPERATOR_TOKEN), None)
        .await;
    assert!(
        !stuck_ids(&fresh).contains(&id),
        "news a moment ago: not stuck"
    );
    age(&api, &id).await;
    let (status, stuck) = api
        .ops(Method::GET, "/ops/api/stuck", Some(OPERATOR_TOKEN), None)
        .await;
    assert_eq!(status, 200);
    assert_eq!(stuck_ids(&stuck), std::slice::from_ref(&id));
    assert_eq!(stuck["jobs"][0]["credits_used"], 4);

    let fail = format!("/ops/api/jobs/{id}/fail");
    let (status, answer) = api
        .ops(
            Method::POST,
            &fail,
            Some(OPERATOR_TOKEN),
            Some(json!({"reason": "  "})),
        )
        .await;
    assert_eq!(status, 400, "a reason is required: {answer}");
    let (status, answer) = api
        .ops(
            Method::POST,
            &fail,
            Some(OPERATOR_TOKEN),
            Some(json!({"reason": "lost on Replicate"})),
        )
        .await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["job"]["status"], "FAILED");
    assert_eq!(
        answer["job"]["error_message"],
        "Failed by an operator: lost on Replicate"
    );
    assert_eq!(api.credits("u1").await, 100);
    // Once: a second try finds it ended.
    let (status, again) = api
        .ops(
            Method::POST,
            &fail,
            Some(OPERATOR_TOKEN),
            Some(json!({"reason": "again"})),
        )
        .await;
    assert_eq!(status, 409, "{again}");
    assert_eq!(api.credits("u1").await, 100);
    let replicate_id = created["job"]["job_id"].as_str().unwrap().to_owned();
    assert_eq!(
        api.movements("u1").await,
        [
            ("DEBIT".to_owned(), -4, replicate_id.clone()),
            ("REFUND".to_owned(), 4, replicate_id)
        ]
    );
    // The user's browsers are told, with the refund.
    let mut conn = shared::db::connection(&api.services.pool).await.unwrap();
    let last: Value = job_events::table
        .filter(job_events::user_id.eq("u1"))
        .order(job_events::seq.desc())
        .select(job_events::payload)
        .first(&mut conn)
        .await
        .unwrap();
    assert_eq!(
        (last["job"]["status"].clone(), last["refunded"].clone()),
        (json!("FAILED"), json!(4))
    );
    let actions: Vec<(String, Option<String>)> = operator_actions::table
        .select((operator_actions::action, operator_actions::job_row_id))
        .load(&mut conn)
        .await
        .unwrap();
    assert_eq!(actions, [("fail_and_refund".to_owned(), Some(id.clone()))]);

    let (_, stuck) = api
        .ops(Method::GET, "/ops/api/stuck", Some(OPERATOR_TOKEN), None)
        .await;
    assert!(stuck_ids(&stuck).is_empty());
    // The job's page has the whole story: debit, the events, the operator, the refund.
    let (status, timeline) = api
        .ops(
            Method::GET,
            &format!("/ops/api/jobs/{id}"),
            Some(OPERATOR_TOKEN),
            None,
        )
        .await;
    assert_eq!(status, 200, "{timeline}");
    let types: Vec<String> = timeline["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| match e["type"].as_str().unwrap() {
            "ledger" => format!("ledger {}", e["kind"].as_str().unwrap()),
            "event" => format!("event {}", e["status"].as_str().unwrap()),
            other => other.to_owned(),
        })
        .collect();
    for expected in [
        "ledger DEBIT",
        "event PENDING",
        "event FAILED",
        "operator",
        "ledger REFUND",
    ] {
        assert!(types.contains(&expected.to_owned()), "{types:?}");
    }
    let (status, _) = api
        .ops(
            Method::GET,
            "/ops/api/jobs/no-such-job",
            Some(OPERATOR_TOKEN),
            None,
        )
        .await;
    assert_eq!(status, 404);
    api.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn asking_replicate_sends_its_answer_in_as_a_webhook_or_notes_a_404() {
    let api = Api::start(Replicate::Simulator).await;
    api.user("u1", 100).await;
    let (_, created) = api
        .post("/api/generations", "u1", json!({"prompt": "a corgi"}))
        .await;
    let id = created["job"]["id"].as_str().unwrap().to_owned();
    let replicate_id = created["job"]["job_id"].as_str().unwrap().to_owned();
    let (status, answer) = api
        .ops(
            Method::POST,
            &format!("/ops/api/jobs/{id}/ask-replicate"),
            Some(OPERATOR_TOKEN),
            None,
        )
        .await;
    assert_eq!(status, 200, "{answer}");
    let queued = api
        .services
        .channel
        .basic_get(
            api.services.topology.webhooks_queue().as_str().into(),
            BasicGetOptions { no_ack: true },
        )
        .await
        .unwrap()
        .expect("Replicate's answer is in the work queue");
    let message_id = queued
        .delivery
        .properties
        .message_id()
        .clone()
        .unwrap()
        .to_string();
    assert!(message_id.starts_with("operator_"), "{message_id}");
    let body: Value = serde_json::from_slice(&queued.delivery.data).unwrap();
    assert_eq!(body["id"], json!(replicate_id));

    // A job Replicate does not know: noted, nothing enqueued, shown as such.
    let mut conn = shared::db::connection(&api.services.pool).await.unwrap();
    diesel::update(generations::table.find(&id))
        .set(generations::job_id.eq("not-on-replicate"))
        .execute(&mut conn)
        .await
        .unwrap();
    age(&api, &id).await;
    let (status, answer) = api
        .ops(
            Method::POST,
            &format!("/ops/api/jobs/{id}/ask-replicate"),
            Some(OPERATOR_TOKEN),
            None,
        )
        .await;
    assert_eq!(status, 200, "{answer}");
    assert!(
        answer["message"].as_str().unwrap().contains("404"),
        "{answer}"
    );
    let noted: i64 = unconfirmed_jobs::table
        .filter(unconfirmed_jobs::job_id.eq("not-on-replicate"))
        .count()
        .get_result(&mut conn)
        .await
        .unwrap();
    assert_eq!(noted, 1);
    let (_, stuck) = api
        .ops(Method::GET, "/ops/api/stuck", Some(OPERATOR_TOKEN), None)
        .await;
    assert!(stuck["jobs"][0]["not_found_since"].is_string(), "{stuck}");
    assert_eq!(api.credits("u1").await, 96, "asking moves no credits");
    api.stop().await;
}

async fn park(api: &Api, webhook_id: &str, job_id: &str, reason: &str) {
    let mut headers = FieldTable::default();
    headers.insert(
        shared::amqp::HEADER_DEAD_REASON.into(),
        AMQPValue::LongString(LongString::from(reason)),
    );
    headers.insert(
        shared::amqp::HEADER_ATTEMPT.into(),
        AMQPValue::LongLongInt(7),
    );
    api.services
        .channel
        .basic_publish(
            "".into(),
            api.services.topology.dead_letter_queue().as_str().into(),
            BasicPublishOptions::default(),
            json!({"id": job_id, "status": "succeeded"})
                .to_string()
                .as_bytes(),
            BasicProperties::default()
                .with_message_id(webhook_id.into())
                .with_headers(headers),
        )
        .await
        .unwrap()
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_letters_are_listed_filtered_and_replayed_with_a_mark() {
    let api = Api::start(Replicate::Simulator).await;
    park(
        &api,
        "wh-1",
        "r-1",
        "job not found after 7 attempts over 151s",
    )
    .await;
    park(
        &api,
        "wh-2",
        "r-2",
        "job not found after 7 attempts over 152s",
    )
    .await;
    park(
        &api,
        "wh-3",
        "r-3",
        "not a Replicate prediction: missing field",
    )
    .await;
    let (status, all) = api
        .ops(
            Method::GET,
            "/ops/api/dead-letters",
            Some(OPERATOR_TOKEN),
            None,
        )
        .await;
    assert_eq!(status, 200, "{all}");
    assert_eq!(all["total"], 3);
    assert_eq!(all["letters"][0]["attempts"], 7);
    let (_, matching) = api
        .ops(
            Method::GET,
            "/ops/api/dead-letters?reason=JOB%20NOT%20FOUND",
            Some(OPERATOR_TOKEN),
            None,
        )
        .await;
    let ids: Vec<&str> = matching["letters"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["webhook_id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["wh-1", "wh-2"]);
    let (_, one) = api
        .ops(
            Method::GET,
            "/ops/api/dead-letters?q=r-3",
            Some(OPERATOR_TOKEN),
            None,
        )
        .await;
    assert_eq!(one["letters"].as_array().unwrap().len(), 1);

    let (status, replayed) = api
        .ops(
            Method::POST,
            "/ops/api/dead-letters/replay",
            Some(OPERATOR_TOKEN),
            Some(json!({"webhook_ids": ids})),
        )
        .await;
    assert_eq!(status, 200, "{replayed}");
    assert_eq!(replayed["replayed"].as_array().unwrap().len(), 2);
    let (_, left) = api
        .ops(
            Method::GET,
            "/ops/api/dead-letters",
            Some(OPERATOR_TOKEN),
            None,
        )
        .await;
    assert_eq!(left["total"], 1);
    for _ in 0..2 {
        let message = api
            .services
            .channel
            .basic_get(
                api.services.topology.webhooks_queue().as_str().into(),
                BasicGetOptions { no_ack: true },
            )
            .await
            .unwrap()
            .expect("replayed into the work queue");
        let headers = message.delivery.properties.headers().clone().unwrap();
        assert_eq!(
            headers.inner().get(shared::amqp::HEADER_REPLAYS),
            Some(&AMQPValue::LongLongInt(1))
        );
        assert!(
            headers
                .inner()
                .get(shared::amqp::HEADER_DEAD_REASON)
                .is_none()
        );
    }
    let (status, _) = api
        .ops(
            Method::POST,
            "/ops/api/dead-letters/replay",
            Some(OPERATOR_TOKEN),
            Some(json!({"webhook_ids": []})),
        )
        .await;
    assert_eq!(status, 400);
    let mut conn = shared::db::connection(&api.services.pool).await.unwrap();
    let details: Vec<String> = operator_actions::table
        .filter(operator_actions::action.eq("replay_dead_letters"))
        .select(operator_actions::detail)
        .load(&mut conn)
        .await
        .unwrap();
    assert_eq!(details, ["2 replayed: wh-1, wh-2"]);
    api.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_webhook_record_is_filtered_searched_and_paged() {
    let api = Api::start(Replicate::Simulator).await;
    let mut conn = shared::db::connection(&api.services.pool).await.unwrap();
    let now = chrono::Utc::now();
    let rows = [
        ("wh-a", "r-1", "generation", "applied", 120),
        ("wh-b", "r-1", "generation", "duplicate", 60),
        ("wh-c", "r-2", "training", "applied", 30),
        ("wh-d", "r-3", "upscale", "dead_lettered", 5),
    ];
    for (webhook_id, replicate_id, kind, outcome, minutes_ago) in rows {
        diesel::insert_into(webhook_attempts::table)
            .values((
                webhook_attempts::at.eq(now - chrono::Duration::minutes(minutes_ago)),
                webhook_attempts::webhook_id.eq(webhook_id),
                webhook_attempts::replicate_id.eq(replicate_id),
                webhook_attempts::kind.eq(kind),
                webhook_attempts::outcome.eq(outcome),
            ))
            .execute(&mut conn)
            .await
            .unwrap();
    }
    let ids = |answer: &Value| -> Vec<String> {
        answer["webhooks"]
            .as_array()
            .unwrap()
            .iter()
            .map(|w| w["webhook_id"].as_str().unwrap().to_owned())
            .collect()
    };
    let get = |query: String| {
        let api = &api;
        async move {
            api.ops(
                Method::GET,
                &format!("/ops/api/webhooks{query}"),
                Some(OPERATOR_TOKEN),
                None,
            )
            .await
        }
    };
    assert_eq!(
        ids(&get(String::new()).await.1),
        ["wh-d", "wh-c", "wh-b", "wh-a"]
    );
    assert_eq!(
        ids(&get("?outcome=applied".into()).await.1),
        ["wh-c", "wh-a"]
    );
    assert_eq!(ids(&get("?kind=training".into()).await.1), ["wh-c"]);
    assert_eq!(ids(&get("?q=r-1".into()).await.1), ["wh-b", "wh-a"]);
    assert_eq!(ids(&get("?q=wh-d".into()).await.1), ["wh-d"]);
    let since =
        (now - chrono::Duration::minutes(45)).to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    assert_eq!(
        ids(&get(format!("?since={since}")).await.1),
        ["wh-d", "wh-c"]
    );
    let (_, first) = get("?limit=3".into()).await;
    assert_eq!(ids(&first).len(), 3);
    let (_, rest) = get(format!("?limit=3&before={}", first["next"])).await;
    assert_eq!(ids(&rest), ["wh-a"]);
    assert_eq!(rest["next"], Value::Null);
    assert_eq!(get("?outcome=exploded".into()).await.0, 400);
    assert_eq!(get("?since=yesterday".into()).await.0, 400);
    api.stop().await;
}
