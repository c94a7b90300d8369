//! The webhook record (`webhook_attempts`, written by the workers): every handling of every
//! webhook, newest first, filtered by outcome, kind and time, searched by id.

use chrono::{DateTime, Utc};
use diesel::prelude::*;
use diesel_async::RunQueryDsl;
use serde::{Deserialize, Serialize};
use shared::db::schema::webhook_attempts;

use crate::ops::{Operations, OpsError};

/// Rows in one page, by default and at most.
const DEFAULT_LIMIT: i64 = 50;
const MAX_LIMIT: i64 = 500;

/// The outcomes a worker records (the `outcome` filter takes these).
pub const OUTCOMES: [&str; 7] = [
    "applied",
    "progress",
    "duplicate",
    "stale",
    "ignored",
    "retried",
    "dead_lettered",
];
const KINDS: [&str; 3] = ["generation", "upscale", "training"];

/// The list's filters, all optional (from the query string).
#[derive(Debug, Default, Deserialize)]
pub struct WebhookFilter {
    pub outcome: Option<String>,
    pub kind: Option<String>,
    /// RFC 3339 times: handled at or after `since`, before `until`.
    pub since: Option<String>,
    pub until: Option<String>,
    /// A webhook id, a Replicate id or a job's row id, exactly.
    pub q: Option<String>,
    /// The page before this row id (the previous page's `next`).
    pub before: Option<String>,
    pub limit: Option<String>,
}

/// One handling of one webhook.
#[derive(Debug, Serialize, Queryable, Selectable)]
#[diesel(table_name = webhook_attempts, check_for_backend(diesel::pg::Pg))]
pub struct AttemptRow {
    pub id: i64,
    pub at: DateTime<Utc>,
    pub webhook_id: String,
    pub replicate_id: Option<String>,
    pub job_row_id: Option<String>,
    pub kind: Option<String>,
    pub status: Option<String>,
    pub outcome: String,
    pub detail: String,
    pub attempt: i32,
    pub replays: i32,
    pub duration_ms: f32,
    pub waited_ms: Option<f32>,
}

#[derive(Debug, Serialize)]
pub struct WebhookPage {
    pub webhooks: Vec<AttemptRow>,
    /// The `before` of the next (older) page; `None` at the end.
    pub next: Option<i64>,
}

impl Operations {
    pub async fn webhooks(&self, filter: &WebhookFilter) -> Result<WebhookPage, OpsError> {
        let mut query = webhook_attempts::table
            .select(AttemptRow::as_select())
            .order(webhook_attempts::id.desc())
            .into_boxed();
        if let Some(outcome) = nonempty(&filter.outcome) {
            if !OUTCOMES.contains(&outcome) {
                return Err(OpsError::Invalid(format!(
                    "outcome must be one of {}",
                    OUTCOMES.join(", ")
                )));
            }
            query = query.filter(webhook_attempts::outcome.eq(outcome.to_owned()));
        }
        if let Some(kind) = nonempty(&filter.kind) {
            if !KINDS.contains(&kind) {
                return Err(OpsError::Invalid(format!(
                    "kind must be one of {}",
                    KINDS.join(", ")
                )));
            }
            query = query.filter(webhook_attempts::kind.eq(kind.to_owned()));
        }
        if let Some(since) = time(&filter.since, "since")? {
            query = query.filter(webhook_attempts::at.ge(since));
        }
        if let Some(until) = time(&filter.until, "until")? {
            query = query.filter(webhook_attempts::at.lt(until));
        }
        if let Some(q) = nonempty(&filter.q) {
            let q = q.trim().to_owned();
            query = query.filter(
                webhook_attempts::webhook_id
                    .eq(q.clone())
                    .or(webhook_attempts::replicate_id.eq(q.clone()))
                    .or(webhook_attempts::job_row_id.eq(q)),
            );
        }
        if let Some(before) = number(&filter.before, "before")? {
            query = query.filter(webhook_attempts::id.lt(before));
        }
        let limit = number(&filter.limit, "limit")?
            .unwrap_or(DEFAULT_LIMIT)
            .clamp(1, MAX_LIMIT);
        let mut conn = shared::db::connection(&self.pool).await?;
        let mut webhooks: Vec<AttemptRow> = query.limit(limit + 1).load(&mut conn).await?;
        let next = if webhooks.len() as i64 > limit {
            webhooks.truncate(limit as usize);
            webhooks.last().map(|row| row.id)
        } else {
            None
        };
        Ok(WebhookPage { webhooks, next })
    }
}

fn nonempty(value: &Option<String>) -> Option<&str> {
    value.as_deref().filter(|v| !v.trim().is_empty())
}

fn time(value: &Option<String>, name: &str) -> Result<Option<DateTime<Utc>>, OpsError> {
    nonempty(value)
        .map(|text| {
            DateTime::parse_from_rfc3339(text.trim())
                .map(|at| at.with_timezone(&Utc))
                .map_err(|_| {
                    OpsError::Invalid(format!(
                        "{name} must be an RFC 3339 time such as 2026-11-30T12:00:00Z"
                    ))
                })
        })
        .transpose()
}

fn number(value: &Option<String>, name: &str) -> Result<Option<i64>, OpsError> {
    nonempty(value)
        .map(|text| {
            text.trim()
                .parse::<i64>()
                .map_err(|_| OpsError::Invalid(format!("{name} must be an integer")))
        })
        .transpose()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_are_rfc3339_and_numbers_integers() {
        assert!(
            time(&Some("2026-11-30T12:00:00Z".into()), "since")
                .unwrap()
                .is_some()
        );
        assert!(time(&Some("".into()), "since").unwrap().is_none());
        let err = time(&Some("yesterday".into()), "since").unwrap_err();
        assert!(err.to_string().contains("RFC 3339"), "{err}");
        assert_eq!(number(&Some(" 42 ".into()), "limit").unwrap(), Some(42));
        assert!(number(&Some("4x".into()), "limit").is_err());
    }
}
