//! The notifier's settings: its own plus the shared groups it needs.

use std::net::SocketAddr;

use clap::{Args, Parser, Subcommand};
use shared::config::{
    AmqpConfig, DatabaseConfig, ReplicateApiConfig, StorageConfig, TelemetryConfig,
};

use shared::auth::{JwtKey, OperatorToken};

/// Pushes each job change to its user's browsers over WebSocket (and Server-Sent Events),
/// with replay after reconnect; serves the live gallery page and stored media.
#[derive(Debug, Clone, Parser)]
#[command(name = "notifier", version)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,

    #[command(flatten)]
    pub config: NotifierConfig,
}

#[derive(Debug, Clone, Subcommand)]
pub enum Command {
    /// Serve WebSocket, SSE, the gallery and media until SIGINT/SIGTERM (the default).
    Serve,
    /// Print a browser token for a user (development).
    Token {
        /// The user id (`sub`).
        #[arg(long)]
        user: String,
        /// Lifetime of the token.
        #[arg(long, default_value_t = 3600)]
        ttl_secs: u64,
    },
}

#[derive(Debug, Clone, Args)]
pub struct NotifierConfig {
    /// Address of the one HTTP port: /ws, /events, /api/health, /metrics, /, /media.
    #[arg(long, env = "NOTIFIER_ADDR", default_value = "0.0.0.0:8081")]
    pub addr: SocketAddr,

    /// HS256 key browser tokens are signed with (shared with the web app): at least 32
    /// bytes, not a placeholder.
    #[arg(
        long = "jwt-secret",
        env = "NOTIFIER_JWT_SECRET",
        value_name = "NOTIFIER_JWT_SECRET",
        hide_env_values = true
    )]
    pub jwt_secret: JwtKey,

    #[command(flatten)]
    pub database: DatabaseConfig,

    #[command(flatten)]
    pub amqp: AmqpConfig,

    #[command(flatten)]
    pub storage: StorageConfig,

    #[command(flatten)]
    pub sockets: SocketConfig,

    #[command(flatten)]
    pub jobs: JobsConfig,

    /// Ingest's base URL: its `/api/health` decides the `webhook` field of ours, and the
    /// operator console reads its `/metrics` (webhooks accepted and refused).
    #[arg(long, env = "INGEST_URL", default_value = "http://127.0.0.1:8080")]
    pub ingest_url: String,

    #[command(flatten)]
    pub ops: OpsConfig,

    #[command(flatten)]
    pub telemetry: TelemetryConfig,
}

/// The operator console under `/ops/`.
#[derive(Debug, Clone, Args)]
pub struct OpsConfig {
    /// The console's bearer token (at least 32 bytes, never a user's token); without it
    /// `/ops/` answers 404.
    #[arg(
        long = "operator-token",
        env = "OPERATOR_TOKEN",
        value_name = "OPERATOR_TOKEN",
        hide_env_values = true
    )]
    pub operator_token: Option<OperatorToken>,

    /// A job unfinished and without news this long is stuck (the worker's reconciler asks
    /// Replicate about it after as long).
    #[arg(long, env = "RECONCILE_AFTER_SECS", default_value_t = 600)]
    pub stuck_after_secs: u64,
}

/// The jobs API: how jobs are created on Replicate, and what they cost.
#[derive(Debug, Clone, Args)]
pub struct JobsConfig {
    #[command(flatten)]
    pub replicate: ReplicateApiConfig,

    /// The URL Replicate posts webhooks to (ingest's endpoint), set on every job.
    #[arg(
        long,
        env = "PUBLIC_WEBHOOK_URL",
        default_value = "http://127.0.0.1:8080/api/webhooks/replicate"
    )]
    pub public_webhook_url: String,

    /// Text-to-image model: `owner/name` (an official model) or `owner/name:version`.
    #[arg(
        long,
        env = "GENERATION_MODEL",
        default_value = "black-forest-labs/flux-schnell"
    )]
    pub generation_model: ModelRef,

    /// Upscaler, given `{"image": <url>}`.
    #[arg(
        long,
        env = "UPSCALE_MODEL",
        default_value = "nightmareai/real-esrgan:f121d640bd286e1fdc67f9799164c1d5be36ff74576ee11c803ae5b665dd46aa"
    )]
    pub upscale_model: ModelRef,

    /// Trainer, `owner/name:version`, given `{"input_images": <zip URL>}`.
    #[arg(
        long,
        env = "TRAINING_MODEL",
        default_value = "replicate/fast-flux-trainer:56cb4a6447e586e40c6834a7a48b649336ade35325479817ada41cd3d8dcc175"
    )]
    pub training_model: ModelRef,

    /// The model (`owner/name`, yours on Replicate) trainings create versions of; without it
    /// trainings answer 503.
    #[arg(long, env = "TRAINING_DESTINATION")]
    pub training_destination: Option<String>,

    #[arg(long, env = "GENERATION_COST", default_value_t = 4)]
    pub generation_cost: u16,

    #[arg(long, env = "UPSCALE_COST", default_value_t = 2)]
    pub upscale_cost: u16,

    #[arg(long, env = "TRAINING_COST", default_value_t = 40)]
    pub training_cost: u16,

    /// Creations one user may have waiting on Replicate at once (beyond: `429`).
    #[arg(long, env = "MAX_CREATIONS_PER_USER", default_value_t = 8)]
    pub max_creations_per_user: usize,

    /// Creations this instance has waiting on Replicate at once, all users together
    /// (beyond: `429`).
    #[arg(long, env = "MAX_CREATIONS_IN_FLIGHT", default_value_t = 256)]
    pub max_creations_in_flight: usize,
}

