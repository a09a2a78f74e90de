//! Applies saga events to shipments: loads an order's shipment (locked), lets [`decide`]
//! schedule, reject, cancel or void, and stores the difference.

use shared::events::{OrderCancelled, PaymentCharged, ShippingAddress};
use shared::{outbox, Envelope, EventHandler, EventPayload, HandlerError};
use sqlx::types::Json;
use sqlx::PgConnection;
use uuid::Uuid;

use crate::domain::{decide, Countries, Decision, Emit, SagaEvent, Shipment, ShipmentStatus};
use crate::SERVICE;

pub struct ShippingEventHandler {
    pub countries: Countries,
}

/// The event types this service acts on.
const HANDLED: [&str; 2] = [PaymentCharged::TYPE, OrderCancelled::TYPE];

/// Translates an envelope into the rules' terms; `None` for types this service ignores.
fn saga_event(envelope: &Envelope) -> Result<Option<SagaEvent>, serde_json::Error> {
    let event = match envelope.event_type.as_str() {
        PaymentCharged::TYPE => SagaEvent::PaymentCharged(envelope.decode()?),
        OrderCancelled::TYPE => SagaEvent::OrderCancelled(envelope.decode()?),
        _ => return Ok(None),
    };
    Ok(Some(event))
}

impl EventHandler for ShippingEventHandler {
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
        let order_id = envelope.order_id;
        let shipment = lock_shipment(conn, order_id).await?;
        let Decision { next, emit } = decide(&self.countries, shipment.as_ref(), event);
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
