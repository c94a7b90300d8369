//! One database transaction per status change: lock the job row, decide again against the
//! locked status, update the job, refund, take the user's next `seq`, store the event.

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

/// Applies `change` to `job` for a webhook with status `incoming`, atomically.
pub async fn apply(
    conn: &mut Connection,
    job: &Job,
    incoming: &Status,
    change: Change,
) -> Result<ApplyOutcome, DbError> {
    conn.transaction(async |conn| apply_locked(conn, job, incoming, change).await)
        .await
}

async fn apply_locked(
    conn: &mut Connection,
    job: &Job,
    incoming: &Status,
    change: Change,
) -> Result<ApplyOutcome, DbError> {
    // The row lock makes two workers holding webhooks of one job take turns; the second
    // then sees the first one's status and its webhook becomes a no-op.
    let (stored, credits_used) = lock_job(conn, job).await?;
    let Some(current) = JobStatus::parse(&stored) else {
        return Err(DbError::Query(diesel::result::Error::DeserializationError(
            format!("unknown stored status {stored:?}").into(),
        )));
    };
    if let Decision::Ignore(reason) = decide(current, incoming) {
        return Ok(ApplyOutcome::Ignored(reason));
    }

    let to = change.status();
    let now = Utc::now();
    let refunded = if to.refunds() {
        refund::record(conn, &job.user_id, &job.job_id, credits_used).await?
    } else {
        0
    };
    let (seq, credits) = event_log::next_seq(conn, &job.user_id, refunded).await?;
    let state = if job.is_training() {
        update_training(conn, job, to, &change, now).await?
    } else {
        update_generation(conn, job, to, &change, now).await?
    };
    let event = Event::status_changed(seq, &job.user_id, credits, refunded, state);
    let event = event_log::append(conn, &event).await?;
    Ok(ApplyOutcome::Applied(Box::new(Applied {
        from: current,
        to,
        refunded,
        event,
    })))
}

fn error_of(change: &Change) -> Option<String> {
    match change {
        Change::Failed { error } => Some(error.clone()),
        _ => None,
    }
}

async fn update_generation(
    conn: &mut Connection,
    job: &Job,
    to: JobStatus,
    change: &Change,
    now: chrono::DateTime<Utc>,
) -> Result<JobState, DbError> {
    let image_urls = match change {
        Change::ImagesStored { image_urls } => Some(image_urls.clone()),
        _ => None,
    };
    let row = diesel::update(generations::table.find(&job.id))
        .set(GenerationUpdate {
            status: to.as_str().to_owned(),
            updated_at: now,
            completed_at: to.is_terminal().then_some(now),
            image_urls,
            error_message: error_of(change),
        })
        .returning(GenerationRow::as_returning())
        .get_result(conn)
        .await?;
    Ok(row.into())
}

async fn update_training(
    conn: &mut Connection,
    job: &Job,
    to: JobStatus,
    change: &Change,
    now: chrono::DateTime<Utc>,
) -> Result<JobState, DbError> {
    let (model_version, weights_url) = match change {
        Change::TrainingSucceeded {
            model_version,
            weights_url,
        } => (model_version.clone(), weights_url.clone()),
        _ => (None, None),
    };
    let row = diesel::update(ai_models::table.find(&job.id))
        .set(TrainingUpdate {
            status: to.as_str().to_owned(),
            updated_at: now,
            completed_at: to.is_terminal().then_some(now),
            model_version,
            weights_url,
            error_message: error_of(change),
        })
        .returning(TrainingRow::as_returning())
        .get_result(conn)
        .await?;
    Ok(row.into())
}

/// Locks the job's row and reads `(status, credits_used)`.
async fn lock_job(conn: &mut Connection, job: &Job) -> Result<(String, i32), DbError> {
    let row = if job.is_training() {
        ai_models::table
            .find(&job.id)
            .select((ai_models::status, ai_models::credits_used))
            .for_update()
            .first(conn)
            .await?
    } else {
        generations::table
            .find(&job.id)
            .select((generations::status, generations::credits_used))
            .for_update()
            .first(conn)
            .await?
    };
    Ok(row)
}
