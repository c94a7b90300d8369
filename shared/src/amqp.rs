//! RabbitMQ: the topology every service agrees on, declared in one place, and a connection
//! that comes back by itself after the broker goes away.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use lapin::options::{
    BasicPublishOptions, ExchangeDeclareOptions, QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::protocol::{AMQPErrorKind, AMQPSoftError};
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::{
    BasicProperties, Channel, Confirmation, Connection, ConnectionProperties, ExchangeKind,
};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::config::{AmqpConfig, AmqpNodes};

/// Delays of the retry queues, shortest first. A message waiting for a retry sits in the
/// queue of its delay and is dead-lettered back to the work queue when it expires (the
/// broker has no delayed-message plugin, and one TTL per queue keeps expiry in order).
pub const RETRY_DELAYS: &[Duration] = &[
    Duration::from_secs(1),
    Duration::from_secs(5),
    Duration::from_secs(15),
    Duration::from_secs(30),
    Duration::from_secs(60),
];

/// How often a message may be handed out again after a consumer died holding it, before
/// the broker parks it in the dead-letter queue (a poison message must not loop forever).
pub const DELIVERY_LIMIT: i64 = 20;

/// Names of the queues and exchanges. With an empty prefix they are exactly the contract's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Topology {
    prefix: String,
}

impl Topology {
    pub fn new(prefix: &str) -> Self {
        Self {
            prefix: prefix.to_owned(),
        }
    }

    /// The quorum queue that ingest publishes webhooks to and workers consume.
    pub fn webhooks_queue(&self) -> String {
        format!("{}replicate.webhooks", self.prefix)
    }

    /// Where webhooks that cannot be processed end, with a header saying why.
    pub fn dead_letter_queue(&self) -> String {
        format!("{}replicate.webhooks.dead", self.prefix)
    }

    /// The delay queue for one of [`RETRY_DELAYS`]: a quorum queue, so that a retry
    /// waiting in it survives the loss of any one broker node.
    pub fn retry_queue(&self, delay: Duration) -> String {
        format!(
            "{}replicate.webhooks.delay.{}s",
            self.prefix,
            delay.as_secs()
        )
    }

    /// The delay queues of earlier versions: classic queues, which live on one node only
    /// (when that node is down nobody can declare or use them). See
    /// [`Topology::retire_legacy_retry_queues`].
    fn legacy_retry_queue(&self, delay: Duration) -> String {
        format!(
            "{}replicate.webhooks.retry.{}s",
            self.prefix,
            delay.as_secs()
        )
    }

    /// The topic exchange result events are published to, routing key `user.<id>`.
    pub fn events_exchange(&self) -> String {
        format!("{}jobs.events", self.prefix)
    }

    /// Declares every queue and exchange, from any node of a cluster, any number of times.
    ///
    /// Every queue is a quorum queue asking for [`QUORUM_REPLICAS`] replicas (the broker
    /// gives as many as it has nodes), dead-lettering at least once so that a retry due
    /// while the work queue elects a new leader is not dropped. A queue an earlier version
    /// declared with other arguments is used as it is, with a warning: RabbitMQ cannot
    /// change a queue's arguments, and refusing to start would stop the pipeline.
    pub async fn declare(&self, connection: &Connection) -> lapin::Result<()> {
        let mut declarer = Declarer::open(connection).await?;
        let mut work_args = quorum();
        dead_letter_to(&mut work_args, &self.dead_letter_queue());
        work_args.insert(
            "x-delivery-limit".into(),
            AMQPValue::LongLongInt(DELIVERY_LIMIT),
        );
        declarer.queue(&self.webhooks_queue(), work_args).await?;
        declarer.queue(&self.dead_letter_queue(), quorum()).await?;
        for delay in RETRY_DELAYS {
            let mut args = quorum();
            args.insert(
                "x-message-ttl".into(),
                AMQPValue::LongLongInt(delay.as_millis() as i64),
            );
            dead_letter_to(&mut args, &self.webhooks_queue());
            declarer.queue(&self.retry_queue(*delay), args).await?;
        }
        declarer
            .channel
            .exchange_declare(
                self.events_exchange().into(),
                ExchangeKind::Topic,
                ExchangeDeclareOptions {
                    durable: true,
                    ..ExchangeDeclareOptions::default()
                },
                FieldTable::default(),
            )
            .await?;
        let _ = declarer.channel.close(200, "declared".into()).await;
        Ok(())
    }

