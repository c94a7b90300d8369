//! The one port: `/ws` (WebSocket), `/events` (Server-Sent Events), the jobs API under
//! `/api/` (`jobs`, `generations`, `models`), `/api/health`, `/metrics`, the gallery page at
//! `/`, and `/media/<key>`.

use std::collections::HashMap;
use std::convert::Infallible;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame as BodyFrame, Incoming};
use hyper::header::{self, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use shared::db::Pool;
use tokio::sync::{mpsc, watch};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::Role;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

use crate::config::SocketConfig;
use crate::jobs::{self, JobsApi, JobsError};
use crate::replay::{Feed, OpenError};
use crate::sessions::{ConnectionLimit, Sessions};
use crate::{media, ws};
use shared::auth::Auth;

/// Largest JSON body the jobs API reads (a 2,000-character prompt fits many times over).
const MAX_API_BODY: usize = 64 * 1024;
/// How long health waits for the database and for ingest.
const HEALTH_CHECK_TIMEOUT: Duration = Duration::from_secs(2);

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
    /// Ingest's `/api/health`, which decides the `webhook` field of ours.
    pub ingest_health_url: String,
    /// For asking ingest how it is.
    pub http: reqwest::Client,
}

const INDEX_HTML: &str = include_str!("gallery/index.html");
const APP_JS: &str = include_str!("gallery/app.js");
const STYLE_CSS: &str = include_str!("gallery/style.css");

pub async fn route(
    request: Request<Incoming>,
    state: Arc<AppState>,
) -> Result<Response<Body>, Infallible> {
    let path = request.uri().path().to_owned();
    if path.starts_with("/api/") && path != "/api/health" {
        return Ok(jobs_api(request, state).await);
    }
    if request.method() != Method::GET && request.method() != Method::HEAD {
        return Ok(json(
            StatusCode::METHOD_NOT_ALLOWED,
            serde_json::json!({"error": "only GET"}),
        ));
    }
    Ok(match path.as_str() {
        "/ws" => websocket(request, state).await,
        "/events" => server_sent_events(request, state).await,
        "/api/health" => health(&state).await,
        "/metrics" => text(
            StatusCode::OK,
            "text/plain; version=0.0.4",
            shared::metrics::prometheus().render(),
        ),
        "/" | "/index.html" => text(StatusCode::OK, "text/html; charset=utf-8", INDEX_HTML),
        "/app.js" => text(StatusCode::OK, "text/javascript; charset=utf-8", APP_JS),
        "/style.css" => text(StatusCode::OK, "text/css; charset=utf-8", STYLE_CSS),
        _ => match path.strip_prefix("/media/") {
            Some(key) => serve_media(&state, key).await,
            None => json(
                StatusCode::NOT_FOUND,
                serde_json::json!({"error": "not found"}),
            ),
        },
    })
}

/// The query string's parameters, percent-decoded.
fn query(request: &Request<Incoming>) -> HashMap<String, String> {
    form_urlencoded::parse(request.uri().query().unwrap_or_default().as_bytes())
        .into_owned()
        .collect()
}

fn full(bytes: impl Into<Bytes>) -> Body {
    Full::new(bytes.into()).boxed()
}

fn text(status: StatusCode, content_type: &'static str, body: impl Into<Bytes>) -> Response<Body> {
    let mut response = Response::new(full(body));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    response
}

fn json(status: StatusCode, value: serde_json::Value) -> Response<Body> {
    text(status, "application/json", value.to_string())
}

