//! Creating jobs on Replicate: predictions (official models by name, others by version) and
//! trainings, each with the pipeline's webhook URL and every webhook event, so the gallery
//! sees the job start, progress and end.

use std::time::Duration;

use serde_json::{Value, json};
use shared::config::SecretString;

use crate::config::ModelRef;

/// Every event a job's webhook is subscribed to.
pub const WEBHOOK_EVENTS: [&str; 4] = ["start", "output", "logs", "completed"];

/// Why Replicate did not do what was asked (create or cancel a job). The text is what the
/// person is told (and what a failed job's `error_message` says): it never carries our
/// addresses; the log line adds the cause.
#[derive(Debug, thiserror::Error)]
pub enum ReplicateError {
    /// Replicate answered with an error status; `detail` is its explanation.
    #[error("Replicate refused the job ({status}): {detail}")]
    Refused { status: u16, detail: String },
    /// No answer: the job may or may not exist on Replicate.
    #[error("Replicate {}", unreachable_words(.0))]
    Unreachable(#[source] reqwest::Error),
    #[error("Replicate's answer lacks the id (or URL) asked for: {0}")]
    NoId(String),
}

/// What went wrong on the way to Replicate, in words (reqwest's own text names the URL).
fn unreachable_words(err: &reqwest::Error) -> &'static str {
    if err.is_timeout() {
        "did not answer in time"
    } else if err.is_connect() {
        "could not be reached"
    } else {
        "broke off the connection before answering"
    }
}

/// What to create on Replicate.
#[derive(Debug, Clone)]
pub enum Request {
    Prediction {
        model: ModelRef,
        input: Value,
    },
    Training {
        model: ModelRef,
        destination: String,
        input: Value,
    },
}

/// Replicate's API, as the jobs API uses it.
pub struct ReplicateApi {
    http: reqwest::Client,
    base_url: String,
    token: SecretString,
    webhook_url: String,
}

impl ReplicateApi {
    /// A client whose creations give up after `timeout`.
    pub fn new(base_url: &str, token: SecretString, webhook_url: &str, timeout: Duration) -> Self {
        Self {
            http: shared::http::client_builder()
                .timeout(timeout)
                .build()
                .expect("an HTTP client with default settings builds"),
            base_url: base_url.trim_end_matches('/').to_owned(),
            token,
            webhook_url: webhook_url.to_owned(),
        }
    }

    /// Creates the job for row `row_id`, its webhook URL tagged with the row's id; returns
    /// Replicate's id.
    pub async fn create(&self, row_id: &str, request: &Request) -> Result<String, ReplicateError> {
        let webhook = shared::replicate::tagged_webhook_url(&self.webhook_url, row_id);
        match request {
            Request::Prediction { model, input } => {
                self.create_prediction(model, input, &webhook).await
            }
            Request::Training {
                model,
                destination,
                input,
            } => {
                self.create_training(model, destination, input, &webhook)
                    .await
            }
        }
    }

    /// Creates a prediction of `model` with `input`; returns Replicate's id.
    async fn create_prediction(
        &self,
        model: &ModelRef,
        input: &Value,
        webhook: &str,
    ) -> Result<String, ReplicateError> {
        let mut body = json!({
            "input": input,
            "webhook": webhook,
            "webhook_events_filter": WEBHOOK_EVENTS,
        });
        let url = match &model.version {
            Some(version) => {
                body["version"] = json!(version);
                format!("{}/predictions", self.base_url)
            }
            None => format!(
                "{}/models/{}/{}/predictions",
                self.base_url, model.owner, model.name
            ),
        };
        self.post(&url, &body).await
    }

    /// Creates a training of `model` (which needs a version) into `destination`.
    async fn create_training(
        &self,
        model: &ModelRef,
        destination: &str,
        input: &Value,
        webhook: &str,
    ) -> Result<String, ReplicateError> {
        let version = model.version.as_deref().unwrap_or("latest");
        let url = format!(
            "{}/models/{}/{}/versions/{version}/trainings",
            self.base_url, model.owner, model.name
        );
        let body = json!({
            "destination": destination,
            "input": input,
            "webhook": webhook,
            "webhook_events_filter": WEBHOOK_EVENTS,
        });
        self.post(&url, &body).await
    }

