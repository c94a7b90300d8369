//! Webhooks applied in batches end exactly where the same webhooks processed one at a time
//! end, whatever the interleaving, duplicates and reorders inside and across batches; a
//! poison webhook in a batch fails alone.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use diesel::prelude::*;
use diesel_async::RunQueryDsl;
use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestRunner};
use serde_json::{Value, json};
use shared::db::schema::{ai_models, credit_transactions, generations, job_events, users};
use worker::batch::Incoming;
use worker::consume::{Disposition, RetryPolicy, dispose};
use worker::process::{Effect, Failure, ProcessError, Processed, Processor};
use worker::startup::Worker;

use crate::helpers::{TestEnv, prediction};
use crate::images;

const STATUSES: [&str; 5] = ["starting", "processing", "succeeded", "failed", "canceled"];

/// A test's webhook: which of the case's jobs, which status.
#[derive(Debug, Clone)]
struct Hook {
    job: usize,
    status: &'static str,
}

/// The case's jobs: even ones are generations, odd ones trainings; two users.
const JOBS: usize = 5;

fn job_row(case: usize, job: usize) -> String {
    format!("c{case}-j{job}")
}

fn replicate_id(case: usize, job: usize) -> String {
    format!("c{case}-r{job}")
}

fn user_of(case: usize, job: usize) -> String {
    format!("c{case}-u{}", job % 2)
}

fn body(images: &images::ImageServer, case: usize, hook: &Hook) -> Value {
    let id = replicate_id(case, hook.job);
    let output = match (hook.status, hook.job % 2) {
        ("succeeded", 0) => json!([images.url(&format!("/img/{id}.png"))]),
        ("succeeded", _) => {
            json!({"version": format!("owner/model:{id}"), "weights": "https://weights.test/w.tar"})
        }
        _ => Value::Null,
    };
    prediction(&id, hook.status, output)
}

async fn insert_case(env: &TestEnv, case: usize) {
    for user in 0..2 {
        env.insert_user(&format!("c{case}-u{user}"), 100).await;
    }
    for job in 0..JOBS {
        let (row, id, user) = (
            job_row(case, job),
            replicate_id(case, job),
            user_of(case, job),
        );
        if job % 2 == 0 {
            env.insert_generation(&row, &user, &id, "a corgi", 4 + job as i32)
                .await;
        } else {
            env.insert_training(&row, &user, &id, 40).await;
        }
    }
}

/// Everything the ledger holds about a case, without timestamps.
async fn snapshot(env: &TestEnv, case: usize) -> Value {
    let mut conn = env.conn().await;
    let prefix = format!("c{case}-%");
    let jobs: Vec<(String, String, Vec<String>, Option<String>)> = generations::table
        .filter(generations::id.like(&prefix))
        .order(generations::id)
        .select((
            generations::id,
            generations::status,
            generations::image_urls,
            generations::error_message,
        ))
        .load(&mut conn)
        .await
        .unwrap();
    let trainings: Vec<(String, String, Option<String>, Option<String>)> = ai_models::table
        .filter(ai_models::id.like(&prefix))
        .order(ai_models::id)
        .select((
            ai_models::id,
            ai_models::status,
            ai_models::model_version,
            ai_models::error_message,
        ))
        .load(&mut conn)
        .await
        .unwrap();
    let balances: Vec<(String, i32, i64)> = users::table
        .filter(users::id.like(&prefix))
        .order(users::id)
        .select((users::id, users::credits, users::event_seq))
        .load(&mut conn)
        .await
        .unwrap();
    let refunds: Vec<(String, i32)> = credit_transactions::table
        .filter(credit_transactions::job_id.like(&prefix))
        .order(credit_transactions::job_id)
        .select((credit_transactions::job_id, credit_transactions::amount))
        .load(&mut conn)
        .await
        .unwrap();
    let events: Vec<(String, i64, Value)> = job_events::table
        .filter(job_events::user_id.like(&prefix))
        .order((job_events::user_id, job_events::seq))
        .select((job_events::user_id, job_events::seq, job_events::payload))
        .load(&mut conn)
        .await
        .unwrap();
    let events: Vec<Value> = events
        .into_iter()
        .map(|(user, seq, payload)| {
            let job = &payload["job"];
            json!({
                "user": user, "seq": seq, "type": payload["type"],
                "credits": payload["credits"], "refunded": payload["refunded"],
                "job": {"id": job["id"], "kind": job["kind"], "status": job["status"], "images": job["image_urls"], "thumbs": job["thumb_urls"], "version": job["model_version"], "weights": job["weights_url"], "error": job["error"], "cost": job["credits_used"]},
            })
        })
        .collect();
    json!({"generations": jobs, "trainings": trainings, "users": balances, "refunds": refunds, "events": events})
}

