//! The order view as a pure function of the events seen for the order: no I/O here.
//!
//! Events of one order travel on four topics (each service its own), so they can arrive in
//! any order: `payment.charged` may come before `order.created`. The projection therefore keeps
//! the *set* of events it has seen ([`OrderEvents`], ordered by event time, then id) and derives
//! the view from that set ([`OrderView::of`]): whatever the order of arrival and however often
//! an event is re-delivered, the same events give the same view.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use shared::events::Event;
use shared::Envelope;
use uuid::Uuid;

/// One event of an order as the projection keeps it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Recorded {
    pub event_id: Uuid,
    /// Versioned type, e.g. `payment.charged.v2`.
    pub event_type: String,
    pub source: String,
    pub occurred_at: DateTime<Utc>,
    pub payload: serde_json::Value,
}

impl Recorded {
    pub fn of(envelope: &Envelope) -> Self {
        Self {
            event_id: envelope.id,
            event_type: envelope.event_type.clone(),
            source: envelope.source.clone(),
            occurred_at: envelope.occurred_at,
            payload: envelope.payload.clone(),
        }
    }

    fn key(&self) -> (DateTime<Utc>, Uuid) {
        (self.occurred_at, self.event_id)
    }
}

/// Every event seen for one order, by (event time, id), each once.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct OrderEvents(Vec<Recorded>);

impl OrderEvents {
    /// The events after `event` was seen; `None` when it was seen before (nothing changes).
    pub fn apply(&self, event: Recorded) -> Option<Self> {
        if self.0.iter().any(|seen| seen.event_id == event.event_id) {
            return None;
        }
        let mut events = self.0.clone();
        let at = events.partition_point(|seen| seen.key() < event.key());
        events.insert(at, event);
        Some(Self(events))
    }

    pub fn iter(&self) -> impl Iterator<Item = &Recorded> {
        self.0.iter()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// Where an order stands, as the order service decides it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Status {
    Pending,
    Confirmed,
    Cancelled,
    Failed,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "PENDING",
            Self::Confirmed => "CONFIRMED",
            Self::Cancelled => "CANCELLED",
            Self::Failed => "FAILED",
        }
    }

    pub fn parse(value: &str) -> Option<Self> {
        [
            Self::Pending,
            Self::Confirmed,
            Self::Cancelled,
            Self::Failed,
        ]
        .into_iter()
        .find(|status| status.as_str() == value)
    }
}

/// An order line: what was ordered, and the unit price inventory reserved it at.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Line {
    pub sku: String,
    pub quantity: i32,
    pub unit_price_cents: Option<i64>,
}

/// What payment did, from its events.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Payment {
    /// `CHARGED`, `DECLINED`, `REFUNDED` or `REFUND_FAILED` (as the payment service names them).
    pub status: &'static str,
    pub amount_cents: Option<i64>,
    pub method: Option<&'static str>,
    /// Why it was declined.
    pub reason: Option<&'static str>,
}

/// What shipping did, from its events.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Shipment {
    /// `SCHEDULED`, `REJECTED` or `CANCELLED` (as the shipping service names them).
    pub status: &'static str,
    pub country: String,
}

/// One step of the saga: an event of the order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Step {
    pub event_id: Uuid,
    #[serde(rename = "type")]
    pub event_type: String,
    pub source: String,
    pub occurred_at: DateTime<Utc>,
}

/// The denormalized order, derived from its events.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct OrderView {
    pub order_id: Uuid,
    /// `None` until an event naming the customer (`order.created`, `inventory.reserved`,
    /// `payment.charged`) was seen.
    pub customer_id: Option<String>,
    pub status: Status,
    /// Why it was cancelled (`out_of_stock`, ...).
    pub reason: Option<&'static str>,
    /// The compensation step that failed for good (`FAILED` orders).
    pub failed_step: Option<&'static str>,
    /// Served with product names by [`crate::views::OrderResponse`].
    #[serde(skip_serializing)]
    pub lines: Vec<Line>,
    pub total_cents: Option<i64>,
    /// The destination country asked for.
    pub country: Option<String>,
    pub payment: Option<Payment>,
    pub shipment: Option<Shipment>,
    pub steps: Vec<Step>,
    /// When the order was placed (`order.created`).
    pub created_at: Option<DateTime<Utc>>,
    /// When the saga ended: the order's decision, or the compensation failure that made it
    /// `FAILED`.
    pub finished_at: Option<DateTime<Utc>>,
    /// `finished_at - created_at`, once both are known.
    pub duration_ms: Option<i64>,
    /// The latest event time applied.
    pub last_event_at: Option<DateTime<Utc>>,
}

/// The compensation step a `CONFIRMED` order fails at when a participant's hold expired (as the
/// order service names it).
pub const HOLD_EXPIRED_STEP: &str = "hold.expired";

