//! The queues and the exchange every service agrees on, with the contract's names, declared
//! in one place (quorum queues, delay queues for retries, the dead-letter queue).

use std::time::Duration;

use lapin::options::{ExchangeDeclareOptions, QueueDeclareOptions, QueueDeleteOptions};
use lapin::protocol::{AMQPErrorKind, AMQPSoftError};
use lapin::types::{AMQPValue, FieldTable, LongString};
use lapin::{Channel, Connection, ExchangeKind};

use crate::config::AmqpConfig;

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
    ///
    /// RabbitMQ deletes a queue that is not there as a success, so no probe comes first:
    /// a passive declare of a missing queue closes its channel, which the client logs as an
    /// error at every start.
    pub async fn retire_legacy_retry_queues(&self, connection: &Connection) {
        for delay in RETRY_DELAYS {
            let queue = self.legacy_retry_queue(*delay);
            let Ok(channel) = connection.create_channel().await else {
                return;
            };
            let options = QueueDeleteOptions {
                if_empty: true,
                ..QueueDeleteOptions::default()
            };
            match channel.queue_delete(queue.as_str().into(), options).await {
                Ok(_) => {
                    tracing::debug!(%queue, "no classic delay queue of an earlier version left");
                    let _ = channel.close(200, "retired".into()).await;
                }
                Err(err) => {
                    tracing::info!(%queue, error = %err, "a classic delay queue of an earlier version still holds messages (or its node is down); left for now");
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

impl AmqpConfig {
    /// The queue and exchange names under this configuration's prefix.
    pub fn topology(&self) -> Topology {
        Topology::new(&self.name_prefix)
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
