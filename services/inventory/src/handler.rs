//! Applies order events to stock: loads an order's reservation and the products the event
//! touches (all locked), lets [`decide`] reserve, reject, release, sell or void, and stores the
//! difference.

use std::collections::BTreeMap;

use serde::{de::DeserializeOwned, Deserialize};
use shared::events::{Event, PricedLine, StockRejection, StockReleaseFailed};
use shared::state::ProductState;
use shared::{outbox, Envelope, EventHandler, HandlerError};
use sqlx::types::Json;
use sqlx::PgConnection;
use uuid::Uuid;

use crate::catalog::{self, STATE_COLUMNS};
use crate::domain::{
    decide, Decision, Emit, InventoryState, Reservation, ReservationStatus, SagaEvent, Stock,
};
use crate::SERVICE;

pub struct InventoryEventHandler;

impl EventHandler for InventoryEventHandler {
    type Input = SagaEvent;

    /// What this service acts on; every other event is named here too, so a new one does not
    /// compile until it is either handled or ignored on purpose.
    fn select(&self, event: Event) -> Option<SagaEvent> {
        Some(match event {
            Event::OrderCreated(event) => SagaEvent::OrderCreated(event),
            Event::OrderCancelled(event) => SagaEvent::OrderCancelled(event),
            Event::OrderConfirmed(event) => SagaEvent::OrderConfirmed(event),
            Event::StockReserved(_)
            | Event::StockRejected(_)
            | Event::StockReleased(_)
            | Event::StockReleaseFailed(_)
            | Event::PaymentCharged(_)
            | Event::PaymentDeclined(_)
            | Event::PaymentRefunded(_)
            | Event::RefundFailed(_)
            | Event::ShipmentScheduled(_)
            | Event::ShipmentRejected(_)
            | Event::ShipmentCancelled(_) => return None,
        })
    }

    /// Locks every product the batch's events touch, in sku order: the skus of new orders and
    /// those reserved for decided ones.
    async fn lock_shared_rows(
        &self,
        conn: &mut PgConnection,
        events: &[&SagaEvent],
    ) -> Result<(), sqlx::Error> {
        let (mut skus, mut decided) = (Vec::new(), Vec::new());
        for event in events {
            match event {
                SagaEvent::OrderCreated(order) => {
                    skus.extend(order.items.iter().map(|line| line.sku.as_str()))
                }
                SagaEvent::OrderCancelled(cancelled) => decided.push(cancelled.order_id),
                SagaEvent::OrderConfirmed(confirmed) => decided.push(confirmed.order_id),
                SagaEvent::HoldExpired { order_id } => decided.push(*order_id),
            }
        }
        lock_products(conn, &skus, &decided).await
    }

    async fn handle(
        &self,
        conn: &mut PgConnection,
        envelope: &Envelope,
        event: &SagaEvent,
    ) -> Result<(), HandlerError> {
        apply(conn, envelope.order_id, event, Some(envelope.id)).await
    }

    /// A release that can never succeed: the reservation ends `RELEASE_FAILED` and the order
    /// service is told (`inventory.release_failed.v1`), so the order ends `FAILED`.
    async fn give_up(
        &self,
        conn: &mut PgConnection,
        envelope: &Envelope,
        event: &SagaEvent,
        reason: &str,
    ) -> Result<bool, sqlx::Error> {
        if !matches!(event, SagaEvent::OrderCancelled(_)) {
            return Ok(false);
        }
        release_failed(conn, envelope.order_id, Some(envelope.id), reason).await
    }
}

/// Locks `skus` and the products reserved for the `decided` orders, in sku order: what a
/// consumer batch ([`EventHandler::lock_shared_rows`]) and the hold expiry worker lock before
/// any reservation, so that neither waits for the other while holding one.
pub(crate) async fn lock_products(
    conn: &mut PgConnection,
    skus: &[&str],
    decided: &[Uuid],
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "select 1 from products
         where sku = any($1::text[] || array(
             select jsonb_array_elements(items) ->> 'sku' from reservations
             where order_id = any($2::uuid[])))
         order by sku for update",
    )
    .bind(skus)
    .bind(decided)
    .execute(conn)
    .await?;
    Ok(())
}

