//! Publishing with the broker's confirm: any message ([`publish_confirmed`]), a verified
//! webhook to `replicate.webhooks` ([`publish_webhook`], for ingest and the worker's
//! re-enqueue alike) and a result event to `jobs.events` ([`publish_event`]).

use std::time::Duration;

use lapin::options::BasicPublishOptions;
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::{BasicProperties, Channel, Confirmation};

use crate::amqp::topology::Topology;

/// Builds an AMQP header table from string pairs.
pub fn string_headers<'a>(pairs: impl IntoIterator<Item = (&'a str, &'a str)>) -> FieldTable {
    let mut table = FieldTable::default();
    for (key, value) in pairs {
        table.insert(
            ShortString::from(key),
            AMQPValue::LongString(LongString::from(value)),
        );
    }
    table
}

/// AMQP delivery mode 2: the broker writes the message to disk.
pub const PERSISTENT: u8 = 2;

/// The header that carries the jobs API's tag from the webhook URL's query string
/// (`?job=<row id>`), when the URL had one: the row the job was created for.
pub const HEADER_JOB_TAG: &str = "job-tag";

/// The properties of a webhook message in `replicate.webhooks` (the contract): persistent,
/// `message_id` = `webhook-id`, the `webhook-id` and `webhook-timestamp` headers, and
/// [`HEADER_JOB_TAG`] when the webhook URL carried a tag.
pub fn webhook_properties(webhook_id: &str, timestamp: &str, tag: Option<&str>) -> BasicProperties {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or_default();
    BasicProperties::default()
        .with_delivery_mode(PERSISTENT)
        .with_message_id(webhook_id.into())
        .with_content_type("application/json".into())
        .with_timestamp(now)
        .with_headers(string_headers(
            [
                (crate::webhook::HEADER_ID, webhook_id),
                (crate::webhook::HEADER_TIMESTAMP, timestamp),
            ]
            .into_iter()
            .chain(tag.map(|tag| (HEADER_JOB_TAG, tag))),
        ))
}

/// Why a message was not confirmed by the broker.
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    #[error("broker unavailable")]
    BrokerUnavailable,
    #[error("broker did not confirm within {0:?}")]
    Timeout(Duration),
    #[error("broker refused the message (nack)")]
    Nacked,
    #[error("broker could not route the message: {0}")]
    Unroutable(String),
    #[error("publish failed: {0}")]
    Amqp(#[from] lapin::Error),
}

impl PublishError {
    /// Whether the same message may go through on a fresh channel: the broker was away,
    /// nacked it, or the channel or connection failed. Not after a timeout (the time is
    /// spent) or an unroutable message (no queue; another channel changes nothing).
    pub fn may_succeed_on_another_channel(&self) -> bool {
        matches!(self, Self::BrokerUnavailable | Self::Nacked | Self::Amqp(_))
    }
}

/// One message to publish.
#[derive(Debug, Clone)]
pub struct Outgoing<'a> {
    pub exchange: &'a str,
    pub routing_key: &'a str,
    pub body: &'a [u8],
    pub properties: BasicProperties,
    /// Whether an unroutable message is an error (queues) or fine (event exchanges
    /// nobody listens to yet).
    pub mandatory: bool,
}

/// Publishes on a channel in confirm mode and waits up to `timeout` for the broker's
/// confirm. Callers on many tasks share one channel: each waits only for its own confirm,
/// so confirms are pipelined.
pub async fn publish_confirmed(
    channel: &Channel,
    message: Outgoing<'_>,
    timeout: Duration,
) -> Result<(), PublishError> {
    let options = BasicPublishOptions {
        mandatory: message.mandatory,
        ..BasicPublishOptions::default()
    };
    let confirmed = async {
        channel
            .basic_publish(
                message.exchange.into(),
                message.routing_key.into(),
                options,
                message.body,
                message.properties,
            )
            .await?
            .await
    };
    match tokio::time::timeout(timeout, confirmed).await {
        Err(_) => Err(PublishError::Timeout(timeout)),
        Ok(Err(err)) => Err(PublishError::Amqp(err)),
        Ok(Ok(Confirmation::Ack(None))) => Ok(()),
        // Acked but returned: no queue is bound, so the message went nowhere.
        Ok(Ok(Confirmation::Ack(Some(returned)))) => {
            Err(PublishError::Unroutable(returned.reply_text.to_string()))
        }
        Ok(Ok(Confirmation::Nack(_) | Confirmation::NotRequested)) => {
            // On RabbitMQ 3.10 a channel that published while a quorum queue's new leader
            // was not yet known keeps nacking every publish. Closing it makes the link
            // rebuild itself with a fresh channel (on the next node if this one is gone);
            // the caller answers or retries as for any failed publish.
            let _ = channel
                .close(200, "nacked: opening a new channel".into())
                .await;
            Err(PublishError::Nacked)
        }
    }
}

/// Publishes a result event to `jobs.events` with routing key `user.<id>`, persistent,
/// `message_id` `<user id>:<seq>` for numbered events; waits for the confirm.
pub async fn publish_event(
    channel: &Channel,
    topology: &Topology,
    event: &crate::events::Event,
    timeout: Duration,
) -> Result<(), PublishError> {
    let body = serde_json::to_vec(event).expect("events serialise");
    let mut properties = BasicProperties::default()
        .with_delivery_mode(PERSISTENT)
        .with_content_type("application/json".into());
    if let Some(seq) = event.seq() {
        let message_id = crate::events::short_string(&format!("{}:{seq}", event.user_id()));
        properties = properties.with_message_id(message_id.into());
    }
    publish_confirmed(
        channel,
        Outgoing {
            exchange: &topology.events_exchange(),
            routing_key: &event.routing_key(),
            body: &body,
            properties,
            // Nobody may be listening for this user right now; the event log keeps it.
            mandatory: false,
        },
        timeout,
    )
    .await
}

/// One verified webhook, exactly as received.
#[derive(Debug, Clone, Copy)]
pub struct Webhook<'a> {
    pub id: &'a str,
    pub timestamp: &'a str,
    pub body: &'a [u8],
    /// The jobs API's tag from the webhook URL's query string, if any.
    pub tag: Option<&'a str>,
}

/// Puts a webhook into `replicate.webhooks` as the contract says (persistent, mandatory,
/// [`webhook_properties`]) and waits for the confirm.
pub async fn publish_webhook(
    channel: &Channel,
    topology: &Topology,
    webhook: Webhook<'_>,
    timeout: Duration,
) -> Result<(), PublishError> {
    let queue = topology.webhooks_queue();
    publish_confirmed(channel, webhook_message(&queue, webhook), timeout).await
}

/// A webhook as a message for `queue` (`replicate.webhooks` under the deployment's
/// prefix), as the contract says: persistent, mandatory, [`webhook_properties`].
pub fn webhook_message<'a>(queue: &'a str, webhook: Webhook<'a>) -> Outgoing<'a> {
    Outgoing {
        exchange: "",
        routing_key: queue,
        body: webhook.body,
        properties: webhook_properties(webhook.id, webhook.timestamp, webhook.tag),
        mandatory: true,
    }
}
