//! Configuration shared by the services: read from the environment (and `.env`), typed and
//! validated once at start-up by clap, with the names and defaults of the contract.
//!
//! Each binary flattens the groups it needs into its own `clap::Parser`, so `--help` lists
//! every variable with its default, and a bad value stops the program with one line.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use clap::{Args, Parser, ValueEnum};

use crate::webhook::{Verifier, WebhookSecrets};

/// Parses the command line and environment of a binary, after loading `.env`.
///
/// Bad configuration prints one line (`error: …`) and exits with status 2; `--help` and
/// `--version` print and exit 0.
pub fn parse<T: Parser>() -> T {
    parse_from(std::env::args_os())
}

/// [`parse`] from the given arguments (the first is the program name).
pub fn parse_from<T: Parser, I, A>(args: I) -> T
where
    I: IntoIterator<Item = A>,
    A: Into<std::ffi::OsString> + Clone,
{
    if let Err(err) = dotenvy::dotenv()
        && !err.not_found()
    {
        eprintln!("error: cannot read .env: {err}");
        std::process::exit(2);
    }
    match T::try_parse_from(args) {
        Ok(parsed) => parsed,
        Err(err) if !err.use_stderr() => err.exit(),
        Err(err) => {
            eprintln!("{}", describe(&err, &T::command()));
            std::process::exit(2);
        }
    }
}

/// The one-line message for a configuration error. A rejected value is never echoed (it
/// may be a secret, or a URL with a password): the message names the setting and why.
pub fn describe(err: &clap::Error, command: &clap::Command) -> String {
    use clap::error::{ContextKind, ContextValue, ErrorKind};
    match err.kind() {
        ErrorKind::ValueValidation | ErrorKind::InvalidValue => {
            let setting = match err.get(ContextKind::InvalidArg) {
                Some(ContextValue::String(arg)) => {
                    // `--database-url <…>` → `DATABASE_URL (--database-url)`.
                    let long = arg.split_whitespace().next().unwrap_or(arg);
                    let env = command
                        .get_arguments()
                        .find(|a| a.get_long().is_some_and(|l| format!("--{l}") == long))
                        .and_then(|a| a.get_env())
                        .map(|env| env.to_string_lossy().into_owned());
                    match env {
                        Some(env) => format!("{env} ({long})"),
                        None => long.to_owned(),
                    }
                }
                _ => "a setting".to_owned(),
            };
            let reason = std::error::Error::source(err)
                .map(|source| source.to_string())
                .or_else(|| match err.get(ContextKind::ValidValue) {
                    Some(ContextValue::Strings(valid)) => {
                        Some(format!("expected one of {}", valid.join(", ")))
                    }
                    _ => None,
                })
                .unwrap_or_else(|| "not accepted".to_owned());
            format!("error: invalid value for {setting}: {reason}")
        }
        _ => one_line(&err.to_string()),
    }
}

/// Folds clap's multi-line error into one line, dropping the usage hints after it.
fn one_line(message: &str) -> String {
    message
        .lines()
        .take_while(|line| !line.starts_with("Usage:") && !line.starts_with("For more information"))
        .map(str::trim)
        .filter(|line| !line.is_empty())
        .collect::<Vec<_>>()
        .join(" ")
}

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

/// Replicate's API: where, and the token. The notifier creates jobs with it (without a
/// token its jobs API answers 503), the worker asks it about jobs whose webhooks went
/// missing (without a token it does not), and `ingest secret fetch` reads the signing
/// secret with it.
#[derive(Debug, Clone, Args)]
pub struct ReplicateApiConfig {
    /// Replicate's API (the simulator's `http://host:port/v1` in demos and tests).
    #[arg(
        id = "replicate_api_url",
        long = "replicate-api-url",
        env = "REPLICATE_API_URL",
        value_name = "REPLICATE_API_URL",
        default_value = "https://api.replicate.com/v1"
    )]
    pub url: String,

    /// Replicate API token.
    #[arg(
        id = "replicate_api_token",
        long = "replicate-api-token",
        env = "REPLICATE_API_TOKEN",
        value_name = "REPLICATE_API_TOKEN",
        default_value = "",
        hide_default_value = true,
        hide_env_values = true
    )]
    pub token: OptionalSecret,

    /// Longest wait for Replicate to answer the creation of a job. The worker's
    /// `RECONCILE_AFTER_SECS` must exceed it: a job still waiting for Replicate's id after
    /// that is known to be abandoned, never one whose creation is still under way.
    #[arg(
        id = "replicate_create_timeout_secs",
        long = "replicate-create-timeout-secs",
        env = "REPLICATE_CREATE_TIMEOUT_SECS",
        value_name = "SECONDS",
        default_value_t = 30,
        value_parser = clap::value_parser!(u64).range(1..=600)
    )]
    pub create_timeout_secs: u64,
}

