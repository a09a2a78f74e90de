//! Shipping's saga rules: the served countries, and one pure function from an order's shipment
//! record plus one saga event to the next record and the events to publish. No I/O here;
//! `handler` loads the record, calls [`decide`] and stores the difference.
//!
//! `payment.charged` schedules a shipment to a served country, or rejects it; `order.cancelled`
//! cancels a scheduled shipment, or voids one never made so a late charge never ships;
//! `order.confirmed` makes a scheduled shipment final. A scheduled shipment no decision reached
//! within `HOLD_TIMEOUT_MS` is cancelled as for `order.cancelled` ([`SagaEvent::HoldExpired`]);
//! a confirmation arriving after that is recorded on the cancelled shipment and nothing more
//! (the order service makes that order `FAILED`). Any other pairing changes nothing, so
//! duplicates and late events are harmless.

use std::collections::BTreeSet;

use shared::events::{
    OrderCancelled, OrderConfirmed, PaymentCharged, ShipmentCancelled, ShipmentRejected,
    ShipmentScheduled, ShippingAddress,
};
use uuid::Uuid;

/// The set of served destination countries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Countries(BTreeSet<String>);

impl Countries {
    /// Parses a comma separated list of ISO 3166-1 alpha-2 codes such as `FR,DE`.
    pub fn parse(list: &str) -> anyhow::Result<Self> {
        let mut countries = BTreeSet::new();
        for code in list
            .split(',')
            .map(str::trim)
            .filter(|code| !code.is_empty())
        {
            let code = code.to_ascii_uppercase();
            anyhow::ensure!(
                code.len() == 2 && code.bytes().all(|byte| byte.is_ascii_uppercase()),
                "SHIPPING_COUNTRIES: {code:?} is not an ISO 3166-1 alpha-2 code"
            );
            countries.insert(code);
        }
        Ok(Self(countries))
    }

    pub fn serves(&self, country: &str) -> bool {
        self.0.contains(country)
    }

    pub fn iter(&self) -> impl Iterator<Item = &str> {
        self.0.iter().map(String::as_str)
    }
}

/// Where an order's shipment stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ShipmentStatus {
    Scheduled,
    Rejected,
    Cancelled,
    /// The order was cancelled before it was paid: nothing may be scheduled for it later.
    Voided,
}

impl ShipmentStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Scheduled => "SCHEDULED",
            Self::Rejected => "REJECTED",
            Self::Cancelled => "CANCELLED",
            Self::Voided => "VOIDED",
        }
    }

    pub fn parse(value: &str) -> Option<Self> {
        [
            Self::Scheduled,
            Self::Rejected,
            Self::Cancelled,
            Self::Voided,
        ]
        .into_iter()
        .find(|status| status.as_str() == value)
    }
}

/// What shipping did for one order.
#[derive(Debug, Clone, PartialEq)]
pub struct Shipment {
    pub status: ShipmentStatus,
    /// The destination; `None` for a voided shipment.
    pub country: Option<String>,
    pub address: Option<ShippingAddress>,
    /// `order.confirmed` arrived: a scheduled shipment is final, no longer a hold.
    pub confirmed: bool,
    /// Cancelled because no decision came within the hold timeout.
    pub hold_expired: bool,
}

/// The saga events shipping reacts to.
#[derive(Debug, Clone, PartialEq)]
pub enum SagaEvent {
    PaymentCharged(PaymentCharged),
    OrderCancelled(OrderCancelled),
    OrderConfirmed(OrderConfirmed),
    /// The hold timeout passed with no decision (from the hold expiry worker).
    HoldExpired {
        order_id: Uuid,
    },
}

/// An event shipping publishes.
#[derive(Debug, Clone, PartialEq)]
pub enum Emit {
    Scheduled(ShipmentScheduled),
    Rejected(ShipmentRejected),
    Cancelled(ShipmentCancelled),
}

