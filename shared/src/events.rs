//! The messages browsers receive (the contract's "Browser WebSocket"). The same JSON object
//! is the body of each message on the `jobs.events` exchange, so other consumers (emails,
//! analytics) read exactly what the gallery reads.

use serde::{Deserialize, Serialize};

/// What kind of job an event is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum JobKind {
    Generation,
    Upscale,
    Training,
}

impl JobKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Generation => "generation",
            Self::Upscale => "upscale",
            Self::Training => "training",
        }
    }
}

impl std::fmt::Display for JobKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A generation's or upscale's state after a change.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GenerationJob {
    pub kind: JobKind,
    /// `generations.id`
    pub id: String,
    /// Replicate's prediction id; `null` until Replicate has answered (and for good when it
    /// refused the job).
    pub job_id: Option<String>,
    pub status: String,
    pub image_urls: Vec<String>,
    pub error: Option<String>,
    /// What the user asked for; an upscale's starts with `[UPSCALED]`.
    #[serde(default)]
    pub prompt: String,
    /// Credits the job cost.
    #[serde(default)]
    pub credits_used: i32,
    /// When the job was created (RFC 3339).
    #[serde(default)]
    pub created_at: Option<String>,
    /// A small rendition of each image, in the order of `image_urls` (a compatible
    /// extension; absent when there is none).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub thumb_urls: Vec<String>,
    /// The trained model it runs on; absent for the default model.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<ModelName>,
    /// The generation an upscale enlarges.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_id: Option<String>,
}

/// A trained model as a generation names it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModelName {
    /// `ai_models.id`
    pub id: String,
    pub name: String,
}

/// A training's state after a change.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainingJob {
    pub kind: JobKind,
    /// `ai_models.id`
    pub id: String,
    /// Replicate's training id; `null` until Replicate has answered.
    pub job_id: Option<String>,
    pub status: String,
    pub model_version: Option<String>,
    pub weights_url: Option<String>,
    pub error: Option<String>,
    /// The model's name as the user gave it.
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub credits_used: i32,
    #[serde(default)]
    pub created_at: Option<String>,
}

/// Any job's state: the `job` object of status events and of the jobs API.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum JobState {
    Generation(GenerationJob),
    Training(TrainingJob),
}

impl JobState {
    pub fn id(&self) -> &str {
        match self {
            Self::Generation(job) => &job.id,
            Self::Training(job) => &job.id,
        }
    }

    pub fn status(&self) -> &str {
        match self {
            Self::Generation(job) => &job.status,
            Self::Training(job) => &job.status,
        }
    }

    /// Replicate's id, once the job has one.
    pub fn job_id(&self) -> Option<&str> {
        match self {
            Self::Generation(job) => job.job_id.as_deref(),
            Self::Training(job) => job.job_id.as_deref(),
        }
    }

    pub fn credits_used(&self) -> i32 {
        match self {
            Self::Generation(job) => job.credits_used,
            Self::Training(job) => job.credits_used,
        }
    }
}

/// A running job's progress, from 0.0 to 1.0.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobProgress {
    pub kind: JobKind,
    pub id: String,
    pub job_id: String,
    pub progress: f64,
}

/// Every message a browser can receive.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Event {
    /// First message on every connection.
    Hello {
        user_id: String,
        /// The user's latest `seq`.
        seq: i64,
        polling_disabled: bool,
        webhook_enabled: bool,
    },
    GenerationStatusChanged {
        seq: i64,
        user_id: String,
        /// The user's balance after the change.
        credits: i32,
        /// Credits given back by this change (0 when none).
        #[serde(default)]
        refunded: i32,
        job: GenerationJob,
    },
    ModelStatusChanged {
        seq: i64,
        user_id: String,
        credits: i32,
        #[serde(default)]
        refunded: i32,
        job: TrainingJob,
    },
    /// Live only: no `seq`, never stored, never replayed.
    JobProgress { user_id: String, job: JobProgress },
}

