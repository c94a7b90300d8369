//! Many webhooks' changes in one transaction, with set-based statements: the worker's
//! batches. The same ledger as [`apply`](crate::jobs::apply), in a handful of statements
//! per batch instead of four or five per change:
//!
//! 1. the job rows, moved with one `UPDATE … FROM unnest(…)` per table and *round* (round
//!    *k* holds every job's *k*-th move of the batch, so one statement never touches a row
//!    twice), each only if the row still holds the status the move was decided on;
//! 2. the refunds, one `INSERT … ON CONFLICT DO NOTHING` (at most one per job, ever);
//! 3. the users, one `UPDATE` taking each user's next `seq`s and adding the refunds;
//! 4. the events, one `INSERT`, numbered in the batch's order.
//!
//! A job whose row did not hold the expected status when the first round reached it (a
//! webhook of the same job on another worker, or the jobs API, got there first) is left
//! untouched by this transaction and reported [`MoveOutcome::Raced`]: the caller decides
//! its webhooks again, one at a time, after the commit.

use std::collections::{HashMap, HashSet};

use diesel::sql_types::{Array, BigInt, Bool, Integer, Jsonb, Nullable, Text};
use diesel_async::{AsyncConnection, RunQueryDsl};

use crate::db::statement::statement;
use crate::db::{Connection, DbError};
use crate::events::{Event, JobState};
use crate::jobs::apply::{Applied, ApplyError, Change, error_of};
use crate::jobs::event_log::StoredEvent;
use crate::jobs::refund::REFUND;
use crate::jobs::transition::JobStatus;
use crate::jobs::{GenerationRow, Job, TrainingRow};

/// One status change of a batch: `job` from `from` (the status the decision was made on)
/// to `change.status()`.
#[derive(Debug, Clone)]
pub struct Move {
    pub job: Job,
    pub from: JobStatus,
    pub change: Change,
}

#[derive(Debug, Clone, PartialEq)]
pub enum MoveOutcome {
    Applied(Box<Applied>),
    /// The row held another status than `from`: nothing was changed for this job in this
    /// transaction (nor any later move of it in the batch).
    Raced,
}

/// Applies `moves` (in the order their webhooks were taken; a job's moves chained, each
/// `from` the previous one's target) in one transaction. Returns one outcome per move.
pub async fn apply_many(
    conn: &mut Connection,
    moves: &[Move],
) -> Result<Vec<MoveOutcome>, ApplyError> {
    if moves.is_empty() {
        return Ok(Vec::new());
    }
    conn.transaction(async |conn| apply_in_transaction(conn, moves).await)
        .await
}

async fn apply_in_transaction(
    conn: &mut Connection,
    moves: &[Move],
) -> Result<Vec<MoveOutcome>, ApplyError> {
    let states = move_rows(conn, moves).await?;
    let applied: Vec<(usize, JobState)> = states
        .into_iter()
        .enumerate()
        .filter_map(|(index, state)| state.map(|state| (index, state)))
        .collect();
    let refunded = refund_all(conn, moves, &applied).await?;
    let numbered = number_events(conn, moves, &applied, &refunded).await?;
    store_events(conn, &numbered).await?;

    let mut outcomes = vec![MoveOutcome::Raced; moves.len()];
    for ((index, _), (refund, event)) in applied.iter().zip(numbered) {
        let step = &moves[*index];
        outcomes[*index] = MoveOutcome::Applied(Box::new(Applied {
            from: step.from,
            to: step.change.status(),
            refunded: refund,
            event,
        }));
    }
    Ok(outcomes)
}

/// Step 1: the rows' new states, `None` for the moves of a raced job.
async fn move_rows(
    conn: &mut Connection,
    moves: &[Move],
) -> Result<Vec<Option<JobState>>, ApplyError> {
    let mut round_of = Vec::with_capacity(moves.len());
    let mut seen: HashMap<&str, usize> = HashMap::new();
    for step in moves {
        let round = seen.entry(step.job.id.as_str()).or_default();
        round_of.push(*round);
        *round += 1;
    }
    let rounds = round_of.iter().max().map_or(0, |last| last + 1);
    let mut states: Vec<Option<JobState>> = vec![None; moves.len()];
    let mut raced: HashSet<&str> = HashSet::new();
    for round in 0..rounds {
        // Sorted by row id, so that two batches lock shared rows in the same order.
        let mut members: Vec<usize> = (0..moves.len())
            .filter(|&i| round_of[i] == round && !raced.contains(moves[i].job.id.as_str()))
            .collect();
        members.sort_by(|&a, &b| moves[a].job.id.cmp(&moves[b].job.id));
        let (trainings, generations): (Vec<usize>, Vec<usize>) = members
            .into_iter()
            .partition(|&i| moves[i].job.is_training());
        // One row needs no order: the UPDATE below locks it as the lock would, and saves
        // a round trip on the small batches of a lightly loaded worker.
        if round == 0 && generations.len() + trainings.len() > 1 {
            lock_in_order(conn, moves, &generations, &trainings).await?;
        }
        let mut moved = update_generations(conn, moves, &generations).await?;
        moved.extend(update_trainings(conn, moves, &trainings).await?);
        for i in generations.into_iter().chain(trainings) {
            match moved.remove(moves[i].job.id.as_str()) {
                Some(state) => states[i] = Some(state),
                // Locked by this transaction since its first move: nobody could change it.
                None if round > 0 => {
                    return Err(ApplyError::ChangedWhileLocked(moves[i].job.id.clone()));
                }
                None => {
                    raced.insert(moves[i].job.id.as_str());
                }
            }
        }
    }
    Ok(states)
}