/// A Replicate model: `owner/name` (official models run without a version) or
/// `owner/name:version`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelRef {
    pub owner: String,
    pub name: String,
    pub version: Option<String>,
}

impl std::str::FromStr for ModelRef {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let (path, version) = match text.split_once(':') {
            Some((path, version)) => (path, Some(version)),
            None => (text, None),
        };
        let valid = |part: &str| {
            !part.is_empty()
                && part
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        };
        match path.split_once('/') {
            Some((owner, name)) if valid(owner) && valid(name) && version.is_none_or(valid) => {
                Ok(Self {
                    owner: owner.to_owned(),
                    name: name.to_owned(),
                    version: version.map(str::to_owned),
                })
            }
            _ => Err(format!(
                "{text:?} is not a Replicate model (owner/name or owner/name:version)"
            )),
        }
    }
}

impl std::fmt::Display for ModelRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.owner, self.name)?;
        if let Some(version) = &self.version {
            write!(f, ":{version}")?;
        }
        Ok(())
    }
}

#[derive(Debug, Clone, Copy, Args)]
pub struct SocketConfig {
    /// Seconds between pings to each socket.
    #[arg(long, env = "NOTIFIER_PING_SECS", default_value_t = 20)]
    pub ping_secs: u64,

    /// A socket that sent nothing (not even a pong) for this long is closed.
    #[arg(long, env = "NOTIFIER_IDLE_TIMEOUT_SECS", default_value_t = 60)]
    pub idle_timeout_secs: u64,

    /// Events queued for one socket before it counts as too slow and is closed.
    #[arg(long, env = "NOTIFIER_SEND_QUEUE", default_value_t = 64)]
    pub send_queue: usize,

    /// Longest wait for one socket to take a message before it is closed.
    #[arg(long, env = "NOTIFIER_SEND_TIMEOUT_SECS", default_value_t = 10)]
    pub send_timeout_secs: u64,

    /// Open sockets and streams this instance holds at most (beyond: closed with 1013).
    #[arg(long, env = "NOTIFIER_MAX_CONNECTIONS", default_value_t = 20_000)]
    pub max_connections: usize,

    /// Open sockets and streams one user holds at most (beyond: closed with 1008).
    #[arg(long, env = "NOTIFIER_MAX_CONNECTIONS_PER_USER", default_value_t = 16)]
    pub max_connections_per_user: usize,
}

impl NotifierConfig {
    /// The defaults on port 0, for tests: the given services, no Replicate token (see
    /// [`JobsConfig::for_test`]), and no ingest (health says the webhook side is unreachable).
    pub fn for_test(
        jwt_secret: &str,
        database: DatabaseConfig,
        amqp: AmqpConfig,
        storage: StorageConfig,
    ) -> Self {
        Self {
            addr: "127.0.0.1:0".parse().expect("an address"),
            jwt_secret: jwt_secret.parse().expect("a test key of 32 bytes or more"),
            database,
            amqp,
            storage,
            sockets: SocketConfig::default(),
            jobs: JobsConfig::for_test("http://127.0.0.1:9/v1", None),
            ingest_url: "http://127.0.0.1:9".into(),
            ops: OpsConfig {
                operator_token: None,
                stuck_after_secs: 600,
            },
            telemetry: TelemetryConfig {
                log_format: shared::config::LogFormat::Pretty,
            },
        }
    }
}

