//! The delivery loop: a prefetch window of webhooks taken in batches (see [`crate::batch`]),
//! batches processed concurrently, each webhook acked only once its effects are committed; retried through the delay queues when the job is not
//! there yet or something transient failed; dead-lettered with the reason when retries
//! are exhausted or the webhook can never be processed.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use std::panic::AssertUnwindSafe;

use futures_util::future::join_all;
use futures_util::{FutureExt, StreamExt};
use lapin::message::Delivery;
use lapin::options::{BasicAckOptions, BasicNackOptions};
use lapin::types::{AMQPValue, FieldTable, LongString};
use shared::amqp::{
    HEADER_ATTEMPT, HEADER_DEAD_REASON, HEADER_FIRST_SEEN, HEADER_LAST_ERROR, HEADER_REPLAYS,
    RETRY_DELAYS,
};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, watch};

use crate::batch::{Incoming, split_by_downloads};
use crate::broker::Broker;
use crate::process::{Effect, Failure, ProcessError, Processed, Processor};
use crate::record::{Attempt, Delivered, Settled, WebhookRecord};

/// How long webhooks are retried before they are dead-lettered.
#[derive(Debug, Clone, Copy)]
pub struct RetryPolicy {
    /// A webhook for a job not (yet) in the database.
    pub unknown_job: Duration,
    /// Database, broker or storage trouble.
    pub transient: Duration,
}

/// What happens to a delivery after processing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Disposition {
    Ack,
    Retry { delay: Duration, error: String },
    DeadLetter { reason: String },
}

/// Decides a failed delivery's fate from its retry history. Pure.
pub fn dispose(
    error: &ProcessError,
    attempt: u32,
    since_first_seen: Duration,
    policy: RetryPolicy,
) -> Disposition {
    let (window, what) = match error.failure() {
        // Parked with the reason (and replayable once fixed) instead of holding a prefetch
        // slot, or panicking again on every redelivery.
        Failure::Invalid | Failure::Panicked => {
            return Disposition::DeadLetter {
                reason: error.report(),
            };
        }
        Failure::UnknownJob => (policy.unknown_job, "job not found"),
        Failure::Transient => (policy.transient, "still failing"),
    };
    if since_first_seen >= window {
        return Disposition::DeadLetter {
            reason: format!(
                "{what} after {} attempts over {}s: {}",
                attempt + 1,
                since_first_seen.as_secs(),
                error.report()
            ),
        };
    }
    let delay = RETRY_DELAYS[(attempt as usize).min(RETRY_DELAYS.len() - 1)];
    Disposition::Retry {
        delay,
        error: error.report(),
    }
}

pub struct Consumer {
    pub broker: Arc<Broker>,
    pub processor: Arc<Processor>,
    pub record: WebhookRecord,
    /// Webhooks in flight at once, across batches: `concurrency / batch_size` batches
    /// (rounded up) run at the same time.
    pub concurrency: usize,
    /// The most webhooks one batch takes.
    pub batch_size: usize,
    pub retry: RetryPolicy,
}

/// More parts of batches than can fetch outputs at once (each holds at least one unacked
/// delivery, and the prefetch window is a `u16`).
const FETCHING_PARTS: u32 = 1 << 16;

/// A batch as the consumer took it, for processing it in parts.
struct Parts<'a> {
    batch: &'a [Delivery],
    metas: &'a [Meta],
    incoming: &'a [Incoming<'a>],
    started: Instant,
}

/// What the consumer reads off a delivery's headers.
struct Meta {
    webhook_id: String,
    attempt: u32,
    first_seen: i64,
    tag: Option<String>,
}

impl Meta {
    fn of(delivery: &Delivery) -> Self {
        Self {
            webhook_id: delivery
                .properties
                .message_id()
                .as_ref()
                .map(|id| id.to_string())
                .unwrap_or_else(|| "-".into()),
            attempt: header_int(delivery, HEADER_ATTEMPT).unwrap_or(0).max(0) as u32,
            first_seen: header_int(delivery, HEADER_FIRST_SEEN).unwrap_or_else(now_ms),
            tag: header_text(delivery, shared::amqp::HEADER_JOB_TAG),
        }
    }
}

