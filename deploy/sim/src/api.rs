//! `replicate-sim serve`: Replicate's API as far as this pipeline uses it, and the output
//! files under `/delivery/`.

use std::net::TcpListener;
use std::sync::Arc;

use actix_web::dev::Server;
use actix_web::{App, HttpRequest, HttpResponse, HttpServer, web};
use serde_json::json;

use crate::files::{Files, content_field};
use crate::images;
use crate::lifecycle::Simulator;
use crate::prediction::{CreateRequest, Kind};

struct ApiState {
    simulator: Arc<Simulator>,
    files: Files,
    /// When set, `Authorization: Bearer <token>` must carry it.
    api_token: Option<String>,
}

/// Builds the server on `listener` (port 0 in tests).
pub fn server(
    listener: TcpListener,
    simulator: Arc<Simulator>,
    api_token: Option<String>,
) -> std::io::Result<Server> {
    let state = web::Data::new(ApiState {
        simulator,
        files: Files::default(),
        api_token,
    });
    Ok(HttpServer::new(move || {
        App::new()
            .app_data(state.clone())
            .app_data(web::JsonConfig::default().limit(1024 * 1024))
            .route("/v1/webhooks/default/secret", web::get().to(webhook_secret))
            .route(
                "/v1/models/{owner}/{name}/versions/{version}/trainings",
                web::post().to(create_model_training),
            )
            .route(
                "/v1/models/{owner}/{name}/predictions",
                web::post().to(create_model_prediction),
            )
            .app_data(web::PayloadConfig::default().limit(110 * 1024 * 1024))
            .route("/v1/files", web::post().to(upload_file))
            .route("/v1/files/{id}", web::get().to(file_object))
            .route("/v1/files/{id}/download", web::get().to(download_file))
            .route("/v1/{kind}", web::post().to(create))
            .route("/v1/{kind}/{id}", web::get().to(get))
            .route("/v1/{kind}/{id}/cancel", web::post().to(cancel))
            .route("/delivery/{id}/out-{index}.png", web::get().to(output))
            .route("/sim/jobs", web::get().to(report))
            .route("/sim/stats", web::get().to(stats))
    })
    .disable_signals()
    .listen(listener)?
    .run())
}

/// `predictions` or `trainings` in a path.
fn kind_of(segment: &str) -> Option<Kind> {
    [Kind::Prediction, Kind::Training]
        .into_iter()
        .find(|kind| kind.path() == segment)
}

fn authorized(request: &HttpRequest, state: &ApiState) -> bool {
    let Some(given) = request
        .headers()
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            v.strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("Token "))
        })
    else {
        return false;
    };
    state
        .api_token
        .as_deref()
        .is_none_or(|expected| expected == given)
        && !given.is_empty()
}

fn unauthorized() -> HttpResponse {
    HttpResponse::Unauthorized().json(json!({"title": "Unauthenticated", "detail": "You did not pass a valid authentication token", "status": 401}))
}

fn not_found() -> HttpResponse {
    HttpResponse::NotFound()
        .json(json!({"title": "Not found", "detail": "Not found.", "status": 404}))
}

/// Replicate's `POST /v1/files`.
async fn upload_file(
    request: HttpRequest,
    body: web::Bytes,
    state: web::Data<ApiState>,
) -> HttpResponse {
    if !authorized(&request, &state) {
        return unauthorized();
    }
    let content_type = request
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    match content_field(&content_type, body).await {
        Ok(file) => HttpResponse::Created().json(state.files.keep(file, &state.simulator.base_url)),
        Err(detail) => HttpResponse::BadRequest()
            .json(json!({"title": "Invalid upload", "detail": detail, "status": 400})),
    }
}

/// Replicate's `GET /v1/files/{id}`.
async fn file_object(
    request: HttpRequest,
    id: web::Path<String>,
    state: web::Data<ApiState>,
) -> HttpResponse {
    if !authorized(&request, &state) {
        return unauthorized();
    }
    match state.files.object(&id, &state.simulator.base_url) {
        Some(object) => HttpResponse::Ok().json(object),
        None => not_found(),
    }
}