impl Event {
    pub fn hello(user_id: &str, seq: i64) -> Self {
        Self::Hello {
            user_id: user_id.to_owned(),
            seq,
            polling_disabled: true,
            webhook_enabled: true,
        }
    }

    /// The status event of `job` (the variant follows the job's kind).
    pub fn status_changed(
        seq: i64,
        user_id: &str,
        credits: i32,
        refunded: i32,
        job: JobState,
    ) -> Self {
        let user_id = user_id.to_owned();
        match job {
            JobState::Generation(job) => Self::GenerationStatusChanged {
                seq,
                user_id,
                credits,
                refunded,
                job,
            },
            JobState::Training(job) => Self::ModelStatusChanged {
                seq,
                user_id,
                credits,
                refunded,
                job,
            },
        }
    }

    /// The job a status event is about.
    pub fn job(&self) -> Option<JobState> {
        match self {
            Self::GenerationStatusChanged { job, .. } => Some(JobState::Generation(job.clone())),
            Self::ModelStatusChanged { job, .. } => Some(JobState::Training(job.clone())),
            Self::Hello { .. } | Self::JobProgress { .. } => None,
        }
    }

    /// The per-user sequence number of a stored event; `None` for hello and progress.
    pub fn seq(&self) -> Option<i64> {
        match self {
            Self::GenerationStatusChanged { seq, .. } | Self::ModelStatusChanged { seq, .. } => {
                Some(*seq)
            }
            Self::Hello { .. } | Self::JobProgress { .. } => None,
        }
    }

    pub fn user_id(&self) -> &str {
        match self {
            Self::Hello { user_id, .. }
            | Self::GenerationStatusChanged { user_id, .. }
            | Self::ModelStatusChanged { user_id, .. }
            | Self::JobProgress { user_id, .. } => user_id,
        }
    }

    /// The routing key on the `jobs.events` exchange.
    pub fn routing_key(&self) -> String {
        routing_key(self.user_id())
    }
}

/// The longest AMQP short string (routing keys, message ids): 255 bytes.
pub const MAX_SHORT_STRING: usize = 255;

/// `user.<id>` (the contract): the routing key of one user's events. An id that cannot be
/// one — too long for AMQP, or holding `*` or `#`, which a binding would read as
/// wildcards — is replaced by its SHA-256 (`user.sha256-<hex>`); publishers and the
/// notifier's bindings both use this function, so they always agree.
pub fn routing_key(user_id: &str) -> String {
    let plain = format!("user.{user_id}");
    if plain.len() <= MAX_SHORT_STRING && !user_id.is_empty() && !user_id.contains(['*', '#']) {
        plain
    } else {
        format!("user.sha256-{}", sha256_hex(user_id))
    }
}

/// `text` itself when it fits an AMQP short string, else a digest of it that does.
pub fn short_string(text: &str) -> String {
    if text.len() <= MAX_SHORT_STRING {
        text.to_owned()
    } else {
        format!("sha256-{}", sha256_hex(text))
    }
}

