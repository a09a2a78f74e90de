//! Reads and writes of the order service's tables.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use serde::Serialize;
use shared::events::{CancellationReason, PaymentMethod, PricedLine, ShippingAddress};
use shared::traces::StoredContext;
use shared::Envelope;
use sqlx::types::Json;
use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

use crate::domain::{OrderState, OrderStatus};

/// One line of an order; the price is known once inventory reserved it.
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct OrderItem {
    pub sku: String,
    pub quantity: i32,
    /// The price inventory reserved the line at (what the order costs).
    pub unit_price_cents: Option<i64>,
    /// The product's name in the catalog replica when the order was placed (`null`: the
    /// replica did not know the sku yet).
    #[serde(default)]
    pub name: Option<String>,
    /// The unit price the catalog replica listed when the order was placed.
    #[serde(default)]
    pub price_at_placement_cents: Option<i64>,
}

/// An order as the API shows it.
#[derive(Debug, Clone, Serialize)]
pub struct Order {
    pub order_id: Uuid,
    pub customer_id: String,
    pub status: OrderStatus,
    pub items: Vec<OrderItem>,
    pub total_cents: Option<i64>,
    pub cancellation_reason: Option<CancellationReason>,
    /// The compensation step that failed for good (`FAILED` orders only).
    pub failed_step: Option<String>,
    /// How it was paid, once payment charged it (e.g. `account_balance`).
    pub payment_method: Option<String>,
    pub shipping_address: ShippingAddress,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    /// Shipping scheduled it: the order is confirmed once stock and payment reported success
    /// too, whatever order they came in (the saga's bookkeeping, not shown).
    #[serde(skip)]
    pub shipment_scheduled: bool,
}

impl Order {
    pub fn state(&self) -> OrderState {
        OrderState {
            status: self.status,
            total_cents: self.total_cents,
            cancellation_reason: self.cancellation_reason,
            failed_step: self.failed_step.as_deref().map(known_step),
            payment_charged: self.payment_method.is_some(),
            shipment_scheduled: self.shipment_scheduled,
        }
    }
}

/// The compensation steps that can fail, as `&'static str` for the pure saga state.
pub const FAILABLE_STEPS: [&str; 3] = [
    "inventory.release",
    "payment.refund",
    crate::domain::HOLD_EXPIRED_STEP,
];

fn known_step(step: &str) -> &'static str {
    FAILABLE_STEPS
        .into_iter()
        .find(|known| *known == step)
        .unwrap_or("unknown")
}

#[derive(sqlx::FromRow)]
struct OrderRow {
    order_id: Uuid,
    customer_id: String,
    status: String,
    items: Json<Vec<OrderItem>>,
    total_cents: Option<i64>,
    cancellation_reason: Option<String>,
    failed_step: Option<String>,
    payment_method: Option<String>,
    shipping_address: Json<ShippingAddress>,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
    shipment_scheduled: bool,
}

impl OrderRow {
    fn into_order(self) -> Result<Order, sqlx::Error> {
        let status = OrderStatus::parse(&self.status).ok_or_else(|| {
            sqlx::Error::Decode(format!("unknown order status {}", self.status).into())
        })?;
        let cancellation_reason = self
            .cancellation_reason
            .map(|reason| serde_json::from_value(serde_json::Value::String(reason)))
            .transpose()
            .map_err(|error| sqlx::Error::Decode(Box::new(error)))?;
        Ok(Order {
            order_id: self.order_id,
            customer_id: self.customer_id,
            status,
            items: self.items.0,
            total_cents: self.total_cents,
            cancellation_reason,
            failed_step: self.failed_step,
            payment_method: self.payment_method,
            shipping_address: self.shipping_address.0,
            created_at: self.created_at,
            updated_at: self.updated_at,
            shipment_scheduled: self.shipment_scheduled,
        })
    }
}

const ORDER_COLUMNS: &str = "order_id, customer_id, status, items, total_cents, \
                             cancellation_reason, failed_step, payment_method, shipping_address, created_at, updated_at, \
                             shipment_scheduled";

/// Inserts a new `PENDING` order.
pub async fn insert_order(
    conn: &mut PgConnection,
    order_id: Uuid,
    customer_id: &str,
    items: &[OrderItem],
    address: &ShippingAddress,
) -> Result<(), sqlx::Error> {
    // The trace it is placed in, for the saga deadline to continue (crate::deadline).
    let trace = shared::traces::current_context();
    sqlx::query(
        "insert into orders
             (order_id, customer_id, status, items, shipping_address, traceparent, tracestate)
         values ($1, $2, 'PENDING', $3, $4, $5, $6)",
    )
    .bind(order_id)
    .bind(customer_id)
    .bind(Json(items))
    .bind(Json(address))
    .bind(trace.as_ref().map(|trace| trace.traceparent.as_str()))
    .bind(trace.as_ref().and_then(|trace| trace.tracestate.as_deref()))
    .execute(conn)
    .await?;
    Ok(())
}

