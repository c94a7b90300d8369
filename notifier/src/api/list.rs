//! `GET /api/jobs`: a user's jobs, newest first, page by page, with the `seq` they stand
//! at (the gallery subscribes from there) and the balance.

use chrono::{DateTime, Utc};
use diesel::prelude::*;
use diesel_async::RunQueryDsl;
use serde_json::{Value, json};
use shared::db::schema::{ai_models, generations, users};
use shared::db::{self, Pool};
use shared::events::JobState;
use shared::jobs::{GenerationRow, TrainingRow};

use crate::api::error::JobsError;
use crate::config::ModelRef;

const DEFAULT_PAGE: i64 = 30;
const MAX_PAGE: i64 = 100;

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

/// `GET /api/models`: every model of the user, newest first.
pub async fn models(pool: &Pool, user_id: &str) -> Result<Value, JobsError> {
    let mut conn = db::connection(pool).await?;
    let rows: Vec<TrainingRow> = ai_models::table
        .filter(ai_models::user_id.eq(user_id))
        .order((ai_models::created_at.desc(), ai_models::id.desc()))
        .select(TrainingRow::as_select())
        .load(&mut conn)
        .await?;
    let models: Vec<Value> = rows
        .into_iter()
        .map(|row| {
            json!({
                "id": row.id,
                "name": row.name,
                "status": row.status,
                "model_version": row.model_version,
                "created_at": row.created_at.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
            })
        })
        .collect();
    Ok(json!({ "models": models }))
}

/// The Replicate version a generation runs on when it names the user's model `id`, and the
/// model's name: `404` not theirs, `409` not completed.
pub async fn trained_model(
    conn: &mut db::Connection,
    user_id: &str,
    id: &str,
) -> Result<(ModelRef, String), JobsError> {
    let row: Option<TrainingRow> = ai_models::table
        .find(id)
        .filter(ai_models::user_id.eq(user_id))
        .select(TrainingRow::as_select())
        .first(conn)
        .await
        .optional()?;
    let Some(row) = row else {
        return Err(JobsError::NotFound(format!("you have no model {id:?}")));
    };
    let version = row
        .model_version
        .as_deref()
        .filter(|_| row.status == "COMPLETED")
        .and_then(|version| version.parse::<ModelRef>().ok())
        .filter(|model| model.version.is_some());
    match version {
        Some(model) => Ok((model, row.name)),
        None => Err(JobsError::Conflict(format!(
            "the model {:?} is {}; only a completed model can generate",
            row.name,
            row.status.to_lowercase()
        ))),
    }
}

/// Whether an upscale of the user's generation `source_id` is under way.
pub async fn upscale_running(
    conn: &mut db::Connection,
    user_id: &str,
    source_id: &str,
) -> Result<bool, JobsError> {
    let running: i64 = generations::table
        .filter(generations::user_id.eq(user_id))
        .filter(generations::source_id.eq(source_id))
        .filter(generations::status.eq_any(["PENDING", "PROCESSING"]))
        .count()
        .get_result(conn)
        .await?;
    Ok(running > 0)
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
}
