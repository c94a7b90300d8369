//! One job on its own page: what it is now, and everything that happened to it in order —
//! every handling of its webhooks, every event its user was sent, its ledger rows and what
//! operators did.

use chrono::{DateTime, Utc};
use diesel::prelude::*;
use diesel_async::RunQueryDsl;
use serde::Serialize;
use shared::db::Connection;
use shared::db::schema::{
    ai_models, credit_transactions, generations, job_events, operator_actions, webhook_attempts,
};
use shared::events::JobKind;
use shared::jobs::{Job, kind_of_generation};

use crate::ops::webhooks::AttemptRow;
use crate::ops::{Operations, OpsError};

/// Entries of one kind shown at most (a job has a handful; a runaway one is cut, not slow).
const MAX_ENTRIES: i64 = 500;

/// A job as the console shows it.
#[derive(Debug, Serialize)]
pub struct JobSummary {
    pub id: String,
    pub kind: JobKind,
    pub user_id: String,
    /// Replicate's id, once known.
    pub job_id: Option<String>,
    pub status: String,
    /// The prompt, or the model's name for a training.
    pub label: String,
    pub credits_used: i32,
    pub error_message: Option<String>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

impl JobSummary {
    /// The job as the ledger knows it (its credit transactions are keyed by Replicate's id,
    /// or by the row's id while Replicate has not given one).
    pub fn ledger_job(&self) -> Job {
        Job {
            kind: self.kind,
            id: self.id.clone(),
            user_id: self.user_id.clone(),
            job_id: self.job_id.clone().unwrap_or_else(|| self.id.clone()),
            status: self.status.clone(),
        }
    }
}

/// One line of the timeline.
#[derive(Debug, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Entry {
    Webhook(AttemptRow),
    Event {
        at: DateTime<Utc>,
        seq: i64,
        status: Option<String>,
        refunded: i64,
        published_at: Option<DateTime<Utc>>,
    },
    Ledger {
        at: DateTime<Utc>,
        kind: String,
        amount: i32,
    },
    Operator {
        at: DateTime<Utc>,
        action: String,
        detail: String,
    },
}

impl Entry {
    fn at(&self) -> DateTime<Utc> {
        match self {
            Self::Webhook(row) => row.at,
            Self::Event { at, .. } | Self::Ledger { at, .. } | Self::Operator { at, .. } => *at,
        }
    }
}

#[derive(Debug, Serialize)]
pub struct Timeline {
    pub job: JobSummary,
    pub entries: Vec<Entry>,
}

/// The job with row id or Replicate id `id`, in either table.
pub async fn find(conn: &mut Connection, id: &str) -> Result<JobSummary, OpsError> {
    type GenerationColumns = (
        String,
        String,
        Option<String>,
        String,
        String,
        i32,
        Option<String>,
        DateTime<Utc>,
        DateTime<Utc>,
    );
    let generation: Option<GenerationColumns> = generations::table
        .filter(generations::id.eq(id).or(generations::job_id.eq(id)))
        .select((
            generations::id,
            generations::user_id,
            generations::job_id,
            generations::status,
            generations::prompt,
            generations::credits_used,
            generations::error_message,
            generations::created_at,
            generations::updated_at,
        ))
        .first(conn)
        .await
        .optional()?;
    if let Some((id, user_id, job_id, status, prompt, credits_used, error, created, updated)) =
        generation
    {
        return Ok(JobSummary {
            kind: kind_of_generation(&prompt),
            id,
            user_id,
            job_id,
            status,
            label: prompt,
            credits_used,
            error_message: error,
            created_at: created,
            updated_at: updated,
        });
    }
    let training: Option<GenerationColumns> = ai_models::table
        .filter(ai_models::id.eq(id).or(ai_models::job_id.eq(id)))
        .select((
            ai_models::id,
            ai_models::user_id,
            ai_models::job_id,
            ai_models::status,
            ai_models::name,
            ai_models::credits_used,
            ai_models::error_message,
            ai_models::created_at,
            ai_models::updated_at,
        ))
        .first(conn)
        .await
        .optional()?;
    training
        .map(
            |(id, user_id, job_id, status, name, credits_used, error, created, updated)| {
                JobSummary {
                    kind: JobKind::Training,
                    id,
                    user_id,
                    job_id,
                    status,
                    label: name,
                    credits_used,
                    error_message: error,
                    created_at: created,
                    updated_at: updated,
                }
            },
        )
        .ok_or_else(|| OpsError::NotFound(format!("no job has the id {id:?}")))
}

impl Operations {
    /// The job with row id or Replicate id `id`, and its whole story in order.
    pub async fn timeline(&self, id: &str) -> Result<Timeline, OpsError> {
        let mut conn = shared::db::connection(&self.pool).await?;
        let job = find(&mut conn, id).await?;
        let replicate_id = job.job_id.clone().unwrap_or_default();
        let mut entries: Vec<Entry> = Vec::new();

        // Webhooks by the job they were found for, and those dead-lettered or retried
        // before the job was found (they know only Replicate's id).
        let webhooks: Vec<AttemptRow> = webhook_attempts::table
            .filter(
                webhook_attempts::job_row_id
                    .eq(&job.id)
                    .or(webhook_attempts::replicate_id.eq(&replicate_id)),
            )
            .select(AttemptRow::as_select())
            .order(webhook_attempts::id.asc())
            .limit(MAX_ENTRIES)
            .load(&mut conn)
            .await?;
        entries.extend(webhooks.into_iter().map(Entry::Webhook));

        type EventColumns = (i64, serde_json::Value, DateTime<Utc>, Option<DateTime<Utc>>);
        let events: Vec<EventColumns> = job_events::table
            .filter(job_events::user_id.eq(&job.user_id))
            .filter(
                diesel::dsl::sql::<diesel::sql_types::Bool>("payload -> 'job' ->> 'id' = ")
                    .bind::<diesel::sql_types::Text, _>(&job.id),
            )
            .select((
                job_events::seq,
                job_events::payload,
                job_events::created_at,
                job_events::published_at,
            ))
            .order(job_events::seq.asc())
            .limit(MAX_ENTRIES)
            .load(&mut conn)
            .await?;
        entries.extend(
            events
                .into_iter()
                .map(|(seq, payload, at, published_at)| Entry::Event {
                    at,
                    seq,
                    status: payload["job"]["status"].as_str().map(str::to_owned),
                    refunded: payload["refunded"].as_i64().unwrap_or(0),
                    published_at,
                }),
        );

        let ledger: Vec<(DateTime<Utc>, String, i32)> = credit_transactions::table
            .filter(credit_transactions::job_id.eq_any([job.id.clone(), replicate_id]))
            .select((
                credit_transactions::created_at,
                credit_transactions::kind,
                credit_transactions::amount,
            ))
            .load(&mut conn)
            .await?;
        entries.extend(ledger.into_iter().map(|(at, kind, amount)| Entry::Ledger {
            at,
            kind,
            amount,
        }));

        let actions: Vec<(DateTime<Utc>, String, String)> = operator_actions::table
            .filter(operator_actions::job_row_id.eq(&job.id))
            .select((
                operator_actions::at,
                operator_actions::action,
                operator_actions::detail,
            ))
            .load(&mut conn)
            .await?;
        entries.extend(
            actions
                .into_iter()
                .map(|(at, action, detail)| Entry::Operator { at, action, detail }),
        );

        // Stable: within one instant, the order each kind was read in stays.
        entries.sort_by_key(Entry::at);
        Ok(Timeline { job, entries })
    }
}
