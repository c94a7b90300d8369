//! The benchmarks' command line: one subcommand per measurement, and the report.

use std::net::SocketAddr;

use clap::{Args, Parser, Subcommand};
use replicate_sim::config::{AppArgs, SigningArgs};
use replicate_sim::faults::Faults;
use shared::config::{DatabaseConfig, SecretString, TelemetryConfig};

/// The measurements behind `deploy/bench`, each written as JSON under `--out`, and the
/// report that puts every figure beside its reference.
#[derive(Debug, Clone, Parser)]
#[command(name = "pipeline-bench", version)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,

    #[command(flatten)]
    pub telemetry: TelemetryConfig,
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
pub enum Command {
    /// Drive many jobs through the real pipeline (Replicate simulated in-process) and
    /// measure it end to end.
    Load(LoadArgs),
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
        /// `broker` (before ingest's run) or `broker-after`: the report takes the mean of
        /// the two as ingest's reference, so that the host's drift between them cancels.
        #[arg(long, default_value = "broker", value_parser = ["broker", "broker-after"])]
        part: String,
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
