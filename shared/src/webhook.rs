//! Standard Webhooks verification, as Replicate signs its webhooks.
//!
//! Pure and I/O free: the caller hands over the three `webhook-*` header values, the raw
//! body bytes and the current time. The signed content is
//! `{webhook-id}.{webhook-timestamp}.{raw body}`, the signature header is a space-separated
//! list of `version,base64` entries of which any `v1` entry may match, and any of several
//! configured secrets may have produced it (secret rotation).

use std::fmt;
use std::str::FromStr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine;
use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
use hmac::{Hmac, Mac};
use sha2::Sha256;
use subtle::ConstantTimeEq;

/// Header names, exactly as Standard Webhooks spells them.
pub const HEADER_ID: &str = "webhook-id";
pub const HEADER_TIMESTAMP: &str = "webhook-timestamp";
pub const HEADER_SIGNATURE: &str = "webhook-signature";

const SECRET_PREFIX: &str = "whsec_";

/// Standard base64 that accepts input with or without `=` padding.
const BASE64_ANY_PADDING: GeneralPurpose = GeneralPurpose::new(
    &base64::alphabet::STANDARD,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// The longest `webhook-id` accepted (it is carried as the AMQP message id, at most 255
/// bytes; Replicate's ids are about 30).
pub const MAX_ID_BYTES: usize = 255;

/// Why a webhook was not accepted. Each variant names the check that failed, so the
/// response and the log line can say exactly that.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VerifyError {
    #[error("missing {0} header")]
    MissingHeader(&'static str),
    #[error("webhook-timestamp is not an integer number of seconds")]
    InvalidTimestamp,
    #[error("webhook-id is {0} bytes long; at most 255 are accepted")]
    IdTooLong(usize),
    #[error("webhook-timestamp is {0} s older than allowed")]
    TimestampTooOld(u64),
    #[error("webhook-timestamp is {0} s in the future, beyond the allowed tolerance")]
    TimestampTooNew(u64),
    #[error("webhook-signature has no v1 entry")]
    NoV1Signature,
    #[error("no signature matches")]
    NoMatchingSignature,
}

impl VerifyError {
    /// True when the request is malformed (HTTP 400) rather than unauthenticated (401).
    pub fn is_malformed(&self) -> bool {
        matches!(
            self,
            Self::MissingHeader(_) | Self::InvalidTimestamp | Self::IdTooLong(_)
        )
    }
}

/// Why a configured secret could not be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SecretError {
    #[error("no webhook secret given")]
    Empty,
    #[error("webhook secret is not valid base64 (expected whsec_<base64>)")]
    NotBase64,
}

/// One signing key: the decoded bytes of `whsec_<base64>`. Never printed.
#[derive(Clone, PartialEq, Eq)]
pub struct WebhookSecret(Vec<u8>);

impl WebhookSecret {
    pub fn from_bytes(key: impl Into<Vec<u8>>) -> Self {
        Self(key.into())
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    /// The `whsec_<base64>` form, as Replicate hands it out.
    pub fn to_whsec(&self) -> String {
        format!(
            "{SECRET_PREFIX}{}",
            base64::engine::general_purpose::STANDARD.encode(&self.0)
        )
    }

    /// Signs `{id}.{timestamp}.{body}` and returns the `v1,<base64>` header entry.
    pub fn sign(&self, id: &str, timestamp: i64, body: &[u8]) -> String {
        format!(
            "v1,{}",
            base64::engine::general_purpose::STANDARD.encode(self.tag(id, timestamp, body))
        )
    }

    fn tag(&self, id: &str, timestamp: i64, body: &[u8]) -> [u8; 32] {
        // HMAC accepts keys of any length, so this cannot fail.
        let mut mac = Hmac::<Sha256>::new_from_slice(&self.0).expect("HMAC takes any key length");
        mac.update(id.as_bytes());
        mac.update(b".");
        mac.update(timestamp.to_string().as_bytes());
        mac.update(b".");
        mac.update(body);
        mac.finalize().into_bytes().into()
    }
}

impl FromStr for WebhookSecret {
    type Err = SecretError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let encoded = s.trim();
        let encoded = encoded.strip_prefix(SECRET_PREFIX).unwrap_or(encoded);
        if encoded.is_empty() {
            return Err(SecretError::Empty);
        }
        let key = BASE64_ANY_PADDING
            .decode(encoded)
            .map_err(|_| SecretError::NotBase64)?;
        if key.is_empty() {
            return Err(SecretError::Empty);
        }
        Ok(Self(key))
    }
}

