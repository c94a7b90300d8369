//! Which job a webhook is about, and what kind it is: a `generations` row is an upscale
//! when its prompt starts with `[UPSCALED]`, otherwise a generation; an `ai_models` row is
//! a training.

use std::collections::HashMap;

use diesel::sql_types::{Array, Bool, Text};
use diesel_async::RunQueryDsl;
use shared::db::statement::statement;
use shared::db::{Connection, DbError};
use shared::events::JobKind;
use shared::jobs::apply::ApplyError;
use shared::jobs::transition::JobStatus;
use shared::jobs::{Job, kind_of_generation};

/// Finds the job with Replicate id `job_id` in `generations`, then in `ai_models`.
pub async fn find_job(conn: &mut Connection, job_id: &str) -> Result<Option<Job>, DbError> {
    Ok(find_jobs(conn, &[job_id]).await?.remove(job_id))
}

/// A row of [`find_jobs`]' lookup: a generation, or a training (`prompt` empty).
#[derive(diesel::QueryableByName)]
struct Found {
    #[diesel(sql_type = Text)]
    id: String,
    #[diesel(sql_type = Text)]
    user_id: String,
    #[diesel(sql_type = Text)]
    job_id: String,
    #[diesel(sql_type = Text)]
    prompt: String,
    #[diesel(sql_type = Text)]
    status: String,
    #[diesel(sql_type = Bool)]
    training: bool,
}

/// The jobs with these Replicate ids, by Replicate id: one statement whatever their number
/// or kind (a batch's lookup), both tables looked up by their `job_id` index.
pub async fn find_jobs(
    conn: &mut Connection,
    job_ids: &[&str],
) -> Result<HashMap<String, Job>, DbError> {
    let rows: Vec<Found> = statement(
        "SELECT id, user_id, job_id, prompt, status, false AS training \
           FROM generations WHERE job_id = ANY($1) \
         UNION ALL \
         SELECT id, user_id, job_id, '' AS prompt, status, true AS training \
           FROM ai_models WHERE job_id = ANY($1)",
    )
    .bind::<Array<Text>, _>(job_ids)
    .load(conn)
    .await?;
    let mut found = HashMap::with_capacity(rows.len());
    // A Replicate id names one job; were it in both tables, the generation would win, as
    // it always has: generations first.
    let (generations, trainings): (Vec<Found>, Vec<Found>) =
        rows.into_iter().partition(|row| !row.training);
    for row in generations.into_iter().chain(trainings) {
        let kind = if row.training {
            JobKind::Training
        } else {
            kind_of_generation(&row.prompt)
        };
        found.entry(row.job_id.clone()).or_insert(Job {
            kind,
            id: row.id,
            user_id: row.user_id,
            job_id: row.job_id,
            status: row.status,
        });
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
