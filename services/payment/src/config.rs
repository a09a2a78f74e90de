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
}
