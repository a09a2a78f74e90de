//! The windows in PostgreSQL: per-order facts and cell deltas written in the consumer's
//! transaction, the fold that moves deltas into cells, and the reads.

use std::collections::BTreeMap;

use chrono::{DateTime, TimeZone, Utc};
use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

use super::window::WindowMetrics;
use super::window::{fold_cells, observe, Cell, Metric, Observation, OrderFacts, WindowConfig};

fn millis(ms: i64) -> DateTime<Utc> {
    Utc.timestamp_millis_opt(ms)
        .single()
        .unwrap_or(DateTime::<Utc>::MIN_UTC)
}

/// Applies one event of `order_id` at `at`, in the caller's transaction: locks and updates the
/// order's facts, appends the cells' deltas. Returns whether the event was late.
pub async fn apply(
    conn: &mut PgConnection,
    config: &WindowConfig,
    order_id: Uuid,
    at: DateTime<Utc>,
    observation: &Observation,
) -> Result<bool, sqlx::Error> {
    // Creates the order's row if need be and locks it: an order's events from other topics
    // are applied one after the other. `do update` (not `do nothing`) so an existing row is
    // locked and returned too. The new facts are `observe`d in Rust from these, hence written
    // by a later statement (only when they changed), with the deltas.
    let facts: sqlx::types::Json<OrderFacts> = sqlx::query_scalar(
        "insert into analytics_orders (order_id) values ($1)
         on conflict (order_id) do update set updated_at = now()
         returning facts",
    )
    .bind(order_id)
    .fetch_one(&mut *conn)
    .await?;
    let max_event_time = max_event_time(&mut *conn).await?;
    let observed = observe(
        &facts.0,
        at,
        observation,
        config.watermark(max_event_time),
        config,
    );
    let facts_changed = observed.facts != facts.0;
    if !facts_changed && observed.deltas.is_empty() {
        return Ok(observed.late);
    }
    let mut starts = Vec::with_capacity(observed.deltas.len());
    let mut metrics = Vec::with_capacity(observed.deltas.len());
    let mut keys = Vec::with_capacity(observed.deltas.len());
    let mut values = Vec::with_capacity(observed.deltas.len());
    for ((start, metric), value) in &observed.deltas {
        let (name, key) = metric.to_parts();
        starts.push(millis(*start));
        metrics.push(name);
        keys.push(key);
        values.push(*value);
    }
    // One statement: the facts (when they changed; a statement in `with` always runs) and the
    // deltas.
    sqlx::query(
        "with facts as (
             update analytics_orders set facts = $7 where order_id = $6 and $8
         )
         insert into analytics_deltas (window_start, metric, key, value, event_time)
         select window_start, metric, key, value, $5
         from unnest($1::timestamptz[], $2::text[], $3::text[], $4::bigint[])
              as d (window_start, metric, key, value)",
    )
    .bind(&starts)
    .bind(&metrics)
    .bind(&keys)
    .bind(&values)
    .bind(at)
    .bind(order_id)
    .bind(sqlx::types::Json(&observed.facts))
    .bind(facts_changed)
    .execute(&mut *conn)
    .await?;
    Ok(observed.late)
}

/// The latest event time applied (folded or pending).
pub async fn max_event_time(conn: &mut PgConnection) -> Result<Option<DateTime<Utc>>, sqlx::Error> {
    sqlx::query_scalar(
        "select greatest((select max_event_time from analytics_watermark),
                         (select max(event_time) from analytics_deltas))",
    )
    .fetch_one(conn)
    .await
}

/// The advisory lock a fold holds for its transaction.
const FOLD_LOCK: i64 = 0x5341_4741_414e_4c59;

