//! Result events: numbered per user without gaps, published after commit, re-published by
//! the outbox sweep after a crash, and live progress from real tqdm output.

use std::time::Duration;

use serde_json::json;
use shared::events::Event;
use shared::jobs::apply::{self, ApplyOutcome, Change};
use worker::classify;
use worker::startup::Worker;
use worker::sweep;

use crate::helpers::{TestEnv, prediction};
use crate::images;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_are_gapless_per_user_and_carry_the_contract_fields() {
    let server = images::start().await;
    let env = TestEnv::new(&server.host).await;
    let mut observer = env.observe_events().await;
    env.insert_user("alice", 100).await;
    env.insert_user("bob", 7).await;
    env.insert_generation("a1", "alice", "ra1", "a corgi", 10)
        .await;
    env.insert_generation("a2", "alice", "ra2", "[UPSCALED] a corgi", 10)
        .await;
    env.insert_training("a3", "alice", "ra3", 50).await;
    env.insert_generation("b1", "bob", "rb1", "a cat", 2).await;
    let worker = env.spawn_worker().await;

    for (job, id) in [("ra1", "x1"), ("ra2", "x2"), ("ra3", "x3"), ("rb1", "x4")] {
        env.send(
            &format!("{id}-start"),
            &prediction(job, "processing", json!(null)),
        )
        .await;
    }
    env.wait_for_statuses(&[
        ("a1", "PROCESSING"),
        ("a2", "PROCESSING"),
        ("a3", "PROCESSING"),
        ("b1", "PROCESSING"),
    ])
    .await;
    env.send(
        "f1",
        &prediction("ra1", "succeeded", json!([server.url("/img/a1.png")])),
    )
    .await;
    env.send("f2", &prediction("ra2", "failed", json!(null)))
        .await;
    env.send(
        "f3",
        &prediction(
            "ra3",
            "succeeded",
            json!({"version": "alice/model:v1", "weights": "https://w"}),
        ),
    )
    .await;
    env.send("f4", &prediction("rb1", "canceled", json!(null)))
        .await;
    env.wait_for_statuses(&[
        ("a1", "COMPLETED"),
        ("a2", "FAILED"),
        ("a3", "COMPLETED"),
        ("b1", "CANCELLED"),
    ])
    .await;

    let events = observer.collect(Duration::from_secs(2)).await;
    let seqs_of = |user: &str| {
        let mut seqs: Vec<i64> = events
            .iter()
            .filter(|e| e.user_id() == user)
            .filter_map(Event::seq)
            .collect();
        seqs.sort();
        seqs
    };
    assert_eq!(seqs_of("alice"), [1, 2, 3, 4, 5, 6]);
    assert_eq!(seqs_of("bob"), [1, 2]);
    assert_eq!(env.stored_seqs("alice").await, [1, 2, 3, 4, 5, 6]);
    // What was published is what a reconnecting browser replays from the log.
    for event in events.iter().filter(|e| e.seq().is_some()) {
        let stored = env
            .stored_payload(event.user_id(), event.seq().unwrap())
            .await;
        assert_eq!(serde_json::to_value(event).unwrap(), stored);
    }

    let final_event = |job_id: &str| {
        events
            .iter()
            .filter(|e| match e {
                Event::GenerationStatusChanged { job, .. } => job.job_id.as_deref() == Some(job_id),
                Event::ModelStatusChanged { job, .. } => job.job_id.as_deref() == Some(job_id),
                _ => false,
            })
            .max_by_key(|e| e.seq())
            .cloned()
            .unwrap()
    };
    match final_event("ra1") {
        Event::GenerationStatusChanged { job, .. } => {
            assert_eq!(job.kind, shared::events::JobKind::Generation);
            assert_eq!((job.id.as_str(), job.status.as_str()), ("a1", "COMPLETED"));
            assert_eq!(
                job.image_urls,
                ["http://media.test/media/generations/a1/0.png"]
            );
        }
        other => panic!("{other:?}"),
    }
    match final_event("ra2") {
        Event::GenerationStatusChanged { job, credits, .. } => {
            assert_eq!(job.kind, shared::events::JobKind::Upscale);
            assert_eq!(job.status, "FAILED");
            assert_eq!(job.error.as_deref(), Some("CUDA out of memory"));
            assert!(credits >= 110, "the refund shows in the balance: {credits}");
        }
        other => panic!("{other:?}"),
    }
    match final_event("ra3") {
        Event::ModelStatusChanged { job, .. } => {
            assert_eq!(job.model_version.as_deref(), Some("alice/model:v1"));
            assert_eq!(job.weights_url.as_deref(), Some("https://w"));
        }
        other => panic!("{other:?}"),
    }
    match final_event("rb1") {
        Event::GenerationStatusChanged {
            credits, user_id, ..
        } => assert_eq!((credits, user_id.as_str()), (9, "bob")),
        other => panic!("{other:?}"),
    }
    // Marks are written in batches; stopping writes the last ones.
    worker.stop().await;
    assert_eq!(env.unpublished_events().await, 0);
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_committed_but_not_published_goes_out_with_the_sweep() {
    let server = images::start().await;
    let env = TestEnv::new(&server.host).await;
    let mut observer = env.observe_events().await;
    env.insert_user("u1", 0).await;
    env.insert_generation("g1", "u1", "r1", "a corgi", 4).await;
    // A worker that is built but never consumes: we drive its parts by hand.
    let worker = Worker::build(&env.config).await.unwrap();
    let processor = worker.processor();
    assert!(
        processor
            .broker
            .link
            .wait_connected(Duration::from_secs(10))
            .await
            .is_some()
    );

    // Commit the change, then "crash" before publishing.
    let mut conn = env.conn().await;
    let job = classify::find_job(&mut conn, "r1").await.unwrap().unwrap();
    let outcome = apply::apply(
        &mut conn,
        &job,
        &shared::replicate::Status::Failed,
        Change::Failed {
            error: "boom".into(),
        },
    )
    .await
    .unwrap();
    assert!(matches!(outcome, ApplyOutcome::Applied(_)));
    assert_eq!(observer.next(Duration::from_millis(500)).await, None);
    assert_eq!(env.unpublished_events().await, 1);

    let published = sweep::sweep_once(&processor, Duration::ZERO).await.unwrap();
    assert_eq!(published, 1);
    match observer.next(Duration::from_secs(5)).await {
        Some(Event::GenerationStatusChanged {
            seq, credits, job, ..
        }) => {
            assert_eq!((seq, credits, job.status.as_str()), (1, 4, "FAILED"));
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(env.unpublished_events().await, 0);
    // Nothing left: a second sweep publishes nothing.
    assert_eq!(
        sweep::sweep_once(&processor, Duration::ZERO).await.unwrap(),
        0
    );
    processor.broker.link.close().await;
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn progress_from_real_tqdm_output_is_published_only_when_it_moves() {
    let server = images::start().await;
    let env = TestEnv::new(&server.host).await;
    let mut observer = env.observe_events().await;
    env.insert_user("u1", 0).await;
    env.insert_generation("g1", "u1", "r1", "a corgi", 1).await;
    let worker = env.spawn_worker().await;
    let logs_at = |steps: usize| {
        let mut logs = String::from("Using seed: 42069\nPrompt: a corgi\ntxt2img mode\n");
        for step in 0..=steps {
            let percent = step * 100 / 50;
            let bar = "█".repeat(percent / 10);
            logs.push_str(&format!(
                "\r{percent:3}%|{bar:<10}| {step}/50 [00:0{}<00:04,  6.93it/s]",
                step / 10
            ));
        }
        logs
    };
    let send_progress = |id: &'static str, steps: usize| {
        let mut body = prediction("r1", "processing", json!(null));
        body["logs"] = json!(logs_at(steps));
        (id, body)
    };

    let progress_values = |events: &[Event]| -> Vec<f64> {
        events
            .iter()
            .filter_map(|e| match e {
                Event::JobProgress { job, .. } => Some(job.progress),
                _ => None,
            })
            .collect()
    };

    for (id, body) in [send_progress("p1", 5)] {
        env.send(id, &body).await;
    }
    let first = observer.collect(Duration::from_secs(2)).await;
    assert!(
        first
            .iter()
            .any(|e| matches!(e, Event::GenerationStatusChanged { .. }))
    );
    assert_eq!(progress_values(&first), [0.1]);

    let (id, body) = send_progress("p2", 5);
    env.send(id, &body).await;
    assert!(
        observer.collect(Duration::from_secs(1)).await.is_empty(),
        "unchanged progress is not sent again"
    );

    let (id, body) = send_progress("p3", 21);
    env.send(id, &body).await;
    let third = observer.collect(Duration::from_secs(2)).await;
    assert_eq!(progress_values(&third), [0.42]);
    assert!(
        third.iter().all(|e| e.seq().is_none()),
        "progress has no seq and no status change"
    );
    assert_eq!(env.stored_seqs("u1").await, [1], "progress is never stored");
    worker.stop().await;
    env.cleanup().await;
}
