//! Which job a webhook is about, and what kind it is: a `generations` row is an upscale
//! when its prompt starts with `[UPSCALED]`, otherwise a generation; an `ai_models` row is
//! a training.

use diesel::prelude::*;
use diesel_async::RunQueryDsl;
use shared::db::schema::{ai_models, generations};
use shared::db::{Connection, DbError};
use shared::events::JobKind;

use crate::transition::JobStatus;

const UPSCALE_MARKER: &str = "[UPSCALED]";

/// A job as found, before any lock is taken.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Job {
    pub kind: JobKind,
    /// `generations.id` or `ai_models.id`.
    pub id: String,
    pub user_id: String,
    /// Replicate's id.
    pub job_id: String,
    /// The stored status text (see [`JobStatus::parse`]).
    pub status: String,
}

impl Job {
    pub fn is_training(&self) -> bool {
        self.kind == JobKind::Training
    }
}

pub fn kind_of_generation(prompt: &str) -> JobKind {
    if prompt.starts_with(UPSCALE_MARKER) {
        JobKind::Upscale
    } else {
        JobKind::Generation
    }
}

/// Finds the job with Replicate id `job_id` in `generations`, then in `ai_models`.
pub async fn find_job(conn: &mut Connection, job_id: &str) -> Result<Option<Job>, DbError> {
    let generation = generations::table
        .filter(generations::job_id.eq(job_id))
        .select((
            generations::id,
            generations::user_id,
            generations::prompt,
            generations::status,
        ))
        .first::<(String, String, String, String)>(conn)
        .await
        .optional()?;
    if let Some((id, user_id, prompt, status)) = generation {
        return Ok(Some(Job {
            kind: kind_of_generation(&prompt),
            id,
            user_id,
            job_id: job_id.to_owned(),
            status,
        }));
    }
    let training = ai_models::table
        .filter(ai_models::job_id.eq(job_id))
        .select((ai_models::id, ai_models::user_id, ai_models::status))
        .first::<(String, String, String)>(conn)
        .await
        .optional()?;
    Ok(training.map(|(id, user_id, status)| Job {
        kind: JobKind::Training,
        id,
        user_id,
        job_id: job_id.to_owned(),
        status,
    }))
}

/// The stored status, or the text that is not one.
pub fn stored_status(job: &Job) -> Result<JobStatus, String> {
    JobStatus::parse(&job.status).ok_or_else(|| {
        format!(
            "job {} has status {:?}, which is none of PENDING, PROCESSING, COMPLETED, FAILED, CANCELLED",
            job.job_id, job.status
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upscales_are_marked_in_the_prompt() {
        assert_eq!(kind_of_generation("[UPSCALED] a corgi"), JobKind::Upscale);
        assert_eq!(
            kind_of_generation("a corgi [UPSCALED]"),
            JobKind::Generation
        );
        assert_eq!(kind_of_generation(""), JobKind::Generation);
    }
}
