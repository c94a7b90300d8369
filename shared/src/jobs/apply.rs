//! One database transaction per status change: update the job row if it still holds the
//! status the decision was made on (else lock it and decide again), refund, take the
//! user's next `seq`, store the event.

use chrono::Utc;
use diesel::prelude::*;
use diesel_async::{AsyncConnection, RunQueryDsl};

use crate::db::schema::{ai_models, generations};
use crate::db::{Connection, DbError};
use crate::events::{Event, JobState};
use crate::jobs::event_log::{self, StoredEvent};
use crate::jobs::refund;
use crate::jobs::transition::{Decision, Ignored, JobStatus, decide};
use crate::jobs::{GenerationRow, Job, TrainingRow};
use crate::replicate::Status;

/// What a webhook does to a job, its I/O (downloads) already done.
#[derive(Debug, Clone, PartialEq)]
pub enum Change {
    Processing,
    /// A generation or upscale whose outputs are stored.
    ImagesStored {
        image_urls: Vec<String>,
        /// A small rendition of each, in the same order (the original where none could be
        /// made).
        thumb_urls: Vec<String>,
    },
    /// A training: its model version and weights.
    TrainingSucceeded {
        model_version: Option<String>,
        weights_url: Option<String>,
    },
    Failed {
        error: String,
    },
    Cancelled,
}

