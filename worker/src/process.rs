//! Processing one webhook on its own: find and classify the job, do the slow I/O (downloads)
//! before any row lock, apply the change in one transaction, then publish the event. The
//! path of what a batch ([`crate::batch`]) leaves to be processed alone, and of
//! `WORKER_BATCH_SIZE=1`.

use std::sync::Arc;
use std::time::Instant;

use futures_util::future::join_all;
use shared::db::{self, DbError, Pool};
use shared::events::{Event, JobKind, JobProgress};
use shared::replicate::{Prediction, Status};

use crate::broker::Broker;
use crate::classify;
use crate::download::{DownloadError, Downloader};
use crate::progress::ProgressTracker;
use crate::store::MediaStore;
use shared::jobs::Job;
use shared::jobs::apply::{self, Applied, ApplyError, ApplyOutcome, Change};
use shared::jobs::bind::{self, Binding};
use shared::jobs::event_log::StoredEvent;
use shared::jobs::published_marks::PublishedMarks;
use shared::jobs::transition::{Decision, Ignored, JobStatus, decide};

/// Why a webhook could not be processed now.
#[derive(Debug, thiserror::Error)]
pub enum ProcessError {
    #[error("not a Replicate prediction: {0}")]
    NotAPrediction(#[source] serde_json::Error),
    /// No job has this Replicate id (yet): the app may still be inserting the row.
    #[error("no job with Replicate id {0}")]
    UnknownJob(String),
    /// The webhook names (by its tag) a row that ended before Replicate's id was stored:
    /// its creation was failed and refunded (Replicate did not answer in time), so this
    /// job's results have nowhere to go.
    #[error(
        "job {row} ended {status} before Replicate's id {job_id} was stored; its results are not kept"
    )]
    Orphaned {
        row: String,
        status: String,
        job_id: String,
    },
    #[error(transparent)]
    Database(#[from] DbError),
    #[error(transparent)]
    Apply(#[from] ApplyError),
    /// An output could not be fetched for a reason that may pass (a permanent one fails the
    /// job instead).
    #[error("output {index} not fetched: {source}")]
    Download {
        index: usize,
        #[source]
        source: DownloadError,
    },
    #[error("output {index} not stored: {source}")]
    Storage {
        index: usize,
        #[source]
        source: object_store::Error,
    },
    /// Processing panicked: a bug, which would panic again on every retry.
    #[error("the worker panicked processing this webhook: {0}")]
    Panicked(String),
}

/// What a [`ProcessError`] means for the webhook: decided once, here.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// The job is not in the database yet: retried for `UNKNOWN_JOB_RETRY_SECS`.
    UnknownJob,
    /// Database, broker, download or storage trouble: retried for `TRANSIENT_RETRY_SECS`.
    Transient,
    /// Can never be processed as it is: dead-lettered at once, with the reason.
    Invalid,
    /// A bug: dead-lettered at once instead of panicking on every redelivery.
    Panicked,
}

impl ProcessError {
    pub fn failure(&self) -> Failure {
        match self {
            Self::UnknownJob(_) => Failure::UnknownJob,
            Self::Panicked(_) => Failure::Panicked,
            Self::NotAPrediction(_) | Self::Orphaned { .. } => Failure::Invalid,
            Self::Database(err) if !err.is_transient() => Failure::Invalid,
            Self::Apply(err) if !err.is_transient() => Failure::Invalid,
            Self::Database(_) | Self::Apply(_) | Self::Download { .. } | Self::Storage { .. } => {
                Failure::Transient
            }
        }
    }

    /// The message with its causes, for the logs and the retry and dead-letter headers.
    pub fn report(&self) -> String {
        shared::telemetry::error_chain(self)
    }
}

/// What processing did, for the log line and the metrics.
#[derive(Debug, Clone, PartialEq)]
pub struct Processed {
    pub job_id: String,
    /// `generations.id` or `ai_models.id`.
    pub row_id: String,
    pub kind: JobKind,
    /// The job's status when the webhook was read (before any change).
    pub found: JobStatus,
    pub status: Status,
    pub effect: Effect,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Effect {
    Moved {
        from: JobStatus,
        to: JobStatus,
        refunded: i32,
        seq: i64,
    },
    Ignored(Ignored),
}

impl Effect {
    pub fn outcome(&self) -> &'static str {
        match self {
            Self::Moved { to, .. } => match to {
                JobStatus::Processing => "processing",
                JobStatus::Completed => "completed",
                JobStatus::Failed => "failed",
                JobStatus::Cancelled => "cancelled",
                JobStatus::Pending => "pending",
            },
            Self::Ignored(reason) => reason.as_str(),
        }
    }
}

