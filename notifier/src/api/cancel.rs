//! `POST /api/jobs/{id}/cancel`: cancelling a running job. Replicate is asked to cancel it;
//! the job then ends `CANCELLED` through its webhook like any other, refunded once by the
//! ledger. A job whose Replicate id is not known yet is marked, and cancelled by its
//! creation as soon as Replicate names it.

use diesel::prelude::*;
use diesel_async::RunQueryDsl;
use shared::db::Connection;
use shared::db::schema::{ai_models, generations};
use shared::events::JobState;
use shared::jobs::transition::JobStatus;
use shared::jobs::{GenerationRow, TrainingRow};

use crate::api::error::JobsError;

/// A user's job as it stands, by row id: a generation (or upscale) or a training.
pub async fn find(conn: &mut Connection, user_id: &str, id: &str) -> Result<JobState, JobsError> {
    let generation: Option<GenerationRow> = generations::table
        .find(id)
        .filter(generations::user_id.eq(user_id))
        .select(GenerationRow::as_select())
        .first(conn)
        .await
        .optional()?;
    if let Some(row) = generation {
        return Ok(row.into());
    }
    let training: Option<TrainingRow> = ai_models::table
        .find(id)
        .filter(ai_models::user_id.eq(user_id))
        .select(TrainingRow::as_select())
        .first(conn)
        .await
        .optional()?;
    training
        .map(JobState::from)
        .ok_or_else(|| JobsError::NotFound(format!("you have no job {id:?}")))
}

/// `409` for a job that has ended.
pub fn check_running(job: &JobState) -> Result<(), JobsError> {
    let ended = JobStatus::parse(job.status()).is_some_and(JobStatus::is_terminal);
    if ended {
        return Err(JobsError::Conflict(format!(
            "the job has already ended ({})",
            job.status().to_lowercase()
        )));
    }
    Ok(())
}

/// Marks a job not yet named by Replicate to be cancelled once it is; false when it got
/// its Replicate id meanwhile (cancel it with that).
pub async fn mark_requested(
    conn: &mut Connection,
    job: &JobState,
) -> Result<bool, diesel::result::Error> {
    let now = diesel::dsl::now;
    let marked = match job {
        JobState::Generation(_) => {
            diesel::update(
                generations::table
                    .find(job.id())
                    .filter(generations::job_id.is_null()),
            )
            .set(generations::cancel_requested_at.eq(now))
            .execute(conn)
            .await?
        }
        JobState::Training(_) => {
            diesel::update(
                ai_models::table
                    .find(job.id())
                    .filter(ai_models::job_id.is_null()),
            )
            .set(ai_models::cancel_requested_at.eq(now))
            .execute(conn)
            .await?
        }
    };
    Ok(marked == 1)
}

/// Whether the person asked to cancel the job `row_id` before Replicate named it.
pub async fn was_requested(
    conn: &mut Connection,
    training: bool,
    row_id: &str,
) -> Result<bool, diesel::result::Error> {
    let at: Option<Option<chrono::DateTime<chrono::Utc>>> = if training {
        ai_models::table
            .find(row_id)
            .select(ai_models::cancel_requested_at)
            .first(conn)
            .await
            .optional()?
    } else {
        generations::table
            .find(row_id)
            .select(generations::cancel_requested_at)
            .first(conn)
            .await
            .optional()?
    };
    Ok(at.flatten().is_some())
}
