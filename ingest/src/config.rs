//! The ingest service's settings: its own plus the shared groups it needs.

use std::net::SocketAddr;

use clap::Parser;
use shared::config::{AmqpConfig, TelemetryConfig, WebhookConfig};

/// Receives Replicate webhooks, verifies their Standard Webhooks signature and enqueues them
/// to RabbitMQ, answering 200 only once the broker has confirmed the message.
#[derive(Debug, Clone, Parser)]
#[command(
    name = "ingest",
    version,
    after_help = "Also: `ingest secret fetch` prints the account's signing secret (needs REPLICATE_API_TOKEN)."
)]
pub struct IngestConfig {
    /// Address the HTTP server listens on (port 0 picks a free port).
    #[arg(long, env = "INGEST_ADDR", default_value = "0.0.0.0:8080")]
    pub addr: SocketAddr,

    /// How long a webhook waits for the broker's publisher confirm before it is answered 503.
    #[arg(long, env = "PUBLISH_TIMEOUT_MS", default_value_t = 3000)]
    pub publish_timeout_ms: u64,

    /// How long a shutdown waits for in-flight requests and their confirms.
    #[arg(long, env = "SHUTDOWN_TIMEOUT_SECS", default_value_t = 30)]
    pub shutdown_timeout_secs: u64,

    /// A webhook's body must arrive within this many seconds (else 408).
    #[arg(long, env = "WEBHOOK_BODY_TIMEOUT_SECS", default_value_t = 10)]
    pub body_timeout_secs: u64,

    /// Bodies being read at once, each buffering up to 64 KiB (beyond: 503).
    #[arg(long, env = "WEBHOOK_BODY_SLOTS", default_value_t = 512)]
    pub body_slots: usize,

    /// Memory shared by the bytes of bodies beyond their first 64 KiB (beyond: 503).
    #[arg(long, env = "WEBHOOK_BODY_BUDGET_BYTES", default_value_t = 64 * 1024 * 1024)]
    pub body_budget_bytes: usize,

    #[command(flatten)]
    pub webhook: WebhookConfig,

    #[command(flatten)]
    pub amqp: AmqpConfig,

    #[command(flatten)]
    pub telemetry: TelemetryConfig,
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn command_line_is_well_formed() {
        IngestConfig::command().debug_assert();
    }

    #[test]
    fn the_secret_is_required() {
        let err = IngestConfig::try_parse_from(["ingest"]).unwrap_err();
        assert!(
            err.to_string().contains("REPLICATE_WEBHOOK_SECRET"),
            "{err}"
        );
    }
}
