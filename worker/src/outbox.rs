//! The outbox's two chores: marking published events, in batches, and the sweep that
//! publishes events committed but not published (the worker died between commit and
//! publish, or the broker was away), so every event goes out.

use std::sync::Arc;
use std::time::Duration;

use shared::db::{self, DbError, Pool};
use tokio::sync::{mpsc, oneshot};

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

/// Most marks written by one statement.
const MARK_BATCH: usize = 512;

enum Mark {
    Published(String, i64),
    Flush(oneshot::Sender<()>),
}

/// Marks of published events, written in batches by a task of their own: one statement
/// (and one commit) for many webhooks instead of one each, off the webhook's path. A mark
/// lost in a crash only makes the sweep publish that event again, which browsers and
/// consumers ignore by `seq`.
#[derive(Clone)]
pub struct PublishedMarks {
    tx: mpsc::UnboundedSender<Mark>,
}

impl PublishedMarks {
    pub fn start(pool: Pool) -> Self {
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(write_marks(pool, rx));
        Self { tx }
    }

    pub fn mark(&self, user_id: String, seq: i64) {
        let _ = self.tx.send(Mark::Published(user_id, seq));
    }

    /// Waits until every mark handed over so far is written (or failed and logged).
    pub async fn flush(&self) {
        let (done, written) = oneshot::channel();
        if self.tx.send(Mark::Flush(done)).is_ok() {
            let _ = written.await;
        }
    }
}

async fn write_marks(pool: Pool, mut rx: mpsc::UnboundedReceiver<Mark>) {
    let mut received = Vec::with_capacity(MARK_BATCH);
    let mut batch = Vec::with_capacity(MARK_BATCH);
    let mut flushed = Vec::new();
    while rx.recv_many(&mut received, MARK_BATCH).await > 0 {
        for mark in received.drain(..) {
            match mark {
                Mark::Published(user_id, seq) => batch.push((user_id, seq)),
                Mark::Flush(done) => flushed.push(done),
            }
        }
        let written = match db::connection(&pool).await {
            Ok(mut conn) => event_log::mark_many_published(&mut conn, &batch).await,
            Err(err) => Err(err),
        };
        if let Err(err) = written {
            tracing::warn!(events = batch.len(), error = %err, "published events not marked; the sweep will publish them again");
        }
        batch.clear();
        for done in flushed.drain(..) {
            let _ = done.send(());
        }
    }
}
