//! `/api/health` is public (behind the front door): a flood of it costs the notifier's
//! dependencies one look a second, not one per request.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

use crate::helpers::TestEnv;

/// A stand-in for ingest's `/api/health` that counts the requests it answers.
async fn counting_ingest() -> (String, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let asked = Arc::new(AtomicUsize::new(0));
    let counter = asked.clone();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let counter = counter.clone();
            tokio::spawn(async move {
                let mut request = [0u8; 2048];
                if stream.read(&mut request).await.unwrap_or(0) == 0 {
                    return;
                }
                counter.fetch_add(1, Ordering::SeqCst);
                let body = r#"{"status":"healthy"}"#;
                let _ = stream
                    .write_all(
                        format!(
                            "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                            body.len()
                        )
                        .as_bytes(),
                    )
                    .await;
            });
        }
    });
    (url, asked)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_health_requests_costs_one_look_a_second() -> anyhow::Result<()> {
    let env = TestEnv::new().await;
    let (ingest_url, asked) = counting_ingest().await;
    let mut config = env.config.clone();
    config.ingest_url = ingest_url;
    let running = env.start_with(&config).await;
    let http = shared::http::client_builder().build().unwrap();
    let health = format!("http://{}/api/health", running.address);

    let answers = futures_util::future::join_all((0..200).map(|_| http.get(&health).send())).await;
    for answer in answers {
        let answer = answer?;
        assert_eq!(answer.status(), 200);
        let body: serde_json::Value = answer.json().await?;
        assert_eq!(body["webhook"], "configured");
        assert_eq!(body["database"], "connected");
    }
    let looks = asked.load(Ordering::SeqCst);
    assert!(
        (1..=2).contains(&looks),
        "200 health requests asked ingest {looks} times"
    );

    // The look is renewed: a second later, a new request looks again.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(http.get(&health).send().await?.status(), 200);
    assert_eq!(asked.load(Ordering::SeqCst), looks + 1);
    running.stop().await;
    env.cleanup().await;
    Ok(())
}
