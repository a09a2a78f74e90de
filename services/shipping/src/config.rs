//! The shipping service's settings.

use clap::Parser;
use shared::config::CommonConfig;

/// Countries served unless `SHIPPING_COUNTRIES` says otherwise (ISO 3166-1 alpha-2).
pub const DEFAULT_COUNTRIES: &str =
    "AT,AU,BE,CA,CH,DE,DK,ES,FI,FR,GB,IE,IT,JP,NL,NO,NZ,PL,PT,SE,US";

#[derive(Debug, Clone, Parser)]
#[command(name = "shipping-service", about = "Sagashop shipping service")]
pub struct Config {
    #[command(flatten)]
    pub common: CommonConfig,

    /// HTTP port (0 picks a free one).
    #[arg(long, env = "HTTP_PORT", default_value_t = 8084)]
    pub http_port: u16,

    /// Destination countries served, comma separated ISO 3166-1 alpha-2 codes.
    #[arg(long, env = "SHIPPING_COUNTRIES", default_value = DEFAULT_COUNTRIES)]
    pub countries: String,

    /// A scheduled shipment no decision (`order.confirmed`/`order.cancelled`) reached this long after it
    /// was made is compensated (`hold_expired`). Keep it well above the order service's
    /// `SAGA_DEADLINE_MS`.
    #[arg(long, env = "HOLD_TIMEOUT_MS", default_value_t = 600_000)]
    pub hold_timeout_ms: u64,

    /// How often expired holds are looked for.
    #[arg(long, env = "HOLD_SWEEP_MS", default_value_t = 1_000)]
    pub hold_sweep_ms: u64,
}