fn sha256_hex(text: &str) -> String {
    use sha2::{Digest, Sha256};
    Sha256::digest(text.as_bytes())
        .iter()
        .map(|byte| format!("{byte:02x}"))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn status_change_matches_the_contract() {
        let event = Event::GenerationStatusChanged {
            seq: 7,
            user_id: "u1".into(),
            credits: 120,
            refunded: 0,
            job: GenerationJob {
                kind: JobKind::Generation,
                id: "g1".into(),
                job_id: Some("r1".into()),
                status: "COMPLETED".into(),
                image_urls: vec!["http://localhost:8081/media/a.png".into()],
                error: None,
                prompt: "a corgi".into(),
                credits_used: 4,
                created_at: Some("2026-11-29T10:00:00.000Z".into()),
                thumb_urls: Vec::new(),
                model: None,
                source_id: None,
            },
        };
        assert_eq!(
            serde_json::to_value(&event).unwrap(),
            json!({"type":"generation_status_changed","seq":7,"user_id":"u1","credits":120,"refunded":0,
                   "job":{"kind":"generation","id":"g1","job_id":"r1","status":"COMPLETED",
                          "image_urls":["http://localhost:8081/media/a.png"],"error":null,
                          "prompt":"a corgi","credits_used":4,"created_at":"2026-11-29T10:00:00.000Z"}})
        );
        // Events stored before `refunded` and the job's details existed still read.
        let old: Event = serde_json::from_value(json!({"type":"generation_status_changed","seq":1,"user_id":"u1","credits":3,
            "job":{"kind":"upscale","id":"g1","job_id":"r1","status":"FAILED","image_urls":[],"error":"boom"}})).unwrap();
        assert!(matches!(
            old,
            Event::GenerationStatusChanged { refunded: 0, .. }
        ));
        assert_eq!(event.seq(), Some(7));
        assert_eq!(event.routing_key(), "user.u1");
    }

    #[test]
    fn any_user_id_makes_a_valid_routing_key() {
        let long = "u".repeat(300);
        for id in [long.as_str(), "a*b", "*", "#", "", "é".repeat(200).as_str()] {
            let key = routing_key(id);
            assert!(key.len() <= MAX_SHORT_STRING, "{id}");
            assert!(key.starts_with("user.sha256-"), "{id}: {key}");
            assert_eq!(key.matches('.').count(), 1, "one word after user.");
        }
        assert_ne!(routing_key("a#b"), routing_key("a*b"));
        assert_eq!(
            routing_key("ada.lovelace@example.com"),
            "user.ada.lovelace@example.com"
        );
        assert_eq!(routing_key("u-1_x"), "user.u-1_x");
        assert_eq!(short_string("abc"), "abc");
        assert!(short_string(&long).len() <= MAX_SHORT_STRING);
    }

    #[test]
    fn training_hello_and_progress_match_the_contract() {
        let training = Event::ModelStatusChanged {
            seq: 8,
            user_id: "u1".into(),
            credits: 120,
            refunded: 40,
            job: TrainingJob {
                kind: JobKind::Training,
                id: "m1".into(),
                job_id: Some("t1".into()),
                status: "FAILED".into(),
                model_version: None,
                weights_url: None,
                error: Some("out of memory".into()),
                name: "portraits".into(),
                credits_used: 40,
                created_at: None,
            },
        };
        assert_eq!(
            serde_json::to_value(&training).unwrap(),
            json!({"type":"model_status_changed","seq":8,"user_id":"u1","credits":120,"refunded":40,
                   "job":{"kind":"training","id":"m1","job_id":"t1","status":"FAILED",
                          "model_version":null,"weights_url":null,"error":"out of memory",
                          "name":"portraits","credits_used":40,"created_at":null}})
        );
        let job = training.job().unwrap();
        assert_eq!((job.id(), job.status()), ("m1", "FAILED"));
        assert_eq!(
            Event::status_changed(8, "u1", 120, 40, job),
            training,
            "the variant follows the job"
        );
        assert_eq!(
            serde_json::to_value(Event::hello("u1", 3)).unwrap(),
            json!({"type":"hello","user_id":"u1","seq":3,"polling_disabled":true,"webhook_enabled":true})
        );
        let progress = Event::JobProgress {
            user_id: "u1".into(),
            job: JobProgress {
                kind: JobKind::Upscale,
                id: "g2".into(),
                job_id: "r2".into(),
                progress: 0.42,
            },
        };
        assert_eq!(
            serde_json::to_value(&progress).unwrap(),
            json!({"type":"job_progress","user_id":"u1",
                   "job":{"kind":"upscale","id":"g2","job_id":"r2","progress":0.42}})
        );
        assert_eq!(progress.seq(), None);
    }
}