    /// Deletes the classic delay queues of earlier versions once they are empty. A message
    /// still waiting in one goes back to the work queue when its delay expires (their
    /// dead-letter settings are unchanged), so one that is not empty yet is left for the
    /// next start; so is one whose node is down. Nothing here stops the service. Workers,
    /// who publish retries, call it once when they start.
    pub async fn retire_legacy_retry_queues(&self, connection: &Connection) {
        for delay in RETRY_DELAYS {
            let queue = self.legacy_retry_queue(*delay);
            let Ok(channel) = connection.create_channel().await else {
                return;
            };
            if channel
                .queue_declare(queue.as_str().into(), passive(), FieldTable::default())
                .await
                .is_err()
            {
                continue; // none (the usual case), or its node is down: nothing to do now
            }
            let options = QueueDeleteOptions {
                if_empty: true,
                ..QueueDeleteOptions::default()
            };
            match channel.queue_delete(queue.as_str().into(), options).await {
                Ok(_) => {
                    tracing::info!(%queue, "retired a classic delay queue of an earlier version");
                    let _ = channel.close(200, "retired".into()).await;
                }
                Err(err) => {
                    tracing::info!(%queue, error = %err, "a classic delay queue of an earlier version still holds messages; left for now");
                }
            }
        }
    }

    /// Deletes everything [`Topology::declare`] made (for isolated test runs).
    pub async fn delete(&self, channel: &Channel) -> lapin::Result<()> {
        let mut queues = vec![self.webhooks_queue(), self.dead_letter_queue()];
        queues.extend(RETRY_DELAYS.iter().map(|delay| self.retry_queue(*delay)));
        for queue in queues {
            channel
                .queue_delete(queue.into(), Default::default())
                .await?;
        }
        channel
            .exchange_delete(self.events_exchange().into(), Default::default())
            .await?;
        Ok(())
    }
}

/// How many replicas each quorum queue asks for: a majority survives one node lost.
pub const QUORUM_REPLICAS: i64 = 3;

/// Declares queues one by one on a channel, replacing the channel when the broker closed
/// it over a queue that exists with other arguments.
struct Declarer<'a> {
    connection: &'a Connection,
    channel: Channel,
}

impl<'a> Declarer<'a> {
    async fn open(connection: &'a Connection) -> lapin::Result<Self> {
        Ok(Self {
            connection,
            channel: connection.create_channel().await?,
        })
    }

    async fn queue(&mut self, name: &str, args: FieldTable) -> lapin::Result<()> {
        let durable = QueueDeclareOptions {
            durable: true,
            ..QueueDeclareOptions::default()
        };
        let err = match self.channel.queue_declare(name.into(), durable, args).await {
            Ok(_) => return Ok(()),
            Err(err) if is_precondition_failed(&err) => err,
            Err(err) => return Err(err),
        };
        // The broker closed the channel; the queue exists, with other arguments.
        self.channel = self.connection.create_channel().await?;
        self.channel
            .queue_declare(name.into(), passive(), FieldTable::default())
            .await?;
        tracing::warn!(queue = name, error = %err, "the queue exists with other arguments than this version declares; used as it is (delete it while empty to take the new ones)");
        Ok(())
    }
}

/// A declare that only checks the queue exists (the channel closes with 404 if not).
fn passive() -> QueueDeclareOptions {
    QueueDeclareOptions {
        passive: true,
        ..QueueDeclareOptions::default()
    }
}

fn is_precondition_failed(err: &lapin::Error) -> bool {
    matches!(
        err.kind(),
        lapin::ErrorKind::ProtocolError(amqp)
            if matches!(amqp.kind(), AMQPErrorKind::Soft(AMQPSoftError::PRECONDITIONFAILED))
    )
}

fn quorum() -> FieldTable {
    let mut args = FieldTable::default();
    args.insert("x-queue-type".into(), string("quorum"));
    args.insert(
        "x-quorum-initial-group-size".into(),
        AMQPValue::LongLongInt(QUORUM_REPLICAS),
    );
    args
}

/// Dead-letters to `queue` through the default exchange, at least once: the message
/// leaves this queue only once the target queue confirmed it (this needs `reject-publish`
/// as the overflow behaviour; no length limit is set, so it never applies).
fn dead_letter_to(args: &mut FieldTable, queue: &str) {
    args.insert("x-dead-letter-exchange".into(), string(""));
    args.insert("x-dead-letter-routing-key".into(), string(queue));
    args.insert("x-dead-letter-strategy".into(), string("at-least-once"));
    args.insert("x-overflow".into(), string("reject-publish"));
}

fn string(value: &str) -> AMQPValue {
    AMQPValue::LongString(LongString::from(value))
}

