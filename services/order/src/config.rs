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

    /// `POST /orders` requests served at once at most; more get 503 `overloaded`. High enough
    /// that a burst is served (beyond the database pool, requests wait for a connection).
    #[arg(long, env = "MAX_IN_FLIGHT_ORDERS", default_value_t = 256)]
    pub max_in_flight_orders: usize,

    /// No new order is taken (503 `overloaded`) while this many sagas are still `PENDING`.
    #[arg(long, env = "MAX_PENDING_ORDERS", default_value_t = 500)]
    pub max_pending_orders: i64,

    /// How often the `PENDING` orders are counted for `MAX_PENDING_ORDERS`.
    #[arg(long, env = "PENDING_ORDERS_REFRESH_MS", default_value_t = 200)]
    pub pending_orders_refresh_ms: u64,

    /// For a sku the catalog replica does not list, how long `POST /orders` waits before
    /// reading the topic's high watermarks, so that a product inventory just committed is
    /// published first (README, Catalog).
    #[arg(long, env = "CATALOG_SETTLE_MS", default_value_t = 500)]
    pub catalog_settle_ms: u64,

    /// Then, how long it waits for the replica to reach those watermarks; if it does not, the
    /// order is accepted and inventory's reservation decides.
    #[arg(long, env = "CATALOG_CATCH_UP_MS", default_value_t = 1_000)]
    pub catalog_catch_up_ms: u64,
}
