//! The one port's routes — `/ws` (`ws.rs`), `/events` (`sse.rs`), the jobs API under `/api/`
//! (`jobs`, `generations`, `models`), `/api/health`, `/metrics`, the gallery page at `/`,
//! and `/media/<key>` (`media.rs`) — and what the handlers share.

use std::collections::HashMap;
use std::convert::Infallible;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::header::{self, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use shared::db::Pool;
use tokio::sync::watch;

use crate::config::SocketConfig;
use crate::jobs::{self, JobsApi, JobsError};
use crate::sessions::Sessions;
use crate::{health, media, sse, ws};
use shared::auth::Auth;

/// Largest JSON body the jobs API reads (a 2,000-character prompt fits many times over).
const MAX_API_BODY: usize = 64 * 1024;

pub type Body = BoxBody<Bytes, Infallible>;

/// What every request shares.
pub struct AppState {
    pub auth: Auth,
    pub sessions: Arc<Sessions>,
    pub pool: Pool,
    pub sockets: SocketConfig,
    /// The media directory of a `file://` `STORAGE_URL`; `None` for object stores.
    pub media_root: Option<PathBuf>,
    pub shutdown: watch::Receiver<bool>,
    /// Open WebSocket and SSE connections (for health and graceful shutdown).
    pub open_connections: AtomicUsize,
    pub jobs: JobsApi,
    /// The most a creation can take (Replicate's answer, then storing its id): how long a
    /// shutdown waits for creations under way.
    pub creation_deadline: std::time::Duration,
    /// The database's and ingest's health, checked at most once a second whoever asks.
    pub dependencies: health::Dependencies,
}

const INDEX_HTML: &str = include_str!("gallery/index.html");
const APP_JS: &str = include_str!("gallery/app.js");
const STYLE_CSS: &str = include_str!("gallery/style.css");

pub async fn route(
    request: Request<Incoming>,
    state: Arc<AppState>,
) -> Result<Response<Body>, Infallible> {
    let mut response = answer(request, state).await;
    // The page's address carries the browser's token: no request the page makes (images,
    // scripts, links followed) may repeat it in a `Referer`.
    response.headers_mut().insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    Ok(response)
}

async fn answer(request: Request<Incoming>, state: Arc<AppState>) -> Response<Body> {
    let path = request.uri().path().to_owned();
    if path.starts_with("/api/") && path != "/api/health" {
        return jobs_api(request, state).await;
    }
    if request.method() != Method::GET && request.method() != Method::HEAD {
        return json(
            StatusCode::METHOD_NOT_ALLOWED,
            serde_json::json!({"error": "only GET"}),
        );
    }
    match path.as_str() {
        "/ws" => ws::upgrade(request, state).await,
        "/events" => sse::stream(request, state).await,
        "/api/health" => health::health(&state).await,
        "/metrics" => health::metrics(),
        "/" | "/index.html" => text(StatusCode::OK, "text/html; charset=utf-8", INDEX_HTML),
        "/app.js" => text(StatusCode::OK, "text/javascript; charset=utf-8", APP_JS),
        "/style.css" => text(StatusCode::OK, "text/css; charset=utf-8", STYLE_CSS),
        _ => match path.strip_prefix("/media/") {
            Some(key) => {
                let range = request
                    .headers()
                    .get(header::RANGE)
                    .and_then(|v| v.to_str().ok());
                media::serve(&state, key, range).await
            }
            None => json(
                StatusCode::NOT_FOUND,
                serde_json::json!({"error": "not found"}),
            ),
        },
    }
}

/// The query string's parameters, percent-decoded.
pub(crate) fn query(request: &Request<Incoming>) -> HashMap<String, String> {
    form_urlencoded::parse(request.uri().query().unwrap_or_default().as_bytes())
        .into_owned()
        .collect()
}

pub(crate) fn full(bytes: impl Into<Bytes>) -> Body {
    Full::new(bytes.into()).boxed()
}

pub(crate) fn text(
    status: StatusCode,
    content_type: &'static str,
    body: impl Into<Bytes>,
) -> Response<Body> {
    let mut response = Response::new(full(body));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    response
}

pub(crate) fn json(status: StatusCode, value: serde_json::Value) -> Response<Body> {
    text(status, "application/json", value.to_string())
}

/// The jobs API: `Authorization: Bearer <token>` on every call, JSON in and out.
async fn jobs_api(request: Request<Incoming>, state: Arc<AppState>) -> Response<Body> {
    let bearer = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim);
    let user_id = match state.auth.verify(bearer) {
        Ok(claims) => claims.sub,
        Err(err) => {
            metrics::counter!("notifier_auth_failures_total").increment(1);
            return json(
                StatusCode::UNAUTHORIZED,
                serde_json::json!({"error": format!("{err} (send the gallery's token as Authorization: Bearer <token>)")}),
            );
        }
    };
    let method = request.method().clone();
    let path = request.uri().path().to_owned();
    let segments: Vec<&str> = path.trim_start_matches("/api/").split('/').collect();
    let params = query(&request);
    let outcome = match (&method, segments.as_slice()) {
        (&Method::GET, ["jobs"]) => jobs::list(
            &state.pool,
            &user_id,
            params.get("limit").map(String::as_str),
            params.get("before").map(String::as_str),
        )
        .await
        .map(|mut page| {
            page["jobs_api"] = state.jobs.features();
            (StatusCode::OK, page)
        }),
        (&Method::POST, ["generations"]) => match read_json::<PromptBody>(request).await {
            Ok(body) => state
                .jobs
                .create_generation(&user_id, &body.prompt)
                .await
                .map(created),
            Err(err) => Err(err),
        },
        (&Method::POST, ["generations", source_id, "upscale"]) => state
            .jobs
            .create_upscale(&user_id, source_id)
            .await
            .map(created),
        (&Method::POST, ["models"]) => match read_json::<TrainingBody>(request).await {
            Ok(body) => state
                .jobs
                .create_training(&user_id, &body.name, &body.input_images)
                .await
                .map(created),
            Err(err) => Err(err),
        },
        (_, ["jobs"] | ["generations"] | ["generations", _, "upscale"] | ["models"]) => {
            return json(
                StatusCode::METHOD_NOT_ALLOWED,
                serde_json::json!({"error": format!("{method} is not allowed on {path}")}),
            );
        }
        _ => {
            return json(
                StatusCode::NOT_FOUND,
                serde_json::json!({"error": format!("no API at {path}")}),
            );
        }
    };
    match outcome {
        Ok((status, body)) => json(status, body),
        Err(err) => {
            if matches!(err, JobsError::Database(_)) {
                tracing::warn!(%user_id, %method, %path, error = %err, "jobs API unavailable");
            }
            json(
                StatusCode::from_u16(err.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
                err.body(),
            )
        }
    }
}

fn created(created: jobs::Created) -> (StatusCode, serde_json::Value) {
    (
        StatusCode::CREATED,
        serde_json::json!({"job": created.job, "credits": created.credits}),
    )
}

#[derive(serde::Deserialize)]
struct PromptBody {
    prompt: String,
}

#[derive(serde::Deserialize)]
struct TrainingBody {
    name: String,
    input_images: String,
}

/// Reads a JSON body of at most [`MAX_API_BODY`] bytes.
async fn read_json<T: serde::de::DeserializeOwned>(
    request: Request<Incoming>,
) -> Result<T, JobsError> {
    let limited = http_body_util::Limited::new(request.into_body(), MAX_API_BODY);
    let bytes = limited
        .collect()
        .await
        .map_err(|err| JobsError::Invalid(format!("cannot read the body: {err}")))?
        .to_bytes();
    serde_json::from_slice(&bytes)
        .map_err(|err| JobsError::Invalid(format!("the body is not the expected JSON: {err}")))
}

/// A request refused before any work: status and reason, answered as JSON.
pub(crate) struct Refusal(pub StatusCode, pub String);

impl Refusal {
    pub(crate) fn into_response(self) -> Response<Body> {
        json(self.0, serde_json::json!({"error": self.1}))
    }
}

/// Checks the token before anything else; 401 with the reason otherwise.
pub(crate) fn authenticate(
    request: &Request<Incoming>,
    state: &AppState,
) -> Result<String, Refusal> {
    let params = query(request);
    state
        .auth
        .verify(params.get("token").map(String::as_str))
        .map(|claims| claims.sub)
        .map_err(|err| {
            metrics::counter!("notifier_auth_failures_total").increment(1);
            Refusal(StatusCode::UNAUTHORIZED, err.to_string())
        })
}

pub(crate) fn since(value: Option<&str>) -> Result<Option<i64>, Refusal> {
    match value {
        None | Some("") => Ok(None),
        Some(text) => text
            .parse::<i64>()
            .map(Some)
            .map_err(|_| Refusal(StatusCode::BAD_REQUEST, "since must be an integer".into())),
    }
}

/// Counts a connection as open for as long as it lives.
pub(crate) struct OpenConnection(Arc<AppState>);

impl OpenConnection {
    pub(crate) fn new(state: Arc<AppState>) -> Self {
        state.open_connections.fetch_add(1, Ordering::Relaxed);
        Self(state)
    }
}

impl Drop for OpenConnection {
    fn drop(&mut self) {
        self.0.open_connections.fetch_sub(1, Ordering::Relaxed);
    }
}