/// The notifier serves while it has the broker and the database; `webhook` says whether
/// ingest (which receives Replicate's webhooks) answers healthy, without deciding ours.
async fn health(state: &AppState) -> Response<Body> {
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
                .create_generation(&state.pool, &state.sessions, &user_id, &body.prompt)
                .await
                .map(created),
            Err(err) => Err(err),
        },
        (&Method::POST, ["generations", source_id, "upscale"]) => state
            .jobs
            .create_upscale(&state.pool, &state.sessions, &user_id, source_id)
            .await
            .map(created),
        (&Method::POST, ["models"]) => match read_json::<TrainingBody>(request).await {
            Ok(body) => state
                .jobs
                .create_training(
                    &state.pool,
                    &state.sessions,
                    &user_id,
                    &body.name,
                    &body.input_images,
                )
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
struct Refusal(StatusCode, String);

impl Refusal {
    fn into_response(self) -> Response<Body> {
        json(self.0, serde_json::json!({"error": self.1}))
    }
}

/// Checks the token before anything else; 401 with the reason otherwise.
fn authenticate(request: &Request<Incoming>, state: &AppState) -> Result<String, Refusal> {
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

fn since(value: Option<&str>) -> Result<Option<i64>, Refusal> {
    match value {
        None | Some("") => Ok(None),
        Some(text) => text
            .parse::<i64>()
            .map(Some)
            .map_err(|_| Refusal(StatusCode::BAD_REQUEST, "since must be an integer".into())),
    }
}

/// Counts a connection as open for as long as it lives.
struct OpenConnection(Arc<AppState>);

impl OpenConnection {
    fn new(state: Arc<AppState>) -> Self {
        state.open_connections.fetch_add(1, Ordering::Relaxed);
        Self(state)
    }
}

impl Drop for OpenConnection {
    fn drop(&mut self) {
        self.0.open_connections.fetch_sub(1, Ordering::Relaxed);
    }
}

async fn websocket(mut request: Request<Incoming>, state: Arc<AppState>) -> Response<Body> {
    let user_id = match authenticate(&request, &state) {
        Ok(user_id) => user_id,
        Err(refusal) => return refusal.into_response(),
    };
    let since = match since(query(&request).get("since").map(String::as_str)) {
        Ok(since) => since,
        Err(refusal) => return refusal.into_response(),
    };
    let headers = request.headers();
    let upgrade_ok = headers
        .get(header::UPGRADE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("websocket"));
    let version_ok = headers
        .get(header::SEC_WEBSOCKET_VERSION)
        .is_some_and(|v| v == "13");
    let Some(key) = headers.get(header::SEC_WEBSOCKET_KEY).cloned() else {
        return json(
            StatusCode::BAD_REQUEST,
            serde_json::json!({"error": "not a WebSocket upgrade"}),
        );
    };
    if !upgrade_ok || !version_ok {
        return json(
            StatusCode::BAD_REQUEST,
            serde_json::json!({"error": "not a WebSocket upgrade (version 13)"}),
        );
    }

    let upgrade = hyper::upgrade::on(&mut request);
    tokio::spawn(async move {
        let upgraded = match upgrade.await {
            Ok(upgraded) => upgraded,
            Err(err) => {
                tracing::debug!(error = %err, "upgrade failed");
                return;
            }
        };
        let open = OpenConnection::new(state.clone());
        let socket = WebSocketStream::from_raw_socket(
            TokioIo::new(upgraded),
            Role::Server,
            Some(ws::socket_config()),
        )
        .await;
        let (feed, opening) = match Box::pin(Feed::open(
            &state.sessions,
            &state.pool,
            &user_id,
            since,
        ))
        .await
        {
            Ok(opened) => opened,
            Err(err) => {
                let code = match err {
                    OpenError::Limit(ConnectionLimit::PerUser(_)) => CloseCode::Policy,
                    OpenError::Limit(ConnectionLimit::Total(_)) => CloseCode::Again,
                    OpenError::Db(_) => CloseCode::Error,
                };
                metrics::counter!("notifier_connections_refused_total", "reason" => code_label(code)).increment(1);
                tracing::warn!(%user_id, error = %err, "cannot open the feed; closing");
                Box::pin(ws::refuse(socket, code, &err.to_string())).await;
                return;
            }
        };
        let replayed = opening.replay.len();
        tracing::info!(%user_id, ?since, replayed, "websocket connected");
        // The connection's long life in a task of its own, without the states of the
        // upgrade and the opening above: the smaller each waiting task, the more sockets
        // fit (see deploy/bench fanout).
        let (sockets, shutdown) = (state.sockets, state.shutdown.clone());
        tokio::spawn(async move {
            let ending = ws::serve(socket, feed, opening, sockets, shutdown).await;
            tracing::info!(%user_id, ending = ending.as_str(), "websocket closed");
            drop(open);
        });
    });

    let mut response = Response::new(full(Bytes::new()));
    *response.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let headers = response.headers_mut();
    headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    headers.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
    headers.insert(
        header::SEC_WEBSOCKET_ACCEPT,
        HeaderValue::from_str(&derive_accept_key(key.as_bytes()))
            .expect("base64 is a valid header"),
    );
    response
}

/// The same stream as Server-Sent Events: `id: <seq>` on every numbered event, and
/// `Last-Event-ID` (or `since`) to resume.
async fn server_sent_events(request: Request<Incoming>, state: Arc<AppState>) -> Response<Body> {
    let user_id = match authenticate(&request, &state) {
        Ok(user_id) => user_id,
        Err(refusal) => return refusal.into_response(),
    };
    let last_event_id = request
        .headers()
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let params = query(&request);
    let since = match since(
        last_event_id
            .as_deref()
            .or(params.get("since").map(String::as_str)),
    ) {
        Ok(since) => since,
        Err(refusal) => return refusal.into_response(),
    };
    let (feed, opening) =
        match Box::pin(Feed::open(&state.sessions, &state.pool, &user_id, since)).await {
            Ok(opened) => opened,
            Err(err) => {
                tracing::warn!(%user_id, error = %err, "cannot open the feed");
                let status = match err {
                    OpenError::Limit(ConnectionLimit::PerUser(_)) => StatusCode::TOO_MANY_REQUESTS,
                    OpenError::Limit(ConnectionLimit::Total(_)) | OpenError::Db(_) => {
                        StatusCode::SERVICE_UNAVAILABLE
                    }
                };
                return json(status, serde_json::json!({"error": err.to_string()}));
            }
        };
    let (tx, rx) = mpsc::channel::<Bytes>(state.sockets.send_queue.max(1));
    tokio::spawn(stream_events(feed, opening, tx, state.clone(), user_id));
    let body =
        StreamBody::new(tokio_stream(rx).map(|chunk| Ok::<_, Infallible>(BodyFrame::data(chunk))));
    let mut response = Response::new(BodyExt::boxed(body));
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    response
}

fn sse_frame(frame: &crate::replay::Frame) -> Bytes {
    match frame.seq {
        Some(seq) => Bytes::from(format!("id: {seq}\ndata: {}\n\n", frame.json.as_str())),
        None => Bytes::from(format!("data: {}\n\n", frame.json.as_str())),
    }
}

async fn stream_events(
    feed: Feed,
    opening: crate::replay::Opening,
    tx: mpsc::Sender<Bytes>,
    state: Arc<AppState>,
    user_id: String,
) {
    let _open = OpenConnection::new(state.clone());
    tracing::info!(%user_id, replayed = opening.replay.len(), "SSE connection opened");
    let ending = stream_loop(feed, opening, &tx, &state).await;
    tracing::info!(%user_id, ending, "SSE connection closed");
}

/// Sends the opening frames, then live ones, until the client goes or cannot keep up.
async fn stream_loop(
    mut feed: Feed,
    opening: crate::replay::Opening,
    tx: &mpsc::Sender<Bytes>,
    state: &AppState,
) -> &'static str {
    let timeout = Duration::from_secs(state.sockets.send_timeout_secs);
    let send = |chunk: Bytes| {
        let tx = tx.clone();
        async move {
            matches!(
                tokio::time::timeout(timeout, tx.send(chunk)).await,
                Ok(Ok(()))
            )
        }
    };
    let mut first = vec![opening.hello];
    first.extend(opening.replay);
    for frame in &first {
        if !send(sse_frame(frame)).await {
            return "client gone";
        }
    }
    let mut shutdown = state.shutdown.clone();
    let too_slow = feed.too_slow_signal();
    let mut ping = tokio::time::interval(Duration::from_secs(state.sockets.ping_secs));
    ping.tick().await;
    loop {
        // A client far behind gets the log page by page before live pushes again.
        if feed.has_more() {
            let Ok(frames) = feed.next_page().await else {
                return "event log unavailable";
            };
            for frame in &frames {
                if !send(sse_frame(frame)).await {
                    return "too slow";
                }
            }
            continue;
        }
        tokio::select! {
            _ = shutdown.changed() => return "shutdown",
            _ = too_slow.notified() => {
                metrics::counter!("notifier_slow_consumer_closes_total").increment(1);
                return "too slow";
            }
            _ = tx.closed() => return "client gone",
            _ = ping.tick() => {
                if !send(Bytes::from_static(b": ping\n\n")).await {
                    return "client gone";
                }
            }
            push = feed.recv() => {
                let Some(push) = push else { return "feed ended" };
                let Ok(frames) = feed.accept(push).await else { return "event log unavailable" };
                for frame in &frames {
                    if !send(sse_frame(frame)).await {
                        metrics::counter!("notifier_slow_consumer_closes_total").increment(1);
                        return "too slow";
                    }
                }
            }
        }
    }
}

fn code_label(code: CloseCode) -> &'static str {
    match code {
        CloseCode::Policy => "per_user",
        CloseCode::Again => "total",
        _ => "event_log",
    }
}

