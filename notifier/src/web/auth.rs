//! Who is asking: the gallery's token, in the query string for the streams (browsers cannot
//! set headers on a WebSocket or an `EventSource`) and as a bearer token for the jobs API.

use hyper::body::Incoming;
use hyper::header;
use hyper::{Request, StatusCode};
use shared::auth::Auth;

use crate::web::respond::{Refusal, query};

/// The user of `?token=`; 401 with the reason otherwise.
pub fn token_in_query(request: &Request<Incoming>, auth: &Auth) -> Result<String, Refusal> {
    let params = query(request);
    verified(auth, params.get("token").map(String::as_str), "")
}

/// The user of `Authorization: Bearer <token>`; 401 with the reason otherwise.
pub fn bearer(request: &Request<Incoming>, auth: &Auth) -> Result<String, Refusal> {
    let token = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim);
    verified(
        auth,
        token,
        " (send the gallery's token as Authorization: Bearer <token>)",
    )
}

fn verified(auth: &Auth, token: Option<&str>, hint: &str) -> Result<String, Refusal> {
    auth.verify(token).map(|claims| claims.sub).map_err(|err| {
        metrics::counter!("notifier_auth_failures_total").increment(1);
        Refusal(StatusCode::UNAUTHORIZED, format!("{err}{hint}"))
    })
}
