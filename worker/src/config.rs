//! The worker's settings: its own plus the shared groups it needs.

use std::net::SocketAddr;

use clap::{Args, Parser, Subcommand};
use shared::config::{
    AmqpConfig, DatabaseConfig, ReplicateApiConfig, StorageConfig, TelemetryConfig,
};

use crate::download::{DownloadLimits, DownloadPolicy, HostRule};

/// Consumes Replicate webhooks from RabbitMQ: classifies each job, moves its status
/// forward, stores output images, refunds failed and cancelled jobs exactly once, and
/// publishes every change to `jobs.events`.
#[derive(Debug, Clone, Parser)]
#[command(name = "worker", version)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,

    #[command(flatten)]
    pub config: WorkerConfig,
}

#[derive(Debug, Clone, Subcommand)]
pub enum Command {
    /// Process webhooks until SIGINT/SIGTERM (the default).
    Run,
    /// Create the database if missing, apply pending migrations, and exit.
    Migrate,
    /// Show or replay the webhooks parked in `replicate.webhooks.dead`.
    DeadLetters {
        #[command(subcommand)]
        action: DeadLetterAction,
    },
}

#[derive(Debug, Clone, Subcommand)]
pub enum DeadLetterAction {
    /// List what is parked and why (the queue is left as it is).
    List,
    /// Send parked webhooks back through the pipeline.
    Replay {
        /// Every parked webhook.
        #[arg(long, conflicts_with = "ids", required_unless_present = "ids")]
        all: bool,
        /// Only these webhook ids (repeatable).
        #[arg(long = "id", value_name = "WEBHOOK_ID")]
        ids: Vec<String>,
    },
}

#[derive(Debug, Clone, Args)]
pub struct WorkerConfig {
    #[command(flatten)]
    pub database: DatabaseConfig,

    #[command(flatten)]
    pub amqp: AmqpConfig,

    #[command(flatten)]
    pub storage: StorageConfig,

    /// Public URL prefix of stored files: key K is published as MEDIA_BASE_URL/K.
    #[arg(
        long,
        env = "MEDIA_BASE_URL",
        default_value = "http://localhost:8081/media"
    )]
    pub media_base_url: String,

    /// Address of the worker's `/metrics` and `/api/health`.
    #[arg(long, env = "WORKER_METRICS_ADDR", default_value = "0.0.0.0:9091")]
    pub metrics_addr: SocketAddr,

    #[command(flatten)]
    pub download: DownloadConfig,

    /// Unacknowledged webhooks the broker hands this worker at once.
    #[arg(long, env = "WORKER_PREFETCH", default_value_t = 200)]
    pub prefetch: u16,

    /// Webhooks processed at the same time, across batches.
    #[arg(long, env = "WORKER_CONCURRENCY", default_value_t = 64)]
    pub concurrency: usize,

    /// The most webhooks applied in one transaction: what the consumer holds when a batch
    /// starts, up to this many (never waiting for more). 1 processes each on its own.
    #[arg(long, env = "WORKER_BATCH_SIZE", default_value_t = 32)]
    pub batch_size: usize,

    /// How long a webhook for an unknown job is retried before it is dead-lettered.
    #[arg(long, env = "UNKNOWN_JOB_RETRY_SECS", default_value_t = 150)]
    pub unknown_job_retry_secs: u64,

    /// How long a webhook failing for a transient reason is retried.
    #[arg(long, env = "TRANSIENT_RETRY_SECS", default_value_t = 1800)]
    pub transient_retry_secs: u64,

    /// How long the webhook record (the operator console's list of every webhook handled)
    /// keeps a row.
    #[arg(long, env = "WEBHOOK_RECORD_RETENTION_HOURS", default_value_t = 168)]
    pub webhook_record_retention_hours: u64,

    /// How often unpublished events are looked for (the outbox sweep).
    #[arg(long, env = "OUTBOX_SWEEP_SECS", default_value_t = 5)]
    pub outbox_sweep_secs: u64,

    #[command(flatten)]
    pub reconcile: ReconcileConfig,

    /// How long a shutdown waits for in-flight webhooks.
    #[arg(long, env = "SHUTDOWN_TIMEOUT_SECS", default_value_t = 30)]
    pub shutdown_timeout_secs: u64,

    #[command(flatten)]
    pub telemetry: TelemetryConfig,
}