/// The trace contexts the orders `order_ids` were placed in (those placed in one).
pub async fn trace_contexts(
    conn: &mut PgConnection,
    order_ids: &[Uuid],
) -> Result<HashMap<Uuid, StoredContext>, sqlx::Error> {
    let rows: Vec<(Uuid, String, Option<String>)> = sqlx::query_as(
        "select order_id, traceparent, tracestate from orders
         where order_id = any($1) and traceparent is not null",
    )
    .bind(order_ids)
    .fetch_all(conn)
    .await?;
    Ok(rows
        .into_iter()
        .map(|(order_id, traceparent, tracestate)| {
            (
                order_id,
                StoredContext {
                    traceparent,
                    tracestate,
                },
            )
        })
        .collect())
}

pub async fn find_order(pool: &PgPool, order_id: Uuid) -> Result<Option<Order>, sqlx::Error> {
    let query = format!("select {ORDER_COLUMNS} from orders where order_id = $1");
    sqlx::query_as::<_, OrderRow>(&query)
        .bind(order_id)
        .fetch_optional(pool)
        .await?
        .map(OrderRow::into_order)
        .transpose()
}

/// Loads an order and locks it for the rest of the transaction.
pub async fn lock_order(
    conn: &mut PgConnection,
    order_id: Uuid,
) -> Result<Option<Order>, sqlx::Error> {
    let query = format!("select {ORDER_COLUMNS} from orders where order_id = $1 for update");
    sqlx::query_as::<_, OrderRow>(&query)
        .bind(order_id)
        .fetch_optional(conn)
        .await?
        .map(OrderRow::into_order)
        .transpose()
}

/// Filters and keyset pagination for listing orders, newest first.
pub struct OrderFilter<'a> {
    pub customer_id: Option<&'a str>,
    pub status: Option<OrderStatus>,
    pub before: Option<Uuid>,
    pub limit: i64,
}

pub async fn list_orders(
    pool: &PgPool,
    filter: OrderFilter<'_>,
) -> Result<Vec<Order>, sqlx::Error> {
    let query = format!(
        "select {ORDER_COLUMNS} from orders
         where ($1::text is null or customer_id = $1)
           and ($2::text is null or status = $2)
           and ($3::uuid is null or order_id < $3)
         order by order_id desc
         limit $4"
    );
    sqlx::query_as::<_, OrderRow>(&query)
        .bind(filter.customer_id)
        .bind(filter.status.map(OrderStatus::as_str))
        .bind(filter.before)
        .bind(filter.limit)
        .fetch_all(pool)
        .await?
        .into_iter()
        .map(OrderRow::into_order)
        .collect()
}

/// Persists the saga's decision about an order, and the lines with the prices inventory
/// reserved them at when they come with it (`priced`, from [`priced`]). `updated_at` is the
/// moment of the change, not the start of its transaction (a consumer's transaction may apply
/// a batch of events).
pub async fn save_state(
    conn: &mut PgConnection,
    order_id: Uuid,
    state: &OrderState,
    priced: Option<&[OrderItem]>,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "update orders set status = $2, total_cents = $3, cancellation_reason = $4, failed_step = $5,
                shipment_scheduled = $6, items = coalesce($7, items),
                updated_at = clock_timestamp()
         where order_id = $1",
    )
    .bind(order_id)
    .bind(state.status.as_str())
    .bind(state.total_cents)
    .bind(state.cancellation_reason.map(CancellationReason::as_str))
    .bind(state.failed_step)
    .bind(state.shipment_scheduled)
    .bind(priced.map(Json))
    .execute(conn)
    .await?;
    Ok(())
}

/// Like [`lock_order`], recording how the order was paid unless that is known already: one
/// statement (the update takes the lock), as a hot path should.
pub async fn lock_order_recording_payment(
    conn: &mut PgConnection,
    order_id: Uuid,
    method: PaymentMethod,
) -> Result<Option<Order>, sqlx::Error> {
    let query = format!(
        "update orders set payment_method = coalesce(payment_method, $2) where order_id = $1
         returning {ORDER_COLUMNS}"
    );
    sqlx::query_as::<_, OrderRow>(&query)
        .bind(order_id)
        .bind(method.as_str())
        .fetch_optional(conn)
        .await?
        .map(OrderRow::into_order)
        .transpose()
}

/// The reserved `lines` (their prices), with what the order recorded at placement for each
/// sku (name, price shown).
pub fn priced(placed: &[OrderItem], lines: &[PricedLine]) -> Vec<OrderItem> {
    lines
        .iter()
        .map(|line| {
            let at_placement = placed.iter().find(|item| item.sku == line.sku);
            OrderItem {
                sku: line.sku.clone(),
                quantity: line.quantity,
                unit_price_cents: Some(line.unit_price_cents),
                name: at_placement.and_then(|item| item.name.clone()),
                price_at_placement_cents: at_placement
                    .and_then(|item| item.price_at_placement_cents),
            }
        })
        .collect()
}

