//! Wiring: database, Kafka, HTTP routes and the event handler.

use std::time::Duration;

use axum::Router;
use shared::service::{Infrastructure, ServiceRunner};
use shared::topics::Topic;
use sqlx::PgPool;

use crate::handler::OrderEventHandler;
use crate::{deadline, routes, Config, SERVICE};

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

/// The order service, built and bound to its port.
pub struct Application(ServiceRunner);

impl Application {
    pub async fn build(config: Config) -> anyhow::Result<Self> {
        let infrastructure = Infrastructure::start(SERVICE, &config.common, &MIGRATOR).await?;
        let outbox = infrastructure.outbox.clone();
        let routes = routes::router(infrastructure.pool.clone(), outbox.clone());
        let handler = OrderEventHandler;
        let consumes = [Topic::Inventory, Topic::Payment, Topic::Shipping];
        let pool = infrastructure.pool.clone();
        let deadline = Duration::from_millis(config.saga_deadline_ms);
        let sweep_every = Duration::from_millis(config.saga_deadline_sweep_ms.max(1));
        let runner =
            ServiceRunner::build(infrastructure, config.http_port, routes, &consumes, handler)
                .await?
                .with_worker(Box::new(move |token| {
                    Box::pin(deadline::run(pool, outbox, deadline, sweep_every, token))
                }));
        Ok(Self(runner))
    }

    pub fn port(&self) -> u16 {
        self.0.port()
    }

    pub fn shutdown_token(&self) -> shared::service::CancellationToken {
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
