//! `worker dead-letters list|replay`: what is parked and why, and replaying it once the
//! cause is fixed.

use std::time::{Duration, Instant};

use serde_json::json;
use shared::amqp::dead_letters::{self, Selection};

use crate::helpers::{TestEnv, prediction};
use crate::images;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parked_webhooks_are_listed_with_reasons_and_replayed() {
    let server = images::start().await;
    let env = TestEnv::new(&server.host).await;
    env.insert_user("u1", 0).await;
    let mut config = env.config.clone();
    config.unknown_job_retry_secs = 1;
    let worker = env.spawn_worker_with(config.clone()).await;
    env.send(
        "msg-too-early",
        &prediction("r-late", "failed", json!(null)),
    )
    .await;
    env.send("msg-garbage", &json!({"id": 7})).await;

    let (_connection, channel, topology) = dead_letters::open(&config.amqp).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let letters = loop {
        let letters = dead_letters::list(&channel, &topology).await.unwrap();
        if letters.len() == 2 {
            break letters;
        }
        assert!(Instant::now() < deadline, "{letters:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let early = letters
        .iter()
        .find(|l| l.webhook_id == "msg-too-early")
        .unwrap();
    assert_eq!(early.job_id.as_deref(), Some("r-late"));
    assert!(early.reason.contains("job not found"), "{early:?}");
    assert!(early.attempts >= 2);
    let garbage = letters
        .iter()
        .find(|l| l.webhook_id == "msg-garbage")
        .unwrap();
    assert!(
        garbage.reason.contains("not a Replicate prediction"),
        "{garbage:?}"
    );
    // Listing leaves the queue as it was, in order, and does not count as a delivery
    // (quorum queues drop a message delivered too often: 20 times by default on 4.x).
    for _ in 0..25 {
        let again = dead_letters::list(&channel, &topology).await.unwrap();
        assert_eq!(
            again.iter().map(|l| &l.webhook_id).collect::<Vec<_>>(),
            letters.iter().map(|l| &l.webhook_id).collect::<Vec<_>>()
        );
    }
    let peek = channel
        .basic_get(
            topology.dead_letter_queue().into(),
            lapin::options::BasicGetOptions { no_ack: false },
        )
        .await
        .unwrap()
        .expect("still parked");
    let delivery_count = peek
        .delivery
        .properties
        .headers()
        .as_ref()
        .and_then(|h| h.inner().get("x-delivery-count").cloned());
    assert!(
        matches!(
            delivery_count,
            None | Some(lapin::types::AMQPValue::LongLongInt(0))
                | Some(lapin::types::AMQPValue::LongInt(0))
        ),
        "looking counted as deliveries: {delivery_count:?}"
    );
    peek.delivery
        .nack(lapin::options::BasicNackOptions {
            requeue: true,
            ..Default::default()
        })
        .await
        .unwrap();

    // The command line shows the same.
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_worker"))
        .args(["dead-letters", "list"])
        .env("AMQP_URL", config.amqp.url.as_str())
        .env("AMQP_NAME_PREFIX", &config.amqp.name_prefix)
        .output()
        .await
        .unwrap();
    let printed = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{printed}");
    assert!(
        printed.contains("2 webhook(s)")
            && printed.contains("msg-too-early")
            && printed.contains("job not found"),
        "{printed}"
    );

    // The app finally inserted the row: replaying that one webhook completes the job.
    env.insert_generation("g-late", "u1", "r-late", "a corgi", 6)
        .await;
    let replayed = dead_letters::replay(
        &channel,
        &topology,
        &Selection::Ids(vec!["msg-too-early".into()]),
    )
    .await
    .unwrap();
    assert_eq!(replayed.len(), 1);
    env.wait_for_statuses(&[("g-late", "FAILED")]).await;
    assert_eq!(env.refunds_for("r-late").await, vec![6]);
    let left = dead_letters::list(&channel, &topology).await.unwrap();
    assert_eq!(
        left.iter()
            .map(|l| l.webhook_id.as_str())
            .collect::<Vec<_>>(),
        ["msg-garbage"]
    );

    // Replaying garbage parks it again, with its reason.
    assert_eq!(
        dead_letters::replay(&channel, &topology, &Selection::All)
            .await
            .unwrap()
            .len(),
        1
    );
    shared::testing::eventually(Duration::from_secs(20), || async {
        let again = dead_letters::list(&channel, &topology).await.unwrap();
        again.len() == 1
            && again[0].reason.contains("not a Replicate prediction")
            && again[0].attempts == 1
            && again[0].replays == 1
    })
    .await
    .expect("the replayed garbage is dead-lettered again, once, marked as replayed");

    // A duplicate and a late webhook after the end.
    env.send("msg-dup", &prediction("r-late", "failed", json!(null)))
        .await;
    env.send("msg-old", &prediction("r-late", "processing", json!(null)))
        .await;

    // The record tells each webhook's story, as the operator console shows it.
    let story = |rows: &[Recorded], id: &str| -> Vec<(String, i32)> {
        rows.iter()
            .filter(|r| r.0 == id)
            .map(|r| (r.1.clone(), r.3))
            .collect()
    };
    shared::testing::eventually(Duration::from_secs(20), || async {
        let rows = recorded(&env).await;
        rows.iter().any(|r| r.0 == "msg-old")
            && rows.iter().any(|r| r.0 == "msg-dup")
            && rows.iter().filter(|r| r.0 == "msg-garbage").count() == 2
    })
    .await
    .expect("every handling recorded");
    let rows = recorded(&env).await;
    let early = story(&rows, "msg-too-early");
    assert!(early.len() >= 3, "{early:?}");
    assert!(
        early[..early.len() - 2]
            .iter()
            .all(|(o, r)| o == "retried" && *r == 0),
        "{early:?}"
    );
    assert_eq!(
        early[early.len() - 2..],
        [("dead_lettered".to_owned(), 0), ("applied".to_owned(), 1)]
    );
    let applied = rows
        .iter()
        .find(|r| r.0 == "msg-too-early" && r.1 == "applied")
        .unwrap();
    assert_eq!(applied.2.as_deref(), Some("g-late"));
    assert!(
        applied.4.contains("PENDING → FAILED") && applied.4.contains("6 credits refunded"),
        "{applied:?}"
    );
    assert_eq!(
        story(&rows, "msg-garbage"),
        [
            ("dead_lettered".to_owned(), 0),
            ("dead_lettered".to_owned(), 1)
        ]
    );
    assert_eq!(story(&rows, "msg-dup"), [("duplicate".to_owned(), 0)]);
    assert_eq!(story(&rows, "msg-old"), [("stale".to_owned(), 0)]);
    worker.stop().await;
    env.cleanup().await;
}

/// `(webhook_id, outcome, job_row_id, replays, detail)` of every recorded handling, in order.
type Recorded = (String, String, Option<String>, i32, String);

async fn recorded(env: &TestEnv) -> Vec<Recorded> {
    use diesel::prelude::*;
    use diesel_async::RunQueryDsl;
    use shared::db::schema::webhook_attempts as w;
    let mut conn = env.conn().await;
    w::table
        .order(w::id)
        .select((
            w::webhook_id,
            w::outcome,
            w::job_row_id,
            w::replays,
            w::detail,
        ))
        .load(&mut conn)
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_record_keeps_only_its_retention() {
    use diesel::prelude::*;
    use diesel_async::RunQueryDsl;
    use shared::db::schema::webhook_attempts as w;
    let server = images::start().await;
    let env = TestEnv::new(&server.host).await;
    let mut conn = env.conn().await;
    let now = chrono::Utc::now();
    for (id, hours_ago) in [
        ("wh-new", 1),
        ("wh-day", 23),
        ("wh-old", 25),
        ("wh-older", 200),
    ] {
        diesel::insert_into(w::table)
            .values((
                w::at.eq(now - chrono::Duration::hours(hours_ago)),
                w::webhook_id.eq(id),
                w::outcome.eq("applied"),
            ))
            .execute(&mut conn)
            .await
            .unwrap();
    }
    let pruned = worker::record::prune(&env.pool, Duration::from_secs(24 * 3600))
        .await
        .unwrap();
    assert_eq!(pruned, 2);
    let kept: Vec<String> = w::table
        .order(w::id)
        .select(w::webhook_id)
        .load(&mut conn)
        .await
        .unwrap();
    assert_eq!(kept, ["wh-new", "wh-day"]);
    drop(conn);
    env.cleanup().await;
}
