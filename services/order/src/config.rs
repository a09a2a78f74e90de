//! The order service's settings.

use clap::Parser;
use shared::config::CommonConfig;

#[derive(Debug, Clone, Parser)]
#[command(name = "order-service", about = "Sagashop order service")]
pub struct Config {
    #[command(flatten)]
    pub common: CommonConfig,

    /// HTTP port (0 picks a free one).
    #[arg(long, env = "HTTP_PORT", default_value_t = 8081)]
    pub http_port: u16,

    /// A saga still `PENDING` this long after the order was placed is cancelled (`timeout`).
    #[arg(long, env = "SAGA_DEADLINE_MS", default_value_t = 60_000)]
    pub saga_deadline_ms: u64,

    /// How often overdue sagas are looked for.
    #[arg(long, env = "SAGA_DEADLINE_SWEEP_MS", default_value_t = 1_000)]
    pub saga_deadline_sweep_ms: u64,

    /// How long an `Idempotency-Key` is remembered, in milliseconds (0: forever); a retry
    /// after that places a new order. Default: 24 hours.
    #[arg(
        long,
        env = "IDEMPOTENCY_KEY_RETENTION_MS",
        default_value_t = 86_400_000
    )]
    pub idempotency_key_retention_ms: u64,
}
