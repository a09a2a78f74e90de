//! Wiring: the order service's migrations, HTTP routes, event handler, saga deadline sweeper
//! and idempotency-key retention, run by `shared::service::Service` (which documents start-up,
//! readiness and shutdown).

use std::time::Duration;

use axum::Router;
use shared::replica::{Replica, ReplicaSettings};
use shared::retention::{window_from_ms, Rule};
use shared::service::{CancellationToken, Service};
use shared::state::ProductCatalog;
use shared::topics::StateTopic;
use shared::topology;
use sqlx::PgPool;

use crate::admission::{self, Admission};
use crate::catalog::Catalog;
use crate::handler::OrderEventHandler;
use crate::{deadline, routes, Config, SERVICE};

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

/// The order service, built and bound to its port.
pub struct Application(Service);

impl Application {
    pub async fn build(config: Config) -> anyhow::Result<Self> {
        let saga_deadline = Duration::from_millis(config.saga_deadline_ms);
        let sweep_every = Duration::from_millis(config.saga_deadline_sweep_ms.max(1));
        let count_every = Duration::from_millis(config.pending_orders_refresh_ms.max(1));
        let admission = Admission::new(config.max_in_flight_orders, config.max_pending_orders);
        let backlog = admission.clone();
        let replica = Replica::new(
            &config.common.kafka,
            SERVICE,
            StateTopic::Products,
            ReplicaSettings::default(),
        )?;
        let catalog = Catalog::new(
            Some(replica.clone()),
            Duration::from_millis(config.catalog_settle_ms),
            Duration::from_millis(config.catalog_catch_up_ms),
        );
        let service = Service::builder(SERVICE, &MIGRATOR, &config.common, config.http_port)
            .routes(|infrastructure| {
                routes::router(
                    infrastructure.pool.clone(),
                    infrastructure.outbox.clone(),
                    admission,
                    catalog,
                )
            })
            .consumes(
                topology::ORDER.consumes,
                OrderEventHandler { saga_deadline },
            )
            .retain(idempotency_key_retention(
                config.idempotency_key_retention_ms,
            ))
            .worker("saga-deadline", move |infrastructure, shutdown| {
                deadline::run(
                    infrastructure.pool.clone(),
                    infrastructure.outbox.clone(),
                    infrastructure.tracer.clone(),
                    saga_deadline,
                    sweep_every,
                    shutdown,
                )
            })
            .worker("catalog-replica", move |infrastructure, shutdown| {
                replica.run(infrastructure.pool.clone(), ProductCatalog, shutdown)
            })
            .worker("pending-orders", move |infrastructure, shutdown| {
                admission::watch_backlog(
                    infrastructure.pool.clone(),
                    backlog,
                    count_every,
                    shutdown,
                )
            })
            .build()
            .await?;
        // Once `build` installed the recorder: what `sagashop_saga_oldest_pending_seconds` is
        // compared with (the stuck-saga alert), and the shed counters at 0, so a dashboard's
        // rate() has a series before any request is shed.
        metrics::gauge!("sagashop_saga_deadline_seconds", "service" => SERVICE)
            .set(saga_deadline.as_secs_f64());
        for bound in ["pending", "in_flight"] {
            metrics::counter!("sagashop_orders_shed_total", "bound" => bound).increment(0);
        }
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

/// Idempotency keys are forgotten `retention_ms` (`IDEMPOTENCY_KEY_RETENTION_MS`) after the
/// first request that used them; 0 keeps them forever.
pub fn idempotency_key_retention(retention_ms: u64) -> Rule {
    Rule {
        table: "idempotency_keys",
        timestamp_column: "created_at",
        window: window_from_ms(retention_ms),
        only: None,
    }
}

/// The HTTP API alone, for tests that need no broker (no relay publishes what it writes), with
/// no backlog bound (nothing recounts the backlog) and no catalog replica (no sku is refused).
pub fn router(pool: PgPool) -> Router {
    let admission = Admission::new(64, i64::MAX);
    let catalog = Catalog::new(None, Duration::ZERO, Duration::ZERO);
    routes::router(
        pool.clone(),
        shared::outbox::OutboxSignal::new(pool),
        admission,
        catalog,
    )
}

/// Applies this service's migrations (for tests that build the router alone).
pub async fn migrate(pool: &PgPool) -> anyhow::Result<()> {
    shared::db::prepare(pool, &MIGRATOR).await
}