impl Consumer {
    /// Consumes until `stop` fires, across reconnections; then stops taking deliveries and
    /// waits up to `drain` for those in flight (unacked ones go back to the queue).
    ///
    /// Deliveries are taken in batches of what the consumer already holds (never waiting
    /// for more): under load a batch fills up, at a trickle each webhook is a batch of one.
    pub async fn run(self: Arc<Self>, mut stop: watch::Receiver<bool>, drain: Duration) {
        // Batches in flight at once: few and full rather than many and small, so that a
        // batch waiting for a slot lets the next one gather what arrives meanwhile.
        let slots = self.concurrency.div_ceil(self.batch_size).max(1);
        let permits = Arc::new(Semaphore::new(slots));
        // Parts of batches fetching outputs after their slot was given back (bounded by
        // the prefetch window); counted so that a shutdown waits for them too.
        let fetching = Arc::new(Semaphore::new(FETCHING_PARTS as usize));
        'connections: loop {
            let link = tokio::select! {
                _ = stop.changed() => break 'connections,
                link = self.broker.link.wait_connected(Duration::from_secs(3600)) => match link {
                    Some(link) => link,
                    None => continue,
                },
            };
            let mut deliveries = link.consumer.clone();
            // An item taken while filling a batch that was not a delivery: handled next.
            let mut taken = None;
            loop {
                let item = match taken.take() {
                    Some(item) => item,
                    None => tokio::select! {
                        _ = stop.changed() => {
                            link.cancel_consumer().await;
                            break 'connections;
                        }
                        item = deliveries.next() => item,
                    },
                };
                match item {
                    Some(Ok(delivery)) => {
                        let permit = permits.clone().acquire_owned().await.expect("never closed");
                        let mut batch = vec![delivery];
                        while batch.len() < self.batch_size {
                            match deliveries.next().now_or_never() {
                                Some(Some(Ok(delivery))) => batch.push(delivery),
                                Some(other) => {
                                    taken = Some(other);
                                    break;
                                }
                                None => break,
                            }
                        }
                        let this = self.clone();
                        let fetching = fetching.clone();
                        tokio::spawn(async move {
                            this.handle(batch, permit, fetching).await;
                        });
                    }
                    Some(Err(err)) => {
                        tracing::warn!(error = %err, "consumer stopped; waiting for the connection to come back");
                        link.mark_broken();
                        break;
                    }
                    None => {
                        link.mark_broken();
                        break;
                    }
                }
            }
        }
        let all = u32::try_from(slots).unwrap_or(u32::MAX);
        let finished = async {
            let slots = permits.acquire_many(all).await;
            let fetches = fetching.acquire_many(FETCHING_PARTS).await;
            (slots, fetches)
        };
        if tokio::time::timeout(drain, finished).await.is_err() {
            let unfinished = slots.saturating_sub(permits.available_permits());
            tracing::warn!(
                batches = unfinished,
                "in-flight batches did not finish in time; the broker will redeliver their webhooks"
            );
        }
        self.broker.link.close().await;
    }

    /// Processes a batch, then settles each delivery (ack, retry or dead letter) by its
    /// own result: the webhooks of jobs with nothing to fetch, which give the slot back
    /// when settled, and beside them those whose outputs are downloaded
    /// ([`split_by_downloads`]).
    async fn handle(
        &self,
        batch: Vec<Delivery>,
        slot: OwnedSemaphorePermit,
        fetching: Arc<Semaphore>,
    ) {
        let started = Instant::now();
        let metas: Vec<Meta> = batch.iter().map(Meta::of).collect();
        let incoming: Vec<Incoming<'_>> = batch
            .iter()
            .zip(&metas)
            .map(|(delivery, meta)| Incoming {
                webhook_id: &meta.webhook_id,
                body: &delivery.data,
                tag: meta.tag.as_deref(),
            })
            .collect();
        let (quick, slow) = split_by_downloads(&incoming);
        let parts = Parts {
            batch: &batch,
            metas: &metas,
            incoming: &incoming,
            started,
        };
        if slow.is_empty() {
            self.handle_part(&parts, &quick).await;
            return;
        }
        // Counted before the slot can be given back, so that a shutdown waiting for every
        // slot and every fetching part cannot miss this one.
        let counted = fetching.acquire_owned().await.expect("never closed");
        // The parts hold different jobs, so they run side by side: the fetches start at
        // once instead of after the quick part's transaction.
        let quick_part = async {
            self.handle_part(&parts, &quick).await;
            drop(slot);
        };
        futures_util::join!(quick_part, self.handle_part(&parts, &slow));
        drop(counted);
    }

    /// Processes the webhooks of `part` (positions in the batch) as one batch and settles
    /// them. A panic in the batch's path has each processed alone, so that only the one that
    /// panics is parked.
    async fn handle_part(&self, parts: &Parts<'_>, part: &[usize]) {
        if part.is_empty() {
            return;
        }
        let items: Vec<Incoming<'_>> = part.iter().map(|&i| parts.incoming[i]).collect();
        let results = match AssertUnwindSafe(self.processor.process_batch(&items))
            .catch_unwind()
            .await
        {
            Ok(results) => results,
            Err(panic) => {
                tracing::error!(webhooks = items.len(), panic = %panic_message(&*panic), "a batch panicked; its webhooks are processed one at a time");
                let mut results = Vec::with_capacity(items.len());
                for item in &items {
                    results.push(self.process_alone(item).await);
                }
                results
            }
        };
        let elapsed = parts.started.elapsed();
        join_all(
            part.iter()
                .zip(results)
                .map(|(&i, result)| self.settle(&parts.batch[i], &parts.metas[i], result, elapsed)),
        )
        .await;
    }

    /// One webhook on its own path, a panic turned into a dead letter.
    async fn process_alone(&self, item: &Incoming<'_>) -> Result<Processed, ProcessError> {
        AssertUnwindSafe(
            self.processor
                .process(item.webhook_id, item.body, item.tag),
        )
        .catch_unwind()
        .await
        .unwrap_or_else(|panic| {
            let message = panic_message(&*panic);
            metrics::counter!("worker_panics_total").increment(1);
            tracing::error!(webhook_id = %item.webhook_id, panic = %message, "processing panicked; the webhook goes to the dead letters");
            Err(ProcessError::Panicked(message))
        })
    }

    /// Acks, retries or dead-letters one delivery by its result, and records the handling.
    async fn settle(
        &self,
        delivery: &Delivery,
        meta: &Meta,
        result: Result<Processed, ProcessError>,
        elapsed: Duration,
    ) {
        let Meta {
            webhook_id,
            attempt,
            first_seen,
            ..
        } = meta;
        let (attempt, first_seen) = (*attempt, *first_seen);
        let disposition = match &result {
            Ok(processed) => {
                report_processed(webhook_id, processed, elapsed);
                Disposition::Ack
            }
            Err(err) => {
                let since = Duration::from_millis((now_ms() - first_seen).max(0) as u64);
                dispose(err, attempt, since, self.retry)
            }
        };
        let label = reason_label(result.as_ref().err());
        let settled = match (&result, &disposition) {
            (Ok(processed), _) => Settled::Processed(processed),
            (Err(_), Disposition::Retry { error, .. }) => Settled::Retried(error),
            (Err(_), Disposition::DeadLetter { reason }) => Settled::DeadLettered(reason),
            (Err(_), Disposition::Ack) => unreachable!("a failed webhook is retried or parked"),
        };
        self.record.add(Attempt::of(
            &Delivered {
                webhook_id,
                body: &delivery.data,
                attempt,
                replays: header_int(delivery, HEADER_REPLAYS).unwrap_or(0).max(0) as u32,
                sent_at: header_text(delivery, shared::webhook::HEADER_TIMESTAMP)
                    .and_then(|ts| ts.parse().ok()),
            },
            &settled,
            elapsed,
        ));

        let settled = match disposition {
            Disposition::Ack => delivery.ack(BasicAckOptions::default()).await.map(|_| ()),
            Disposition::Retry { delay, error } => {
                metrics::counter!("worker_retries_total", "reason" => label).increment(1);
                tracing::warn!(%webhook_id, attempt = attempt + 1, retry_in = ?delay, %error, elapsed = ?elapsed, "webhook will be retried");
                let headers = bookkeeping(
                    delivery,
                    attempt + 1,
                    first_seen,
                    (HEADER_LAST_ERROR, &error),
                );
                self.send_on(delivery, &self.broker.topology.retry_queue(delay), headers)
                    .await
            }
            Disposition::DeadLetter { reason } => {
                metrics::counter!("worker_dead_letters_total", "reason" => label).increment(1);
                tracing::error!(%webhook_id, %reason, elapsed = ?elapsed, "webhook dead-lettered");
                let headers = bookkeeping(
                    delivery,
                    attempt + 1,
                    first_seen,
                    (HEADER_DEAD_REASON, &reason),
                );
                self.send_on(delivery, &self.broker.topology.dead_letter_queue(), headers)
                    .await
            }
        };
        if let Err(err) = settled {
            // Not acked: the broker redelivers it (to this or another worker), and
            // processing it again changes nothing that was already committed.
            tracing::warn!(%webhook_id, error = %err, "delivery not settled; it will be redelivered");
        }
    }

    /// Publishes a copy to `queue` (confirmed), then acks the original. If the copy cannot
    /// be published, the original is returned to the queue instead: nothing is dropped.
    async fn send_on(
        &self,
        delivery: &Delivery,
        queue: &str,
        headers: FieldTable,
    ) -> Result<(), lapin::Error> {
        match self.broker.republish(queue, delivery, headers).await {
            Ok(()) => delivery.ack(BasicAckOptions::default()).await.map(|_| ()),
            Err(err) => {
                tracing::warn!(%queue, error = %err, "cannot send the webhook on; returning it to the queue");
                tokio::time::sleep(Duration::from_secs(1)).await;
                delivery
                    .nack(BasicNackOptions {
                        requeue: true,
                        ..BasicNackOptions::default()
                    })
                    .await
                    .map(|_| ())
            }
        }
    }
}

fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "no message".into())
}

fn reason_label(error: Option<&ProcessError>) -> &'static str {
    match error.map(ProcessError::failure) {
        Some(Failure::UnknownJob) => "unknown_job",
        Some(Failure::Transient) => "transient",
        Some(Failure::Invalid) => "invalid",
        Some(Failure::Panicked) => "panicked",
        None => "none",
    }
}

/// The metrics and the one log line of a processed webhook.
fn report_processed(webhook_id: &str, processed: &Processed, elapsed: Duration) {
    let outcome = processed.effect.outcome();
    let (seq, refunded) = match processed.effect {
        Effect::Moved { seq, refunded, .. } => (Some(seq), refunded),
        Effect::Ignored(_) => (None, 0),
    };
    metrics::counter!("worker_webhooks_total", "kind" => processed.kind.as_str(), "outcome" => outcome).increment(1);
    metrics::histogram!("worker_processing_duration_seconds", "kind" => processed.kind.as_str())
        .record(elapsed.as_secs_f64());
    tracing::info!(
        %webhook_id,
        job_id = %processed.job_id,
        kind = %processed.kind,
        status = %processed.status,
        %outcome,
        seq,
        refunded,
        elapsed = ?elapsed,
        "✅ Webhook processed in {}ms",
        elapsed.as_millis()
    );
}

