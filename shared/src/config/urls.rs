//! The broker's and the database's URLs, validated, with their passwords never printed.

use std::fmt;
use std::str::FromStr;

/// A RabbitMQ URL. Its password is never printed.
#[derive(Clone, PartialEq, Eq)]
pub struct AmqpUrl(String);

impl AmqpUrl {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for AmqpUrl {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        lapin::uri::AMQPUri::from_str(s).map_err(|err| format!("not an AMQP URL: {err}"))?;
        Ok(Self(s.to_owned()))
    }
}

/// `AMQP_URL`: one broker node, or several nodes of one cluster separated by spaces or
/// commas. A service connects to the first that answers and, when it loses it, fails over
/// to the next.
#[derive(Clone, PartialEq, Eq)]
pub struct AmqpNodes(Vec<AmqpUrl>);

impl AmqpNodes {
    pub fn nodes(&self) -> &[AmqpUrl] {
        &self.0
    }

    /// The first node: for tools and tests that need one connection.
    pub fn first(&self) -> &AmqpUrl {
        &self.0[0]
    }

    /// The first node's URL.
    pub fn as_str(&self) -> &str {
        self.first().as_str()
    }
}

impl FromStr for AmqpNodes {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let nodes = s
            .split(|c: char| c == ',' || c.is_whitespace())
            .filter(|node| !node.is_empty())
            .enumerate()
            .map(|(index, node)| {
                node.parse::<AmqpUrl>()
                    .map_err(|err| format!("node {}: {err}", index + 1))
            })
            .collect::<Result<Vec<_>, _>>()?;
        if nodes.is_empty() {
            return Err("no AMQP URL given".into());
        }
        Ok(Self(nodes))
    }
}

impl fmt::Debug for AmqpNodes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl fmt::Display for AmqpNodes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let shown: Vec<String> = self.0.iter().map(ToString::to_string).collect();
        f.write_str(&shown.join(", "))
    }
}

/// `Debug` and `Display` of a URL type print it with the password replaced.
macro_rules! redacted_url_formatting {
    ($url:ty) => {
        impl fmt::Debug for $url {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&redact_password(&self.0))
            }
        }

        impl fmt::Display for $url {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&redact_password(&self.0))
            }
        }
    };
}

redacted_url_formatting!(AmqpUrl);

/// `scheme://user:secret@host/…?password=secret` → `scheme://user:<redacted>@host/…?password=<redacted>`
fn redact_password(url: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((base, query)) => (base, Some(query)),
        None => (url, None),
    };
    let base = match base.split_once("://") {
        Some((scheme, rest)) => {
            let authority_end = rest.find('/').unwrap_or(rest.len());
            match rest[..authority_end].rfind('@') {
                Some(at) if rest[..at].contains(':') => {
                    let user = rest[..at].split(':').next().unwrap_or_default();
                    format!("{scheme}://{user}:<redacted>{}", &rest[at..])
                }
                _ => base.to_owned(),
            }
        }
        None => base.to_owned(),
    };
    match query {
        None => base,
        Some(query) => {
            let query: Vec<String> = query
                .split('&')
                .map(|pair| match pair.split_once('=') {
                    Some((key, _)) if key.eq_ignore_ascii_case("password") => {
                        format!("{key}=<redacted>")
                    }
                    _ => pair.to_owned(),
                })
                .collect();
            format!("{base}?{}", query.join("&"))
        }
    }
}

/// A PostgreSQL URL. Its password is never printed.
#[derive(Clone, PartialEq, Eq)]
pub struct DatabaseUrl(String);

impl DatabaseUrl {
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The database name: the URL's path, without query parameters.
    pub fn database_name(&self) -> &str {
        let rest = self.0.split_once("://").map_or("", |(_, rest)| rest);
        let path = rest.find('/').map_or("", |slash| &rest[slash + 1..]);
        path.split('?').next().unwrap_or_default()
    }

    /// The same server and credentials, another database.
    pub fn with_database(&self, name: &str) -> Self {
        let rest_start = self.0.find("://").map_or(0, |i| i + 3);
        let path_start = self.0[rest_start..]
            .find('/')
            .map_or(self.0.len(), |slash| rest_start + slash);
        let query = self.0[path_start..]
            .find('?')
            .map_or("", |q| &self.0[path_start + q..]);
        Self(format!("{}/{name}{query}", &self.0[..path_start]))
    }
}

impl FromStr for DatabaseUrl {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if !(s.starts_with("postgres://") || s.starts_with("postgresql://")) {
            return Err("expected postgres://user@host:port/database".into());
        }
        let url = Self(s.to_owned());
        if url.database_name().is_empty() {
            return Err("the URL names no database (…/database)".into());
        }
        Ok(url)
    }
}

redacted_url_formatting!(DatabaseUrl);
