//! The jobs API behind the gallery: list a user's jobs, and create generations, upscales
//! and trainings.
//!
//! Creating a job debits its cost and inserts its row in one transaction (`ledger.rs`);
//! then the job is created on Replicate (`replicate.rs`) with the pipeline's webhook URL
//! tagged with the row, with no database connection held, and bound to Replicate's id
//! ([`shared::jobs::bind`]) — unless its first webhook bound it first. When Replicate
//! refuses or cannot be reached, the job goes to `FAILED` and is refunded exactly once
//! ([`shared::jobs::bind::fail_unbound`]).

use std::sync::Arc;
use std::time::Duration;

use diesel::prelude::*;
use diesel_async::RunQueryDsl;
use serde_json::{Value, json};
use shared::config::AmqpConfig;
use shared::db::schema::generations;
use shared::db::{self, Pool};
use shared::events::{JobKind, JobState, ModelName};
use shared::jobs::bind::{self, Binding};
use shared::jobs::event_log::StoredEvent;
use shared::jobs::{GenerationRow, Job, UPSCALE_MARKER};

use crate::api::cancel;
use crate::api::error::{Created, JobsError};
use crate::api::in_flight::InFlight;
use crate::api::ledger::{NewJob, created_from, credits_of, job_state, record_pending};
use crate::api::list;
use crate::api::photos::{self, TrainingUpload};
use crate::api::publish::EventPublisher;
use crate::api::replicate::{ReplicateApi, ReplicateError, Request};
use crate::api::validate;
use crate::config::JobsConfig;

/// Between two tries of storing Replicate's answer while the database is away.
const STORE_RETRY_PAUSE: std::time::Duration = std::time::Duration::from_millis(250);

/// What the gallery needs to know to show its forms.
pub fn features(config: &JobsConfig, enabled: bool) -> Value {
    json!({
        "enabled": enabled,
        "training": enabled && config.training_destination.is_some(),
        "costs": {
            "generation": config.generation_cost,
            "upscale": config.upscale_cost,
            "training": config.training_cost,
        },
    })
}

/// The jobs API. Cheap to clone: a creation runs in a task of its own, so that once its
/// debit is committed the job's fate no longer depends on the request (a client hanging up
/// drops only the wait for the answer).
#[derive(Clone)]
pub struct JobsApi {
    inner: Arc<Inner>,
}

struct Inner {
    config: JobsConfig,
    /// `None` without `REPLICATE_API_TOKEN`: creation answers 503.
    replicate: Option<ReplicateApi>,
    pool: Pool,
    publisher: EventPublisher,
    in_flight: InFlight,
}

impl JobsApi {
    /// The jobs API with its own database pool and broker link (started in the background).
    pub fn new(config: &JobsConfig, pool: Pool, amqp: &AmqpConfig) -> Self {
        let timeout = Duration::from_secs(config.replicate.create_timeout_secs);
        let replicate = config.replicate.token.get().cloned().map(|token| {
            ReplicateApi::new(
                &config.replicate.url,
                token,
                &config.public_webhook_url,
                timeout,
            )
        });
        Self {
            inner: Arc::new(Inner {
                config: config.clone(),
                replicate,
                publisher: EventPublisher::start(amqp, pool.clone()),
                pool,
                in_flight: InFlight::new(
                    config.max_creations_per_user,
                    config.max_creations_in_flight,
                ),
            }),
        }
    }

    pub fn features(&self) -> Value {
        features(&self.inner.config, self.inner.replicate.is_some())
    }

    /// Refuses at once (before any check of the request) when creation is not configured.
    fn check_configured(&self) -> Result<(), JobsError> {
        self.inner.replicate().map(|_| ())
    }

    /// `POST /api/generations {"prompt": …, "model": <ai_models.id>?}`: on the default
    /// model, or on one the user trained (`404` not theirs, `409` not completed).
    pub async fn create_generation(
        &self,
        user_id: &str,
        prompt: &str,
        model_id: Option<&str>,
    ) -> Result<Created, JobsError> {
        self.check_configured()?;
        let prompt = validate::prompt(prompt)?;
        let (model, model_name) = match model_id.filter(|id| !id.is_empty()) {
            None => (self.inner.config.generation_model.clone(), None),
            Some(id) => {
                validate::no_nul("the model id", id)?;
                let mut conn = db::connection(&self.inner.pool).await?;
                let (model, name) = list::trained_model(&mut conn, user_id, id).await?;
                (
                    model,
                    Some(ModelName {
                        id: id.to_owned(),
                        name,
                    }),
                )
            }
        };
        let new = NewJob {
            kind: JobKind::Generation,
            text: prompt.to_owned(),
            cost: self.inner.config.generation_cost.into(),
            model: model_name,
            source_id: None,
        };
        let request = Request::Prediction {
            model,
            input: json!({"prompt": prompt}),
        };
        self.create(user_id, new, request).await
    }

