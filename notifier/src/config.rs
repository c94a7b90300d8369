//! The notifier's settings: its own plus the shared groups it needs.

use std::net::SocketAddr;

use clap::{Args, Parser, Subcommand};
use shared::config::{AmqpConfig, DatabaseConfig, SecretString, StorageConfig, TelemetryConfig};

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

    /// HS256 key browser tokens are signed with (shared with the web app).
    #[arg(
        long = "jwt-secret",
        env = "NOTIFIER_JWT_SECRET",
        value_name = "NOTIFIER_JWT_SECRET",
        hide_env_values = true
    )]
    pub jwt_secret: SecretString,

    #[command(flatten)]
    pub database: DatabaseConfig,

    #[command(flatten)]
    pub amqp: AmqpConfig,

    #[command(flatten)]
    pub storage: StorageConfig,

    #[command(flatten)]
    pub sockets: SocketConfig,

    #[command(flatten)]
    pub telemetry: TelemetryConfig,
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
    fn defaults_match_the_contract() {
        let cli = Cli::try_parse_from(["notifier", "--jwt-secret", "k"]).unwrap();
        assert_eq!(cli.config.addr.to_string(), "0.0.0.0:8081");
        assert_eq!(cli.config.sockets.ping_secs, 20);
        assert_eq!(cli.config.sockets.idle_timeout_secs, 60);
        let err = Cli::try_parse_from(["notifier"]).unwrap_err();
        assert!(err.to_string().contains("NOTIFIER_JWT_SECRET"), "{err}");
        let token = Cli::try_parse_from(["notifier", "--jwt-secret", "k", "token", "--user", "u1"])
            .unwrap();
        assert!(matches!(
            token.command,
            Some(Command::Token { ttl_secs: 3600, .. })
        ));
    }
}
