//! What operators poll: `GET /api/health` and `GET /metrics`.

use hyper::{Response, StatusCode};

use crate::web::dependencies::Looked;
use crate::web::respond::{Body, json, text};
use crate::web::state::AppState;

/// The notifier serves while it has the broker and the database; `webhook` says whether
/// ingest (which receives Replicate's webhooks) answers healthy, without deciding ours.
pub async fn health(state: &AppState) -> Response<Body> {
    let broker = state.hub.broker_connected();
    let Looked { database, ingest } = state.dependencies.look(&state.pool).await;
    let healthy = broker && database;
    let body = serde_json::json!({
        "status": if healthy { "healthy" } else { "unhealthy" },
        "webhook": if ingest { "configured" } else { "unreachable" },
        "websocket": "active",
        "connections": state.hub.open_connections(),
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