/// Locks the batch's job rows in id order before anything else. Two batches sharing jobs
/// (one job's `processing` in one, its `failed` in the other) then queue behind each other
/// instead of deadlocking: an `UPDATE … FROM unnest(…)` locks in whatever order its plan
/// visits the rows, which differs with the batch's size. `NO KEY UPDATE` is the lock an
/// `UPDATE` of non-key columns takes: it does not conflict with the `KEY SHARE` locks that
/// inserts referencing the row (refunds, events) hold.
async fn lock_in_order(
    conn: &mut Connection,
    moves: &[Move],
    generations: &[usize],
    trainings: &[usize],
) -> Result<(), DbError> {
    let tables = [
        (
            "SELECT 1 FROM generations WHERE id = ANY($1) ORDER BY id FOR NO KEY UPDATE",
            generations,
        ),
        (
            "SELECT 1 FROM ai_models WHERE id = ANY($1) ORDER BY id FOR NO KEY UPDATE",
            trainings,
        ),
    ];
    for (lock, members) in tables {
        if members.is_empty() {
            continue;
        }
        let ids: Vec<&str> = members.iter().map(|&i| moves[i].job.id.as_str()).collect();
        statement(lock)
            .bind::<Array<Text>, _>(ids)
            .execute(conn)
            .await?;
    }
    Ok(())
}

/// The columns every job table's move binds: row, expected status, new status, whether
/// it ends the job.
struct Moved<'a> {
    ids: Vec<&'a str>,
    expected: Vec<&'static str>,
    statuses: Vec<&'static str>,
    terminal: Vec<bool>,
}

impl<'a> Moved<'a> {
    fn of(moves: &'a [Move], members: &[usize]) -> Self {
        let steps = || members.iter().map(|&i| &moves[i]);
        Self {
            ids: steps().map(|s| s.job.id.as_str()).collect(),
            expected: steps().map(|s| s.from.as_str()).collect(),
            statuses: steps().map(|s| s.change.status().as_str()).collect(),
            terminal: steps().map(|s| s.change.status().is_terminal()).collect(),
        }
    }
}

async fn update_generations(
    conn: &mut Connection,
    moves: &[Move],
    members: &[usize],
) -> Result<HashMap<String, JobState>, DbError> {
    if members.is_empty() {
        return Ok(HashMap::new());
    }
    let steps = members.iter().map(|&i| &moves[i]);
    let moved = Moved::of(moves, members);
    let images = |step: &Move, thumbs: bool| match &step.change {
        Change::ImagesStored {
            image_urls,
            thumb_urls,
        } => Some(serde_json::json!(if thumbs {
            thumb_urls
        } else {
            image_urls
        })),
        _ => None,
    };
    let rows: Vec<GenerationRow> = statement(
        "UPDATE generations AS g SET status = u.status, updated_at = now(), \
           completed_at = CASE WHEN u.terminal THEN now() ELSE g.completed_at END, \
           image_urls = CASE WHEN u.image_urls IS NULL THEN g.image_urls \
             ELSE ARRAY(SELECT jsonb_array_elements_text(u.image_urls)) END, \
           thumb_urls = CASE WHEN u.thumb_urls IS NULL THEN g.thumb_urls \
             ELSE ARRAY(SELECT jsonb_array_elements_text(u.thumb_urls)) END, \
           error_message = COALESCE(u.error, g.error_message) \
         FROM unnest($1::text[], $2::text[], $3::text[], $4::bool[], $5::jsonb[], $6::jsonb[], $7::text[]) \
           AS u(id, expected, status, terminal, image_urls, thumb_urls, error) \
         WHERE g.id = u.id AND g.status = u.expected \
         RETURNING g.id, g.job_id, g.prompt, g.status, g.credits_used, g.image_urls, \
           g.error_message, g.created_at, g.thumb_urls, g.model_id, g.model_name, g.source_id",
    )
    .bind::<Array<Text>, _>(moved.ids)
    .bind::<Array<Text>, _>(moved.expected)
    .bind::<Array<Text>, _>(moved.statuses)
    .bind::<Array<Bool>, _>(moved.terminal)
    .bind::<Array<Nullable<Jsonb>>, _>(steps.clone().map(|s| images(s, false)).collect::<Vec<_>>())
    .bind::<Array<Nullable<Jsonb>>, _>(steps.clone().map(|s| images(s, true)).collect::<Vec<_>>())
    .bind::<Array<Nullable<Text>>, _>(steps.map(|s| error_of(&s.change)).collect::<Vec<_>>())
    .load(conn)
    .await?;
    Ok(rows
        .into_iter()
        .map(|row| (row.id.clone(), JobState::from(row)))
        .collect())
}

