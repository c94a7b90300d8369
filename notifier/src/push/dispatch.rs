//! This instance's queue, read: each event goes to its user's connections here (and a
//! resync to all of them after the broker link comes back).

use std::sync::{Arc, Weak};
use std::time::Duration;

use futures_util::StreamExt;
use shared::events::Event;
use tokio_tungstenite::tungstenite::Utf8Bytes;

use crate::push::frame::{Frame, Push};
use crate::push::sessions::Sessions;

/// Reads this instance's queue and hands each event to its user's connections, across
/// reconnects; after each (re)connect every connection checks the log for what it missed.
pub async fn dispatch(sessions: Weak<Sessions>) {
    let mut connected_before = false;
    loop {
        let Some(strong) = sessions.upgrade() else {
            return;
        };
        let link = strong.link().wait_connected(Duration::from_secs(5)).await;
        let Some(link) = link else {
            continue;
        };
        // Bind first, then have every connection check the log: whatever was published
        // while this instance had no queue is read from there, the rest arrives live.
        strong.rebind_all(&link).await;
        if connected_before || strong.connection_count() > 0 {
            strong.resync_all();
        }
        connected_before = true;
        drop(strong);
        let mut deliveries = link.consumer.clone();
        while let Some(Ok(delivery)) = deliveries.next().await {
            let Some(sessions) = sessions.upgrade() else {
                return;
            };
            let event: Event = match serde_json::from_slice(&delivery.data) {
                Ok(event) => event,
                Err(err) => {
                    tracing::warn!(routing_key = %delivery.routing_key, error = %err, "ignoring a message that is not an event");
                    continue;
                }
            };
            // The event names its user; the routing key may be a digest of the id.
            let user_id = event.user_id().to_owned();
            let user_id = user_id.as_str();
            let Ok(json) = String::from_utf8(delivery.data) else {
                continue;
            };
            let seq = event.seq();
            let sockets = sessions.deliver(
                user_id,
                Push::Event(Arc::new(Frame {
                    seq,
                    json: Utf8Bytes::from(json),
                })),
            );
            match &event {
                Event::GenerationStatusChanged { job, .. } => {
                    tracing::info!(%user_id, id = %job.id, job_id = job.job_id.as_deref().unwrap_or("-"), kind = %job.kind, status = %job.status, seq, sockets, "event dispatched");
                }
                Event::ModelStatusChanged { job, .. } => {
                    tracing::info!(%user_id, id = %job.id, job_id = job.job_id.as_deref().unwrap_or("-"), kind = %job.kind, status = %job.status, seq, sockets, "event dispatched");
                }
                Event::JobProgress { job, .. } => {
                    tracing::debug!(%user_id, job_id = %job.job_id, progress = job.progress, sockets, "progress dispatched");
                }
                Event::Hello { .. } => {}
            }
        }
        // The stream ended: the connection is gone; wait for the next one.
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
