//! Recovering lost webhooks. Replicate retries only the terminal webhook, for about a
//! minute, and webhooks do go missing: a job whose last change is older than
//! `RECONCILE_AFTER_SECS` and is still not finished is asked about
//! (`GET /predictions/{id}`, `/trainings/{id}`), and the answer goes into
//! `replicate.webhooks` like a webhook, so it takes exactly the path a webhook takes
//! (classify, download, transition, refund, event). The reconciler acts only on what
//! Replicate *says* about a job: a 404 is not an outcome (a wrong API URL, a proxy or another
//! account's token answer 404 too), so such a job is reported — a log line, a metric, a row
//! in `unconfirmed_jobs` saying since when — and left for an operator, never refunded.
//!
//! It also fails and refunds creations abandoned before Replicate's id was stored (the
//! notifier stopped before even reaching Replicate): rows still waiting for an id after
//! `RECONCILE_AFTER_SECS`, which start-up keeps above what a creation can take, and only
//! those this ledger debited. That needs no Replicate token.
//!
//! One worker does it at a time: the one holding a PostgreSQL advisory lock on a connection
//! of its own. If that worker dies, its connection closes, the lock is freed and another
//! worker takes over at its next tick.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use chrono::Utc;
use diesel::prelude::*;
use diesel::sql_types::{BigInt, Bool};
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};
use shared::config::{DatabaseUrl, SecretString};
use shared::db::schema::{ai_models, credit_transactions, generations, unconfirmed_jobs};
use shared::db::{self, DbError};
use shared::jobs::DEBIT;
use shared::jobs::apply::ApplyError;
use shared::jobs::bind;
use shared::jobs::transition::JobStatus;

use crate::process::Processor;

/// The advisory lock only the reconciling worker holds ("reconcil").
const LEADER_LOCK_KEY: i64 = 0x7265_636f_6e63_696c;
/// How long the leader's session may take to answer before it counts as lost.
const LEADER_CHECK_TIMEOUT: Duration = Duration::from_secs(5);
/// Jobs asked about per tick, at most.
const BATCH: i64 = 100;

/// How the reconciler reaches Replicate and when it looks.
#[derive(Debug, Clone)]
pub struct Reconciler {
    pub api_url: String,
    /// Without it only abandoned creations are looked for.
    pub api_token: Option<SecretString>,
    /// A job unchanged this long while unfinished is asked about.
    pub after: Duration,
    pub interval: Duration,
    pub database: DatabaseUrl,
}

/// A job to ask Replicate about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stale {
    /// `predictions` or `trainings`.
    pub collection: &'static str,
    pub job_id: String,
}

#[derive(QueryableByName)]
struct Locked {
    #[diesel(sql_type = Bool)]
    locked: bool,
}

impl Reconciler {
    /// Reconciles every `interval` while this worker holds the leader lock, until `stop`.
    pub async fn run(
        self,
        processor: Arc<Processor>,
        mut stop: tokio::sync::watch::Receiver<bool>,
    ) {
        let http = shared::http::client_builder()
            .timeout(Duration::from_secs(30))
            .build()
            .expect("an HTTP client with default settings builds");
        let mut leader: Option<AsyncPgConnection> = None;
        let mut asked = Asked::default();
        let mut ticks = tokio::time::interval(self.interval);
        loop {
            tokio::select! {
                _ = stop.changed() => return,
                _ = ticks.tick() => {}
            }
            if !self.hold_leadership(&mut leader).await {
                continue;
            }
            let outcome = self.tick(&processor, &http, &mut asked).await;
            let label = if outcome.is_ok() { "ok" } else { "error" };
            metrics::counter!("worker_reconcile_passes_total", "outcome" => label).increment(1);
            match outcome {
                Ok(0) => {}
                Ok(asked) => {
                    tracing::info!(asked, "reconciler asked Replicate about unfinished jobs")
                }
                Err(err) => {
                    tracing::warn!(error = %err, "reconciling failed; retrying at the next tick")
                }
            }
        }
    }

    /// Keeps (or tries to take) the leader lock; true while this worker holds it.
    async fn hold_leadership(&self, leader: &mut Option<AsyncPgConnection>) -> bool {
        if let Some(conn) = leader {
            // Still the same session (and so still the lock)? A server that stopped
            // answering counts as lost: its lock is no proof of anything any more.
            let check = diesel::sql_query("SELECT 1").execute(conn);
            if matches!(
                tokio::time::timeout(LEADER_CHECK_TIMEOUT, check).await,
                Ok(Ok(_))
            ) {
                return true;
            }
            tracing::warn!(
                "the reconciler lost its database session (and its lead); taking the lead again on the writable server"
            );
            *leader = None;
        }
        let connect = AsyncPgConnection::establish(self.database.as_str());
        let Ok(Ok(mut conn)) = tokio::time::timeout(LEADER_CHECK_TIMEOUT, connect).await else {
            return false;
        };
        let locked = diesel::sql_query("SELECT pg_try_advisory_lock($1) AS locked")
            .bind::<BigInt, _>(LEADER_LOCK_KEY)
            .get_result::<Locked>(&mut conn)
            .await
            .is_ok_and(|row| row.locked);
        if locked {
            tracing::info!("this worker reconciles unfinished jobs with Replicate");
            *leader = Some(conn);
        }
        locked
    }

