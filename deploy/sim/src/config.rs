//! The simulator's command line.

use std::net::SocketAddr;

use clap::{Args, Parser, Subcommand};
use shared::config::{DatabaseConfig, SecretString, TelemetryConfig};
use shared::webhook::WebhookSecrets;

use crate::faults::Faults;

/// Stands in for Replicate in demos, tests and benchmarks, and drives the pipeline as the
/// web app's users would.
#[derive(Debug, Clone, Parser)]
#[command(name = "replicate-sim", version)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,

    #[command(flatten)]
    pub telemetry: TelemetryConfig,
}

#[derive(Debug, Clone, Subcommand)]
pub enum Command {
    /// Serve Replicate's API and the outputs; run each job and send its signed webhooks.
    Serve(ServeArgs),
    /// Act as the web app: a demo user with credits and the gallery URL to open.
    Demo(DemoArgs),
    /// POST one correctly signed webhook (or print the equivalent curl command).
    Send(SendArgs),
    /// Drive many jobs through the real pipeline and measure it.
    Load(LoadArgs),
    /// One measurement of `deploy/bench`, or its report.
    #[command(subcommand)]
    Bench(BenchCommand),
}

#[derive(Debug, Clone, Args)]
pub struct SigningArgs {
    /// The secret webhooks are signed with (the first one if several).
    #[arg(
        long = "webhook-secret",
        env = "REPLICATE_WEBHOOK_SECRET",
        value_name = "REPLICATE_WEBHOOK_SECRET",
        hide_env_values = true
    )]
    pub secrets: WebhookSecrets,
}

#[derive(Debug, Clone, Args)]
pub struct ServeArgs {
    #[arg(long, env = "SIM_ADDR", default_value = "0.0.0.0:8090")]
    pub addr: SocketAddr,
    /// The URL the pipeline reaches this simulator at (output URLs point here); default
    /// `http://127.0.0.1:<port>`.
    #[arg(long)]
    pub public_url: Option<String>,
    /// Milliseconds between two progress steps of a job (10 to 30 steps a job).
    #[arg(long, default_value_t = 150)]
    pub step_ms: u64,
    /// When set, API calls must carry `Authorization: Bearer <token>`.
    #[arg(long, env = "REPLICATE_API_TOKEN", hide_env_values = true)]
    pub api_token: Option<String>,
    #[command(flatten)]
    pub signing: SigningArgs,
    #[command(flatten)]
    pub faults: Faults,
}

/// Where the web app's side talks to the pipeline: the notifier's jobs API (with browser
/// tokens) and the database (accounts).
#[derive(Debug, Clone, Args)]
pub struct AppArgs {
    /// The notifier's base URL: the gallery, its jobs API and WebSockets.
    #[arg(long, default_value = "http://localhost:8081")]
    pub notifier_url: String,
    #[arg(long, env = "NOTIFIER_JWT_SECRET", hide_env_values = true)]
    pub jwt_secret: SecretString,
    #[command(flatten)]
    pub database: DatabaseConfig,
}

#[derive(Debug, Clone, Args)]
pub struct DemoArgs {
    #[command(flatten)]
    pub app: AppArgs,
    #[arg(long, default_value = "demo")]
    pub user: String,
    /// Credits the demo user starts with (and is topped up with when they run out).
    #[arg(long, default_value_t = 1000)]
    pub credits: i32,
    /// Seconds between two jobs the demo creates by itself; 0 (the default) leaves the
    /// creating to you, in the gallery.
    #[arg(long, default_value_t = 0.0)]
    pub every_secs: f64,
}

#[derive(Debug, Clone, Args)]
pub struct SendArgs {
    #[arg(long)]
    pub job_id: String,
    #[arg(long, default_value = "succeeded")]
    pub status: String,
    /// The `output` field as JSON (a URL list, a URL string, a training's object).
    #[arg(long, default_value = "null")]
    pub output: String,
    /// The ingest endpoint.
    #[arg(long, default_value = "http://127.0.0.1:8080/api/webhooks/replicate")]
    pub to: String,
    /// Print the equivalent curl command instead of sending.
    #[arg(long)]
    pub curl: bool,
    #[command(flatten)]
    pub signing: SigningArgs,
}

