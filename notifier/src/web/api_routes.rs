//! The jobs API over HTTP: `Authorization: Bearer <token>` on every call, JSON in and out;
//! each path and method to its call on [`JobsApi`](crate::api::jobs::JobsApi), each
//! [`JobsError`] to its status.

use std::sync::Arc;

use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};

use crate::api::error::{Created, JobsError};
use crate::web::respond::{self, Body, json, query};
use crate::web::state::AppState;
use crate::web::{auth, upload};

/// Largest JSON body the jobs API reads (a 2,000-character prompt fits many times over).
const MAX_API_BODY: usize = 64 * 1024;

/// The jobs API: `Authorization: Bearer <token>` on every call, JSON in and out.
pub async fn jobs_api(request: Request<Incoming>, state: Arc<AppState>) -> Response<Body> {
    let user_id = match auth::bearer(&request, &state.auth) {
        Ok(user_id) => user_id,
        Err(refusal) => return refusal.into_response(),
    };
    let method = request.method().clone();
    let path = request.uri().path().to_owned();
    let segments: Vec<&str> = path.trim_start_matches("/api/").split('/').collect();
    let params = query(&request);
    let outcome = match (&method, segments.as_slice()) {
        (&Method::GET, ["jobs"]) => state
            .jobs
            .list(
                &user_id,
                params.get("limit").map(String::as_str),
                params.get("before").map(String::as_str),
            )
            .await
            .map(|page| (StatusCode::OK, page)),
        (&Method::POST, ["generations"]) => match read_json::<PromptBody>(request).await {
            Ok(body) => state
                .jobs
                .create_generation(&user_id, &body.prompt, body.model.as_deref())
                .await
                .map(created),
            Err(err) => Err(err),
        },
        (&Method::POST, ["generations", source_id, "upscale"]) => state
            .jobs
            .create_upscale(&user_id, source_id)
            .await
            .map(created),
        (&Method::POST, ["models"]) if upload::is_multipart(&request) => {
            match upload::read_training_form(request).await {
                Ok(form) => state
                    .jobs
                    .create_training_from_upload(&user_id, &form.name, &form.upload)
                    .await
                    .map(created),
                Err(err) => Err(err),
            }
        }
        (&Method::POST, ["models"]) => match read_json::<TrainingBody>(request).await {
            Ok(body) => state
                .jobs
                .create_training(&user_id, &body.name, &body.input_images)
                .await
                .map(created),
            Err(err) => Err(err),
        },
        (&Method::GET, ["models"]) => state
            .jobs
            .models(&user_id)
            .await
            .map(|models| (StatusCode::OK, models)),
        (&Method::POST, ["jobs", id, "cancel"]) => state
            .jobs
            .cancel(&user_id, id)
            .await
            .map(|job| (StatusCode::ACCEPTED, serde_json::json!({"job": job}))),
        (
            _,
            ["jobs"]
            | ["generations"]
            | ["generations", _, "upscale"]
            | ["models"]
            | ["jobs", _, "cancel"],
        ) => {
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

fn created(created: Created) -> (StatusCode, serde_json::Value) {
    (
        StatusCode::CREATED,
        serde_json::json!({"job": created.job, "credits": created.credits}),
    )
}

#[derive(serde::Deserialize)]
struct PromptBody {
    prompt: String,
    /// A trained model's `ai_models.id`; the default model when absent.
    #[serde(default)]
    model: Option<String>,
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
    respond::read_json(request, MAX_API_BODY)
        .await
        .map_err(JobsError::Invalid)
}
