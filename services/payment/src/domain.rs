//! Payment's saga rules as pure functions: whether to charge, and what a cancellation undoes.

use shared::events::DeclineReason;

/// Where an order's payment stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PaymentStatus {
    Charged,
    Declined,
    Refunded,
    /// The refund could never be made (e.g. the account is gone): needs a person.
    RefundFailed,
    /// The order was cancelled before it was charged: it must never be charged later.
    Voided,
}

impl PaymentStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Charged => "CHARGED",
            Self::Declined => "DECLINED",
            Self::Refunded => "REFUNDED",
            Self::RefundFailed => "REFUND_FAILED",
            Self::Voided => "VOIDED",
        }
    }

    pub fn parse(value: &str) -> Option<Self> {
        [
            Self::Charged,
            Self::Declined,
            Self::Refunded,
            Self::RefundFailed,
            Self::Voided,
        ]
        .into_iter()
        .find(|status| status.as_str() == value)
    }
}

/// The saga events payment reacts to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SagaEvent {
    StockReserved,
    OrderCancelled,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Try to charge the total: see [`charge`].
    Charge,
    /// Compensate: give the charged amount back.
    Refund,
    /// Remember the cancellation so a late reservation is never charged.
    Void,
    Nothing,
}

/// Decides what `event` does to the payment of an order in `status` (`None`: never seen).
pub fn decide(status: Option<PaymentStatus>, event: SagaEvent) -> Action {
    match (status, event) {
        (None, SagaEvent::StockReserved) => Action::Charge,
        (None, SagaEvent::OrderCancelled) => Action::Void,
        (Some(PaymentStatus::Charged), SagaEvent::OrderCancelled) => Action::Refund,
        _ => Action::Nothing,
    }
}

/// Whether an account with `balance_cents` (`None`: no account) can pay `amount_cents`.
pub fn charge(balance_cents: Option<i64>, amount_cents: i64) -> Result<i64, DeclineReason> {
    match balance_cents {
        None => Err(DeclineReason::NoAccount),
        Some(balance) if balance < amount_cents => Err(DeclineReason::InsufficientFunds),
        Some(balance) => Ok(balance - amount_cents),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn charges_only_what_the_balance_covers() {
        assert_eq!(charge(Some(1_000), 1_000), Ok(0));
        assert_eq!(
            charge(Some(999), 1_000),
            Err(DeclineReason::InsufficientFunds)
        );
        assert_eq!(charge(None, 1), Err(DeclineReason::NoAccount));
    }

    #[test]
    fn a_cancellation_before_the_charge_prevents_it() {
        assert_eq!(decide(None, SagaEvent::OrderCancelled), Action::Void);
        assert_eq!(
            decide(Some(PaymentStatus::Voided), SagaEvent::StockReserved),
            Action::Nothing
        );
    }

    #[derive(Debug, Clone, PartialEq, Eq)]
    struct Model {
        status: Option<PaymentStatus>,
        balance: i64,
        charged: i64,
    }

    fn apply(mut model: Model, event: SagaEvent, amount: i64) -> Model {
        match decide(model.status, event) {
            Action::Charge => match charge(Some(model.balance), amount) {
                Ok(balance) => {
                    model.balance = balance;
                    model.charged = amount;
                    model.status = Some(PaymentStatus::Charged);
                }
                Err(_) => model.status = Some(PaymentStatus::Declined),
            },
            Action::Refund => {
                model.balance += model.charged;
                model.charged = 0;
                model.status = Some(PaymentStatus::Refunded);
            }
            Action::Void => model.status = Some(PaymentStatus::Voided),
            Action::Nothing => {}
        }
        model
    }

    proptest! {
        #[test]
        fn redeliveries_change_nothing_and_money_is_conserved(
            events in proptest::collection::vec(prop_oneof![Just(SagaEvent::StockReserved), Just(SagaEvent::OrderCancelled)], 0..6),
            redelivered in proptest::collection::vec((0usize..6, 0usize..6), 0..6),
            balance in 0i64..2_000,
            amount in 0i64..2_000,
        ) {
            let start = Model { status: None, balance, charged: 0 };
            let once = events.iter().fold(start.clone(), |m, e| apply(m, *e, amount));
            // Re-deliver earlier events at later points.
            let mut delivered: Vec<(usize, SagaEvent)> = events.iter().enumerate().map(|(i, e)| (2 * i, *e)).collect();
            for (which, after) in redelivered {
                if let Some(event) = events.get(which) {
                    delivered.push((2 * which.max(after) + 1, *event));
                }
            }
            delivered.sort_by_key(|(at, _)| *at);
            let again = delivered.iter().fold(start, |m, (_, e)| apply(m, *e, amount));
            prop_assert_eq!(&once, &again);
            prop_assert_eq!(once.balance + once.charged, balance);
            prop_assert!(once.balance >= 0);
        }
    }
}