/// The outcome of an event: the shipment to store (`None`: still none; equal to the one given
/// when nothing changes) and the events to publish.
#[derive(Debug, Clone, PartialEq)]
pub struct Decision {
    pub next: Option<Shipment>,
    pub emit: Vec<Emit>,
}

/// Applies `event` to the order's `shipment` (`None`: never seen), shipping to `countries`.
pub fn decide(countries: &Countries, shipment: Option<&Shipment>, event: SagaEvent) -> Decision {
    match (shipment, event) {
        (None, SagaEvent::PaymentCharged(charged)) => {
            let order_id = charged.order_id;
            let country = charged.shipping_address.country.clone();
            let (status, emitted) = if countries.serves(&country) {
                let scheduled = ShipmentScheduled {
                    order_id,
                    country: country.clone(),
                };
                (ShipmentStatus::Scheduled, Emit::Scheduled(scheduled))
            } else {
                let rejected = ShipmentRejected {
                    order_id,
                    country: country.clone(),
                };
                (ShipmentStatus::Rejected, Emit::Rejected(rejected))
            };
            Decision {
                next: Some(Shipment {
                    status,
                    country: Some(country),
                    address: Some(charged.shipping_address),
                    confirmed: false,
                    hold_expired: false,
                }),
                emit: vec![emitted],
            }
        }
        (None, SagaEvent::OrderCancelled(_)) => Decision {
            next: Some(Shipment {
                status: ShipmentStatus::Voided,
                country: None,
                address: None,
                confirmed: false,
                hold_expired: false,
            }),
            emit: Vec::new(),
        },
        (Some(shipment), SagaEvent::OrderCancelled(cancelled))
            if shipment.status == ShipmentStatus::Scheduled =>
        {
            cancel(shipment, cancelled.order_id, false)
        }
        (Some(shipment), SagaEvent::HoldExpired { order_id })
            if shipment.status == ShipmentStatus::Scheduled && !shipment.confirmed =>
        {
            cancel(shipment, order_id, true)
        }
        // Makes a scheduled shipment final, or records a confirmation that came after the hold
        // expired.
        (Some(shipment), SagaEvent::OrderConfirmed(_))
            if !shipment.confirmed
                && (shipment.status == ShipmentStatus::Scheduled || shipment.hold_expired) =>
        {
            Decision {
                next: Some(Shipment {
                    confirmed: true,
                    ..shipment.clone()
                }),
                emit: Vec::new(),
            }
        }
        (shipment, _) => Decision {
            next: shipment.cloned(),
            emit: Vec::new(),
        },
    }
}