    /// One pass: asks Replicate about each stale job not asked about within `after`, and
    /// enqueues the answer.
    pub async fn tick(
        &self,
        processor: &Processor,
        http: &reqwest::Client,
        asked: &mut Asked,
    ) -> Result<usize, ApplyError> {
        if !processor.broker.link.is_connected() {
            return Ok(0); // the answers could not be enqueued: wait for the broker
        }
        fail_abandoned_creations(processor, self.after).await?;
        let Some(api_token) = &self.api_token else {
            return Ok(0);
        };
        let stale = stale_jobs(processor, self.after).await?;
        asked.forget_older_than(self.after);
        let stale: Vec<Stale> = stale
            .into_iter()
            .filter(|job| !asked.recently(&job.job_id))
            .collect();
        for job in &stale {
            let url = format!(
                "{}/{}/{}",
                self.api_url.trim_end_matches('/'),
                job.collection,
                job.job_id
            );
            let answer = http.get(&url).bearer_auth(api_token.expose()).send().await;
            let body = match answer {
                Ok(response) if response.status().is_success() => match response.bytes().await {
                    Ok(body) => body.to_vec(),
                    Err(err) => {
                        tracing::warn!(job_id = %job.job_id, error = %err, "reconciler: cannot read Replicate's answer");
                        continue;
                    }
                },
                Ok(response) if response.status() == reqwest::StatusCode::NOT_FOUND => {
                    asked.record(&job.job_id);
                    report_not_found(processor, job).await;
                    continue;
                }
                Ok(response) => {
                    tracing::warn!(job_id = %job.job_id, status = %response.status(), "reconciler: Replicate answered with an error; asking again later");
                    continue;
                }
                Err(err) => {
                    tracing::warn!(job_id = %job.job_id, error = %err, "reconciler: Replicate unreachable; asking again later");
                    continue;
                }
            };
            let now = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap_or_default()
                .as_secs();
            let webhook_id = format!("reconcile_{}_{now}", job.job_id);
            let published = processor
                .broker
                .enqueue_webhook(
                    &shared::events::short_string(&webhook_id),
                    &now.to_string(),
                    &body,
                )
                .await;
            match published {
                Ok(()) => {
                    asked.record(&job.job_id);
                    metrics::counter!("worker_reconciled_total").increment(1);
                    tracing::info!(job_id = %job.job_id, %webhook_id, "reconciler enqueued Replicate's answer for a job without news");
                }
                Err(err) => {
                    tracing::warn!(job_id = %job.job_id, error = %err, "reconciler: cannot enqueue; asking again later")
                }
            }
        }
        if let Err(err) = count_unconfirmed(processor).await {
            tracing::warn!(error = %err, "reconciler: cannot count the jobs Replicate answered 404 for");
        }
        Ok(stale.len())
    }
}

/// When this worker last asked about each job: an answer takes a moment to be processed,
/// and a job Replicate still runs need not be asked about more than once per `after`.
#[derive(Debug, Default)]
pub struct Asked(std::collections::HashMap<String, std::time::Instant>);

impl Asked {
    fn recently(&self, job_id: &str) -> bool {
        self.0.contains_key(job_id)
    }

    /// Records that Replicate's answer about `job_id` was enqueued now.
    fn record(&mut self, job_id: &str) {
        self.0.insert(job_id.to_owned(), std::time::Instant::now());
    }

    fn forget_older_than(&mut self, age: Duration) {
        self.0.retain(|_, at| at.elapsed() < age);
    }
}

/// Replicate answered 404 for an unfinished job: recorded (first and last answer, how many),
/// logged with how long the job has been unconfirmed, counted; the job itself is untouched.
async fn report_not_found(processor: &Processor, job: &Stale) {
    metrics::counter!("worker_reconcile_not_found_total").increment(1);
    let recorded = async {
        let mut conn = db::connection(&processor.pool).await?;
        let first_at: chrono::DateTime<Utc> = diesel::insert_into(unconfirmed_jobs::table)
            .values(unconfirmed_jobs::job_id.eq(&job.job_id))
            .on_conflict(unconfirmed_jobs::job_id)
            .do_update()
            .set((
                unconfirmed_jobs::last_at.eq(Utc::now()),
                unconfirmed_jobs::answers.eq(unconfirmed_jobs::answers + 1),
            ))
            .returning(unconfirmed_jobs::first_at)
            .get_result(&mut conn)
            .await?;
        Ok::<_, DbError>(first_at)
    };
    match recorded.await {
        Ok(first_at) => {
            let unconfirmed_secs = (Utc::now() - first_at).num_seconds().max(0);
            tracing::error!(job_id = %job.job_id, collection = job.collection, unconfirmed_secs, "reconciler: Replicate answers 404 for an unfinished job; left as it is for an operator (check REPLICATE_API_URL and the token's account)");
        }
        Err(err) => {
            tracing::error!(job_id = %job.job_id, collection = job.collection, error = %err, "reconciler: Replicate answers 404 for an unfinished job; left as it is for an operator (not recorded)");
        }
    }
}

