//! Applies the other services' events to orders, and publishes the saga's decisions.

use std::time::Duration;

use shared::events::{
    CancellationReason, Event, OrderCancelled, OrderConfirmed, PaymentMethod, PricedLine,
};
use shared::{outbox, Envelope, EventHandler, EventPayload, HandlerError};
use sqlx::PgConnection;
use uuid::Uuid;

use crate::domain::{decide, Command, OrderState, SagaEvent};
use crate::repository::{self, Order, OrderItem};
use crate::SERVICE;

pub struct OrderEventHandler {
    /// `SAGA_DEADLINE_MS`: an order older than this is never confirmed ([`decide`]).
    pub saga_deadline: Duration,
}

/// What another service reported about an order, in the saga's terms.
pub struct Reported {
    event: SagaEvent,
    /// The priced lines of a reservation (saved with the order's first reservation).
    reserved_items: Option<Vec<PricedLine>>,
    /// How a charge was paid.
    payment_method: Option<PaymentMethod>,
}

impl EventHandler for OrderEventHandler {
    type Input = Reported;

    fn select(&self, event: Event) -> Option<Reported> {
        let mut reserved_items = None;
        let mut payment_method = None;
        let event = match event {
            Event::StockReserved(reserved) => {
                reserved_items = Some(reserved.items);
                SagaEvent::StockReserved {
                    total_cents: reserved.total_cents,
                }
            }
            Event::StockRejected(rejected) => SagaEvent::StockRejected(rejected.reason),
            Event::PaymentCharged(charged) => {
                payment_method = Some(charged.payment_method);
                SagaEvent::PaymentCharged
            }
            Event::PaymentDeclined(_) => SagaEvent::PaymentDeclined,
            Event::ShipmentScheduled(_) => SagaEvent::ShipmentScheduled,
            Event::ShipmentRejected(_) => SagaEvent::ShipmentRejected,
            Event::StockReleased(_) | Event::PaymentRefunded(_) | Event::ShipmentCancelled(_) => {
                SagaEvent::Compensated
            }
            Event::StockReleaseFailed(_) => SagaEvent::CompensationFailed("inventory.release"),
            Event::RefundFailed(_) => SagaEvent::CompensationFailed("payment.refund"),
            // Its own decisions.
            Event::OrderCreated(_) | Event::OrderConfirmed(_) | Event::OrderCancelled(_) => {
                return None
            }
        };
        Some(Reported {
            event,
            reserved_items,
            payment_method,
        })
    }

    async fn handle(
        &self,
        conn: &mut PgConnection,
        envelope: &Envelope,
        reported: &Reported,
    ) -> Result<(), HandlerError> {
        let order_id = envelope.order_id;
        let locked = match reported.payment_method {
            Some(method) => {
                repository::lock_order_recording_payment(conn, order_id, method).await?
            }
            None => repository::lock_order(conn, order_id).await?,
        };
        let Some(order) = locked else {
            answer_orphan(conn, envelope).await?;
            return Ok(());
        };
        repository::record_timeline(conn, envelope).await?;
        // The prices inventory reserved the lines at, unless the order has them already.
        let priced = match (order.total_cents, &reported.reserved_items) {
            (None, Some(items)) => Some(repository::priced(&order.items, items)),
            _ => None,
        };
        let age = chrono::Utc::now().signed_duration_since(order.created_at);
        let overdue = age.to_std().is_ok_and(|age| age > self.saga_deadline);
        advance_in_time(
            conn,
            &order,
            reported.event,
            overdue,
            priced.as_deref(),
            Some(envelope.id),
        )
        .await?;
        Ok(())
    }
}

/// An event for an order this service does not know: its row was lost (a restore, a failover
/// that lost commits) or it never existed (a forged `order.created`). It can never be a race:
/// an order's row commits in the transaction that writes its `order.created` to the outbox, and
/// every other event follows from that one. The event is recorded in `orphan_events` (never as
/// an order) and the first one per order is answered with `order.cancelled` (reason `timeout`:
/// the saga can never end), so every participant releases, refunds or cancels what it holds,
/// or voids what it has not done yet. Later events for the same order are only counted: the
/// participants have had their cancel.
async fn answer_orphan(conn: &mut PgConnection, envelope: &Envelope) -> Result<(), sqlx::Error> {
    let order_id = envelope.order_id;
    metrics::counter!(
        "sagashop_orphan_events_total",
        "service" => SERVICE,
        "event_type" => envelope.event_type.clone(),
    )
    .increment(1);
    if !repository::record_orphan(conn, envelope).await? {
        tracing::debug!(%order_id, event_type = %envelope.event_type, "another event for an unknown order");
        return Ok(());
    }
    tracing::warn!(%order_id, event_type = %envelope.event_type, source = %envelope.source, "event for an unknown order: answered with order.cancelled");
    let cancelled = OrderCancelled {
        order_id,
        reason: CancellationReason::Timeout,
    };
    outbox::emit(conn, SERVICE, order_id, Some(envelope.id), &cancelled).await?;
    Ok(())
}

/// Applies `event` to a locked order: saves the new state and publishes the saga's commands,
/// in the caller's transaction. Returns the new state.
pub(crate) async fn advance(
    conn: &mut PgConnection,
    order: &Order,
    event: SagaEvent,
    causation_id: Option<Uuid>,
) -> Result<OrderState, sqlx::Error> {
    advance_in_time(conn, order, event, false, None, causation_id).await
}

/// [`advance`] for an event that may arrive after the saga's deadline (`overdue`: it is never
/// confirmed then), and may bring the lines' reserved prices (`priced`, saved with the state).
async fn advance_in_time(
    conn: &mut PgConnection,
    order: &Order,
    event: SagaEvent,
    overdue: bool,
    priced: Option<&[OrderItem]>,
    causation_id: Option<Uuid>,
) -> Result<OrderState, sqlx::Error> {
    let state = order.state();
    let (next, commands) = decide(&state, event, overdue);
    if next != state || priced.is_some() {
        repository::save_state(conn, order.order_id, &next, priced).await?;
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
        if !state.status.is_terminal() && next.status.is_terminal() {
            let took = (chrono::Utc::now() - order.created_at)
                .to_std()
                .unwrap_or_default();
            metrics::histogram!(
                shared::metrics::SAGA_DURATION,
                "service" => SERVICE,
                "outcome" => next.status.as_str(),
            )
            .record(took.as_secs_f64());
        }
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