pub struct Processor {
    pub pool: Pool,
    pub broker: Arc<Broker>,
    pub downloader: Downloader,
    pub media: MediaStore,
    pub progress: ProgressTracker,
    pub marks: PublishedMarks,
}

impl Processor {
    /// Processes one webhook body, exactly once in effect however often it arrives.
    /// `tag` is the jobs API's tag from the URL the webhook was posted to, if any.
    pub async fn process(
        &self,
        webhook_id: &str,
        body: &[u8],
        tag: Option<&str>,
    ) -> Result<Processed, ProcessError> {
        let prediction: Prediction =
            serde_json::from_slice(body).map_err(ProcessError::NotAPrediction)?;
        let job = self.find_or_bind(webhook_id, &prediction, tag).await?;
        tracing::info!(%webhook_id, kind = %job.kind, job_id = %job.job_id, "🎯 Detected job type: {} for job {}", job.kind, job.job_id);
        let current = classify::stored_status(&job)?;

        let effect = match decide(current, &prediction.status) {
            Decision::Ignore(reason) => Effect::Ignored(reason),
            Decision::MoveTo(target) => {
                // Slow I/O first, with no lock held; the transaction decides again.
                let change = self
                    .prepare_change(webhook_id, &job, &prediction, target)
                    .await?;
                let mut conn = db::connection(&self.pool).await?;
                let outcome = apply::apply(&mut conn, &job, &prediction.status, change).await?;
                drop(conn);
                match outcome {
                    ApplyOutcome::Ignored(reason) => Effect::Ignored(reason),
                    ApplyOutcome::Applied(applied) => {
                        self.publish_stored(&applied.event).await;
                        self.settled(&job, &applied)
                    }
                }
            }
        };

        self.publish_progress(&job, &prediction, &effect).await;
        Ok(Processed {
            job_id: job.job_id,
            row_id: job.id,
            kind: job.kind,
            found: current,
            status: prediction.status,
            effect,
        })
    }

    /// The job with this webhook's Replicate id; failing that, the row the jobs API tagged
    /// the job's webhook URL with, bound to the id now if it is still waiting for one (the
    /// jobs API had not stored Replicate's answer yet, or never will).
    pub(crate) async fn find_or_bind(
        &self,
        webhook_id: &str,
        prediction: &Prediction,
        header_tag: Option<&str>,
    ) -> Result<Job, ProcessError> {
        let mut conn = db::connection(&self.pool).await?;
        if let Some(job) = classify::find_job(&mut conn, &prediction.id).await? {
            return Ok(job);
        }
        let unknown = || ProcessError::UnknownJob(prediction.id.clone());
        // The webhook URL inside the signed body is the tag's trustworthy copy; the one
        // ingest read from the URL it was called at serves only when the body has none.
        let tag = match &prediction.webhook {
            Some(url) => shared::replicate::tag_of_url(url),
            None => header_tag
                .filter(|tag| shared::replicate::valid_tag(tag))
                .map(str::to_owned),
        };
        let Some(tag) = tag else {
            return Err(unknown());
        };
        match bind::bind(&mut conn, &tag, &prediction.id).await? {
            Binding::Bound { job, event, .. } => {
                drop(conn);
                metrics::counter!("worker_jobs_bound_total").increment(1);
                tracing::info!(%webhook_id, id = %job.id, job_id = %job.job_id, status = %prediction.status, "job bound to its Replicate id by its webhook's tag (the creation's answer was not stored yet)");
                self.publish_stored(&event).await;
                Ok(job)
            }
            Binding::AlreadyBound(job) => Ok(job),
            Binding::NotWaiting(job)
                if job.job_id == job.id
                    && JobStatus::parse(&job.status).is_some_and(JobStatus::is_terminal) =>
            {
                Err(ProcessError::Orphaned {
                    row: job.id,
                    status: job.status,
                    job_id: prediction.id.clone(),
                })
            }
            Binding::NotWaiting(_) | Binding::NoRow => Err(unknown()),
        }
    }

