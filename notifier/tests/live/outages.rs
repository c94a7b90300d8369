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
    shared::testing::eventually(Duration::from_secs(5), || async {
        !running.state.hub.broker_connected()
    })
    .await
    .expect("the notifier sees the broker gone");
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn browsers_that_connect_while_the_notifier_reconnects_get_their_events() {
    let env = TestEnv::new().await;
    let proxy = ServiceProxy::start(upstream_of(env.config.amqp.url.as_str())).await;
    let mut config = env.config.clone();
    config.amqp.url = proxy.url(env.config.amqp.url.as_str()).parse().unwrap();
    let running = env.start_with(&config).await;
    // Many users connected: rebinding them all after a reconnect takes a while, which is
    // the window a new browser can fall into.
    let mut resident = Vec::new();
    for i in 0..300 {
        let user = format!("resident-{i}");
        env.insert_user(&user, 0).await;
        resident.push(
            connect(&running.address, &format!("token={}", env.token(&user)))
                .await
                .unwrap(),
        );
    }

    proxy.set(Mode::Down);
    shared::testing::eventually(Duration::from_secs(10), || async {
        !running.state.hub.broker_connected()
    })
    .await
    .unwrap();
    // New browsers keep arriving, before, during and after the reconnect.
    proxy.set(Mode::Forward);
    let mut arrivals = Vec::new();
    let mut i = 0;
    let reconnected_at = loop {
        let user = format!("arrival-{i}");
        env.insert_user(&user, 0).await;
        let mut socket = connect(&running.address, &format!("token={}", env.token(&user)))
            .await
            .unwrap();
        assert_eq!(
            next_json(&mut socket, Duration::from_secs(10))
                .await
                .unwrap()["type"],
            "hello"
        );
        arrivals.push((user, socket));
        i += 1;
        if running.state.hub.broker_connected() {
            break i;
        }
        assert!(i < 2000, "the notifier never reconnected");
    };
    // A few more right after.
    for j in reconnected_at..reconnected_at + 10 {
        let user = format!("arrival-{j}");
        env.insert_user(&user, 0).await;
        let mut socket = connect(&running.address, &format!("token={}", env.token(&user)))
            .await
            .unwrap();
        // Subscribed once its hello arrives.
        assert_eq!(
            next_json(&mut socket, Duration::from_secs(10))
                .await
                .unwrap()["type"],
            "hello"
        );
        arrivals.push((user, socket));
    }
    for (user, _) in &arrivals {
        env.emit(user, "r1", "PROCESSING").await;
    }
    let mut missed = Vec::new();
    for (user, socket) in &mut arrivals {
        let mut got = false;
        while let Some(message) = next_json(socket, Duration::from_secs(3)).await {
            if message["type"] == "generation_status_changed" && message["user_id"] == user.as_str()
            {
                got = true;
                break;
            }
        }
        if !got {
            missed.push(user.clone());
        }
    }
    assert!(
        missed.is_empty(),
        "{} of {} browsers that connected around the reconnect never got their event: {missed:?}",
        missed.len(),
        arrivals.len()
    );
    drop(resident);
    running.stop().await;
    env.cleanup().await;
}
