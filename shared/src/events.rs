//! The event contracts of the order saga. Each type is versioned (`*.v1`) and published on the
//! topic of the service that emits it, keyed by order id.

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::envelope::EventPayload;
use crate::topics::Topic;

macro_rules! event {
    ($name:ident, $type_name:literal, $topic:expr) => {
        impl EventPayload for $name {
            const TYPE: &'static str = $type_name;
            const TOPIC: Topic = $topic;
        }
    };
}

/// One line of an order as the customer asked for it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct OrderLine {
    pub sku: String,
    pub quantity: i32,
}

/// One reserved line, priced at the time of reservation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PricedLine {
    pub sku: String,
    pub quantity: i32,
    pub unit_price_cents: i64,
}

/// Where the order ships to: an ISO 3166-1 alpha-2 country plus free-form address fields.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct ShippingAddress {
    pub country: String,
    #[serde(flatten)]
    pub rest: serde_json::Map<String, serde_json::Value>,
}

/// Why an order ended `CANCELLED`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum CancellationReason {
    OutOfStock,
    UnknownProduct,
    PaymentDeclined,
    ShippingUnavailable,
    CancelledByCustomer,
    /// The saga did not end within its deadline.
    Timeout,
}

impl CancellationReason {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::OutOfStock => "out_of_stock",
            Self::UnknownProduct => "unknown_product",
            Self::PaymentDeclined => "payment_declined",
            Self::ShippingUnavailable => "shipping_unavailable",
            Self::CancelledByCustomer => "cancelled_by_customer",
            Self::Timeout => "timeout",
        }
    }
}

/// Why inventory could not reserve an order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum StockRejection {
    OutOfStock,
    UnknownProduct,
}

/// Why payment declined an order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum DeclineReason {
    NoAccount,
    InsufficientFunds,
}

/// A customer placed an order; the saga starts.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct OrderCreated {
    pub order_id: Uuid,
    pub customer_id: String,
    pub items: Vec<OrderLine>,
    pub shipping_address: ShippingAddress,
}
event!(OrderCreated, "order.created.v1", Topic::Order);

/// Every step succeeded; the order is final.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct OrderConfirmed {
    pub order_id: Uuid,
}
event!(OrderConfirmed, "order.confirmed.v1", Topic::Order);

/// The order is cancelled; every service undoes what it did for it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct OrderCancelled {
    pub order_id: Uuid,
    pub reason: CancellationReason,
}
event!(OrderCancelled, "order.cancelled.v1", Topic::Order);

/// Stock is reserved for every line; carries the priced total and the address forward.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct StockReserved {
    pub order_id: Uuid,
    pub customer_id: String,
    pub items: Vec<PricedLine>,
    pub total_cents: i64,
    pub shipping_address: ShippingAddress,
}
event!(StockReserved, "inventory.reserved.v1", Topic::Inventory);

/// Stock could not be reserved; nothing was reserved.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct StockRejected {
    pub order_id: Uuid,
    pub reason: StockRejection,
    /// The first line that could not be reserved.
    pub sku: String,
}
event!(StockRejected, "inventory.rejected.v1", Topic::Inventory);

/// Compensation: a reservation was released back to available stock.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct StockReleased {
    pub order_id: Uuid,
    pub items: Vec<PricedLine>,
}
event!(StockReleased, "inventory.released.v1", Topic::Inventory);

/// The customer's account was charged the order total.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PaymentCharged {
    pub order_id: Uuid,
    pub customer_id: String,
    pub amount_cents: i64,
    pub shipping_address: ShippingAddress,
}
event!(PaymentCharged, "payment.charged.v1", Topic::Payment);

/// The charge was declined; nothing was charged.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PaymentDeclined {
    pub order_id: Uuid,
    pub reason: DeclineReason,
}
event!(PaymentDeclined, "payment.declined.v1", Topic::Payment);

/// Compensation: a charge was refunded to the account.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PaymentRefunded {
    pub order_id: Uuid,
    pub amount_cents: i64,
}
event!(PaymentRefunded, "payment.refunded.v1", Topic::Payment);

/// A shipment was scheduled to a served country.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ShipmentScheduled {
    pub order_id: Uuid,
    pub country: String,
}
event!(ShipmentScheduled, "shipment.scheduled.v1", Topic::Shipping);

/// The destination country is not served; no shipment exists.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ShipmentRejected {
    pub order_id: Uuid,
    pub country: String,
}
event!(ShipmentRejected, "shipment.rejected.v1", Topic::Shipping);

/// Compensation: a scheduled shipment was cancelled.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ShipmentCancelled {
    pub order_id: Uuid,
}
event!(ShipmentCancelled, "shipment.cancelled.v1", Topic::Shipping);

/// Compensation failed for good: reserved stock could not be released (e.g. its product is
/// gone). Needs a person; the order ends `FAILED`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct StockReleaseFailed {
    pub order_id: Uuid,
    pub error: String,
}
event!(
    StockReleaseFailed,
    "inventory.release_failed.v1",
    Topic::Inventory
);

/// Compensation failed for good: a charge could not be refunded (e.g. the account is gone).
/// Needs a person; the order ends `FAILED`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RefundFailed {
    pub order_id: Uuid,
    pub amount_cents: i64,
    pub error: String,
}
event!(RefundFailed, "payment.refund_failed.v1", Topic::Payment);

/// Checks that `payload` matches the schema of the contract type `event_type`.
/// `None` means the type is not part of the contract at all.
pub fn check_schema(
    event_type: &str,
    payload: &serde_json::Value,
) -> Option<Result<(), serde_json::Error>> {
    fn check<P: EventPayload>(payload: &serde_json::Value) -> Result<(), serde_json::Error> {
        P::deserialize(payload).map(drop)
    }
    let checker: fn(&serde_json::Value) -> Result<(), serde_json::Error> = match event_type {
        OrderCreated::TYPE => check::<OrderCreated>,
        OrderConfirmed::TYPE => check::<OrderConfirmed>,
        OrderCancelled::TYPE => check::<OrderCancelled>,
        StockReserved::TYPE => check::<StockReserved>,
        StockRejected::TYPE => check::<StockRejected>,
        StockReleased::TYPE => check::<StockReleased>,
        StockReleaseFailed::TYPE => check::<StockReleaseFailed>,
        PaymentCharged::TYPE => check::<PaymentCharged>,
        PaymentDeclined::TYPE => check::<PaymentDeclined>,
        PaymentRefunded::TYPE => check::<PaymentRefunded>,
        RefundFailed::TYPE => check::<RefundFailed>,
        ShipmentScheduled::TYPE => check::<ShipmentScheduled>,
        ShipmentRejected::TYPE => check::<ShipmentRejected>,
        ShipmentCancelled::TYPE => check::<ShipmentCancelled>,
        _ => return None,
    };
    Some(checker(payload))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schemas_are_checked_per_type_and_unknown_types_are_told_apart() {
        let order_id = Uuid::now_v7();
        let good = serde_json::to_value(OrderConfirmed { order_id }).unwrap();
        assert!(matches!(
            check_schema("order.confirmed.v1", &good),
            Some(Ok(()))
        ));
        assert!(matches!(
            check_schema("order.cancelled.v1", &good),
            Some(Err(_))
        ));
        assert!(check_schema("order.exploded.v1", &good).is_none());
    }
}
