//! PostgreSQL: schema, embedded migrations, database creation, the connection pool and its
//! failover watch (`watch.rs`), hand-written SQL prepared once per connection
//! (`statement.rs`), transactions without round trips of their own for `BEGIN` and
//! `COMMIT` (`pipelined.rs`).

pub mod pipelined;
pub mod schema;
pub mod statement;
mod watch;

use std::time::Duration;

use diesel::sql_types::{BigInt, Text};
use diesel_async::SimpleAsyncConnection;
use diesel_async::pooled_connection::deadpool::{Object, Pool as DeadPool};
use diesel_async::pooled_connection::{
    AsyncDieselConnectionManager, ManagerConfig, RecyclingMethod,
};
use diesel_async::{AsyncConnection, AsyncMigrationHarness, AsyncPgConnection, RunQueryDsl};
use diesel_migrations::{EmbeddedMigrations, MigrationHarness, embed_migrations};

use crate::config::{DatabaseConfig, DatabaseUrl};

pub use diesel_async::AsyncPgConnection as Connection;
pub use watch::watch_database;

pub type Pool = DeadPool<AsyncPgConnection>;
pub type PooledConnection = Object<AsyncPgConnection>;

/// The migrations in `shared/migrations`, compiled into every binary that uses the database.
pub const MIGRATIONS: EmbeddedMigrations = embed_migrations!("migrations");

/// Serialise migrations and database creation across processes: replicas starting
/// together take turns.
const MIGRATION_LOCK_KEY: i64 = 0x7265_706c_6963_6174; // "replicat"
const CREATE_LOCK_KEY: i64 = 0x7265_706c_6963_6164; // "replicad"

