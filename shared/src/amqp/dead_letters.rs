//! The dead-letter queue for operators: what is parked there and why, and sending it back
//! through the pipeline once the cause is fixed (`worker dead-letters list|replay`, and the
//! operator console's dead letters).
//!
//! The queue is the truth: listing takes every message and puts a fresh copy back (quorum
//! queues have no browsing), so two listings at the same moment would each see part of it;
//! the console serialises its own. A replayed message keeps a count of its replays
//! ([`HEADER_REPLAYS`]), so one that dies again says so instead of looping unseen.

use std::time::Duration;

use lapin::message::BasicGetMessage;
use lapin::options::{BasicAckOptions, BasicGetOptions, BasicNackOptions, ConfirmSelectOptions};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Channel, Connection};

use crate::amqp::{Outgoing, PERSISTENT, PublishError, Topology, publish_confirmed};
use crate::config::AmqpConfig;

/// Headers the worker adds to a message it sends on for a retry or to the dead letters.
pub const HEADER_ATTEMPT: &str = "x-retry-attempt";
pub const HEADER_FIRST_SEEN: &str = "x-first-seen-ms";
pub const HEADER_LAST_ERROR: &str = "x-last-error";
pub const HEADER_DEAD_REASON: &str = "x-dead-letter-reason";
/// How often an operator sent this webhook back from the dead letters.
pub const HEADER_REPLAYS: &str = "x-replays";

/// Dead letters looked at in one listing, at most (the rest stay in the queue, counted).
pub const LIST_LIMIT: usize = 5_000;

/// One parked webhook.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct DeadLetter {
    pub webhook_id: String,
    /// The Replicate id in the body, if it has one.
    pub job_id: Option<String>,
    pub status: Option<String>,
    pub reason: String,
    pub attempts: i64,
    /// When the pipeline first saw it (unix ms), if recorded.
    pub first_seen_ms: Option<i64>,
    /// How often an operator replayed it before it died (again).
    pub replays: i64,
}

/// Which dead letters to replay.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Selection {
    All,
    Ids(Vec<String>),
}

