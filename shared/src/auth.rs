//! Browser tokens: HS256 JWTs with `sub` (the user id) and a required `exp`, signed with
//! `NOTIFIER_JWT_SECRET` by the web app (or `notifier token` in development).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    pub sub: String,
    pub exp: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("missing token")]
    Missing,
    #[error("token expired")]
    Expired,
    #[error("invalid token: {0}")]
    Invalid(String),
}

/// The HS256 key of browser tokens: at least 32 bytes and not a known placeholder, since
/// anyone who guesses it can read every user's events. Never printed.
#[derive(Clone, PartialEq, Eq)]
pub struct JwtKey(String);

/// Shortest key accepted: HS256's own output size.
pub const MIN_KEY_BYTES: usize = 32;

/// Words of example and template values, not of a key generator.
const PLACEHOLDERS: [&str; 6] = [
    "replace_me",
    "replace-me",
    "replaceme",
    "changeme",
    "change-me",
    "change_me",
];

impl JwtKey {
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::str::FromStr for JwtKey {
    type Err = String;

    fn from_str(key: &str) -> Result<Self, Self::Err> {
        let lowered = key.trim().to_ascii_lowercase();
        if PLACEHOLDERS.iter().any(|p| lowered.contains(p)) {
            return Err(
                "is a placeholder from an example; generate a key (openssl rand -base64 32)".into(),
            );
        }
        if key.len() < MIN_KEY_BYTES {
            return Err(format!(
                "is {} bytes; at least {MIN_KEY_BYTES} are needed (openssl rand -base64 32)",
                key.len()
            ));
        }
        Ok(Self(key.to_owned()))
    }
}

impl std::fmt::Debug for JwtKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("<redacted>")
    }
}

/// The operator console's credential (`OPERATOR_TOKEN`): a secret of at least
/// [`MIN_KEY_BYTES`] bytes, checked like a key (no placeholder), compared in constant time.
/// It is not a JWT, so no user endpoint can take it for a user's token.
#[derive(Clone, PartialEq, Eq)]
pub struct OperatorToken(JwtKey);

impl OperatorToken {
    /// Whether `presented` is this token; the time taken does not depend on where they differ.
    pub fn matches(&self, presented: &str) -> bool {
        use subtle::ConstantTimeEq;
        self.0
            .expose()
            .as_bytes()
            .ct_eq(presented.as_bytes())
            .into()
    }

    pub fn expose(&self) -> &str {
        self.0.expose()
    }
}

impl std::str::FromStr for OperatorToken {
    type Err = String;

    fn from_str(token: &str) -> Result<Self, Self::Err> {
        token.parse().map(Self)
    }
}

impl std::fmt::Debug for OperatorToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("<redacted>")
    }
}

pub struct Auth {
    encoding: EncodingKey,
    decoding: DecodingKey,
    validation: Validation,
}

impl Auth {
    pub fn new(secret: &str) -> Self {
        let mut validation = Validation::new(Algorithm::HS256);
        validation.set_required_spec_claims(&["exp", "sub"]);
        validation.leeway = 0;
        Self {
            encoding: EncodingKey::from_secret(secret.as_bytes()),
            decoding: DecodingKey::from_secret(secret.as_bytes()),
            validation,
        }
    }

    /// A token for `user_id` valid for `ttl`.
    pub fn mint(&self, user_id: &str, ttl: Duration) -> String {
        let exp = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .saturating_add(ttl)
            .as_secs();
        let claims = Claims {
            sub: user_id.to_owned(),
            exp,
        };
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &self.encoding)
            .expect("HS256 signing cannot fail")
    }

    /// The user a token stands for.
    pub fn verify(&self, token: Option<&str>) -> Result<Claims, AuthError> {
        let token = token.filter(|t| !t.is_empty()).ok_or(AuthError::Missing)?;
        let data = jsonwebtoken::decode::<Claims>(token, &self.decoding, &self.validation)
            .map_err(|err| match err.kind() {
                jsonwebtoken::errors::ErrorKind::ExpiredSignature => AuthError::Expired,
                _ => AuthError::Invalid(err.to_string()),
            })?;
        if data.claims.sub.is_empty() {
            return Err(AuthError::Invalid("empty sub".into()));
        }
        Ok(data.claims)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn weak_keys_are_refused() {
        for weak in [
            "k",
            "short-key",
            "REPLACE_ME",
            "a-very-long-value-that-says-changeme-inside",
        ] {
            assert!(weak.parse::<JwtKey>().is_err(), "{weak} accepted");
        }
        let good = "q3RkJ0e1cWv0pQm6Tz9yB8xN2aL5sD7f";
        assert_eq!(good.parse::<JwtKey>().unwrap().expose(), good);
        assert_eq!(
            format!("{:?}", good.parse::<JwtKey>().unwrap()),
            "<redacted>"
        );
    }

    #[test]
    fn minted_tokens_verify() {
        let auth = Auth::new("secret");
        let token = auth.mint("u1", Duration::from_secs(60));
        assert_eq!(auth.verify(Some(&token)).unwrap().sub, "u1");
    }

    #[test]
    fn expired_forged_and_missing_tokens_are_refused() {
        let auth = Auth::new("secret");
        let past = Claims {
            sub: "u1".into(),
            exp: 1_000,
        };
        let expired = jsonwebtoken::encode(
            &Header::default(),
            &past,
            &EncodingKey::from_secret(b"secret"),
        )
        .unwrap();
        assert_eq!(auth.verify(Some(&expired)), Err(AuthError::Expired));
        let forged = Auth::new("other").mint("u1", Duration::from_secs(60));
        assert!(matches!(
            auth.verify(Some(&forged)),
            Err(AuthError::Invalid(_))
        ));
        assert_eq!(auth.verify(None), Err(AuthError::Missing));
        assert!(matches!(
            auth.verify(Some("not.a.jwt")),
            Err(AuthError::Invalid(_))
        ));
    }

    #[test]
    fn exp_is_required() {
        #[derive(Serialize)]
        struct NoExp {
            sub: String,
        }
        let token = jsonwebtoken::encode(
            &Header::default(),
            &NoExp { sub: "u1".into() },
            &EncodingKey::from_secret(b"secret"),
        )
        .unwrap();
        assert!(matches!(
            Auth::new("secret").verify(Some(&token)),
            Err(AuthError::Invalid(_))
        ));
    }
}
