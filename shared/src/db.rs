//! PostgreSQL connection and schema set-up shared by the services, and the privileges of a
//! service's runtime role when a separate owner role runs the migrations (README, Security).

use std::str::FromStr;
use std::time::Duration;

use sqlx::Connection;

use anyhow::Context;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{migrate::Migrator, PgPool};

const MESSAGING_SCHEMA: &str = include_str!("../sql/messaging.sql");
/// Serialises schema set-up when several replicas start at once.
const SCHEMA_LOCK_KEY: i64 = 0x5a6a_5001;

/// Server-side limits set on every connection of a pool (`Duration::ZERO`: no limit).
#[derive(Debug, Clone, Copy, Default)]
pub struct Limits {
    /// `statement_timeout`: a longer statement is cancelled (SQLSTATE 57014).
    pub statement_timeout: Duration,
    /// `lock_timeout`: a longer wait for a lock fails (SQLSTATE 55P03).
    pub lock_timeout: Duration,
}

/// Connects to `url` with no limits, retrying for up to a minute so a service can start
/// before its database.
pub async fn connect(url: &str, max_connections: u32) -> anyhow::Result<PgPool> {
    connect_with_limits(url, max_connections, Limits::default()).await
}

/// Connects to `url`, every connection (the pool's, and those built from its options: the
/// relay's leader connection and listener) with `limits`; retries for up to a minute.
pub async fn connect_with_limits(
    url: &str,
    max_connections: u32,
    limits: Limits,
) -> anyhow::Result<PgPool> {
    let millis = |limit: Duration| limit.as_millis().to_string();
    let connect_options: PgConnectOptions = url
        .parse()
        .context("DATABASE_URL is not a PostgreSQL URL")?;
    let connect_options = connect_options.options([
        ("statement_timeout", millis(limits.statement_timeout)),
        ("lock_timeout", millis(limits.lock_timeout)),
    ]);
    let options = PgPoolOptions::new()
        .max_connections(max_connections)
        .acquire_timeout(Duration::from_secs(5));
    let mut delay = Duration::from_millis(200);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        match options.clone().connect_with(connect_options.clone()).await {
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

/// Creates the outbox and inbox tables, then applies the service's own migrations, on a
/// connection of its own without the pool's limits: replicas starting together wait for each
/// other's schema lock as long as it takes, and a long migration is not cancelled.
///
/// `messaging.sql` runs only when this database has not yet applied its exact text (recorded by
/// digest in `messaging_schema`): its `create index` and `alter table` lock the outbox and inbox
/// in one transaction, which deadlocks against a running replica writing both. An instance
/// starting beside running replicas of the same version therefore takes no table lock; the first
/// start of a new version may still lose a deadlock against an older replica, and is retried.
pub async fn prepare(pool: &PgPool, migrator: &Migrator) -> anyhow::Result<()> {
    let mut conn = pool.acquire().await?.detach();
    sqlx::raw_sql("set statement_timeout = 0; set lock_timeout = 0")
        .execute(&mut conn)
        .await?;
    let mut delay = Duration::from_millis(100);
    for attempt in 1.. {
        match apply_messaging_schema(&mut conn).await {
            Ok(()) => break,
            Err(error) if attempt < 8 && is_deadlock(&error) => {
                tracing::warn!(%error, attempt, "messaging schema lost a deadlock; retrying in {delay:?}");
                tokio::time::sleep(delay).await;
                delay *= 2;
            }
            Err(error) => return Err(error).context("creating the outbox and inbox tables"),
        }
    }
    migrator
        .run(&mut conn)
        .await
        .context("applying the service's migrations")?;
    conn.close().await?;
    Ok(())
}

async fn apply_messaging_schema(conn: &mut sqlx::PgConnection) -> Result<(), sqlx::Error> {
    let mut tx = conn.begin().await?;
    sqlx::query("select pg_advisory_xact_lock($1)")
        .bind(SCHEMA_LOCK_KEY)
        .execute(&mut *tx)
        .await?;
    // `create table if not exists` on an existing table locks nothing but the schema's name.
    sqlx::raw_sql(
        "create table if not exists messaging_schema (
             digest     text primary key,
             applied_at timestamptz not null default now()
         )",
    )
    .execute(&mut *tx)
    .await?;
    let applied: bool =
        sqlx::query_scalar("select exists (select 1 from messaging_schema where digest = md5($1))")
            .bind(MESSAGING_SCHEMA)
            .fetch_one(&mut *tx)
            .await?;
    if !applied {
        sqlx::raw_sql(MESSAGING_SCHEMA).execute(&mut *tx).await?;
        sqlx::query("insert into messaging_schema (digest) values (md5($1))")
            .bind(MESSAGING_SCHEMA)
            .execute(&mut *tx)
            .await?;
    }
    tx.commit().await
}

fn is_deadlock(error: &sqlx::Error) -> bool {
    error
        .as_database_error()
        .and_then(|error| error.code())
        .is_some_and(|code| code == "40P01")
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

#[cfg(test)]
mod tests {
    //! Against the real PostgreSQL of `cargo xtask test` (`DATABASE_URL`).

    use super::*;
    use crate::HandlerError;

    const STATEMENT_LIMIT: Duration = Duration::from_millis(1_000);
    const LOCK_LIMIT: Duration = Duration::from_millis(300);

    async fn limited_pool() -> PgPool {
        let admin = std::env::var("DATABASE_URL")
            .expect("DATABASE_URL is not set: run the tests with `cargo xtask test`");
        let url = create_fresh_database(&admin, "shared_db")
            .await
            .expect("a database");
        let limits = Limits {
            statement_timeout: STATEMENT_LIMIT,
            lock_timeout: LOCK_LIMIT,
        };
        connect_with_limits(&url, 3, limits)
            .await
            .expect("connecting")
    }

    /// A statement over `statement_timeout` (57014) and a lock wait over `lock_timeout`
    /// (55P03) fail instead of hanging, and a consumer retries both as transient.
    #[tokio::test]
    async fn long_statements_and_lock_waits_fail_and_are_transient() {
        let pool = limited_pool().await;
        let slow = sqlx::query("select pg_sleep(5)")
            .execute(&pool)
            .await
            .expect_err("a 5 s statement outlives a 1 s statement_timeout");
        let code = slow.as_database_error().and_then(|e| e.code());
        assert_eq!(code.as_deref(), Some("57014"), "{slow}");
        assert!(matches!(
            HandlerError::from(slow),
            HandlerError::Database(_)
        ));

        sqlx::raw_sql("create table rows (id int primary key); insert into rows values (1)")
            .execute(&pool)
            .await
            .expect("a table");
        let mut holder = pool.begin().await.expect("begin");
        sqlx::query("select id from rows where id = 1 for update")
            .execute(&mut *holder)
            .await
            .expect("locking the row");
        let started = tokio::time::Instant::now();
        let waited = sqlx::query("update rows set id = 1 where id = 1")
            .execute(&pool)
            .await
            .expect_err("the row is locked for longer than lock_timeout");
        assert!(
            started.elapsed() < Duration::from_secs(3),
            "{:?}",
            started.elapsed()
        );
        let code = waited.as_database_error().and_then(|e| e.code());
        assert_eq!(code.as_deref(), Some("55P03"), "{waited}");
        assert!(matches!(
            HandlerError::from(waited),
            HandlerError::Database(_)
        ));
        holder.rollback().await.expect("rollback");
    }

    /// Schema set-up waits for another replica's schema lock for as long as it is held, and
    /// runs without the pool's statement timeout.
    #[tokio::test]
    async fn schema_set_up_is_not_limited() {
        let pool = limited_pool().await;
        let mut other_replica = pool.begin().await.expect("begin");
        sqlx::query("select pg_advisory_xact_lock($1)")
            .bind(SCHEMA_LOCK_KEY)
            .execute(&mut *other_replica)
            .await
            .expect("taking the schema lock");
        let release = async {
            tokio::time::sleep(STATEMENT_LIMIT * 2).await;
            other_replica
                .rollback()
                .await
                .expect("releasing the schema lock");
        };
        let (prepared, ()) = tokio::join!(prepare(&pool, &Migrator::DEFAULT), release);
        prepared.expect("schema set-up waits for the lock instead of failing");
    }

    /// A second instance starting beside a running one takes no lock on the outbox or the inbox
    /// (a running replica's transaction holds both while it applies an event: the first
    /// version's `create index if not exists` waited for it, and deadlocked against it).
    #[tokio::test]
    async fn a_second_start_takes_no_lock_on_the_messaging_tables() {
        let pool = limited_pool().await;
        prepare(&pool, &Migrator::DEFAULT)
            .await
            .expect("the first start");
        let mut running_replica = pool.begin().await.expect("begin");
        sqlx::raw_sql(
            "insert into inbox (event_id, event_type, topic, kafka_partition, kafka_offset)
             values (gen_random_uuid(), 'test', 'test', 0, 0);
             insert into outbox (event_id, topic, message_key, event_type, envelope)
             values (gen_random_uuid(), 'test', 'key', 'test', '{}')",
        )
        .execute(&mut *running_replica)
        .await
        .expect("a replica's transaction writing both tables");
        tokio::time::timeout(Duration::from_secs(10), prepare(&pool, &Migrator::DEFAULT))
            .await
            .expect("the second start waits for no table lock")
            .expect("the second start");
        running_replica.rollback().await.expect("rollback");
    }
}
