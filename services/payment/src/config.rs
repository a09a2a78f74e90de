//! The payment service's settings.

use clap::Parser;
use shared::config::CommonConfig;

#[derive(Debug, Clone, Parser)]
#[command(name = "payment-service", about = "Sagashop payment service")]
pub struct Config {
    #[command(flatten)]
    pub common: CommonConfig,

    /// HTTP port (0 picks a free one).
    #[arg(long, env = "HTTP_PORT", default_value_t = 8082)]
    pub http_port: u16,

    /// The version of `payment.charged` to write: the newest (2) by default. During a rolling
    /// upgrade from a release whose consumers cannot read v2, keep 1 until they all run the new
    /// release.
    #[arg(long, env = "PAYMENT_CHARGED_VERSION", default_value_t = 2, value_parser = clap::value_parser!(u32).range(1..=2))]
    pub charged_version: u32,

    /// A charge no decision (`order.confirmed`/`order.cancelled`) reached this long after it
    /// was made is refunded (`hold_expired`). Keep it well above the order service's
    /// `SAGA_DEADLINE_MS`.
    #[arg(long, env = "HOLD_TIMEOUT_MS", default_value_t = 600_000)]
    pub hold_timeout_ms: u64,

    /// How long a deposit's `Idempotency-Key` is remembered, in milliseconds (0: forever); a
    /// retry after that deposits again. Default: 24 hours.
    #[arg(
        long,
        env = "IDEMPOTENCY_KEY_RETENTION_MS",
        default_value_t = 86_400_000
    )]
    pub idempotency_key_retention_ms: u64,

    /// How often expired holds are looked for.
    #[arg(long, env = "HOLD_SWEEP_MS", default_value_t = 1_000)]
    pub hold_sweep_ms: u64,
}