#[derive(Debug, Clone, Args)]
pub struct LoadArgs {
    #[command(flatten)]
    pub app: AppArgs,
    /// Jobs to run (generations and some trainings; a share of the completed generations
    /// is upscaled on top).
    #[arg(long, default_value_t = 500)]
    pub jobs: usize,
    /// Jobs started per second.
    #[arg(long, default_value_t = 50.0)]
    pub rate: f64,
    /// Users the jobs are spread over (one WebSocket each).
    #[arg(long, default_value_t = 20)]
    pub users: usize,
    /// Address of the simulator this command runs for its jobs: the notifier's
    /// REPLICATE_API_URL must point here, and the workers must allow its outputs.
    #[arg(long, default_value = "127.0.0.1:8090")]
    pub sim_addr: SocketAddr,
    /// Milliseconds between two progress steps of a job.
    #[arg(long, default_value_t = 100)]
    pub step_ms: u64,
    /// Give up waiting for events after this many seconds.
    #[arg(long, default_value_t = 120)]
    pub timeout_secs: u64,
    /// Also write the figures as `<DIR>/<--bench-name>.json` for `bench report`.
    #[arg(long, value_name = "DIR")]
    pub bench_out: Option<std::path::PathBuf>,
    #[arg(long, default_value = "e2e")]
    pub bench_name: String,
    #[command(flatten)]
    pub signing: SigningArgs,
    #[command(flatten)]
    pub faults: Faults,
}

#[derive(Debug, Clone, Subcommand)]
pub enum BenchCommand {
    /// Persistent confirmed publishes/s into a quorum queue: the ceiling for ingest.
    Broker {
        #[arg(
            long,
            env = "AMQP_URL",
            default_value = "amqp://guest:guest@127.0.0.1:5672/%2f",
            hide_env_values = true
        )]
        amqp_url: String,
        #[arg(long, default_value_t = 10)]
        seconds: u64,
        #[arg(long, default_value_t = 64)]
        concurrency: usize,
        #[arg(long, default_value = "target/bench")]
        out: std::path::PathBuf,
    },
    /// Signed webhooks/s a running ingest confirms, and its latency at half that rate.
    Ingest {
        /// The ingest endpoint.
        #[arg(long, default_value = "http://127.0.0.1:8080/api/webhooks/replicate")]
        url: String,
        #[arg(long, default_value_t = 10)]
        seconds: u64,
        #[arg(long, default_value_t = 64)]
        concurrency: usize,
        #[arg(long, default_value = "target/bench")]
        out: std::path::PathBuf,
        #[command(flatten)]
        signing: SigningArgs,
    },
    /// Webhooks/s two workers drain from a preloaded queue (a database of its own).
    Worker {
        #[arg(
            long,
            env = "AMQP_URL",
            default_value = "amqp://guest:guest@127.0.0.1:5672/%2f",
            hide_env_values = true
        )]
        amqp_url: String,
        #[command(flatten)]
        database: DatabaseConfig,
        /// The worker binary to run.
        #[arg(long)]
        worker_bin: std::path::PathBuf,
        #[arg(long, default_value_t = 5000)]
        jobs: usize,
        #[arg(long, default_value = "target/bench")]
        out: std::path::PathBuf,
    },
    /// WebSockets over users on a running notifier (or nginx with nchan), and live events at
    /// each rate.
    Fanout {
        #[arg(long, default_value = "http://127.0.0.1:18081")]
        notifier_url: String,
        /// Measure nginx with nchan at this URL instead of the notifier.
        #[arg(long)]
        nchan_url: Option<String>,
        /// The processes whose memory counts (repeatable; summed).
        #[arg(long = "pid", required = true)]
        pids: Vec<u32>,
        #[arg(
            long,
            env = "AMQP_URL",
            default_value = "amqp://guest:guest@127.0.0.1:5672/%2f",
            hide_env_values = true
        )]
        amqp_url: String,
        /// The notifier's AMQP_NAME_PREFIX.
        #[arg(long, default_value = "")]
        prefix: String,
        #[arg(long, env = "NOTIFIER_JWT_SECRET", hide_env_values = true)]
        jwt_secret: SecretString,
        #[arg(long, default_value_t = 10_000)]
        sockets: usize,
        #[arg(long, default_value_t = 1_000)]
        users: usize,
        #[arg(long, value_delimiter = ',', default_value = "1000,5000")]
        rates: Vec<u64>,
        #[arg(long, default_value_t = 10)]
        seconds: u64,
        #[arg(long, default_value = "target/bench")]
        out: std::path::PathBuf,
    },
    /// `report.md` and `report.json` from the measurements in `--out`.
    Report {
        #[arg(long, default_value = "target/bench")]
        out: std::path::PathBuf,
        /// Written notes on the figures (profiles, what each change bought), appended to
        /// the report when the file exists.
        #[arg(long, default_value = "docs/benchmarks.md")]
        notes: std::path::PathBuf,
    },
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn command_line_is_well_formed() {
        Cli::command().debug_assert();
    }
}