    /// `POST /api/generations/{id}/upscale`: the source's first image, upscaled.
    pub async fn create_upscale(
        &self,
        user_id: &str,
        source_id: &str,
    ) -> Result<Created, JobsError> {
        self.check_configured()?;
        validate::no_nul("the generation id", source_id)?;
        let mut conn = db::connection(&self.inner.pool).await?;
        let source: Option<GenerationRow> = generations::table
            .find(source_id)
            .filter(generations::user_id.eq(user_id))
            .select(GenerationRow::as_select())
            .first(&mut conn)
            .await
            .optional()?;
        let upscaling = list::upscale_running(&mut conn, user_id, source_id).await?;
        drop(conn);
        let Some(source) = source else {
            return Err(JobsError::NotFound(format!(
                "you have no generation {source_id:?}"
            )));
        };
        let Some(image) = source
            .image_urls
            .as_slice()
            .first()
            .filter(|_| source.status == "COMPLETED")
        else {
            return Err(JobsError::Conflict(format!(
                "generation {source_id:?} is {} without an image; only a COMPLETED image can be upscaled",
                source.status
            )));
        };
        if upscaling {
            return Err(JobsError::Conflict(format!(
                "generation {source_id:?} is already being upscaled"
            )));
        }
        let new = NewJob {
            kind: JobKind::Upscale,
            text: format!("{UPSCALE_MARKER} {}", source.prompt),
            cost: self.inner.config.upscale_cost.into(),
            model: None,
            source_id: Some(source_id.to_owned()),
        };
        let request = Request::Prediction {
            model: self.inner.config.upscale_model.clone(),
            input: json!({"image": image}),
        };
        self.create(user_id, new, request).await
    }

    /// `POST /api/models {"name": …, "input_images": <https URL of a zip>}`
    pub async fn create_training(
        &self,
        user_id: &str,
        name: &str,
        input_images: &str,
    ) -> Result<Created, JobsError> {
        let destination = self.training_destination()?;
        let name = validate::model_name(name)?;
        validate::zip_url(input_images)?;
        self.start_training(user_id, name, destination, input_images.trim())
            .await
    }

    /// `POST /api/models` as a form: the person's photos (zipped here) or their zip, handed
    /// to Replicate's files API before anything is debited; then the training on that file.
    pub async fn create_training_from_upload(
        &self,
        user_id: &str,
        name: &str,
        upload: &TrainingUpload,
    ) -> Result<Created, JobsError> {
        let destination = self.training_destination()?;
        let name = validate::model_name(name)?;
        let zip = photos::training_zip(upload)?;
        let replicate = self.inner.replicate()?;
        let size = zip.len();
        let file_url = replicate.upload_zip(zip).await.map_err(|err| {
            tracing::warn!(%user_id, error = %shared::telemetry::error_chain(&err), "the photos could not be handed to Replicate");
            JobsError::ReplicateUnavailable(format!(
                "{err}; the photos were not sent and nothing was charged"
            ))
        })?;
        tracing::info!(%user_id, bytes = size, "training photos uploaded to Replicate");
        self.start_training(user_id, name, destination, &file_url)
            .await
    }

    /// The model trainings create versions of; `503` without one.
    fn training_destination(&self) -> Result<String, JobsError> {
        self.check_configured()?;
        self.inner
            .config
            .training_destination
            .clone()
            .ok_or_else(|| {
                JobsError::NotConfigured(
                    "model training is not configured: the notifier has no TRAINING_DESTINATION"
                        .into(),
                )
            })
    }

    async fn start_training(
        &self,
        user_id: &str,
        name: &str,
        destination: String,
        input_images: &str,
    ) -> Result<Created, JobsError> {
        let new = NewJob {
            kind: JobKind::Training,
            text: name.to_owned(),
            cost: self.inner.config.training_cost.into(),
            model: None,
            source_id: None,
        };
        let request = Request::Training {
            model: self.inner.config.training_model.clone(),
            destination,
            input: json!({"input_images": input_images}),
        };
        self.create(user_id, new, request).await
    }

    /// Takes one of the user's creation slots (`429` when none is free), then runs the
    /// creation in its own task and waits for it. The task holds the slot until the job is
    /// bound to Replicate's id or failed, whether or not anyone still waits for the answer.
    async fn create(
        &self,
        user_id: &str,
        new: NewJob,
        request: Request,
    ) -> Result<Created, JobsError> {
        let slot = self.inner.in_flight.take(user_id)?;
        let inner = self.inner.clone();
        let user_id = user_id.to_owned();
        let task = tokio::spawn(async move {
            let outcome = inner.run_creation(&user_id, new, request).await;
            drop(slot);
            outcome
        });
        task.await.unwrap_or_else(|err| {
            Err(JobsError::Interrupted(format!(
                "the creation stopped unexpectedly ({err}); if it was debited, the job ends failed and refunded"
            )))
        })
    }

