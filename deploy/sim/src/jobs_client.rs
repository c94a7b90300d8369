//! A client of the notifier's jobs API, as the gallery uses it: the demo, `load` and the
//! end-to-end tests create every job through it, so there is one way jobs come to exist.

use std::time::Duration;

use serde_json::{Value, json};
use shared::auth::Auth;
use shared::events::JobKind;

/// A job the API created.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Submitted {
    pub user_id: String,
    pub kind: JobKind,
    /// `generations.id` or `ai_models.id`.
    pub id: String,
    /// Replicate's id.
    pub job_id: String,
    pub cost: i32,
}

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("the jobs API answered {status}: {error}")]
    Refused { status: u16, error: String },
    #[error("the jobs API could not be reached: {0}")]
    Unreachable(#[from] reqwest::Error),
    #[error("the jobs API answered without {0}")]
    Malformed(&'static str),
}

impl ClientError {
    /// The HTTP status of a refusal (402 for a balance below the cost, …).
    pub fn status(&self) -> Option<u16> {
        match self {
            Self::Refused { status, .. } => Some(*status),
            _ => None,
        }
    }
}

pub struct JobsClient {
    http: reqwest::Client,
    /// The notifier's base URL (`http://host:port`).
    base_url: String,
    auth: Auth,
}

/// Photos of a person to train on (the simulator does not download them).
pub const TRAINING_IMAGES: &str = "https://example.com/my-input-images.zip";

impl JobsClient {
    pub fn new(base_url: &str, jwt_secret: &str) -> Self {
        Self::with_timeout(base_url, jwt_secret, Duration::from_secs(60))
    }

    /// A client that gives up on an answer after `timeout` (a browser closed mid-request).
    pub fn with_timeout(base_url: &str, jwt_secret: &str, timeout: Duration) -> Self {
        Self {
            http: shared::http::client_builder()
                .timeout(timeout)
                .build()
                .expect("an HTTP client with default settings builds"),
            base_url: base_url.trim_end_matches('/').to_owned(),
            auth: Auth::new(jwt_secret),
        }
    }

    /// A token for `user_id`, as the web app mints for its browser.
    pub fn token(&self, user_id: &str, ttl: Duration) -> String {
        self.auth.mint(user_id, ttl)
    }

    async fn call(
        &self,
        user_id: &str,
        request: reqwest::RequestBuilder,
    ) -> Result<Value, ClientError> {
        let response = request
            .bearer_auth(self.token(user_id, Duration::from_secs(300)))
            .send()
            .await?;
        let status = response.status().as_u16();
        let body: Value = response.json().await.unwrap_or(Value::Null);
        if !(200..300).contains(&status) {
            return Err(ClientError::Refused {
                status,
                error: body["error"]
                    .as_str()
                    .unwrap_or("no explanation")
                    .to_owned(),
            });
        }
        Ok(body)
    }

    async fn create(
        &self,
        user_id: &str,
        path: &str,
        body: Value,
    ) -> Result<Submitted, ClientError> {
        let request = self
            .http
            .post(format!("{}/api/{path}", self.base_url))
            .json(&body);
        let answer = self.call(user_id, request).await?;
        let job = &answer["job"];
        let kind = serde_json::from_value(job["kind"].clone())
            .map_err(|_| ClientError::Malformed("job.kind"))?;
        Ok(Submitted {
            user_id: user_id.to_owned(),
            kind,
            id: job["id"]
                .as_str()
                .ok_or(ClientError::Malformed("job.id"))?
                .to_owned(),
            job_id: job["job_id"]
                .as_str()
                .ok_or(ClientError::Malformed("job.job_id"))?
                .to_owned(),
            cost: job["credits_used"]
                .as_i64()
                .ok_or(ClientError::Malformed("job.credits_used"))? as i32,
        })
    }

    pub async fn generate(&self, user_id: &str, prompt: &str) -> Result<Submitted, ClientError> {
        self.create(user_id, "generations", json!({"prompt": prompt}))
            .await
    }

    pub async fn upscale(&self, user_id: &str, source_id: &str) -> Result<Submitted, ClientError> {
        self.create(
            user_id,
            &format!("generations/{source_id}/upscale"),
            json!({}),
        )
        .await
    }

    pub async fn train(&self, user_id: &str, name: &str) -> Result<Submitted, ClientError> {
        self.create(
            user_id,
            "models",
            json!({"name": name, "input_images": TRAINING_IMAGES}),
        )
        .await
    }

    /// `GET /api/jobs` (first page).
    pub async fn list(&self, user_id: &str) -> Result<Value, ClientError> {
        let request = self.http.get(format!("{}/api/jobs", self.base_url));
        self.call(user_id, request).await
    }
}

/// Prompts the demo and load runs pick from.
pub const PROMPTS: [&str; 6] = [
    "a studio photo of a rainbow colored corgi",
    "a lighthouse at dusk, oil painting",
    "portrait of an astronaut cat, 35mm film",
    "a bowl of ramen in the style of ukiyo-e",
    "a cozy cabin in the snow, golden hour",
    "a red fox in a misty forest, watercolor",
];

pub fn random_prompt() -> &'static str {
    PROMPTS[fastrand::usize(..PROMPTS.len())]
}
