//! The shapes of an answer every handler shares: the body type, text and JSON responses, a
//! refusal with its reason, and the query string.

use std::collections::HashMap;
use std::convert::Infallible;

use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::header::{self, HeaderValue};
use hyper::{Request, Response, StatusCode};

pub type Body = BoxBody<Bytes, Infallible>;

/// The query string's parameters, percent-decoded.
pub fn query(request: &Request<Incoming>) -> HashMap<String, String> {
    form_urlencoded::parse(request.uri().query().unwrap_or_default().as_bytes())
        .into_owned()
        .collect()
}

pub fn full(bytes: impl Into<Bytes>) -> Body {
    Full::new(bytes.into()).boxed()
}

pub fn text(
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

pub fn json(status: StatusCode, value: serde_json::Value) -> Response<Body> {
    text(status, "application/json", value.to_string())
}

/// `{"error": "not found"}`, 404.
pub fn not_found() -> Response<Body> {
    json(
        StatusCode::NOT_FOUND,
        serde_json::json!({"error": "not found"}),
    )
}

/// A request refused before any work: status and reason, answered as JSON.
pub struct Refusal(pub StatusCode, pub String);

impl Refusal {
    pub fn into_response(self) -> Response<Body> {
        json(self.0, serde_json::json!({"error": self.1}))
    }
}

/// The `since` a client resumes from: absent, empty or an integer.
pub fn since(value: Option<&str>) -> Result<Option<i64>, Refusal> {
    match value {
        None | Some("") => Ok(None),
        Some(text) => text
            .parse::<i64>()
            .map(Some)
            .map_err(|_| Refusal(StatusCode::BAD_REQUEST, "since must be an integer".into())),
    }
}

/// Reads a JSON body of at most `max` bytes; the error says what was wrong, for a `400`.
pub async fn read_json<T: serde::de::DeserializeOwned>(
    request: Request<Incoming>,
    max: usize,
) -> Result<T, String> {
    let limited = http_body_util::Limited::new(request.into_body(), max);
    let bytes = limited
        .collect()
        .await
        .map_err(|err| format!("cannot read the body: {err}"))?
        .to_bytes();
    serde_json::from_slice(&bytes)
        .map_err(|err| format!("the body is not the expected JSON: {err}"))
}
