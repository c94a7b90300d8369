//! Why a call of the jobs API did not do what it was asked, each mapped to one status, and
//! what a creation answers.

use serde_json::{Value, json};
use shared::db::DbError;
use shared::events::JobState;
use shared::jobs::apply::ApplyError;

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
    /// Replicate did not take a request about an existing job (a cancel); nothing changed.
    #[error("{0}")]
    ReplicateUnavailable(String),
    #[error("{0}")]
    NotConfigured(String),
    /// An upload over its limits (size, number of photos); nothing was debited.
    #[error("{0}")]
    TooLarge(String),
    /// This user, or everyone together, has as many creations waiting on Replicate as
    /// allowed.
    #[error("{0}")]
    TooMany(String),
    /// The creation's task ended without an answer (a bug, or shutdown), or Replicate's
    /// answer could not be stored before the creation's deadline (the database away): the
    /// job goes on either way.
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
            Self::TooLarge(_) => 413,
            Self::TooMany(_) => 429,
            Self::Replicate { .. } | Self::ReplicateUnavailable(_) => 502,
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_map_to_the_contracts_statuses() {
        assert_eq!(JobsError::Invalid("x".into()).status(), 400);
        assert_eq!(JobsError::InsufficientCredits("x".into()).status(), 402);
        assert_eq!(JobsError::NotFound("x".into()).status(), 404);
        assert_eq!(JobsError::Conflict("x".into()).status(), 409);
        assert_eq!(JobsError::TooMany("x".into()).status(), 429);
        assert_eq!(JobsError::TooLarge("x".into()).status(), 413);
        assert_eq!(JobsError::NotConfigured("x".into()).status(), 503);
        assert_eq!(
            JobsError::Invalid("empty".into()).body(),
            json!({"error": "empty"})
        );
    }
}
