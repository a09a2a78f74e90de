//! Shipping's saga rules: the served countries, and one pure function from an order's shipment
//! record plus one saga event to the next record and the events to publish. No I/O here;
//! `handler` loads the record, calls [`decide`] and stores the difference.
//!
//! `payment.charged` schedules a shipment to a served country, or rejects it; `order.cancelled`
//! cancels a scheduled shipment, or voids one never made so a late charge never ships. Any
//! other pairing changes nothing, so duplicates and late events are harmless.

use std::collections::BTreeSet;

use shared::events::{
    OrderCancelled, PaymentCharged, ShipmentCancelled, ShipmentRejected, ShipmentScheduled,
    ShippingAddress,
};

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
}

/// The saga events shipping reacts to.
#[derive(Debug, Clone, PartialEq)]
pub enum SagaEvent {
    PaymentCharged(PaymentCharged),
    OrderCancelled(OrderCancelled),
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
                }),
                emit: vec![emitted],
            }
        }
        (None, SagaEvent::OrderCancelled(_)) => Decision {
            next: Some(Shipment {
                status: ShipmentStatus::Voided,
                country: None,
                address: None,
            }),
            emit: Vec::new(),
        },
        (Some(shipment), SagaEvent::OrderCancelled(cancelled))
            if shipment.status == ShipmentStatus::Scheduled =>
        {
            Decision {
                next: Some(Shipment {
                    status: ShipmentStatus::Cancelled,
                    ..shipment.clone()
                }),
                emit: vec![Emit::Cancelled(ShipmentCancelled {
                    order_id: cancelled.order_id,
                })],
            }
        }
        (shipment, _) => Decision {
            next: shipment.cloned(),
            emit: Vec::new(),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use shared::events::CancellationReason;
    use uuid::Uuid;

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
            proptest::collection::vec(prop_oneof![Just(charged(country)), Just(cancelled())], 0..8)
        })
    }

    proptest! {
        #[test]
        fn a_shipment_is_scheduled_at_most_once_and_cancelled_only_if_scheduled(events in any_events()) {
            let cancelled_at_all = events.contains(&cancelled());
            let (shipment, published) = replay(&served(), events);
            let published: Vec<&str> = published.iter().map(label).collect();
            prop_assert!(
                matches!(published[..], [] | ["rejected"] | ["scheduled"] | ["scheduled", "cancelled"]),
                "published {published:?}"
            );
            if cancelled_at_all {
                prop_assert_ne!(status(&shipment), Some(ShipmentStatus::Scheduled));
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
            (original, delivered) in any_events().prop_flat_map(shared::testing::with_redeliveries)
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
