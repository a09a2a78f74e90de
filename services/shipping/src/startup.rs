//! Wiring: the shipping service's migrations, HTTP routes and event handler, run by
//! `shared::service::Service` (which documents start-up, readiness and shutdown).

use axum::Router;
use shared::service::{CancellationToken, Service};
use shared::topology;
use sqlx::PgPool;

use crate::domain::Countries;
use crate::handler::ShippingEventHandler;
use crate::{routes, Config, SERVICE};

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

/// The shipping service, built and bound to its port.
pub struct Application(Service);

impl Application {
    pub async fn build(config: Config) -> anyhow::Result<Self> {
        let countries = Countries::parse(&config.countries)?;
        let served = countries.clone();
        Service::builder(SERVICE, &MIGRATOR, &config.common, config.http_port)
            .routes(move |infrastructure| router(infrastructure.pool.clone(), served))
            .consumes(
                topology::SHIPPING.consumes,
                ShippingEventHandler { countries },
            )
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