#[derive(Debug, thiserror::Error)]
pub enum DeadLetterError {
    #[error("RabbitMQ: {0}")]
    Amqp(#[from] lapin::Error),
    #[error("cannot send back to the work queue: {0}")]
    Publish(#[from] PublishError),
}

/// A channel of its own on the broker, with the topology declared.
pub async fn open(config: &AmqpConfig) -> Result<(Connection, Channel, Topology), DeadLetterError> {
    let connection = crate::amqp::connect_once(&config.url, "worker dead-letters").await?;
    let topology = config.topology();
    topology.declare(&connection).await?;
    let channel = connection.create_channel().await?;
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await?;
    Ok((connection, channel, topology))
}

/// Everything parked, oldest first; the queue is left as it was.
pub async fn list(
    channel: &Channel,
    topology: &Topology,
) -> Result<Vec<DeadLetter>, DeadLetterError> {
    let taken = take_all(channel, topology).await?;
    let letters = taken.iter().map(describe).collect();
    put_back(channel, topology, taken).await?;
    Ok(letters)
}

/// Sends the selected dead letters back to `replicate.webhooks` (retry bookkeeping reset)
/// and removes them from the dead-letter queue; returns what was replayed.
pub async fn replay(
    channel: &Channel,
    topology: &Topology,
    selection: &Selection,
) -> Result<Vec<DeadLetter>, DeadLetterError> {
    let taken = take_all(channel, topology).await?;
    let mut replayed = Vec::new();
    let mut kept = Vec::new();
    for message in taken {
        let letter = describe(&message);
        let selected = match selection {
            Selection::All => true,
            Selection::Ids(ids) => ids.contains(&letter.webhook_id),
        };
        if !selected {
            kept.push(message);
            continue;
        }
        let delivery = &message.delivery;
        let properties = BasicProperties::default()
            .with_delivery_mode(PERSISTENT)
            .with_content_type("application/json".into())
            .with_message_id(letter.webhook_id.as_str().into())
            .with_headers(fresh_headers(
                delivery.properties.headers().as_ref(),
                letter.replays + 1,
            ));
        publish_confirmed(
            channel,
            Outgoing {
                exchange: "",
                routing_key: &topology.webhooks_queue(),
                body: &delivery.data,
                properties,
                mandatory: true,
            },
            Duration::from_secs(10),
        )
        .await?;
        delivery.ack(BasicAckOptions::default()).await?;
        replayed.push(letter);
    }
    put_back(channel, topology, kept).await?;
    Ok(replayed)
}

/// Takes every message (up to [`LIST_LIMIT`]) without acknowledging it (so none is handed
/// out twice).
async fn take_all(
    channel: &Channel,
    topology: &Topology,
) -> Result<Vec<BasicGetMessage>, DeadLetterError> {
    let mut taken = Vec::new();
    while taken.len() < LIST_LIMIT
        && let Some(message) = channel
            .basic_get(
                topology.dead_letter_queue().into(),
                BasicGetOptions { no_ack: false },
            )
            .await?
    {
        taken.push(message);
    }
    Ok(taken)
}

/// Puts taken messages back, in order, as fresh copies (confirmed, then the original
/// acked): returning them would count as a delivery, and quorum queues drop a message
/// after too many (20 by default since RabbitMQ 4.0), so looking must not wear them out.
async fn put_back(
    channel: &Channel,
    topology: &Topology,
    messages: Vec<BasicGetMessage>,
) -> Result<(), DeadLetterError> {
    for message in messages {
        let delivery = &message.delivery;
        let copied = publish_confirmed(
            channel,
            Outgoing {
                exchange: "",
                routing_key: &topology.dead_letter_queue(),
                body: &delivery.data,
                properties: delivery.properties.clone(),
                mandatory: true,
            },
            Duration::from_secs(10),
        )
        .await;
        match copied {
            Ok(()) => {
                delivery.ack(BasicAckOptions::default()).await?;
            }
            Err(err) => {
                // Not copied: the original goes back as it is; nothing is lost.
                delivery
                    .nack(BasicNackOptions {
                        requeue: true,
                        ..BasicNackOptions::default()
                    })
                    .await?;
                return Err(err.into());
            }
        }
    }
    Ok(())
}

/// The original headers without the retry bookkeeping (a replay starts afresh), counting
/// this replay.
fn fresh_headers(headers: Option<&FieldTable>, replays: i64) -> FieldTable {
    let mut fresh = FieldTable::default();
    fresh.insert(HEADER_REPLAYS.into(), AMQPValue::LongLongInt(replays));
    if let Some(headers) = headers {
        for (key, value) in headers.inner() {
            let bookkeeping = [
                HEADER_ATTEMPT,
                HEADER_FIRST_SEEN,
                HEADER_LAST_ERROR,
                HEADER_DEAD_REASON,
                HEADER_REPLAYS,
            ];
            if !bookkeeping.contains(&key.as_str()) && !key.as_str().starts_with("x-death") {
                fresh.insert(key.clone(), value.clone());
            }
        }
    }
    fresh
}

fn describe(message: &BasicGetMessage) -> DeadLetter {
    let delivery = &message.delivery;
    let headers = delivery.properties.headers().as_ref();
    let header = |name: &str| headers.and_then(|h| h.inner().get(name));
    let text = |value: Option<&AMQPValue>| match value {
        Some(AMQPValue::LongString(s)) => Some(s.to_string()),
        Some(AMQPValue::ShortString(s)) => Some(s.to_string()),
        _ => None,
    };
    let body: serde_json::Value = serde_json::from_slice(&delivery.data).unwrap_or_default();
    DeadLetter {
        webhook_id: delivery
            .properties
            .message_id()
            .as_ref()
            .map(|id| id.to_string())
            .or_else(|| text(header(crate::webhook::HEADER_ID)))
            .unwrap_or_else(|| "-".into()),
        job_id: body["id"].as_str().map(str::to_owned),
        status: body["status"].as_str().map(str::to_owned),
        // The worker's reason, or the broker's own (delivery limit, rejection).
        reason: text(header(HEADER_DEAD_REASON))
            .or_else(|| {
                header("x-first-death-reason")
                    .and_then(|v| text(Some(v)))
                    .map(|r| format!("dead-lettered by the broker: {r}"))
            })
            .unwrap_or_else(|| "no reason recorded".into()),
        attempts: int(header(HEADER_ATTEMPT)).unwrap_or(0),
        first_seen_ms: int(header(HEADER_FIRST_SEEN)),
        replays: int(header(HEADER_REPLAYS)).unwrap_or(0),
    }
}

/// An integer header, whatever width it was sent with.
pub fn int(value: Option<&AMQPValue>) -> Option<i64> {
    match value? {
        AMQPValue::LongLongInt(n) => Some(*n),
        AMQPValue::LongInt(n) => Some(i64::from(*n)),
        AMQPValue::LongUInt(n) => Some(i64::from(*n)),
        AMQPValue::ShortInt(n) => Some(i64::from(*n)),
        AMQPValue::ShortUInt(n) => Some(i64::from(*n)),
        _ => None,
    }
}
