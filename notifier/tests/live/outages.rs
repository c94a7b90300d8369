//! RabbitMQ going away under a connected browser: the notifier reconnects by itself and the
//! browser receives what it missed from the event log, then live events again.

use std::time::Duration;

use shared::testing::{Mode, ServiceProxy, upstream_of};

use crate::helpers::{TestEnv, connect, next_json, seqs_until};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_missed_during_a_broker_outage_are_delivered_after_it() {
    let env = TestEnv::new().await;
    env.insert_user("u1", 0).await;
    let proxy = ServiceProxy::start(upstream_of(env.config.amqp.url.as_str())).await;
    let mut config = env.config.clone();
    config.amqp.url = proxy.url(env.config.amqp.url.as_str()).parse().unwrap();
    let running = env.start_with(&config).await;
    let mut socket = connect(&running.address, &format!("token={}", env.token("u1")))
        .await
        .unwrap();
    assert_eq!(
        next_json(&mut socket, Duration::from_secs(5))
            .await
            .unwrap()["type"],
        "hello"
    );
    env.emit("u1", "r1", "PROCESSING").await;
    assert_eq!(seqs_until(&mut socket, 1).await, [1]);

    proxy.set(Mode::Down);
    for _ in 0..100 {
        if !running.state.sessions.broker_connected() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(!running.state.sessions.broker_connected());
    // Published while this notifier is cut off: its queue is gone, the events are in the log.
    env.emit("u1", "r2", "PROCESSING").await;
    env.emit("u1", "r3", "COMPLETED").await;

    proxy.set(Mode::Forward);
    assert_eq!(
        seqs_until(&mut socket, 3).await,
        [2, 3],
        "missed events replayed after the reconnect"
    );
    env.emit("u1", "r4", "COMPLETED").await;
    assert_eq!(seqs_until(&mut socket, 4).await, [4], "and live again");
    running.stop().await;
    env.cleanup().await;
}
