//! The one port's routes — `/ws` and `/events` (`streams.rs`), the jobs API under `/api/`
//! (`api_routes.rs`), `/api/health` and `/metrics` (`health.rs`), the gallery page at `/`
//! (`gallery/`), `/media/<key>` (`media.rs`), and the operator console under `/ops/`
//! (`ops_routes.rs`, `console/`).

use std::convert::Infallible;
use std::sync::Arc;

use hyper::body::Incoming;
use hyper::header::{self, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};

use crate::web::respond::{Body, json, not_found, query, text};
use crate::web::state::AppState;
use crate::web::{api_routes, health, media, ops_routes, streams};

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
    if path == "/ops" || path.starts_with("/ops/") {
        return ops_routes::console(request, state).await;
    }
    if path.starts_with("/api/") && path != "/api/health" {
        return api_routes::jobs_api(request, state).await;
    }
    if request.method() != Method::GET && request.method() != Method::HEAD {
        return json(
            StatusCode::METHOD_NOT_ALLOWED,
            serde_json::json!({"error": "only GET"}),
        );
    }
    match path.as_str() {
        "/ws" => streams::websocket(request, state).await,
        "/events" => streams::event_stream(request, state).await,
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
                let params = query(&request);
                let download = (params.get("download").map(String::as_str) == Some("1"))
                    .then(|| media::download_name(key, params.get("name").map(String::as_str)));
                media::serve(state.media_root.as_deref(), key, range, download.as_deref()).await
            }
            None => not_found(),
        },
    }
}
