//! Applies saga events to shipments: schedule on `payment.charged`, cancel on `order.cancelled`.

use shared::events::{Event, ShipmentCancelled, ShipmentRejected, ShipmentScheduled};
use shared::{outbox, Envelope, EventHandler, HandlerError};
use sqlx::types::Json;
use sqlx::PgConnection;

use crate::domain::{decide, Action, Countries, SagaEvent, ShipmentStatus};
use crate::SERVICE;

pub struct ShippingEventHandler {
    pub countries: Countries,
}

impl EventHandler for ShippingEventHandler {
    type Input = Event;

    fn select(&self, event: Event) -> Option<Event> {
        match event {
            Event::PaymentCharged(_) | Event::OrderCancelled(_) => Some(event),
            Event::OrderCreated(_)
            | Event::OrderConfirmed(_)
            | Event::StockReserved(_)
            | Event::StockRejected(_)
            | Event::StockReleased(_)
            | Event::StockReleaseFailed(_)
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
            Event::PaymentCharged(_) => SagaEvent::PaymentCharged,
            Event::OrderCancelled(_) => SagaEvent::OrderCancelled,
            _ => return Ok(()),
        };
        let status: Option<String> =
            sqlx::query_scalar("select status from shipments where order_id = $1 for update")
                .bind(order_id)
                .fetch_optional(&mut *conn)
                .await?;
        let status = status
            .map(|status| {
                ShipmentStatus::parse(&status).ok_or_else(|| {
                    sqlx::Error::Decode(format!("unknown shipment status {status}").into())
                })
            })
            .transpose()?;
        match decide(status, event) {
            Action::Schedule => {
                let Event::PaymentCharged(charged) = input else {
                    return Ok(());
                };
                let country = charged.shipping_address.country.clone();
                let status = if self.countries.serves(&country) {
                    ShipmentStatus::Scheduled
                } else {
                    ShipmentStatus::Rejected
                };
                sqlx::query("insert into shipments (order_id, status, country, address) values ($1, $2, $3, $4)")
                    .bind(order_id)
                    .bind(status.as_str())
                    .bind(&country)
                    .bind(Json(&charged.shipping_address))
                    .execute(&mut *conn)
                    .await?;
                if status == ShipmentStatus::Scheduled {
                    outbox::emit(
                        conn,
                        SERVICE,
                        order_id,
                        Some(envelope.id),
                        &ShipmentScheduled { order_id, country },
                    )
                    .await?;
                } else {
                    outbox::emit(
                        conn,
                        SERVICE,
                        order_id,
                        Some(envelope.id),
                        &ShipmentRejected { order_id, country },
                    )
                    .await?;
                }
            }
            Action::Cancel => {
                sqlx::query("update shipments set status = 'CANCELLED', updated_at = now() where order_id = $1")
                    .bind(order_id)
                    .execute(&mut *conn)
                    .await?;
                outbox::emit(
                    conn,
                    SERVICE,
                    order_id,
                    Some(envelope.id),
                    &ShipmentCancelled { order_id },
                )
                .await?;
            }
            Action::Void => {
                sqlx::query("insert into shipments (order_id, status) values ($1, 'VOIDED')")
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
}
