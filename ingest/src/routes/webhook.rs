//! `POST /api/webhooks/replicate`: verify against the raw bytes, check the payload's shape,
//! publish with a confirm, answer. Nothing else happens here.

use std::time::Instant;

use actix_web::http::StatusCode;
use actix_web::http::header::CONTENT_LENGTH;
use actix_web::{HttpRequest, HttpResponse, web};
use shared::replicate::JobRef;
use shared::webhook::{SignedHeaders, VerifyError};

use super::json_error;
use crate::body::BodyError;
use crate::publish::{PublishError, Webhook};
use crate::state::AppState;

/// How one request ended; the metric label and the log line's outcome.
#[derive(Debug)]
enum Rejection {
    /// 400: a missing or malformed `webhook-*` header.
    BadHeaders(VerifyError),
    /// 401: no signature matches, or the timestamp is outside the tolerance.
    Unauthorized(VerifyError),
    /// 400: the body was cut off; 408: it did not arrive in time; 503: ingest's body
    /// budget is taken.
    Body(BodyError),
    /// 400: verified, but not a JSON object with string `id` and `status`.
    InvalidPayload(String),
    /// 503: not durably enqueued.
    Unavailable(PublishError),
}

impl Rejection {
    fn status(&self) -> StatusCode {
        match self {
            Self::BadHeaders(_) | Self::InvalidPayload(_) => StatusCode::BAD_REQUEST,
            Self::Body(BodyError::Unreadable(_)) => StatusCode::BAD_REQUEST,
            Self::Body(BodyError::TimedOut(_)) => StatusCode::REQUEST_TIMEOUT,
            Self::Body(BodyError::Busy) => StatusCode::SERVICE_UNAVAILABLE,
            Self::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            Self::Body(BodyError::TooLarge { .. }) => StatusCode::PAYLOAD_TOO_LARGE,
            Self::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    fn outcome(&self) -> &'static str {
        match self {
            Self::BadHeaders(_) => "bad_headers",
            Self::Unauthorized(_) => "unauthorized",
            Self::Body(BodyError::TooLarge { .. }) => "too_large",
            Self::Body(BodyError::Unreadable(_)) => "body_unreadable",
            Self::Body(BodyError::TimedOut(_)) => "body_timeout",
            Self::Body(BodyError::Busy) => "busy",
            Self::InvalidPayload(_) => "invalid_payload",
            Self::Unavailable(_) => "unavailable",
        }
    }

    fn message(&self) -> String {
        match self {
            Self::BadHeaders(err) => err.to_string(),
            Self::Unauthorized(err) => format!("signature verification failed: {err}"),
            Self::Body(err) => err.to_string(),
            Self::InvalidPayload(err) => err.clone(),
            Self::Unavailable(err) => format!("not enqueued, retry later: {err}"),
        }
    }
}

/// What the log line says about an accepted webhook.
struct Accepted {
    webhook_id: String,
    job_id: String,
    status: String,
}

pub async fn receive(
    request: HttpRequest,
    payload: web::Payload,
    state: web::Data<AppState>,
) -> HttpResponse {
    let started = Instant::now();
    let webhook_id = header(&request, shared::webhook::HEADER_ID)
        .unwrap_or("-")
        .to_owned();
    // The line operators grep for when a webhook arrives; the outcome line follows.
    tracing::info!(%webhook_id, "🔔 Unified Replicate webhook received");
    let result = process(&request, payload, &state).await;
    let elapsed = started.elapsed();

    let outcome = match &result {
        Ok(_) => "accepted",
        Err(rejection) => rejection.outcome(),
    };
    metrics::counter!("ingest_webhooks_total", "outcome" => outcome).increment(1);
    metrics::histogram!("ingest_request_duration_seconds", "outcome" => outcome)
        .record(elapsed.as_secs_f64());

    match result {
        Ok(accepted) => {
            tracing::info!(
                webhook_id = %accepted.webhook_id,
                job_id = %accepted.job_id,
                status = %accepted.status,
                elapsed = ?elapsed,
                "webhook accepted"
            );
            HttpResponse::Ok().json(serde_json::json!({
                "status": "accepted", "webhook_id": accepted.webhook_id
            }))
        }
        Err(rejection) => {
            let message = rejection.message();
            if let Rejection::Unavailable(_) = rejection {
                tracing::error!(%webhook_id, %outcome, elapsed = ?elapsed, reason = %message, "webhook not enqueued");
            } else {
                tracing::warn!(%webhook_id, %outcome, elapsed = ?elapsed, reason = %message, "webhook rejected");
            }
            json_error(rejection.status(), &message)
        }
    }
}

async fn process(
    request: &HttpRequest,
    payload: web::Payload,
    state: &AppState,
) -> Result<Accepted, Rejection> {
    let headers =
        SignedHeaders::from_lookup(|name| header(request, name)).map_err(Rejection::BadHeaders)?;
    // What needs no body is checked before the body is read: a malformed timestamp is a
    // 400 and one outside the tolerance a 401, whatever the body.
    state
        .verifier
        .precheck(&headers)
        .map_err(|err| match err.is_malformed() {
            true => Rejection::BadHeaders(err),
            false => Rejection::Unauthorized(err),
        })?;
    let announced = header(request, CONTENT_LENGTH.as_str()).and_then(|v| v.parse::<usize>().ok());
    let (body, _reservation) = state
        .bodies
        .read(payload, announced, state.max_body_bytes)
        .await
        .map_err(Rejection::Body)?;

    state
        .verifier
        .verify(&headers, &body)
        .map_err(|err| match err.is_malformed() {
            true => Rejection::BadHeaders(err),
            false => Rejection::Unauthorized(err),
        })?;

    let job = JobRef::parse(&body).map_err(|err| Rejection::InvalidPayload(err.to_string()))?;
    // The row the jobs API created the job for, from `?job=`: carried for the worker,
    // which binds only a row still waiting for its id (the query is not signed).
    let tag = shared::replicate::tag_of_query(request.query_string());

    let publish_started = Instant::now();
    let published = state
        .publisher
        .publish(Webhook {
            id: headers.id,
            timestamp: headers.timestamp,
            body: &body,
            tag: tag.as_deref(),
        })
        .await;
    metrics::histogram!(
        "ingest_publish_duration_seconds",
        "result" => if published.is_ok() { "confirmed" } else { "failed" }
    )
    .record(publish_started.elapsed().as_secs_f64());
    published.map_err(Rejection::Unavailable)?;

    Ok(Accepted {
        webhook_id: headers.id.to_owned(),
        job_id: job.id.into_owned(),
        status: job.status.to_string(),
    })
}

fn header<'a>(request: &'a HttpRequest, name: &str) -> Option<&'a str> {
    request.headers().get(name)?.to_str().ok()
}
