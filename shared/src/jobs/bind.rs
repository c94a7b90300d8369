//! Binding Replicate's id to the row the jobs API created for it, and failing a row that
//! never got one.
//!
//! The jobs API debits and inserts the row first, then asks Replicate for the job with a
//! webhook URL tagged with the row's id (`?job=<row id>`, see [`crate::replicate::tagged_webhook_url`]). Whoever
//! learns Replicate's id first binds it: the jobs API from Replicate's answer, or the worker
//! from the first webhook's tag, when the answer was lost (a client hanging up is harmless,
//! but a notifier killed between Replicate's answer and storing the id is not) or simply
//! arrives after the webhook. Binding happens once, under the row's lock, and only to a row
//! still waiting for an id that this ledger debited: the tag is not signed, so it can do
//! nothing to a row that already has a job or an end.

use chrono::Utc;
use diesel::QueryResult;
use diesel::prelude::*;
use diesel_async::{AsyncConnection, RunQueryDsl};
use futures_util::FutureExt;

use crate::db::pipelined::Pipelined;
use crate::db::schema::{ai_models, credit_transactions, generations};
use crate::db::{Connection, DbError};
use crate::events::{Event, JobKind, JobState};
use crate::jobs::apply::{self, ApplyError, ApplyOutcome, Change};
use crate::jobs::event_log::{self, StoredEvent};
use crate::jobs::transition::JobStatus;
use crate::jobs::{DEBIT, GenerationRow, Job, TrainingRow, kind_of_generation};
use crate::replicate::Status;

/// What binding found.
#[derive(Debug, Clone, PartialEq)]
pub enum Binding {
    /// Bound now: the job (with Replicate's id) and its first event (`PENDING`), to publish;
    /// and whether the person asked to cancel it before it was named (then it is to be
    /// cancelled by that name).
    Bound {
        job: Job,
        event: Box<StoredEvent>,
        cancel_requested: bool,
    },
    /// Already bound to this id (the other side got there first).
    AlreadyBound(Job),
    /// The row is bound to another id, has ended, or was not debited by this ledger: it is
    /// not waiting for this job.
    NotWaiting(Job),
    /// No row has this id.
    NoRow,
}

/// The row `row_id`, locked, whichever table holds it.
async fn lock_row(conn: &Connection, row_id: &str) -> QueryResult<Option<(Job, Option<String>)>> {
    let generation = generations::table
        .find(row_id)
        .select((
            generations::user_id,
            generations::prompt,
            generations::status,
            generations::job_id,
        ))
        .for_update()
        .first::<(String, String, String, Option<String>)>(&mut { conn })
        .await
        .optional()?;
    if let Some((user_id, prompt, status, job_id)) = generation {
        let job = Job {
            kind: kind_of_generation(&prompt),
            id: row_id.to_owned(),
            user_id,
            job_id: job_id.clone().unwrap_or_else(|| row_id.to_owned()),
            status,
        };
        return Ok(Some((job, job_id)));
    }
    let training = ai_models::table
        .find(row_id)
        .select((ai_models::user_id, ai_models::status, ai_models::job_id))
        .for_update()
        .first::<(String, String, Option<String>)>(&mut { conn })
        .await
        .optional()?;
    Ok(training.map(|(user_id, status, job_id)| {
        let job = Job {
            kind: JobKind::Training,
            id: row_id.to_owned(),
            user_id,
            job_id: job_id.clone().unwrap_or_else(|| row_id.to_owned()),
            status,
        };
        (job, job_id)
    }))
}

/// Whether this ledger debited the row (its debit still carries the row's id).
async fn debited_unbound(conn: &mut Connection, row_id: &str) -> Result<bool, DbError> {
    let debits: i64 = credit_transactions::table
        .filter(credit_transactions::job_id.eq(row_id))
        .filter(credit_transactions::kind.eq(DEBIT))
        .count()
        .get_result(conn)
        .await?;
    Ok(debits > 0)
}