    /// Builds the change that moves the job to `target`; for a succeeded generation this
    /// downloads and stores every output.
    pub(crate) async fn prepare_change(
        &self,
        webhook_id: &str,
        job: &Job,
        prediction: &Prediction,
        target: JobStatus,
    ) -> Result<Change, ProcessError> {
        Ok(match target {
            JobStatus::Pending | JobStatus::Processing => Change::Processing,
            JobStatus::Cancelled => Change::Cancelled,
            JobStatus::Failed => Change::Failed {
                error: error_text(prediction),
            },
            JobStatus::Completed if job.is_training() => training_outputs(prediction),
            JobStatus::Completed => self.store_images(webhook_id, job, prediction).await?,
        })
    }

    async fn store_images(
        &self,
        webhook_id: &str,
        job: &Job,
        prediction: &Prediction,
    ) -> Result<Change, ProcessError> {
        let urls = output_urls(prediction.output.as_ref());
        if urls.is_empty() {
            let error = if prediction.data_removed {
                "Replicate had already deleted the outputs (data_removed, an hour after completion) when the pipeline learned the job succeeded"
            } else {
                "succeeded without any output image"
            };
            return Ok(Change::Failed {
                error: error.into(),
            });
        }
        let started = Instant::now();
        // Each output is stored as soon as it is fetched, which gives its memory back:
        // a job never holds one output's budget while waiting for another's.
        let stored = join_all(urls.iter().enumerate().map(|(index, url)| async move {
            let image = self
                .downloader
                .fetch(url)
                .await
                .map_err(|source| ProcessError::Download { index, source })?;
            metrics::counter!("worker_download_bytes_total").increment(image.bytes.len() as u64);
            let url = self
                .media
                .put(&job.id, index, &image)
                .await
                .map_err(|source| ProcessError::Storage { index, source })?;
            let thumb_url = self
                .store_thumbnail(webhook_id, job, index, &image, &url)
                .await?;
            Ok::<_, ProcessError>((url, thumb_url))
        }))
        .await;
        let mut image_urls = Vec::with_capacity(stored.len());
        let mut thumb_urls = Vec::with_capacity(stored.len());
        for result in stored {
            match result {
                Ok((url, thumb_url)) => {
                    metrics::counter!("worker_downloads_total", "result" => "ok").increment(1);
                    image_urls.push(url);
                    thumb_urls.push(thumb_url);
                }
                Err(ProcessError::Download { source, .. }) if source.is_permanent() => {
                    metrics::counter!("worker_downloads_total", "result" => "permanent_error")
                        .increment(1);
                    let reason = source.to_string();
                    tracing::warn!(%webhook_id, job_id = %job.job_id, %reason, "output cannot be stored; the job fails");
                    return Ok(Change::Failed { error: reason });
                }
                Err(err) => {
                    metrics::counter!("worker_downloads_total", "result" => "transient_error")
                        .increment(1);
                    return Err(err);
                }
            }
        }
        tracing::info!(%webhook_id, job_id = %job.job_id, images = image_urls.len(), elapsed = ?started.elapsed(), "outputs stored");
        Ok(Change::ImagesStored {
            image_urls,
            thumb_urls,
        })
    }

    /// The thumbnail of output `index`, stored beside it; the original's URL when the
    /// output cannot be decoded as an image (the card then shows the original).
    async fn store_thumbnail(
        &self,
        webhook_id: &str,
        job: &Job,
        index: usize,
        image: &crate::download::Image,
        original_url: &str,
    ) -> Result<String, ProcessError> {
        let bytes = image.bytes.clone();
        let rendered = tokio::task::spawn_blocking(move || crate::thumbnail::render(&bytes))
            .await
            .expect("the thumbnail task does not panic");
        match rendered {
            Ok(jpeg) => self
                .media
                .put_thumbnail(&job.id, index, jpeg)
                .await
                .map_err(|source| ProcessError::Storage { index, source }),
            Err(err) => {
                tracing::warn!(%webhook_id, job_id = %job.job_id, index, error = %err, "no thumbnail; the card shows the original");
                Ok(original_url.to_owned())
            }
        }
    }

