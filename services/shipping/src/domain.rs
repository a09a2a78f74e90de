//! Shipping's saga rules as pure functions: which countries are served, and what each saga
//! event does to a shipment.

use std::collections::BTreeSet;

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

/// The saga events shipping reacts to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SagaEvent {
    PaymentCharged,
    OrderCancelled,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Schedule if the country is served, else reject.
    Schedule,
    /// Compensate: cancel the scheduled shipment.
    Cancel,
    /// Remember the cancellation so a late payment schedules nothing.
    Void,
    Nothing,
}

/// Decides what `event` does to the shipment of an order in `status` (`None`: never seen).
pub fn decide(status: Option<ShipmentStatus>, event: SagaEvent) -> Action {
    match (status, event) {
        (None, SagaEvent::PaymentCharged) => Action::Schedule,
        (None, SagaEvent::OrderCancelled) => Action::Void,
        (Some(ShipmentStatus::Scheduled), SagaEvent::OrderCancelled) => Action::Cancel,
        _ => Action::Nothing,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn default_countries_parse_and_exclude_antarctica() {
        let countries = Countries::parse(crate::config::DEFAULT_COUNTRIES).unwrap();
        assert!(countries.serves("FR"));
        assert!(!countries.serves("AQ"));
        assert!(Countries::parse("FR,France").is_err());
    }

    fn apply(
        status: Option<ShipmentStatus>,
        event: SagaEvent,
        served: bool,
    ) -> Option<ShipmentStatus> {
        match decide(status, event) {
            Action::Schedule if served => Some(ShipmentStatus::Scheduled),
            Action::Schedule => Some(ShipmentStatus::Rejected),
            Action::Cancel => Some(ShipmentStatus::Cancelled),
            Action::Void => Some(ShipmentStatus::Voided),
            Action::Nothing => status,
        }
    }

    proptest! {
        #[test]
        fn duplicates_change_nothing_and_cancelled_orders_never_ship(
            events in proptest::collection::vec(prop_oneof![Just(SagaEvent::PaymentCharged), Just(SagaEvent::OrderCancelled)], 0..6),
            duplicated in proptest::collection::vec(any::<bool>(), 6),
            served in any::<bool>(),
        ) {
            let once = events.iter().fold(None, |s, e| apply(s, *e, served));
            let twice = events.iter().zip(&duplicated).fold(None, |s, (e, dup)| {
                let s = apply(s, *e, served);
                if *dup { apply(s, *e, served) } else { s }
            });
            prop_assert_eq!(once, twice);
            if events.contains(&SagaEvent::OrderCancelled) {
                prop_assert_ne!(once, Some(ShipmentStatus::Scheduled));
            }
        }
    }
}
