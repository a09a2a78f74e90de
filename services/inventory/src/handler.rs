//! Applies order events to stock: reserve on `order.created`, release on `order.cancelled`,
//! sell on `order.confirmed`.

use std::collections::HashMap;

use shared::events::{
    Event, OrderCreated, PricedLine, StockRejected, StockReleaseFailed, StockReleased,
    StockReserved,
};
use shared::{outbox, Envelope, EventHandler, HandlerError};
use sqlx::types::Json;
use sqlx::PgConnection;
use uuid::Uuid;

use crate::domain::{self, decide, Action, ReservationStatus, SagaEvent, Stock};
use crate::SERVICE;

pub struct InventoryEventHandler;

impl EventHandler for InventoryEventHandler {
    type Input = Event;

    fn select(&self, event: Event) -> Option<Event> {
        match event {
            Event::OrderCreated(_) | Event::OrderCancelled(_) | Event::OrderConfirmed(_) => {
                Some(event)
            }
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
            | Event::ShipmentCancelled(_) => None,
        }
    }

    async fn handle(
        &self,
        conn: &mut PgConnection,
        envelope: &Envelope,
        input: &Event,
    ) -> Result<(), HandlerError> {
        let order_id = envelope.order_id;
        let event = match input {
            Event::OrderCreated(_) => SagaEvent::OrderCreated,
            Event::OrderCancelled(_) => SagaEvent::OrderCancelled,
            Event::OrderConfirmed(_) => SagaEvent::OrderConfirmed,
            _ => return Ok(()),
        };
        let reservation = lock_reservation(conn, order_id).await?;
        match decide(reservation.as_ref().map(|(status, _)| *status), event) {
            Action::Reserve => {
                let Event::OrderCreated(created) = input else {
                    return Ok(());
                };
                reserve(conn, envelope, created.clone()).await?
            }
            Action::Release => {
                let items = reservation.map(|(_, items)| items).unwrap_or_default();
                move_stock(conn, &items, StockMove::Release).await?;
                set_status(conn, order_id, ReservationStatus::Released).await?;
                outbox::emit(
                    conn,
                    SERVICE,
                    order_id,
                    Some(envelope.id),
                    &StockReleased { order_id, items },
                )
                .await?;
            }
            Action::Commit => {
                let items = reservation.map(|(_, items)| items).unwrap_or_default();
                move_stock(conn, &items, StockMove::Sell).await?;
                set_status(conn, order_id, ReservationStatus::Committed).await?;
            }
            Action::Void => {
                sqlx::query("insert into reservations (order_id, status) values ($1, 'VOIDED')")
                    .bind(order_id)
                    .execute(&mut *conn)
                    .await?;
            }
            Action::Nothing => {
                tracing::debug!(%order_id, event_type = %envelope.event_type, "nothing to do")
            }
        }
        Ok(())
    }

    /// A release that can never succeed: the reservation ends `RELEASE_FAILED` and the order
    /// service is told (`inventory.release_failed.v1`), so the order ends `FAILED`.
    async fn give_up(
        &self,
        conn: &mut PgConnection,
        envelope: &Envelope,
        input: &Event,
        reason: &str,
    ) -> Result<bool, sqlx::Error> {
        if !matches!(input, Event::OrderCancelled(_)) {
            return Ok(false);
        }
        let order_id = envelope.order_id;
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
        outbox::emit(conn, SERVICE, order_id, Some(envelope.id), &failed).await?;
        metrics::counter!("sagashop_compensation_failures_total", "service" => SERVICE, "step" => "inventory.release")
            .increment(1);
        Ok(true)
    }
}

