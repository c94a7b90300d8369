//! A simulated prediction or training, shaped as Replicate's API returns it (and as its
//! webhooks carry it).

use chrono::{DateTime, SecondsFormat, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use shared::replicate::Status;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    Prediction,
    Training,
}

impl Kind {
    pub fn path(self) -> &'static str {
        match self {
            Self::Prediction => "predictions",
            Self::Training => "trainings",
        }
    }
}

/// The version a prediction runs when the request names none (a real SDXL version).
pub const DEFAULT_VERSION: &str =
    "39ed52f2a78e934b3ba6e2a89f5b1c712de7dfea535525255b1aa35c5565e08b";

/// Versions of public models the simulator runs, besides [`DEFAULT_VERSION`]: the upscaler
/// and the trainer the pipeline is configured with by default.
pub const PUBLIC_VERSIONS: [&str; 2] = [
    "f121d640bd286e1fdc67f9799164c1d5be36ff74576ee11c803ae5b665dd46aa",
    "56cb4a6447e586e40c6834a7a48b649336ade35325479817ada41cd3d8dcc175",
];

/// The version a succeeded training `training_id` creates: 64 hex digits of its own, so
/// that a prediction can name it (and only a training that succeeded makes one).
pub fn trained_version(training_id: &str) -> String {
    use std::hash::{Hash, Hasher};
    (0..4u8)
        .map(|round| {
            let mut hasher = std::collections::hash_map::DefaultHasher::new();
            (round, training_id).hash(&mut hasher);
            format!("{:016x}", hasher.finish())
        })
        .collect()
}

/// Every event a webhook can be subscribed to.
pub const ALL_EVENTS: [&str; 4] = ["start", "output", "logs", "completed"];

/// What `POST /v1/predictions` and `POST /v1/trainings` take.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
pub struct CreateRequest {
    #[serde(default)]
    pub version: Option<String>,
    #[serde(default)]
    pub model: Option<String>,
    #[serde(default)]
    pub input: Value,
    #[serde(default)]
    pub webhook: Option<String>,
    #[serde(default)]
    pub webhook_events_filter: Option<Vec<String>>,
}

#[derive(Debug, Clone)]
pub struct SimJob {
    pub id: String,
    pub kind: Kind,
    pub model: String,
    pub version: String,
    pub input: Value,
    pub status: Status,
    pub logs: String,
    pub output: Value,
    pub error: Value,
    pub created_at: DateTime<Utc>,
    pub started_at: Option<DateTime<Utc>>,
    pub completed_at: Option<DateTime<Utc>>,
    pub webhook: Option<String>,
    pub events: Vec<String>,
    pub cancel_requested: bool,
    /// The outputs point to URLs that answer 404 (a fault).
    pub outputs_broken: bool,
    /// The terminal webhook was answered 2xx.
    pub terminal_delivered: bool,
    /// When the terminal webhook was first posted (latency measurements).
    pub terminal_sent_at: Option<std::time::Instant>,
    pub webhooks_sent: u32,
}

/// A Replicate-style id: 26 lowercase letters and digits.
pub fn new_id() -> String {
    const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
    (0..26)
        .map(|_| ALPHABET[fastrand::usize(..ALPHABET.len())] as char)
        .collect()
}

fn timestamp(at: &DateTime<Utc>) -> String {
    at.to_rfc3339_opts(SecondsFormat::Micros, true)
}

impl SimJob {
    pub fn new(kind: Kind, request: CreateRequest) -> Self {
        let events = request
            .webhook_events_filter
            .unwrap_or_else(|| ALL_EVENTS.iter().map(|e| e.to_string()).collect());
        Self {
            id: new_id(),
            kind,
            model: request
                .model
                .unwrap_or_else(|| "stability-ai/sdxl".to_owned()),
            version: request
                .version
                .unwrap_or_else(|| DEFAULT_VERSION.to_owned()),
            input: request.input,
            status: Status::Starting,
            logs: String::new(),
            output: Value::Null,
            error: Value::Null,
            created_at: Utc::now(),
            started_at: None,
            completed_at: None,
            webhook: request.webhook,
            events,
            cancel_requested: false,
            outputs_broken: false,
            terminal_delivered: false,
            terminal_sent_at: None,
            webhooks_sent: 0,
        }
    }

