//! Database creation and migrations against the real PostgreSQL, as replicas starting
//! together do them.

use shared::config::{DatabaseConfig, DatabaseUrl};

fn fresh_url() -> DatabaseUrl {
    shared::testing::database_url(&shared::testing::unique_name("shared"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_starting_together_create_and_migrate_once() {
    let config = DatabaseConfig {
        url: fresh_url(),
        pool_size: 2,
    };
    let mut attempts = tokio::task::JoinSet::new();
    for _ in 0..4 {
        let config = config.clone();
        attempts.spawn(async move {
            let created = shared::db::create_database_if_missing(&config.url)
                .await
                .unwrap();
            let applied = shared::db::run_migrations(&config.url).await.unwrap();
            (created, applied.len())
        });
    }
    let results: Vec<(bool, usize)> = attempts.join_all().await;
    assert_eq!(
        results.iter().filter(|(created, _)| *created).count(),
        1,
        "{results:?}"
    );
    let applied: usize = results.iter().map(|(_, applied)| applied).sum();
    let migrations =
        diesel::migration::MigrationSource::<diesel::pg::Pg>::migrations(&shared::db::MIGRATIONS)
            .unwrap()
            .len();
    assert_eq!(
        applied, migrations,
        "each migration applied exactly once: {results:?}"
    );
    let pool = shared::db::prepare(&config).await.unwrap();
    assert!(shared::db::ping(&pool).await);
    pool.close();
    shared::db::drop_database(&config.url).await.unwrap();
}

#[derive(diesel::QueryableByName, Debug, PartialEq)]
struct Total {
    #[diesel(sql_type = diesel::sql_types::Integer)]
    total: i32,
}

#[derive(diesel::QueryableByName)]
struct Prepared {
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    count: i64,
}

/// A hand-written statement is prepared once per connection and then reused, with its
/// binds in place (a placeholder used twice names the same value).
#[tokio::test]
async fn hand_written_statements_are_prepared_once_per_connection() {
    use diesel::sql_types::{Array, Integer, Text};
    use diesel_async::{AsyncConnection, RunQueryDsl};
    use shared::db::statement::statement;

    const SQL: &str =
        "SELECT $1 + x AS total FROM unnest($2::int4[]) AS t(x) WHERE $1 > 0 ORDER BY x";
    let url = shared::testing::database_url("postgres");
    let mut conn = shared::db::Connection::establish(url.as_str())
        .await
        .unwrap();
    for (offset, expected) in [(10, vec![11, 12]), (20, vec![21, 22]), (0, vec![])] {
        let rows: Vec<Total> = statement(SQL)
            .bind::<Integer, _>(offset)
            .bind::<Array<Integer>, _>(vec![2, 1])
            .load(&mut conn)
            .await
            .unwrap();
        let totals: Vec<i32> = rows.into_iter().map(|row| row.total).collect();
        assert_eq!(totals, expected);
    }
    let prepared: Prepared =
        statement("SELECT count(*) AS count FROM pg_prepared_statements WHERE statement = $1")
            .bind::<Text, _>(SQL)
            .get_result(&mut conn)
            .await
            .unwrap();
    assert_eq!(prepared.count, 1, "prepared once and kept for reuse");
}

#[derive(diesel::QueryableByName)]
struct PlanLine {
    #[diesel(sql_type = diesel::sql_types::Text, column_name = "QUERY PLAN")]
    line: String,
}

/// The pool's connections keep the generic plan of each prepared statement, and a plan
/// made while a table is empty still looks rows up by their index: it serves the
/// connection's whole life, while the table grows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pooled_connections_plan_lookups_by_index_once() {
    use diesel_async::{RunQueryDsl, SimpleAsyncConnection};

    let config = DatabaseConfig {
        url: fresh_url(),
        pool_size: 1,
    };
    let pool = shared::db::prepare(&config).await.unwrap();
    let mut conn = shared::db::connection(&pool).await.unwrap();
    conn.batch_execute(
        "PREPARE lookup(text[]) AS SELECT id FROM generations WHERE job_id = ANY($1)",
    )
    .await
    .unwrap();
    let plan: Vec<PlanLine> = diesel::sql_query("EXPLAIN EXECUTE lookup('{r8abc}')")
        .load(&mut conn)
        .await
        .unwrap();
    let plan: Vec<String> = plan.into_iter().map(|row| row.line).collect();
    assert!(
        plan.iter().all(|line| !line.contains("Seq Scan"))
            && plan
                .iter()
                .any(|line| line.contains("generations_job_id_key")),
        "{plan:#?}"
    );
    let setting: Setting = diesel::sql_query("SHOW plan_cache_mode")
        .get_result(&mut conn)
        .await
        .unwrap();
    assert_eq!(setting.plan_cache_mode, "force_generic_plan");
    drop(conn);
    pool.close();
    shared::db::drop_database(&config.url).await.unwrap();
}

#[derive(diesel::QueryableByName)]
struct Setting {
    #[diesel(sql_type = diesel::sql_types::Text)]
    plan_cache_mode: String,
}

#[derive(diesel::QueryableByName, Debug, PartialEq)]
struct Backend {
    #[diesel(sql_type = diesel::sql_types::Integer)]
    pid: i32,
}

async fn backend_pid(conn: &mut shared::db::Connection) -> i32 {
    use diesel_async::RunQueryDsl;
    diesel::sql_query("SELECT pg_backend_pid() AS pid")
        .get_result::<Backend>(conn)
        .await
        .unwrap()
        .pid
}

async fn credits_of(pool: &shared::db::Pool, user: &str) -> Option<i32> {
    use diesel::prelude::*;
    use diesel_async::RunQueryDsl;
    use shared::db::schema::users;
    let mut conn = shared::db::connection(pool).await.unwrap();
    users::table
        .find(user)
        .select(users::credits)
        .first(&mut conn)
        .await
        .optional()
        .unwrap()
}

/// A pipelined transaction (`BEGIN` with its first statement, `COMMIT` with its last)
/// commits both statements; one whose last statement fails keeps nothing; and one dropped
/// before its end is never handed out again by the pool (it would carry its open
/// transaction into the next caller's statements).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_transactions_commit_roll_back_and_never_leak_an_open_one() {
    use diesel::sql_types::{Integer, Text};
    use diesel_async::RunQueryDsl;
    use futures_util::FutureExt;
    use shared::db::pipelined::Pipelined;
    use shared::db::statement::statement;

    let config = DatabaseConfig {
        url: fresh_url(),
        pool_size: 1,
    };
    let pool = shared::db::prepare(&config).await.unwrap();
    let insert = |id: &'static str, credits: i32| {
        statement("INSERT INTO users (id, credits) VALUES ($1, $2)")
            .bind::<Text, _>(id)
            .bind::<Integer, _>(credits)
    };

    // Both statements kept.
    {
        let mut conn = shared::db::connection(&pool).await.unwrap();
        let mut tx = Pipelined::open(&mut conn);
        let first = insert("a", 1);
        tx.run(|conn| async move { first.execute(&mut { conn }).await }.boxed())
            .await
            .unwrap();
        let last = insert("b", 2);
        tx.commit_with(|conn| async move { last.execute(&mut { conn }).await }.boxed())
            .await
            .unwrap();
    }
    assert_eq!(credits_of(&pool, "a").await, Some(1));
    assert_eq!(credits_of(&pool, "b").await, Some(2));

    // The last statement fails (a duplicate key): the first is not kept either, and the
    // connection goes back into use.
    let reused = {
        let mut conn = shared::db::connection(&pool).await.unwrap();
        let pid = backend_pid(&mut conn).await;
        let mut tx = Pipelined::open(&mut conn);
        let first = insert("c", 3);
        tx.run(|conn| async move { first.execute(&mut { conn }).await }.boxed())
            .await
            .unwrap();
        let duplicate = insert("a", 4);
        let failed = tx
            .commit_with(|conn| async move { duplicate.execute(&mut { conn }).await }.boxed())
            .await;
        assert!(failed.is_err(), "a duplicate key is refused");
        drop(tx);
        pid
    };
    assert_eq!(
        credits_of(&pool, "c").await,
        None,
        "rolled back with the last"
    );
    let mut conn = shared::db::connection(&pool).await.unwrap();
    assert_eq!(
        backend_pid(&mut conn).await,
        reused,
        "a transaction that ended leaves its connection in use"
    );

    // Dropped after its first statement, before its end: the pool's only connection is
    // replaced, and what the statement wrote was never committed.
    let open_pid = backend_pid(&mut conn).await;
    {
        let mut tx = Pipelined::open(&mut conn);
        let first = insert("d", 5);
        tx.run(|conn| async move { first.execute(&mut { conn }).await }.boxed())
            .await
            .unwrap();
    }
    drop(conn);
    let mut conn = shared::db::connection(&pool).await.unwrap();
    assert_ne!(
        backend_pid(&mut conn).await,
        open_pid,
        "a connection left in a transaction is not handed out again"
    );
    drop(conn);
    assert_eq!(credits_of(&pool, "d").await, None);

    pool.close();
    shared::db::drop_database(&config.url).await.unwrap();
}
