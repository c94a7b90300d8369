//! What operators poll: `GET /api/health` and `GET /metrics`.

use std::sync::atomic::Ordering;
use std::time::Duration;

use hyper::{Response, StatusCode};

use crate::http::{AppState, Body, json, text};

/// How long health waits for the database and for ingest.
const HEALTH_CHECK_TIMEOUT: Duration = Duration::from_secs(2);

/// The notifier serves while it has the broker and the database; `webhook` says whether
/// ingest (which receives Replicate's webhooks) answers healthy, without deciding ours.
pub async fn health(state: &AppState) -> Response<Body> {
    let broker = state.sessions.broker_connected();
    let database = async {
        tokio::time::timeout(HEALTH_CHECK_TIMEOUT, shared::db::ping(&state.pool))
            .await
            .unwrap_or(false)
    };
    let ingest = async {
        match state
            .http
            .get(&state.ingest_health_url)
            .timeout(HEALTH_CHECK_TIMEOUT)
            .send()
            .await
        {
            Ok(response) => response.status().is_success(),
            Err(_) => false,
        }
    };
    let (database, ingest) = tokio::join!(database, ingest);
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