async fn reserve(
    conn: &mut PgConnection,
    envelope: &Envelope,
    order: OrderCreated,
) -> Result<(), HandlerError> {
    let order_id = order.order_id;
    let lines = domain::merge_lines(&order.items);
    let skus: Vec<&str> = lines.iter().map(|line| line.sku.as_str()).collect();
    // Locked in sku order, so concurrent reservations never deadlock.
    let rows: Vec<(String, i64, i32)> = sqlx::query_as(
        "select sku, price_cents, available from products where sku = any($1) order by sku for update",
    )
    .bind(&skus)
    .fetch_all(&mut *conn)
    .await?;
    let stock: HashMap<String, Stock> = rows
        .into_iter()
        .map(|(sku, price_cents, available)| {
            (
                sku,
                Stock {
                    price_cents,
                    available,
                },
            )
        })
        .collect();
    match domain::reserve(&lines, &stock) {
        Ok((items, total_cents)) => {
            move_stock(conn, &items, StockMove::Reserve).await?;
            sqlx::query("insert into reservations (order_id, status, items, total_cents) values ($1, 'RESERVED', $2, $3)")
                .bind(order_id)
                .bind(Json(&items))
                .bind(total_cents)
                .execute(&mut *conn)
                .await?;
            let reserved = StockReserved {
                order_id,
                customer_id: order.customer_id,
                items,
                total_cents,
                shipping_address: order.shipping_address,
            };
            outbox::emit(conn, SERVICE, order_id, Some(envelope.id), &reserved).await?;
        }
        Err(rejection) => {
            sqlx::query(
                "insert into reservations (order_id, status, reason) values ($1, 'REJECTED', $2)",
            )
            .bind(order_id)
            .bind(rejection.reason.as_str())
            .execute(&mut *conn)
            .await?;
            let rejected = StockRejected {
                order_id,
                reason: rejection.reason,
                sku: rejection.sku,
            };
            outbox::emit(conn, SERVICE, order_id, Some(envelope.id), &rejected).await?;
        }
    }
    Ok(())
}

enum StockMove {
    Reserve,
    Release,
    Sell,
}

async fn move_stock(
    conn: &mut PgConnection,
    items: &[PricedLine],
    movement: StockMove,
) -> Result<(), HandlerError> {
    let statement = match movement {
        StockMove::Reserve => "update products set available = available - $2, reserved = reserved + $2, updated_at = now() where sku = $1",
        StockMove::Release => "update products set available = available + $2, reserved = reserved - $2, updated_at = now() where sku = $1",
        StockMove::Sell => "update products set reserved = reserved - $2, sold = sold + $2, updated_at = now() where sku = $1",
    };
    let mut sorted: Vec<&PricedLine> = items.iter().collect();
    sorted.sort_by(|a, b| a.sku.cmp(&b.sku));
    for item in sorted {
        let moved = sqlx::query(statement)
            .bind(&item.sku)
            .bind(item.quantity)
            .execute(&mut *conn)
            .await?
            .rows_affected();
        if moved == 0 {
            return Err(HandlerError::Failed(format!(
                "product {} is gone: {} units cannot be moved",
                item.sku, item.quantity
            )));
        }
    }
    Ok(())
}

async fn lock_reservation(
    conn: &mut PgConnection,
    order_id: Uuid,
) -> Result<Option<(ReservationStatus, Vec<PricedLine>)>, HandlerError> {
    let row: Option<(String, Json<Vec<PricedLine>>)> =
        sqlx::query_as("select status, items from reservations where order_id = $1 for update")
            .bind(order_id)
            .fetch_optional(&mut *conn)
            .await?;
    row.map(|(status, items)| {
        ReservationStatus::parse(&status)
            .map(|status| (status, items.0))
            .ok_or_else(|| {
                HandlerError::Database(sqlx::Error::Decode(
                    format!("unknown status {status}").into(),
                ))
            })
    })
    .transpose()
}

async fn set_status(
    conn: &mut PgConnection,
    order_id: Uuid,
    status: ReservationStatus,
) -> Result<(), sqlx::Error> {
    sqlx::query("update reservations set status = $2, updated_at = now() where order_id = $1")
        .bind(order_id)
        .bind(status.as_str())
        .execute(conn)
        .await?;
    Ok(())
}
