//! `worker dead-letters list|replay`: what is parked and why, and replaying it once the
//! cause is fixed.

use std::time::{Duration, Instant};

use serde_json::json;
use worker::dead_letters::{self, Selection};

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
    })
    .await
    .expect("the replayed garbage is dead-lettered again, once");
    worker.stop().await;
    env.cleanup().await;
}