/// Builds an AMQP header table from string pairs.
pub fn string_headers<'a>(pairs: impl IntoIterator<Item = (&'a str, &'a str)>) -> FieldTable {
    let mut table = FieldTable::default();
    for (key, value) in pairs {
        table.insert(ShortString::from(key), string(value));
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

/// Something built on top of a connection (channels, consumers) that can tell whether it
/// still works. When it stops working the connection is rebuilt.
pub trait Link: Send + Sync + 'static {
    fn is_healthy(&self) -> bool;
}

impl Link for Channel {
    fn is_healthy(&self) -> bool {
        self.status().connected()
    }
}

const MIN_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(5);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
const HEALTH_POLL: Duration = Duration::from_millis(200);

struct Live<T> {
    connection: Arc<Connection>,
    link: Arc<T>,
}

impl<T: Link> Live<T> {
    fn is_healthy(&self) -> bool {
        self.connection.status().connected() && self.link.is_healthy()
    }
}

type Slot<T> = Option<Arc<Live<T>>>;

/// A RabbitMQ connection kept alive in the background: connects (retrying with exponential
/// backoff from 100 ms to 5 s), runs `setup` to build the service's [`Link`], and starts
/// over whenever the connection or the link breaks. Until then [`Reconnecting::current`]
/// returns `None`, so callers fail fast instead of hanging.
pub struct Reconnecting<T> {
    current: watch::Receiver<Slot<T>>,
    stop: watch::Sender<bool>,
    supervisor: std::sync::Mutex<Option<JoinHandle<()>>>,
}

impl<T: Link> Reconnecting<T> {
    /// Starts connecting in the background; returns at once, even if the broker is down.
    pub fn spawn<F, Fut>(config: &AmqpConfig, connection_name: &str, setup: F) -> Self
    where
        F: Fn(Arc<Connection>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = lapin::Result<T>> + Send + 'static,
    {
        let (slot_tx, current) = watch::channel(None);
        let (stop, stop_rx) = watch::channel(false);
        let nodes = config
            .url
            .nodes()
            .iter()
            .map(|node| Node {
                url: node.as_str().to_owned(),
                shown: node.to_string(),
            })
            .collect();
        let supervisor = tokio::spawn(supervise(
            nodes,
            connection_name_of_this_process(connection_name),
            setup,
            slot_tx,
            stop_rx,
        ));
        Self {
            current,
            stop,
            supervisor: std::sync::Mutex::new(Some(supervisor)),
        }
    }

    /// The working link, or `None` while the broker is unreachable.
    pub fn current(&self) -> Option<Arc<T>> {
        let live = self.current.borrow().clone()?;
        live.is_healthy().then(|| live.link.clone())
    }

    pub fn is_connected(&self) -> bool {
        self.current().is_some()
    }

    /// Waits up to `timeout` for a working link.
    pub async fn wait_connected(&self, timeout: Duration) -> Option<Arc<T>> {
        let mut current = self.current.clone();
        let wait = async {
            loop {
                if let Some(link) = self.current() {
                    return link;
                }
                if current.changed().await.is_err() {
                    std::future::pending::<()>().await;
                }
            }
        };
        tokio::time::timeout(timeout, wait).await.ok()
    }

    /// Stops reconnecting and closes the connection cleanly.
    pub async fn close(&self) {
        let _ = self.stop.send(true);
        let supervisor = self.supervisor.lock().expect("not poisoned").take();
        if let Some(supervisor) = supervisor {
            let _ = supervisor.await;
        }
    }
}

impl<T> Drop for Reconnecting<T> {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
    }
}

/// One broker node: its URL, and the same with the password hidden.
struct Node {
    url: String,
    shown: String,
}

/// One connection for a command-line tool: to the first node of `nodes` that answers (a
/// service keeps a [`Reconnecting`] link instead). The last node's error when none does.
pub async fn connect_once(nodes: &AmqpNodes, service: &str) -> lapin::Result<Connection> {
    let name = connection_name_of_this_process(service);
    let mut last_error = None;
    for node in nodes.nodes() {
        let properties = ConnectionProperties::default().with_connection_name(name.clone().into());
        match Connection::connect(node.as_str(), properties).await {
            Ok(connection) => return Ok(connection),
            Err(err) => {
                tracing::warn!(broker = %node, error = %err, "cannot connect to RabbitMQ; trying the next node");
                last_error = Some(err);
            }
        }
    }
    Err(last_error.expect("AMQP_URL names at least one node"))
}

