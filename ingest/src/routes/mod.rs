//! HTTP routes: the webhook endpoint, health and metrics.

pub mod health;
pub mod webhook;

use actix_web::HttpResponse;
use actix_web::http::StatusCode;

/// A JSON error body: `{"error": "..."}`.
pub fn json_error(status: StatusCode, message: &str) -> HttpResponse {
    HttpResponse::build(status).json(serde_json::json!({ "error": message }))
}
