//! Many webhooks' changes in one transaction, with set-based statements: the worker's
//! batches. The same ledger as [`apply`](crate::jobs::apply), in a handful of statements
//! per batch instead of four or five per change:
//!
//! 1. the job rows, moved with one `UPDATE … FROM unnest(…)` per table and *round* (round
//!    *k* holds every job's *k*-th move of the batch, so one statement never touches a row
//!    twice), each only if the row still holds the status the move was decided on, and
//!    each locking its rows in id order first;
//! 2. then, in one statement ([`settle`]): the refunds, `INSERT … ON CONFLICT DO NOTHING`
//!    (at most one per job, ever); the users, an `UPDATE` taking each user's next `seq`s
//!    and adding the refunds; the events, an `INSERT`, numbered in the batch's order.
//!
//! The transaction is [`Pipelined`]: `BEGIN` travels with the first `UPDATE` and `COMMIT`
//! with the settling statement, so a batch whose jobs each move once is two round trips.
//!
//! A job whose row did not hold the expected status when the first round reached it (a
//! webhook of the same job on another worker, or the jobs API, got there first) is left
//! untouched by this transaction and reported [`MoveOutcome::Raced`]: the caller decides
//! its webhooks again, one at a time, after the commit.

use std::collections::{HashMap, HashSet};

use diesel::sql_types::{Array, BigInt, Bool, Integer, Jsonb, Nullable, Text};
use diesel_async::RunQueryDsl;
use futures_util::FutureExt;

use crate::db::pipelined::Pipelined;
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
    // `BEGIN` goes out with the first move, `COMMIT` with the settling: a batch of one
    // round is two round trips.
    let mut tx = Pipelined::open(conn);
    let states = move_rows(&mut tx, moves).await?;
    let applied: Vec<(usize, JobState)> = states
        .into_iter()
        .enumerate()
        .filter_map(|(index, state)| state.map(|state| (index, state)))
        .collect();
    let numbered = if applied.is_empty() {
        // Every job raced: nothing to settle, nothing written.
        tx.rollback().await?;
        Vec::new()
    } else {
        settle(&mut tx, moves, &applied).await?
    };

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
    tx: &mut Pipelined<'_>,
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
        let mut moved = update_generations(tx, moves, &generations).await?;
        moved.extend(update_trainings(tx, moves, &trainings).await?);
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

/// Moves a round's generations. The rows are locked in id order first (`locked`), so two
/// batches sharing jobs (one job's `processing` in one, its `failed` in the other) queue
/// behind each other instead of deadlocking: an `UPDATE … FROM unnest(…)` alone locks in
/// whatever order its plan visits the rows, which differs with the batch's size. `NO KEY
/// UPDATE` is the lock an `UPDATE` of non-key columns takes: it does not conflict with the
/// `KEY SHARE` locks that inserts referencing the row (refunds, events) hold. Locking in
/// the same statement saves the round trip a separate lock would cost.
async fn update_generations(
    tx: &mut Pipelined<'_>,
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
    let query = statement(
        "WITH locked AS (SELECT id FROM generations WHERE id = ANY($1) ORDER BY id FOR NO KEY UPDATE) \
         UPDATE generations AS g SET status = u.status, updated_at = now(), \
           completed_at = CASE WHEN u.terminal THEN now() ELSE g.completed_at END, \
           image_urls = CASE WHEN u.image_urls IS NULL THEN g.image_urls \
             ELSE ARRAY(SELECT jsonb_array_elements_text(u.image_urls)) END, \
           thumb_urls = CASE WHEN u.thumb_urls IS NULL THEN g.thumb_urls \
             ELSE ARRAY(SELECT jsonb_array_elements_text(u.thumb_urls)) END, \
           error_message = COALESCE(u.error, g.error_message) \
         FROM unnest($1::text[], $2::text[], $3::text[], $4::bool[], $5::jsonb[], $6::jsonb[], $7::text[]) \
           AS u(id, expected, status, terminal, image_urls, thumb_urls, error), locked \
         WHERE g.id = u.id AND locked.id = u.id AND g.status = u.expected \
         RETURNING g.id, g.job_id, g.prompt, g.status, g.credits_used, g.image_urls, \
           g.error_message, g.created_at, g.thumb_urls, g.model_id, g.model_name, g.source_id",
    )
    .bind::<Array<Text>, _>(moved.ids)
    .bind::<Array<Text>, _>(moved.expected)
    .bind::<Array<Text>, _>(moved.statuses)
    .bind::<Array<Bool>, _>(moved.terminal)
    .bind::<Array<Nullable<Jsonb>>, _>(steps.clone().map(|s| images(s, false)).collect::<Vec<_>>())
    .bind::<Array<Nullable<Jsonb>>, _>(steps.clone().map(|s| images(s, true)).collect::<Vec<_>>())
    .bind::<Array<Nullable<Text>>, _>(steps.map(|s| error_of(&s.change)).collect::<Vec<_>>());
    let rows: Vec<GenerationRow> = tx
        .run(|conn| async move { query.load(&mut { conn }).await }.boxed())
        .await?;
    Ok(rows
        .into_iter()
        .map(|row| (row.id.clone(), JobState::from(row)))
        .collect())
}