impl fmt::Debug for WebhookSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("WebhookSecret(<redacted>)")
    }
}

/// All secrets currently accepted: during a rotation both the old and the new one.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WebhookSecrets(Vec<WebhookSecret>);

impl WebhookSecrets {
    pub fn new(secrets: Vec<WebhookSecret>) -> Result<Self, SecretError> {
        if secrets.is_empty() {
            return Err(SecretError::Empty);
        }
        Ok(Self(secrets))
    }

    /// The first configured secret: the one used when this side signs.
    pub fn primary(&self) -> &WebhookSecret {
        &self.0[0]
    }

    pub fn iter(&self) -> impl Iterator<Item = &WebhookSecret> {
        self.0.iter()
    }
}

impl FromStr for WebhookSecrets {
    type Err = SecretError;

    /// Several secrets separated by spaces or commas.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let secrets = s
            .split([' ', ',', '\t', '\n'])
            .filter(|part| !part.is_empty())
            .map(WebhookSecret::from_str)
            .collect::<Result<Vec<_>, _>>()?;
        Self::new(secrets)
    }
}

/// The three `webhook-*` header values of one request, as received.
#[derive(Debug, Clone, Copy)]
pub struct SignedHeaders<'a> {
    pub id: &'a str,
    pub timestamp: &'a str,
    pub signature: &'a str,
}

impl<'a> SignedHeaders<'a> {
    /// Reads the headers through `lookup` (header name → value), so any HTTP library fits.
    pub fn from_lookup(
        lookup: impl Fn(&'static str) -> Option<&'a str>,
    ) -> Result<Self, VerifyError> {
        let get = |name| lookup(name).ok_or(VerifyError::MissingHeader(name));
        let id = get(HEADER_ID)?;
        // The id becomes the AMQP message id, a short string: refused up front, cheaply.
        if id.len() > MAX_ID_BYTES {
            return Err(VerifyError::IdTooLong(id.len()));
        }
        Ok(Self {
            id,
            timestamp: get(HEADER_TIMESTAMP)?,
            signature: get(HEADER_SIGNATURE)?,
        })
    }

    /// The timestamp as unix seconds; anything but an integer is malformed.
    pub fn timestamp_secs(&self) -> Result<i64, VerifyError> {
        self.timestamp
            .trim()
            .parse()
            .map_err(|_| VerifyError::InvalidTimestamp)
    }
}

/// Checks signatures against a set of secrets with a timestamp tolerance.
#[derive(Debug, Clone)]
pub struct Verifier {
    secrets: WebhookSecrets,
    tolerance: Duration,
}

impl Verifier {
    pub fn new(secrets: WebhookSecrets, tolerance: Duration) -> Self {
        Self { secrets, tolerance }
    }

    /// The checks that need no body (the timestamp within the tolerance), so a request
    /// that will fail is refused before its body is read.
    pub fn precheck(&self, headers: &SignedHeaders<'_>) -> Result<(), VerifyError> {
        self.check_tolerance(headers.timestamp_secs()?, SystemTime::now())
    }

    /// Verifies one webhook against the current time.
    pub fn verify(&self, headers: &SignedHeaders<'_>, body: &[u8]) -> Result<(), VerifyError> {
        self.verify_at(headers, body, SystemTime::now())
    }

