//! Marks of published events in the log, written in batches by a task of their own: one
//! statement (and one commit) for many events instead of one each, at most one every
//! [`MARK_PACE`], off the path of the webhook or the creation that published them. The
//! worker and the notifier's jobs API each run one. A mark lost in a crash only makes the
//! worker's outbox sweep publish that event again, which browsers and consumers ignore by
//! `seq`.

use crate::db::{self, Pool};
use crate::jobs::event_log;
use tokio::sync::{mpsc, oneshot};

/// Most marks written by one statement.
const MARK_BATCH: usize = 512;
/// Shortest time between two writes. After a quiet spell the first mark is written at
/// once; under load the marks of each moment share one statement and one commit. Far
/// below the worker's sweep grace (5 s), so no event is published twice for it.
const MARK_PACE: std::time::Duration = std::time::Duration::from_millis(50);

enum Mark {
    Published(String, i64),
    Flush(oneshot::Sender<()>),
}

/// Hands marks to the writing task.
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
        tokio::time::sleep(MARK_PACE).await;
    }
}
