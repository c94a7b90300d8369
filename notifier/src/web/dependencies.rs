//! The notifier's dependencies whose health costs I/O — the database and ingest — looked
//! at no more than once a second, whoever asks.

use std::time::{Duration, Instant};

/// How long health waits for the database and for ingest.
const HEALTH_CHECK_TIMEOUT: Duration = Duration::from_secs(2);

/// How long one look at the database and at ingest stands for every health request: a
/// flood of `/api/health` (it is public, behind the front door) costs one query and one
/// call to ingest a second, whatever its size.
const CHECK_VALID_FOR: Duration = Duration::from_secs(1);

/// The notifier's dependencies whose health costs I/O: the database and ingest.
pub struct Dependencies {
    ingest_health_url: String,
    http: reqwest::Client,
    /// The last look and when it was taken; the lock also makes concurrent requests wait
    /// for the one look under way instead of each taking its own.
    last: tokio::sync::Mutex<Option<(Instant, Looked)>>,
}

#[derive(Debug, Clone, Copy)]
pub struct Looked {
    pub database: bool,
    pub ingest: bool,
}

impl Dependencies {
    pub fn new(ingest_health_url: String, http: reqwest::Client) -> Self {
        Self {
            ingest_health_url,
            http,
            last: tokio::sync::Mutex::new(None),
        }
    }

    pub async fn look(&self, pool: &shared::db::Pool) -> Looked {
        let mut last = self.last.lock().await;
        if let Some((at, looked)) = *last
            && at.elapsed() < CHECK_VALID_FOR
        {
            return looked;
        }
        let database = async {
            tokio::time::timeout(HEALTH_CHECK_TIMEOUT, shared::db::ping(pool))
                .await
                .unwrap_or(false)
        };
        let ingest = async {
            match self
                .http
                .get(&self.ingest_health_url)
                .timeout(HEALTH_CHECK_TIMEOUT)
                .send()
                .await
            {
                Ok(response) => response.status().is_success(),
                Err(_) => false,
            }
        };
        let (database, ingest) = tokio::join!(database, ingest);
        metrics::counter!("notifier_health_checks_total").increment(1);
        let looked = Looked { database, ingest };
        *last = Some((Instant::now(), looked));
        looked
    }
}
