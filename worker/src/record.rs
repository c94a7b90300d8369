//! The webhook record the operator console reads (`webhook_attempts`): one row each time a
//! worker handled a webhook — applied, duplicate, stale, retried or dead-lettered — with the
//! job it found, the status it carried and how long it took.
//!
//! Written like the published marks: handed to a task of its own and inserted in batches
//! (one statement for up to [`RECORD_BATCH`] rows, at most one every [`RECORD_PACE`]),
//! never inside the transaction that applies the webhook, so a webhook pays one channel
//! send for it. The record is for people:
//! rows still in the channel when a worker is killed are lost (the webhook itself is not:
//! the queue holds it until its effects are committed). The same task prunes rows older
//! than the retention.

use std::time::{Duration, Instant};

use diesel::prelude::*;
use diesel_async::RunQueryDsl;
use shared::db::schema::webhook_attempts;
use shared::db::{self, DbError, Pool};
use shared::jobs::transition::{Ignored, target_of};
use tokio::sync::{mpsc, oneshot};

use crate::process::{Effect, Processed};

/// Most rows written by one statement.
const RECORD_BATCH: usize = 500;
/// Rows waiting to be written, at most; past it a row is dropped and counted (the webhook
/// path never waits for the record).
const RECORD_BACKLOG: usize = 50_000;
/// How long a batch of rows waits for the database to come back before it is dropped.
const RECORD_OUTAGE: Duration = Duration::from_secs(60);
/// Between two tries of a batch while the database is away.
const RECORD_RETRY_PAUSE: Duration = Duration::from_millis(250);
/// Shortest time between two writes. After a quiet spell the first row is written at once;
/// under load the rows of each moment share one statement and one commit (one row per
/// insert was about 320 commits/s at 500 webhooks/s, each waiting for its WAL flush).
const RECORD_PACE: Duration = Duration::from_millis(50);
/// How often old rows are pruned.
const PRUNE_EVERY: Duration = Duration::from_secs(600);
/// Rows deleted by one pruning statement (short transactions, whatever the backlog).
const PRUNE_CHUNK: i64 = 10_000;

/// One handling of one webhook, as the console shows it.
#[derive(Debug, Clone, PartialEq, Insertable)]
#[diesel(table_name = webhook_attempts)]
pub struct Attempt {
    /// When a worker started handling it (rows are written a little later), so that a job's
    /// timeline shows the webhook before the event and the refund it committed.
    pub at: chrono::DateTime<chrono::Utc>,
    pub webhook_id: String,
    pub replicate_id: Option<String>,
    pub job_row_id: Option<String>,
    pub kind: Option<String>,
    pub status: Option<String>,
    pub outcome: String,
    pub detail: String,
    pub attempt: i32,
    pub replays: i32,
    pub duration_ms: f32,
    pub waited_ms: Option<f32>,
}

/// The two fields of a webhook's body the record shows when it could not be processed.
#[derive(Default, serde::Deserialize)]
struct Named {
    id: Option<String>,
    status: Option<String>,
}

