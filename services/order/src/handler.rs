//! Applies the other services' events to orders, and publishes the saga's decisions.

use shared::events::{
    OrderCancelled, OrderConfirmed, PaymentCharged, PaymentDeclined, PaymentRefunded, RefundFailed,
    ShipmentCancelled, ShipmentRejected, ShipmentScheduled, StockRejected, StockReleaseFailed,
    StockReleased, StockReserved,
};
use shared::{outbox, Envelope, EventHandler, EventPayload, HandlerError};
use sqlx::PgConnection;
use uuid::Uuid;

use crate::domain::{transition, Command, OrderState, SagaEvent};
use crate::repository::{self, Order};
use crate::SERVICE;

pub struct OrderEventHandler;

/// The event types this service acts on: what the other services report about an order.
const HANDLED: [&str; 11] = [
    StockReserved::TYPE,
    StockRejected::TYPE,
    PaymentCharged::TYPE,
    PaymentDeclined::TYPE,
    ShipmentScheduled::TYPE,
    ShipmentRejected::TYPE,
    StockReleased::TYPE,
    PaymentRefunded::TYPE,
    ShipmentCancelled::TYPE,
    StockReleaseFailed::TYPE,
    RefundFailed::TYPE,
];

impl EventHandler for OrderEventHandler {
    fn handles(&self, event_type: &str) -> bool {
        HANDLED.contains(&event_type)
    }

    async fn handle(
        &self,
        conn: &mut PgConnection,
        envelope: &Envelope,
    ) -> Result<(), HandlerError> {
        let Some(event) = saga_event(envelope)? else {
            return Ok(());
        };
        let Some(order) = repository::lock_order(conn, envelope.order_id).await? else {
            tracing::warn!(order_id = %envelope.order_id, "event for an unknown order ignored");
            return Ok(());
        };
        repository::record_timeline(conn, envelope).await?;
        if order.total_cents.is_none() && envelope.is::<StockReserved>() {
            let reserved = envelope.decode::<StockReserved>()?;
            repository::save_prices(conn, order.order_id, &reserved.items).await?;
        }
        advance(conn, &order, event, Some(envelope.id)).await?;
        Ok(())
    }
}

/// Translates an envelope into the saga's terms; `None` for types this service ignores.
fn saga_event(envelope: &Envelope) -> Result<Option<SagaEvent>, serde_json::Error> {
    fn checked<P: EventPayload>(
        envelope: &Envelope,
        event: SagaEvent,
    ) -> Result<SagaEvent, serde_json::Error> {
        envelope.decode::<P>().map(|_| event)
    }
    let event = match envelope.event_type.as_str() {
        StockReserved::TYPE => SagaEvent::StockReserved {
            total_cents: envelope.decode::<StockReserved>()?.total_cents,
        },
        StockRejected::TYPE => SagaEvent::StockRejected(envelope.decode::<StockRejected>()?.reason),
        PaymentCharged::TYPE => checked::<PaymentCharged>(envelope, SagaEvent::PaymentCharged)?,
        PaymentDeclined::TYPE => checked::<PaymentDeclined>(envelope, SagaEvent::PaymentDeclined)?,
        ShipmentScheduled::TYPE => {
            checked::<ShipmentScheduled>(envelope, SagaEvent::ShipmentScheduled)?
        }
        ShipmentRejected::TYPE => {
            checked::<ShipmentRejected>(envelope, SagaEvent::ShipmentRejected)?
        }
        StockReleased::TYPE => checked::<StockReleased>(envelope, SagaEvent::Compensated)?,
        PaymentRefunded::TYPE => checked::<PaymentRefunded>(envelope, SagaEvent::Compensated)?,
        ShipmentCancelled::TYPE => checked::<ShipmentCancelled>(envelope, SagaEvent::Compensated)?,
        StockReleaseFailed::TYPE => checked::<StockReleaseFailed>(
            envelope,
            SagaEvent::CompensationFailed("inventory.release"),
        )?,
        RefundFailed::TYPE => {
            checked::<RefundFailed>(envelope, SagaEvent::CompensationFailed("payment.refund"))?
        }
        _ => return Ok(None),
    };
    Ok(Some(event))
}

/// Applies `event` to a locked order: saves the new state and publishes the saga's commands,
/// in the caller's transaction. Returns the new state.
pub(crate) async fn advance(
    conn: &mut PgConnection,
    order: &Order,
    event: SagaEvent,
    causation_id: Option<Uuid>,
) -> Result<OrderState, sqlx::Error> {
    let state = order.state();
    let (next, commands) = transition(&state, event);
    if next != state {
        repository::save_state(conn, order.order_id, &next).await?;
    }
    if next.status != state.status {
        let reason = next
            .cancellation_reason
            .map_or("", |reason| reason.as_str());
        metrics::counter!(
            "sagashop_sagas_ended_total",
            "service" => SERVICE,
            "status" => next.status.as_str(),
            "reason" => reason,
        )
        .increment(1);
        if let Some(step) = next.failed_step {
            tracing::error!(order_id = %order.order_id, step, "a compensation failed for good: the order is FAILED");
        }
    }
    for command in commands {
        let order_id = order.order_id;
        match command {
            Command::Confirm => {
                emit(conn, order_id, causation_id, &OrderConfirmed { order_id }).await?
            }
            Command::Cancel(reason) => {
                emit(
                    conn,
                    order_id,
                    causation_id,
                    &OrderCancelled { order_id, reason },
                )
                .await?
            }
        }
    }
    Ok(next)
}

/// Writes an event to the outbox and the order's timeline, in the caller's transaction.
pub(crate) async fn emit<P: EventPayload>(
    conn: &mut PgConnection,
    order_id: Uuid,
    causation_id: Option<Uuid>,
    payload: &P,
) -> Result<(), sqlx::Error> {
    let envelope = outbox::emit(conn, SERVICE, order_id, causation_id, payload).await?;
    repository::record_timeline(conn, &envelope).await
}
