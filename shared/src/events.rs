//! The event contracts of the order saga. Each payload type is one version of a subject
//! (`payment.charged.v2`: subject `payment.charged`, version 2), published on the topic of the
//! service that emits it, keyed by order id. [`Event`] holds every subject at its current
//! version; [`Event::decode`] is the one place where older versions are upcast and newer ones
//! read. Every version has a committed JSON Schema (`shared::schemas`, `cargo xtask schemas`).

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::envelope::EventPayload;
use crate::schemas::EventSchema;
use crate::topics::Topic;

macro_rules! event {
    ($name:ident, $subject:literal, $version:literal, $topic:expr) => {
        impl EventPayload for $name {
            const TYPE: &'static str = concat!($subject, ".v", $version);
            const SUBJECT: &'static str = $subject;
            const VERSION: u32 = $version;
            const TOPIC: Topic = $topic;
        }
    };
    ($name:ident, $subject:literal, $version:literal, $topic:expr, compensates = $what:literal) => {
        impl EventPayload for $name {
            const TYPE: &'static str = concat!($subject, ".v", $version);
            const SUBJECT: &'static str = $subject;
            const VERSION: u32 = $version;
            const TOPIC: Topic = $topic;
            const COMPENSATES: Option<&'static str> = Some($what);
        }
    };
}

/// One line of an order as the customer asked for it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct OrderLine {
    pub sku: String,
    pub quantity: i32,
}

/// One reserved line, priced at the time of reservation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
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

impl StockRejection {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::OutOfStock => "out_of_stock",
            Self::UnknownProduct => "unknown_product",
        }
    }
}

/// Why payment declined an order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum DeclineReason {
    NoAccount,
    InsufficientFunds,
}

impl DeclineReason {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::NoAccount => "no_account",
            Self::InsufficientFunds => "insufficient_funds",
        }
    }
}

/// A customer placed an order; the saga starts.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct OrderCreated {
    pub order_id: Uuid,
    pub customer_id: String,
    pub items: Vec<OrderLine>,
    pub shipping_address: ShippingAddress,
}
event!(OrderCreated, "order.created", 1, Topic::Order);

/// Every step succeeded; the order is final.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct OrderConfirmed {
    pub order_id: Uuid,
}
event!(OrderConfirmed, "order.confirmed", 1, Topic::Order);

/// The order is cancelled; every service undoes what it did for it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct OrderCancelled {
    pub order_id: Uuid,
    pub reason: CancellationReason,
}
event!(
    OrderCancelled,
    "order.cancelled",
    1,
    Topic::Order,
    compensates = "cancel order"
);

/// Stock is reserved for every line; carries the priced total and the address forward.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct StockReserved {
    pub order_id: Uuid,
    pub customer_id: String,
    pub items: Vec<PricedLine>,
    pub total_cents: i64,
    pub shipping_address: ShippingAddress,
}
event!(StockReserved, "inventory.reserved", 1, Topic::Inventory);

/// Stock could not be reserved; nothing was reserved.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct StockRejected {
    pub order_id: Uuid,
    pub reason: StockRejection,
    /// The first line that could not be reserved.
    pub sku: String,
}
event!(StockRejected, "inventory.rejected", 1, Topic::Inventory);

/// Compensation: a reservation was released back to available stock.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct StockReleased {
    pub order_id: Uuid,
    pub items: Vec<PricedLine>,
}
event!(
    StockReleased,
    "inventory.released",
    1,
    Topic::Inventory,
    compensates = "release reservation"
);

/// How a charge was paid.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, schemars::JsonSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum PaymentMethod {
    /// The customer's prepaid account balance: every charge before `payment.charged.v2`.
    #[default]
    AccountBalance,
}

impl PaymentMethod {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::AccountBalance => "account_balance",
        }
    }
}

/// The customer's account was charged the order total. v2 records how it was paid.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct PaymentCharged {
    pub order_id: Uuid,
    pub customer_id: String,
    pub amount_cents: i64,
    pub shipping_address: ShippingAddress,
    /// Optional on the wire, as a field added by a later version must be; absent reads as the
    /// account balance.
    #[serde(default)]
    pub payment_method: PaymentMethod,
}
event!(PaymentCharged, "payment.charged", 2, Topic::Payment);

