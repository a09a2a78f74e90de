//! Wiring: the shipping service's migrations, HTTP routes, event handler and hold expiry
//! worker, run by `shared::service::Service` (which documents start-up, readiness and
//! shutdown).

use std::time::Duration;

use axum::Router;
use shared::retention::{window_from_ms, Rule};
use shared::service::{CancellationToken, Service};
use shared::topology;
use sqlx::PgPool;

use crate::domain::Countries;
use crate::handler::ShippingEventHandler;
use crate::{hold_expiry, routes, Config, SERVICE};

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

/// `VOIDED` shipments (an order cancelled before this service acted on it) are what makes
/// a late `payment.charged` for that order harmless. One can arrive as late as the broker can still
/// deliver it, which is what the inbox window covers (README, Retention), so they are kept as
/// long, then pruned (`INBOX_RETENTION_MS`; 0 keeps them forever).
pub fn voided_retention(inbox_retention_ms: u64) -> Rule {
    Rule {
        table: "shipments",
        timestamp_column: "updated_at",
        window: window_from_ms(inbox_retention_ms),
        only: Some("status = 'VOIDED'"),
    }
}

/// The shipping service, built and bound to its port.
pub struct Application(Service);

impl Application {
    pub async fn build(config: Config) -> anyhow::Result<Self> {
        let countries = Countries::parse(&config.countries)?;
        let served = countries.clone();
        let expiring = countries.clone();
        let hold_timeout = Duration::from_millis(config.hold_timeout_ms);
        let sweep_every = Duration::from_millis(config.hold_sweep_ms.max(1));
        Service::builder(SERVICE, &MIGRATOR, &config.common, config.http_port)
            .routes(move |infrastructure| router(infrastructure.pool.clone(), served))
            .consumes(
                topology::SHIPPING.consumes,
                ShippingEventHandler { countries },
            )
            .retain(voided_retention(config.common.retention.inbox_retention_ms))
            .worker("hold-expiry", move |infrastructure, shutdown| {
                let (pool, tracer) = (infrastructure.pool.clone(), infrastructure.tracer.clone());
                shared::periodic::run_every(
                    "hold-expiry",
                    sweep_every,
                    infrastructure.outbox.clone(),
                    shutdown,
                    move || {
                        let (pool, tracer, countries) =
                            (pool.clone(), tracer.clone(), expiring.clone());
                        async move {
                            hold_expiry::sweep(&pool, &tracer, &countries, hold_timeout).await
                        }
                    },
                )
            })
            .build()
            .await
            .map(Self)
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

/// The HTTP API alone, for tests that need no broker.
pub fn router(pool: PgPool, countries: Countries) -> Router {
    routes::router(pool, countries)
}

/// Applies this service's migrations (for tests that build the router alone).
pub async fn migrate(pool: &PgPool) -> anyhow::Result<()> {
    shared::db::prepare(pool, &MIGRATOR).await
}