/// Loads and locks the order's reservation and products, lets [`decide`] apply `event` and
/// stores the result with the events to publish, in the caller's transaction: the consumer's
/// for an event, the hold expiry worker's for [`SagaEvent::HoldExpired`].
pub(crate) async fn apply(
    conn: &mut PgConnection,
    order_id: Uuid,
    event: &SagaEvent,
    causation_id: Option<Uuid>,
) -> Result<(), HandlerError> {
    let ordered_skus: Vec<&str> = match &event {
        SagaEvent::OrderCreated(order) => {
            order.items.iter().map(|line| line.sku.as_str()).collect()
        }
        SagaEvent::OrderCancelled(_)
        | SagaEvent::OrderConfirmed(_)
        | SagaEvent::HoldExpired { .. } => Vec::new(),
    };
    let state = lock_state(conn, order_id, &ordered_skus).await?;
    let (next, emit) = match decide(&state, event.clone()) {
        Decision::Apply { next, emit } => (next, emit),
        Decision::CannotApply(reason) => return Err(HandlerError::Failed(reason)),
    };
    if next == state {
        tracing::debug!(%order_id, ?event, "nothing to do");
    }
    let before = state.reservation.as_ref();
    if let Some(after) = &next.reservation {
        if after.hold_expired && !before.is_some_and(|reservation| reservation.hold_expired) {
            tracing::warn!(%order_id, "no decision within the hold timeout: the reservation is released");
            metrics::counter!("sagashop_holds_expired_total", "service" => SERVICE).increment(1);
        }
        if after.hold_expired
            && after.confirmed
            && !before.is_some_and(|reservation| reservation.confirmed)
        {
            tracing::error!(%order_id, "order.confirmed after the reservation's hold expired and was released: needs a person");
            metrics::counter!("sagashop_decisions_after_hold_expired_total", "service" => SERVICE)
                .increment(1);
        }
    }
    save(conn, order_id, &state, &next).await?;
    for event in emit {
        match event {
            Emit::Reserved(reserved) => {
                outbox::emit(conn, SERVICE, order_id, causation_id, &reserved).await?
            }
            Emit::Rejected(rejected) => {
                outbox::emit(conn, SERVICE, order_id, causation_id, &rejected).await?
            }
            Emit::Released(released) => {
                outbox::emit(conn, SERVICE, order_id, causation_id, &released).await?
            }
        };
    }
    Ok(())
}

/// A release that can never succeed: the reservation ends `RELEASE_FAILED` (`reason` says why)
/// and the order service is told (`inventory.release_failed.v1`), so the order ends `FAILED`.
/// `false` when nothing is reserved for the order.
pub(crate) async fn release_failed(
    conn: &mut PgConnection,
    order_id: Uuid,
    causation_id: Option<Uuid>,
    reason: &str,
) -> Result<bool, sqlx::Error> {
    let updated = sqlx::query(
        "update reservations set status = 'RELEASE_FAILED', reason = $2, updated_at = now()
         where order_id = $1 and status = 'RESERVED'",
    )
    .bind(order_id)
    .bind(reason)
    .execute(&mut *conn)
    .await?
    .rows_affected();
    if updated == 0 {
        return Ok(false);
    }
    let failed = StockReleaseFailed {
        order_id,
        error: reason.to_owned(),
    };
    outbox::emit(conn, SERVICE, order_id, causation_id, &failed).await?;
    metrics::counter!("sagashop_compensation_failures_total", "service" => SERVICE, "step" => "inventory.release")
        .increment(1);
    Ok(true)
}

/// The `reason` of a reservation released because its hold expired.
pub(crate) const HOLD_EXPIRED: &str = "hold_expired";

/// A product row as [`lock_state`] aggregates it.
#[derive(Deserialize)]
struct ProductRow {
    sku: String,
    price_cents: i64,
    available: i32,
    reserved: i32,
    sold: i32,
}

/// Loads and locks the order's reservation, then the products of `ordered_skus` and of its
/// reserved items in sku order (so concurrent events never deadlock). One statement: a hot path.
async fn lock_state(
    conn: &mut PgConnection,
    order_id: Uuid,
    ordered_skus: &[&str],
) -> Result<InventoryState, sqlx::Error> {
    type Row = (
        Option<String>,
        Option<Json<Vec<PricedLine>>>,
        Option<i64>,
        Option<String>,
        Option<bool>,
        Json<Vec<ProductRow>>,
    );
    let (status, items, total_cents, reason, confirmed, products): Row = sqlx::query_as(
        "with reservation as (
             select status, items, total_cents, reason, confirmed_at is not null as confirmed
             from reservations
             where order_id = $1 for update
         ), stock as (
             select sku, price_cents, available, reserved, sold from products
             where sku = any($2::text[] || array(select jsonb_array_elements(items) ->> 'sku' from reservation))
             order by sku for update
         )
         select reservation.status, reservation.items, reservation.total_cents, reservation.reason,
                reservation.confirmed, (select coalesce(json_agg(stock), '[]') from stock)
         from (select) as one left join reservation on true",
    )
    .bind(order_id)
    .bind(ordered_skus)
    .fetch_one(&mut *conn)
    .await?;
    let reservation = status
        .map(|status| -> Result<Reservation, sqlx::Error> {
            let status = ReservationStatus::parse(&status).ok_or_else(|| {
                sqlx::Error::Decode(format!("unknown reservation status {status}").into())
            })?;
            let hold_expired = reason.as_deref() == Some(HOLD_EXPIRED);
            let rejection = reason
                .filter(|_| status == ReservationStatus::Rejected)
                .map(parse_reason)
                .transpose()?;
            Ok(Reservation {
                status,
                items: items.map(|items| items.0).unwrap_or_default(),
                total_cents: total_cents.unwrap_or_default(),
                rejection,
                confirmed: confirmed.unwrap_or_default(),
                hold_expired,
            })
        })
        .transpose()?;
    let stock = products
        .0
        .into_iter()
        .map(|product| {
            let stock = Stock {
                price_cents: product.price_cents,
                available: product.available,
                reserved: product.reserved,
                sold: product.sold,
            };
            (product.sku, stock)
        })
        .collect();
    Ok(InventoryState { reservation, stock })
}

