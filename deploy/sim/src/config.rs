//! The simulator's command line.

use std::net::SocketAddr;

use clap::{Args, Parser, Subcommand};
use shared::config::{DatabaseConfig, SecretString, TelemetryConfig};
use shared::webhook::WebhookSecrets;

use crate::faults::Faults;

/// Stands in for Replicate in demos, tests and benchmarks; `demo` and `send` act as the web
/// app and as Replicate by hand.
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

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn command_line_is_well_formed() {
        Cli::command().debug_assert();
    }
}
