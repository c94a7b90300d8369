use actix_web::HttpResponse;

/// `GET /metrics`: Prometheus text.
pub async fn metrics() -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/plain; version=0.0.4")
        .body(shared::metrics::prometheus().render())
}
