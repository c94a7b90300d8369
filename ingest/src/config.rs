//! The ingest service's settings: its own plus the shared groups it needs.

use std::net::SocketAddr;

use clap::{Args, Parser};
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

    #[command(flatten)]
    pub body: BodyConfig,

    #[command(flatten)]
    pub webhook: WebhookConfig,

    #[command(flatten)]
    pub amqp: AmqpConfig,

    #[command(flatten)]
    pub telemetry: TelemetryConfig,
}

/// How much memory unauthenticated bodies may take, and for how long.
#[derive(Debug, Clone, Args)]
pub struct BodyConfig {
    /// A webhook's body must arrive within this many seconds (else 408).
    #[arg(
        long = "body-timeout-secs",
        env = "WEBHOOK_BODY_TIMEOUT_SECS",
        default_value_t = 10
    )]
    pub timeout_secs: u64,

    /// Bodies being read at once, each buffering up to 64 KiB (beyond: 503).
    #[arg(long = "body-slots", env = "WEBHOOK_BODY_SLOTS", default_value_t = 512)]
    pub slots: usize,

    /// Memory shared by the bytes of bodies beyond their first 64 KiB (beyond: 503).
    #[arg(
        long = "body-budget-bytes",
        env = "WEBHOOK_BODY_BUDGET_BYTES",
        default_value_t = 64 * 1024 * 1024
    )]
    pub budget_bytes: usize,
}

impl IngestConfig {
    /// The defaults on port 0, for tests: webhooks signed with `secret`, at most
    /// `max_body_bytes` each, confirmed within `publish_timeout_ms`, on the given broker.
    pub fn for_test(
        secret: shared::webhook::WebhookSecret,
        max_body_bytes: usize,
        publish_timeout_ms: u64,
        amqp: AmqpConfig,
    ) -> Self {
        Self {
            addr: "127.0.0.1:0".parse().expect("an address"),
            publish_timeout_ms,
            shutdown_timeout_secs: 5,
            body: BodyConfig::default(),
            webhook: WebhookConfig {
                secrets: shared::webhook::WebhookSecrets::new(vec![secret]).expect("one secret"),
                tolerance_secs: 300,
                max_body_bytes,
            },
            amqp,
            telemetry: TelemetryConfig {
                log_format: shared::config::LogFormat::Pretty,
            },
        }
    }
}

impl Default for BodyConfig {
    fn default() -> Self {
        Self {
            timeout_secs: 10,
            slots: 512,
            budget_bytes: 64 * 1024 * 1024,
        }
    }
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
    fn body_defaults_are_the_documented_ones() {
        let config = IngestConfig::try_parse_from([
            "ingest",
            "--webhook-secret",
            "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
        ])
        .unwrap();
        let defaults = BodyConfig::default();
        assert_eq!(
            (
                config.body.timeout_secs,
                config.body.slots,
                config.body.budget_bytes
            ),
            (defaults.timeout_secs, defaults.slots, defaults.budget_bytes)
        );
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
