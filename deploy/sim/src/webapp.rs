//! The web app's side of the pipeline, as a real AI photo product does it: create the job on
//! Replicate with the webhook URL, then debit the user's credits and insert the job's row
//! (naming only the contract's columns). The webhook may arrive before the row exists; the
//! worker retries until it does.

use diesel::prelude::*;
use diesel_async::{AsyncConnection, RunQueryDsl};
use serde_json::{Value, json};
use shared::db::schema::{ai_models, credit_transactions, generations, users};
use shared::db::{self, DbError, Pool};
use shared::events::JobKind;

/// Credits each kind of job costs.
pub fn cost(kind: JobKind) -> i32 {
    match kind {
        JobKind::Generation => 4,
        JobKind::Upscale => 2,
        JobKind::Training => 40,
    }
}

#[derive(Debug, thiserror::Error)]
pub enum WebAppError {
    #[error("Replicate API: {0}")]
    Api(String),
    #[error("database: {0}")]
    Db(#[from] DbError),
    #[error("user {0} has not enough credits")]
    InsufficientCredits(String),
}

impl From<diesel::result::Error> for WebAppError {
    fn from(err: diesel::result::Error) -> Self {
        Self::Db(err.into())
    }
}

/// A job the app submitted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Submitted {
    pub user_id: String,
    pub kind: JobKind,
    /// `generations.id` or `ai_models.id`.
    pub id: String,
    /// Replicate's id.
    pub job_id: String,
    pub cost: i32,
}

pub struct WebApp {
    pub pool: Pool,
    http: reqwest::Client,
    /// Replicate's API base (the simulator's `http://host:port`).
    api_url: String,
    api_token: String,
    /// The pipeline's ingest endpoint, set on every job.
    webhook_url: String,
}

impl WebApp {
    pub fn new(pool: Pool, api_url: &str, api_token: &str, webhook_url: &str) -> Self {
        Self {
            pool,
            http: shared::http::client_builder().build().expect("HTTP client"),
            api_url: api_url.trim_end_matches('/').to_owned(),
            api_token: api_token.to_owned(),
            webhook_url: webhook_url.to_owned(),
        }
    }

    /// Creates the user with `credits` unless it exists.
    pub async fn ensure_user(&self, user_id: &str, credits: i32) -> Result<(), DbError> {
        let mut conn = db::connection(&self.pool).await?;
        diesel::insert_into(users::table)
            .values((users::id.eq(user_id), users::credits.eq(credits)))
            .on_conflict_do_nothing()
            .execute(&mut conn)
            .await?;
        Ok(())
    }

    /// Adds `credits` to a user's balance (a purchase).
    pub async fn top_up(&self, user_id: &str, credits: i32) -> Result<(), DbError> {
        let mut conn = db::connection(&self.pool).await?;
        let reference = format!("topup-{}", crate::prediction::new_id());
        conn.transaction(async |conn| {
            diesel::update(users::table.find(user_id))
                .set(users::credits.eq(users::credits + credits))
                .execute(conn)
                .await?;
            diesel::insert_into(credit_transactions::table)
                .values((
                    credit_transactions::user_id.eq(user_id),
                    credit_transactions::amount.eq(credits),
                    credit_transactions::kind.eq("TOPUP"),
                    credit_transactions::job_id.eq(&reference),
                ))
                .execute(conn)
                .await?;
            Ok::<_, DbError>(())
        })
        .await
    }

    /// Submits one job of `kind` for `user_id`.
    pub async fn submit(&self, user_id: &str, kind: JobKind) -> Result<Submitted, WebAppError> {
        let (path, input) = match kind {
            JobKind::Generation => (
                "predictions",
                json!({"prompt": "a studio photo of a rainbow colored corgi", "num_outputs": fastrand::usize(1..=2)}),
            ),
            JobKind::Upscale => (
                "predictions",
                json!({"image": "https://replicate.delivery/pbxt/input.png", "scale": 4}),
            ),
            JobKind::Training => (
                "trainings",
                json!({"input_images": "https://example.com/my-input-images.zip"}),
            ),
        };
        let response = self
            .http
            .post(format!("{}/v1/{path}", self.api_url))
            .bearer_auth(&self.api_token)
            .json(&json!({
                "version": "39ed52f2a78e934b3ba6e2a89f5b1c712de7dfea535525255b1aa35c5565e08b",
                "input": input,
                "webhook": self.webhook_url,
                "webhook_events_filter": ["start", "output", "logs", "completed"],
            }))
            .send()
            .await
            .map_err(|err| WebAppError::Api(err.to_string()))?;
        if !response.status().is_success() {
            return Err(WebAppError::Api(format!("answered {}", response.status())));
        }
        let created: Value = response
            .json()
            .await
            .map_err(|err| WebAppError::Api(err.to_string()))?;
        let job_id = created["id"]
            .as_str()
            .ok_or_else(|| WebAppError::Api("no id".into()))?
            .to_owned();
        let submitted = Submitted {
            user_id: user_id.to_owned(),
            kind,
            id: format!("{}_{}", kind.as_str(), job_id),
            job_id,
            cost: cost(kind),
        };
        self.record(&submitted).await?;
        Ok(submitted)
    }

    /// Debits the credits and inserts the job's row, in one transaction.
    async fn record(&self, job: &Submitted) -> Result<(), WebAppError> {
        let mut conn = db::connection(&self.pool).await?;
        let job = job.clone();
        conn.transaction(async |conn| {
            let debited = diesel::update(users::table.find(&job.user_id))
                .filter(users::credits.ge(job.cost))
                .set(users::credits.eq(users::credits - job.cost))
                .execute(conn)
                .await
                .map_err(DbError::from)?;
            if debited == 0 {
                return Err(WebAppError::InsufficientCredits(job.user_id.clone()));
            }
            diesel::insert_into(credit_transactions::table)
                .values((
                    credit_transactions::user_id.eq(&job.user_id),
                    credit_transactions::amount.eq(-job.cost),
                    credit_transactions::kind.eq("DEBIT"),
                    credit_transactions::job_id.eq(&job.job_id),
                ))
                .execute(conn)
                .await
                .map_err(DbError::from)?;
            match job.kind {
                JobKind::Training => diesel::insert_into(ai_models::table)
                    .values((
                        ai_models::id.eq(&job.id),
                        ai_models::user_id.eq(&job.user_id),
                        ai_models::job_id.eq(&job.job_id),
                        ai_models::name.eq("my portrait model"),
                        ai_models::credits_used.eq(job.cost),
                    ))
                    .execute(conn)
                    .await
                    .map_err(DbError::from)?,
                JobKind::Generation | JobKind::Upscale => {
                    let prompt = match job.kind {
                        JobKind::Upscale => "[UPSCALED] a studio photo of a rainbow colored corgi",
                        _ => "a studio photo of a rainbow colored corgi",
                    };
                    diesel::insert_into(generations::table)
                        .values((
                            generations::id.eq(&job.id),
                            generations::user_id.eq(&job.user_id),
                            generations::job_id.eq(&job.job_id),
                            generations::prompt.eq(prompt),
                            generations::credits_used.eq(job.cost),
                        ))
                        .execute(conn)
                        .await
                        .map_err(DbError::from)?
                }
            };
            Ok(())
        })
        .await
    }
}

/// A job kind at random: mostly generations, some upscales, a few trainings.
pub fn random_kind() -> JobKind {
    match fastrand::u32(0..10) {
        0 => JobKind::Training,
        1..=3 => JobKind::Upscale,
        _ => JobKind::Generation,
    }
}
