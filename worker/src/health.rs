//! What operators poll: `GET /api/health` (200 while the broker and the database are
//! reachable) and `GET /metrics` (Prometheus text), on `WORKER_METRICS_ADDR`.

use std::sync::Arc;

use actix_web::{HttpResponse, web};
use shared::db;

use crate::process::Processor;

pub struct HealthState {
    pub processor: Arc<Processor>,
}

pub async fn metrics() -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/plain; version=0.0.4")
        .body(shared::metrics::prometheus().render())
}

pub async fn health(state: web::Data<HealthState>) -> HttpResponse {
    let broker = state.processor.broker.link.is_connected();
    let database = db::ping(&state.processor.pool).await;
    let body = serde_json::json!({
        "status": if broker && database { "healthy" } else { "unhealthy" },
        "broker": if broker { "connected" } else { "disconnected" },
        "database": if database { "connected" } else { "disconnected" },
    });
    if broker && database {
        HttpResponse::Ok().json(body)
    } else {
        HttpResponse::ServiceUnavailable().json(body)
    }
}
