//! Processing a batch of webhooks (what the consumer had ready, up to `WORKER_BATCH_SIZE`)
//! with one lookup, one transaction and one round of publishes, ending exactly where
//! processing them one at a time in the same order would:
//!
//! 1. parse each; find every job with one lookup (a webhook whose job is not found goes
//!    through the one-at-a-time lookup, which may bind it by its URL's tag);
//! 2. decide each webhook against its job's status as the batch leaves it (a job's
//!    `processing` then `succeeded` in one batch are two moves, the duplicate after them
//!    is ignored);
//! 3. prepare the moves (downloads, storage) concurrently, outside any transaction;
//! 4. apply every move with [`apply_many`]: one transaction, set-based statements. A
//!    transaction that fails for good is split in two halves of jobs, each tried alone,
//!    down to a single job, whose webhooks are then processed one at a time — a poison
//!    webhook fails alone and the rest are applied once;
//! 5. publish the batch's events together.
//!
//! A job whose row changed under the batch (another worker, the jobs API), or whose move
//! could not be prepared, has its remaining webhooks processed one at a time after the
//! commit, in order: their decisions rested on a status the batch did not reach.

use std::collections::{HashMap, HashSet};

use futures_util::future::join_all;
use shared::db;
use shared::jobs::Job;
use shared::jobs::apply::{Applied, ApplyError};
use shared::jobs::batch::{Move, MoveOutcome, apply_many};
use shared::jobs::transition::{Decision, Ignored, JobStatus, decide};
use shared::replicate::{JobRef, Prediction, Status};

use crate::classify;
use crate::process::{Effect, ProcessError, Processed, Processor};

/// Times a batch's transaction is tried when it fails for a reason that may pass (a
/// deadlock with another worker's batch, a dropped connection) before its webhooks are
/// processed one at a time.
const TRANSIENT_TRIES: usize = 3;

/// One webhook of a batch, as the consumer took it.
#[derive(Debug, Clone, Copy)]
pub struct Incoming<'a> {
    pub webhook_id: &'a str,
    pub body: &'a [u8],
    /// The jobs API's tag from the URL the webhook was posted to, if any.
    pub tag: Option<&'a str>,
}

/// A webhook whose job was found, with what the batch decided for it.
struct Planned {
    index: usize,
    prediction: Prediction,
    job: Job,
    /// The job's status as the batch had left it when this webhook's turn came.
    found: JobStatus,
    plan: Plan,
}

enum Plan {
    Ignore(Ignored),
    MoveTo(JobStatus),
}

