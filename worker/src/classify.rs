//! Which job a webhook is about, and what kind it is: a `generations` row is an upscale
//! when its prompt starts with `[UPSCALED]`, otherwise a generation; an `ai_models` row is
//! a training.

use std::collections::HashMap;

use diesel::prelude::*;
use diesel_async::RunQueryDsl;
use shared::db::schema::{ai_models, generations};
use shared::db::{Connection, DbError};
use shared::events::JobKind;
use shared::jobs::apply::ApplyError;
use shared::jobs::transition::JobStatus;
use shared::jobs::{Job, kind_of_generation};

/// Finds the job with Replicate id `job_id` in `generations`, then in `ai_models`.
pub async fn find_job(conn: &mut Connection, job_id: &str) -> Result<Option<Job>, DbError> {
    Ok(find_jobs(conn, &[job_id]).await?.remove(job_id))
}

/// The jobs with these Replicate ids, by Replicate id: two statements whatever their number
/// (a batch's lookup).
pub async fn find_jobs(
    conn: &mut Connection,
    job_ids: &[&str],
) -> Result<HashMap<String, Job>, DbError> {
    let mut found = HashMap::with_capacity(job_ids.len());
    let generations: Vec<(String, String, Option<String>, String, String)> = generations::table
        .filter(generations::job_id.eq_any(job_ids))
        .select((
            generations::id,
            generations::user_id,
            generations::job_id,
            generations::prompt,
            generations::status,
        ))
        .load(conn)
        .await?;
    for (id, user_id, job_id, prompt, status) in generations {
        let job_id = job_id.expect("matched by job_id");
        found.insert(
            job_id.clone(),
            Job {
                kind: kind_of_generation(&prompt),
                id,
                user_id,
                job_id,
                status,
            },
        );
    }
    let missing: Vec<&str> = job_ids
        .iter()
        .copied()
        .filter(|id| !found.contains_key(*id))
        .collect();
    if missing.is_empty() {
        return Ok(found);
    }
    let trainings: Vec<(String, String, Option<String>, String)> = ai_models::table
        .filter(ai_models::job_id.eq_any(&missing))
        .select((
            ai_models::id,
            ai_models::user_id,
            ai_models::job_id,
            ai_models::status,
        ))
        .load(conn)
        .await?;
    for (id, user_id, job_id, status) in trainings {
        let job_id = job_id.expect("matched by job_id");
        found.insert(
            job_id.clone(),
            Job {
                kind: JobKind::Training,
                id,
                user_id,
                job_id,
                status,
            },
        );
    }
    Ok(found)
}

/// The stored status, or the text that is not one.
pub fn stored_status(job: &Job) -> Result<JobStatus, ApplyError> {
    JobStatus::parse(&job.status).ok_or_else(|| ApplyError::UnknownStatus {
        id: job.job_id.clone(),
        status: job.status.clone(),
    })
}
