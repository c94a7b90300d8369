//! The operator console over HTTP, under `/ops/`: `Authorization: Bearer <OPERATOR_TOKEN>`
//! on every call (compared in constant time; a user's token is refused like any other
//! wrong one), `404` everywhere when no `OPERATOR_TOKEN` is set. A browser cannot send a
//! header when it opens a page, so `/ops/` without the token answers `401` with a sign-in
//! page, which asks for the token and then loads the console with it.

use std::sync::Arc;

use hyper::body::Incoming;
use hyper::header::{self, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use serde::Serialize;

use crate::ops::OpsError;
use crate::ops::dead_letters::DeadLetterFilter;
use crate::ops::webhooks::WebhookFilter;
use crate::web::respond::{self, Body, json, not_found, query, text};
use crate::web::state::AppState;

const SIGN_IN_HTML: &str = include_str!("console/sign-in.html");
const CONSOLE_HTML: &str = include_str!("console/index.html");
const CONSOLE_JS: &str = include_str!("console/console.js");
const CONSOLE_CSS: &str = include_str!("console/console.css");

/// Largest JSON body an operator call reads (a replay names up to 5,000 ids).
const MAX_OPS_BODY: usize = 1024 * 1024;

pub async fn console(request: Request<Incoming>, state: Arc<AppState>) -> Response<Body> {
    let Some(token) = &state.operator_token else {
        return not_found();
    };
    let path = request.uri().path().to_owned();
    if path == "/ops" {
        let mut response = text(StatusCode::MOVED_PERMANENTLY, "text/plain", "");
        response
            .headers_mut()
            .insert(header::LOCATION, HeaderValue::from_static("/ops/"));
        return response;
    }
    let page = path == "/ops/" || path == "/ops/index.html";
    let presented = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim)
        .unwrap_or_default();
    if !token.matches(presented) {
        metrics::counter!("notifier_operator_auth_failures_total").increment(1);
        return unauthorized(page);
    }
    if page {
        return no_store(text(
            StatusCode::OK,
            "text/html; charset=utf-8",
            console_page(),
        ));
    }
    let method = request.method().clone();
    let Some(call) = path.strip_prefix("/ops/api/") else {
        return not_found();
    };
    let segments: Vec<&str> = call.split('/').collect();
    let params = query(&request);
    let ops = &state.ops;
    let answer = match (&method, segments.as_slice()) {
        (&Method::GET, ["now"]) => to_json(ops.now().await),
        (&Method::GET, ["webhooks"]) => {
            let filter = WebhookFilter {
                outcome: params.get("outcome").cloned(),
                kind: params.get("kind").cloned(),
                since: params.get("since").cloned(),
                until: params.get("until").cloned(),
                q: params.get("q").cloned(),
                before: params.get("before").cloned(),
                limit: params.get("limit").cloned(),
            };
            to_json(ops.webhooks(&filter).await)
        }
        (&Method::GET, ["jobs", id]) => to_json(ops.timeline(id).await),
        (&Method::GET, ["stuck"]) => to_json(
            ops.stuck_jobs()
                .await
                .map(|jobs| serde_json::json!({"jobs": jobs})),
        ),
        (&Method::POST, ["jobs", id, "ask-replicate"]) => to_json(ops.ask_replicate(id).await),
        (&Method::POST, ["jobs", id, "fail"]) => {
            let id = id.to_string();
            match respond::read_json::<FailBody>(request, MAX_OPS_BODY).await {
                Ok(body) => to_json(ops.fail_and_refund(&id, &body.reason).await),
                Err(err) => to_json::<()>(Err(OpsError::Invalid(err))),
            }
        }
        (&Method::GET, ["dead-letters"]) => {
            let filter = DeadLetterFilter {
                reason: params.get("reason").cloned(),
                q: params.get("q").cloned(),
            };
            to_json(ops.dead_letters(&filter).await)
        }
        (&Method::POST, ["dead-letters", "replay"]) => {
            match respond::read_json::<ReplayBody>(request, MAX_OPS_BODY).await {
                Ok(body) => to_json(
                    ops.replay(body.webhook_ids)
                        .await
                        .map(|replayed| serde_json::json!({"replayed": replayed})),
                ),
                Err(err) => to_json::<()>(Err(OpsError::Invalid(err))),
            }
        }
        (_, ["now"] | ["webhooks"] | ["jobs", _] | ["stuck"] | ["dead-letters"])
        | (_, ["jobs", _, "ask-replicate" | "fail"] | ["dead-letters", "replay"]) => json(
            StatusCode::METHOD_NOT_ALLOWED,
            serde_json::json!({"error": format!("{method} is not allowed on {path}")}),
        ),
        _ => json(
            StatusCode::NOT_FOUND,
            serde_json::json!({"error": format!("no operator API at {path}")}),
        ),
    };
    no_store(answer)
}

#[derive(serde::Deserialize)]
struct FailBody {
    reason: String,
}

#[derive(serde::Deserialize)]
struct ReplayBody {
    webhook_ids: Vec<String>,
}

/// The console: its page with the script and style inlined (they are fetched with the
/// token like everything else under `/ops/`, so there is nothing else to load).
fn console_page() -> String {
    CONSOLE_HTML
        .replace("/*CONSOLE_CSS*/", CONSOLE_CSS)
        .replace("/*CONSOLE_JS*/", CONSOLE_JS)
}

fn unauthorized(page: bool) -> Response<Body> {
    let mut response = if page {
        text(
            StatusCode::UNAUTHORIZED,
            "text/html; charset=utf-8",
            SIGN_IN_HTML,
        )
    } else {
        json(
            StatusCode::UNAUTHORIZED,
            serde_json::json!({"error": "send the operator token as Authorization: Bearer <OPERATOR_TOKEN>"}),
        )
    };
    response.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        HeaderValue::from_static("Bearer realm=\"operator console\""),
    );
    no_store(response)
}

/// Nothing an operator sees is cached (it is live, and behind a credential).
fn no_store(mut response: Response<Body>) -> Response<Body> {
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

fn to_json<T: Serialize>(result: Result<T, OpsError>) -> Response<Body> {
    match result {
        Ok(value) => json(
            StatusCode::OK,
            serde_json::to_value(value).unwrap_or_default(),
        ),
        Err(err) => {
            if err.status() >= 500 {
                tracing::warn!(error = %err, "operator call failed");
            }
            json(
                StatusCode::from_u16(err.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
                serde_json::json!({"error": err.to_string()}),
            )
        }
    }
}