    /// Waits until no creation is under way, for at most `timeout` (graceful shutdown: a
    /// job whose debit is committed is bound to its Replicate id or failed before exit).
    pub async fn drain(&self, timeout: Duration) -> bool {
        self.inner.in_flight.drain(timeout).await
    }

    /// `GET /api/jobs?limit=N&before=<cursor>` (see [`list::list`]), with what the gallery
    /// needs to show its forms.
    pub async fn list(
        &self,
        user_id: &str,
        limit: Option<&str>,
        before: Option<&str>,
    ) -> Result<Value, JobsError> {
        let mut page = list::list(&self.inner.pool, user_id, limit, before).await?;
        page["jobs_api"] = self.features();
        Ok(page)
    }

    /// `POST /api/jobs/{id}/cancel`: asks Replicate to cancel a running job (see
    /// [`cancel`]); a job Replicate has not named yet is cancelled as soon as it is.
    pub async fn cancel(&self, user_id: &str, id: &str) -> Result<JobState, JobsError> {
        let replicate = self.inner.replicate()?;
        validate::no_nul("the job id", id)?;
        let mut conn = db::connection(&self.inner.pool).await?;
        let job = cancel::find(&mut conn, user_id, id).await?;
        cancel::check_running(&job)?;
        let training = matches!(job, JobState::Training(_));
        let replicate_id = match job.job_id() {
            Some(replicate_id) => replicate_id.to_owned(),
            None => {
                if cancel::mark_requested(&mut conn, &job).await? {
                    tracing::info!(%user_id, %id, "cancel asked before Replicate named the job: cancelled once it does");
                    return Ok(job);
                }
                // Named meanwhile: cancel it by that name.
                let named = cancel::find(&mut conn, user_id, id).await?;
                named.job_id().map(str::to_owned).unwrap_or_default()
            }
        };
        drop(conn);
        replicate
            .cancel(training, &replicate_id)
            .await
            .map_err(|err| {
                tracing::warn!(%user_id, %id, job_id = %replicate_id, error = %shared::telemetry::error_chain(&err), "Replicate did not take the cancel");
                JobsError::ReplicateUnavailable(format!("{err}; the job was not cancelled"))
            })?;
        metrics::counter!("notifier_cancels_total").increment(1);
        tracing::info!(%user_id, %id, job_id = %replicate_id, "cancel asked of Replicate");
        Ok(job)
    }

    /// `GET /api/models`: the user's models, newest first (the generate form's picker).
    pub async fn models(&self, user_id: &str) -> Result<Value, JobsError> {
        list::models(&self.inner.pool, user_id).await
    }

    /// Closes the broker link (after [`JobsApi::drain`]).
    /// Replicate's API; `None` without `REPLICATE_API_TOKEN`.
    pub fn replicate(&self) -> Option<&ReplicateApi> {
        self.inner.replicate.as_ref()
    }

    /// Publishes an event another part of the notifier stored (an operator's change), as
    /// this API publishes its own.
    pub async fn publish(&self, stored: &StoredEvent) {
        self.inner.publisher.publish(stored).await;
    }

    pub async fn close(&self) {
        self.inner.publisher.close().await;
    }
}

impl Inner {
    /// The person asked to cancel while Replicate was creating the job: asked now.
    async fn cancel_asked_earlier(&self, row_id: &str, kind: JobKind, replicate_id: &str) {
        let Ok(replicate) = self.replicate() else {
            return;
        };
        match replicate
            .cancel(kind == JobKind::Training, replicate_id)
            .await
        {
            Ok(()) => {
                tracing::info!(id = %row_id, job_id = %replicate_id, "cancel asked during creation passed on to Replicate")
            }
            Err(err) => {
                tracing::warn!(id = %row_id, job_id = %replicate_id, error = %shared::telemetry::error_chain(&err), "cancel asked during creation not taken by Replicate")
            }
        }
    }

    fn replicate(&self) -> Result<&ReplicateApi, JobsError> {
        self.replicate.as_ref().ok_or_else(|| {
            JobsError::NotConfigured(
                "job creation is not configured: the notifier has no REPLICATE_API_TOKEN".into(),
            )
        })
    }