impl ReplicateApiConfig {
    /// How long a creation can take at most: Replicate's answer, then storing its id.
    pub fn creation_deadline(&self) -> std::time::Duration {
        std::time::Duration::from_secs(self.create_timeout_secs + CREATION_MARGIN_SECS)
    }
}

/// What storing a job's Replicate id may take after Replicate answered (a database
/// connection, one short transaction), with room to spare.
pub const CREATION_MARGIN_SECS: u64 = 5;

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

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// One human-readable line per event.
    Pretty,
    /// One JSON object per line.
    Json,
}

#[derive(Debug, Clone, Args)]
pub struct TelemetryConfig {
    /// Log line format (the level filter is read from RUST_LOG, default `info`).
    #[arg(long, env = "LOG_FORMAT", value_enum, default_value = "pretty")]
    pub log_format: LogFormat,
}

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

#[derive(Debug, Clone, Args)]
pub struct DatabaseConfig {
    /// PostgreSQL URL; the worker creates the database if it does not exist.
    #[arg(
        id = "database_url",
        long = "database-url",
        env = "DATABASE_URL",
        default_value = "postgres://postgres@127.0.0.1:5432/replicate_pipeline",
        hide_env_values = true
    )]
    pub url: DatabaseUrl,

    /// Most connections this process keeps open.
    #[arg(
        long = "database-pool-size",
        env = "DATABASE_POOL_SIZE",
        default_value_t = 16
    )]
    pub pool_size: usize,
}

#[derive(Debug, Clone, Args)]
pub struct StorageConfig {
    /// Where stored media lives: `file://<directory>` or `s3://bucket/prefix` (credentials
    /// from the usual AWS_* variables).
    #[arg(
        long = "storage-url",
        env = "STORAGE_URL",
        default_value = "file://./data/media"
    )]
    pub url: String,
}

#[derive(Debug, Clone, Args)]
pub struct AmqpConfig {
    /// RabbitMQ URL; for a cluster, the URL of each node, separated by spaces or commas
    /// (the service fails over from one to the next).
    #[arg(
        id = "amqp_url",
        long = "amqp-url",
        env = "AMQP_URL",
        default_value = "amqp://guest:guest@127.0.0.1:5672/%2f",
        hide_env_values = true
    )]
    pub url: AmqpNodes,

    /// Prefix for every queue and exchange name, so that isolated runs (tests, staging) can
    /// share one broker. Empty in production: the names are then exactly the contract's.
    #[arg(
        long = "amqp-name-prefix",
        env = "AMQP_NAME_PREFIX",
        default_value = ""
    )]
    pub name_prefix: String,
}

impl AmqpConfig {
    pub fn new(url: &str, name_prefix: &str) -> Result<Self, String> {
        Ok(Self {
            url: url.parse()?,
            name_prefix: name_prefix.to_owned(),
        })
    }

    pub fn topology(&self) -> crate::amqp::Topology {
        crate::amqp::Topology::new(&self.name_prefix)
    }
}

#[derive(Debug, Clone, Args)]
pub struct WebhookConfig {
    /// Replicate's signing secret(s), `whsec_<base64>`; several, separated by spaces or
    /// commas, are all accepted (rotation).
    #[arg(
        long = "webhook-secret",
        env = "REPLICATE_WEBHOOK_SECRET",
        value_name = "REPLICATE_WEBHOOK_SECRET",
        hide_env_values = true
    )]
    pub secrets: WebhookSecrets,

    /// A `webhook-timestamp` further than this from now, either way, is rejected.
    #[arg(long, env = "WEBHOOK_TOLERANCE_SECS", default_value_t = 300)]
    pub tolerance_secs: u64,

    /// Largest accepted webhook body; larger ones are answered 413.
    #[arg(long, env = "WEBHOOK_MAX_BODY_BYTES", default_value_t = 10 * 1024 * 1024)]
    pub max_body_bytes: usize,
}

