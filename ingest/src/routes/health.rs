//! What operators poll: `GET /api/health` and `GET /metrics`.

use actix_web::{HttpResponse, web};

use crate::state::AppState;

/// `GET /api/health`: 200 while the broker is connected, 503 while it is not.
pub async fn health(state: web::Data<AppState>) -> HttpResponse {
    if state.publisher.is_connected() {
        HttpResponse::Ok().json(serde_json::json!({
            "status": "healthy", "webhook": "configured", "broker": "connected"
        }))
    } else {
        HttpResponse::ServiceUnavailable().json(serde_json::json!({
            "status": "unhealthy", "webhook": "configured", "broker": "disconnected"
        }))
    }
}

/// `GET /metrics`: Prometheus text.
pub async fn metrics() -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/plain; version=0.0.4")
        .body(shared::metrics::prometheus().render())
}