/// Splits a batch (by position) into the webhooks of jobs with nothing to fetch, and those
/// of jobs with a `succeeded` webhook in the batch, whose outputs are downloaded and stored
/// first: the consumer processes the two parts side by side and gives the slot back once
/// the first is settled, so that a slow download holds up neither the rest of its batch nor
/// the next batch. A job's webhooks stay together and in order, each job in one part.
pub fn split_by_downloads(batch: &[Incoming<'_>]) -> (Vec<usize>, Vec<usize>) {
    let refs: Vec<Option<JobRef<'_>>> = batch
        .iter()
        .map(|item| JobRef::parse(item.body).ok())
        .collect();
    let fetching: HashSet<&str> = refs
        .iter()
        .flatten()
        .filter(|job| job.status == Status::Succeeded)
        .map(|job| job.id.as_ref())
        .collect();
    (0..batch.len()).partition(|&i| {
        !refs[i]
            .as_ref()
            .is_some_and(|job| fetching.contains(job.id.as_ref()))
    })
}

impl Processor {
    /// Processes `batch` in effect as [`Processor::process`] would one by one, in order.
    /// Returns one result per webhook, in the batch's order.
    pub async fn process_batch(
        &self,
        batch: &[Incoming<'_>],
    ) -> Vec<Result<Processed, ProcessError>> {
        metrics::histogram!("worker_batch_webhooks").record(batch.len() as f64);
        let mut results: Vec<Option<Result<Processed, ProcessError>>> =
            batch.iter().map(|_| None).collect();

        let Some(planned) = self.plan(batch, &mut results).await else {
            return self.one_at_a_time(batch).await;
        };

        // Prepare every move concurrently (downloads), then drop the jobs whose move
        // could not be prepared from the batch, from that move on.
        let prepared = join_all(planned.iter().map(|entry| async {
            match entry.plan {
                Plan::MoveTo(target) => Some(
                    self.prepare_change(
                        batch[entry.index].webhook_id,
                        &entry.job,
                        &entry.prediction,
                        target,
                    )
                    .await,
                ),
                Plan::Ignore(_) => None,
            }
        }))
        .await;
        let mut alone: HashSet<String> = HashSet::new();
        let mut moves = Vec::new();
        let mut move_of: Vec<Option<usize>> = Vec::with_capacity(planned.len());
        for (entry, prepared) in planned.iter().zip(prepared) {
            move_of.push(None);
            if alone.contains(&entry.job.id) {
                continue;
            }
            match prepared {
                Some(Ok(change)) => {
                    *move_of.last_mut().expect("pushed") = Some(moves.len());
                    moves.push(Move {
                        job: entry.job.clone(),
                        from: entry.found,
                        change,
                    });
                }
                Some(Err(err)) => {
                    results[entry.index] = Some(Err(err));
                    alone.insert(entry.job.id.clone());
                }
                None => {}
            }
        }

        let applied = self.commit(&moves).await;
        for (step, outcome) in moves.iter().zip(&applied) {
            if outcome.is_none() {
                alone.insert(step.job.id.clone());
            }
        }
        join_all(
            applied
                .iter()
                .flatten()
                .map(|applied| self.publish_stored(&applied.event)),
        )
        .await;

        // A job left to be processed alone is so from its first webhook that was not
        // settled above; the ones before stand (an ignore decided on an older status
        // holds on a newer one: statuses only move forward).
        let mut deferred: Vec<usize> = Vec::new();
        let mut deferring: HashSet<&str> = HashSet::new();
        // The batch's progress, published together (in order, on one channel) rather than
        // each waiting for the confirm of the one before.
        let mut live = Vec::new();
        for (entry, step) in planned.iter().zip(&move_of) {
            let job = entry.job.id.as_str();
            if results[entry.index].is_some() {
                // Its move could not be prepared: what follows it waits for it.
                deferring.insert(job);
                continue;
            }
            let effect = match (&entry.plan, step) {
                _ if deferring.contains(job) => None,
                (Plan::Ignore(reason), _) => Some(Effect::Ignored(*reason)),
                (Plan::MoveTo(_), Some(step)) => applied[*step]
                    .as_ref()
                    .map(|applied| self.settled(&entry.job, applied)),
                (Plan::MoveTo(_), None) => None,
            };
            let Some(effect) = effect else {
                deferring.insert(job);
                deferred.push(entry.index);
                continue;
            };
            live.extend(self.progress_event(&entry.job, &entry.prediction, &effect));
            results[entry.index] = Some(Ok(Processed {
                job_id: entry.job.job_id.clone(),
                row_id: entry.job.id.clone(),
                kind: entry.job.kind,
                found: entry.found,
                status: entry.prediction.status.clone(),
                effect,
            }));
        }
        join_all(live.iter().map(|event| self.publish_live(event))).await;
        if !deferred.is_empty() {
            metrics::counter!("worker_batch_alone_total").increment(deferred.len() as u64);
        }
        for index in deferred {
            let item = batch[index];
            results[index] = Some(self.process(item.webhook_id, item.body, item.tag).await);
        }
        results
            .into_iter()
            .map(|result| result.expect("every webhook of the batch settled"))
            .collect()
    }

    /// Steps 1 and 2: parsed, found and decided, in the batch's order. A webhook that
    /// cannot be parsed or whose job is unknown gets its result here. `None` when the
    /// lookup itself failed (the database is away): then each webhook is processed alone
    /// and reports its own error.
    async fn plan(
        &self,
        batch: &[Incoming<'_>],
        results: &mut [Option<Result<Processed, ProcessError>>],
    ) -> Option<Vec<Planned>> {
        let mut parsed = Vec::with_capacity(batch.len());
        for (index, item) in batch.iter().enumerate() {
            match serde_json::from_slice::<Prediction>(item.body) {
                Ok(prediction) => parsed.push((index, prediction)),
                Err(err) => results[index] = Some(Err(ProcessError::NotAPrediction(err))),
            }
        }
        let ids: Vec<&str> = parsed.iter().map(|(_, p)| p.id.as_str()).collect();
        let mut jobs = match db::connection(&self.pool).await {
            Ok(mut conn) => classify::find_jobs(&mut conn, &ids).await.ok()?,
            Err(_) => return None,
        };

        let mut status_of: HashMap<String, JobStatus> = HashMap::new();
        let mut planned = Vec::with_capacity(parsed.len());
        for (index, prediction) in parsed {
            let item = batch[index];
            let job = match jobs.get(&prediction.id) {
                Some(job) => job.clone(),
                None => match self
                    .find_or_bind(item.webhook_id, &prediction, item.tag)
                    .await
                {
                    Ok(job) => {
                        jobs.insert(prediction.id.clone(), job.clone());
                        job
                    }
                    Err(err) => {
                        results[index] = Some(Err(err));
                        continue;
                    }
                },
            };
            tracing::info!(webhook_id = %item.webhook_id, kind = %job.kind, job_id = %job.job_id, "🎯 Detected job type: {} for job {}", job.kind, job.job_id);
            let found = match status_of.get(&job.id) {
                Some(status) => *status,
                None => match classify::stored_status(&job) {
                    Ok(status) => status,
                    Err(err) => {
                        results[index] = Some(Err(err.into()));
                        continue;
                    }
                },
            };
            let plan = match decide(found, &prediction.status) {
                Decision::Ignore(reason) => Plan::Ignore(reason),
                Decision::MoveTo(target) => {
                    status_of.insert(job.id.clone(), target);
                    Plan::MoveTo(target)
                }
            };
            planned.push(Planned {
                index,
                prediction,
                job,
                found,
                plan,
            });
        }
        Some(planned)
    }

    /// Step 4: every move applied in one transaction; `None` for a move left to be
    /// processed alone (its job raced, or its transaction failed for good).
    async fn commit(&self, moves: &[Move]) -> Vec<Option<Box<Applied>>> {
        if moves.is_empty() {
            return Vec::new();
        }
        let mut tries = 0;
        let error = loop {
            tries += 1;
            let result = match db::connection(&self.pool).await {
                Ok(mut conn) => apply_many(&mut conn, moves).await,
                Err(err) => Err(ApplyError::Db(err)),
            };
            match result {
                Ok(outcomes) => {
                    return outcomes
                        .into_iter()
                        .map(|outcome| match outcome {
                            MoveOutcome::Applied(applied) => Some(applied),
                            MoveOutcome::Raced => None,
                        })
                        .collect();
                }
                Err(err) if err.is_transient() && tries < TRANSIENT_TRIES => {
                    tracing::debug!(moves = moves.len(), tries, error = %err, "batch transaction failed; trying again");
                }
                Err(err) => break err,
            }
        };
        let mut jobs: Vec<&str> = Vec::new();
        for step in moves {
            if !jobs.contains(&step.job.id.as_str()) {
                jobs.push(&step.job.id);
            }
        }
        if error.is_transient() || jobs.len() == 1 {
            tracing::warn!(moves = moves.len(), jobs = jobs.len(), error = %shared::telemetry::error_chain(&error), "batch transaction failed; its webhooks are processed one at a time");
            return vec![None; moves.len()];
        }
        // Split by jobs (a job's moves stay together, in order) and try each half alone.
        tracing::warn!(moves = moves.len(), jobs = jobs.len(), error = %shared::telemetry::error_chain(&error), "batch transaction refused; splitting it to isolate the cause");
        let first: HashSet<&str> = jobs[..jobs.len() / 2].iter().copied().collect();
        let (left, right): (Vec<usize>, Vec<usize>) =
            (0..moves.len()).partition(|&i| first.contains(moves[i].job.id.as_str()));
        let mut outcomes = vec![None; moves.len()];
        for half in [left, right] {
            let steps: Vec<Move> = half.iter().map(|&i| moves[i].clone()).collect();
            let settled = Box::pin(self.commit(&steps)).await;
            for (i, outcome) in half.into_iter().zip(settled) {
                outcomes[i] = outcome;
            }
        }
        outcomes
    }

    /// Every webhook of the batch on its own: when the batch's lookup could not be made.
    async fn one_at_a_time(&self, batch: &[Incoming<'_>]) -> Vec<Result<Processed, ProcessError>> {
        let mut results = Vec::with_capacity(batch.len());
        for item in batch {
            results.push(self.process(item.webhook_id, item.body, item.tag).await);
        }
        results
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn item(body: &[u8]) -> Incoming<'_> {
        Incoming {
            webhook_id: "w",
            body,
            tag: None,
        }
    }

    #[test]
    fn jobs_with_outputs_to_fetch_go_second_whole_and_in_order() {
        let bodies: Vec<&[u8]> = vec![
            br#"{"id":"a","status":"processing"}"#,
            br#"{"id":"b","status":"processing"}"#,
            br#"{"id":"a","status":"succeeded"}"#,
            b"not json",
            br#"{"id":"c","status":"failed"}"#,
            br#"{"id":"a","status":"succeeded"}"#,
        ];
        let batch: Vec<Incoming<'_>> = bodies.iter().map(|body| item(body)).collect();
        let (quick, slow) = split_by_downloads(&batch);
        assert_eq!(quick, [1, 3, 4]);
        assert_eq!(slow, [0, 2, 5]);
    }
}