    /// Debit and row first (committed), then Replicate — with no database connection held
    /// while it answers — then its id. A refusal fails the job and refunds it.
    async fn run_creation(
        &self,
        user_id: &str,
        new: NewJob,
        request: Request,
    ) -> Result<Created, JobsError> {
        let replicate = self.replicate()?;
        let started = std::time::Instant::now();
        let job = {
            let mut conn = db::connection(&self.pool).await?;
            record_pending(&mut conn, user_id, &new).await?
        };
        let answer = replicate.create(&job.id, &request).await;
        // The job is debited and Replicate has answered: a database lost now (a primary
        // failing over) is waited out for a while rather than answered 503, since the
        // job goes on either way (its first webhook binds it). Storing the answer is
        // idempotent: a bind or a failure that did commit is found done on the next try.
        let deadline = started + self.config.replicate.creation_deadline();
        loop {
            match self
                .store_answer(user_id, &new, &job, &answer, started)
                .await
            {
                Err(JobsError::Database(err))
                    if err.is_transient()
                        && std::time::Instant::now() + STORE_RETRY_PAUSE < deadline =>
                {
                    tracing::warn!(%user_id, id = %job.id, error = %err, "cannot store Replicate's answer yet; trying again");
                    tokio::time::sleep(STORE_RETRY_PAUSE).await;
                }
                Err(JobsError::Database(err)) => {
                    return Err(JobsError::Interrupted(format!(
                        "job {} was debited and sent to Replicate, but its answer could not be stored ({err}); the job goes on and appears in the gallery, or ends failed and refunded",
                        job.id
                    )));
                }
                stored => return stored,
            }
        }
    }

    /// Binds the job to Replicate's id, or fails and refunds it when Replicate refused.
    async fn store_answer(
        &self,
        user_id: &str,
        new: &NewJob,
        job: &Job,
        answer: &Result<String, ReplicateError>,
        started: std::time::Instant,
    ) -> Result<Created, JobsError> {
        let kind = new.kind;
        let mut conn = db::connection(&self.pool).await?;
        match answer {
            Ok(replicate_id) => {
                let (created, cancel_requested) =
                    match bind::bind(&mut conn, &job.id, replicate_id).await? {
                        Binding::Bound {
                            event,
                            cancel_requested,
                            ..
                        } => {
                            self.publisher.publish(&event).await;
                            (created_from(&event), cancel_requested)
                        }
                        // The job's first webhook got here first (the worker bound it), or it
                        // has moved on since: answer with the job as it stands.
                        Binding::AlreadyBound(_) | Binding::NotWaiting(_) | Binding::NoRow => (
                            Created {
                                job: job_state(&mut conn, job).await?,
                                credits: credits_of(&mut conn, user_id).await?,
                            },
                            cancel::was_requested(&mut conn, kind == JobKind::Training, &job.id)
                                .await?,
                        ),
                    };
                if cancel_requested {
                    self.cancel_asked_earlier(&job.id, kind, replicate_id).await;
                }
                metrics::counter!("notifier_jobs_created_total", "kind" => kind.as_str())
                    .increment(1);
                tracing::info!(%user_id, id = %job.id, job_id = %replicate_id, %kind, cost = new.cost, elapsed_ms = started.elapsed().as_millis() as u64, "job created on Replicate");
                Ok(created)
            }
            Err(err) => {
                let failed = bind::fail_unbound(&mut conn, &job.id, err.to_string()).await?;
                let Some(applied) = failed else {
                    // A webhook bound the job meanwhile: Replicate did create it (its answer
                    // was too slow, or lost), and it goes on like any other.
                    let state = job_state(&mut conn, job).await?;
                    let credits = credits_of(&mut conn, user_id).await?;
                    if state.job_id().is_some() {
                        tracing::info!(%user_id, id = %job.id, %kind, error = %shared::telemetry::error_chain(err), "Replicate's answer failed, but the job's webhook had already bound it");
                        return Ok(Created {
                            job: state,
                            credits,
                        });
                    }
                    return Err(JobsError::Replicate {
                        message: err.to_string(),
                        job: Box::new(state),
                        credits,
                    });
                };
                metrics::counter!("notifier_jobs_refused_total", "kind" => kind.as_str())
                    .increment(1);
                tracing::warn!(%user_id, id = %job.id, %kind, error = %shared::telemetry::error_chain(err), elapsed_ms = started.elapsed().as_millis() as u64, "Replicate did not create the job; refunded");
                self.publisher.publish(&applied.event).await;
                let message = match err {
                    ReplicateError::Unreachable(_) => format!(
                        "{err}; the job is marked failed and its {} credits are refunded (if Replicate did start it, its results are not kept)",
                        new.cost
                    ),
                    _ => format!(
                        "{err}; the job is marked failed and its {} credits are refunded",
                        new.cost
                    ),
                };
                Err(JobsError::Replicate {
                    message,
                    job: Box::new(applied.event.event.job().expect("a status event")),
                    credits: credits_of(&mut conn, user_id).await?,
                })
            }
        }
    }
}
