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