/// Moves a round's trainings, locked in id order as [`update_generations`] does.
async fn update_trainings(
    tx: &mut Pipelined<'_>,
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
    let query = statement(
        "WITH locked AS (SELECT id FROM ai_models WHERE id = ANY($1) ORDER BY id FOR NO KEY UPDATE) \
         UPDATE ai_models AS m SET status = u.status, updated_at = now(), \
           completed_at = CASE WHEN u.terminal THEN now() ELSE m.completed_at END, \
           model_version = COALESCE(u.model_version, m.model_version), \
           weights_url = COALESCE(u.weights_url, m.weights_url), \
           error_message = COALESCE(u.error, m.error_message) \
         FROM unnest($1::text[], $2::text[], $3::text[], $4::bool[], $5::text[], $6::text[], $7::text[]) \
           AS u(id, expected, status, terminal, model_version, weights_url, error), locked \
         WHERE m.id = u.id AND locked.id = u.id AND m.status = u.expected \
         RETURNING m.id, m.job_id, m.name, m.status, m.credits_used, m.model_version, \
           m.weights_url, m.error_message, m.created_at",
    )
    .bind::<Array<Text>, _>(moved.ids)
    .bind::<Array<Text>, _>(moved.expected)
    .bind::<Array<Text>, _>(moved.statuses)
    .bind::<Array<Bool>, _>(moved.terminal)
    .bind::<Array<Nullable<Text>>, _>(steps.clone().map(|s| outputs(s).0).collect::<Vec<_>>())
    .bind::<Array<Nullable<Text>>, _>(steps.clone().map(|s| outputs(s).1).collect::<Vec<_>>())
    .bind::<Array<Nullable<Text>>, _>(steps.map(|s| error_of(&s.change)).collect::<Vec<_>>());
    let rows: Vec<TrainingRow> = tx
        .run(|conn| async move { query.load(&mut { conn }).await }.boxed())
        .await?;
    Ok(rows
        .into_iter()
        .map(|row| (row.id.clone(), JobState::from(row)))
        .collect())
}

#[derive(diesel::QueryableByName)]
struct Settled {
    #[diesel(sql_type = BigInt)]
    ord: i64,
    #[diesel(sql_type = BigInt)]
    seq: i64,
    #[diesel(sql_type = Integer)]
    credits: i32,
    #[diesel(sql_type = Integer)]
    refunded: i32,
}

