//! What can go wrong, on purpose: duplicated, reordered and delayed webhooks; failed and
//! cancelled jobs; output URLs that 404. All off by default.

use clap::Args;

#[derive(Debug, Clone, Copy, Args)]
pub struct Faults {
    /// Fraction of webhooks sent twice (same webhook-id).
    #[arg(long, default_value_t = 0.0)]
    pub duplicate_rate: f64,
    /// Fraction of intermediate webhooks held back and sent after the next one.
    #[arg(long, default_value_t = 0.0)]
    pub reorder_rate: f64,
    /// Largest random delay before a webhook is sent, in milliseconds.
    #[arg(long, default_value_t = 0)]
    pub max_delay_ms: u64,
    /// Fraction of jobs that fail.
    #[arg(long, default_value_t = 0.0)]
    pub fail_rate: f64,
    /// Fraction of jobs cancelled while running.
    #[arg(long, default_value_t = 0.0)]
    pub cancel_rate: f64,
    /// Fraction of succeeded image jobs whose output URLs answer 404.
    #[arg(long, default_value_t = 0.0)]
    pub missing_output_rate: f64,
    /// Scales the terminal webhook's retry backoff (1 + 2 + … + 32 s, as Replicate's); below
    /// 1 for quick chaos runs.
    #[arg(long, default_value_t = 1.0)]
    pub retry_scale: f64,
    /// Milliseconds the answer to a creation is held back while the job already runs and
    /// sends its webhooks (Replicate under load: `start` arrives before the id).
    #[arg(long, default_value_t = 0)]
    pub create_delay_ms: u64,
}

impl Default for Faults {
    fn default() -> Self {
        Self {
            duplicate_rate: 0.0,
            reorder_rate: 0.0,
            max_delay_ms: 0,
            fail_rate: 0.0,
            cancel_rate: 0.0,
            missing_output_rate: 0.0,
            retry_scale: 1.0,
            create_delay_ms: 0,
        }
    }
}

/// True with probability `rate`.
pub fn chance(rate: f64) -> bool {
    rate > 0.0 && fastrand::f64() < rate
}