/// The bytes of an uploaded file.
async fn download_file(id: web::Path<String>, state: web::Data<ApiState>) -> HttpResponse {
    match state.files.get(&id) {
        Some(file) => HttpResponse::Ok()
            .content_type(file.content_type)
            .body(file.bytes),
        None => not_found(),
    }
}

async fn create(
    request: HttpRequest,
    kind: web::Path<String>,
    body: web::Json<CreateRequest>,
    state: web::Data<ApiState>,
) -> HttpResponse {
    let Some(kind) = kind_of(&kind) else {
        return not_found();
    };
    if !authorized(&request, &state) {
        return unauthorized();
    }
    let object = match state.simulator.create(kind, body.into_inner()) {
        Ok(object) => object,
        Err(detail) => {
            return HttpResponse::UnprocessableEntity().json(
                serde_json::json!({"title": "Invalid version", "detail": detail, "status": 422}),
            );
        }
    };
    let delay = state.simulator.create_delay();
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    HttpResponse::Created().json(object)
}

/// Replicate's `POST /v1/models/{owner}/{name}/versions/{version}/trainings`.
async fn create_model_training(
    request: HttpRequest,
    body: web::Json<CreateRequest>,
    state: web::Data<ApiState>,
) -> HttpResponse {
    create(
        request,
        web::Path::from("trainings".to_owned()),
        body,
        state,
    )
    .await
}

/// Replicate's `POST /v1/models/{owner}/{name}/predictions`: an official model, run
/// without naming a version.
async fn create_model_prediction(
    request: HttpRequest,
    path: web::Path<(String, String)>,
    body: web::Json<CreateRequest>,
    state: web::Data<ApiState>,
) -> HttpResponse {
    let (owner, name) = path.into_inner();
    let mut body = body.into_inner();
    body.model = Some(format!("{owner}/{name}"));
    create(
        request,
        web::Path::from("predictions".to_owned()),
        web::Json(body),
        state,
    )
    .await
}

async fn get(
    request: HttpRequest,
    path: web::Path<(String, String)>,
    state: web::Data<ApiState>,
) -> HttpResponse {
    let (kind, id) = path.into_inner();
    if !authorized(&request, &state) {
        return unauthorized();
    }
    match kind_of(&kind).and_then(|kind| state.simulator.get(kind, &id)) {
        Some(object) => HttpResponse::Ok().json(object),
        None => not_found(),
    }
}

async fn cancel(
    request: HttpRequest,
    path: web::Path<(String, String)>,
    state: web::Data<ApiState>,
) -> HttpResponse {
    let (kind, id) = path.into_inner();
    if !authorized(&request, &state) {
        return unauthorized();
    }
    match kind_of(&kind).and_then(|kind| state.simulator.cancel(kind, &id)) {
        Some(object) => HttpResponse::Ok().json(object),
        None => not_found(),
    }
}

/// The signing secret goes only to a caller holding the token this simulator was started
/// with: without one configured it is never handed out (the simulator's port may be
/// published, as in the compose demo).
async fn webhook_secret(request: HttpRequest, state: web::Data<ApiState>) -> HttpResponse {
    if state.api_token.is_none() {
        return HttpResponse::Forbidden().json(json!({"title": "Forbidden", "status": 403,
            "detail": "this simulator hands out its signing secret only when started with REPLICATE_API_TOKEN"}));
    }
    if !authorized(&request, &state) {
        return unauthorized();
    }
    HttpResponse::Ok().json(json!({"key": state.simulator.secret().to_whsec()}))
}

async fn output(path: web::Path<(String, usize)>, state: web::Data<ApiState>) -> HttpResponse {
    let (id, index) = path.into_inner();
    match state.simulator.servable_outputs(&id) {
        Some(count) if index < count => HttpResponse::Ok()
            .content_type("image/png")
            .body(images::png(&id, index)),
        _ => HttpResponse::NotFound().finish(),
    }
}

async fn stats(state: web::Data<ApiState>) -> HttpResponse {
    HttpResponse::Ok().json(state.simulator.stats())
}

async fn report(state: web::Data<ApiState>) -> HttpResponse {
    HttpResponse::Ok().json(state.simulator.report())
}