    /// Verifies one webhook as if the clock showed `now` (for tests and replays).
    pub fn verify_at(
        &self,
        headers: &SignedHeaders<'_>,
        body: &[u8],
        now: SystemTime,
    ) -> Result<(), VerifyError> {
        let timestamp = headers.timestamp_secs()?;
        self.check_tolerance(timestamp, now)?;

        let v1_entries: Vec<&str> = headers
            .signature
            .split(' ')
            .filter_map(|entry| entry.strip_prefix("v1,"))
            .collect();
        if v1_entries.is_empty() {
            return Err(VerifyError::NoV1Signature);
        }
        // An entry that is not even base64 cannot match; it must not hide the others.
        let candidates: Vec<Vec<u8>> = v1_entries
            .iter()
            .filter_map(|b64| BASE64_ANY_PADDING.decode(b64).ok())
            .collect();

        let mut matched = subtle::Choice::from(0u8);
        for secret in self.secrets.iter() {
            let expected = secret.tag(headers.id, timestamp, body);
            for candidate in &candidates {
                // Length is public (always 32 for a real tag); the bytes are compared in
                // constant time, and every candidate is checked whatever matched before.
                matched |= expected.as_slice().ct_eq(candidate.as_slice());
            }
        }
        if bool::from(matched) {
            Ok(())
        } else {
            Err(VerifyError::NoMatchingSignature)
        }
    }

