//! `broker`: persistent, confirmed publishes/s of one webhook-sized payload into a quorum
//! queue of its own, confirms pipelined over `--concurrency` publishers: the ceiling ingest
//! is measured against.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use lapin::options::{ConfirmSelectOptions, QueueDeclareOptions, QueueDeleteOptions};
use lapin::types::{AMQPValue, FieldTable, LongString};
use lapin::{BasicProperties, Connection, ConnectionProperties};
use serde_json::{Value, json};
use shared::amqp::{Outgoing, PERSISTENT, publish_confirmed};

use crate::measure::*;

/// `broker`: the ceiling.
pub async fn broker(amqp_url: &str, seconds: u64, concurrency: usize) -> anyhow::Result<Value> {
    let connection = Connection::connect(amqp_url, ConnectionProperties::default())
        .await
        .context("connecting to RabbitMQ")?;
    let channel = connection.create_channel().await?;
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await?;
    let queue = format!("bench.broker.{}", replicate_sim::prediction::new_id());
    let mut args = FieldTable::default();
    args.insert(
        "x-queue-type".into(),
        AMQPValue::LongString(LongString::from("quorum")),
    );
    channel
        .queue_declare(
            queue.as_str().into(),
            QueueDeclareOptions {
                durable: true,
                ..Default::default()
            },
            args,
        )
        .await?;
    let body = Arc::new(webhook_body("bench"));
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
        let (channel, queue, body, confirmed) = (
            channel.clone(),
            queue.clone(),
            body.clone(),
            confirmed.clone(),
        );
        publishers.push(tokio::spawn(async move {
            while Instant::now() < deadline {
                if publish_persistent(&channel, &queue, &body).await {
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
        .map(|_| (channel.clone(), queue.clone(), body.clone()))
        .collect();
    let (latencies, _) = paced(
        "broker: half rate, paced",
        publishers,
        per_second / 2.0,
        seconds,
        |(channel, queue, body)| Box::pin(publish_persistent(channel, queue, body)),
    )
    .await?;
    channel
        .queue_delete(queue.as_str().into(), QueueDeleteOptions::default())
        .await?;
    Ok(json!({
        "part": "broker",
        "confirmed": total,
        "seconds": elapsed,
        "per_second": per_second,
        "concurrency": concurrency,
        "payload_bytes": body.len(),
        "half_rate_p50_ms": percentile(&latencies, 0.5),
        "half_rate_p99_ms": percentile(&latencies, 0.99),
    }))
}

/// One persistent publish into `queue`, confirmed by the broker.
pub async fn publish_persistent(channel: &lapin::Channel, queue: &str, body: &[u8]) -> bool {
    publish_confirmed(
        channel,
        Outgoing {
            exchange: "",
            routing_key: queue,
            body,
            properties: BasicProperties::default().with_delivery_mode(PERSISTENT),
            mandatory: true,
        },
        Duration::from_secs(10),
    )
    .await
    .is_ok()
}
