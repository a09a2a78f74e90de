//! PostgreSQL connection and schema set-up shared by the services, and the privileges of a
//! service's runtime role when a separate owner role runs the migrations (README, Security).

use std::str::FromStr;
use std::time::Duration;

use anyhow::Context;
use sqlx::migrate::Migrator;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::PgPool;

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

/// Lets `runtime_role` use what the migrations created, and nothing more: connect to the
/// database, use schema `public` (but not create in it), read and write every table's rows and
/// draw from its sequences. Tables the migrations create later get the same through default
/// privileges. Run on `owner`, a pool of the role that owns the database and ran the migrations;
/// granting again what a role already has changes nothing, so every start-up runs it.
pub async fn grant_runtime_privileges(owner: &PgPool, runtime_role: &str) -> anyhow::Result<()> {
    let role = quote_identifier(runtime_role);
    let mut tx = owner.begin().await?;
    sqlx::query("select pg_advisory_xact_lock($1)")
        .bind(SCHEMA_LOCK_KEY)
        .execute(&mut *tx)
        .await?;
    let database: String = sqlx::query_scalar("select current_database()")
        .fetch_one(&mut *tx)
        .await?;
    let statements = [
        format!(
            "grant connect on database {} to {role}",
            quote_identifier(&database)
        ),
        "revoke create on schema public from public".to_owned(),
        format!("grant usage on schema public to {role}"),
        format!("grant select, insert, update, delete on all tables in schema public to {role}"),
        format!("grant usage, select on all sequences in schema public to {role}"),
        format!(
            "alter default privileges in schema public \
             grant select, insert, update, delete on tables to {role}"
        ),
        format!(
            "alter default privileges in schema public grant usage, select on sequences to {role}"
        ),
    ];
    for statement in statements {
        sqlx::query(&statement)
            .execute(&mut *tx)
            .await
            .with_context(|| format!("granting the runtime role its privileges: {statement}"))?;
    }
    // sqlx's own bookkeeping is for the migrating role alone.
    let has_migrations_table: bool =
        sqlx::query_scalar("select to_regclass('_sqlx_migrations') is not null")
            .fetch_one(&mut *tx)
            .await?;
    if has_migrations_table {
        sqlx::query(&format!("revoke all on table _sqlx_migrations from {role}"))
            .execute(&mut *tx)
            .await?;
    }
    tx.commit().await?;
    Ok(())
}

/// Connects as the migration (owner) role at `migration_url`, creates the schema (see
/// [`prepare`]), grants the role of `runtime_url` what it needs
/// ([`grant_runtime_privileges`]) and disconnects.
pub async fn prepare_as_owner(
    migration_url: &str,
    runtime_url: &str,
    migrator: &Migrator,
) -> anyhow::Result<()> {
    let runtime_role = role_of(runtime_url)?;
    let owner = connect(migration_url, 1).await?;
    prepare(&owner, migrator).await?;
    grant_runtime_privileges(&owner, &runtime_role).await?;
    owner.close().await;
    Ok(())
}

/// The user name in a `postgres://user:password@host/database` URL.
fn role_of(url: &str) -> anyhow::Result<String> {
    let options = PgConnectOptions::from_str(url).context("DATABASE_URL is not a valid URL")?;
    Ok(options.get_username().to_owned())
}

/// `name` as a PostgreSQL identifier, quoted.
fn quote_identifier(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
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