/// Asking Replicate about jobs whose webhooks went missing.
#[derive(Debug, Clone, Args)]
pub struct ReconcileConfig {
    #[command(flatten)]
    pub replicate: ReplicateApiConfig,

    /// A job unfinished and unchanged for this long is asked about.
    #[arg(
        long = "reconcile-after-secs",
        env = "RECONCILE_AFTER_SECS",
        default_value_t = 600
    )]
    pub after_secs: u64,

    /// How often the reconciling worker looks.
    #[arg(
        long = "reconcile-interval-secs",
        env = "RECONCILE_INTERVAL_SECS",
        default_value_t = 60
    )]
    pub interval_secs: u64,
}

impl WorkerConfig {
    /// The defaults for tests, on the given services: downloads allowed over plain HTTP
    /// from `allowed_hosts` (small, to show the limits), a short outbox sweep, metrics on
    /// port 0, and no reconciler with Replicate (no token) unless a test sets one.
    pub fn for_test(
        database: DatabaseConfig,
        amqp: AmqpConfig,
        storage: StorageConfig,
        allowed_hosts: AllowedHosts,
    ) -> Self {
        Self {
            database,
            amqp,
            storage,
            media_base_url: "http://media.test/media".into(),
            metrics_addr: "127.0.0.1:0".parse().expect("an address"),
            download: DownloadConfig {
                allowed_hosts,
                allow_http: true,
                max_bytes: 64 * 1024,
                concurrency: 16,
                budget_bytes: 256 * 1024 * 1024,
                timeout_secs: 10,
            },
            prefetch: 50,
            concurrency: 16,
            batch_size: 8,
            unknown_job_retry_secs: 150,
            transient_retry_secs: 60,
            webhook_record_retention_hours: 168,
            outbox_sweep_secs: 1,
            reconcile: ReconcileConfig {
                replicate: ReplicateApiConfig {
                    url: "http://127.0.0.1:9/v1".into(),
                    token: Default::default(),
                    create_timeout_secs: 30,
                },
                after_secs: 600,
                interval_secs: 60,
            },
            shutdown_timeout_secs: 10,
            telemetry: TelemetryConfig {
                log_format: shared::config::LogFormat::Pretty,
            },
        }
    }
}

impl ReconcileConfig {
    /// A row still waiting for Replicate's id after `RECONCILE_AFTER_SECS` is failed and
    /// refunded as abandoned: that must never be a creation still under way.
    pub fn check(&self) -> anyhow::Result<()> {
        let deadline = self.replicate.creation_deadline().as_secs();
        anyhow::ensure!(
            self.after_secs >= deadline,
            "RECONCILE_AFTER_SECS={} is below what creating a job can take ({deadline} s: REPLICATE_CREATE_TIMEOUT_SECS={} plus {} s to store Replicate's id); a creation still under way would be failed and refunded",
            self.after_secs,
            self.replicate.create_timeout_secs,
            shared::config::CREATION_MARGIN_SECS,
        );
        Ok(())
    }
}

/// A comma-separated list of `host`, `*.domain` or `host:port`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AllowedHosts(pub Vec<HostRule>);

impl std::str::FromStr for AllowedHosts {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        DownloadPolicy::parse_hosts(s).map(Self)
    }
}