    /// The bookkeeping of an applied change (the refund counted, the job's progress
    /// forgotten once it ended) and its effect, whichever path applied it.
    pub(crate) fn settled(&self, job: &Job, applied: &Applied) -> Effect {
        if applied.refunded > 0 {
            metrics::counter!("worker_refunds_total", "kind" => job.kind.as_str()).increment(1);
        }
        if applied.to.is_terminal() {
            self.progress.forget(&job.job_id);
        }
        Effect::Moved {
            from: applied.from,
            to: applied.to,
            refunded: applied.refunded,
            seq: applied.event.seq,
        }
    }

    /// Publishes a stored event and has it marked; on failure the outbox sweep publishes it
    /// later.
    pub async fn publish_stored(&self, stored: &StoredEvent) {
        match self.broker.publish_event(&stored.event).await {
            Ok(()) => {
                metrics::counter!("worker_events_published_total", "path" => "direct").increment(1);
                self.marks.mark(stored.user_id.clone(), stored.seq);
            }
            Err(err) => {
                tracing::warn!(user_id = %stored.user_id, seq = stored.seq, error = %err, "event not published yet; the outbox sweep will");
            }
        }
    }

    /// Pushes `job_progress` for a running job when its progress moved.
    pub(crate) async fn publish_progress(
        &self,
        job: &Job,
        prediction: &Prediction,
        effect: &Effect,
    ) {
        if let Some(event) = self.progress_event(job, prediction, effect) {
            self.publish_live(&event).await;
        }
    }

    /// The `job_progress` event a webhook brings: for a running job whose progress moved
    /// since the last one this process published.
    pub(crate) fn progress_event(
        &self,
        job: &Job,
        prediction: &Prediction,
        effect: &Effect,
    ) -> Option<Event> {
        if prediction.status != Status::Processing {
            return None;
        }
        let running = match effect {
            Effect::Moved { to, .. } => *to == JobStatus::Processing,
            Effect::Ignored(reason) => *reason == Ignored::NotForward,
        };
        let value = prediction
            .logs
            .as_deref()
            .and_then(shared::tqdm::progress)?;
        if !running || !self.progress.moved(&job.job_id, value) {
            return None;
        }
        Some(Event::JobProgress {
            user_id: job.user_id.clone(),
            job: JobProgress {
                kind: job.kind,
                id: job.id.clone(),
                job_id: job.job_id.clone(),
                progress: value,
            },
        })
    }

    /// Publishes a live-only event (progress): not stored, so a failure is only logged;
    /// the next webhook brings a newer value.
    pub(crate) async fn publish_live(&self, event: &Event) {
        if let Err(err) = self.broker.publish_event(event).await {
            tracing::debug!(user_id = %event.user_id(), error = %err, "progress not published");
        }
    }
}

/// The output URLs of an image prediction: a list of URLs or a single URL string.
pub fn output_urls(output: Option<&serde_json::Value>) -> Vec<String> {
    match output {
        Some(serde_json::Value::String(url)) => vec![url.clone()],
        Some(serde_json::Value::Array(items)) => items
            .iter()
            .filter_map(|item| item.as_str().map(str::to_owned))
            .collect(),
        _ => Vec::new(),
    }
}

fn training_outputs(prediction: &Prediction) -> Change {
    let field = |name: &str| {
        prediction
            .output
            .as_ref()
            .and_then(|output| output.get(name))
            .and_then(|value| value.as_str())
            .map(str::to_owned)
    };
    Change::TrainingSucceeded {
        model_version: field("version"),
        weights_url: field("weights"),
    }
}

fn error_text(prediction: &Prediction) -> String {
    match &prediction.error {
        Some(serde_json::Value::String(text)) if !text.is_empty() => text.clone(),
        Some(serde_json::Value::Null) | None => "failed without an error message".into(),
        Some(other) => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn outputs_as_list_or_single_string() {
        assert_eq!(
            output_urls(Some(&json!(["https://a/1.png", "https://a/2.png"]))),
            ["https://a/1.png", "https://a/2.png"]
        );
        assert_eq!(
            output_urls(Some(&json!("https://a/up.png"))),
            ["https://a/up.png"]
        );
        assert!(output_urls(Some(&json!(null))).is_empty());
        assert!(output_urls(None).is_empty());
    }
}
