//! Noticing when the database goes away and comes back, perhaps as another server.
//!
//! With several hosts in `DATABASE_URL` (`…@h1:5432,h2:5432/db?target_session_attrs=read-write`)
//! the pool's new connections go to whichever host accepts writes; the work in flight when
//! the primary died fails with a connection error, which every caller treats as transient
//! (a webhook is redelivered, a creation answers `503`). This watch only tells the operator:
//! it asks the pool every [`PROBE_INTERVAL`] which server it reaches, and logs and counts
//! each loss and how long the service was without a writable database.

use std::time::{Duration, Instant};

use diesel::QueryableByName;
use diesel::sql_types::Text;
use diesel_async::RunQueryDsl;
use tokio::sync::watch;

use super::{DbError, Pool, connection};

/// How often the pool is asked: the precision of the reported failover time.
const PROBE_INTERVAL: Duration = Duration::from_millis(200);
/// A probe unanswered this long counts as a loss (a server that stopped answering).
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

#[derive(QueryableByName)]
struct Server {
    #[diesel(sql_type = Text)]
    server: String,
}

/// The writable server a pooled connection reaches, as `host:port`.
async fn writable_server(pool: &Pool) -> Result<String, DbError> {
    let mut conn = connection(pool).await?;
    let found: Server = diesel::sql_query(
        "SELECT coalesce(host(inet_server_addr()), 'local') || ':' || current_setting('port') AS server \
         WHERE NOT pg_is_in_recovery()",
    )
    .get_result(&mut conn)
    .await?;
    Ok(found.server)
}

/// Watches the pool until `stop`: a `warn` line when the database is lost, an `info` line
/// with `failover_ms` when a writable server answers again (`database_failover_seconds`),
/// and `database_up` (1 or 0) for alerts.
pub async fn watch_database(pool: Pool, mut stop: watch::Receiver<bool>) {
    let mut server: Option<String> = None;
    let mut lost: Option<Instant> = None;
    let mut ticks = tokio::time::interval(PROBE_INTERVAL);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.changed() => return,
            _ = ticks.tick() => {}
        }
        let probe = tokio::time::timeout(PROBE_TIMEOUT, writable_server(&pool)).await;
        match (probe, lost) {
            (Ok(Ok(now)), None) => {
                if server.is_none() {
                    metrics::gauge!("database_up").set(1.0);
                }
                server = Some(now);
            }
            (Ok(Ok(now)), Some(since)) => {
                let took = since.elapsed();
                metrics::histogram!("database_failover_seconds").record(took.as_secs_f64());
                metrics::gauge!("database_up").set(1.0);
                let previous = server.as_deref().unwrap_or("none");
                tracing::info!(database = %now, previous, failover_ms = took.as_millis() as u64, "connected to PostgreSQL again");
                server = Some(now);
                lost = None;
            }
            (failed, None) => {
                let error = match failed {
                    Ok(Err(err)) => err.to_string(),
                    _ => format!("no answer within {PROBE_TIMEOUT:?}"),
                };
                metrics::counter!("database_connections_lost_total").increment(1);
                metrics::gauge!("database_up").set(0.0);
                let database = server.as_deref().unwrap_or("none");
                tracing::warn!(database, %error, "lost the writable PostgreSQL server; new connections go to the next host that accepts writes");
                lost = Some(Instant::now());
            }
            (_, Some(_)) => {}
        }
    }
}
