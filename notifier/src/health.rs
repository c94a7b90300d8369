//! What operators poll: `GET /api/health` and `GET /metrics`.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use hyper::{Response, StatusCode};

use crate::http::{AppState, Body, json, text};

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
struct Looked {
    database: bool,
    ingest: bool,
}

impl Dependencies {
    pub fn new(ingest_health_url: String, http: reqwest::Client) -> Self {
        Self {
            ingest_health_url,
            http,
            last: tokio::sync::Mutex::new(None),
        }
    }

    async fn look(&self, pool: &shared::db::Pool) -> Looked {
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

/// The notifier serves while it has the broker and the database; `webhook` says whether
/// ingest (which receives Replicate's webhooks) answers healthy, without deciding ours.
pub async fn health(state: &AppState) -> Response<Body> {
    let broker = state.sessions.broker_connected();
    let Looked { database, ingest } = state.dependencies.look(&state.pool).await;
    let healthy = broker && database;
    let body = serde_json::json!({
        "status": if healthy { "healthy" } else { "unhealthy" },
        "webhook": if ingest { "configured" } else { "unreachable" },
        "websocket": "active",
        "connections": state.open_connections.load(Ordering::Relaxed),
        "broker": if broker { "connected" } else { "disconnected" },
        "database": if database { "connected" } else { "disconnected" },
    });
    json(
        if healthy {
            StatusCode::OK
        } else {
            StatusCode::SERVICE_UNAVAILABLE
        },
        body,
    )
}

/// Prometheus text.
pub fn metrics() -> Response<Body> {
    text(
        StatusCode::OK,
        "text/plain; version=0.0.4",
        shared::metrics::prometheus().render(),
    )
}
