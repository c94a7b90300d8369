//! Replicate's prediction and training objects, as far as the pipeline reads them.
//!
//! Unknown fields are ignored and unknown statuses are kept as [`Status::Unknown`]: Replicate
//! may add either at any time, and a webhook must never be lost because of it.

use std::borrow::Cow;
use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A prediction's or training's status.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Status {
    Starting,
    Processing,
    Succeeded,
    Failed,
    Canceled,
    Aborted,
    /// A status this version does not know, kept verbatim.
    Unknown(String),
}

impl Status {
    pub fn as_str(&self) -> &str {
        match self {
            Self::Starting => "starting",
            Self::Processing => "processing",
            Self::Succeeded => "succeeded",
            Self::Failed => "failed",
            Self::Canceled => "canceled",
            Self::Aborted => "aborted",
            Self::Unknown(other) => other,
        }
    }

    /// `succeeded`, `failed`, `canceled` and `aborted` are final.
    pub fn is_terminal(&self) -> bool {
        matches!(
            self,
            Self::Succeeded | Self::Failed | Self::Canceled | Self::Aborted
        )
    }
}

impl From<&str> for Status {
    fn from(s: &str) -> Self {
        match s {
            "starting" => Self::Starting,
            "processing" => Self::Processing,
            "succeeded" => Self::Succeeded,
            "failed" => Self::Failed,
            "canceled" => Self::Canceled,
            "aborted" => Self::Aborted,
            other => Self::Unknown(other.to_owned()),
        }
    }
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for Status {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let s = Cow::<'de, str>::deserialize(deserializer)?;
        Ok(Self::from(s.as_ref()))
    }
}

impl Serialize for Status {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

/// A webhook body: the prediction (or training) object.
#[derive(Debug, Clone, Deserialize)]
pub struct Prediction {
    pub id: String,
    pub status: Status,
    /// A list of URLs, a single URL, `{"version","weights"}` for trainings, or null.
    #[serde(default)]
    pub output: Option<serde_json::Value>,
    #[serde(default)]
    pub logs: Option<String>,
    /// Usually a string; kept as JSON because models may return anything.
    #[serde(default)]
    pub error: Option<serde_json::Value>,
    /// Replicate deleted the outputs (an hour after an API prediction completed).
    #[serde(default)]
    pub data_removed: bool,
}

/// The two fields every webhook must carry, read without copying the rest.
#[derive(Debug, Clone, Deserialize)]
pub struct JobRef<'a> {
    #[serde(borrow)]
    pub id: Cow<'a, str>,
    pub status: Status,
}

/// Why a body is not a usable webhook payload.
#[derive(Debug, thiserror::Error)]
pub enum PayloadError {
    #[error("body is not a JSON object")]
    NotAnObject,
    #[error("body is not UTF-8, so not JSON")]
    NotUtf8,
    #[error("body is not a JSON object with string id and status: {0}")]
    Invalid(#[from] serde_json::Error),
}

impl<'a> JobRef<'a> {
    /// Checks that `body` is a JSON object with string `id` and `status`, and reads them.
    pub fn parse(body: &'a [u8]) -> Result<Self, PayloadError> {
        // serde would also read a struct from a JSON array; only an object is a webhook.
        let first = body.iter().find(|b| !b.is_ascii_whitespace());
        if first != Some(&b'{') {
            return Err(PayloadError::NotAnObject);
        }
        // serde skips the fields it ignores without checking their bytes: invalid UTF-8
        // there would pass here and fail every consumer after us (found by fuzzing).
        let text = std::str::from_utf8(body).map_err(|_| PayloadError::NotUtf8)?;
        Ok(serde_json::from_str(text)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn invalid_utf8_anywhere_is_refused() {
        let body = b"{\"id\":\"p1\",\"status\":\"succeeded\",\"logs\":\"caf\xff\"}";
        assert!(matches!(JobRef::parse(body), Err(PayloadError::NotUtf8)));
    }

    #[test]
    fn unknown_status_and_fields_are_accepted() {
        let job =
            JobRef::parse(br#"{"id":"p1","status":"paused","new_field":{"a":[1,2]}}"#).unwrap();
        assert_eq!(job.id, "p1");
        assert_eq!(job.status, Status::Unknown("paused".into()));
        assert_eq!(job.status.to_string(), "paused");
    }

    #[test]
    fn known_statuses_round_trip() {
        for name in [
            "starting",
            "processing",
            "succeeded",
            "failed",
            "canceled",
            "aborted",
        ] {
            let status = Status::from(name);
            assert!(!matches!(status, Status::Unknown(_)), "{name}");
            assert_eq!(status.as_str(), name);
        }
        assert!(Status::Aborted.is_terminal());
        assert!(!Status::Processing.is_terminal());
    }

    #[test]
    fn non_objects_and_wrong_types_are_refused() {
        assert!(matches!(
            JobRef::parse(br#"["p1","succeeded"]"#),
            Err(PayloadError::NotAnObject)
        ));
        assert!(JobRef::parse(b"not json").is_err());
        assert!(JobRef::parse(br#"{"id":1,"status":"succeeded"}"#).is_err());
        assert!(JobRef::parse(br#"{"id":"p1"}"#).is_err());
        assert!(JobRef::parse(br#"{"id":"p1","status":null}"#).is_err());
    }

    #[test]
    fn prediction_reads_outputs_of_any_shape() {
        let p: Prediction = serde_json::from_str(
            r#"{"id":"p","status":"succeeded","output":"https://replicate.delivery/x.png","extra":1}"#,
        )
        .unwrap();
        assert_eq!(
            p.output.unwrap().as_str(),
            Some("https://replicate.delivery/x.png")
        );
        let p: Prediction = serde_json::from_str(r#"{"id":"p","status":"canceled"}"#).unwrap();
        assert!(p.output.is_none() && p.logs.is_none());
    }
}
