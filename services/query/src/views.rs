//! The views in the query database: applying an event to an order's row, and reading orders,
//! customers and what the views reflect (`as_of`).

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::Serialize;
use shared::Envelope;
use sqlx::types::Json;
use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

use crate::projection::{OrderEvents, OrderView, Recorded, Status};

/// The advisory lock the live projector holds shared in each transaction and a rebuild holds
/// exclusively while it catches up and swaps its tables in.
pub const VIEWS_LOCK: i64 = 0x5341_4741_5149_4557;

/// The advisory lock a rebuild holds for its whole session: one rebuild at a time.
pub const REBUILD_LOCK: i64 = 0x5341_4741_5152_4542;

/// Which copy of the order views a statement works on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Table {
    /// What the service reads and the live consumer writes.
    Live,
    /// Where a rebuild replays the topics before it swaps them in.
    Rebuild,
}

impl Table {
    pub fn name(self) -> &'static str {
        match self {
            Self::Live => "order_views",
            Self::Rebuild => "order_views_rebuild",
        }
    }
}

/// Takes [`VIEWS_LOCK`] shared until the transaction ends.
pub async fn hold_live_lock(conn: &mut PgConnection) -> Result<(), sqlx::Error> {
    sqlx::query("select pg_advisory_xact_lock_shared($1)")
        .bind(VIEWS_LOCK)
        .execute(conn)
        .await?;
    Ok(())
}

/// Applies `envelope` to its order's row of `table` (created on its first event, locked):
/// records the event and stores the columns derived from all of them. An event seen before
/// changes nothing.
pub async fn apply(
    conn: &mut PgConnection,
    table: Table,
    envelope: &Envelope,
) -> Result<(), sqlx::Error> {
    let table = table.name();
    // One statement creates the row or locks the one there (the no-op update), and reads it.
    let Json(events): Json<OrderEvents> = sqlx::query_scalar(&format!(
        "insert into {table} (order_id, status) values ($1, 'PENDING')
         on conflict (order_id) do update set order_id = excluded.order_id
         returning events"
    ))
    .bind(envelope.order_id)
    .fetch_one(&mut *conn)
    .await?;
    let Some(events) = events.apply(Recorded::of(envelope)) else {
        return Ok(());
    };
    store(conn, table, envelope.order_id, &events).await
}

/// Stores `events` and the columns derived from them in the row of `order_id`.
async fn store(
    conn: &mut PgConnection,
    table: &str,
    order_id: Uuid,
    events: &OrderEvents,
) -> Result<(), sqlx::Error> {
    let view = OrderView::of(order_id, events);
    sqlx::query(&format!(
        "update {table} set customer_id = $2, status = $3, reason = $4, total_cents = $5,
                created_at = $6, last_event_at = $7, events = $8
         where order_id = $1"
    ))
    .bind(order_id)
    .bind(&view.customer_id)
    .bind(view.status.as_str())
    .bind(view.reason)
    .bind(view.total_cents)
    .bind(view.created_at)
    .bind(view.last_event_at)
    .bind(Json(events))
    .execute(conn)
    .await?;
    Ok(())
}

/// Carries into `order_views_rebuild` what only `order_views` still knows, so a rebuild loses
/// nothing retention deleted from the topics: the rows of orders that had no event in the
/// replay are copied as they are, and the events a rebuilt row lacks are added to it (its
/// columns derived again, with the rebuild's code, from the union). A view is a function of
/// its set of events, so this commutes with the replay: events applied to either table later
/// give the same rows. Returns how many orders it carried over or completed.
pub async fn carry_over(conn: &mut PgConnection) -> Result<u64, sqlx::Error> {
    let copied = sqlx::query(
        "insert into order_views_rebuild select * from order_views on conflict (order_id) do nothing",
    )
    .execute(&mut *conn)
    .await?
    .rows_affected();
    // Same events, same JSON: containment finds the rows the topics no longer fully hold.
    let partial: Vec<(Uuid, Json<OrderEvents>, Json<OrderEvents>)> = sqlx::query_as(
        "select l.order_id, l.events, r.events
         from order_views l join order_views_rebuild r using (order_id)
         where not r.events @> l.events",
    )
    .fetch_all(&mut *conn)
    .await?;
    let completed = partial.len() as u64;
    for (order_id, Json(live), Json(rebuilt)) in partial {
        let events = live.iter().fold(rebuilt, |events, recorded| {
            events.apply(recorded.clone()).unwrap_or(events)
        });
        store(conn, Table::Rebuild.name(), order_id, &events).await?;
    }
    Ok(copied + completed)
}

/// An order line as a view shows it, with the product's name from the catalog.
#[derive(Debug, Serialize)]
pub struct LineView {
    pub sku: String,
    pub product_name: Option<String>,
    pub quantity: i32,
    pub unit_price_cents: Option<i64>,
}

/// An order view as the API returns it.
#[derive(Debug, Serialize)]
pub struct OrderResponse {
    #[serde(flatten)]
    pub view: OrderView,
    /// `view.lines` with product names.
    pub lines: Vec<LineView>,
}

/// The view of `order_id`, with product names, if any event of it was seen.
pub async fn order(pool: &PgPool, order_id: Uuid) -> Result<Option<OrderResponse>, sqlx::Error> {
    let events: Option<Json<OrderEvents>> =
        sqlx::query_scalar("select events from order_views where order_id = $1")
            .bind(order_id)
            .fetch_optional(pool)
            .await?;
    let Some(Json(events)) = events else {
        return Ok(None);
    };
    let mut responses = with_names(pool, vec![OrderView::of(order_id, &events)]).await?;
    Ok(responses.pop())
}