/// `payment.charged.v1`, as releases before v2 write it. Consumers upcast it to
/// [`PaymentCharged`]; the payment service writes it while pinned to v1 during a rolling
/// upgrade (`PAYMENT_CHARGED_VERSION=1`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct PaymentChargedV1 {
    pub order_id: Uuid,
    pub customer_id: String,
    pub amount_cents: i64,
    pub shipping_address: ShippingAddress,
}
event!(PaymentChargedV1, "payment.charged", 1, Topic::Payment);

impl From<PaymentChargedV1> for PaymentCharged {
    /// Every v1 charge was taken from the account balance.
    fn from(v1: PaymentChargedV1) -> Self {
        Self {
            order_id: v1.order_id,
            customer_id: v1.customer_id,
            amount_cents: v1.amount_cents,
            shipping_address: v1.shipping_address,
            payment_method: PaymentMethod::AccountBalance,
        }
    }
}

impl From<PaymentCharged> for PaymentChargedV1 {
    fn from(charged: PaymentCharged) -> Self {
        Self {
            order_id: charged.order_id,
            customer_id: charged.customer_id,
            amount_cents: charged.amount_cents,
            shipping_address: charged.shipping_address,
        }
    }
}

/// The charge was declined; nothing was charged.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct PaymentDeclined {
    pub order_id: Uuid,
    pub reason: DeclineReason,
}
event!(PaymentDeclined, "payment.declined", 1, Topic::Payment);

/// Compensation: a charge was refunded to the account.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct PaymentRefunded {
    pub order_id: Uuid,
    pub amount_cents: i64,
}
event!(
    PaymentRefunded,
    "payment.refunded",
    1,
    Topic::Payment,
    compensates = "refund payment"
);

/// A shipment was scheduled to a served country.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct ShipmentScheduled {
    pub order_id: Uuid,
    pub country: String,
}
event!(ShipmentScheduled, "shipment.scheduled", 1, Topic::Shipping);

/// The destination country is not served; no shipment exists.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct ShipmentRejected {
    pub order_id: Uuid,
    pub country: String,
}
event!(ShipmentRejected, "shipment.rejected", 1, Topic::Shipping);

/// Compensation: a scheduled shipment was cancelled.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct ShipmentCancelled {
    pub order_id: Uuid,
}
event!(
    ShipmentCancelled,
    "shipment.cancelled",
    1,
    Topic::Shipping,
    compensates = "cancel shipment"
);

/// Compensation failed for good: reserved stock could not be released (e.g. its product is
/// gone). Needs a person; the order ends `FAILED`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct StockReleaseFailed {
    pub order_id: Uuid,
    pub error: String,
}
event!(
    StockReleaseFailed,
    "inventory.release_failed",
    1,
    Topic::Inventory
);

/// Compensation failed for good: a charge could not be refunded (e.g. the account is gone).
/// Needs a person; the order ends `FAILED`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct RefundFailed {
    pub order_id: Uuid,
    pub amount_cents: i64,
    pub error: String,
}
event!(RefundFailed, "payment.refund_failed", 1, Topic::Payment);

/// Declares [`Event`]: one variant per event subject, carrying the current version's payload.
macro_rules! events {
    ($($variant:ident),* $(,)?) => {
        /// Every event of the saga, decoded once (by the consumer, in `shared`) at its current
        /// version. Handlers `match` it exhaustively, so a new event is a compile error wherever
        /// it is neither handled nor explicitly ignored.
        #[derive(Debug, Clone, PartialEq)]
        pub enum Event {
            $($variant($variant),)*
        }

        impl Event {
            /// The versioned type name of the current version, e.g. `payment.charged.v2`.
            pub fn type_name(&self) -> &'static str {
                match self {
                    $(Self::$variant(_) => $variant::TYPE,)*
                }
            }

            /// The topic of the service that owns (publishes) this event.
            pub fn topic(&self) -> Topic {
                match self {
                    $(Self::$variant(_) => $variant::TOPIC,)*
                }
            }

            /// The JSON Schema of the current version of every event.
            pub(crate) fn current_schemas() -> Vec<EventSchema> {
                vec![$(EventSchema::of::<$variant>(),)*]
            }

            /// The subjects (type names without version) of every event.
            pub const SUBJECTS: &'static [&'static str] = &[$($variant::SUBJECT,)*];

            /// Reads a payload of `subject` at `version` or newer as the current version.
            fn read_current(
                subject: &str,
                version: u32,
                payload: &serde_json::Value,
            ) -> Option<Result<Self, serde_json::Error>> {
                match subject {
                    $($variant::SUBJECT if version >= $variant::VERSION => {
                        Some($variant::deserialize(payload).map(Self::$variant))
                    })*
                    _ => None,
                }
            }
        }
    };
}