/// The batch the consumer would hand over: each body with its webhook id, untagged.
fn incoming<'a>(bodies: &'a [Vec<u8>], ids: &'a [String]) -> Vec<Incoming<'a>> {
    bodies
        .iter()
        .zip(ids)
        .map(|(body, id)| Incoming {
            webhook_id: id,
            body,
            tag: None,
        })
        .collect()
}

fn comparable(result: &Result<Processed, ProcessError>) -> String {
    match result {
        Ok(processed) => format!("{processed:?}"),
        Err(err) => format!("error: {}", err.report()),
    }
}

#[test]
fn batches_end_where_one_at_a_time_ends() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let (images, alone, batched, processors) = runtime.block_on(async {
        let images = images::start().await;
        let alone = TestEnv::new(&images.host).await;
        let batched = TestEnv::new(&images.host).await;
        let processors = (
            Worker::build(&alone.config).await.unwrap().processor(),
            Worker::build(&batched.config).await.unwrap().processor(),
        );
        (images, alone, batched, processors)
    });
    let cases = AtomicUsize::new(0);
    let hooks = prop::collection::vec(
        (0..JOBS, prop::sample::select(&STATUSES[..]))
            .prop_map(|(job, status)| Hook { job, status }),
        1..40,
    );
    let cuts = prop::collection::vec(1usize..12, 1..10);
    let mut runner = TestRunner::new(Config {
        cases: 24,
        ..Config::default()
    });
    let outcome = runner.run(&(hooks, cuts), |(hooks, cuts)| {
        let case = cases.fetch_add(1, Ordering::Relaxed);
        runtime.block_on(async {
            insert_case(&alone, case).await;
            insert_case(&batched, case).await;
            let bodies: Vec<Vec<u8>> = hooks
                .iter()
                .map(|hook| serde_json::to_vec(&body(&images, case, hook)).unwrap())
                .collect();
            let ids: Vec<String> = (0..hooks.len()).map(|i| format!("c{case}-w{i}")).collect();
            let incoming = incoming(&bodies, &ids);

            let (one, many): (&Arc<Processor>, &Arc<Processor>) = (&processors.0, &processors.1);
            let mut expected = Vec::new();
            for item in &incoming {
                expected.push(comparable(
                    &one.process(item.webhook_id, item.body, None).await,
                ));
            }
            let mut actual = Vec::new();
            let mut rest = &incoming[..];
            for size in cuts.iter().cycle() {
                if rest.is_empty() {
                    break;
                }
                let (batch, after) = rest.split_at((*size).min(rest.len()));
                actual.extend(many.process_batch(batch).await.iter().map(comparable));
                rest = after;
            }
            prop_assert_eq!(&actual, &expected, "each webhook's outcome");
            let (want, got) = (snapshot(&alone, case).await, snapshot(&batched, case).await);
            if want != got {
                return Err(TestCaseError::fail(format!(
                    "ledgers differ:\none at a time {want:#}\nbatched {got:#}"
                )));
            }
            Ok(())
        })
    });
    runtime.block_on(async {
        alone.cleanup().await;
        batched.cleanup().await;
    });
    if let Err(failure) = outcome {
        panic!("{failure}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_poison_webhook_in_a_batch_of_32_fails_alone() {
    let images = images::start().await;
    let env = TestEnv::new(&images.host).await;
    // The database refuses one job's change: a constraint no other webhook breaks.
    diesel::sql_query(
        "ALTER TABLE generations ADD CONSTRAINT refuses_poison \
         CHECK (error_message IS DISTINCT FROM 'poison')",
    )
    .execute(&mut env.conn().await)
    .await
    .unwrap();
    let users = ["u1", "u2", "u3", "u4"];
    for user in users {
        env.insert_user(user, 1000).await;
    }
    let mut bodies = Vec::new();
    for i in 0..32 {
        let (id, job) = (format!("g{i}"), format!("r{i}"));
        env.insert_generation(&id, users[i % 4], &job, "a corgi", 10)
            .await;
        let mut body = match i % 3 {
            0 => prediction(&job, "failed", Value::Null),
            1 => prediction(
                &job,
                "succeeded",
                json!([images.url(&format!("/img/{i}.png"))]),
            ),
            _ => prediction(&job, "processing", Value::Null),
        };
        if i == 17 {
            body = prediction(&job, "failed", Value::Null);
            body["error"] = json!("poison");
        }
        bodies.push(serde_json::to_vec(&body).unwrap());
    }
    let ids: Vec<String> = (0..32).map(|i| format!("w{i}")).collect();
    let batch = incoming(&bodies, &ids);
    let processor = Worker::build(&env.config).await.unwrap().processor();
    let policy = RetryPolicy {
        unknown_job: Duration::from_secs(150),
        transient: Duration::from_secs(1800),
    };

    for round in 0..2 {
        let results = processor.process_batch(&batch).await;
        assert_eq!(results.len(), 32);
        for (i, result) in results.iter().enumerate() {
            if i == 17 {
                let err = result.as_ref().expect_err("the poison webhook fails");
                assert_eq!(err.failure(), Failure::Invalid, "{}", err.report());
                assert!(err.report().contains("refuses_poison"), "{}", err.report());
                assert!(matches!(
                    dispose(err, 0, Duration::ZERO, policy),
                    Disposition::DeadLetter { .. }
                ));
            } else {
                let processed = result
                    .as_ref()
                    .unwrap_or_else(|err| panic!("webhook {i}: {}", err.report()));
                // The first time each is applied; delivered again, each is a no-op.
                assert_eq!(
                    matches!(processed.effect, Effect::Ignored(_)),
                    round == 1,
                    "webhook {i} round {round}: {processed:?}"
                );
            }
        }
    }

    assert_eq!(env.status_of("g17").await, "PENDING");
    assert!(env.refunds_for("r17").await.is_empty());
    for i in (0..32).filter(|i| *i != 17) {
        let want = ["FAILED", "COMPLETED", "PROCESSING"][i % 3];
        assert_eq!(env.status_of(&format!("g{i}")).await, want, "g{i}");
        let refunds = env.refunds_for(&format!("r{i}")).await;
        assert_eq!(refunds, if i % 3 == 0 { vec![10] } else { vec![] }, "r{i}");
    }
    for (u, user) in users.iter().enumerate() {
        let mine: Vec<usize> = (0..32).filter(|i| i % 4 == u && *i != 17).collect();
        let refunded = mine.iter().filter(|i| *i % 3 == 0).count() as i32;
        assert_eq!(env.credits(user).await, 1000 + 10 * refunded, "{user}");
        assert_eq!(
            env.stored_seqs(user).await,
            (1..=mine.len() as i64).collect::<Vec<_>>(),
            "{user}: one event per applied change, gapless"
        );
    }
    env.cleanup().await;
}
