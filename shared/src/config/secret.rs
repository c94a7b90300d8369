//! Secrets (signing keys, tokens): usable, never printed.

use std::fmt;
use std::str::FromStr;

/// A secret string (signing keys, tokens): usable, never printed.
#[derive(Clone, PartialEq, Eq)]
pub struct SecretString(String);

impl SecretString {
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl FromStr for SecretString {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.trim().is_empty() {
            return Err("must not be empty".into());
        }
        Ok(Self(s.to_owned()))
    }
}

impl fmt::Debug for SecretString {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

/// A secret that may be absent: unset and empty (as `${VAR:-}` in compose files gives) both
/// mean none. Never printed.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct OptionalSecret(Option<SecretString>);

impl OptionalSecret {
    pub fn get(&self) -> Option<&SecretString> {
        self.0.as_ref()
    }

    pub fn is_some(&self) -> bool {
        self.0.is_some()
    }
}

impl FromStr for OptionalSecret {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(Self(s.parse().ok()))
    }
}

impl From<Option<&str>> for OptionalSecret {
    fn from(value: Option<&str>) -> Self {
        Self(value.and_then(|v| v.parse().ok()))
    }
}

impl fmt::Debug for OptionalSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(if self.0.is_some() {
            "<redacted>"
        } else {
            "none"
        })
    }
}
