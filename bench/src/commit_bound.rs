//! The database reference: how many transactions shaped like a consumer's the server commits
//! per second. On a scratch database with the services' own outbox and inbox schema
//! (`shared/sql/messaging.sql`, with whatever indexes and triggers it declares), N connections
//! each loop over: insert an inbox row, update one of a few state rows, insert an outbox row
//! with an envelope-sized jsonb, commit.

use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use devenv::Stop;
use serde::Serialize;
use serde_json::json;
use sqlx::postgres::PgPoolOptions;
use uuid::Uuid;

use crate::stack::{database_name, drop_databases};
use crate::stats::{rate, Summary};

/// The services' outbox and inbox tables.
const MESSAGING_SCHEMA: &str = include_str!("../../shared/sql/messaging.sql");

/// State rows the transactions update (like a handful of hot products or accounts).
const STATE_ROWS: i32 = 16;

#[derive(Debug, Clone, Serialize)]
pub struct CommitBound {
    pub connections: u32,
    pub seconds: f64,
    pub commits: u64,
    pub commits_per_s: f64,
    /// Per transaction, in milliseconds.
    pub latency: Summary,
}

/// Measures on a fresh database on the server `admin_url` points at (dropped afterwards).
pub async fn measure(
    admin_url: &str,
    connections: u32,
    duration: Duration,
    stop: &Stop,
) -> Result<CommitBound> {
    let url = shared::db::create_fresh_database(admin_url, "bench_commit_bound").await?;
    let result = stop.guard(run(&url, connections, duration)).await;
    drop_databases(admin_url, &[database_name(&url)]).await?;
    result
}

async fn run(url: &str, connections: u32, duration: Duration) -> Result<CommitBound> {
    let pool = PgPoolOptions::new()
        .max_connections(connections)
        .connect(url)
        .await
        .context("connecting to the commit-bound database")?;
    sqlx::raw_sql(MESSAGING_SCHEMA).execute(&pool).await?;
    sqlx::raw_sql(&format!(
        "create table state (id integer primary key, counter bigint not null,
                             updated_at timestamptz not null default now());
         insert into state (id, counter) select g, 0 from generate_series(1, {STATE_ROWS}) g;"
    ))
    .execute(&pool)
    .await?;
    let envelope = envelope();
    let started = Instant::now();
    let deadline = started + duration;
    let mut workers = Vec::new();
    for _ in 0..connections {
        let pool = pool.clone();
        let envelope = envelope.clone();
        workers.push(tokio::spawn(async move {
            let mut conn = pool.acquire().await?;
            let mut latencies = Vec::new();
            while Instant::now() < deadline {
                let begun = Instant::now();
                transaction(&mut conn, &envelope).await?;
                latencies.push(begun.elapsed().as_secs_f64() * 1000.0);
            }
            anyhow::Ok(latencies)
        }));
    }
    let mut latencies = Vec::new();
    for worker in workers {
        latencies.extend(worker.await??);
    }
    let seconds = started.elapsed().as_secs_f64();
    pool.close().await;
    let commits = latencies.len() as u64;
    Ok(CommitBound {
        connections,
        seconds,
        commits,
        commits_per_s: rate(commits, seconds).unwrap_or(0.0),
        latency: Summary::of(&latencies),
    })
}

/// An `inventory.reserved.v1`-like envelope of about 500 bytes.
fn envelope() -> serde_json::Value {
    json!({
        "id": Uuid::now_v7(),
        "type": "inventory.reserved.v1",
        "source": "inventory-service",
        "occurred_at": chrono::Utc::now(),
        "order_id": Uuid::new_v4(),
        "causation_id": Uuid::now_v7(),
        "payload": {
            "total_cents": 900,
            "lines": [{"sku": "sku-1", "quantity": 2, "unit_price_cents": 450}],
            "note": "x".repeat(200),
        },
    })
}

async fn transaction(conn: &mut sqlx::PgConnection, envelope: &serde_json::Value) -> Result<()> {
    use sqlx::Connection;
    let mut tx = conn.begin().await?;
    let event_id = Uuid::now_v7();
    sqlx::query(
        "insert into inbox (event_id, event_type, topic, kafka_partition, kafka_offset)
         values ($1, 'order.created.v1', 'order.events', 0, 0)",
    )
    .bind(event_id)
    .execute(&mut *tx)
    .await?;
    let row = (Uuid::new_v4().as_u128() % STATE_ROWS as u128) as i32 + 1;
    sqlx::query("update state set counter = counter + 1, updated_at = now() where id = $1")
        .bind(row)
        .execute(&mut *tx)
        .await?;
    sqlx::query(
        "insert into outbox (event_id, topic, message_key, event_type, envelope)
         values ($1, 'inventory.events', $2, 'inventory.reserved.v1', $3)",
    )
    .bind(Uuid::now_v7())
    .bind(event_id.to_string())
    .bind(envelope)
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_envelope_is_about_500_bytes() {
        let size = super::envelope().to_string().len();
        assert!((400..650).contains(&size), "{size}");
    }
}
