//! Wiring: the inventory service's migrations, HTTP routes, event handler and hold expiry
//! worker, run by `shared::service::Service` (which documents start-up, readiness and
//! shutdown).

use std::time::Duration;

use axum::Router;
use shared::retention::{window_from_ms, Rule};
use shared::service::{CancellationToken, Service};
use shared::topology;
use sqlx::PgPool;

use crate::handler::InventoryEventHandler;
use crate::{hold_expiry, routes, Config, SERVICE};

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

/// `VOIDED` reservations (an order cancelled before this service acted on it) are what makes
/// a late `order.created` for that order harmless. One can arrive as late as the broker can still
/// deliver it, which is what the inbox window covers (README, Retention), so they are kept as
/// long, then pruned (`INBOX_RETENTION_MS`; 0 keeps them forever).
pub fn voided_retention(inbox_retention_ms: u64) -> Rule {
    Rule {
        table: "reservations",
        timestamp_column: "updated_at",
        window: window_from_ms(inbox_retention_ms),
        only: Some("status = 'VOIDED'"),
    }
}

/// The inventory service, built and bound to its port.
pub struct Application(Service);

impl Application {
    pub async fn build(config: Config) -> anyhow::Result<Self> {
        let hold_timeout = Duration::from_millis(config.hold_timeout_ms);
        let sweep_every = Duration::from_millis(config.hold_sweep_ms.max(1));
        let service = Service::builder(SERVICE, &MIGRATOR, &config.common, config.http_port)
            .routes(|infrastructure| {
                routes::router(infrastructure.pool.clone(), infrastructure.outbox.clone())
            })
            .consumes(topology::INVENTORY.consumes, InventoryEventHandler)
            .retain(voided_retention(config.common.retention.inbox_retention_ms))
            .worker("hold-expiry", move |infrastructure, shutdown| {
                let (pool, tracer) = (infrastructure.pool.clone(), infrastructure.tracer.clone());
                shared::periodic::run_every(
                    "hold-expiry",
                    sweep_every,
                    infrastructure.outbox.clone(),
                    shutdown,
                    move || {
                        let (pool, tracer) = (pool.clone(), tracer.clone());
                        async move { hold_expiry::sweep(&pool, &tracer, hold_timeout).await }
                    },
                )
            })
            .build()
            .await?;
        // Exported from the start (0, once the recorder is installed by `build`), so the
        // dashboard's panel and the alert's `increase()` see the first failure.
        metrics::counter!("sagashop_compensation_failures_total", "service" => SERVICE, "step" => "inventory.release")
            .increment(0);
        Ok(Self(service))
    }

    pub fn port(&self) -> u16 {
        self.0.port()
    }

    pub fn shutdown_token(&self) -> CancellationToken {
        self.0.shutdown_token()
    }

    pub async fn run_until_stopped(self) -> anyhow::Result<()> {
        self.0.run_until_stopped().await
    }
}

/// The HTTP API alone, for tests that need no broker (no relay publishes what it writes).
pub fn router(pool: PgPool) -> Router {
    routes::router(pool.clone(), shared::outbox::OutboxSignal::new(pool))
}

/// Applies this service's migrations (for tests that build the router alone).
pub async fn migrate(pool: &PgPool) -> anyhow::Result<()> {
    shared::db::prepare(pool, &MIGRATOR).await
}
