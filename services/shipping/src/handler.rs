//! Applies saga events to shipments: loads an order's shipment (locked), lets [`decide`]
//! schedule, reject, cancel or void, and stores the difference.

use shared::events::{Event, ShippingAddress};
use shared::{outbox, Envelope, EventHandler, HandlerError};
use sqlx::types::Json;
use sqlx::PgConnection;
use uuid::Uuid;

use crate::domain::{decide, Countries, Decision, Emit, SagaEvent, Shipment, ShipmentStatus};
use crate::SERVICE;

pub struct ShippingEventHandler {
    pub countries: Countries,
}

impl EventHandler for ShippingEventHandler {
    type Input = SagaEvent;

    /// What this service acts on; every other event is named here too, so a new one does not
    /// compile until it is either handled or ignored on purpose.
    fn select(&self, event: Event) -> Option<SagaEvent> {
        Some(match event {
            Event::PaymentCharged(event) => SagaEvent::PaymentCharged(event),
            Event::OrderCancelled(event) => SagaEvent::OrderCancelled(event),
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
            | Event::ShipmentCancelled(_) => return None,
        })
    }

    async fn handle(
        &self,
        conn: &mut PgConnection,
        envelope: &Envelope,
        event: &SagaEvent,
    ) -> Result<(), HandlerError> {
        let order_id = envelope.order_id;
        let shipment = lock_shipment(conn, order_id).await?;
        let Decision { next, emit } = decide(&self.countries, shipment.as_ref(), event.clone());
        if next == shipment {
            tracing::debug!(%order_id, event_type = %envelope.event_type, "nothing to do");
        }
        save(conn, order_id, shipment.as_ref(), next.as_ref()).await?;
        let causation_id = Some(envelope.id);
        for event in emit {
            match event {
                Emit::Scheduled(scheduled) => {
                    outbox::emit(conn, SERVICE, order_id, causation_id, &scheduled).await?
                }
                Emit::Rejected(rejected) => {
                    outbox::emit(conn, SERVICE, order_id, causation_id, &rejected).await?
                }
                Emit::Cancelled(cancelled) => {
                    outbox::emit(conn, SERVICE, order_id, causation_id, &cancelled).await?
                }
            };
        }
        Ok(())
    }
}

async fn lock_shipment(
    conn: &mut PgConnection,
    order_id: Uuid,
) -> Result<Option<Shipment>, sqlx::Error> {
    let row: Option<(String, Option<String>, Option<Json<ShippingAddress>>)> = sqlx::query_as(
        "select status, country, address from shipments where order_id = $1 for update",
    )
    .bind(order_id)
    .fetch_optional(&mut *conn)
    .await?;
    row.map(|(status, country, address)| {
        let status = ShipmentStatus::parse(&status).ok_or_else(|| {
            sqlx::Error::Decode(format!("unknown shipment status {status}").into())
        })?;
        Ok(Shipment {
            status,
            country,
            address: address.map(|address| address.0),
        })
    })
    .transpose()
}

/// Writes what changed from `shipment` to `next`: a new shipment or a new status.
async fn save(
    conn: &mut PgConnection,
    order_id: Uuid,
    shipment: Option<&Shipment>,
    next: Option<&Shipment>,
) -> Result<(), sqlx::Error> {
    match (shipment, next) {
        (None, Some(created)) => {
            sqlx::query(
                "insert into shipments (order_id, status, country, address) values ($1, $2, $3, $4)",
            )
            .bind(order_id)
            .bind(created.status.as_str())
            .bind(&created.country)
            .bind(created.address.as_ref().map(Json))
            .execute(conn)
            .await?;
        }
        // The rules change nothing of a recorded shipment but its status.
        (Some(before), Some(after)) if before.status != after.status => {
            sqlx::query("update shipments set status = $2, updated_at = now() where order_id = $1")
                .bind(order_id)
                .bind(after.status.as_str())
                .execute(conn)
                .await?;
        }
        _ => {}
    }
    Ok(())
}