/// How many unfinished jobs Replicate has answered 404 for: a gauge an alert can watch.
async fn count_unconfirmed(processor: &Processor) -> Result<(), DbError> {
    let open = [JobStatus::Pending.as_str(), JobStatus::Processing.as_str()];
    let mut conn = db::connection(&processor.pool).await?;
    let unconfirmed = unconfirmed_jobs::table.select(unconfirmed_jobs::job_id.nullable());
    let generations_open: i64 = generations::table
        .filter(generations::status.eq_any(open))
        .filter(generations::job_id.eq_any(unconfirmed))
        .count()
        .get_result(&mut conn)
        .await?;
    let trainings_open: i64 = ai_models::table
        .filter(ai_models::status.eq_any(open))
        .filter(ai_models::job_id.eq_any(unconfirmed))
        .count()
        .get_result(&mut conn)
        .await?;
    metrics::gauge!("worker_jobs_unconfirmed").set((generations_open + trainings_open) as f64);
    Ok(())
}

/// Rows still waiting for Replicate's id `after` their debit (the notifier stopped before
/// reaching Replicate, or crashed while it answered and no webhook has bound the job since):
/// failed and refunded through the ledger. Only rows this ledger debited, each re-checked
/// under its lock, so a webhook binding the job at the same moment wins.
async fn fail_abandoned_creations(
    processor: &Processor,
    after: Duration,
) -> Result<(), ApplyError> {
    let cutoff = Utc::now() - chrono::Duration::from_std(after).unwrap_or_default();
    let pending = JobStatus::Pending.as_str();
    let mut conn = db::connection(&processor.pool).await?;
    let debited_unbound = credit_transactions::table
        .filter(credit_transactions::kind.eq(DEBIT))
        .select(credit_transactions::job_id);
    let mut rows: Vec<String> = generations::table
        .filter(generations::status.eq(pending))
        .filter(generations::job_id.is_null())
        .filter(generations::created_at.lt(cutoff))
        .filter(generations::id.eq_any(debited_unbound))
        .limit(BATCH)
        .select(generations::id)
        .load(&mut conn)
        .await?;
    rows.extend(
        ai_models::table
            .filter(ai_models::status.eq(pending))
            .filter(ai_models::job_id.is_null())
            .filter(ai_models::created_at.lt(cutoff))
            .filter(ai_models::id.eq_any(debited_unbound))
            .limit(BATCH)
            .select(ai_models::id)
            .load::<String>(&mut conn)
            .await?,
    );
    for id in rows {
        let error = "the job could not be created on Replicate (the server stopped while creating it); your credits are refunded".to_owned();
        if let Some(applied) = bind::fail_unbound(&mut conn, &id, error).await? {
            tracing::warn!(%id, user_id = %applied.event.user_id, refunded = applied.refunded, "a creation abandoned before Replicate's id was stored was failed and refunded");
            metrics::counter!("worker_abandoned_creations_total").increment(1);
            processor.publish_stored(&applied.event).await;
        }
    }
    Ok(())
}

/// Unfinished jobs with a Replicate id whose row has not changed for `after`.
pub async fn stale_jobs(processor: &Processor, after: Duration) -> Result<Vec<Stale>, DbError> {
    let cutoff = Utc::now() - chrono::Duration::from_std(after).unwrap_or_default();
    let open = [JobStatus::Pending.as_str(), JobStatus::Processing.as_str()];
    let mut conn = db::connection(&processor.pool).await?;
    let predictions: Vec<Option<String>> = generations::table
        .filter(generations::status.eq_any(open))
        .filter(generations::job_id.is_not_null())
        .filter(generations::updated_at.lt(cutoff))
        .order(generations::updated_at)
        .limit(BATCH)
        .select(generations::job_id)
        .load(&mut conn)
        .await?;
    let trainings: Vec<Option<String>> = ai_models::table
        .filter(ai_models::status.eq_any(open))
        .filter(ai_models::job_id.is_not_null())
        .filter(ai_models::updated_at.lt(cutoff))
        .order(ai_models::updated_at)
        .limit(BATCH)
        .select(ai_models::job_id)
        .load(&mut conn)
        .await?;
    Ok(predictions
        .into_iter()
        .flatten()
        .map(|job_id| Stale {
            collection: "predictions",
            job_id,
        })
        .chain(trainings.into_iter().flatten().map(|job_id| Stale {
            collection: "trainings",
            job_id,
        }))
        .collect())
}
