//! The jobs API behind the gallery: list a user's jobs (the state as of a `seq`, so the page
//! can subscribe from there), and create generations, upscales and trainings.
//!
//! Creating a job debits its cost, inserts its row and stores a `PENDING` event in one
//! transaction; then the job is created on Replicate with the pipeline's webhook URL and
//! Replicate's id is stored. When Replicate refuses or cannot be reached, the job goes to
//! `FAILED` through the same ledger call as a failed webhook ([`shared::jobs::apply`]),
//! which refunds it exactly once.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use diesel::prelude::*;
use diesel_async::{AsyncConnection, RunQueryDsl};
use serde_json::{Value, json};
use shared::db::schema::{ai_models, credit_transactions, generations, users};
use shared::db::{self, Connection, DbError, Pool};
use shared::events::{Event, JobKind, JobState};
use shared::jobs::apply::ApplyError;
use shared::jobs::bind::{self, Binding};
use shared::jobs::event_log::{self, StoredEvent};
use shared::jobs::{DEBIT, GenerationRow, Job, TrainingRow, UPSCALE_MARKER};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::config::JobsConfig;
use crate::replicate::{CreateError, ReplicateApi, Request};
use crate::sessions::Sessions;

pub const MAX_PROMPT_CHARS: usize = 2000;
pub const MAX_NAME_CHARS: usize = 100;
const DEFAULT_PAGE: i64 = 30;
const MAX_PAGE: i64 = 100;