    /// An upscaler returns one URL; image models a list of `num_outputs` URLs.
    pub fn is_upscale(&self) -> bool {
        self.kind == Kind::Prediction && self.input.get("image").is_some()
    }

    pub fn output_count(&self) -> usize {
        match self.kind {
            Kind::Training => 0,
            Kind::Prediction if self.is_upscale() => 1,
            Kind::Prediction => self
                .input
                .get("num_outputs")
                .and_then(Value::as_u64)
                .unwrap_or(1)
                .clamp(1, 4) as usize,
        }
    }

    pub fn is_terminal(&self) -> bool {
        self.status.is_terminal()
    }

    pub fn subscribed(&self, event: &str) -> bool {
        self.events.iter().any(|e| e == event)
    }

    /// The URL output `index` is served at.
    pub fn output_url(&self, base_url: &str, index: usize) -> String {
        if self.outputs_broken {
            format!("{base_url}/delivery/missing/{}/out-{index}.png", self.id)
        } else {
            format!("{base_url}/delivery/{}/out-{index}.png", self.id)
        }
    }

    /// The outputs of a succeeded job.
    pub fn final_output(&self, base_url: &str) -> Value {
        match self.kind {
            Kind::Training => json!({
                "version": format!("sim/trained-{}:{}", self.id, trained_version(&self.id)),
                "weights": format!("{base_url}/delivery/{}/weights.tar", self.id),
            }),
            Kind::Prediction if self.is_upscale() => json!(self.output_url(base_url, 0)),
            Kind::Prediction => Value::Array(
                (0..self.output_count())
                    .map(|index| json!(self.output_url(base_url, index)))
                    .collect(),
            ),
        }
    }

    /// The object as `GET /v1/{predictions|trainings}/{id}` returns it.
    pub fn to_json(&self, api_url: &str) -> Value {
        let get = format!("{api_url}/v1/{}/{}", self.kind.path(), self.id);
        let mut object = json!({
            "id": self.id,
            "model": self.model,
            "version": self.version,
            "input": self.input,
            "logs": self.logs,
            "output": self.output,
            "error": self.error,
            "status": self.status,
            "source": "api",
            "data_removed": false,
            "created_at": timestamp(&self.created_at),
            "started_at": self.started_at.as_ref().map(timestamp),
            "completed_at": self.completed_at.as_ref().map(timestamp),
            "urls": {"get": get, "cancel": format!("{get}/cancel"), "web": format!("https://replicate.com/p/{}", self.id)},
        });
        if let (Some(started), Some(completed)) = (self.started_at, self.completed_at) {
            let seconds = (completed - started).num_milliseconds() as f64 / 1000.0;
            object["metrics"] = json!({"predict_time": seconds, "total_time": seconds});
        }
        if let Some(webhook) = &self.webhook {
            object["webhook"] = json!(webhook);
            object["webhook_events_filter"] = json!(self.events);
        }
        object
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outputs_have_the_shapes_replicate_uses() {
        let upscale = SimJob::new(
            Kind::Prediction,
            CreateRequest {
                input: json!({"image": "https://x/in.png"}),
                ..Default::default()
            },
        );
        assert!(upscale.final_output("http://sim").is_string());
        let images = SimJob::new(
            Kind::Prediction,
            CreateRequest {
                input: json!({"prompt": "a corgi", "num_outputs": 2}),
                ..Default::default()
            },
        );
        assert_eq!(
            images.final_output("http://sim").as_array().unwrap().len(),
            2
        );
        let training = SimJob::new(Kind::Training, CreateRequest::default());
        let output = training.final_output("http://sim");
        assert!(output["version"].is_string() && output["weights"].is_string());
        let object = training.to_json("http://sim");
        assert_eq!(object["status"], "starting");
        assert_eq!(
            object["urls"]["get"],
            format!("http://sim/v1/trainings/{}", training.id)
        );
        assert_eq!(new_id().len(), 26);
    }
}
