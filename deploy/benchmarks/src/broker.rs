//! `broker`: persistent, confirmed publishes/s of one webhook-sized payload, published
//! exactly as ingest publishes a webhook (the same queue arguments, properties and headers,
//! mandatory) into queues of its own, confirms pipelined over `--concurrency` publishers:
//! the ceiling ingest is measured against.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use lapin::options::ConfirmSelectOptions;
use lapin::{Channel, Connection, ConnectionProperties};
use serde_json::{Value, json};
use shared::amqp::{Topology, Webhook, publish_webhook};

use crate::measure::*;

/// What each publish of the reference sends: ingest's queues under a prefix of their own,
/// and one signed-webhook body.
struct Reference {
    topology: Topology,
    body: Vec<u8>,
    timestamp: String,
}

impl Reference {
    async fn publish(&self, channel: &Channel) -> bool {
        let webhook = Webhook {
            id: "msg_bench_reference",
            timestamp: &self.timestamp,
            body: &self.body,
            tag: None,
        };
        publish_webhook(channel, &self.topology, webhook, Duration::from_secs(10))
            .await
            .is_ok()
    }
}

/// `broker`: the ceiling.
pub async fn broker(amqp_url: &str, seconds: u64, concurrency: usize) -> anyhow::Result<Value> {
    let connection = Connection::connect(amqp_url, ConnectionProperties::default())
        .await
        .context("connecting to RabbitMQ")?;
    let channel = connection.create_channel().await?;
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await?;
    let reference = Arc::new(Reference {
        topology: Topology::new(&format!(
            "bench.broker.{}.",
            replicate_sim::prediction::new_id()
        )),
        body: webhook_body("bench"),
        timestamp: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs()
            .to_string(),
    });
    reference
        .topology
        .declare(&connection)
        .await
        .context("declaring the reference's queues")?;
    let done = Arc::new(AtomicBool::new(false));
    let confirmed = Arc::new(AtomicU64::new(0));
    tick(
        bar(seconds, "broker: confirmed publishes"),
        done.clone(),
        confirmed.clone(),
    );
    let started = Instant::now();
    let deadline = started + Duration::from_secs(seconds);
    let mut publishers = Vec::new();
    for _ in 0..concurrency.max(1) {
        let (channel, reference, confirmed) =
            (channel.clone(), reference.clone(), confirmed.clone());
        publishers.push(tokio::spawn(async move {
            while Instant::now() < deadline {
                if reference.publish(&channel).await {
                    confirmed.fetch_add(1, Ordering::Relaxed);
                }
            }
        }));
    }
    for publisher in publishers {
        publisher.await?;
    }
    let elapsed = started.elapsed().as_secs_f64();
    done.store(true, Ordering::Relaxed);
    let total = confirmed.load(Ordering::Relaxed);
    let per_second = total as f64 / elapsed;

    // Half that rate, paced as the ingest run is: publish → confirm latency, the floor of
    // ingest's own latency at half rate.
    let publishers = (0..concurrency.max(1))
        .map(|_| (channel.clone(), reference.clone()))
        .collect();
    let (latencies, _) = paced(
        "broker: half rate, paced",
        publishers,
        per_second / 2.0,
        seconds,
        |(channel, reference)| Box::pin(reference.publish(channel)),
    )
    .await?;
    reference.topology.delete(&channel).await?;
    Ok(json!({
        "part": "broker",
        "confirmed": total,
        "seconds": elapsed,
        "per_second": per_second,
        "concurrency": concurrency,
        "payload_bytes": reference.body.len(),
        "half_rate_p50_ms": percentile(&latencies, 0.5),
        "half_rate_p99_ms": percentile(&latencies, 0.99),
    }))
}