/// Why a call of the jobs API did not do what it was asked; each maps to one status.
#[derive(Debug, thiserror::Error)]
pub enum JobsError {
    #[error("{0}")]
    Invalid(String),
    #[error("{0}")]
    InsufficientCredits(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    /// Replicate refused the job or did not answer; it is `FAILED` and refunded.
    #[error("{message}")]
    Replicate {
        message: String,
        job: Box<JobState>,
        credits: i32,
    },
    #[error("{0}")]
    NotConfigured(String),
    /// This user, or everyone together, has as many creations waiting on Replicate as
    /// allowed.
    #[error("{0}")]
    TooMany(String),
    /// The creation's task ended without an answer (a bug, or shutdown).
    #[error("{0}")]
    Interrupted(String),
    #[error("the database is unavailable: {0}")]
    Database(#[from] DbError),
    /// Failing the job Replicate refused did not go through (a stored status this version
    /// does not know, or the database).
    #[error("the job could not be failed: {0}")]
    Ledger(#[from] ApplyError),
}

impl From<diesel::result::Error> for JobsError {
    fn from(err: diesel::result::Error) -> Self {
        Self::Database(err.into())
    }
}

impl JobsError {
    pub fn status(&self) -> u16 {
        match self {
            Self::Invalid(_) => 400,
            Self::InsufficientCredits(_) => 402,
            Self::NotFound(_) => 404,
            Self::Conflict(_) => 409,
            Self::TooMany(_) => 429,
            Self::Replicate { .. } => 502,
            Self::NotConfigured(_) | Self::Database(_) | Self::Ledger(_) | Self::Interrupted(_) => {
                503
            }
        }
    }

    /// The JSON answer: `{"error": …}`, plus the failed job and the balance after its
    /// refund when Replicate refused it.
    pub fn body(&self) -> Value {
        match self {
            Self::Replicate {
                message,
                job,
                credits,
            } => json!({"error": message, "job": job, "credits": credits}),
            other => json!({"error": other.to_string()}),
        }
    }
}

/// A job made by the API: its state and the user's balance after the debit.
#[derive(Debug, Clone)]
pub struct Created {
    pub job: JobState,
    pub credits: i32,
}

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
    sessions: Arc<Sessions>,
    in_flight: InFlight,
}

/// One job to create.
struct NewJob {
    kind: JobKind,
    /// The prompt of a generation or upscale, the name of a training.
    text: String,
    cost: i32,
}

impl JobsApi {
    pub fn new(config: &JobsConfig, pool: Pool, sessions: Arc<Sessions>) -> Self {
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
                pool,
                sessions,
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

    /// `POST /api/generations {"prompt": …}`
    pub async fn create_generation(
        &self,
        user_id: &str,
        prompt: &str,
    ) -> Result<Created, JobsError> {
        self.check_configured()?;
        let prompt = prompt.trim();
        if prompt.is_empty() {
            return Err(JobsError::Invalid("the prompt is empty".into()));
        }
        let length = prompt.chars().count();
        if length > MAX_PROMPT_CHARS {
            return Err(JobsError::Invalid(format!(
                "the prompt has {length} characters; at most {MAX_PROMPT_CHARS} are allowed"
            )));
        }
        check_no_nul("the prompt", prompt)?;
        let new = NewJob {
            kind: JobKind::Generation,
            text: prompt.to_owned(),
            cost: self.inner.config.generation_cost.into(),
        };
        let request = Request::Prediction {
            model: self.inner.config.generation_model.clone(),
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
        check_no_nul("the generation id", source_id)?;
        let mut conn = db::connection(&self.inner.pool).await?;
        let source: Option<GenerationRow> = generations::table
            .find(source_id)
            .filter(generations::user_id.eq(user_id))
            .select(GenerationRow::as_select())
            .first(&mut conn)
            .await
            .optional()?;
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
        let new = NewJob {
            kind: JobKind::Upscale,
            text: format!("{UPSCALE_MARKER} {}", source.prompt),
            cost: self.inner.config.upscale_cost.into(),
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
        self.check_configured()?;
        let Some(destination) = self.inner.config.training_destination.clone() else {
            return Err(JobsError::NotConfigured(
                "model training is not configured: the notifier has no TRAINING_DESTINATION".into(),
            ));
        };
        let name = name.trim();
        let length = name.chars().count();
        if name.is_empty() || length > MAX_NAME_CHARS || name.chars().any(char::is_control) {
            return Err(JobsError::Invalid(format!(
                "the model name must be 1 to {MAX_NAME_CHARS} characters without control characters"
            )));
        }
        check_zip_url(input_images)?;
        let new = NewJob {
            kind: JobKind::Training,
            text: name.to_owned(),
            cost: self.inner.config.training_cost.into(),
        };
        let request = Request::Training {
            model: self.inner.config.training_model.clone(),
            destination,
            input: json!({"input_images": input_images.trim()}),
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
}

impl Inner {
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
        let kind = new.kind;
        let answer = replicate.create(&job.id, &request).await;
        let mut conn = db::connection(&self.pool).await?;
        match answer {
            Ok(replicate_id) => {
                let created = match bind::bind(&mut conn, &job.id, &replicate_id).await? {
                    Binding::Bound { event, .. } => {
                        publish(&self.sessions, &mut conn, &event).await;
                        created_from(&event)
                    }
                    // The job's first webhook got here first (the worker bound it), or it
                    // has moved on since: answer with the job as it stands.
                    Binding::AlreadyBound(_) | Binding::NotWaiting(_) | Binding::NoRow => Created {
                        job: job_state(&mut conn, &job).await?,
                        credits: credits_of(&mut conn, user_id).await?,
                    },
                };
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
                    let state = job_state(&mut conn, &job).await?;
                    let credits = credits_of(&mut conn, user_id).await?;
                    if state.job_id().is_some() {
                        tracing::info!(%user_id, id = %job.id, %kind, error = %shared::telemetry::error_chain(&err), "Replicate's answer failed, but the job's webhook had already bound it");
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
                tracing::warn!(%user_id, id = %job.id, %kind, error = %shared::telemetry::error_chain(&err), elapsed_ms = started.elapsed().as_millis() as u64, "Replicate did not create the job; refunded");
                publish(&self.sessions, &mut conn, &applied.event).await;
                let message = match &err {
                    CreateError::Unreachable(_) => format!(
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

/// The answer to a creation from the job's first stored event.
fn created_from(stored: &StoredEvent) -> Created {
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

/// PostgreSQL refuses NUL in text: that is the client's mistake, answered `400`.
fn check_no_nul(what: &str, text: &str) -> Result<(), JobsError> {
    if text.contains('\0') {
        return Err(JobsError::Invalid(format!(
            "{what} contains a NUL character"
        )));
    }
    Ok(())
}

/// Creations waiting on Replicate: at most `per_user` for one user and `total` for all.
struct InFlight {
    per_user: usize,
    total: usize,
    permits: Arc<Semaphore>,
    users: Arc<Mutex<HashMap<String, usize>>>,
}

/// One creation's place; given back when dropped.
struct Slot {
    user_id: String,
    users: Arc<Mutex<HashMap<String, usize>>>,
    _permit: OwnedSemaphorePermit,
}

impl InFlight {
    fn new(per_user: usize, total: usize) -> Self {
        Self {
            per_user: per_user.max(1),
            total: total.max(1),
            permits: Arc::new(Semaphore::new(total.max(1))),
            users: Arc::default(),
        }
    }

    fn take(&self, user_id: &str) -> Result<Slot, JobsError> {
        let mut users = self.users.lock().expect("not poisoned");
        let mine = users.get(user_id).copied().unwrap_or(0);
        if mine >= self.per_user {
            metrics::counter!("notifier_creations_refused_total", "reason" => "user_busy")
                .increment(1);
            return Err(JobsError::TooMany(format!(
                "you already have {mine} jobs being created; try again once one has started"
            )));
        }
        let Ok(permit) = self.permits.clone().try_acquire_owned() else {
            metrics::counter!("notifier_creations_refused_total", "reason" => "busy").increment(1);
            return Err(JobsError::TooMany(
                "too many jobs are being created right now; try again in a moment".into(),
            ));
        };
        users.insert(user_id.to_owned(), mine + 1);
        metrics::gauge!("notifier_creations_in_flight").increment(1.0);
        Ok(Slot {
            user_id: user_id.to_owned(),
            users: self.users.clone(),
            _permit: permit,
        })
    }

    async fn drain(&self, timeout: Duration) -> bool {
        let all = u32::try_from(self.total).unwrap_or(u32::MAX);
        tokio::time::timeout(timeout, self.permits.acquire_many(all))
            .await
            .is_ok_and(|permits| permits.is_ok())
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        metrics::gauge!("notifier_creations_in_flight").decrement(1.0);
        let mut users = self.users.lock().expect("not poisoned");
        if let Some(count) = users.get_mut(&self.user_id) {
            *count -= 1;
            if *count == 0 {
                users.remove(&self.user_id);
            }
        }
    }
}

fn check_zip_url(text: &str) -> Result<(), JobsError> {
    let invalid = |why: &str| {
        JobsError::Invalid(format!(
            "input_images must be the https URL of a zip file of your photos: {why}"
        ))
    };
    let url = reqwest::Url::parse(text.trim()).map_err(|err| invalid(&err.to_string()))?;
    if url.scheme() != "https" {
        return Err(invalid(&format!("{} is not https", url.scheme())));
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err(invalid("no host"));
    }
    Ok(())
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
async fn record_pending(
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

async fn job_state(conn: &mut Connection, job: &Job) -> Result<JobState, JobsError> {
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

async fn credits_of(conn: &mut Connection, user_id: &str) -> Result<i32, diesel::result::Error> {
    Ok(users::table
        .find(user_id)
        .select(users::credits)
        .first(conn)
        .await
        .optional()?
        .unwrap_or(0))
}

/// Publishes a stored event to every notifier; when the broker cannot take it now, the
/// worker's outbox sweep publishes it shortly.
async fn publish(sessions: &Sessions, conn: &mut Connection, stored: &StoredEvent) {
    match sessions.publish(&stored.event).await {
        Ok(()) => {
            if let Err(err) = event_log::mark_published(conn, &stored.user_id, stored.seq).await {
                tracing::warn!(user_id = %stored.user_id, seq = stored.seq, error = %err, "event published but not marked; the sweep publishes it again");
            }
        }
        Err(err) => {
            tracing::warn!(user_id = %stored.user_id, seq = stored.seq, error = %err, "event not published yet; the worker's outbox sweep will");
        }
    }
}

/// A page of jobs, newest first: where the next page starts (`before`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cursor {
    created_at: DateTime<Utc>,
    id: String,
}

impl Cursor {
    fn encode(&self) -> String {
        format!("{}_{}", self.created_at.timestamp_micros(), self.id)
    }

    fn parse(text: &str) -> Result<Self, JobsError> {
        let invalid = || JobsError::Invalid(format!("before={text:?} is not a cursor from `next`"));
        let (micros, id) = text.split_once('_').ok_or_else(invalid)?;
        if id.is_empty() || id.chars().any(char::is_control) {
            return Err(invalid());
        }
        let created_at = micros
            .parse::<i64>()
            .ok()
            .and_then(DateTime::from_timestamp_micros)
            .ok_or_else(invalid)?;
        Ok(Self {
            created_at,
            id: id.to_owned(),
        })
    }
}

/// `GET /api/jobs?limit=N&before=<cursor>`: the user's jobs, newest first, read in one
/// snapshot with the user's latest `seq` and balance.
pub async fn list(
    pool: &Pool,
    user_id: &str,
    limit: Option<&str>,
    before: Option<&str>,
) -> Result<Value, JobsError> {
    let limit = match limit {
        None | Some("") => DEFAULT_PAGE,
        Some(text) => text
            .parse::<i64>()
            .ok()
            .filter(|n| (1..=MAX_PAGE).contains(n))
            .ok_or_else(|| {
                JobsError::Invalid(format!("limit must be a number from 1 to {MAX_PAGE}"))
            })?,
    };
    let before = before
        .filter(|b| !b.is_empty())
        .map(Cursor::parse)
        .transpose()?;
    let mut conn = db::connection(pool).await?;
    let (seq, credits, generation_rows, training_rows) = conn
        .build_transaction()
        .read_only()
        .repeatable_read()
        .run(async |conn| {
            let account: Option<(i64, i32)> = users::table
                .find(user_id)
                .select((users::event_seq, users::credits))
                .first(conn)
                .await
                .optional()?;
            let mut generation_query = generations::table
                .filter(generations::user_id.eq(user_id))
                .order((generations::created_at.desc(), generations::id.desc()))
                .limit(limit + 1)
                .select(GenerationRow::as_select())
                .into_boxed();
            let mut training_query = ai_models::table
                .filter(ai_models::user_id.eq(user_id))
                .order((ai_models::created_at.desc(), ai_models::id.desc()))
                .limit(limit + 1)
                .select(TrainingRow::as_select())
                .into_boxed();
            if let Some(cursor) = &before {
                generation_query = generation_query.filter(
                    generations::created_at
                        .lt(cursor.created_at)
                        .or(generations::created_at
                            .eq(cursor.created_at)
                            .and(generations::id.lt(&cursor.id))),
                );
                training_query = training_query.filter(
                    ai_models::created_at
                        .lt(cursor.created_at)
                        .or(ai_models::created_at
                            .eq(cursor.created_at)
                            .and(ai_models::id.lt(&cursor.id))),
                );
            }
            let generation_rows = generation_query.load(conn).await?;
            let training_rows = training_query.load(conn).await?;
            let (seq, credits) = account.unwrap_or((0, 0));
            Ok::<_, diesel::result::Error>((seq, credits, generation_rows, training_rows))
        })
        .await?;

    let mut page: Vec<(Cursor, JobState)> = generation_rows
        .into_iter()
        .map(|row| {
            (
                Cursor {
                    created_at: row.created_at,
                    id: row.id.clone(),
                },
                row.into(),
            )
        })
        .chain(training_rows.into_iter().map(|row| {
            (
                Cursor {
                    created_at: row.created_at,
                    id: row.id.clone(),
                },
                row.into(),
            )
        }))
        .collect();
    page.sort_by(|a, b| (b.0.created_at, &b.0.id).cmp(&(a.0.created_at, &a.0.id)));
    let more = page.len() as i64 > limit;
    page.truncate(limit as usize);
    let next = more
        .then(|| page.last().map(|(cursor, _)| cursor.encode()))
        .flatten();
    let jobs: Vec<JobState> = page.into_iter().map(|(_, job)| job).collect();
    Ok(json!({"seq": seq, "credits": credits, "jobs": jobs, "next": next}))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors_round_trip_and_reject_garbage() {
        let cursor = Cursor {
            created_at: DateTime::from_timestamp_micros(1_764_400_000_123_456).unwrap(),
            id: "gen_a_b".into(),
        };
        assert_eq!(Cursor::parse(&cursor.encode()).unwrap(), cursor);
        for bad in ["", "abc", "12", "x_gen"] {
            assert!(Cursor::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn training_zips_must_be_https() {
        assert!(check_zip_url("https://example.com/photos.zip").is_ok());
        for bad in [
            "http://example.com/a.zip",
            "photos.zip",
            "",
            "file:///etc/passwd",
        ] {
            assert!(check_zip_url(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn errors_map_to_the_contracts_statuses() {
        assert_eq!(JobsError::Invalid("x".into()).status(), 400);
        assert_eq!(JobsError::InsufficientCredits("x".into()).status(), 402);
        assert_eq!(JobsError::NotFound("x".into()).status(), 404);
        assert_eq!(JobsError::Conflict("x".into()).status(), 409);
        assert_eq!(JobsError::NotConfigured("x".into()).status(), 503);
        assert_eq!(
            JobsError::Invalid("empty".into()).body(),
            json!({"error": "empty"})
        );
        assert!(new_row_id(JobKind::Upscale).starts_with("gen_"));
        assert_eq!(new_row_id(JobKind::Training).len(), 24);
    }
}