/// The original headers (`webhook-id`, `webhook-timestamp`, …) carried along, plus the retry
/// bookkeeping and one explanation (`x-last-error` or `x-dead-letter-reason`).
fn bookkeeping(
    delivery: &Delivery,
    attempts: u32,
    first_seen: i64,
    (key, text): (&str, &str),
) -> FieldTable {
    let mut headers = delivery.properties.headers().clone().unwrap_or_default();
    headers.insert(
        HEADER_ATTEMPT.into(),
        AMQPValue::LongLongInt(i64::from(attempts)),
    );
    headers.insert(HEADER_FIRST_SEEN.into(), AMQPValue::LongLongInt(first_seen));
    headers.insert(key.into(), AMQPValue::LongString(LongString::from(text)));
    headers
}

fn header_text(delivery: &Delivery, name: &str) -> Option<String> {
    match delivery.properties.headers().as_ref()?.inner().get(name)? {
        AMQPValue::LongString(value) => Some(value.to_string()),
        AMQPValue::ShortString(value) => Some(value.to_string()),
        _ => None,
    }
}

fn header_int(delivery: &Delivery, name: &str) -> Option<i64> {
    shared::amqp::dead_letters::int(delivery.properties.headers().as_ref()?.inner().get(name))
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    const POLICY: RetryPolicy = RetryPolicy {
        unknown_job: Duration::from_secs(150),
        transient: Duration::from_secs(1800),
    };

    #[test]
    fn unknown_jobs_back_off_then_dead_letter() {
        let unknown = ProcessError::UnknownJob("p1".into());
        let delays: Vec<_> = (0..7)
            .map(
                |attempt| match dispose(&unknown, attempt, Duration::from_secs(10), POLICY) {
                    Disposition::Retry { delay, .. } => delay.as_secs(),
                    other => panic!("{other:?}"),
                },
            )
            .collect();
        assert_eq!(delays, [1, 5, 15, 30, 60, 60, 60]);
        match dispose(&unknown, 6, Duration::from_secs(151), POLICY) {
            Disposition::DeadLetter { reason } => {
                assert!(
                    reason.contains("job not found after 7 attempts"),
                    "{reason}"
                );
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_panic_goes_straight_to_the_dead_letters_with_its_message() {
        let panicked = ProcessError::Panicked("index out of bounds".into());
        match dispose(&panicked, 0, Duration::ZERO, POLICY) {
            Disposition::DeadLetter { reason } => {
                assert!(
                    reason.contains("panicked") && reason.contains("index out of bounds"),
                    "{reason}"
                );
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn invalid_webhooks_go_straight_to_the_dead_letters_with_the_cause() {
        let invalid = ProcessError::NotAPrediction(
            serde_json::from_slice::<shared::replicate::Prediction>(b"{}").unwrap_err(),
        );
        match dispose(&invalid, 0, Duration::ZERO, POLICY) {
            Disposition::DeadLetter { reason } => assert!(
                reason.starts_with("not a Replicate prediction: missing field"),
                "{reason}"
            ),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn transient_errors_retry_longer() {
        let transient = ProcessError::Database(shared::db::DbError::Pool("database down".into()));
        assert!(matches!(
            dispose(&transient, 3, Duration::from_secs(600), POLICY),
            Disposition::Retry { .. }
        ));
        assert!(matches!(
            dispose(&transient, 30, Duration::from_secs(1800), POLICY),
            Disposition::DeadLetter { .. }
        ));
    }
}
