//! Applies the other services' events to orders, and publishes the saga's decisions.

use shared::events::{
    OrderCancelled, OrderConfirmed, PaymentCharged, PaymentDeclined, PaymentRefunded,
    ShipmentCancelled, ShipmentRejected, ShipmentScheduled, StockRejected, StockReleased,
    StockReserved,
};
use shared::{outbox, Envelope, EventHandler, EventPayload, HandlerError};
use sqlx::PgConnection;
use uuid::Uuid;

use crate::domain::{transition, Command, SagaEvent};
use crate::{repository, SERVICE};

pub struct OrderEventHandler;

impl EventHandler for OrderEventHandler {
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
        if let (true, Some(reserved)) = (
            order.total_cents.is_none(),
            decode_if::<StockReserved>(envelope)?,
        ) {
            repository::save_prices(conn, order.order_id, &reserved.items).await?;
        }
        let state = order.state();
        let (next, commands) = transition(&state, event);
        if next != state {
            repository::save_state(conn, order.order_id, &next).await?;
        }
        execute(conn, order.order_id, Some(envelope.id), &commands).await?;
        Ok(())
    }
}

/// Translates an envelope into the saga's terms; `None` for types this service ignores.
fn saga_event(envelope: &Envelope) -> Result<Option<SagaEvent>, serde_json::Error> {
    let event = match envelope.event_type.as_str() {
        StockReserved::TYPE => SagaEvent::StockReserved {
            total_cents: envelope.decode::<StockReserved>()?.total_cents,
        },
        StockRejected::TYPE => SagaEvent::StockRejected(envelope.decode::<StockRejected>()?.reason),
        PaymentCharged::TYPE => {
            envelope.decode::<PaymentCharged>()?;
            SagaEvent::PaymentCharged
        }
        PaymentDeclined::TYPE => {
            envelope.decode::<PaymentDeclined>()?;
            SagaEvent::PaymentDeclined
        }
        ShipmentScheduled::TYPE => {
            envelope.decode::<ShipmentScheduled>()?;
            SagaEvent::ShipmentScheduled
        }
        ShipmentRejected::TYPE => {
            envelope.decode::<ShipmentRejected>()?;
            SagaEvent::ShipmentRejected
        }
        StockReleased::TYPE => {
            envelope.decode::<StockReleased>()?;
            SagaEvent::Compensated
        }
        PaymentRefunded::TYPE => {
            envelope.decode::<PaymentRefunded>()?;
            SagaEvent::Compensated
        }
        ShipmentCancelled::TYPE => {
            envelope.decode::<ShipmentCancelled>()?;
            SagaEvent::Compensated
        }
        _ => return Ok(None),
    };
    Ok(Some(event))
}

fn decode_if<P: EventPayload>(envelope: &Envelope) -> Result<Option<P>, serde_json::Error> {
    envelope
        .is::<P>()
        .then(|| envelope.decode::<P>())
        .transpose()
}

/// Publishes the saga's commands through the outbox and records them in the timeline.
pub(crate) async fn execute(
    conn: &mut PgConnection,
    order_id: Uuid,
    causation_id: Option<Uuid>,
    commands: &[Command],
) -> Result<(), sqlx::Error> {
    for command in commands {
        match *command {
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
    Ok(())
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
