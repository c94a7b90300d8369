//! The jobs' ledger, shared by the worker (webhooks) and the notifier's jobs API (creation,
//! and the refund when Replicate refuses a job): the status state machine, one transaction
//! per status change, exactly-once refunds and the per-user event log.
//!
//! Both services change a job only through [`apply::apply`] or, for the worker's batches,
//! [`batch::apply_many`] (and create one only through the jobs API), so a job is debited
//! once, refunded at most once, and every change gets the user's next gapless `seq`.

pub mod apply;
pub mod batch;
pub mod bind;
pub mod event_log;
pub mod published_marks;
pub mod refund;
pub mod transition;

use chrono::{DateTime, SecondsFormat, Utc};
use diesel::prelude::*;

use crate::db::schema::{ai_models, generations};
use crate::events::{GenerationJob, JobKind, JobState, ModelName, TrainingJob};

/// The `kind` of a job's debit in `credit_transactions` (written by the jobs API).
pub const DEBIT: &str = "DEBIT";

/// A `generations` row whose prompt starts with this is an upscale.
pub const UPSCALE_MARKER: &str = "[UPSCALED]";

/// A job as found, before any lock is taken.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Job {
    pub kind: JobKind,
    /// `generations.id` or `ai_models.id`.
    pub id: String,
    pub user_id: String,
    /// Replicate's id; the row's id while Replicate has not given one (the key of the job's
    /// credit transactions).
    pub job_id: String,
    /// The stored status text (see [`transition::JobStatus::parse`]).
    pub status: String,
}

impl Job {
    pub fn is_training(&self) -> bool {
        self.kind == JobKind::Training
    }
}

pub fn kind_of_generation(prompt: &str) -> JobKind {
    if prompt.starts_with(UPSCALE_MARKER) {
        JobKind::Upscale
    } else {
        JobKind::Generation
    }
}

fn timestamp(at: &DateTime<Utc>) -> String {
    at.to_rfc3339_opts(SecondsFormat::Millis, true)
}

/// The columns of a `generations` row that browsers see.
#[derive(Debug, Clone, Queryable, QueryableByName, Selectable)]
#[diesel(table_name = generations, check_for_backend(diesel::pg::Pg))]
pub struct GenerationRow {
    pub id: String,
    pub job_id: Option<String>,
    pub prompt: String,
    pub status: String,
    pub credits_used: i32,
    pub image_urls: Vec<String>,
    pub error_message: Option<String>,
    pub created_at: DateTime<Utc>,
    pub thumb_urls: Vec<String>,
    pub model_id: Option<String>,
    pub model_name: Option<String>,
    pub source_id: Option<String>,
}

impl From<GenerationRow> for JobState {
    fn from(row: GenerationRow) -> Self {
        JobState::Generation(GenerationJob {
            kind: kind_of_generation(&row.prompt),
            id: row.id,
            job_id: row.job_id,
            status: row.status,
            image_urls: row.image_urls,
            error: row.error_message,
            prompt: row.prompt,
            credits_used: row.credits_used,
            created_at: Some(timestamp(&row.created_at)),
            thumb_urls: row.thumb_urls,
            model: row.model_id.map(|id| ModelName {
                id,
                name: row.model_name.unwrap_or_default(),
            }),
            source_id: row.source_id,
        })
    }
}

/// The columns of an `ai_models` row that browsers see.
#[derive(Debug, Clone, Queryable, QueryableByName, Selectable)]
#[diesel(table_name = ai_models, check_for_backend(diesel::pg::Pg))]
pub struct TrainingRow {
    pub id: String,
    pub job_id: Option<String>,
    pub name: String,
    pub status: String,
    pub credits_used: i32,
    pub model_version: Option<String>,
    pub weights_url: Option<String>,
    pub error_message: Option<String>,
    pub created_at: DateTime<Utc>,
}

impl From<TrainingRow> for JobState {
    fn from(row: TrainingRow) -> Self {
        JobState::Training(TrainingJob {
            kind: JobKind::Training,
            id: row.id,
            job_id: row.job_id,
            status: row.status,
            model_version: row.model_version,
            weights_url: row.weights_url,
            error: row.error_message,
            name: row.name,
            credits_used: row.credits_used,
            created_at: Some(timestamp(&row.created_at)),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upscales_are_marked_in_the_prompt() {
        assert_eq!(kind_of_generation("[UPSCALED] a corgi"), JobKind::Upscale);
        assert_eq!(
            kind_of_generation("a corgi [UPSCALED]"),
            JobKind::Generation
        );
        assert_eq!(kind_of_generation(""), JobKind::Generation);
    }
}
