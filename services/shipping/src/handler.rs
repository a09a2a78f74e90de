//! Applies saga events to shipments: loads an order's shipment (locked), lets [`decide`]
//! schedule, reject, confirm, cancel or void, and stores the difference.

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
            Event::OrderConfirmed(event) => SagaEvent::OrderConfirmed(event),
            Event::OrderCreated(_)
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
        apply(
            conn,
            &self.countries,
            envelope.order_id,
            event,
            Some(envelope.id),
        )
        .await?;
        Ok(())
    }
}

/// Loads and locks the order's shipment, lets [`decide`] apply `event` and stores the result
/// with the events to publish, in the caller's transaction: the consumer's for an event, the
/// hold expiry worker's for [`SagaEvent::HoldExpired`].
pub(crate) async fn apply(
    conn: &mut PgConnection,
    countries: &Countries,
    order_id: Uuid,
    event: &SagaEvent,
    causation_id: Option<Uuid>,
) -> Result<(), sqlx::Error> {
    let shipment = lock_shipment(conn, order_id).await?;
    let Decision { next, emit } = decide(countries, shipment.as_ref(), event.clone());
    if next == shipment {
        tracing::debug!(%order_id, ?event, "nothing to do");
    }
    if let Some(after) = &next {
        let before = shipment.as_ref();
        if after.hold_expired && !before.is_some_and(|shipment| shipment.hold_expired) {
            tracing::warn!(%order_id, "no decision within the hold timeout: the shipment is cancelled");
            metrics::counter!("sagashop_holds_expired_total", "service" => SERVICE).increment(1);
        }
        if after.hold_expired
            && after.confirmed
            && !before.is_some_and(|shipment| shipment.confirmed)
        {
            tracing::error!(%order_id, "order.confirmed after the shipment's hold expired and was cancelled: needs a person");
            metrics::counter!("sagashop_decisions_after_hold_expired_total", "service" => SERVICE)
                .increment(1);
        }
    }
    save(conn, order_id, shipment.as_ref(), next.as_ref()).await?;
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

/// The `reason` of a shipment cancelled because its hold expired.
pub(crate) const HOLD_EXPIRED: &str = "hold_expired";

async fn lock_shipment(
    conn: &mut PgConnection,
    order_id: Uuid,
) -> Result<Option<Shipment>, sqlx::Error> {
    type Row = (
        String,
        Option<String>,
        Option<Json<ShippingAddress>>,
        bool,
        Option<String>,
    );
    let row: Option<Row> = sqlx::query_as(
        "select status, country, address, confirmed_at is not null, reason from shipments
         where order_id = $1 for update",
    )
    .bind(order_id)
    .fetch_optional(&mut *conn)
    .await?;
    row.map(|(status, country, address, confirmed, reason)| {
        let status = ShipmentStatus::parse(&status).ok_or_else(|| {
            sqlx::Error::Decode(format!("unknown shipment status {status}").into())
        })?;
        Ok(Shipment {
            status,
            country,
            address: address.map(|address| address.0),
            confirmed,
            hold_expired: reason.as_deref() == Some(HOLD_EXPIRED),
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
            // The trace it is scheduled in, for the hold expiry worker to continue.
            let trace = shared::traces::current_context();
            sqlx::query(
                "insert into shipments
                     (order_id, status, country, address, traceparent, tracestate)
                 values ($1, $2, $3, $4, $5, $6)",
            )
            .bind(order_id)
            .bind(created.status.as_str())
            .bind(&created.country)
            .bind(created.address.as_ref().map(Json))
            .bind(trace.as_ref().map(|trace| trace.traceparent.as_str()))
            .bind(trace.as_ref().and_then(|trace| trace.tracestate.as_deref()))
            .execute(conn)
            .await?;
        }
        // The rules change nothing of a recorded shipment but its status, whether it is
        // confirmed and whether its hold expired.
        (Some(before), Some(after)) if before != after => {
            sqlx::query(
                "update shipments set status = $2,
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
            .execute(conn)
            .await?;
        }
        _ => {}
    }
    Ok(())
}