impl JobsConfig {
    /// The defaults, for tests, with Replicate's API at `url` and `token` (`None`: creation
    /// answers 503). Webhooks are addressed to a port where nothing listens.
    pub fn for_test(url: &str, token: Option<&str>) -> Self {
        Self {
            replicate: ReplicateApiConfig {
                url: url.into(),
                token: token.into(),
                create_timeout_secs: 30,
            },
            public_webhook_url: "http://127.0.0.1:9/api/webhooks/replicate".into(),
            generation_model: "black-forest-labs/flux-schnell".parse().expect("a model"),
            upscale_model: "nightmareai/real-esrgan:f121d640bd286e1fdc67f9799164c1d5be36ff74576ee11c803ae5b665dd46aa"
                .parse()
                .expect("a model"),
            training_model: "replicate/fast-flux-trainer:56cb4a6447e586e40c6834a7a48b649336ade35325479817ada41cd3d8dcc175"
                .parse()
                .expect("a model"),
            training_destination: None,
            generation_cost: 4,
            upscale_cost: 2,
            training_cost: 40,
            max_creations_per_user: 8,
            max_creations_in_flight: 256,
        }
    }
}

impl Default for SocketConfig {
    fn default() -> Self {
        Self {
            ping_secs: 20,
            idle_timeout_secs: 60,
            send_queue: 64,
            send_timeout_secs: 10,
            max_connections: 20_000,
            max_connections_per_user: 16,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn command_line_is_well_formed() {
        Cli::command().debug_assert();
    }

    const KEY: &str = "q3RkJ0e1cWv0pQm6Tz9yB8xN2aL5sD7f";

    #[test]
    fn a_weak_key_stops_the_notifier_with_the_reason() {
        let err = Cli::try_parse_from(["notifier", "--jwt-secret", "REPLACE_ME"]).unwrap_err();
        let message = shared::config::describe(&err, &<Cli as clap::CommandFactory>::command());
        assert!(
            message.contains("NOTIFIER_JWT_SECRET") && message.contains("placeholder"),
            "{message}"
        );
        assert!(!message.contains("REPLACE_ME"), "{message}");
    }

    #[test]
    fn defaults_match_the_contract() {
        let cli = Cli::try_parse_from(["notifier", "--jwt-secret", KEY]).unwrap();
        assert_eq!(cli.config.addr.to_string(), "0.0.0.0:8081");
        let sockets = cli.config.sockets;
        let defaults = SocketConfig::default();
        assert_eq!(
            (
                sockets.ping_secs,
                sockets.idle_timeout_secs,
                sockets.send_queue,
                sockets.send_timeout_secs
            ),
            (
                defaults.ping_secs,
                defaults.idle_timeout_secs,
                defaults.send_queue,
                defaults.send_timeout_secs
            )
        );
        assert_eq!(
            (sockets.max_connections, sockets.max_connections_per_user),
            (defaults.max_connections, defaults.max_connections_per_user)
        );
        assert_eq!((sockets.ping_secs, sockets.idle_timeout_secs), (20, 60));
        let err = Cli::try_parse_from(["notifier"]).unwrap_err();
        assert!(err.to_string().contains("NOTIFIER_JWT_SECRET"), "{err}");
        let token = Cli::try_parse_from(["notifier", "--jwt-secret", KEY, "token", "--user", "u1"])
            .unwrap();
        assert!(matches!(
            token.command,
            Some(Command::Token { ttl_secs: 3600, .. })
        ));
        let jobs = &cli.config.jobs;
        assert_eq!(jobs.replicate.url, "https://api.replicate.com/v1");
        assert!(!jobs.replicate.token.is_some());
        assert_eq!(
            (jobs.generation_cost, jobs.upscale_cost, jobs.training_cost),
            (4, 2, 40)
        );
        assert_eq!(jobs.generation_model.version, None, "an official model");
        assert!(jobs.upscale_model.version.is_some() && jobs.training_model.version.is_some());
        assert_eq!(cli.config.ingest_url, "http://127.0.0.1:8080");
    }

    #[test]
    fn models_are_owner_name_and_an_optional_version() {
        let model: ModelRef = "owner/name:abc123".parse().unwrap();
        assert_eq!(
            (
                model.owner.as_str(),
                model.name.as_str(),
                model.version.as_deref()
            ),
            ("owner", "name", Some("abc123"))
        );
        assert_eq!(model.to_string(), "owner/name:abc123");
        for bad in [
            "",
            "name",
            "owner/",
            "/name",
            "a/b/c",
            "owner/name:",
            "own er/name",
        ] {
            assert!(bad.parse::<ModelRef>().is_err(), "{bad:?} accepted");
        }
    }
}
