//! The same stream as Server-Sent Events, resumable with `Last-Event-ID`.

use std::time::Duration;

use futures_util::StreamExt;

use crate::helpers::TestEnv;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_sent_events_resume_from_last_event_id() {
    let env = TestEnv::new().await;
    env.insert_user("u1", 0).await;
    for i in 0..4 {
        env.emit("u1", &format!("r{i}"), "PROCESSING").await;
    }
    let running = env.start().await;
    let client = shared::http::client_builder().build().unwrap();
    let response = client
        .get(format!(
            "http://{}/events?token={}",
            running.address,
            env.token("u1")
        ))
        .header("Last-Event-ID", "2")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-type"], "text/event-stream");
    let mut body = response.bytes_stream();
    let mut text = String::new();
    // The replay first (3 and 4), then an event published while the stream is open.
    read_until(&mut body, &mut text, "id: 4\n").await;
    env.emit("u1", "r-live", "COMPLETED").await;
    read_until(&mut body, &mut text, "id: 5\n").await;
    let ids: Vec<&str> = text
        .lines()
        .filter_map(|line| line.strip_prefix("id: "))
        .collect();
    assert_eq!(ids, ["3", "4", "5"]);
    assert!(text.starts_with("data: {\"type\":\"hello\""), "{text}");
    let unauthorized = client
        .get(format!("http://{}/events", running.address))
        .send()
        .await
        .unwrap();
    assert_eq!(unauthorized.status(), 401);
    running.stop().await;
    env.cleanup().await;
}

/// Appends the stream's chunks to `text` until it contains `wanted` (10 s at most a chunk).
async fn read_until<S, E>(body: &mut S, text: &mut String, wanted: &str)
where
    S: futures_util::Stream<Item = Result<bytes::Bytes, E>> + Unpin,
    E: std::fmt::Debug,
{
    while !text.contains(wanted) {
        let chunk = tokio::time::timeout(Duration::from_secs(10), body.next())
            .await
            .expect("more events")
            .expect("the stream is open")
            .unwrap();
        text.push_str(std::str::from_utf8(&chunk).unwrap());
    }
}