impl OrderView {
    /// The view of `order_id` given every event seen for it.
    pub fn of(order_id: Uuid, events: &OrderEvents) -> Self {
        let mut customer_id: Option<String> = None;
        let mut lines: Vec<Line> = Vec::new();
        let mut prices: Vec<(String, i64)> = Vec::new();
        let mut total_cents = None;
        let mut country = None;
        let mut created_at = None;
        let mut confirmed_at = None;
        let mut cancelled: Option<(&'static str, DateTime<Utc>)> = None;
        let mut compensated_at = None;
        let mut compensation_failed: Option<(&'static str, DateTime<Utc>)> = None;
        let (mut charged, mut declined, mut refunded, mut refund_failed) = (None, None, None, None);
        let (mut scheduled, mut rejected, mut shipment_cancelled) = (None, None, false);
        let mut steps = Vec::new();
        for recorded in events.iter() {
            steps.push(Step {
                event_id: recorded.event_id,
                event_type: recorded.event_type.clone(),
                source: recorded.source.clone(),
                occurred_at: recorded.occurred_at,
            });
            let at = recorded.occurred_at;
            // Stored events decoded when they were consumed; one that no longer decodes (a
            // type dropped by a later release) still shows as a step.
            let Ok(event) = Event::decode(&recorded.event_type, &recorded.payload) else {
                continue;
            };
            match event {
                Event::OrderCreated(created) => {
                    customer_id = Some(created.customer_id);
                    lines = created
                        .items
                        .into_iter()
                        .map(|item| Line {
                            sku: item.sku,
                            quantity: item.quantity,
                            unit_price_cents: None,
                        })
                        .collect();
                    country = Some(created.shipping_address.country);
                    created_at.get_or_insert(at);
                }
                Event::OrderConfirmed(_) => {
                    confirmed_at.get_or_insert(at);
                }
                Event::OrderCancelled(event) => {
                    cancelled.get_or_insert((event.reason.as_str(), at));
                }
                Event::StockReserved(reserved) => {
                    customer_id.get_or_insert(reserved.customer_id);
                    total_cents.get_or_insert(reserved.total_cents);
                    if prices.is_empty() {
                        prices = reserved
                            .items
                            .iter()
                            .map(|item| (item.sku.clone(), item.unit_price_cents))
                            .collect();
                        if lines.is_empty() {
                            lines = reserved
                                .items
                                .into_iter()
                                .map(|item| Line {
                                    sku: item.sku,
                                    quantity: item.quantity,
                                    unit_price_cents: None,
                                })
                                .collect();
                        }
                    }
                    country.get_or_insert(reserved.shipping_address.country);
                }
                Event::StockRejected(_) => {}
                Event::StockReleased(_) => {
                    compensated_at.get_or_insert(at);
                }
                Event::StockReleaseFailed(_) => {
                    compensation_failed.get_or_insert(("inventory.release", at));
                }
                Event::PaymentCharged(event) => {
                    customer_id.get_or_insert(event.customer_id);
                    charged.get_or_insert((event.amount_cents, event.payment_method.as_str()));
                }
                Event::PaymentDeclined(event) => {
                    declined.get_or_insert(event.reason.as_str());
                }
                Event::PaymentRefunded(event) => {
                    refunded.get_or_insert(event.amount_cents);
                    compensated_at.get_or_insert(at);
                }
                Event::RefundFailed(event) => {
                    refund_failed.get_or_insert(event.amount_cents);
                    compensation_failed.get_or_insert(("payment.refund", at));
                }
                Event::ShipmentScheduled(event) => {
                    scheduled.get_or_insert(event.country);
                }
                Event::ShipmentRejected(event) => {
                    rejected.get_or_insert(event.country);
                }
                Event::ShipmentCancelled(_) => {
                    shipment_cancelled = true;
                    compensated_at.get_or_insert(at);
                }
            }
        }
        for line in &mut lines {
            line.unit_price_cents = prices
                .iter()
                .find(|(sku, _)| *sku == line.sku)
                .map(|(_, price)| *price);
        }
        // The order service's rules (services/order/src/domain.rs), as a function of what
        // happened rather than of the order it was heard in.
        let (status, failed_step, finished_at) = match (confirmed_at, compensation_failed) {
            (Some(_), _) if compensated_at.is_some() => (
                Status::Failed,
                Some(HOLD_EXPIRED_STEP),
                compensated_at.max(confirmed_at),
            ),
            (Some(at), _) => (Status::Confirmed, None, Some(at)),
            (None, Some((step, at))) => (Status::Failed, Some(step), Some(at)),
            (None, None) => match cancelled {
                Some((_, at)) => (Status::Cancelled, None, Some(at)),
                None => (Status::Pending, None, None),
            },
        };
        let reason = cancelled.map(|(reason, _)| reason);
        let payment = match (charged, declined, refunded, refund_failed) {
            (charged, _, _, Some(amount)) => Some(Payment {
                status: "REFUND_FAILED",
                amount_cents: Some(amount),
                method: charged.map(|(_, method)| method),
                reason: None,
            }),
            (charged, _, Some(amount), None) => Some(Payment {
                status: "REFUNDED",
                amount_cents: Some(amount),
                method: charged.map(|(_, method)| method),
                reason: None,
            }),
            (Some((amount, method)), _, None, None) => Some(Payment {
                status: "CHARGED",
                amount_cents: Some(amount),
                method: Some(method),
                reason: None,
            }),
            (None, Some(reason), None, None) => Some(Payment {
                status: "DECLINED",
                amount_cents: None,
                method: None,
                reason: Some(reason),
            }),
            (None, None, None, None) => None,
        };
        let shipment = match (scheduled, rejected) {
            (Some(country), _) => Some(Shipment {
                status: if shipment_cancelled {
                    "CANCELLED"
                } else {
                    "SCHEDULED"
                },
                country,
            }),
            (None, Some(country)) => Some(Shipment {
                status: "REJECTED",
                country,
            }),
            (None, None) => None,
        };
        let duration_ms = match (created_at, finished_at) {
            (Some(created), Some(finished)) => Some((finished - created).num_milliseconds()),
            _ => None,
        };
        Self {
            order_id,
            customer_id,
            status,
            reason,
            failed_step,
            lines,
            total_cents: total_cents.or(charged.map(|(amount, _)| amount)),
            country,
            payment,
            shipment,
            last_event_at: steps.iter().map(|step| step.occurred_at).max(),
            steps,
            created_at,
            finished_at,
            duration_ms,
        }
    }
}

#[cfg(test)]
mod tests;
