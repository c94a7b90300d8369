//! The setting groups a binary flattens into its own parser, with the contract's names and
//! defaults.

use std::time::Duration;

use clap::{Args, ValueEnum};

use crate::config::secret::OptionalSecret;
use crate::config::urls::{AmqpNodes, DatabaseUrl};
use crate::webhook::{Verifier, WebhookSecrets};

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
