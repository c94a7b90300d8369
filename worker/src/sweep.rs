//! The outbox sweep: publishes events committed to the log (`shared::jobs::event_log`, the
//! outbox) but never marked published — the worker died between commit and publish, or
//! the broker was away — so every event goes out.

use std::sync::Arc;
use std::time::Duration;

use shared::db::{self, DbError};

use crate::process::Processor;
use shared::jobs::event_log;

/// Events younger than this are left to the worker that stored them.
pub const GRACE: Duration = Duration::from_secs(5);
const BATCH: i64 = 500;

/// Publishes unpublished events older than `min_age`; returns how many went out.
pub async fn sweep_once(processor: &Processor, min_age: Duration) -> Result<usize, DbError> {
    let mut conn = db::connection(&processor.pool).await?;
    let pending = event_log::unpublished(&mut conn, min_age, BATCH).await?;
    let mut marks = Vec::new();
    for stored in &pending {
        if processor.broker.publish_event(&stored.event).await.is_err() {
            break; // the broker is away: next sweep
        }
        metrics::counter!("worker_events_published_total", "path" => "sweep").increment(1);
        marks.push((stored.user_id.clone(), stored.seq));
    }
    event_log::mark_many_published(&mut conn, &marks).await?;
    let published = marks.len();
    if published > 0 {
        tracing::info!(published, "outbox sweep published events left behind");
    }
    Ok(published)
}

/// Sweeps every `interval` until `stop` fires.
pub async fn run(
    processor: Arc<Processor>,
    interval: Duration,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let mut ticks = tokio::time::interval(interval);
    loop {
        tokio::select! {
            _ = stop.changed() => return,
            _ = ticks.tick() => {
                if let Err(err) = sweep_once(&processor, GRACE).await {
                    tracing::warn!(error = %err, "outbox sweep failed; retrying at the next tick");
                }
            }
        }
    }
}