events!(
    OrderCreated,
    OrderConfirmed,
    OrderCancelled,
    StockReserved,
    StockRejected,
    StockReleased,
    StockReleaseFailed,
    PaymentCharged,
    PaymentDeclined,
    PaymentRefunded,
    RefundFailed,
    ShipmentScheduled,
    ShipmentRejected,
    ShipmentCancelled,
);

/// Why a message is not an event this build can read.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    /// Not a `<subject>.v<N>` type of the contract, or a version no longer (or never) readable.
    #[error("unknown event type {0:?}")]
    UnknownType(String),
    #[error("{event_type} payload does not match its schema: {source}")]
    Malformed {
        event_type: String,
        source: serde_json::Error,
    },
}

/// Splits a versioned type name: `payment.charged.v2` is subject `payment.charged`, version 2.
pub fn split_type(event_type: &str) -> Option<(&str, u32)> {
    let (subject, version) = event_type.rsplit_once(".v")?;
    let subject_ok = !subject.is_empty()
        && !subject.starts_with('.')
        && subject
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'.');
    let version_ok = version.bytes().all(|b| b.is_ascii_digit()) && !version.starts_with('0');
    let version: u32 = version.parse().ok()?;
    (subject_ok && version_ok).then_some((subject, version))
}

impl Event {
    /// Decodes the payload of an event of type `event_type`; the one place where versions meet.
    ///
    /// - The current version decodes as itself.
    /// - An older version is upcast to the current one ([`upcast`]).
    /// - A newer version than this build knows (written by a producer already upgraded while
    ///   this consumer is not) is read as the current version: the compatibility gate
    ///   (`cargo xtask schemas`, BACKWARD_TRANSITIVE) only lets a version add optional fields,
    ///   never remove or retype one, and readers ignore fields they do not know.
    pub fn decode(event_type: &str, payload: &serde_json::Value) -> Result<Self, DecodeError> {
        let unknown = || DecodeError::UnknownType(event_type.to_owned());
        let (subject, version) = split_type(event_type).ok_or_else(unknown)?;
        let decoded = upcast(subject, version, payload)
            .or_else(|| Self::read_current(subject, version, payload))
            .ok_or_else(unknown)?;
        decoded.map_err(|source| DecodeError::Malformed {
            event_type: event_type.to_owned(),
            source,
        })
    }
}

/// Every older version still read (by [`upcast`]): a published version is never dropped, since
/// its events may still sit on the topics.
pub(crate) fn older_schemas() -> Vec<EventSchema> {
    vec![EventSchema::of::<PaymentChargedV1>()]
}