impl Change {
    pub fn status(&self) -> JobStatus {
        match self {
            Self::Processing => JobStatus::Processing,
            Self::ImagesStored { .. } | Self::TrainingSucceeded { .. } => JobStatus::Completed,
            Self::Failed { .. } => JobStatus::Failed,
            Self::Cancelled => JobStatus::Cancelled,
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Applied {
    pub from: JobStatus,
    pub to: JobStatus,
    /// Credits given back by this change (0 when none).
    pub refunded: i32,
    pub event: StoredEvent,
}

#[derive(Debug, Clone, PartialEq)]
pub enum ApplyOutcome {
    Applied(Box<Applied>),
    Ignored(Ignored),
}

#[derive(AsChangeset)]
#[diesel(table_name = generations)]
struct GenerationUpdate {
    status: String,
    updated_at: chrono::DateTime<Utc>,
    completed_at: Option<chrono::DateTime<Utc>>,
    image_urls: Option<Vec<String>>,
    thumb_urls: Option<Vec<String>>,
    error_message: Option<String>,
}

#[derive(AsChangeset)]
#[diesel(table_name = ai_models)]
struct TrainingUpdate {
    status: String,
    updated_at: chrono::DateTime<Utc>,
    completed_at: Option<chrono::DateTime<Utc>>,
    model_version: Option<String>,
    weights_url: Option<String>,
    error_message: Option<String>,
}

/// Why a change could not be applied.
#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    #[error(transparent)]
    Db(#[from] DbError),
    /// The row holds a status this version does not know: it needs a person, not a retry.
    #[error(
        "job {id} has status {status:?}, which is none of PENDING, PROCESSING, COMPLETED, FAILED, CANCELLED"
    )]
    UnknownStatus { id: String, status: String },
    /// The row, locked by this transaction, did not hold the status just read from it.
    #[error("job {0} changed while locked")]
    ChangedWhileLocked(String),
}

impl From<diesel::result::Error> for ApplyError {
    fn from(err: diesel::result::Error) -> Self {
        Self::Db(err.into())
    }
}

impl ApplyError {
    /// Whether trying again later may succeed.
    pub fn is_transient(&self) -> bool {
        match self {
            Self::Db(err) => err.is_transient(),
            Self::UnknownStatus { .. } | Self::ChangedWhileLocked(_) => false,
        }
    }
}

/// Applies `change` to `job` for a webhook with status `incoming`, atomically.
pub async fn apply(
    conn: &mut Connection,
    job: &Job,
    incoming: &Status,
    change: Change,
) -> Result<ApplyOutcome, ApplyError> {
    conn.transaction(async |conn| apply_in_transaction(conn, job, incoming, change).await)
        .await
}

async fn apply_in_transaction(
    conn: &mut Connection,
    job: &Job,
    incoming: &Status,
    change: Change,
) -> Result<ApplyOutcome, ApplyError> {
    let to = change.status();
    // The usual case: the status read before the transaction still holds. Updating only
    // if it does takes the row lock and proves it in one statement.
    if let Some(read) = JobStatus::parse(&job.status)
        && matches!(decide(read, incoming), Decision::MoveTo(_))
        && let Some(state) = update_job(conn, job, read, to, &change).await?
    {
        return record(conn, job, read, to, state).await;
    }
    // Another webhook of this job got there first: lock the row, decide again against
    // what it left. The second of two workers holding webhooks of one job ends here and
    // usually finds its webhook a no-op.
    let stored = lock_job(conn, job).await?;
    let Some(current) = JobStatus::parse(&stored) else {
        return Err(ApplyError::UnknownStatus {
            id: job.id.clone(),
            status: stored,
        });
    };
    if let Decision::Ignore(reason) = decide(current, incoming) {
        return Ok(ApplyOutcome::Ignored(reason));
    }
    let state = update_job(conn, job, current, to, &change)
        .await?
        .ok_or_else(|| ApplyError::ChangedWhileLocked(job.id.clone()))?;
    record(conn, job, current, to, state).await
}

/// With the job row updated and locked: the refund, the user's next `seq` (and balance
/// under the user's row lock), and the event in the log.
async fn record(
    conn: &mut Connection,
    job: &Job,
    from: JobStatus,
    to: JobStatus,
    state: JobState,
) -> Result<ApplyOutcome, ApplyError> {
    let refunded = if to.refunds() {
        refund::record(conn, &job.user_id, &job.job_id, state.credits_used()).await?
    } else {
        0
    };
    let (seq, credits) = event_log::next_seq(conn, &job.user_id, refunded).await?;
    let event = Event::status_changed(seq, &job.user_id, credits, refunded, state);
    let event = event_log::append(conn, &event).await?;
    Ok(ApplyOutcome::Applied(Box::new(Applied {
        from,
        to,
        refunded,
        event,
    })))
}

pub(crate) fn error_of(change: &Change) -> Option<String> {
    match change {
        Change::Failed { error } => Some(error.clone()),
        _ => None,
    }
}

/// Moves the job from `from` to `to` if its row still says `from`; `None` if it does not.
async fn update_job(
    conn: &mut Connection,
    job: &Job,
    from: JobStatus,
    to: JobStatus,
    change: &Change,
) -> Result<Option<JobState>, DbError> {
    let now = Utc::now();
    let completed_at = to.is_terminal().then_some(now);
    let row: Option<JobState> = if job.is_training() {
        let (model_version, weights_url) = match change {
            Change::TrainingSucceeded {
                model_version,
                weights_url,
            } => (model_version.clone(), weights_url.clone()),
            _ => (None, None),
        };
        diesel::update(ai_models::table.find(&job.id))
            .filter(ai_models::status.eq(from.as_str()))
            .set(TrainingUpdate {
                status: to.as_str().to_owned(),
                updated_at: now,
                completed_at,
                model_version,
                weights_url,
                error_message: error_of(change),
            })
            .returning(TrainingRow::as_returning())
            .get_result(conn)
            .await
            .optional()?
            .map(Into::into)
    } else {
        let (image_urls, thumb_urls) = match change {
            Change::ImagesStored {
                image_urls,
                thumb_urls,
            } => (Some(image_urls.clone()), Some(thumb_urls.clone())),
            _ => (None, None),
        };
        diesel::update(generations::table.find(&job.id))
            .filter(generations::status.eq(from.as_str()))
            .set(GenerationUpdate {
                status: to.as_str().to_owned(),
                updated_at: now,
                completed_at,
                image_urls,
                thumb_urls,
                error_message: error_of(change),
            })
            .returning(GenerationRow::as_returning())
            .get_result(conn)
            .await
            .optional()?
            .map(Into::into)
    };
    Ok(row)
}

/// Locks the job's row and reads its status.
async fn lock_job(conn: &mut Connection, job: &Job) -> Result<String, DbError> {
    let status = if job.is_training() {
        ai_models::table
            .find(&job.id)
            .select(ai_models::status)
            .for_update()
            .first(conn)
            .await?
    } else {
        generations::table
            .find(&job.id)
            .select(generations::status)
            .for_update()
            .first(conn)
            .await?
    };
    Ok(status)
}