    fn check_tolerance(&self, timestamp: i64, now: SystemTime) -> Result<(), VerifyError> {
        let now = match now.duration_since(UNIX_EPOCH) {
            Ok(since_epoch) => since_epoch.as_secs() as i64,
            Err(_) => 0,
        };
        let tolerance = self.tolerance.as_secs() as i64;
        let age = now.saturating_sub(timestamp);
        if age > tolerance {
            return Err(VerifyError::TimestampTooOld((age - tolerance) as u64));
        }
        if -age > tolerance {
            return Err(VerifyError::TimestampTooNew((-age - tolerance) as u64));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // The public Standard Webhooks vector Replicate's own clients test against.
    const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
    const ID: &str = "msg_p5jXN8AQM9LWM0D4loKWxJek";
    const TIMESTAMP: i64 = 1614265330;
    const BODY: &[u8] = br#"{"test": 2432232314}"#;
    const SIGNATURE: &str = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=";

    fn verifier(secrets: &str) -> Verifier {
        Verifier::new(secrets.parse().unwrap(), Duration::from_secs(300))
    }

    fn at(secs: i64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(secs as u64)
    }

    fn headers(signature: &str) -> SignedHeaders<'_> {
        SignedHeaders {
            id: ID,
            timestamp: "1614265330",
            signature,
        }
    }

    fn check(secrets: &str, signature: &str) -> Result<(), VerifyError> {
        verifier(secrets).verify_at(&headers(signature), BODY, at(TIMESTAMP))
    }

    #[test]
    fn public_vector_verifies() {
        assert_eq!(check(SECRET, SIGNATURE), Ok(()));
    }

    #[test]
    fn signing_reproduces_the_public_vector() {
        let secret: WebhookSecret = SECRET.parse().unwrap();
        assert_eq!(secret.sign(ID, TIMESTAMP, BODY), SIGNATURE);
        assert_eq!(secret.to_whsec(), SECRET);
    }

    #[test]
    fn invalid_signature_is_rejected() {
        assert_eq!(
            check(SECRET, "v1,invalid_signature"),
            Err(VerifyError::NoMatchingSignature)
        );
    }

    #[test]
    fn one_changed_character_is_rejected() {
        assert_eq!(
            check(SECRET, "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OA="),
            Err(VerifyError::NoMatchingSignature)
        );
    }

    #[test]
    fn changed_body_id_or_timestamp_is_rejected() {
        let v = verifier(SECRET);
        let now = at(TIMESTAMP);
        assert!(
            v.verify_at(&headers(SIGNATURE), b"{\"test\": 2432232315}", now)
                .is_err()
        );
        let other_id = SignedHeaders {
            id: "msg_other",
            ..headers(SIGNATURE)
        };
        assert!(v.verify_at(&other_id, BODY, now).is_err());
        let other_ts = SignedHeaders {
            timestamp: "1614265331",
            ..headers(SIGNATURE)
        };
        assert_eq!(
            v.verify_at(&other_ts, BODY, now),
            Err(VerifyError::NoMatchingSignature)
        );
    }

    #[test]
    fn any_matching_v1_entry_passes_and_other_versions_are_ignored() {
        let list = format!(
            "v1,bm9ldHUjKzFob2VudXRob2VodWUzMjRvdWVvdW9ldQo= {SIGNATURE} v2,MzJsNDk4MzI0K2VvdSMjMTEjQEBAQDEyMzMzMzEyMwo="
        );
        assert_eq!(check(SECRET, &list), Ok(()));
        // The right bytes under a version other than v1 do not count.
        let v2_only = SIGNATURE.replacen("v1,", "v2,", 1);
        assert_eq!(check(SECRET, &v2_only), Err(VerifyError::NoV1Signature));
        assert_eq!(check(SECRET, ""), Err(VerifyError::NoV1Signature));
        // A v1 entry that is not even base64 does not hide a valid one after it.
        assert_eq!(check(SECRET, &format!("v1,%%% {SIGNATURE}")), Ok(()));
    }

    #[test]
    fn rotation_accepts_any_configured_secret() {
        let other = WebhookSecret::from_bytes(vec![7u8; 32]).to_whsec();
        assert_eq!(check(&format!("{other} {SECRET}"), SIGNATURE), Ok(()));
        assert_eq!(check(&format!("{other},{SECRET}"), SIGNATURE), Ok(()));
        assert_eq!(
            check(&other, SIGNATURE),
            Err(VerifyError::NoMatchingSignature)
        );
    }

    #[test]
    fn secret_prefix_and_padding_are_optional() {
        // Without `whsec_`.
        assert_eq!(check("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw", SIGNATURE), Ok(()));
        // A key whose base64 needs padding, given padded and unpadded.
        let key = WebhookSecret::from_bytes(b"twenty-five bytes of key!".to_vec());
        let padded = key.to_whsec();
        assert!(padded.ends_with('='));
        let unpadded = padded.trim_end_matches('=');
        let signature = key.sign(ID, TIMESTAMP, BODY);
        assert_eq!(check(&padded, &signature), Ok(()));
        assert_eq!(check(unpadded, &signature), Ok(()));
        // And the signature itself may come unpadded.
        assert_eq!(check(&padded, signature.trim_end_matches('=')), Ok(()));
    }

    #[test]
    fn bad_secrets_are_refused() {
        assert_eq!("".parse::<WebhookSecrets>(), Err(SecretError::Empty));
        assert_eq!("whsec_".parse::<WebhookSecrets>(), Err(SecretError::Empty));
        assert_eq!(
            "whsec_not base64!".parse::<WebhookSecrets>(),
            Err(SecretError::NotBase64)
        );
    }

    #[test]
    fn secrets_are_never_printed() {
        let secrets: WebhookSecrets = SECRET.parse().unwrap();
        let printed = format!("{secrets:?}");
        assert!(!printed.contains("MfKQ9r8"), "{printed}");
        assert!(printed.contains("redacted"));
    }

    #[test]
    fn tolerance_edges_both_ways() {
        let v = verifier(SECRET);
        let h = headers(SIGNATURE);
        assert_eq!(v.verify_at(&h, BODY, at(TIMESTAMP + 300)), Ok(()));
        assert_eq!(
            v.verify_at(&h, BODY, at(TIMESTAMP + 301)),
            Err(VerifyError::TimestampTooOld(1))
        );
        assert_eq!(v.verify_at(&h, BODY, at(TIMESTAMP - 300)), Ok(()));
        assert_eq!(
            v.verify_at(&h, BODY, at(TIMESTAMP - 301)),
            Err(VerifyError::TimestampTooNew(1))
        );
    }

    #[test]
    fn timestamp_is_checked_before_the_signature() {
        // An old webhook with a valid signature is a replay: refused for its age.
        let v = verifier(SECRET);
        assert!(matches!(
            v.verify(&headers(SIGNATURE), BODY),
            Err(VerifyError::TimestampTooOld(_))
        ));
    }

    #[test]
    fn malformed_headers_are_told_apart() {
        let v = verifier(SECRET);
        let h = SignedHeaders {
            timestamp: "12.5",
            ..headers(SIGNATURE)
        };
        let err = v.verify_at(&h, BODY, at(TIMESTAMP)).unwrap_err();
        assert_eq!(err, VerifyError::InvalidTimestamp);
        assert!(err.is_malformed());
        let missing = SignedHeaders::from_lookup(|name| (name != HEADER_SIGNATURE).then_some("x"));
        assert_eq!(
            missing.unwrap_err(),
            VerifyError::MissingHeader(HEADER_SIGNATURE)
        );
        assert!(!VerifyError::NoMatchingSignature.is_malformed());
    }
}
