//! `/ws` and `/events`: the token, where to resume from, and (for `/ws`) the handshake;
//! then the connection is the push side's (`push/ws.rs`, `push/sse.rs`).

use std::convert::Infallible;
use std::sync::Arc;

use bytes::Bytes;
use futures_util::StreamExt;
use http_body_util::{BodyExt, StreamBody};
use hyper::body::{Frame as BodyFrame, Incoming};
use hyper::header::{self, HeaderValue};
use hyper::{Request, Response, StatusCode};
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;

use crate::push::feed::OpenError;
use crate::push::sessions::ConnectionLimit;
use crate::push::{sse, ws};
use crate::web::auth;
use crate::web::respond::{Body, full, json, query, since};
use crate::web::state::AppState;

/// `/ws`: checks the token and the handshake, answers 101, then runs the connection in a
/// task of its own.
pub async fn websocket(mut request: Request<Incoming>, state: Arc<AppState>) -> Response<Body> {
    let user_id = match auth::token_in_query(&request, &state.auth) {
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
    let hub = state.hub.clone();
    tokio::spawn(async move {
        match upgrade.await {
            Ok(upgraded) => ws::serve(hub, upgraded, user_id, since).await,
            Err(err) => tracing::debug!(error = %err, "upgrade failed"),
        }
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

/// `/events`: the same stream as Server-Sent Events: `id: <seq>` on every numbered event,
/// and `Last-Event-ID` (or `since`) to resume.
pub async fn event_stream(request: Request<Incoming>, state: Arc<AppState>) -> Response<Body> {
    let user_id = match auth::token_in_query(&request, &state.auth) {
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
    let (feed, opening) = match state.hub.open_feed(&user_id, since).await {
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
    let chunks = sse::start(state.hub.clone(), feed, opening, user_id);
    let body = StreamBody::new(chunks.map(|chunk| Ok::<_, Infallible>(BodyFrame::data(chunk))));
    let mut response = Response::new(BodyExt::boxed(body));
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    response
}