async fn update_trainings(
    conn: &mut Connection,
    moves: &[Move],
    members: &[usize],
) -> Result<HashMap<String, JobState>, DbError> {
    if members.is_empty() {
        return Ok(HashMap::new());
    }
    let steps = members.iter().map(|&i| &moves[i]);
    let moved = Moved::of(moves, members);
    let outputs = |step: &Move| match &step.change {
        Change::TrainingSucceeded {
            model_version,
            weights_url,
        } => (model_version.clone(), weights_url.clone()),
        _ => (None, None),
    };
    let rows: Vec<TrainingRow> = statement(
        "UPDATE ai_models AS m SET status = u.status, updated_at = now(), \
           completed_at = CASE WHEN u.terminal THEN now() ELSE m.completed_at END, \
           model_version = COALESCE(u.model_version, m.model_version), \
           weights_url = COALESCE(u.weights_url, m.weights_url), \
           error_message = COALESCE(u.error, m.error_message) \
         FROM unnest($1::text[], $2::text[], $3::text[], $4::bool[], $5::text[], $6::text[], $7::text[]) \
           AS u(id, expected, status, terminal, model_version, weights_url, error) \
         WHERE m.id = u.id AND m.status = u.expected \
         RETURNING m.id, m.job_id, m.name, m.status, m.credits_used, m.model_version, \
           m.weights_url, m.error_message, m.created_at",
    )
    .bind::<Array<Text>, _>(moved.ids)
    .bind::<Array<Text>, _>(moved.expected)
    .bind::<Array<Text>, _>(moved.statuses)
    .bind::<Array<Bool>, _>(moved.terminal)
    .bind::<Array<Nullable<Text>>, _>(steps.clone().map(|s| outputs(s).0).collect::<Vec<_>>())
    .bind::<Array<Nullable<Text>>, _>(steps.clone().map(|s| outputs(s).1).collect::<Vec<_>>())
    .bind::<Array<Nullable<Text>>, _>(steps.map(|s| error_of(&s.change)).collect::<Vec<_>>())
    .load(conn)
    .await?;
    Ok(rows
        .into_iter()
        .map(|row| (row.id.clone(), JobState::from(row)))
        .collect())
}

#[derive(diesel::QueryableByName)]
struct Refunded {
    #[diesel(sql_type = Text)]
    job_id: String,
    #[diesel(sql_type = Integer)]
    amount: i32,
}

/// Step 2: the credits each applied move gives back (in `applied`'s order): its job's
/// `credits_used` the first time the job ends failed or cancelled, 0 otherwise.
async fn refund_all(
    conn: &mut Connection,
    moves: &[Move],
    applied: &[(usize, JobState)],
) -> Result<Vec<i32>, DbError> {
    let owed: Vec<(&Job, i32)> = applied
        .iter()
        .filter(|(i, state)| moves[*i].change.status().refunds() && state.credits_used() > 0)
        .map(|(i, state)| (&moves[*i].job, state.credits_used()))
        .collect();
    let mut given: HashMap<String, i32> = HashMap::new();
    if !owed.is_empty() {
        let rows: Vec<Refunded> = statement(
            "INSERT INTO credit_transactions (user_id, amount, kind, job_id) \
             SELECT r.user_id, r.amount, $1, r.job_id \
             FROM unnest($2::text[], $3::int4[], $4::text[]) AS r(user_id, amount, job_id) \
             ON CONFLICT (job_id, kind) DO NOTHING \
             RETURNING job_id, amount",
        )
        .bind::<Text, _>(REFUND)
        .bind::<Array<Text>, _>(
            owed.iter()
                .map(|(job, _)| job.user_id.as_str())
                .collect::<Vec<_>>(),
        )
        .bind::<Array<Integer>, _>(owed.iter().map(|(_, amount)| *amount).collect::<Vec<_>>())
        .bind::<Array<Text>, _>(
            owed.iter()
                .map(|(job, _)| job.job_id.as_str())
                .collect::<Vec<_>>(),
        )
        .load(conn)
        .await?;
        given = rows.into_iter().map(|r| (r.job_id, r.amount)).collect();
    }
    Ok(applied
        .iter()
        .map(|(i, _)| {
            let step = &moves[*i];
            if step.change.status().refunds() {
                given.remove(&step.job.job_id).unwrap_or(0)
            } else {
                0
            }
        })
        .collect())
}

