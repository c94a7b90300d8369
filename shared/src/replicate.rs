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
    /// The webhook URL the job was created with (signed with the rest of the body): the
    /// jobs API's tag in it names the job's row.
    #[serde(default)]
    pub webhook: Option<String>,
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

/// The query parameter of a job's webhook URL that names the job's row: the jobs API tags
/// every job it creates, so the first webhook can bind Replicate's id to the row even when
/// Replicate's answer to the creation was lost (see `jobs::bind`).
pub const TAG_PARAMETER: &str = "job";

/// `webhook_url` with `row_id` added to its query string (Replicate keeps the URL as given,
/// query included, and posts every webhook of the job to it).
pub fn tagged_webhook_url(webhook_url: &str, row_id: &str) -> String {
    let separator = if webhook_url.contains('?') { '&' } else { '?' };
    let pair = form_urlencoded::Serializer::new(String::new())
        .append_pair(TAG_PARAMETER, row_id)
        .finish();
    format!("{webhook_url}{separator}{pair}")
}

/// The row id in a query string (`a=b&job=<row id>`), if it is a plausible one.
pub fn tag_of_query(query: &str) -> Option<String> {
    let tag = form_urlencoded::parse(query.as_bytes())
        .find(|(name, _)| name == TAG_PARAMETER)?
        .1
        .into_owned();
    valid_tag(&tag).then_some(tag)
}

/// The row id a tagged webhook URL names.
pub fn tag_of_url(webhook_url: &str) -> Option<String> {
    let (_, query) = webhook_url.split_once('?')?;
    tag_of_query(query.split('#').next().unwrap_or_default())
}

/// Row ids the jobs API makes: short; letters, digits, `_` and `-`.
pub fn valid_tag(tag: &str) -> bool {
    !tag.is_empty()
        && tag.len() <= 64
        && tag
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_tag_rides_on_the_webhook_url_and_comes_back() {
        let plain = tagged_webhook_url(
            "https://hooks.example.com/api/webhooks/replicate",
            "gen_abc123",
        );
        assert_eq!(
            plain,
            "https://hooks.example.com/api/webhooks/replicate?job=gen_abc123"
        );
        assert_eq!(tag_of_url(&plain).as_deref(), Some("gen_abc123"));
        let with_query = tagged_webhook_url("http://127.0.0.1:8080/hook?env=prod", "mdl_x");
        assert_eq!(with_query, "http://127.0.0.1:8080/hook?env=prod&job=mdl_x");
        assert_eq!(tag_of_url(&with_query).as_deref(), Some("mdl_x"));
    }

    #[test]
    fn only_plausible_row_ids_are_tags() {
        assert_eq!(tag_of_url("https://h/p"), None);
        assert_eq!(tag_of_url("https://h/p?job="), None);
        assert_eq!(tag_of_url("https://h/p?job=a%27%3Bdrop"), None);
        assert_eq!(tag_of_query(&format!("job={}", "a".repeat(65))), None);
        assert_eq!(tag_of_query("x=1&job=gen_1").as_deref(), Some("gen_1"));
        assert!(valid_tag("gen_0123456789abcdefghij"));
        assert!(!valid_tag("gen 1"));
    }

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