impl WebhookConfig {
    pub fn verifier(&self) -> Verifier {
        Verifier::new(
            self.secrets.clone(),
            Duration::from_secs(self.tolerance_secs),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn amqp_url_lists_cluster_nodes() {
        let nodes: AmqpNodes =
            "amqp://guest:s3cret@r1:5672/%2f, amqp://guest:s3cret@r2:5672/%2f amqp://r3:5672"
                .parse()
                .unwrap();
        assert_eq!(nodes.nodes().len(), 3);
        assert_eq!(nodes.as_str(), "amqp://guest:s3cret@r1:5672/%2f");
        assert_eq!(
            nodes.to_string(),
            "amqp://guest:<redacted>@r1:5672/%2f, amqp://guest:<redacted>@r2:5672/%2f, amqp://r3:5672"
        );
        let bad = "amqp://r1:5672 http://r2".parse::<AmqpNodes>().unwrap_err();
        assert!(bad.starts_with("node 2: not an AMQP URL"), "{bad}");
        assert!(" , ".parse::<AmqpNodes>().is_err());
    }

    #[test]
    fn amqp_url_password_is_redacted() {
        let url: AmqpUrl = "amqp://guest:s3cret@rabbit:5672/%2f".parse().unwrap();
        assert_eq!(url.to_string(), "amqp://guest:<redacted>@rabbit:5672/%2f");
        assert!(!format!("{url:?}").contains("s3cret"));
        let bare: AmqpUrl = "amqp://rabbit:5672/%2f".parse().unwrap();
        assert_eq!(bare.to_string(), "amqp://rabbit:5672/%2f");
    }

    #[test]
    fn passwords_in_query_parameters_are_redacted() {
        let url: DatabaseUrl = "postgres://app@db:5432/pipeline?sslmode=require&password=hunter2"
            .parse()
            .unwrap();
        assert_eq!(
            url.to_string(),
            "postgres://app@db:5432/pipeline?sslmode=require&password=<redacted>"
        );
        assert!(!format!("{url:?}").contains("hunter2"));
    }

    /// Every setting group that carries a secret, as a binary flattens them.
    #[derive(Debug, Parser)]
    struct Secrets {
        #[command(flatten)]
        webhook: WebhookConfig,
        #[command(flatten)]
        database: DatabaseConfig,
        #[command(flatten)]
        amqp: AmqpConfig,
    }

    #[test]
    fn rejected_settings_are_named_but_never_echoed() {
        let good = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
        let cases = [
            (
                vec![
                    "--webhook-secret",
                    "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw not-base64!!",
                ],
                "REPLICATE_WEBHOOK_SECRET",
                "MfKQ9r8G",
            ),
            (
                vec![
                    "--webhook-secret",
                    good,
                    "--database-url",
                    "mysql://app:hunter2@db/x",
                ],
                "DATABASE_URL",
                "hunter2",
            ),
            (
                vec![
                    "--webhook-secret",
                    good,
                    "--amqp-url",
                    "amqp://app:hunter2@rabbit:port/%2f",
                ],
                "AMQP_URL",
                "hunter2",
            ),
        ];
        for (args, setting, secret) in cases {
            let err = Secrets::try_parse_from(std::iter::once("test").chain(args)).unwrap_err();
            let message = describe(&err, &<Secrets as clap::CommandFactory>::command());
            assert!(message.contains(setting), "{message}");
            assert!(!message.contains(secret), "echoed: {message}");
            assert!(!message.contains('\n'), "one line: {message}");
        }
    }

    #[test]
    fn database_url_parts() {
        let url: DatabaseUrl =
            "postgres://postgres:pw@127.0.0.1:5432/replicate_pipeline?sslmode=disable"
                .parse()
                .unwrap();
        assert_eq!(url.database_name(), "replicate_pipeline");
        assert_eq!(
            url.with_database("postgres").as_str(),
            "postgres://postgres:pw@127.0.0.1:5432/postgres?sslmode=disable"
        );
        assert_eq!(
            url.to_string(),
            "postgres://postgres:<redacted>@127.0.0.1:5432/replicate_pipeline?sslmode=disable"
        );
        let no_password: DatabaseUrl = "postgres://postgres@127.0.0.1:5432/db".parse().unwrap();
        assert_eq!(
            no_password.to_string(),
            "postgres://postgres@127.0.0.1:5432/db"
        );
        assert!("postgres://host:5432".parse::<DatabaseUrl>().is_err());
        assert!("mysql://host/db".parse::<DatabaseUrl>().is_err());
    }

    #[test]
    fn amqp_url_is_validated() {
        assert!("http://nope".parse::<AmqpUrl>().is_err());
    }

    #[test]
    fn clap_errors_become_one_line() {
        let folded = one_line(
            "error: the following required arguments were not provided:\n  --webhook-secret <WHSEC>\n\nUsage: ingest --webhook-secret <WHSEC>\n\nFor more information, try '--help'.\n",
        );
        assert_eq!(
            folded,
            "error: the following required arguments were not provided: --webhook-secret <WHSEC>"
        );
    }
}