/// What became of a delivery, as the delivery loop settled it.
pub enum Settled<'a> {
    Processed(&'a Processed),
    /// Sent to a delay queue, with the error.
    Retried(&'a str),
    /// Parked in the dead letters, with the reason.
    DeadLettered(&'a str),
}

/// What a delivery carried besides its body.
pub struct Delivered<'a> {
    pub webhook_id: &'a str,
    pub body: &'a [u8],
    /// 0 for the first delivery.
    pub attempt: u32,
    pub replays: u32,
    /// The `webhook-timestamp` header: when the webhook was sent (unix seconds).
    pub sent_at: Option<i64>,
}

impl Attempt {
    /// The row for a handled delivery: its result and what was decided about it.
    pub fn of(delivered: &Delivered<'_>, settled: &Settled<'_>, elapsed: Duration) -> Self {
        let (outcome, detail, processed) = match settled {
            Settled::Processed(processed) => {
                let (outcome, detail) = outcome_of(processed);
                (outcome, detail, Some(*processed))
            }
            Settled::Retried(error) => ("retried", error.to_string(), None),
            Settled::DeadLettered(reason) => ("dead_lettered", reason.to_string(), None),
        };
        let (replicate_id, status) = match processed {
            Some(p) => (Some(p.job_id.clone()), Some(p.status.as_str().to_owned())),
            // Not processed: its id and status as far as the body has them (only then is
            // the body read again, and only for these two fields).
            None => {
                let named: Named = serde_json::from_slice(delivered.body).unwrap_or_default();
                (named.id, named.status)
            }
        };
        Self {
            at: chrono::Utc::now()
                - chrono::Duration::from_std(elapsed).unwrap_or_else(|_| chrono::Duration::zero()),
            webhook_id: delivered.webhook_id.to_owned(),
            replicate_id,
            job_row_id: processed.map(|p| p.row_id.clone()),
            kind: processed.map(|p| p.kind.as_str().to_owned()),
            status,
            outcome: outcome.to_owned(),
            detail,
            attempt: i32::try_from(delivered.attempt + 1).unwrap_or(i32::MAX),
            replays: i32::try_from(delivered.replays).unwrap_or(i32::MAX),
            duration_ms: elapsed.as_secs_f32() * 1000.0,
            waited_ms: waited(delivered, elapsed),
        }
    }
}

/// How long a first delivery waited before a worker took it: from its send time to the
/// start of its handling. A retry or a replay waited on purpose, so it has none.
fn waited(delivered: &Delivered<'_>, elapsed: Duration) -> Option<f32> {
    if delivered.attempt > 0 || delivered.replays > 0 {
        return None;
    }
    let sent_ms = delivered.sent_at?.checked_mul(1000)?;
    let now_ms = chrono::Utc::now().timestamp_millis();
    let started_ms = now_ms - i64::try_from(elapsed.as_millis()).unwrap_or(0);
    // Timestamps are whole seconds, and clocks differ a little: never below zero.
    Some((started_ms - sent_ms).max(0) as f32)
}

/// `applied`; `progress` (the running status again: Replicate sends one for each log line or
/// output, carrying progress only); `duplicate` (the final status again); `stale` (older
/// than, or after, the job's end) or `ignored` (a status this version does not know), with
/// the move in words.
fn outcome_of(processed: &Processed) -> (&'static str, String) {
    match &processed.effect {
        Effect::Moved {
            from,
            to,
            refunded,
            seq,
        } => {
            let refund = if *refunded > 0 {
                format!(", {refunded} credits refunded")
            } else {
                String::new()
            };
            (
                "applied",
                format!("{} → {} (event {seq}{refund})", from.as_str(), to.as_str()),
            )
        }
        Effect::Ignored(Ignored::UnknownStatus) => (
            "ignored",
            format!(
                "status {:?} is not one this version knows",
                processed.status.as_str()
            ),
        ),
        Effect::Ignored(_) => {
            let found = processed.found.as_str();
            if target_of(&processed.status) != Some(processed.found) {
                ("stale", format!("the job was already {found}"))
            } else if processed.found.is_terminal() {
                ("duplicate", format!("the job was already {found}"))
            } else {
                ("progress", format!("still {found}: logs or output only"))
            }
        }
    }
}

enum Message {
    Attempt(Box<Attempt>),
    Flush(oneshot::Sender<()>),
}

/// Hands rows to the writing task.
#[derive(Clone)]
pub struct WebhookRecord {
    tx: mpsc::Sender<Message>,
}

impl WebhookRecord {
    /// Starts the writing (and pruning) task. `retention` is how long rows are kept.
    pub fn start(pool: Pool, retention: Duration) -> Self {
        let (tx, rx) = mpsc::channel(RECORD_BACKLOG);
        tokio::spawn(write_attempts(pool, rx, retention));
        Self { tx }
    }

    pub fn add(&self, attempt: Attempt) {
        if self
            .tx
            .try_send(Message::Attempt(Box::new(attempt)))
            .is_err()
        {
            metrics::counter!("worker_record_dropped_total").increment(1);
        }
    }

    /// Waits until every row handed over so far is written (or failed and logged).
    pub async fn flush(&self) {
        let (done, written) = oneshot::channel();
        if self.tx.send(Message::Flush(done)).await.is_ok() {
            let _ = written.await;
        }
    }
}

async fn write_attempts(pool: Pool, mut rx: mpsc::Receiver<Message>, retention: Duration) {
    let mut received = Vec::with_capacity(RECORD_BATCH);
    let mut batch = Vec::with_capacity(RECORD_BATCH);
    let mut flushed = Vec::new();
    let mut pruned_at: Option<Instant> = None;
    while rx.recv_many(&mut received, RECORD_BATCH).await > 0 {
        for message in received.drain(..) {
            match message {
                Message::Attempt(attempt) => batch.push(*attempt),
                Message::Flush(done) => flushed.push(done),
            }
        }
        if !batch.is_empty() {
            if let Err(err) = insert_riding_out_outages(&pool, &batch).await {
                metrics::counter!("worker_record_dropped_total").increment(batch.len() as u64);
                tracing::warn!(rows = batch.len(), error = %err, "webhook record rows not written");
            }
            batch.clear();
        }
        for done in flushed.drain(..) {
            let _ = done.send(());
        }
        if pruned_at.is_none_or(|at| at.elapsed() >= PRUNE_EVERY) {
            pruned_at = Some(Instant::now());
            match prune(&pool, retention).await {
                Ok(0) => {}
                Ok(rows) => tracing::info!(rows, "webhook record pruned"),
                Err(err) => tracing::warn!(error = %err, "webhook record not pruned"),
            }
        }
        tokio::time::sleep(RECORD_PACE).await;
    }
}

/// [`insert`], tried again while the database is away (a restart, a primary failing over)
/// for up to [`RECORD_OUTAGE`]: the handlings that failed because of the outage are the
/// ones an operator looks for afterwards. Rows keep arriving in the channel meanwhile. An
/// insert whose commit was cut may be written twice; the record is for people, not a ledger.
async fn insert_riding_out_outages(pool: &Pool, batch: &[Attempt]) -> Result<(), DbError> {
    let deadline = Instant::now() + RECORD_OUTAGE;
    loop {
        match insert(pool, batch).await {
            Err(err) if err.is_transient() && Instant::now() < deadline => {
                tokio::time::sleep(RECORD_RETRY_PAUSE).await;
            }
            written => return written,
        }
    }
}

async fn insert(pool: &Pool, batch: &[Attempt]) -> Result<(), DbError> {
    let mut conn = db::connection(pool).await?;
    diesel::insert_into(webhook_attempts::table)
        .values(batch)
        .execute(&mut conn)
        .await?;
    Ok(())
}

/// Deletes rows older than `retention`, a chunk at a time; returns how many.
pub async fn prune(pool: &Pool, retention: Duration) -> Result<usize, DbError> {
    let mut conn = db::connection(pool).await?;
    let cutoff = chrono::Utc::now()
        - chrono::Duration::from_std(retention).unwrap_or_else(|_| chrono::Duration::days(36_500));
    let mut total = 0;
    loop {
        let deleted = diesel::sql_query(
            "DELETE FROM webhook_attempts WHERE id IN \
             (SELECT id FROM webhook_attempts WHERE at < $1 LIMIT $2)",
        )
        .bind::<diesel::sql_types::Timestamptz, _>(cutoff)
        .bind::<diesel::sql_types::BigInt, _>(PRUNE_CHUNK)
        .execute(&mut conn)
        .await?;
        total += deleted;
        if deleted < PRUNE_CHUNK as usize {
            return Ok(total);
        }
    }
}