/// Binds Replicate id `replicate_id` to row `row_id` if the row is still waiting for one:
/// the id on the row and on its debit, and the job's first event (`PENDING`, with the
/// balance after the debit), in one transaction under the row's lock. The transaction is
/// [`Pipelined`]: `BEGIN` goes out with the row's lock and `COMMIT` with the event, five
/// round trips for a binding and two for a row that is not waiting.
pub async fn bind(
    conn: &mut Connection,
    row_id: &str,
    replicate_id: &str,
) -> Result<Binding, DbError> {
    let mut tx = Pipelined::open(conn);
    let binding = bind_locked(&mut tx, row_id, replicate_id).await?;
    if !matches!(binding, Binding::Bound { .. }) {
        // Nothing was written.
        tx.rollback().await?;
    }
    Ok(binding)
}

async fn bind_locked(
    tx: &mut Pipelined<'_>,
    row_id: &str,
    replicate_id: &str,
) -> Result<Binding, DbError> {
    let locked = tx.run(|conn| lock_row(conn, row_id).boxed()).await?;
    let Some((mut job, bound_to)) = locked else {
        return Ok(Binding::NoRow);
    };
    match bound_to.as_deref() {
        Some(id) if id == replicate_id => return Ok(Binding::AlreadyBound(job)),
        Some(_) => return Ok(Binding::NotWaiting(job)),
        None => {}
    }
    if job.status != JobStatus::Pending.as_str() {
        return Ok(Binding::NotWaiting(job));
    }
    // The debit moves to Replicate's id; a row this ledger did not debit has none to
    // move, and nothing has been written yet.
    let debits_moved = tx
        .run(|conn| {
            diesel::update(
                credit_transactions::table
                    .filter(credit_transactions::job_id.eq(row_id))
                    .filter(credit_transactions::kind.eq(DEBIT)),
            )
            .set(credit_transactions::job_id.eq(replicate_id))
            .execute(&mut { conn })
            .boxed()
        })
        .await?;
    if debits_moved == 0 {
        return Ok(Binding::NotWaiting(job));
    }
    let now = Utc::now();
    let (state, cancel_requested): (JobState, bool) = if job.is_training() {
        let (row, cancel_requested): (TrainingRow, bool) = tx
            .run(|conn| {
                diesel::update(ai_models::table.find(row_id))
                    .set((
                        ai_models::job_id.eq(replicate_id),
                        ai_models::updated_at.eq(now),
                    ))
                    .returning((
                        TrainingRow::as_returning(),
                        ai_models::cancel_requested_at.is_not_null(),
                    ))
                    .get_result(&mut { conn })
                    .boxed()
            })
            .await?;
        (row.into(), cancel_requested)
    } else {
        let (row, cancel_requested): (GenerationRow, bool) = tx
            .run(|conn| {
                diesel::update(generations::table.find(row_id))
                    .set((
                        generations::job_id.eq(replicate_id),
                        generations::updated_at.eq(now),
                    ))
                    .returning((
                        GenerationRow::as_returning(),
                        generations::cancel_requested_at.is_not_null(),
                    ))
                    .get_result(&mut { conn })
                    .boxed()
            })
            .await?;
        (row.into(), cancel_requested)
    };
    let user_id = job.user_id.clone();
    let (seq, credits) = tx
        .run(|conn| event_log::next_seq(conn, &user_id, 0).boxed())
        .await?;
    let event = Event::status_changed(seq, &job.user_id, credits, 0, state);
    let event = tx
        .commit_with(|conn| event_log::append(conn, &event).boxed())
        .await?;
    job.job_id = replicate_id.to_owned();
    Ok(Binding::Bound {
        job,
        event: Box::new(event),
        cancel_requested,
    })
}

/// Fails and refunds row `row_id` if it is still waiting for Replicate's id and this ledger
/// debited it — checked under the row's lock, so a binding that commits first wins. `None`
/// when the row is not (or no longer) such a row.
pub async fn fail_unbound(
    conn: &mut Connection,
    row_id: &str,
    error: String,
) -> Result<Option<apply::Applied>, ApplyError> {
    conn.transaction(async |conn| {
        let Some((job, bound_to)) = lock_row(conn, row_id).await? else {
            return Ok(None);
        };
        if bound_to.is_some()
            || job.status != JobStatus::Pending.as_str()
            || !debited_unbound(conn, row_id).await?
        {
            return Ok(None);
        }
        match apply::apply(conn, &job, &Status::Failed, Change::Failed { error }).await? {
            ApplyOutcome::Applied(applied) => Ok(Some(*applied)),
            ApplyOutcome::Ignored(_) => Ok(None),
        }
    })
    .await
}
