//! The jobs API's own link to the broker: it publishes the first event of each job it
//! creates (or fails) to `jobs.events`, as the worker does for the rest, and marks it
//! published in the log in batches, off the creation's path.

use std::time::Duration;

use lapin::Channel;
use shared::amqp::{PublishError, Reconnecting, Topology, confirmed_channel, publish_event};
use shared::config::AmqpConfig;
use shared::db::Pool;
use shared::jobs::event_log::StoredEvent;
use shared::jobs::published_marks::PublishedMarks;

/// Longest wait for the broker to confirm an event.
const CONFIRM_TIMEOUT: Duration = Duration::from_secs(5);

pub struct EventPublisher {
    link: Reconnecting<Channel>,
    topology: Topology,
    marks: PublishedMarks,
}

impl EventPublisher {
    /// Connects in the background; until connected, events are left to the worker's sweep.
    pub fn start(amqp: &AmqpConfig, pool: Pool) -> Self {
        Self {
            link: confirmed_channel(amqp, "notifier-jobs-api"),
            topology: amqp.topology(),
            marks: PublishedMarks::start(pool),
        }
    }

    /// Publishes a stored event to every notifier and hands it to be marked published; when
    /// the broker cannot take it now, the worker's outbox sweep publishes it shortly.
    pub async fn publish(&self, stored: &StoredEvent) {
        let published = match self.link.current() {
            Some(channel) => {
                publish_event(&channel, &self.topology, &stored.event, CONFIRM_TIMEOUT).await
            }
            None => Err(PublishError::BrokerUnavailable),
        };
        match published {
            Ok(()) => self.marks.mark(stored.user_id.clone(), stored.seq),
            Err(err) => {
                tracing::warn!(user_id = %stored.user_id, seq = stored.seq, error = %err, "event not published yet; the worker's outbox sweep will");
            }
        }
    }

    /// Writes the marks handed over so far, then closes the broker link.
    pub async fn close(&self) {
        self.marks.flush().await;
        self.link.close().await;
    }
}
