//! The WebSocket protocol of the contract, against a real notifier.

use std::time::Duration;

use futures_util::StreamExt;
use serde_json::json;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

use crate::helpers::{TestEnv, connect, next_json, seqs_until};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hello_then_live_events_and_progress() {
    let env = TestEnv::new().await;
    env.insert_user("u1", 42).await;
    env.emit("u1", "r0", "PROCESSING").await; // seq 1, before the connection
    let running = env.start().await;
    let mut socket = connect(&running.address, &format!("token={}", env.token("u1")))
        .await
        .unwrap();

    let hello = next_json(&mut socket, Duration::from_secs(5))
        .await
        .unwrap();
    assert_eq!(
        hello,
        json!({"type":"hello","user_id":"u1","seq":1,"polling_disabled":true,"webhook_enabled":true})
    );

    let event = env.emit("u1", "r1", "COMPLETED").await;
    let live = next_json(&mut socket, Duration::from_secs(5))
        .await
        .unwrap();
    assert_eq!(live, serde_json::to_value(&event).unwrap());
    assert_eq!(live["seq"], 2);
    assert_eq!(live["credits"], 42);

    env.publish(&TestEnv::progress("u1", "r2", 0.42)).await;
    let progress = next_json(&mut socket, Duration::from_secs(5))
        .await
        .unwrap();
    assert_eq!(progress["type"], "job_progress");
    assert_eq!(progress["job"]["progress"], 0.42);
    assert!(progress.get("seq").is_none());

    let health: serde_json::Value = shared::http::client_builder()
        .build()
        .unwrap()
        .get(format!("http://{}/api/health", running.address))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    // No ingest answers at this test's INGEST_URL: reported, without making us unhealthy.
    assert_eq!(
        health,
        json!({"status":"healthy","webhook":"unreachable","websocket":"active","connections":1,
               "broker":"connected","database":"connected"})
    );
    drop(socket);
    running.stop().await;
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn since_replays_then_goes_live_without_gap_or_duplicate() {
    let env = TestEnv::new().await;
    env.insert_user("u1", 0).await;
    for i in 0..5 {
        env.emit("u1", &format!("r{i}"), "PROCESSING").await;
    }
    let running = env.start().await;
    // Events keep arriving while the client connects and replays.
    let producer = async {
        for i in 5..30 {
            env.emit("u1", &format!("r{i}"), "COMPLETED").await;
        }
    };
    let consumer = async {
        let mut socket = connect(
            &running.address,
            &format!("token={}&since=2", env.token("u1")),
        )
        .await
        .unwrap();
        let hello = next_json(&mut socket, Duration::from_secs(5))
            .await
            .unwrap();
        assert_eq!(hello["type"], "hello");
        seqs_until(&mut socket, 30).await
    };
    let ((), seqs) = tokio::join!(producer, consumer);
    assert_eq!(seqs, (3..=30).collect::<Vec<i64>>());
    running.stop().await;
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_late_or_lost_live_event_is_filled_from_the_log() {
    let env = TestEnv::new().await;
    env.insert_user("u1", 0).await;
    let running = env.start().await;
    let mut socket = connect(&running.address, &format!("token={}", env.token("u1")))
        .await
        .unwrap();
    next_json(&mut socket, Duration::from_secs(5))
        .await
        .unwrap(); // hello
    // Seq 1 and 2 are committed but only 3 is published (1 and 2 wait for the sweep).
    env.store("u1", "r1", "PROCESSING").await;
    env.store("u1", "r2", "PROCESSING").await;
    env.emit("u1", "r3", "PROCESSING").await;
    assert_eq!(seqs_until(&mut socket, 3).await, [1, 2, 3]);
    running.stop().await;
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn users_are_isolated_and_all_sockets_of_a_user_receive() {
    let env = TestEnv::new().await;
    env.insert_user("alice", 0).await;
    env.insert_user("bob", 0).await;
    let running = env.start().await;
    let mut alice_phone = connect(&running.address, &format!("token={}", env.token("alice")))
        .await
        .unwrap();
    let mut alice_laptop = connect(&running.address, &format!("token={}", env.token("alice")))
        .await
        .unwrap();
    let mut bob = connect(&running.address, &format!("token={}", env.token("bob")))
        .await
        .unwrap();
    for socket in [&mut alice_phone, &mut alice_laptop, &mut bob] {
        assert_eq!(
            next_json(socket, Duration::from_secs(5)).await.unwrap()["type"],
            "hello"
        );
    }
    env.emit("alice", "ra", "COMPLETED").await;
    env.publish(&TestEnv::progress("alice", "ra2", 0.5)).await;
    for socket in [&mut alice_phone, &mut alice_laptop] {
        assert_eq!(
            next_json(socket, Duration::from_secs(5)).await.unwrap()["user_id"],
            "alice"
        );
        assert_eq!(
            next_json(socket, Duration::from_secs(5)).await.unwrap()["type"],
            "job_progress"
        );
    }
    assert_eq!(
        next_json(&mut bob, Duration::from_millis(700)).await,
        None,
        "bob must see nothing of alice"
    );
    running.stop().await;
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_tokens_are_refused_with_401_before_the_upgrade() {
    let env = TestEnv::new().await;
    let running = env.start().await;
    let expired = {
        use jsonwebtoken::{EncodingKey, Header, encode};
        encode(
            &Header::default(),
            &shared::auth::Claims {
                sub: "u1".into(),
                exp: 1_600_000_000,
            },
            &EncodingKey::from_secret(crate::helpers::JWT_SECRET.as_bytes()),
        )
        .unwrap()
    };
    let forged = shared::auth::Auth::new("someone-else").mint("u1", Duration::from_secs(600));
    for (label, query) in [
        ("expired", format!("token={expired}")),
        ("forged", format!("token={forged}")),
        ("missing", String::new()),
    ] {
        match connect(&running.address, &query).await {
            Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
                assert_eq!(response.status(), 401, "{label}");
            }
            other => panic!("{label}: expected 401, got {:?}", other.map(|_| "a socket")),
        }
    }
    running.stop().await;
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_binding_follows_the_users_sockets() {
    let env = TestEnv::new().await;
    env.insert_user("u1", 0).await;
    let running = env.start().await;
    let sessions = running.state.hub.sessions.clone();
    assert!(!sessions.is_bound("u1").await);
    let mut first = connect(&running.address, &format!("token={}", env.token("u1")))
        .await
        .unwrap();
    let mut second = connect(&running.address, &format!("token={}", env.token("u1")))
        .await
        .unwrap();
    next_json(&mut first, Duration::from_secs(5)).await.unwrap();
    next_json(&mut second, Duration::from_secs(5))
        .await
        .unwrap();
    assert!(sessions.is_bound("u1").await);

    first.close(None).await.unwrap();
    shared::testing::eventually(Duration::from_secs(5), || async {
        sessions.connection_count() == 1
    })
    .await
    .expect("the first socket is unregistered");
    assert!(sessions.is_bound("u1").await, "one socket is still open");

    second.close(None).await.unwrap();
    shared::testing::eventually(Duration::from_secs(5), || async {
        !sessions.is_bound("u1").await && sessions.user_ids().is_empty()
    })
    .await
    .expect("the binding outlived the last socket");
    running.stop().await;
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_client_is_closed_and_shutdown_says_going_away() {
    let env = TestEnv::with_sockets(notifier::config::SocketConfig {
        ping_secs: 1,
        idle_timeout_secs: 2,
        send_queue: 64,
        send_timeout_secs: 5,
        ..notifier::config::SocketConfig::default()
    })
    .await;
    env.insert_user("u1", 0).await;
    let running = env.start().await;

    // This client never reads, so it never answers a ping.
    let mut silent = connect(&running.address, &format!("token={}", env.token("u1")))
        .await
        .unwrap();
    // Not reading is not answering pings: the server gives up on it after the idle timeout.
    let hub = running.state.hub.clone();
    shared::testing::eventually(Duration::from_secs(10), || async {
        hub.open_connections() == 0
    })
    .await
    .expect("the silent client is closed");
    let mut close_code = None;
    while let Ok(Some(Ok(message))) =
        tokio::time::timeout(Duration::from_secs(2), silent.next()).await
    {
        if let Message::Close(frame) = message {
            close_code = frame.map(|f| f.code);
            break;
        }
    }
    assert_eq!(
        close_code,
        Some(CloseCode::Away),
        "unresponsive client closed with a reason"
    );

    // A live client during shutdown gets 1001 too.
    let mut live = connect(&running.address, &format!("token={}", env.token("u1")))
        .await
        .unwrap();
    next_json(&mut live, Duration::from_secs(5)).await.unwrap();
    let stopping = tokio::spawn(running.stop());
    let mut shutdown_code = None;
    while let Ok(Some(Ok(message))) =
        tokio::time::timeout(Duration::from_secs(5), live.next()).await
    {
        if let Message::Close(frame) = message {
            shutdown_code = frame.map(|f| (f.code, f.reason.to_string()));
            break;
        }
    }
    assert_eq!(
        shutdown_code,
        Some((CloseCode::Away, "server shutting down".to_owned()))
    );
    stopping.await.unwrap();
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn any_user_id_gets_its_events_and_only_its_own() {
    let env = TestEnv::new().await;
    let running = env.start().await;
    // Too long for a routing key, or with the topic wildcards and separators.
    let ids = [
        "u".repeat(300),
        "a.b".into(),
        "#".into(),
        "*".into(),
        "a*b".into(),
    ];
    let mut sockets = Vec::new();
    for id in &ids {
        env.insert_user(id, 1).await;
        let mut socket = connect(&running.address, &format!("token={}", env.token(id)))
            .await
            .unwrap();
        let hello = next_json(&mut socket, Duration::from_secs(5))
            .await
            .unwrap();
        assert_eq!(hello["user_id"], id.as_str());
        sockets.push(socket);
    }
    for id in &ids {
        env.emit(id, &format!("r-{}", id.len()), "PROCESSING").await;
    }
    for (id, socket) in ids.iter().zip(sockets.iter_mut()) {
        let event = next_json(socket, Duration::from_secs(5)).await.unwrap();
        assert_eq!(event["user_id"], id.as_str(), "each gets its own event");
        assert!(
            next_json(socket, Duration::from_millis(500))
                .await
                .is_none(),
            "{id} received someone else's event"
        );
    }
    assert!(running.state.hub.broker_connected(), "still serving");
    running.stop().await;
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_are_capped_per_user_and_in_total_with_a_clear_close() {
    let env = TestEnv::with_sockets(notifier::config::SocketConfig {
        max_connections: 4,
        max_connections_per_user: 2,
        ..notifier::config::SocketConfig::default()
    })
    .await;
    for user in ["u1", "u2", "u3"] {
        env.insert_user(user, 0).await;
    }
    let running = env.start().await;
    let open = |user: &'static str| {
        let address = running.address.clone();
        let token = env.token(user);
        async move { connect(&address, &format!("token={token}")).await.unwrap() }
    };
    let mut kept = Vec::new();
    for user in ["u1", "u1", "u2", "u2"] {
        let mut socket = open(user).await;
        assert_eq!(
            next_json(&mut socket, Duration::from_secs(5))
                .await
                .unwrap()["type"],
            "hello"
        );
        kept.push(socket);
    }
    // A third socket of u1: closed with 1008 and the reason.
    let mut third = open("u1").await;
    match tokio::time::timeout(Duration::from_secs(5), third.next()).await {
        Ok(Some(Ok(Message::Close(Some(frame))))) => {
            assert_eq!(frame.code, CloseCode::Policy);
            assert!(
                frame.reason.contains("too many connections"),
                "{}",
                frame.reason
            );
        }
        other => panic!("expected a close frame, got {other:?}"),
    }
    // The server holds 4: the next one is told to come back later (1013).
    let mut fifth = open("u3").await;
    match tokio::time::timeout(Duration::from_secs(5), fifth.next()).await {
        Ok(Some(Ok(Message::Close(Some(frame))))) => assert_eq!(frame.code, CloseCode::Again),
        other => panic!("expected a close frame, got {other:?}"),
    }
    // Over SSE the same limits answer 429 and 503.
    let sse = shared::http::client_builder()
        .build()
        .unwrap()
        .get(format!(
            "http://{}/events?token={}",
            running.address,
            env.token("u3")
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(sse.status(), 503);
    // A socket that goes frees its place.
    drop(kept.pop());
    let mut again = None;
    for _ in 0..50 {
        let mut socket = open("u3").await;
        if let Some(hello) = next_json(&mut socket, Duration::from_secs(1)).await
            && hello["type"] == "hello"
        {
            again = Some(socket);
            break;
        }
    }
    assert!(again.is_some(), "a freed place is taken again");
    running.stop().await;
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_log_is_replayed_page_by_page_in_order() {
    let env = TestEnv::new().await;
    env.insert_user("u1", 0).await;
    let total = notifier::push::feed::REPLAY_PAGE * 2 + 37;
    for i in 0..total {
        env.store("u1", &format!("r{i}"), "PROCESSING").await;
    }
    let running = env.start().await;
    // The feed reads one page at a time …
    let (feed, opening) = running.state.hub.open_feed("u1", Some(0)).await.unwrap();
    assert_eq!(
        opening.replay.len() as i64,
        notifier::push::feed::REPLAY_PAGE
    );
    assert!(feed.has_more());
    drop(feed);
    // … and a client receives all of it, in order, then live events.
    let mut socket = connect(
        &running.address,
        &format!("token={}&since=0", env.token("u1")),
    )
    .await
    .unwrap();
    assert_eq!(
        seqs_until(&mut socket, total).await,
        (1..=total).collect::<Vec<_>>()
    );
    env.emit("u1", "live", "COMPLETED").await;
    assert_eq!(seqs_until(&mut socket, total + 1).await, [total + 1]);
    running.stop().await;
    env.cleanup().await;
}