/// Which orders a list shows.
#[derive(Debug, Clone)]
pub struct Filter {
    pub customer_id: Option<String>,
    pub status: Option<Status>,
    pub limit: i64,
    /// Orders after this one (newest first: UUID v7 order ids sort by creation).
    pub after: Option<Uuid>,
}

/// Up to `filter.limit` orders, newest first; the cursor of the next page, if there may be one.
/// Only orders whose `order.created` was seen: events for an order the order service never had
/// (it answers them with `order.cancelled`) make a row [`order`] serves, never a listed order.
pub async fn list(
    pool: &PgPool,
    filter: &Filter,
) -> Result<(Vec<OrderResponse>, Option<Uuid>), sqlx::Error> {
    let rows: Vec<(Uuid, Json<OrderEvents>)> = sqlx::query_as(
        "select order_id, events from order_views
         where created_at is not null
           and ($1::text is null or customer_id = $1)
           and ($2::text is null or status = $2)
           and ($3::uuid is null or order_id < $3)
         order by order_id desc
         limit $4",
    )
    .bind(&filter.customer_id)
    .bind(filter.status.map(Status::as_str))
    .bind(filter.after)
    .bind(filter.limit)
    .fetch_all(pool)
    .await?;
    let next = match rows.last() {
        Some((order_id, _)) if rows.len() as i64 == filter.limit => Some(*order_id),
        _ => None,
    };
    let views = rows
        .into_iter()
        .map(|(order_id, Json(events))| OrderView::of(order_id, &events))
        .collect();
    Ok((with_names(pool, views).await?, next))
}

/// Adds the catalog's product names to the lines of `views`.
async fn with_names(
    pool: &PgPool,
    views: Vec<OrderView>,
) -> Result<Vec<OrderResponse>, sqlx::Error> {
    let skus: Vec<String> = views
        .iter()
        .flat_map(|view| view.lines.iter().map(|line| line.sku.clone()))
        .collect();
    let names: BTreeMap<String, String> = if skus.is_empty() {
        BTreeMap::new()
    } else {
        sqlx::query_as::<_, (String, String)>("select sku, name from catalog where sku = any($1)")
            .bind(&skus)
            .fetch_all(pool)
            .await?
            .into_iter()
            .collect()
    };
    Ok(views
        .into_iter()
        .map(|view| OrderResponse {
            lines: view
                .lines
                .iter()
                .map(|line| LineView {
                    sku: line.sku.clone(),
                    product_name: names.get(&line.sku).cloned(),
                    quantity: line.quantity,
                    unit_price_cents: line.unit_price_cents,
                })
                .collect(),
            view,
        })
        .collect())
}

/// A customer's orders by status and what they spent (the total of their confirmed orders).
#[derive(Debug, Serialize)]
pub struct CustomerView {
    pub customer_id: String,
    pub orders: i64,
    pub orders_by_status: BTreeMap<&'static str, i64>,
    pub total_spent_cents: i64,
    pub last_event_at: Option<DateTime<Utc>>,
}

/// `None` when no order of `customer_id` was seen (`order.created`, as in [`list`]).
pub async fn customer(
    pool: &PgPool,
    customer_id: &str,
) -> Result<Option<CustomerView>, sqlx::Error> {
    let rows: Vec<(String, i64, i64, Option<DateTime<Utc>>)> = sqlx::query_as(
        "select status, count(*), coalesce(sum(total_cents) filter (where status = 'CONFIRMED'), 0)::bigint,
                max(last_event_at)
         from order_views where customer_id = $1 and created_at is not null group by status",
    )
    .bind(customer_id)
    .fetch_all(pool)
    .await?;
    if rows.is_empty() {
        return Ok(None);
    }
    let mut view = CustomerView {
        customer_id: customer_id.to_owned(),
        orders: 0,
        orders_by_status: [
            Status::Pending,
            Status::Confirmed,
            Status::Cancelled,
            Status::Failed,
        ]
        .into_iter()
        .map(|status| (status.as_str(), 0))
        .collect(),
        total_spent_cents: 0,
        last_event_at: None,
    };
    for (status, count, spent, last_event_at) in rows {
        if let Some(status) = Status::parse(&status) {
            view.orders_by_status.insert(status.as_str(), count);
        }
        view.orders += count;
        view.total_spent_cents += spent;
        view.last_event_at = view.last_event_at.max(last_event_at);
    }
    Ok(Some(view))
}

/// What the views reflect: the next offset the consumer reads on every partition it applied
/// something from (`topic -> partition -> offset`), and the latest event time applied.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AsOf {
    pub offsets: BTreeMap<String, BTreeMap<i32, i64>>,
    pub last_event_at: Option<DateTime<Utc>>,
}

/// What the views reflect now.
pub async fn as_of(pool: &PgPool) -> Result<AsOf, sqlx::Error> {
    let rows: Vec<(String, i32, i64)> =
        sqlx::query_as("select topic, kafka_partition, next_offset from consumer_offsets")
            .fetch_all(pool)
            .await?;
    let mut offsets: BTreeMap<String, BTreeMap<i32, i64>> = BTreeMap::new();
    for (topic, partition, offset) in rows {
        offsets.entry(topic).or_default().insert(partition, offset);
    }
    let last_event_at = sqlx::query_scalar("select max(last_event_at) from order_views")
        .fetch_one(pool)
        .await?;
    Ok(AsOf {
        offsets,
        last_event_at,
    })
}
