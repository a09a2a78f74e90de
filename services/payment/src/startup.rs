//! Wiring: database, Kafka, HTTP routes and the event handler.

use axum::Router;
use shared::service::{Infrastructure, ServiceRunner};
use shared::topics::Topic;
use sqlx::PgPool;

use crate::handler::PaymentEventHandler;
use crate::{routes, Config, SERVICE};

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

/// The payment service, built and bound to its port.
pub struct Application(ServiceRunner);

impl Application {
    pub async fn build(config: Config) -> anyhow::Result<Self> {
        let infrastructure = Infrastructure::start(SERVICE, &config.common, &MIGRATOR).await?;
        let routes = router(infrastructure.pool.clone());
        let handler = PaymentEventHandler {
            charged_version: config.charged_version,
        };
        let consumes = [Topic::Inventory, Topic::Order];
        let runner =
            ServiceRunner::build(infrastructure, config.http_port, routes, &consumes, handler)
                .await?;
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

/// The HTTP API alone, for tests that need no broker.
pub fn router(pool: PgPool) -> Router {
    routes::router(pool)
}

/// Applies this service's migrations (for tests that build the router alone).
pub async fn migrate(pool: &PgPool) -> anyhow::Result<()> {
    shared::db::prepare(pool, &MIGRATOR).await
}