/// Reads an older version of a subject and turns it into the current one; `None` when
/// (`subject`, `version`) is not an older version.
fn upcast(
    subject: &str,
    version: u32,
    payload: &serde_json::Value,
) -> Option<Result<Event, serde_json::Error>> {
    fn from_older<Older: EventPayload + Into<Current>, Current>(
        payload: &serde_json::Value,
        variant: fn(Current) -> Event,
    ) -> Result<Event, serde_json::Error> {
        Older::deserialize(payload).map(|older| variant(older.into()))
    }
    match (subject, version) {
        (PaymentChargedV1::SUBJECT, PaymentChargedV1::VERSION) => {
            Some(from_older::<PaymentChargedV1, _>(
                payload,
                Event::PaymentCharged,
            ))
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payloads_decode_per_type_and_unknown_types_are_told_apart() {
        let order_id = Uuid::now_v7();
        let good = serde_json::to_value(OrderConfirmed { order_id }).unwrap();
        assert_eq!(
            Event::decode("order.confirmed.v1", &good).unwrap(),
            Event::OrderConfirmed(OrderConfirmed { order_id })
        );
        assert!(matches!(
            Event::decode("order.cancelled.v1", &good),
            Err(DecodeError::Malformed { .. })
        ));
        for unknown in [
            "order.exploded.v1",
            "order.confirmed",
            "order.confirmed.v0",
            "order.confirmed.vx",
            "order.confirmed.v01",
        ] {
            assert!(
                matches!(
                    Event::decode(unknown, &good),
                    Err(DecodeError::UnknownType(_))
                ),
                "{unknown}"
            );
        }
    }

    #[test]
    fn readers_ignore_fields_they_do_not_know() {
        let order_id = Uuid::now_v7();
        let payload = serde_json::json!({"order_id": order_id, "added_later": {"any": 1}});
        assert_eq!(
            Event::decode("order.confirmed.v1", &payload).unwrap(),
            Event::OrderConfirmed(OrderConfirmed { order_id })
        );
    }

    #[test]
    fn a_newer_version_than_this_build_knows_is_read_as_the_current_one() {
        let order_id = Uuid::now_v7();
        let payload = serde_json::json!({"order_id": order_id, "confirmed_by": "a later release"});
        let newer = format!("order.confirmed.v{}", OrderConfirmed::VERSION + 1);
        assert_eq!(
            Event::decode(&newer, &payload).unwrap(),
            Event::OrderConfirmed(OrderConfirmed { order_id })
        );
    }

    fn address() -> ShippingAddress {
        ShippingAddress {
            country: "DE".to_owned(),
            rest: serde_json::Map::new(),
        }
    }

    #[test]
    fn a_v1_charge_is_upcast_to_the_current_version() {
        let order_id = Uuid::now_v7();
        let v1 = PaymentChargedV1 {
            order_id,
            customer_id: "c-1".to_owned(),
            amount_cents: 1_500,
            shipping_address: address(),
        };
        let payload = serde_json::to_value(&v1).unwrap();
        assert!(payload.get("payment_method").is_none());
        let Event::PaymentCharged(charged) = Event::decode("payment.charged.v1", &payload).unwrap()
        else {
            panic!("not a charge");
        };
        assert_eq!(charged.payment_method, PaymentMethod::AccountBalance);
        assert_eq!(PaymentChargedV1::from(charged.clone()), v1);
        assert_eq!(
            Event::PaymentCharged(charged).type_name(),
            "payment.charged.v2"
        );
    }

    #[test]
    fn a_v2_charge_reads_as_itself_and_its_method_may_be_absent() {
        let order_id = Uuid::now_v7();
        let mut payload = serde_json::to_value(PaymentCharged {
            order_id,
            customer_id: "c-1".to_owned(),
            amount_cents: 1_500,
            shipping_address: address(),
            payment_method: PaymentMethod::AccountBalance,
        })
        .unwrap();
        assert_eq!(payload["payment_method"], "account_balance");
        assert!(Event::decode("payment.charged.v2", &payload).is_ok());
        payload.as_object_mut().unwrap().remove("payment_method");
        assert!(Event::decode("payment.charged.v2", &payload).is_ok());
        payload["payment_method"] = serde_json::json!("barter");
        assert!(matches!(
            Event::decode("payment.charged.v2", &payload),
            Err(DecodeError::Malformed { .. })
        ));
    }

    #[test]
    fn every_version_with_a_schema_is_readable() {
        // The records of the state topics are not events (`crate::state`).
        let states: Vec<&str> = crate::schemas::state_schemas()
            .iter()
            .map(|schema| schema.event_type)
            .collect();
        assert!(!states.is_empty());
        for schema in crate::schemas::generated() {
            if states.contains(&schema.event_type) {
                continue;
            }
            // An empty payload matches no schema, but the type must be known.
            let decoded = Event::decode(schema.event_type, &serde_json::json!({}));
            assert!(
                !matches!(decoded, Err(DecodeError::UnknownType(_))),
                "{} has a schema but is not read",
                schema.event_type
            );
        }
    }

    #[test]
    fn reason_names_are_their_wire_names() {
        for reason in [DeclineReason::NoAccount, DeclineReason::InsufficientFunds] {
            assert_eq!(serde_json::to_value(reason).unwrap(), reason.as_str());
        }
        for reason in [StockRejection::OutOfStock, StockRejection::UnknownProduct] {
            assert_eq!(serde_json::to_value(reason).unwrap(), reason.as_str());
        }
    }

    #[test]
    fn every_subject_is_declared_once_with_its_type_name() {
        let mut subjects = Event::SUBJECTS.to_vec();
        subjects.sort_unstable();
        subjects.dedup();
        assert_eq!(subjects.len(), Event::SUBJECTS.len());
        let event = Event::OrderConfirmed(OrderConfirmed {
            order_id: Uuid::now_v7(),
        });
        assert_eq!(event.type_name(), "order.confirmed.v1");
        assert_eq!(
            split_type("payment.refund_failed.v12"),
            Some(("payment.refund_failed", 12))
        );
    }
}
