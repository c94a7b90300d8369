//! Confirmed publishing of verified webhooks to the `replicate.webhooks` queue.
//!
//! Every request publishes on the shared [`DirectPublisher`] and waits for its own confirm,
//! so many confirms are in flight at once (pipelined): no request waits for another's
//! confirm. The publish is written from the request's own thread, and the requests of one
//! moment share a socket write (see `shared::amqp::direct_publish` for why not lapin's
//! channel here).
//!
//! When the connection fails under a request (the broker nacked a publish while a quorum
//! queue elected a new leader, and the connection is dropped to shed RabbitMQ 3.10's
//! stuck-nack state; the node went away), the webhook is published once more as soon as
//! the link is rebuilt — on the next node of a cluster if this one is gone — and only if
//! that fails too does Replicate get a 503. A webhook published twice is harmless:
//! workers apply each one idempotently.

use std::sync::Arc;
use std::time::{Duration, Instant};

use lapin::Channel;
use shared::amqp::{
    DirectPublisher, Reconnecting, confirmed_channel, direct_publisher, publish_confirmed,
    webhook_message,
};
use shared::config::AmqpConfig;

pub use shared::amqp::{PublishError, Webhook};
/// How long a webhook whose channel failed waits for the link to be rebuilt before it is
/// refused (a failover to another node took 30–420 ms in `deploy/cluster`).
pub const REPUBLISH_WAIT: Duration = Duration::from_secs(1);

pub struct Publisher {
    link: Link,
    /// `replicate.webhooks` under the deployment's prefix.
    queue: String,
    confirm_timeout: Duration,
}

/// How webhooks reach the broker: the direct connection, or lapin's channel when the broker
/// speaks only TLS (`amqps://`), which the direct connection does not.
enum Link {
    Direct(Reconnecting<DirectPublisher>),
    Tls(Reconnecting<Channel>),
}

/// The working connection of a [`Link`] at one moment.
#[derive(Clone)]
enum Current {
    Direct(Arc<DirectPublisher>),
    Tls(Arc<Channel>),
}

impl Current {
    fn same_as(&self, other: &Current) -> bool {
        match (self, other) {
            (Current::Direct(a), Current::Direct(b)) => Arc::ptr_eq(a, b),
            (Current::Tls(a), Current::Tls(b)) => Arc::ptr_eq(a, b),
            _ => false,
        }
    }

    fn is_healthy(&self) -> bool {
        match self {
            Current::Direct(publisher) => publisher.is_healthy(),
            Current::Tls(channel) => channel.status().connected(),
        }
    }
}

impl Link {
    fn current(&self) -> Option<Current> {
        match self {
            Link::Direct(link) => link.current().map(Current::Direct),
            Link::Tls(link) => link.current().map(Current::Tls),
        }
    }
}

impl Publisher {
    /// Starts connecting in the background; publishing fails fast until connected.
    pub fn start(config: &AmqpConfig, confirm_timeout: Duration) -> Self {
        let tls = config
            .url
            .nodes()
            .iter()
            .any(|node| node.as_str().starts_with("amqps:"));
        let link = if tls {
            tracing::info!(
                "the broker is reached over TLS: webhooks are published through lapin's channel"
            );
            Link::Tls(confirmed_channel(config, "ingest"))
        } else {
            Link::Direct(direct_publisher(config, "ingest"))
        };
        Self {
            link,
            queue: config.topology().webhooks_queue(),
            confirm_timeout,
        }
    }

    pub fn is_connected(&self) -> bool {
        self.link.current().is_some()
    }

    /// Waits until the broker connection is up (start-up, tests).
    pub async fn wait_connected(&self, timeout: Duration) -> bool {
        match &self.link {
            Link::Direct(link) => link.wait_connected(timeout).await.is_some(),
            Link::Tls(link) => link.wait_connected(timeout).await.is_some(),
        }
    }

    /// Publishes persistently and mandatorily and returns once the broker confirmed it;
    /// when the channel failed, publishes again on each rebuilt link for up to
    /// [`REPUBLISH_WAIT`] (a survivor may nack until the new leader is known).
    pub async fn publish(&self, webhook: Webhook<'_>) -> Result<(), PublishError> {
        let mut channel = self.link.current();
        let mut outcome = match &channel {
            Some(channel) => self.publish_on(channel, webhook).await,
            None => Err(PublishError::BrokerUnavailable),
        };
        let deadline = Instant::now() + REPUBLISH_WAIT;
        while let Err(error) = &outcome
            && error.may_succeed_on_another_channel()
        {
            let Some(rebuilt) = self.rebuilt_channel(channel.as_ref(), deadline).await else {
                break;
            };
            let again = self.publish_on(&rebuilt, webhook).await;
            let ok = if again.is_ok() { "true" } else { "false" };
            metrics::counter!("ingest_publish_repeats_total", "ok" => ok).increment(1);
            tracing::info!(webhook_id = webhook.id, previous_error = %error, ok = again.is_ok(), "published again on a rebuilt broker link");
            channel = Some(rebuilt);
            outcome = again;
        }
        outcome
    }

    async fn publish_on(
        &self,
        current: &Current,
        webhook: Webhook<'_>,
    ) -> Result<(), PublishError> {
        let message = webhook_message(&self.queue, webhook);
        match current {
            Current::Direct(publisher) => publisher.publish(message, self.confirm_timeout).await,
            Current::Tls(channel) => {
                publish_confirmed(channel, message, self.confirm_timeout).await
            }
        }
    }

    /// A working connection other than `failed`, once the link has been rebuilt; `None`
    /// when that is not so by `deadline`.
    async fn rebuilt_channel(
        &self,
        failed: Option<&Current>,
        deadline: Instant,
    ) -> Option<Current> {
        loop {
            if let Some(current) = self.link.current()
                && failed.is_none_or(|failed| !failed.same_as(&current))
                && current.is_healthy()
            {
                return Some(current);
            }
            if Instant::now() >= deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Closes the broker connections once in-flight publishes have finished.
    pub async fn close(&self) {
        // Stop reconnecting first, so that closing the publisher is not taken for a lost link.
        let current = self.link.current();
        match &self.link {
            Link::Direct(link) => link.close().await,
            Link::Tls(link) => link.close().await,
        }
        if let Some(Current::Direct(publisher)) = current {
            publisher.close(self.confirm_timeout).await;
        }
    }
}