/// Moves every committed delta into its cell, in one transaction (replicas may fold at the
/// same time: a delta is deleted, hence counted, once), raising the revision of each window
/// it changed. Returns how many deltas it folded.
pub async fn fold(pool: &PgPool) -> Result<u64, sqlx::Error> {
    let mut tx = pool.begin().await?;
    // One fold at a time across replicas: `nextval` hands out revisions in call order but
    // they become visible in commit order, so two concurrent folds could commit revision 6
    // before 5, and a replica streaming "above 6" would never send the windows of 5. Taking
    // the lock before any `nextval`, and holding it until commit, makes every revision
    // visible before any higher one is drawn.
    sqlx::query("select pg_advisory_xact_lock($1)")
        .bind(FOLD_LOCK)
        .execute(&mut *tx)
        .await?;
    let folded: i64 = sqlx::query_scalar(
        "with moved as (
             delete from analytics_deltas
             returning window_start, metric, key, value, event_time
         ),
         cells as (
             insert into analytics_cells (window_start, metric, key, value)
             select window_start, metric, key, sum(value)::bigint from moved
             group by window_start, metric, key
             order by window_start, metric, key
             on conflict (window_start, metric, key)
             do update set value = analytics_cells.value + excluded.value
         ),
         windows as (
             insert into analytics_windows (window_start, revision)
             select window_start, nextval('analytics_revision')
             from (select distinct window_start from moved order by window_start) w
             on conflict (window_start) do update set revision = excluded.revision
         ),
         watermark as (
             update analytics_watermark
             set max_event_time = greatest(max_event_time, (select max(event_time) from moved))
             where exists (select 1 from moved)
         )
         select count(*) from moved",
    )
    .fetch_one(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(folded.try_into().unwrap_or_default())
}

/// Windows whose revision is above `after`, with the highest revision seen.
pub async fn changed_since(pool: &PgPool, after: i64) -> Result<(Vec<i64>, i64), sqlx::Error> {
    let rows: Vec<(DateTime<Utc>, i64)> =
        sqlx::query_as("select window_start, revision from analytics_windows where revision > $1")
            .bind(after)
            .fetch_all(pool)
            .await?;
    let last = rows.iter().map(|(_, r)| *r).max().unwrap_or(after);
    Ok((
        rows.iter().map(|(s, _)| s.timestamp_millis()).collect(),
        last,
    ))
}

/// The highest revision so far.
pub async fn revision(pool: &PgPool) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar("select coalesce(max(revision), 0)::bigint from analytics_windows")
        .fetch_one(pool)
        .await
}

/// The windows starting in `[from, to)` (epoch ms) that have data, by start.
pub async fn windows_between(
    pool: &PgPool,
    from: i64,
    to: i64,
) -> Result<BTreeMap<i64, WindowMetrics>, sqlx::Error> {
    // One statement: one snapshot, in which a fold has moved a delta entirely or not at all.
    let rows: Vec<(DateTime<Utc>, String, String, i64)> = sqlx::query_as(
        "select window_start, metric, key, sum(value)::bigint from (
             select window_start, metric, key, value from analytics_cells
             where window_start >= $1 and window_start < $2
             union all
             select window_start, metric, key, value from analytics_deltas
             where window_start >= $1 and window_start < $2
         ) c group by window_start, metric, key",
    )
    .bind(millis(from))
    .bind(millis(to))
    .fetch_all(pool)
    .await?;
    Ok(fold_rows(rows))
}

/// The windows with these starts (epoch ms) that have data.
pub async fn windows_at(
    pool: &PgPool,
    starts: &[i64],
) -> Result<BTreeMap<i64, WindowMetrics>, sqlx::Error> {
    let starts: Vec<DateTime<Utc>> = starts.iter().map(|s| millis(*s)).collect();
    let rows: Vec<(DateTime<Utc>, String, String, i64)> = sqlx::query_as(
        "select window_start, metric, key, sum(value)::bigint from (
             select window_start, metric, key, value from analytics_cells
             where window_start = any($1)
             union all
             select window_start, metric, key, value from analytics_deltas
             where window_start = any($1)
         ) c group by window_start, metric, key",
    )
    .bind(&starts)
    .fetch_all(pool)
    .await?;
    Ok(fold_rows(rows))
}

fn fold_rows(rows: Vec<(DateTime<Utc>, String, String, i64)>) -> BTreeMap<i64, WindowMetrics> {
    let cells: BTreeMap<Cell, i64> = rows
        .into_iter()
        .filter_map(|(start, name, key, value)| {
            Metric::from_parts(&name, &key).map(|m| ((start.timestamp_millis(), m), value))
        })
        .collect();
    let mut windows = fold_cells(&cells);
    windows.retain(|_, window| *window != WindowMetrics::default());
    windows
}

/// The window length the stored windows were built with: `window_ms` when none was stored
/// yet (it is stored then).
pub async fn stored_window_ms(pool: &PgPool, window_ms: i64) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar(
        "update analytics_watermark set window_ms = coalesce(window_ms, $1) returning window_ms",
    )
    .bind(window_ms)
    .fetch_one(pool)
    .await
}

/// The latest event time applied, read from the pool.
pub async fn watermark_source(pool: &PgPool) -> Result<Option<DateTime<Utc>>, sqlx::Error> {
    let mut conn = pool.acquire().await?;
    max_event_time(&mut conn).await
}
