//! Confirmed publishing of verified webhooks to the `replicate.webhooks` queue.
//!
//! Every request publishes on the shared channel and waits for its own confirm, so many
//! confirms are in flight at once (pipelined): there is no lock around publishing and no
//! request waits for another's confirm.

use std::sync::Arc;
use std::time::Duration;

use lapin::options::ConfirmSelectOptions;
use lapin::{Channel, Connection};
use shared::amqp::{Outgoing, Reconnecting, publish_confirmed, webhook_properties};
use shared::config::AmqpConfig;

pub use shared::amqp::PublishError;
/// One verified webhook, exactly as received.
#[derive(Debug, Clone, Copy)]
pub struct VerifiedWebhook<'a> {
    pub id: &'a str,
    pub timestamp: &'a str,
    pub body: &'a [u8],
}

pub struct Publisher {
    link: Reconnecting<Channel>,
    queue: String,
    confirm_timeout: Duration,
}

impl Publisher {
    /// Starts connecting in the background; publishing fails fast until connected.
    pub fn start(config: &AmqpConfig, confirm_timeout: Duration) -> Self {
        let topology = config.topology();
        let queue = topology.webhooks_queue();
        let link = Reconnecting::spawn(config, "ingest", move |connection: Arc<Connection>| {
            let topology = topology.clone();
            async move {
                let channel = connection.create_channel().await?;
                topology.declare(&connection).await?;
                channel
                    .confirm_select(ConfirmSelectOptions::default())
                    .await?;
                Ok(channel)
            }
        });
        Self {
            link,
            queue,
            confirm_timeout,
        }
    }

    pub fn is_connected(&self) -> bool {
        self.link.is_connected()
    }

    /// Waits until the broker connection is up (start-up, tests).
    pub async fn wait_connected(&self, timeout: Duration) -> bool {
        self.link.wait_connected(timeout).await.is_some()
    }

    /// Publishes persistently and mandatorily and returns once the broker confirmed it.
    pub async fn publish(&self, webhook: VerifiedWebhook<'_>) -> Result<(), PublishError> {
        let channel = self.link.current().ok_or(PublishError::BrokerUnavailable)?;
        let properties = webhook_properties(webhook.id, webhook.timestamp);
        publish_confirmed(
            &channel,
            Outgoing {
                exchange: "",
                routing_key: &self.queue,
                body: webhook.body,
                properties,
                mandatory: true,
            },
            self.confirm_timeout,
        )
        .await
    }

    /// Closes the broker connection once in-flight publishes have finished.
    pub async fn close(&self) {
        self.link.close().await;
    }
}