/// Writes what changed from `state` to `next`: stock levels, a new reservation or a new status.
async fn save(
    conn: &mut PgConnection,
    order_id: Uuid,
    state: &InventoryState,
    next: &InventoryState,
) -> Result<(), sqlx::Error> {
    let changed: BTreeMap<&str, &Stock> = next
        .stock
        .iter()
        .filter(|(sku, stock)| state.stock.get(*sku) != Some(*stock))
        .map(|(sku, stock)| (sku.as_str(), stock))
        .collect();
    if !changed.is_empty() {
        let skus: Vec<&str> = changed.keys().copied().collect();
        let level = |of: fn(&Stock) -> i32| {
            changed
                .values()
                .map(|stock| of(stock))
                .collect::<Vec<i32>>()
        };
        let changed: Vec<ProductState> = sqlx::query_as(&format!(
            "update products
             set available = moved.available, reserved = moved.reserved, sold = moved.sold,
                 version = products.version + 1, updated_at = now()
             from unnest($1::text[], $2::int[], $3::int[], $4::int[]) as moved (sku, available, reserved, sold)
             where products.sku = moved.sku
             returning {}",
            qualified_state_columns()
        ))
        .bind(&skus)
        .bind(level(|stock| stock.available))
        .bind(level(|stock| stock.reserved))
        .bind(level(|stock| stock.sold))
        .fetch_all(&mut *conn)
        .await?;
        catalog::publish(conn, &changed).await?;
    }
    match (&state.reservation, &next.reservation) {
        (None, Some(reservation)) => {
            // The trace it is made in, for the hold expiry worker to continue.
            let trace = shared::traces::current_context();
            sqlx::query(
                "insert into reservations
                     (order_id, status, items, total_cents, reason, traceparent, tracestate)
                 values ($1, $2, $3, $4, $5, $6, $7)",
            )
            .bind(order_id)
            .bind(reservation.status.as_str())
            .bind(Json(&reservation.items))
            .bind(reservation.total_cents)
            .bind(reservation.rejection.map(StockRejection::as_str))
            .bind(trace.as_ref().map(|trace| trace.traceparent.as_str()))
            .bind(trace.as_ref().and_then(|trace| trace.tracestate.as_deref()))
            .execute(&mut *conn)
            .await?;
        }
        // The rules change nothing of a recorded reservation but its status, whether it is
        // confirmed and whether its hold expired.
        (Some(before), Some(after)) if before != after => {
            sqlx::query(
                "update reservations set status = $2,
                        confirmed_at = case when $3 then coalesce(confirmed_at, now()) end,
                        reason = case when $4 then $5 else reason end,
                        updated_at = now()
                 where order_id = $1",
            )
            .bind(order_id)
            .bind(after.status.as_str())
            .bind(after.confirmed)
            .bind(after.hold_expired)
            .bind(HOLD_EXPIRED)
            .execute(&mut *conn)
            .await?;
        }
        _ => {}
    }
    Ok(())
}

/// [`STATE_COLUMNS`] of `products` (`moved` has some of the same names).
fn qualified_state_columns() -> String {
    STATE_COLUMNS
        .split(", ")
        .map(|column| format!("products.{column}"))
        .collect::<Vec<_>>()
        .join(", ")
}

fn parse_reason<R: DeserializeOwned>(text: String) -> Result<R, sqlx::Error> {
    serde_json::from_value(serde_json::Value::String(text))
        .map_err(|error| sqlx::Error::Decode(error.into()))
}