    /// Asks Replicate to cancel the prediction (or training) `replicate_id`; the job then ends
    /// through its `canceled` webhook.
    pub async fn cancel(&self, training: bool, replicate_id: &str) -> Result<(), ReplicateError> {
        let collection = if training { "trainings" } else { "predictions" };
        let url = format!("{}/{collection}/{replicate_id}/cancel", self.base_url);
        self.post(&url, &json!({})).await.map(|_| ())
    }

    /// The prediction (or training) `replicate_id` as Replicate reports it now
    /// (`GET /v1/predictions/{id}`, `/v1/trainings/{id}`): the object a webhook carries.
    /// `Refused { status: 404 }` when Replicate does not know it.
    pub async fn fetch(
        &self,
        training: bool,
        replicate_id: &str,
    ) -> Result<Vec<u8>, ReplicateError> {
        let collection = if training { "trainings" } else { "predictions" };
        let url = format!("{}/{collection}/{replicate_id}", self.base_url);
        let response = self
            .http
            .get(url)
            .bearer_auth(self.token.expose())
            .send()
            .await
            .map_err(ReplicateError::Unreachable)?;
        let status = response.status();
        let body = response
            .bytes()
            .await
            .map_err(ReplicateError::Unreachable)?;
        if !status.is_success() {
            let text = String::from_utf8_lossy(&body);
            let answer: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
            return Err(ReplicateError::Refused {
                status: status.as_u16(),
                detail: detail_of(&answer, &text),
            });
        }
        Ok(body.to_vec())
    }

    /// Uploads a zip through Replicate's files API (`POST /v1/files`, multipart field
    /// `content`, as the official clients send it); returns the URL a training reads it from
    /// (`urls.get`).
    pub async fn upload_zip(&self, bytes: bytes::Bytes) -> Result<String, ReplicateError> {
        let part = reqwest::multipart::Part::stream(bytes)
            .file_name("photos.zip")
            .mime_str("application/zip")
            .expect("a valid content type");
        let form = reqwest::multipart::Form::new().part("content", part);
        let request = self
            .http
            .post(format!("{}/files", self.base_url))
            .multipart(form);
        self.send(request, |answer| answer["urls"]["get"].as_str())
            .await
    }

    async fn post(&self, url: &str, body: &Value) -> Result<String, ReplicateError> {
        let request = self.http.post(url).json(body);
        self.send(request, |answer| answer["id"].as_str()).await
    }

    /// Sends `request` with the token; an error status is Replicate's refusal with its
    /// explanation, and `wanted` picks the string asked for from the answer.
    async fn send(
        &self,
        request: reqwest::RequestBuilder,
        wanted: impl Fn(&Value) -> Option<&str>,
    ) -> Result<String, ReplicateError> {
        let response = request
            .bearer_auth(self.token.expose())
            .send()
            .await
            .map_err(ReplicateError::Unreachable)?;
        let status = response.status();
        let text = response.text().await.map_err(ReplicateError::Unreachable)?;
        let answer: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
        if !status.is_success() {
            return Err(ReplicateError::Refused {
                status: status.as_u16(),
                detail: detail_of(&answer, &text),
            });
        }
        wanted(&answer)
            .filter(|value| !value.is_empty())
            .map(str::to_owned)
            .ok_or_else(|| ReplicateError::NoId(shorten(&text)))
    }
}

/// Replicate explains errors in `detail` (sometimes `title`); otherwise the raw text.
fn detail_of(answer: &Value, text: &str) -> String {
    answer["detail"]
        .as_str()
        .or_else(|| answer["title"].as_str())
        .map(str::to_owned)
        .unwrap_or_else(|| shorten(text))
}

fn shorten(text: &str) -> String {
    const MAX: usize = 200;
    match text.char_indices().nth(MAX) {
        Some((cut, _)) => format!("{}…", &text[..cut]),
        None if text.is_empty() => "empty answer".into(),
        None => text.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_carry_replicates_explanation() {
        let answer = json!({"title": "Invalid version", "detail": "The specified version does not exist", "status": 422});
        assert_eq!(
            detail_of(&answer, ""),
            "The specified version does not exist"
        );
        assert_eq!(detail_of(&Value::Null, "bad gateway"), "bad gateway");
        assert_eq!(detail_of(&Value::Null, ""), "empty answer");
        let long = "é".repeat(300);
        assert_eq!(shorten(&long).chars().count(), 201);
    }
}
