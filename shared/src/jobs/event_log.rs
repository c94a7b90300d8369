//! The per-user event log, which is also the outbox of `jobs.events`.
//!
//! An event is stored (unpublished) in the transaction that made the change, numbered with
//! the user's next `seq` under the user's row lock: gapless, in commit order. After commit
//! it is published and marked; [`unpublished`] finds those a crash left behind.

use std::time::Duration;

use crate::db::schema::{job_events, users};
use crate::db::statement::statement;
use crate::db::{Connection, DbError};
use crate::events::Event;
use chrono::Utc;
use diesel::QueryResult;
use diesel::prelude::*;
use diesel_async::RunQueryDsl;

/// An event as stored in the log.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredEvent {
    pub user_id: String,
    pub seq: i64,
    pub event: Event,
}

/// Takes the user's next `seq` and adds `credit_delta` to the balance, locking the user's
/// row until commit. Returns `(seq, credits after)`.
///
/// Both take the connection shared, so that a [`Pipelined`](crate::db::pipelined::Pipelined)
/// transaction can send them with its `BEGIN` or `COMMIT`.
pub async fn next_seq(
    conn: &Connection,
    user_id: &str,
    credit_delta: i32,
) -> QueryResult<(i64, i32)> {
    diesel::update(users::table.find(user_id))
        .set((
            users::event_seq.eq(users::event_seq + 1),
            users::credits.eq(users::credits + credit_delta),
        ))
        .returning((users::event_seq, users::credits))
        .get_result(&mut { conn })
        .await
}

/// Stores `event` (which carries its `seq`) unpublished.
pub async fn append(conn: &Connection, event: &Event) -> QueryResult<StoredEvent> {
    let seq = event.seq().expect("only numbered events are stored");
    let payload = serde_json::to_value(event).expect("events serialise");
    diesel::insert_into(job_events::table)
        .values((
            job_events::user_id.eq(event.user_id()),
            job_events::seq.eq(seq),
            job_events::payload.eq(payload),
        ))
        .execute(&mut { conn })
        .await?;
    Ok(StoredEvent {
        user_id: event.user_id().to_owned(),
        seq,
        event: event.clone(),
    })
}

/// Marks many events, each `(user_id, seq)`, as confirmed by the broker: one statement.
pub async fn mark_many_published(
    conn: &mut Connection,
    events: &[(String, i64)],
) -> Result<(), DbError> {
    if events.is_empty() {
        return Ok(());
    }
    let (user_ids, seqs): (Vec<&str>, Vec<i64>) = events
        .iter()
        .map(|(user, seq)| (user.as_str(), *seq))
        .unzip();
    statement(
        "UPDATE job_events AS e SET published_at = now() \
         FROM unnest($1::text[], $2::bigint[]) AS m(user_id, seq) \
         WHERE e.user_id = m.user_id AND e.seq = m.seq",
    )
    .bind::<diesel::sql_types::Array<diesel::sql_types::Text>, _>(user_ids)
    .bind::<diesel::sql_types::Array<diesel::sql_types::BigInt>, _>(seqs)
    .execute(conn)
    .await?;
    Ok(())
}

/// Events still unpublished `min_age` after they were stored, oldest first.
pub async fn unpublished(
    conn: &mut Connection,
    min_age: Duration,
    limit: i64,
) -> Result<Vec<StoredEvent>, DbError> {
    let cutoff = Utc::now() - chrono::Duration::from_std(min_age).unwrap_or_default();
    let rows: Vec<(String, i64, serde_json::Value)> = job_events::table
        .filter(job_events::published_at.is_null())
        .filter(job_events::created_at.le(cutoff))
        .order((job_events::created_at, job_events::user_id, job_events::seq))
        .limit(limit)
        .select((job_events::user_id, job_events::seq, job_events::payload))
        .load(conn)
        .await?;
    Ok(rows
        .into_iter()
        .filter_map(|(user_id, seq, payload)| match serde_json::from_value(payload) {
            Ok(event) => Some(StoredEvent { user_id, seq, event }),
            Err(err) => {
                tracing::error!(%user_id, seq, error = %err, "stored event is not a valid event; left unpublished");
                None
            }
        })
        .collect())
}