#[derive(diesel::QueryableByName)]
struct UserAfter {
    #[diesel(sql_type = Text)]
    id: String,
    #[diesel(sql_type = BigInt)]
    event_seq: i64,
    #[diesel(sql_type = Integer)]
    credits: i32,
}

/// Step 3: each applied move's refund and event, numbered with its user's next `seq`s in
/// the batch's order; each event carries the balance right after its own refund.
async fn number_events(
    conn: &mut Connection,
    moves: &[Move],
    applied: &[(usize, JobState)],
    refunded: &[i32],
) -> Result<Vec<(i32, StoredEvent)>, DbError> {
    // Per user: events and credits given back in this batch; sorted, so that two batches
    // lock the users' rows in the same order.
    let mut per_user: Vec<(&str, i64, i32)> = Vec::new();
    for ((i, _), refund) in applied.iter().zip(refunded) {
        let user = moves[*i].job.user_id.as_str();
        match per_user.iter_mut().find(|(id, _, _)| *id == user) {
            Some((_, events, credits)) => {
                *events += 1;
                *credits += refund;
            }
            None => per_user.push((user, 1, *refund)),
        }
    }
    per_user.sort_unstable_by_key(|(user, _, _)| *user);
    let after: Vec<UserAfter> = statement(
        "WITH locked AS (SELECT id FROM users WHERE id = ANY($1) ORDER BY id FOR NO KEY UPDATE) \
         UPDATE users AS u SET event_seq = u.event_seq + d.events, credits = u.credits + d.refunds \
         FROM unnest($1::text[], $2::int8[], $3::int4[]) AS d(id, events, refunds), locked \
         WHERE u.id = d.id AND locked.id = d.id \
         RETURNING u.id, u.event_seq, u.credits",
    )
    .bind::<Array<Text>, _>(per_user.iter().map(|(id, _, _)| *id).collect::<Vec<_>>())
    .bind::<Array<BigInt>, _>(per_user.iter().map(|(_, n, _)| *n).collect::<Vec<_>>())
    .bind::<Array<Integer>, _>(per_user.iter().map(|(_, _, r)| *r).collect::<Vec<_>>())
    .load(conn)
    .await?;
    // Per user: the next seq to hand out and the balance before this batch's refunds.
    let mut next: HashMap<String, (i64, i32)> = HashMap::new();
    for user in after {
        let (_, events, refunds) = per_user
            .iter()
            .find(|(id, _, _)| *id == user.id)
            .expect("only the batch's users are returned");
        next.insert(
            user.id,
            (user.event_seq - events + 1, user.credits - refunds),
        );
    }
    let mut numbered = Vec::with_capacity(applied.len());
    for ((i, state), refund) in applied.iter().zip(refunded) {
        let user_id = &moves[*i].job.user_id;
        // A missing user row is the same error the one-at-a-time path reports.
        let (seq, balance) = next
            .get_mut(user_id)
            .ok_or(DbError::Query(diesel::result::Error::NotFound))?;
        *balance += refund;
        let event = Event::status_changed(*seq, user_id, *balance, *refund, state.clone());
        numbered.push((
            *refund,
            StoredEvent {
                user_id: user_id.clone(),
                seq: *seq,
                event,
            },
        ));
        *seq += 1;
    }
    Ok(numbered)
}

/// Step 4: the events, unpublished, in one statement.
async fn store_events(
    conn: &mut Connection,
    numbered: &[(i32, StoredEvent)],
) -> Result<(), DbError> {
    if numbered.is_empty() {
        return Ok(());
    }
    statement(
        "INSERT INTO job_events (user_id, seq, payload) \
         SELECT * FROM unnest($1::text[], $2::int8[], $3::jsonb[])",
    )
    .bind::<Array<Text>, _>(
        numbered
            .iter()
            .map(|(_, e)| e.user_id.as_str())
            .collect::<Vec<_>>(),
    )
    .bind::<Array<BigInt>, _>(numbered.iter().map(|(_, e)| e.seq).collect::<Vec<_>>())
    .bind::<Array<Jsonb>, _>(
        numbered
            .iter()
            .map(|(_, e)| serde_json::to_value(&e.event).expect("events serialise"))
            .collect::<Vec<_>>(),
    )
    .execute(conn)
    .await?;
    Ok(())
}