#[derive(Debug, Clone, Args)]
pub struct DownloadConfig {
    /// Hosts output images may be downloaded from (also for every redirect).
    #[arg(
        long = "download-allowed-hosts",
        env = "DOWNLOAD_ALLOWED_HOSTS",
        default_value = "replicate.delivery,*.replicate.delivery"
    )]
    pub allowed_hosts: AllowedHosts,

    /// Also fetch plain `http` output URLs.
    #[arg(long = "download-allow-http", env = "DOWNLOAD_ALLOW_HTTP", default_value_t = false, action = clap::ArgAction::Set)]
    pub allow_http: bool,

    /// Largest output file accepted, in bytes.
    #[arg(long = "download-max-bytes", env = "DOWNLOAD_MAX_BYTES", default_value_t = 50 * 1024 * 1024)]
    pub max_bytes: u64,

    /// Downloads in flight at once, across all webhooks.
    #[arg(
        id = "download_concurrency",
        long = "download-concurrency",
        env = "DOWNLOAD_CONCURRENCY",
        default_value_t = 16
    )]
    pub concurrency: usize,

    /// Memory that fetched outputs not yet stored may take together; a download waits for
    /// its share (the announced length, else DOWNLOAD_MAX_BYTES).
    #[arg(long = "download-budget-bytes", env = "DOWNLOAD_BUDGET_BYTES", default_value_t = 256 * 1024 * 1024)]
    pub budget_bytes: u64,

    /// Time limit for one download.
    #[arg(
        long = "download-timeout-secs",
        env = "DOWNLOAD_TIMEOUT_SECS",
        default_value_t = 60
    )]
    pub timeout_secs: u64,
}

impl DownloadConfig {
    pub fn limits(&self) -> DownloadLimits {
        DownloadLimits {
            concurrency: self.concurrency,
            budget_bytes: self.budget_bytes,
        }
    }

    pub fn policy(&self) -> DownloadPolicy {
        DownloadPolicy {
            allowed_hosts: self.allowed_hosts.0.clone(),
            allow_http: self.allow_http,
            max_bytes: self.max_bytes,
            timeout: std::time::Duration::from_secs(self.timeout_secs),
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

    #[test]
    fn reconciling_sooner_than_a_creation_can_take_is_refused() {
        let parse = |args: &[&str]| {
            let mut all = vec!["worker"];
            all.extend_from_slice(args);
            Cli::try_parse_from(all).unwrap().config.reconcile
        };
        assert!(parse(&[]).check().is_ok(), "the defaults fit");
        let error = parse(&["--reconcile-after-secs", "20"])
            .check()
            .unwrap_err()
            .to_string();
        assert!(
            error.contains("RECONCILE_AFTER_SECS=20") && error.contains("35 s"),
            "{error}"
        );
        let quick = parse(&[
            "--reconcile-after-secs",
            "8",
            "--replicate-create-timeout-secs",
            "3",
        ]);
        assert!(quick.check().is_ok());
    }

    #[test]
    fn defaults_match_the_contract() {
        let cli = Cli::try_parse_from(["worker"]).unwrap();
        let config = cli.config;
        assert_eq!(config.metrics_addr.to_string(), "0.0.0.0:9091");
        assert_eq!(config.storage.url, "file://./data/media");
        assert_eq!(config.media_base_url, "http://localhost:8081/media");
        assert_eq!(config.download.max_bytes, 52_428_800);
        assert!(!config.download.allow_http);
        assert_eq!(config.download.allowed_hosts.0.len(), 2);
        let migrate = Cli::try_parse_from(["worker", "migrate"]).unwrap();
        assert!(matches!(migrate.command, Some(Command::Migrate)));
        let replay =
            Cli::try_parse_from(["worker", "dead-letters", "replay", "--id", "a", "--id", "b"])
                .unwrap();
        assert!(matches!(
            replay.command,
            Some(Command::DeadLetters { action: DeadLetterAction::Replay { all: false, ref ids } }) if ids == &["a", "b"]
        ));
        assert!(
            Cli::try_parse_from(["worker", "dead-letters", "replay"]).is_err(),
            "--all or --id is required"
        );
    }
}