/// Stores a customer's Idempotency-Key; `false` means the key was already taken.
pub async fn claim_idempotency_key(
    conn: &mut PgConnection,
    customer_id: &str,
    key: &str,
    request: &serde_json::Value,
    order_id: Uuid,
) -> Result<bool, sqlx::Error> {
    let inserted = sqlx::query(
        "insert into idempotency_keys (customer_id, idempotency_key, request, order_id)
         values ($1, $2, $3, $4)
         on conflict (customer_id, idempotency_key) do nothing",
    )
    .bind(customer_id)
    .bind(key)
    .bind(request)
    .bind(order_id)
    .execute(conn)
    .await?
    .rows_affected();
    Ok(inserted == 1)
}

/// The request and order a customer's Idempotency-Key was first used for.
pub async fn find_idempotency_key(
    pool: &PgPool,
    customer_id: &str,
    key: &str,
) -> Result<Option<(serde_json::Value, Uuid)>, sqlx::Error> {
    sqlx::query_as(
        "select request, order_id from idempotency_keys
         where customer_id = $1 and idempotency_key = $2",
    )
    .bind(customer_id)
    .bind(key)
    .fetch_optional(pool)
    .await
}

/// One entry of an order's saga timeline.
#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct TimelineEntry {
    pub event_id: Uuid,
    #[serde(rename = "type")]
    pub event_type: String,
    pub source: String,
    pub occurred_at: DateTime<Utc>,
}

pub async fn record_timeline(
    conn: &mut PgConnection,
    envelope: &Envelope,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "insert into order_timeline (order_id, event_id, event_type, source, occurred_at)
         values ($1, $2, $3, $4, $5) on conflict (event_id) do nothing",
    )
    .bind(envelope.order_id)
    .bind(envelope.id)
    .bind(&envelope.event_type)
    .bind(&envelope.source)
    .bind(envelope.occurred_at)
    .execute(conn)
    .await?;
    Ok(())
}

pub async fn timeline(pool: &PgPool, order_id: Uuid) -> Result<Vec<TimelineEntry>, sqlx::Error> {
    sqlx::query_as(
        "select event_id, event_type, source, occurred_at from order_timeline
         where order_id = $1 order by occurred_at, seq",
    )
    .bind(order_id)
    .fetch_all(pool)
    .await
}

/// Locks up to `limit` orders still `PENDING` after `deadline`, skipping those another
/// transaction holds.
pub async fn lock_overdue(
    conn: &mut PgConnection,
    deadline: std::time::Duration,
    limit: i64,
) -> Result<Vec<Order>, sqlx::Error> {
    let query = format!(
        "select {ORDER_COLUMNS} from orders
         where status = 'PENDING' and created_at < now() - make_interval(secs => $1)
         order by created_at limit $2 for update skip locked"
    );
    sqlx::query_as::<_, OrderRow>(&query)
        .bind(deadline.as_secs_f64())
        .bind(limit)
        .fetch_all(conn)
        .await?
        .into_iter()
        .map(OrderRow::into_order)
        .collect()
}

/// Records an event for an order that has no row; `true` when it is the first for that order.
pub async fn record_orphan(
    conn: &mut PgConnection,
    envelope: &Envelope,
) -> Result<bool, sqlx::Error> {
    let first: bool = sqlx::query_scalar(
        "insert into orphan_events (order_id, first_event_id, first_event_type, first_source)
         values ($1, $2, $3, $4)
         on conflict (order_id) do update
             set events = orphan_events.events + 1, last_seen_at = now()
         returning xmax = 0",
    )
    .bind(envelope.order_id)
    .bind(envelope.id)
    .bind(&envelope.event_type)
    .bind(&envelope.source)
    .fetch_one(conn)
    .await?;
    Ok(first)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_reserved_prices_keep_what_was_shown_at_placement() {
        let placed = vec![
            OrderItem {
                sku: "LAMP".to_owned(),
                quantity: 2,
                unit_price_cents: None,
                name: Some("Desk lamp".to_owned()),
                price_at_placement_cents: Some(1_000),
            },
            OrderItem {
                sku: "NEW".to_owned(),
                quantity: 1,
                unit_price_cents: None,
                name: None,
                price_at_placement_cents: None,
            },
        ];
        let reserved = [
            PricedLine {
                sku: "LAMP".to_owned(),
                quantity: 2,
                unit_price_cents: 1_100,
            },
            PricedLine {
                sku: "NEW".to_owned(),
                quantity: 1,
                unit_price_cents: 500,
            },
        ];
        let items = priced(&placed, &reserved);
        assert_eq!(items[0].unit_price_cents, Some(1_100));
        assert_eq!(items[0].price_at_placement_cents, Some(1_000));
        assert_eq!(items[0].name.as_deref(), Some("Desk lamp"));
        assert_eq!(items[1].unit_price_cents, Some(500));
        assert_eq!(
            (items[1].name.as_deref(), items[1].price_at_placement_cents),
            (None, None)
        );
    }
}