/// How long a caller waits for a pooled connection before the work is retried later.
const CHECKOUT_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum DbError {
    #[error("cannot connect to PostgreSQL: {0}")]
    Connect(#[from] diesel::ConnectionError),
    #[error("database query failed: {0}")]
    Query(#[from] diesel::result::Error),
    #[error("migration failed: {0}")]
    Migration(String),
    #[error("no database connection: {0}")]
    Pool(String),
}

impl DbError {
    /// Errors that may go away by themselves (server down or restarting, connection lost,
    /// serialization conflicts). Only errors that say the data or the query is wrong are
    /// permanent; anything unclear is retried, since retrying is safe and dropping is not.
    pub fn is_transient(&self) -> bool {
        use diesel::result::{DatabaseErrorKind, Error};
        match self {
            Self::Connect(_) | Self::Pool(_) => true,
            Self::Migration(_) => false,
            Self::Query(Error::DatabaseError(kind, _)) => !matches!(
                kind,
                DatabaseErrorKind::UniqueViolation
                    | DatabaseErrorKind::ForeignKeyViolation
                    | DatabaseErrorKind::NotNullViolation
                    | DatabaseErrorKind::CheckViolation
            ),
            Self::Query(
                Error::NotFound
                | Error::DeserializationError(_)
                | Error::SerializationError(_)
                | Error::QueryBuilderError(_)
                | Error::InvalidCString(_),
            ) => false,
            Self::Query(_) => true,
        }
    }
}

/// Creates the database named in `url` if it does not exist yet. Returns whether it did.
/// Replicas starting together take turns under an advisory lock of the server.
pub async fn create_database_if_missing(url: &DatabaseUrl) -> Result<bool, DbError> {
    let name = url.database_name().to_owned();
    let mut admin = AsyncPgConnection::establish(url.with_database("postgres").as_str()).await?;
    advisory_lock(&mut admin, "pg_advisory_lock", CREATE_LOCK_KEY).await?;
    let created = create_unless_present(&mut admin, &name).await;
    advisory_lock(&mut admin, "pg_advisory_unlock", CREATE_LOCK_KEY).await?;
    created
}

async fn create_unless_present(admin: &mut AsyncPgConnection, name: &str) -> Result<bool, DbError> {
    #[derive(diesel::QueryableByName)]
    struct Found {
        #[diesel(sql_type = BigInt)]
        #[allow(dead_code)]
        found: i64,
    }
    let existing: Vec<Found> =
        diesel::sql_query("SELECT 1::int8 AS found FROM pg_database WHERE datname = $1")
            .bind::<Text, _>(name)
            .load(admin)
            .await?;
    if !existing.is_empty() {
        return Ok(false);
    }
    diesel::sql_query(format!("CREATE DATABASE {}", quote_identifier(name)))
        .execute(admin)
        .await?;
    Ok(true)
}

/// Drops the database named in `url`, closing its connections (test databases).
pub async fn drop_database(url: &DatabaseUrl) -> Result<(), DbError> {
    let mut admin = AsyncPgConnection::establish(url.with_database("postgres").as_str()).await?;
    diesel::sql_query(format!(
        "DROP DATABASE IF EXISTS {} WITH (FORCE)",
        quote_identifier(url.database_name())
    ))
    .execute(&mut admin)
    .await?;
    Ok(())
}

/// Applies pending migrations under an advisory lock; returns the versions applied.
/// Needs the multi-threaded tokio runtime (diesel's migrations are synchronous).
pub async fn run_migrations(url: &DatabaseUrl) -> Result<Vec<String>, DbError> {
    let mut connection = AsyncPgConnection::establish(url.as_str()).await?;
    advisory_lock(&mut connection, "pg_advisory_lock", MIGRATION_LOCK_KEY).await?;
    let mut harness = AsyncMigrationHarness::new(connection);
    let applied = harness
        .run_pending_migrations(MIGRATIONS)
        .map(|versions| versions.iter().map(ToString::to_string).collect())
        .map_err(|err| DbError::Migration(err.to_string()));
    let mut connection = harness.into_inner();
    advisory_lock(&mut connection, "pg_advisory_unlock", MIGRATION_LOCK_KEY).await?;
    applied
}

async fn advisory_lock(
    connection: &mut AsyncPgConnection,
    function: &str,
    key: i64,
) -> Result<(), DbError> {
    diesel::sql_query(format!("SELECT {function}($1)"))
        .bind::<BigInt, _>(key)
        .execute(connection)
        .await?;
    Ok(())
}

/// Creates the database if missing and applies pending migrations; returns the versions
/// applied.
pub async fn migrate(config: &DatabaseConfig) -> Result<Vec<String>, DbError> {
    if create_database_if_missing(&config.url).await? {
        tracing::info!(database = config.url.database_name(), "created database");
    }
    let applied = run_migrations(&config.url).await?;
    if !applied.is_empty() {
        tracing::info!(?applied, "applied migrations");
    }
    Ok(applied)
}

/// Creates the database if missing, applies migrations, and opens the pool.
pub async fn prepare(config: &DatabaseConfig) -> Result<Pool, DbError> {
    migrate(config).await?;
    pool(config)
}

/// Whether the database answers a trivial query right now.
pub async fn ping(pool: &Pool) -> bool {
    let Ok(mut conn) = connection(pool).await else {
        return false;
    };
    diesel::sql_query("SELECT 1")
        .execute(&mut conn)
        .await
        .is_ok()
}

/// A pool that opens connections on demand and replaces broken ones, so the service
/// recovers by itself after PostgreSQL restarts.
pub fn pool(config: &DatabaseConfig) -> Result<Pool, DbError> {
    let mut setup = ManagerConfig::default();
    setup.custom_setup = Box::new(|url| Box::pin(establish_planning_once(url.to_owned())));
    // A connection goes back into use unless it is broken: in a transaction left open, or
    // closed (the server went away, restarted or failed over: the client sees its socket
    // close). The default also sends `SELECT 1` at every checkout: a round trip before
    // each batch's lookup and each batch's transaction, about 850 a second at 500
    // webhooks/s (`docs/benchmarks.md`). A server that died without closing the socket is
    // met by the first statement instead, whose error every caller treats as transient.
    setup.recycling_method = RecyclingMethod::Fast;
    let manager = AsyncDieselConnectionManager::<AsyncPgConnection>::new_with_config(
        config.url.as_str(),
        setup,
    );
    Pool::builder(manager)
        .max_size(config.pool_size)
        .build()
        .map_err(|err| DbError::Pool(err.to_string()))
}

/// A connection that plans each prepared statement once and keeps the plan.
///
/// By default PostgreSQL plans a prepared statement again on every run whenever a plan for
/// the values at hand looks cheaper than the generic one. For the worker's batch
/// statements that is always so: planning with a parameter, it guesses 10 elements for
/// each `unnest($n)`, while a batch holds one to a few, so it re-planned every statement
/// of every batch (4–5 % of the whole machine at 500 webhooks/s, `docs/benchmarks.md`).
/// Every statement here looks rows up by key or walks an index in order, and the generic
/// plan does the same.
///
/// Sequential scans are off for the same reason: a generic plan is made once, at the
/// statement's first run on the connection, and kept until the table's statistics change.
/// Made while a table was small (a new database, or one where autovacuum is off), it
/// scanned the whole table for the connection's life: the jobs lookup took 0.45 ms
/// instead of 0.03 at 4,500 rows and growing. With them off, the planner takes the index
/// wherever one serves; a query no index serves still scans.
async fn establish_planning_once(url: String) -> diesel::ConnectionResult<AsyncPgConnection> {
    let mut connection = AsyncPgConnection::establish(&url).await?;
    connection
        .batch_execute("SET plan_cache_mode = force_generic_plan; SET enable_seqscan = off")
        .await
        .map_err(diesel::ConnectionError::CouldntSetupConfiguration)?;
    Ok(connection)
}

/// A connection from the pool, or an error after [`CHECKOUT_TIMEOUT`].
pub async fn connection(pool: &Pool) -> Result<PooledConnection, DbError> {
    match tokio::time::timeout(CHECKOUT_TIMEOUT, pool.get()).await {
        Ok(Ok(connection)) => Ok(connection),
        Ok(Err(err)) => Err(DbError::Pool(err.to_string())),
        Err(_) => Err(DbError::Pool(format!(
            "none free within {CHECKOUT_TIMEOUT:?}"
        ))),
    }
}

fn quote_identifier(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}