/// The name the broker shows for a connection (`connection_name` in `rabbitmqctl
/// list_connections client_properties`): the service, this host (the pod's name under Kubernetes) and the
/// process id, so that an operator can tell which replica sits on which node.
pub fn connection_name_of_this_process(service: &str) -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
    format!("{service} {} pid {}", host.trim(), std::process::id())
}

/// Connects to the nodes in turn: after a failure or a lost connection, the next one is
/// tried at once; only when a whole round failed does it wait (backoff).
async fn supervise<T, F, Fut>(
    nodes: Vec<Node>,
    connection_name: String,
    setup: F,
    slot: watch::Sender<Slot<T>>,
    mut stop: watch::Receiver<bool>,
) where
    T: Link,
    F: Fn(Arc<Connection>) -> Fut,
    Fut: Future<Output = lapin::Result<T>>,
{
    let mut backoff = MIN_BACKOFF;
    let mut failures: u32 = 0;
    let mut index = 0;
    // Since when the service has had no broker (none before the first connection).
    let mut lost_at: Option<Instant> = None;
    loop {
        let node = &nodes[index % nodes.len()];
        let attempt = async {
            let properties = ConnectionProperties::default()
                .with_connection_name(connection_name.clone().into());
            let connection = Arc::new(Connection::connect(&node.url, properties).await?);
            let link = Arc::new(setup(connection.clone()).await?);
            Ok::<_, lapin::Error>(Live { connection, link })
        };
        let outcome = tokio::select! {
            _ = stop.changed() => return,
            outcome = tokio::time::timeout(CONNECT_TIMEOUT, attempt) => outcome,
        };
        match outcome {
            Ok(Ok(live)) => {
                match lost_at.take() {
                    Some(lost) => {
                        metrics::histogram!("amqp_failover_seconds")
                            .record(lost.elapsed().as_secs_f64());
                        tracing::info!(broker = %node.shown, connection = %connection_name, failover_ms = lost.elapsed().as_millis() as u64, "connected to RabbitMQ again")
                    }
                    None => {
                        tracing::info!(broker = %node.shown, connection = %connection_name, "connected to RabbitMQ")
                    }
                }
                let live = Arc::new(live);
                slot.send_replace(Some(live.clone()));
                backoff = MIN_BACKOFF;
                failures = 0;
                let stopped = wait_until_broken(&live, &mut stop).await;
                slot.send_replace(None);
                if stopped {
                    let _ = live.connection.close(200, "shutting down".into()).await;
                    return;
                }
                lost_at = Some(Instant::now());
                // A channel closed while the connection stays up: after a nack (see
                // `publish_confirmed`) or a channel error the broker raised.
                let lost = if live.connection.status().connected() {
                    "channel"
                } else {
                    "connection"
                };
                metrics::counter!("amqp_links_lost_total", "lost" => lost).increment(1);
                tracing::warn!(broker = %node.shown, connection = %connection_name, lost, "lost the RabbitMQ link, reconnecting");
                let _ = live.connection.close(200, "reconnecting".into()).await;
                // The next node first: the one just lost may be the one that is down.
                index += 1;
                continue;
            }
            Ok(Err(err)) => {
                failures += 1;
                tracing::warn!(broker = %node.shown, connection = %connection_name, failures, error = %err, "cannot connect to RabbitMQ");
            }
            Err(_) => {
                failures += 1;
                tracing::warn!(broker = %node.shown, connection = %connection_name, failures, "connecting to RabbitMQ timed out");
            }
        }
        index += 1;
        if index % nodes.len() != 0 {
            continue; // the rest of the round first
        }
        tokio::select! {
            _ = stop.changed() => return,
            _ = tokio::time::sleep(backoff) => {}
        }
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

/// Returns `true` when asked to stop, `false` when the connection or link broke.
async fn wait_until_broken<T: Link>(live: &Live<T>, stop: &mut watch::Receiver<bool>) -> bool {
    let mut poll = tokio::time::interval(HEALTH_POLL);
    loop {
        tokio::select! {
            _ = stop.changed() => return true,
            _ = poll.tick() => {
                if !live.is_healthy() {
                    return false;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn contract_names_without_prefix() {
        let topology = Topology::new("");
        assert_eq!(topology.webhooks_queue(), "replicate.webhooks");
        assert_eq!(topology.dead_letter_queue(), "replicate.webhooks.dead");
        assert_eq!(topology.events_exchange(), "jobs.events");
        assert_eq!(
            topology.retry_queue(Duration::from_secs(5)),
            "replicate.webhooks.delay.5s"
        );
        assert_eq!(
            Topology::new("t1.").webhooks_queue(),
            "t1.replicate.webhooks"
        );
    }
}
