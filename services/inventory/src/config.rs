//! The inventory service's settings.

use clap::Parser;
use shared::config::CommonConfig;

#[derive(Debug, Clone, Parser)]
#[command(name = "inventory-service", about = "Sagashop inventory service")]
pub struct Config {
    #[command(flatten)]
    pub common: CommonConfig,

    /// HTTP port (0 picks a free one).
    #[arg(long, env = "HTTP_PORT", default_value_t = 8083)]
    pub http_port: u16,

    /// A reservation no decision (`order.confirmed`/`order.cancelled`) reached this long after it
    /// was made is compensated (`hold_expired`). Keep it well above the order service's
    /// `SAGA_DEADLINE_MS`.
    #[arg(long, env = "HOLD_TIMEOUT_MS", default_value_t = 600_000)]
    pub hold_timeout_ms: u64,

    /// How often expired holds are looked for.
    #[arg(long, env = "HOLD_SWEEP_MS", default_value_t = 1_000)]
    pub hold_sweep_ms: u64,
}
