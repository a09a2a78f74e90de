//! PostgreSQL connection and schema set-up shared by the services.

use std::time::Duration;

use anyhow::Context;
use sqlx::{migrate::Migrator, postgres::PgPoolOptions, PgPool};

const MESSAGING_SCHEMA: &str = include_str!("../sql/messaging.sql");
/// Serialises schema set-up when several replicas start at once.
const SCHEMA_LOCK_KEY: i64 = 0x5a6a_5001;

/// Connects to `url`, retrying for up to a minute so a service can start before its database.
pub async fn connect(url: &str, max_connections: u32) -> anyhow::Result<PgPool> {
    let options = PgPoolOptions::new()
        .max_connections(max_connections)
        .acquire_timeout(Duration::from_secs(5));
    let mut delay = Duration::from_millis(200);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        match options.clone().connect(url).await {
            Ok(pool) => return Ok(pool),
            Err(error) if tokio::time::Instant::now() < deadline => {
                tracing::warn!(%error, "database not reachable yet; retrying in {delay:?}");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(5));
            }
            Err(error) => return Err(error).context("connecting to PostgreSQL"),
        }
    }
}

/// Creates the outbox and inbox tables, then applies the service's own migrations.
pub async fn prepare(pool: &PgPool, migrator: &Migrator) -> anyhow::Result<()> {
    let mut tx = pool.begin().await?;
    sqlx::query("select pg_advisory_xact_lock($1)")
        .bind(SCHEMA_LOCK_KEY)
        .execute(&mut *tx)
        .await?;
    sqlx::raw_sql(MESSAGING_SCHEMA)
        .execute(&mut *tx)
        .await
        .context("creating the outbox and inbox tables")?;
    tx.commit().await?;
    migrator
        .run(pool)
        .await
        .context("applying the service's migrations")?;
    Ok(())
}

/// Creates a new, uniquely named database on the server `admin_url` points at and returns its
/// URL. For tests: each gets a database nobody else uses.
pub async fn create_fresh_database(admin_url: &str, name_prefix: &str) -> anyhow::Result<String> {
    let name = format!("{name_prefix}_{}", uuid::Uuid::new_v4().simple());
    let mut url = url::Url::parse(admin_url).context("DATABASE_URL is not a URL")?;
    let admin = connect(admin_url, 1).await?;
    sqlx::query(&format!("create database \"{name}\""))
        .execute(&admin)
        .await
        .with_context(|| format!("creating database {name}"))?;
    admin.close().await;
    url.set_path(&name);
    Ok(url.to_string())
}
