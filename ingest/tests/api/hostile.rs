//! Unauthenticated uploads written to hurt: stalled, slow and oversized bodies are cut off
//! and never keep a correctly signed webhook from being accepted meanwhile.

use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::helpers::{broker_url, now_secs, spawn_app, test_config};

const SUCCEEDED: &[u8] = br#"{"id":"ok-1","status":"succeeded","output":null}"#;

/// Opens a connection and sends a webhook's head announcing `length` bytes (or chunked),
/// with plausible headers and a current timestamp, then only `sent` bytes of the body.
async fn stalled_upload(address: &str, length: Option<usize>, sent: usize) -> TcpStream {
    let mut stream = TcpStream::connect(address.trim_start_matches("http://"))
        .await
        .unwrap();
    let framing = match length {
        Some(length) => format!("content-length: {length}\r\n"),
        None => "transfer-encoding: chunked\r\n".to_owned(),
    };
    let head = format!(
        "POST /api/webhooks/replicate HTTP/1.1\r\nhost: ingest\r\ncontent-type: application/json\r\n\
         webhook-id: msg_attacker\r\nwebhook-timestamp: {}\r\nwebhook-signature: v1,AAAA\r\n{framing}\r\n",
        now_secs()
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    let body = vec![b'x'; sent];
    if length.is_some() {
        stream.write_all(&body).await.unwrap();
    } else {
        stream
            .write_all(format!("{:x}\r\n", body.len()).as_bytes())
            .await
            .unwrap();
        stream.write_all(&body).await.unwrap();
        stream.write_all(b"\r\n").await.unwrap();
    }
    stream
}

/// The status code the server answered on `stream`, if it answered within `wait`.
async fn status_of(stream: &mut TcpStream, wait: Duration) -> Option<u16> {
    let mut answer = vec![0u8; 512];
    let read = tokio::time::timeout(wait, stream.read(&mut answer))
        .await
        .ok()?
        .ok()?;
    let text = String::from_utf8_lossy(&answer[..read]);
    text.split_whitespace().nth(1)?.parse().ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_and_oversized_uploads_are_cut_off_and_never_block_a_signed_webhook() {
    let (mut config, secret) = test_config(&broker_url());
    config.webhook.max_body_bytes = 10 * 1024 * 1024;
    config.body.budget_bytes = 4 * 1024 * 1024;
    config.body.timeout_secs = 2;
    let mut app = spawn_app(config, secret, true).await;

    // A few dozen attackers: large announced bodies that stall, small ones that stall,
    // chunked ones that stall.
    let mut large = Vec::new();
    for _ in 0..20 {
        large.push(stalled_upload(&app.address, Some(9 * 1024 * 1024), 1024).await);
    }
    let mut small = Vec::new();
    for _ in 0..20 {
        small.push(stalled_upload(&app.address, Some(4096), 100).await);
        small.push(stalled_upload(&app.address, None, 100).await);
    }

    // Beyond the budget for large bodies, refused at once, before their bytes are read.
    let mut refused_at_once = 0;
    for stream in &mut large {
        if status_of(stream, Duration::from_millis(300)).await == Some(503) {
            refused_at_once += 1;
        }
    }
    assert!(
        refused_at_once >= 19,
        "a 4 MiB budget holds no more than one 9 MiB body: {refused_at_once} of 20 refused"
    );

    // Meanwhile a correctly signed webhook is accepted, promptly.
    let started = Instant::now();
    let response = app.post_signed("msg_legit", SUCCEEDED).await;
    assert_eq!(response.status(), 200);
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "answered in {:?}",
        started.elapsed()
    );

    // The stalled ones are cut off by the read timeout.
    for stream in large.iter_mut().chain(small.iter_mut()) {
        let status = status_of(stream, Duration::from_secs(5)).await;
        assert!(
            matches!(status, Some(408) | Some(503) | None),
            "stalled upload answered {status:?}"
        );
    }
    let queued = app.drain_queue().await;
    assert_eq!(queued.len(), 1, "only the signed webhook was enqueued");
    let metrics = app.get("/metrics").await.text().await.unwrap();
    assert!(
        metrics.contains(r#"outcome="body_timeout""#),
        "timeouts are counted"
    );
    app.cleanup().await;
}

#[tokio::test]
async fn a_timestamp_outside_the_tolerance_is_refused_before_the_body_is_read() {
    let (config, secret) = test_config(&broker_url());
    let app = spawn_app(config, secret, true).await;
    let mut stream = TcpStream::connect(app.address.trim_start_matches("http://"))
        .await
        .unwrap();
    // An hour old, and the body never comes: the answer must not wait for it.
    let head = format!(
        "POST /api/webhooks/replicate HTTP/1.1\r\nhost: ingest\r\nwebhook-id: msg_old\r\n\
         webhook-timestamp: {}\r\nwebhook-signature: v1,AAAA\r\ncontent-length: 60000\r\n\r\n",
        now_secs() - 3600
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    assert_eq!(
        status_of(&mut stream, Duration::from_secs(2)).await,
        Some(401)
    );
    app.cleanup().await;
}
