//! `ingest`: correctly signed webhooks/s that a running ingest confirms at saturation
//! (`--concurrency` kept-alive connections, everything signed ahead of time), then the
//! latency at half that rate, paced (latency counted from when each request was due, so a
//! stall is not hidden), and the load generator's own CPU.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use shared::webhook::WebhookSecret;

use crate::measure::*;

/// Signed requests, made before the clock starts.
pub struct Signed {
    id: String,
    timestamp: String,
    signature: String,
    body: bytes::Bytes,
}

pub fn sign_ahead(secret: &WebhookSecret, count: usize) -> Vec<Signed> {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs() as i64;
    let run = replicate_sim::prediction::new_id();
    (0..count)
        .map(|i| {
            let id = format!("msg_bench_{run}_{i}");
            let body = webhook_body(&format!("bench{i}"));
            Signed {
                signature: secret.sign(&id, now, &body),
                timestamp: now.to_string(),
                id,
                body: body.into(),
            }
        })
        .collect()
}

/// One kept-alive HTTP/1.1 connection to ingest: the lightest client there is, so the
/// load generator takes as little of the shared CPU as it can.
pub struct KeptAlive {
    sender: hyper::client::conn::http1::SendRequest<http_body_util::Full<bytes::Bytes>>,
    authority: String,
    path: String,
}

impl KeptAlive {
    async fn connect(url: &str) -> anyhow::Result<Self> {
        let parsed = reqwest::Url::parse(url)?;
        let authority = format!(
            "{}:{}",
            parsed.host_str().unwrap_or("127.0.0.1"),
            parsed.port_or_known_default().unwrap_or(80)
        );
        let stream = tokio::net::TcpStream::connect(&authority).await?;
        stream.set_nodelay(true)?;
        let (sender, connection) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream)).await?;
        tokio::spawn(connection);
        Ok(Self {
            sender,
            authority,
            path: parsed.path().to_owned(),
        })
    }

    /// Posts one signed webhook; true when ingest answered 200.
    async fn post(&mut self, signed: &Signed) -> bool {
        use http_body_util::BodyExt;
        if self.sender.ready().await.is_err() {
            return false;
        }
        let request = hyper::Request::post(self.path.as_str())
            .header("host", self.authority.as_str())
            .header("content-type", "application/json")
            .header(shared::webhook::HEADER_ID, signed.id.as_str())
            .header(shared::webhook::HEADER_TIMESTAMP, signed.timestamp.as_str())
            .header(shared::webhook::HEADER_SIGNATURE, signed.signature.as_str())
            .body(http_body_util::Full::new(signed.body.clone()))
            .expect("a valid request");
        match self.sender.send_request(request).await {
            Ok(response) => {
                let ok = response.status() == 200;
                // Read the answer to the end so the connection can carry the next one.
                ok && response.into_body().collect().await.is_ok()
            }
            Err(_) => false,
        }
    }
}

/// `ingest`: saturation, then latency at half the rate.
pub async fn ingest(
    url: &str,
    secret: &WebhookSecret,
    seconds: u64,
    concurrency: usize,
) -> anyhow::Result<Value> {
    let concurrency = concurrency.max(1);
    // Enough distinct webhooks for the whole run (each id sent once).
    let signed = Arc::new(sign_ahead(secret, 40_000 * seconds as usize / 10 + 1000));

    // Saturation: every connection sends as fast as answers come.
    let done = Arc::new(AtomicBool::new(false));
    let accepted = Arc::new(AtomicU64::new(0));
    let next = Arc::new(AtomicU64::new(0));
    tick(
        bar(seconds, "ingest: saturation"),
        done.clone(),
        accepted.clone(),
    );
    let series = sample_each_second(done.clone(), accepted.clone());
    let cpu_before = own_cpu_seconds();
    let started = Instant::now();
    let deadline = started + Duration::from_secs(seconds);
    let mut senders = Vec::new();
    for _ in 0..concurrency {
        let mut connection = KeptAlive::connect(url).await?;
        let (signed, accepted, next) = (signed.clone(), accepted.clone(), next.clone());
        senders.push(tokio::spawn(async move {
            while Instant::now() < deadline {
                let i = next.fetch_add(1, Ordering::Relaxed) as usize % signed.len();
                if connection.post(&signed[i]).await {
                    accepted.fetch_add(1, Ordering::Relaxed);
                }
            }
        }));
    }
    for sender in senders {
        sender.await?;
    }
    let elapsed = started.elapsed().as_secs_f64();
    done.store(true, Ordering::Relaxed);
    let generator_cpu = (own_cpu_seconds() - cpu_before) / elapsed;
    let mut series = series.await?;
    // A last sample taken after the deadline counts a partial second.
    series.truncate(seconds as usize);
    let saturation = accepted.load(Ordering::Relaxed) as f64 / elapsed;

    // Half the rate, paced: each connection sends on its own schedule.
    let mut connections = Vec::with_capacity(concurrency);
    for _ in 0..concurrency {
        connections.push(KeptAlive::connect(url).await?);
    }
    let (latencies, half_rate) = paced(
        "ingest: half rate, paced",
        connections,
        saturation / 2.0,
        seconds,
        move |connection| {
            let i = next.fetch_add(1, Ordering::Relaxed) as usize % signed.len();
            let signed = signed.clone();
            Box::pin(async move { connection.post(&signed[i]).await })
        },
    )
    .await?;
    Ok(json!({
        "part": "ingest",
        "saturation_per_second": saturation,
        "half_rate_per_second": half_rate,
        "p50_ms": percentile(&latencies, 0.5),
        "p99_ms": percentile(&latencies, 0.99),
        "max_ms": latencies.last().copied().unwrap_or_default(),
        "concurrency": concurrency,
        "generator_cpu": generator_cpu,
        "saturation_series": series,
        "latencies_ms": latencies,
    }))
}
