//! The creation's writes: the debit and the job's row in one transaction, and the reads
//! its answer needs.

use diesel::prelude::*;
use diesel_async::{AsyncConnection, RunQueryDsl};
use shared::db::Connection;
use shared::db::schema::{ai_models, credit_transactions, generations, users};
use shared::events::{Event, JobKind, JobState, ModelName};
use shared::jobs::event_log::StoredEvent;
use shared::jobs::{DEBIT, GenerationRow, Job, TrainingRow};

use crate::api::error::{Created, JobsError};

/// One job to create.
pub struct NewJob {
    pub kind: JobKind,
    /// The prompt of a generation or upscale, the name of a training.
    pub text: String,
    pub cost: i32,
    /// The trained model a generation runs on.
    pub model: Option<ModelName>,
    /// The generation an upscale enlarges.
    pub source_id: Option<String>,
}

/// The answer to a creation from the job's first stored event.
pub fn created_from(stored: &StoredEvent) -> Created {
    let (Event::GenerationStatusChanged { credits, .. }
    | Event::ModelStatusChanged { credits, .. }) = stored.event
    else {
        unreachable!("a status event was stored")
    };
    Created {
        job: stored.event.job().expect("a status event"),
        credits,
    }
}

/// A new row id: a prefix and 20 random lowercase letters and digits.
fn new_row_id(kind: JobKind) -> String {
    const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
    let prefix = match kind {
        JobKind::Training => "mdl",
        JobKind::Generation | JobKind::Upscale => "gen",
    };
    let random: String = (0..20)
        .map(|_| ALPHABET[fastrand::usize(..ALPHABET.len())] as char)
        .collect();
    format!("{prefix}_{random}")
}

/// The debit and the job's row, in one transaction (its first event follows once
/// Replicate has named it).
pub async fn record_pending(
    conn: &mut Connection,
    user_id: &str,
    new: &NewJob,
) -> Result<Job, JobsError> {
    conn.transaction(async |conn| {
        // Debit only a balance that covers the cost.
        let debited: Option<i32> = diesel::update(
            users::table
                .find(user_id)
                .filter(users::credits.ge(new.cost)),
        )
        .set(users::credits.eq(users::credits - new.cost))
        .returning(users::credits)
        .get_result(conn)
        .await
        .optional()?;
        if debited.is_none() {
            let balance = credits_of(conn, user_id).await?;
            return Err(JobsError::InsufficientCredits(format!(
                "a {} costs {} credits and your balance is {balance}",
                new.kind, new.cost
            )));
        };
        let id = new_row_id(new.kind);
        match new.kind {
            JobKind::Training => {
                diesel::insert_into(ai_models::table)
                    .values((
                        ai_models::id.eq(&id),
                        ai_models::user_id.eq(user_id),
                        ai_models::name.eq(&new.text),
                        ai_models::credits_used.eq(new.cost),
                    ))
                    .execute(conn)
                    .await?
            }
            JobKind::Generation | JobKind::Upscale => {
                diesel::insert_into(generations::table)
                    .values((
                        generations::id.eq(&id),
                        generations::user_id.eq(user_id),
                        generations::prompt.eq(&new.text),
                        generations::credits_used.eq(new.cost),
                        generations::model_id.eq(new.model.as_ref().map(|m| &m.id)),
                        generations::model_name.eq(new.model.as_ref().map(|m| &m.name)),
                        generations::source_id.eq(&new.source_id),
                    ))
                    .execute(conn)
                    .await?
            }
        };
        diesel::insert_into(credit_transactions::table)
            .values((
                credit_transactions::user_id.eq(user_id),
                credit_transactions::amount.eq(-new.cost),
                credit_transactions::kind.eq(DEBIT),
                // The row's id until Replicate gives the job its own.
                credit_transactions::job_id.eq(&id),
            ))
            .execute(conn)
            .await?;
        let job = Job {
            kind: new.kind,
            // Until Replicate names the job, its credit transactions carry the row's id.
            job_id: id.clone(),
            id,
            user_id: user_id.to_owned(),
            status: "PENDING".into(),
        };
        Ok(job)
    })
    .await
}

pub async fn job_state(conn: &mut Connection, job: &Job) -> Result<JobState, JobsError> {
    Ok(if job.is_training() {
        ai_models::table
            .find(&job.id)
            .select(TrainingRow::as_select())
            .first(conn)
            .await?
            .into()
    } else {
        generations::table
            .find(&job.id)
            .select(GenerationRow::as_select())
            .first(conn)
            .await?
            .into()
    })
}

pub async fn credits_of(
    conn: &mut Connection,
    user_id: &str,
) -> Result<i32, diesel::result::Error> {
    Ok(users::table
        .find(user_id)
        .select(users::credits)
        .first(conn)
        .await
        .optional()?
        .unwrap_or(0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn row_ids_say_their_table() {
        assert!(new_row_id(JobKind::Upscale).starts_with("gen_"));
        assert!(new_row_id(JobKind::Training).starts_with("mdl_"));
        assert_eq!(new_row_id(JobKind::Training).len(), 24);
    }
}