/// Cancels a scheduled shipment (`hold_expired`: because no decision came in time).
fn cancel(shipment: &Shipment, order_id: Uuid, hold_expired: bool) -> Decision {
    Decision {
        next: Some(Shipment {
            status: ShipmentStatus::Cancelled,
            hold_expired,
            ..shipment.clone()
        }),
        emit: vec![Emit::Cancelled(ShipmentCancelled { order_id })],
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use shared::events::CancellationReason;

    const ORDER: Uuid = Uuid::from_u128(1);

    fn served() -> Countries {
        Countries::parse("FR,DE").unwrap()
    }

    fn charged(country: &str) -> SagaEvent {
        SagaEvent::PaymentCharged(PaymentCharged {
            order_id: ORDER,
            customer_id: "alice".to_owned(),
            amount_cents: 100,
            shipping_address: ShippingAddress {
                country: country.to_owned(),
                rest: serde_json::Map::from_iter([("city".to_owned(), "Lyon".into())]),
            },
            payment_method: Default::default(),
        })
    }

    fn cancelled() -> SagaEvent {
        SagaEvent::OrderCancelled(OrderCancelled {
            order_id: ORDER,
            reason: CancellationReason::Timeout,
        })
    }

    fn confirmed() -> SagaEvent {
        SagaEvent::OrderConfirmed(OrderConfirmed { order_id: ORDER })
    }

    fn expired() -> SagaEvent {
        SagaEvent::HoldExpired { order_id: ORDER }
    }

    fn status(shipment: &Option<Shipment>) -> Option<ShipmentStatus> {
        shipment.as_ref().map(|shipment| shipment.status)
    }

    #[test]
    fn default_countries_parse_and_exclude_antarctica() {
        let countries = Countries::parse(crate::config::DEFAULT_COUNTRIES).unwrap();
        assert!(countries.serves("FR"));
        assert!(!countries.serves("AQ"));
        assert!(Countries::parse("FR,France").is_err());
    }

    #[test]
    fn a_charge_schedules_to_a_served_country_and_is_rejected_elsewhere() {
        let Decision { next, emit } = decide(&served(), None, charged("FR"));
        assert_eq!(status(&next), Some(ShipmentStatus::Scheduled));
        assert_eq!(next.as_ref().unwrap().country.as_deref(), Some("FR"));
        assert_eq!(next.unwrap().address.unwrap().rest["city"], "Lyon");
        assert!(matches!(&emit[..], [Emit::Scheduled(scheduled)] if scheduled.country == "FR"));

        let Decision { next, emit } = decide(&served(), None, charged("AQ"));
        assert_eq!(status(&next), Some(ShipmentStatus::Rejected));
        assert!(matches!(&emit[..], [Emit::Rejected(rejected)] if rejected.country == "AQ"));
    }

    #[test]
    fn a_cancellation_cancels_a_scheduled_shipment_only() {
        let scheduled = decide(&served(), None, charged("FR")).next;
        let Decision { next, emit } = decide(&served(), scheduled.as_ref(), cancelled());
        assert_eq!(status(&next), Some(ShipmentStatus::Cancelled));
        assert_eq!(
            emit,
            vec![Emit::Cancelled(ShipmentCancelled { order_id: ORDER })]
        );

        let rejected = decide(&served(), None, charged("AQ")).next;
        let Decision { next, emit } = decide(&served(), rejected.as_ref(), cancelled());
        assert_eq!((next, emit), (rejected, Vec::new()));
    }

    #[test]
    fn a_cancellation_before_the_charge_prevents_shipping() {
        let Decision { next: voided, emit } = decide(&served(), None, cancelled());
        assert_eq!(status(&voided), Some(ShipmentStatus::Voided));
        assert!(emit.is_empty());
        let late = decide(&served(), voided.as_ref(), charged("FR"));
        assert_eq!(
            late,
            Decision {
                next: voided,
                emit: Vec::new()
            }
        );
    }

    #[test]
    fn a_shipment_no_decision_reached_is_cancelled_when_its_hold_expires() {
        let scheduled = decide(&served(), None, charged("FR")).next;
        let Decision { next, emit } = decide(&served(), scheduled.as_ref(), expired());
        assert_eq!(status(&next), Some(ShipmentStatus::Cancelled));
        assert!(next.as_ref().unwrap().hold_expired);
        assert_eq!(
            emit,
            vec![Emit::Cancelled(ShipmentCancelled { order_id: ORDER })]
        );
        // The confirmation that lost the race is recorded, nothing is scheduled again.
        let late = decide(&served(), next.as_ref(), confirmed());
        assert!(late.emit.is_empty());
        assert_eq!(status(&late.next), Some(ShipmentStatus::Cancelled));
        assert!(late.next.as_ref().unwrap().confirmed);

        // A confirmed shipment is final: its hold never expires.
        let Decision { next: final_, emit } = decide(&served(), scheduled.as_ref(), confirmed());
        assert!(emit.is_empty());
        assert_eq!(status(&final_), Some(ShipmentStatus::Scheduled));
        let Decision { next, emit } = decide(&served(), final_.as_ref(), expired());
        assert_eq!((next, emit), (final_, Vec::new()));
    }

    /// One order's shipment after `events`, and every event published on the way.
    fn replay(
        countries: &Countries,
        events: impl IntoIterator<Item = SagaEvent>,
    ) -> (Option<Shipment>, Vec<Emit>) {
        events
            .into_iter()
            .fold((None, Vec::new()), |(shipment, mut published), event| {
                let Decision { next, emit } = decide(countries, shipment.as_ref(), event);
                published.extend(emit);
                (next, published)
            })
    }

    fn label(emitted: &Emit) -> &'static str {
        match emitted {
            Emit::Scheduled(_) => "scheduled",
            Emit::Rejected(_) => "rejected",
            Emit::Cancelled(_) => "cancelled",
        }
    }

    /// An order's events: its charge (to a served country or not) and its cancellation, in any
    /// order and any number of times.
    fn any_events() -> impl Strategy<Value = Vec<SagaEvent>> {
        any::<bool>().prop_flat_map(|served| {
            let country = if served { "FR" } else { "AQ" };
            proptest::collection::vec(
                prop_oneof![
                    Just(charged(country)),
                    Just(cancelled()),
                    Just(confirmed()),
                    Just(expired())
                ],
                0..8,
            )
        })
    }

    /// What the consumer delivers (and may deliver again; the hold expiry is not delivered):
    /// a confirmation only after the charge, as the saga orders them.
    fn any_consumed() -> impl Strategy<Value = Vec<SagaEvent>> {
        any_events().prop_map(|events| {
            let mut charged = false;
            events
                .into_iter()
                .filter(|event| match event {
                    SagaEvent::PaymentCharged(_) => {
                        charged = true;
                        true
                    }
                    SagaEvent::OrderConfirmed(_) => charged,
                    SagaEvent::HoldExpired { .. } => false,
                    SagaEvent::OrderCancelled(_) => true,
                })
                .collect()
        })
    }

    proptest! {
        #[test]
        fn a_shipment_is_scheduled_at_most_once_and_cancelled_only_if_scheduled(events in any_events()) {
            let cancelled_at_all = events.contains(&cancelled());
            let first = |wanted: &SagaEvent| events.iter().position(|event| event == wanted);
            let (confirmed_at, expired_at) = (first(&confirmed()), first(&expired()));
            let scheduled_at = events.iter().position(|event| matches!(event, SagaEvent::PaymentCharged(_)));
            // Charged, then confirmed, then (if ever) expired, never cancelled.
            let confirmed_before_expiry = !cancelled_at_all
                && scheduled_at < confirmed_at
                && (expired_at.is_none() || confirmed_at < expired_at);
            let (shipment, published) = replay(&served(), events);
            let published: Vec<&str> = published.iter().map(label).collect();
            prop_assert!(
                matches!(published[..], [] | ["rejected"] | ["scheduled"] | ["scheduled", "cancelled"]),
                "published {published:?}"
            );
            if cancelled_at_all {
                prop_assert_ne!(status(&shipment), Some(ShipmentStatus::Scheduled));
            }
            // A shipment confirmed once scheduled is never cancelled by its hold expiring.
            if confirmed_before_expiry && published.first() == Some(&"scheduled") {
                prop_assert_eq!(status(&shipment), Some(ShipmentStatus::Scheduled));
            }
        }

        #[test]
        fn an_event_applied_twice_changes_nothing_more_than_once(events in any_events()) {
            let countries = served();
            let mut shipment = None;
            for event in events {
                shipment = decide(&countries, shipment.as_ref(), event.clone()).next;
                let again = decide(&countries, shipment.as_ref(), event);
                prop_assert_eq!(again, Decision { next: shipment.clone(), emit: Vec::new() });
            }
        }

        #[test]
        fn redeliveries_at_any_later_point_change_nothing(
            (original, delivered) in any_consumed().prop_flat_map(shared::testing::with_redeliveries)
        ) {
            prop_assert_eq!(replay(&served(), original), replay(&served(), delivered));
        }

        #[test]
        fn nothing_ships_after_a_cancellation_before_the_charge(later in any_events()) {
            let voided = decide(&served(), None, cancelled()).next;
            let (shipment, published) = replay(&served(), std::iter::once(cancelled()).chain(later));
            prop_assert_eq!(shipment, voided);
            prop_assert!(published.is_empty());
        }
    }
}
