//! The jobs API's own link to the broker: it publishes the first event of each job it
//! creates (or fails) to `jobs.events`, as the worker does for the rest.

use std::time::Duration;

use lapin::Channel;
use shared::amqp::{PublishError, Reconnecting, Topology, confirmed_channel, publish_event};
use shared::config::AmqpConfig;
use shared::db::Connection;
use shared::jobs::event_log::{self, StoredEvent};

/// Longest wait for the broker to confirm an event.
const CONFIRM_TIMEOUT: Duration = Duration::from_secs(5);

pub struct EventPublisher {
    link: Reconnecting<Channel>,
    topology: Topology,
}

impl EventPublisher {
    /// Connects in the background; until connected, events are left to the worker's sweep.
    pub fn start(amqp: &AmqpConfig) -> Self {
        Self {
            link: confirmed_channel(amqp, "notifier-jobs-api"),
            topology: amqp.topology(),
        }
    }

    /// Publishes a stored event to every notifier and marks it published; when the broker
    /// cannot take it now, the worker's outbox sweep publishes it shortly.
    pub async fn publish(&self, conn: &mut Connection, stored: &StoredEvent) {
        let published = match self.link.current() {
            Some(channel) => {
                publish_event(&channel, &self.topology, &stored.event, CONFIRM_TIMEOUT).await
            }
            None => Err(PublishError::BrokerUnavailable),
        };
        match published {
            Ok(()) => {
                if let Err(err) = event_log::mark_published(conn, &stored.user_id, stored.seq).await
                {
                    tracing::warn!(user_id = %stored.user_id, seq = stored.seq, error = %err, "event published but not marked; the sweep publishes it again");
                }
            }
            Err(err) => {
                tracing::warn!(user_id = %stored.user_id, seq = stored.seq, error = %err, "event not published yet; the worker's outbox sweep will");
            }
        }
    }

    pub async fn close(&self) {
        self.link.close().await;
    }
}
