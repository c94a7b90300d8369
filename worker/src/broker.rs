//! The worker's RabbitMQ link: a consuming channel with a prefetch window and a publishing
//! channel in confirm mode, rebuilt together whenever the connection breaks.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use lapin::message::Delivery;
use lapin::options::{BasicConsumeOptions, BasicQosOptions, ConfirmSelectOptions};
use lapin::types::FieldTable;
use lapin::{Channel, Connection, Consumer};
use shared::amqp::{
    Link, Outgoing, PERSISTENT, PublishError, Reconnecting, Topology, Webhook, publish_confirmed,
    publish_webhook,
};
use shared::config::AmqpConfig;
use shared::events::Event;

pub struct BrokerLink {
    publish: Channel,
    consume: Channel,
    pub consumer: Consumer,
    pub consumer_tag: String,
    broken: AtomicBool,
}

impl BrokerLink {
    /// Asks for a fresh link (the consumer stream ended while the channel looked fine).
    pub fn mark_broken(&self) {
        self.broken.store(true, Ordering::Relaxed);
    }

    /// Stops the broker from sending more deliveries to this consumer.
    pub async fn cancel_consumer(&self) {
        let _ = self
            .consume
            .basic_cancel(self.consumer_tag.as_str().into(), Default::default())
            .await;
    }
}

impl Link for BrokerLink {
    fn is_healthy(&self) -> bool {
        !self.broken.load(Ordering::Relaxed)
            && self.publish.status().connected()
            && self.consume.status().connected()
    }
}

async fn open(
    connection: Arc<Connection>,
    topology: Topology,
    prefetch: u16,
    legacy_queues_retired: Arc<AtomicBool>,
) -> lapin::Result<BrokerLink> {
    topology.declare(&connection).await?;
    if !legacy_queues_retired.swap(true, Ordering::Relaxed) {
        topology.retire_legacy_retry_queues(&connection).await;
    }
    let publish = connection.create_channel().await?;
    publish
        .confirm_select(ConfirmSelectOptions::default())
        .await?;
    let consume = connection.create_channel().await?;
    consume
        .basic_qos(prefetch, BasicQosOptions::default())
        .await?;
    let consumer_tag = format!(
        "worker-{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_millis()
    );
    let consumer = consume
        .basic_consume(
            topology.webhooks_queue().into(),
            consumer_tag.as_str().into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await?;
    Ok(BrokerLink {
        publish,
        consume,
        consumer,
        consumer_tag,
        broken: AtomicBool::new(false),
    })
}

/// The worker's side of RabbitMQ: consuming webhooks, publishing events, retries and dead
/// letters, all with publisher confirms.
pub struct Broker {
    pub link: Reconnecting<BrokerLink>,
    pub topology: Topology,
    confirm_timeout: Duration,
}

impl Broker {
    pub fn start(config: &AmqpConfig, prefetch: u16) -> Self {
        let topology = config.topology();
        let for_link = topology.clone();
        // Old delay queues are looked for once per process, not on every reconnect: each
        // look at a queue that is not there is a channel error in the broker's log.
        let retired = Arc::new(AtomicBool::new(false));
        let link = Reconnecting::spawn(config, "worker", move |connection| {
            open(connection, for_link.clone(), prefetch, retired.clone())
        });
        Self {
            link,
            topology,
            confirm_timeout: Duration::from_secs(10),
        }
    }

    fn channel(&self) -> Result<Channel, PublishError> {
        Ok(self
            .link
            .current()
            .ok_or(PublishError::BrokerUnavailable)?
            .publish
            .clone())
    }

    /// Publishes a result event to `jobs.events` with routing key `user.<id>`.
    pub async fn publish_event(&self, event: &Event) -> Result<(), PublishError> {
        shared::amqp::publish_event(
            &self.channel()?,
            &self.topology,
            event,
            self.confirm_timeout,
        )
        .await
    }

    /// Puts a webhook body into `replicate.webhooks`, as ingest does (the reconciler's
    /// answers from Replicate take the same path as webhooks).
    pub async fn enqueue_webhook(
        &self,
        webhook_id: &str,
        timestamp: &str,
        body: &[u8],
    ) -> Result<(), PublishError> {
        publish_webhook(
            &self.channel()?,
            &self.topology,
            Webhook {
                id: webhook_id,
                timestamp,
                body,
                tag: None,
            },
            self.confirm_timeout,
        )
        .await
    }

    /// Publishes a copy of `delivery` (body, id, headers) to `queue` with extra headers:
    /// a retry queue or the dead-letter queue.
    pub async fn republish(
        &self,
        queue: &str,
        delivery: &Delivery,
        headers: FieldTable,
    ) -> Result<(), PublishError> {
        let properties = delivery
            .properties
            .clone()
            .with_delivery_mode(PERSISTENT)
            .with_headers(headers);
        publish_confirmed(
            &self.channel()?,
            Outgoing {
                exchange: "",
                routing_key: queue,
                body: &delivery.data,
                properties,
                mandatory: true,
            },
            self.confirm_timeout,
        )
        .await
    }
}
