//! One database transaction per status change: lock the job row, decide again against the
//! locked status, update the job, refund, take the user's next `seq`, store the event.

use chrono::Utc;
use diesel::prelude::*;
use diesel_async::{AsyncConnection, RunQueryDsl};
use shared::db::schema::{ai_models, generations};
use shared::db::{Connection, DbError};
use shared::events::{Event, GenerationJob, TrainingJob};
use shared::replicate::Status;

use crate::classify::Job;
use crate::event_log::{self, StoredEvent};
use crate::refund;
use crate::transition::{Decision, Ignored, JobStatus, decide};

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
    let completed_at = to.is_terminal().then_some(now);
    let error = match &change {
        Change::Failed { error } => Some(error.clone()),
        _ => None,
    };

    let refunded = if to.refunds() {
        refund::record(conn, &job.user_id, &job.job_id, credits_used).await?
    } else {
        0
    };
    let (seq, credits) = event_log::next_seq(conn, &job.user_id, refunded).await?;

    let event = if job.is_training() {
        let (model_version, weights_url) = match &change {
            Change::TrainingSucceeded {
                model_version,
                weights_url,
            } => (model_version.clone(), weights_url.clone()),
            _ => (None, None),
        };
        let row: (Option<String>, Option<String>, Option<String>) =
            diesel::update(ai_models::table.find(&job.id))
                .set(TrainingUpdate {
                    status: to.as_str().to_owned(),
                    updated_at: now,
                    completed_at,
                    model_version,
                    weights_url,
                    error_message: error,
                })
                .returning((
                    ai_models::model_version,
                    ai_models::weights_url,
                    ai_models::error_message,
                ))
                .get_result(conn)
                .await?;
        Event::ModelStatusChanged {
            seq,
            user_id: job.user_id.clone(),
            credits,
            job: TrainingJob {
                kind: job.kind,
                id: job.id.clone(),
                job_id: job.job_id.clone(),
                status: to.as_str().to_owned(),
                model_version: row.0,
                weights_url: row.1,
                error: row.2,
            },
        }
    } else {
        let image_urls = match &change {
            Change::ImagesStored { image_urls } => Some(image_urls.clone()),
            _ => None,
        };
        let row: (Vec<String>, Option<String>) = diesel::update(generations::table.find(&job.id))
            .set(GenerationUpdate {
                status: to.as_str().to_owned(),
                updated_at: now,
                completed_at,
                image_urls,
                error_message: error,
            })
            .returning((generations::image_urls, generations::error_message))
            .get_result(conn)
            .await?;
        Event::GenerationStatusChanged {
            seq,
            user_id: job.user_id.clone(),
            credits,
            job: GenerationJob {
                kind: job.kind,
                id: job.id.clone(),
                job_id: job.job_id.clone(),
                status: to.as_str().to_owned(),
                image_urls: row.0,
                error: row.1,
            },
        }
    };
    let event = event_log::append(conn, &event).await?;
    Ok(ApplyOutcome::Applied(Box::new(Applied {
        from: current,
        to,
        refunded,
        event,
    })))
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
