//! The creation's writes: the debit, the job's row and its debit transaction in one statement,
//! and the reads its answer needs.

use diesel::prelude::*;
use diesel::sql_types::{Integer, Nullable, Text};
use diesel_async::RunQueryDsl;
use shared::db::Connection;
use shared::db::schema::{ai_models, generations, users};
use shared::db::statement::statement;
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

/// Whether the debit took place (1) or the balance did not cover the cost (0).
#[derive(QueryableByName)]
struct Debited {
    #[diesel(sql_type = Integer)]
    debited: i32,
}

/// The debit, the generation's (or upscale's) row and its debit transaction: one
/// statement, so one round trip and one commit. The row and the transaction are written
/// only if the balance covered the cost (they select from the debit's result); the
/// statement says whether it did.
const DEBIT_GENERATION: &str = "WITH debited AS ( \
       UPDATE users SET credits = credits - $1 WHERE id = $2 AND credits >= $1 \
       RETURNING id), \
     job AS ( \
       INSERT INTO generations \
         (id, user_id, prompt, credits_used, model_id, model_name, source_id) \
       SELECT $3, id, $4, $1, $5, $6, $7 FROM debited), \
     debit AS ( \
       INSERT INTO credit_transactions (user_id, amount, kind, job_id) \
       SELECT id, -$1, $8, $3 FROM debited) \
     SELECT count(*)::int4 AS debited FROM debited";

/// [`DEBIT_GENERATION`] for a training's row.
const DEBIT_TRAINING: &str = "WITH debited AS ( \
       UPDATE users SET credits = credits - $1 WHERE id = $2 AND credits >= $1 \
       RETURNING id), \
     job AS ( \
       INSERT INTO ai_models (id, user_id, name, credits_used) \
       SELECT $3, id, $4, $1 FROM debited), \
     debit AS ( \
       INSERT INTO credit_transactions (user_id, amount, kind, job_id) \
       SELECT id, -$1, $5, $3 FROM debited) \
     SELECT count(*)::int4 AS debited FROM debited";

/// The debit and the job's row, atomically (its first event follows once Replicate has
/// named it). Until Replicate names the job, its debit carries the row's id.
pub async fn record_pending(
    conn: &mut Connection,
    user_id: &str,
    new: &NewJob,
) -> Result<Job, JobsError> {
    let id = new_row_id(new.kind);
    let Debited { debited } = match new.kind {
        JobKind::Training => {
            statement(DEBIT_TRAINING)
                .bind::<Integer, _>(new.cost)
                .bind::<Text, _>(user_id)
                .bind::<Text, _>(&id)
                .bind::<Text, _>(&new.text)
                .bind::<Text, _>(DEBIT)
                .get_result(conn)
                .await
        }
        JobKind::Generation | JobKind::Upscale => {
            statement(DEBIT_GENERATION)
                .bind::<Integer, _>(new.cost)
                .bind::<Text, _>(user_id)
                .bind::<Text, _>(&id)
                .bind::<Text, _>(&new.text)
                .bind::<Nullable<Text>, _>(new.model.as_ref().map(|m| m.id.as_str()))
                .bind::<Nullable<Text>, _>(new.model.as_ref().map(|m| m.name.as_str()))
                .bind::<Nullable<Text>, _>(new.source_id.as_deref())
                .bind::<Text, _>(DEBIT)
                .get_result(conn)
                .await
        }
    }?;
    if debited == 0 {
        let balance = credits_of(conn, user_id).await?;
        return Err(JobsError::InsufficientCredits(format!(
            "a {} costs {} credits and your balance is {balance}",
            new.kind, new.cost
        )));
    }
    Ok(Job {
        kind: new.kind,
        job_id: id.clone(),
        id,
        user_id: user_id.to_owned(),
        status: "PENDING".into(),
    })
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
