//! A client that stops reading is closed once its queue is full; the others keep receiving.

use std::time::Duration;

use futures_util::StreamExt;
use tokio::net::TcpSocket;
use tokio_tungstenite::tungstenite::Message;

use crate::helpers::{TestEnv, connect, next_json};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_consumer_is_closed_while_a_fast_one_keeps_receiving() {
    let env = TestEnv::with_sockets(notifier::config::SocketConfig {
        ping_secs: 20,
        idle_timeout_secs: 60,
        send_queue: 32,
        send_timeout_secs: 1,
        ..notifier::config::SocketConfig::default()
    })
    .await;
    env.insert_user("u1", 0).await;
    let running = env.start().await;
    let token = env.token("u1");

    // The slow client: a tiny receive window, and it never reads.
    let tcp = TcpSocket::new_v4().unwrap();
    tcp.set_recv_buffer_size(2048).unwrap();
    let stream = tcp.connect(running.address.parse().unwrap()).await.unwrap();
    let (mut slow, _) = tokio_tungstenite::client_async(
        format!("ws://{}/ws?token={token}", running.address),
        stream,
    )
    .await
    .unwrap();
    let mut fast = connect(&running.address, &format!("token={token}"))
        .await
        .unwrap();
    assert_eq!(
        next_json(&mut fast, Duration::from_secs(5)).await.unwrap()["type"],
        "hello"
    );

    // Large progress events (live only) until the slow socket's buffers are full.
    let big_id = "x".repeat(8 * 1024);
    let sent = 1500;
    let fast_reader = tokio::spawn(async move {
        let mut received = 0;
        while received < sent {
            match next_json(&mut fast, Duration::from_secs(20)).await {
                Some(message) if message["type"] == "job_progress" => received += 1,
                Some(_) => {}
                None => break,
            }
        }
        received
    });
    for i in 0..sent {
        env.publish(&TestEnv::progress(
            "u1",
            &big_id,
            f64::from(i) / f64::from(sent),
        ))
        .await;
    }
    assert_eq!(
        fast_reader.await.unwrap(),
        sent,
        "the fast client got everything"
    );

    let mut closes = 0;
    for _ in 0..100 {
        let metrics = shared::http::client_builder()
            .build()
            .unwrap()
            .get(format!("http://{}/metrics", running.address))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        closes = metrics
            .lines()
            .find(|line| line.starts_with("notifier_slow_consumer_closes_total"))
            .and_then(|line| line.split_whitespace().last())
            .and_then(|value| value.parse::<f64>().ok())
            .unwrap_or(0.0) as u32;
        if closes >= 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(closes >= 1, "the slow consumer was not closed");
    // The slow socket ends: whatever it buffered, then a close or a reset.
    let ended = tokio::time::timeout(Duration::from_secs(20), async {
        loop {
            match slow.next().await {
                Some(Ok(Message::Close(_))) | None | Some(Err(_)) => return,
                Some(Ok(_)) => {}
            }
        }
    })
    .await;
    assert!(ended.is_ok(), "the slow socket was left open");
    running.stop().await;
    env.cleanup().await;
}