/// Step 2, one statement: the refunds, the users' `seq`s and balances, and the
/// events, for each applied move (in `applied`'s order). Returns each move's refund and
/// event.
///
/// A move of a job ending failed or cancelled owes the job's `credits_used`; it is given
/// back only the first time (`ON CONFLICT DO NOTHING`). Each user's events take the
/// user's next `seq`s in the batch's order, and each carries the balance right after its
/// own refund. The event is serialised here with `seq`, `credits` and `refunded` at 0;
/// PostgreSQL sets those three top-level fields once it knows them, so the stored payload
/// is the event built from the returned numbers (one round trip where the refunds, the
/// users and the events took three).
async fn settle(
    tx: &mut Pipelined<'_>,
    moves: &[Move],
    applied: &[(usize, JobState)],
) -> Result<Vec<(i32, StoredEvent)>, ApplyError> {
    let steps = || applied.iter().map(|(i, state)| (&moves[*i], state));
    let owed = |step: &Move, state: &JobState| {
        if step.change.status().refunds() {
            state.credits_used().max(0)
        } else {
            0
        }
    };
    let templates: Vec<serde_json::Value> = steps()
        .map(|(step, state)| {
            serde_json::to_value(Event::status_changed(
                0,
                &step.job.user_id,
                0,
                0,
                state.clone(),
            ))
            .expect("events serialise")
        })
        .collect();
    let query = statement(
        "WITH e AS ( \
           SELECT * FROM unnest($1::text[], $2::text[], $3::int4[], $4::jsonb[]) \
             WITH ORDINALITY AS e(user_id, job_id, owed, payload, ord)), \
         refunded AS ( \
           INSERT INTO credit_transactions (user_id, amount, kind, job_id) \
           SELECT user_id, owed, $5, job_id FROM e WHERE owed > 0 \
           ON CONFLICT (job_id, kind) DO NOTHING \
           RETURNING job_id, amount), \
         given AS ( \
           SELECT e.ord, e.user_id, e.payload, COALESCE(r.amount, 0) AS refund FROM e \
           LEFT JOIN refunded r ON r.job_id = e.job_id AND e.ord = \
             (SELECT min(o.ord) FROM e AS o WHERE o.job_id = e.job_id AND o.owed > 0)), \
         per_user AS ( \
           SELECT user_id, count(*) AS events, sum(refund)::int4 AS refunds \
           FROM given GROUP BY user_id), \
         locked AS ( \
           SELECT id FROM users WHERE id IN (SELECT user_id FROM per_user) \
           ORDER BY id FOR NO KEY UPDATE), \
         before AS ( \
           UPDATE users AS u \
           SET event_seq = u.event_seq + p.events, credits = u.credits + p.refunds \
           FROM per_user AS p, locked WHERE u.id = p.user_id AND locked.id = p.user_id \
           RETURNING u.id, u.event_seq - p.events AS seq, u.credits - p.refunds AS credits), \
         numbered AS ( \
           SELECT g.ord, g.user_id, g.payload, g.refund::int4 AS refunded, \
             b.seq + row_number() OVER w AS seq, \
             (b.credits + sum(g.refund) OVER w)::int4 AS credits \
           FROM given AS g LEFT JOIN before AS b ON b.id = g.user_id \
           WINDOW w AS (PARTITION BY g.user_id ORDER BY g.ord)), \
         stored AS ( \
           INSERT INTO job_events (user_id, seq, payload) \
           SELECT user_id, seq, \
             payload || jsonb_build_object('seq', seq, 'credits', credits, 'refunded', refunded) \
           FROM numbered) \
         SELECT ord, seq, credits, refunded FROM numbered ORDER BY ord",
    )
    .bind::<Array<Text>, _>(
        steps()
            .map(|(step, _)| step.job.user_id.as_str())
            .collect::<Vec<_>>(),
    )
    .bind::<Array<Text>, _>(
        steps()
            .map(|(step, _)| step.job.job_id.as_str())
            .collect::<Vec<_>>(),
    )
    .bind::<Array<Integer>, _>(
        steps()
            .map(|(step, state)| owed(step, state))
            .collect::<Vec<_>>(),
    )
    .bind::<Array<Jsonb>, _>(templates)
    .bind::<Text, _>(REFUND);
    let rows: Vec<Settled> = tx
        .commit_with(|conn| async move { query.load(&mut { conn }).await }.boxed())
        .await?;
    // A move whose user has no row gets no number, and its event's `NULL` `seq` fails the
    // insert, so the statement fails and the transaction is rolled back; a short answer
    // would be the same error the one-at-a-time path reports.
    if rows.len() != applied.len() {
        return Err(DbError::Query(diesel::result::Error::NotFound).into());
    }
    Ok(rows
        .into_iter()
        .zip(steps())
        .zip(1..)
        .map(|((row, (step, state)), ord)| {
            // One row per move, in `ord` order: row k is the k-th applied move.
            debug_assert_eq!(row.ord, ord);
            let user_id = &step.job.user_id;
            let event =
                Event::status_changed(row.seq, user_id, row.credits, row.refunded, state.clone());
            (
                row.refunded,
                StoredEvent {
                    user_id: user_id.clone(),
                    seq: row.seq,
                    event,
                },
            )
        })
        .collect())
}
