//! Wiring: the query service's migrations, read API, event handler and catalog replica, run by
//! `shared::service::Service` (which documents start-up, readiness and shutdown). The consumer
//! records its offsets with the views it applies (`records_offsets`), which every response
//! reports and a rebuild catches up to.

use axum::Router;
use shared::replica::{Replica, ReplicaSettings};
use shared::service::{CancellationToken, Service};
use shared::state::ProductCatalog;
use shared::topics::StateTopic;
use shared::topology;
use sqlx::PgPool;

use crate::analytics::{self, Analytics};
use crate::catalog;
use crate::handler::QueryEventHandler;
use crate::{routes, Config, SERVICE};

pub(crate) static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

/// The query service, built and bound to its port.
pub struct Application(Service);

impl Application {
    pub async fn build(config: Config) -> anyhow::Result<Self> {
        let analytics = Analytics::new(&config.analytics);
        let checked = analytics.clone();
        let (served, folded) = (analytics.clone(), analytics.clone());
        let replica = Replica::new(
            &config.common.kafka,
            SERVICE,
            StateTopic::Products,
            ReplicaSettings::default(),
        )?;
        let shown = replica.clone();
        let service = Service::builder(SERVICE, &MIGRATOR, &config.common, config.http_port)
            .routes(move |infrastructure| {
                router_with(infrastructure.pool.clone(), served, Some(shown))
            })
            .consumes(topology::QUERY.consumes, QueryEventHandler { analytics })
            .worker("analytics", move |infrastructure, shutdown| {
                folded.run(infrastructure.pool.clone(), shutdown)
            })
            .worker("catalog-replica", move |infrastructure, shutdown| {
                replica.run(infrastructure.pool.clone(), ProductCatalog, shutdown)
            })
            .records_offsets()
            .build()
            .await?;
        // The migrations are applied; nothing runs yet.
        let pool = shared::db::connect(&config.common.database_url, 1).await?;
        let checked = checked.check_window(&pool).await;
        pool.close().await;
        checked?;
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

/// The HTTP API alone, for tests that need no broker.
pub fn router(pool: PgPool) -> Router {
    router_with(pool, Analytics::default(), None)
}

fn router_with(pool: PgPool, analytics: Analytics, replica: Option<Replica>) -> Router {
    routes::router(pool.clone())
        .merge(analytics::router(pool.clone(), analytics))
        .merge(catalog::router(pool, replica))
}

/// Applies this service's migrations (for tests that build the router alone).
pub async fn migrate(pool: &PgPool) -> anyhow::Result<()> {
    shared::db::prepare(pool, &MIGRATOR).await
}