/// An mpsc receiver as a stream.
fn tokio_stream(mut rx: mpsc::Receiver<Bytes>) -> impl futures_util::Stream<Item = Bytes> {
    futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx))
}

async fn serve_media(state: &AppState, key: &str) -> Response<Body> {
    let not_found = || {
        json(
            StatusCode::NOT_FOUND,
            serde_json::json!({"error": "not found"}),
        )
    };
    let Some(root) = &state.media_root else {
        return not_found();
    };
    let Some(path) = media::resolve(root, key) else {
        return json(
            StatusCode::BAD_REQUEST,
            serde_json::json!({"error": "invalid media key"}),
        );
    };
    match tokio::fs::read(&path).await {
        Ok(bytes) => {
            let mut response = text(StatusCode::OK, media::content_type(&path), bytes);
            let headers = response.headers_mut();
            headers.insert(
                header::CACHE_CONTROL,
                HeaderValue::from_static("public, max-age=31536000, immutable"),
            );
            // Media shares the gallery's origin: never sniffed into something else, and an
            // SVG opened on its own runs no script and reaches nothing.
            headers.insert(
                header::X_CONTENT_TYPE_OPTIONS,
                HeaderValue::from_static("nosniff"),
            );
            headers.insert(
                header::CONTENT_SECURITY_POLICY,
                HeaderValue::from_static(media::CONTENT_SECURITY_POLICY),
            );
            response
        }
        Err(_) => not_found(),
    }
}
