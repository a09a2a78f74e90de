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
}
