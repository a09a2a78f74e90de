//! Payment's saga rules as one pure function: an order's payment record and the balance of the
//! account concerned, plus one saga event, give the next record and balance and the events to
//! publish, and the money it moves on that account as [`Posting`]s for its ledger. No I/O
//! here; `handler` loads the state, calls [`decide`] and stores the difference.
//!
//! `inventory.reserved` charges the total once, or declines it; `order.cancelled` refunds a
//! charge, or voids a payment never made so a late reservation is never charged;
//! `order.confirmed` settles a charge. A charge no decision settled within `HOLD_TIMEOUT_MS` is
//! refunded as for `order.cancelled` ([`SagaEvent::HoldExpired`]); a confirmation arriving after
//! that is recorded on the refunded payment and nothing more (the order service makes that
//! order `FAILED`). Any other pairing changes nothing, so duplicates and late events are
//! harmless.

use shared::events::{
    DeclineReason, OrderCancelled, OrderConfirmed, PaymentCharged, PaymentDeclined, PaymentMethod,
    PaymentRefunded, StockReserved,
};
use uuid::Uuid;

use crate::ledger::Posting;

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

/// What payment did for one order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Payment {
    pub status: PaymentStatus,
    /// `None` for a voided payment: no customer was ever seen.
    pub customer_id: Option<String>,
    /// The amount charged, or asked for when declined; 0 when voided.
    pub amount_cents: i64,
    /// Why it was declined (`Declined` only).
    pub decline_reason: Option<DeclineReason>,
    /// `order.confirmed` arrived: a charge is settled, no longer a hold.
    pub confirmed: bool,
    /// Refunded because no decision came within the hold timeout.
    pub hold_expired: bool,
}

impl Payment {
    /// A charge no decision settled yet: what the hold timeout refunds.
    pub fn is_hold(&self) -> bool {
        self.status == PaymentStatus::Charged && !self.confirmed
    }
}

/// Everything the rules read and change for one event of one order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PaymentState {
    /// `None`: the order was never seen.
    pub payment: Option<Payment>,
    /// The balance of the account the event concerns: the reservation's customer for a charge,
    /// the payment's for a refund. `None`: there is no such account.
    pub balance_cents: Option<i64>,
}

/// The saga events payment reacts to.
#[derive(Debug, Clone, PartialEq)]
pub enum SagaEvent {
    StockReserved(StockReserved),
    OrderCancelled(OrderCancelled),
    OrderConfirmed(OrderConfirmed),
    /// The hold timeout passed with no decision (from the hold expiry worker).
    HoldExpired {
        order_id: Uuid,
    },
}

/// An event payment publishes.
#[derive(Debug, Clone, PartialEq)]
pub enum Emit {
    Charged(PaymentCharged),
    Declined(PaymentDeclined),
    Refunded(PaymentRefunded),
}

/// The outcome of an event.
#[derive(Debug, Clone, PartialEq)]
pub enum Decision {
    /// Store `next` (equal to the state when nothing changes), append `ledger` to the ledger
    /// of the account concerned (its fold is `next.balance_cents`) and publish `emit`.
    Apply {
        next: PaymentState,
        emit: Vec<Emit>,
        ledger: Vec<Posting>,
    },
    /// The event is valid but cannot be applied (e.g. the account to refund is gone): the
    /// consumer retries it, then gives up and records the failure.
    CannotApply(String),
}

/// Applies `event` to `state`.
pub fn decide(state: &PaymentState, event: SagaEvent) -> Decision {
    match (&state.payment, event) {
        (None, SagaEvent::StockReserved(reserved)) => charge(state, reserved),
        (None, SagaEvent::OrderCancelled(_)) => Decision::Apply {
            next: PaymentState {
                payment: Some(Payment {
                    status: PaymentStatus::Voided,
                    customer_id: None,
                    amount_cents: 0,
                    decline_reason: None,
                    confirmed: false,
                    hold_expired: false,
                }),
                ..state.clone()
            },
            emit: Vec::new(),
            ledger: Vec::new(),
        },
        (Some(payment), SagaEvent::OrderCancelled(cancelled))
            if payment.status == PaymentStatus::Charged =>
        {
            refund(payment, state.balance_cents, cancelled.order_id, false)
        }
        (Some(payment), SagaEvent::HoldExpired { order_id }) if payment.is_hold() => {
            refund(payment, state.balance_cents, order_id, true)
        }
        // Settles a charge, or records a confirmation that came after the hold expired.
        (Some(payment), SagaEvent::OrderConfirmed(_))
            if !payment.confirmed
                && (payment.status == PaymentStatus::Charged || payment.hold_expired) =>
        {
            Decision::Apply {
                next: PaymentState {
                    payment: Some(Payment {
                        confirmed: true,
                        ..payment.clone()
                    }),
                    ..state.clone()
                },
                emit: Vec::new(),
                ledger: Vec::new(),
            }
        }
        _ => Decision::Apply {
            next: state.clone(),
            emit: Vec::new(),
            ledger: Vec::new(),
        },
    }
}

/// Charges the reserved total if the account covers it, else declines it.
fn charge(state: &PaymentState, reserved: StockReserved) -> Decision {
    let order_id = reserved.order_id;
    let paid = match state.balance_cents {
        None => Err(DeclineReason::NoAccount),
        Some(balance) if balance < reserved.total_cents => Err(DeclineReason::InsufficientFunds),
        Some(balance) => Ok(balance - reserved.total_cents),
    };
    let payment = |status, decline_reason| Payment {
        status,
        customer_id: Some(reserved.customer_id.clone()),
        amount_cents: reserved.total_cents,
        decline_reason,
        confirmed: false,
        hold_expired: false,
    };
    match paid {
        Ok(balance) => Decision::Apply {
            next: PaymentState {
                payment: Some(payment(PaymentStatus::Charged, None)),
                balance_cents: Some(balance),
            },
            emit: vec![Emit::Charged(PaymentCharged {
                order_id,
                customer_id: reserved.customer_id.clone(),
                amount_cents: reserved.total_cents,
                shipping_address: reserved.shipping_address,
                payment_method: PaymentMethod::AccountBalance,
            })],
            ledger: vec![Posting::charged(order_id, reserved.total_cents)],
        },
        Err(reason) => Decision::Apply {
            next: PaymentState {
                payment: Some(payment(PaymentStatus::Declined, Some(reason))),
                ..state.clone()
            },
            emit: vec![Emit::Declined(PaymentDeclined { order_id, reason })],
            ledger: Vec::new(),
        },
    }
}

/// Gives a charge back to its account (`hold_expired`: because no decision came in time).
fn refund(
    payment: &Payment,
    balance_cents: Option<i64>,
    order_id: Uuid,
    hold_expired: bool,
) -> Decision {
    let amount_cents = payment.amount_cents;
    let Some(balance) = balance_cents else {
        return Decision::CannotApply(format!(
            "the account of customer {} is gone: {amount_cents} cents cannot be refunded",
            payment.customer_id.as_deref().unwrap_or_default()
        ));
    };
    let Some(balance) = balance.checked_add(amount_cents) else {
        return Decision::CannotApply(format!(
            "a refund of {amount_cents} cents would overflow the balance of customer {}",
            payment.customer_id.as_deref().unwrap_or_default()
        ));
    };
    Decision::Apply {
        next: PaymentState {
            payment: Some(Payment {
                status: PaymentStatus::Refunded,
                hold_expired,
                ..payment.clone()
            }),
            balance_cents: Some(balance),
        },
        emit: vec![Emit::Refunded(PaymentRefunded {
            order_id,
            amount_cents,
        })],
        ledger: vec![Posting::refunded(order_id, amount_cents)],
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ledger::{self, Entry, EntryKind, Head};
    use proptest::prelude::*;
    use shared::events::{CancellationReason, ShippingAddress};

    const CUSTOMER: &str = "alice";

    fn order_id(order: usize) -> Uuid {
        Uuid::from_u128(order as u128 + 1)
    }

    fn reserved(order: usize, total_cents: i64) -> SagaEvent {
        SagaEvent::StockReserved(StockReserved {
            order_id: order_id(order),
            customer_id: CUSTOMER.to_owned(),
            items: Vec::new(),
            total_cents,
            shipping_address: ShippingAddress {
                country: "FR".to_owned(),
                rest: serde_json::Map::new(),
            },
        })
    }

    fn cancelled(order: usize) -> SagaEvent {
        SagaEvent::OrderCancelled(OrderCancelled {
            order_id: order_id(order),
            reason: CancellationReason::CancelledByCustomer,
        })
    }

    fn confirmed(order: usize) -> SagaEvent {
        SagaEvent::OrderConfirmed(OrderConfirmed {
            order_id: order_id(order),
        })
    }

    fn expired(order: usize) -> SagaEvent {
        SagaEvent::HoldExpired {
            order_id: order_id(order),
        }
    }

    fn new_order(balance_cents: Option<i64>) -> PaymentState {
        PaymentState {
            payment: None,
            balance_cents,
        }
    }

    fn decided(state: &PaymentState, event: SagaEvent) -> (PaymentState, Vec<Emit>, Vec<Posting>) {
        match decide(state, event) {
            Decision::Apply { next, emit, ledger } => (next, emit, ledger),
            Decision::CannotApply(reason) => panic!("cannot apply: {reason}"),
        }
    }

    fn applied(state: &PaymentState, event: SagaEvent) -> (PaymentState, Vec<Emit>) {
        let (next, emit, _) = decided(state, event);
        (next, emit)
    }

    fn status(state: &PaymentState) -> Option<PaymentStatus> {
        state.payment.as_ref().map(|payment| payment.status)
    }

    #[test]
    fn charges_only_what_the_balance_covers() {
        let (paid, emit) = applied(&new_order(Some(1_000)), reserved(0, 1_000));
        assert_eq!(
            (status(&paid), paid.balance_cents),
            (Some(PaymentStatus::Charged), Some(0))
        );
        assert!(matches!(&emit[..], [Emit::Charged(charged)] if charged.amount_cents == 1_000));

        let (short, emit) = applied(&new_order(Some(999)), reserved(0, 1_000));
        assert_eq!(
            (status(&short), short.balance_cents),
            (Some(PaymentStatus::Declined), Some(999))
        );
        assert_eq!(
            short.payment.unwrap().decline_reason,
            Some(DeclineReason::InsufficientFunds)
        );
        assert!(matches!(
            &emit[..],
            [Emit::Declined(PaymentDeclined {
                reason: DeclineReason::InsufficientFunds,
                ..
            })]
        ));

        let (none, emit) = applied(&new_order(None), reserved(0, 1));
        assert_eq!(
            none.payment.unwrap().decline_reason,
            Some(DeclineReason::NoAccount)
        );
        assert!(matches!(
            &emit[..],
            [Emit::Declined(PaymentDeclined {
                reason: DeclineReason::NoAccount,
                ..
            })]
        ));
    }

    #[test]
    fn a_cancellation_refunds_the_charge() {
        let (paid, _) = applied(&new_order(Some(500)), reserved(0, 200));
        let (refunded, emit) = applied(&paid, cancelled(0));
        assert_eq!(
            (status(&refunded), refunded.balance_cents),
            (Some(PaymentStatus::Refunded), Some(500))
        );
        assert_eq!(
            emit,
            vec![Emit::Refunded(PaymentRefunded {
                order_id: order_id(0),
                amount_cents: 200
            })]
        );
    }

    #[test]
    fn a_cancellation_before_the_charge_prevents_it() {
        let (voided, emit) = applied(&new_order(Some(500)), cancelled(0));
        assert_eq!(status(&voided), Some(PaymentStatus::Voided));
        assert!(emit.is_empty());
        assert_eq!(applied(&voided, reserved(0, 100)), (voided, Vec::new()));
    }

    #[test]
    fn a_charge_no_decision_settled_is_refunded_when_its_hold_expires() {
        let (paid, _) = applied(&new_order(Some(500)), reserved(0, 200));
        let (refunded, emit) = applied(&paid, expired(0));
        assert_eq!(
            (status(&refunded), refunded.balance_cents),
            (Some(PaymentStatus::Refunded), Some(500))
        );
        assert!(refunded.payment.as_ref().unwrap().hold_expired);
        assert_eq!(
            emit,
            vec![Emit::Refunded(PaymentRefunded {
                order_id: order_id(0),
                amount_cents: 200
            })]
        );
        // The confirmation that lost the race is recorded, and nothing is charged again.
        let (late, emit) = applied(&refunded, confirmed(0));
        assert!(emit.is_empty());
        assert_eq!(late.balance_cents, Some(500));
        assert_eq!(status(&late), Some(PaymentStatus::Refunded));
        assert!(late.payment.as_ref().unwrap().confirmed);
        assert_eq!(applied(&late, confirmed(0)), (late.clone(), Vec::new()));
    }

    #[test]
    fn a_confirmed_charge_is_settled_and_its_hold_never_expires() {
        let (paid, _) = applied(&new_order(Some(500)), reserved(0, 200));
        let (settled, emit) = applied(&paid, confirmed(0));
        assert!(emit.is_empty());
        assert_eq!(
            (status(&settled), settled.balance_cents),
            (Some(PaymentStatus::Charged), Some(300))
        );
        assert!(settled.payment.as_ref().unwrap().confirmed);
        assert_eq!(applied(&settled, expired(0)), (settled.clone(), Vec::new()));
        // Nothing held, nothing to expire.
        let (voided, _) = applied(&new_order(Some(500)), cancelled(0));
        assert_eq!(applied(&voided, expired(0)), (voided.clone(), Vec::new()));
        let (declined, _) = applied(&new_order(Some(1)), reserved(0, 200));
        assert_eq!(
            applied(&declined, expired(0)),
            (declined.clone(), Vec::new())
        );
    }

    #[test]
    fn a_refund_to_an_account_that_is_gone_cannot_be_applied() {
        let (paid, _) = applied(&new_order(Some(500)), reserved(0, 200));
        let gone = PaymentState {
            balance_cents: None,
            ..paid
        };
        let Decision::CannotApply(reason) = decide(&gone, cancelled(0)) else {
            panic!("a refund to no account was applied");
        };
        assert!(
            reason.contains(CUSTOMER) && reason.contains("200 cents"),
            "{reason}"
        );
    }

    /// What one order's saga delivers to payment: its reservation or its cancellation.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    enum Delivery {
        Reserved(usize),
        Cancelled(usize),
        Confirmed(usize),
        /// The hold expiry worker's.
        Expired(usize),
    }

    impl Delivery {
        fn order(self) -> usize {
            match self {
                Self::Reserved(order)
                | Self::Cancelled(order)
                | Self::Confirmed(order)
                | Self::Expired(order) => order,
            }
        }
    }

    /// Several orders paid from one account; every event goes through [`decide`] on the state
    /// the handler would load, and what it returns is stored as the handler stores it: the
    /// postings numbered after the ledger's head and appended to it.
    #[derive(Debug, Clone, PartialEq)]
    struct Account {
        totals: Vec<i64>,
        payments: Vec<Option<Payment>>,
        balance_cents: Option<i64>,
        emitted: Vec<(usize, Emit)>,
        ledger: Vec<Entry>,
    }

    impl Account {
        fn new(balance_cents: Option<i64>, totals: Vec<i64>) -> Self {
            Self {
                payments: vec![None; totals.len()],
                totals,
                balance_cents,
                emitted: Vec::new(),
                ledger: balance_cents
                    .map(|balance| ledger::open(balance).expect("a valid opening balance"))
                    .into_iter()
                    .collect(),
            }
        }

        /// The ledger's head, as the handler reads it from the account's snapshot.
        fn head(&self) -> Option<Head> {
            let last = self.ledger.last()?;
            Some(Head {
                version: last.version,
                balance_cents: self.balance_cents?,
            })
        }

        /// `POST /accounts/{customer_id}/deposits`: nothing without an account or beyond the
        /// limit.
        fn deposit(&mut self, amount_cents: i64) {
            if let Some(Ok(entry)) = self.head().map(|head| head.deposit(amount_cents)) {
                self.balance_cents = Some(entry.balance_after_cents);
                self.ledger.push(entry);
            }
        }

        fn deliver(&mut self, delivery: Delivery) {
            let order = delivery.order();
            let event = match delivery {
                Delivery::Reserved(order) => reserved(order, self.totals[order]),
                Delivery::Cancelled(order) => cancelled(order),
                Delivery::Confirmed(order) => confirmed(order),
                Delivery::Expired(order) => expired(order),
            };
            let state = PaymentState {
                payment: self.payments[order].clone(),
                balance_cents: self.balance_cents,
            };
            let (next, emit, postings) = decided(&state, event);
            if !postings.is_empty() {
                let head = self.head().expect("money moves only on an account");
                let entries = head.append(&postings).expect("postings the ledger takes");
                self.ledger.extend(entries);
            }
            self.payments[order] = next.payment;
            self.balance_cents = next.balance_cents;
            self.emitted
                .extend(emit.into_iter().map(|emitted| (order, emitted)));
        }

        /// Charges not refunded, from what was published.
        fn owed(&self) -> i64 {
            self.emitted
                .iter()
                .map(|(_, emitted)| match emitted {
                    Emit::Charged(charged) => charged.amount_cents,
                    Emit::Refunded(refunded) => -refunded.amount_cents,
                    Emit::Declined(_) => 0,
                })
                .sum()
        }

        fn published(&self, order: usize) -> Vec<&'static str> {
            self.emitted
                .iter()
                .filter(|(of, _)| *of == order)
                .map(|(_, emitted)| match emitted {
                    Emit::Charged(_) => "charged",
                    Emit::Declined(_) => "declined",
                    Emit::Refunded(_) => "refunded",
                })
                .collect()
        }
    }

    const ORDERS: usize = 3;

    fn any_delivery() -> impl Strategy<Value = Delivery> {
        prop_oneof![
            (0..ORDERS).prop_map(Delivery::Reserved),
            (0..ORDERS).prop_map(Delivery::Cancelled),
            (0..ORDERS).prop_map(Delivery::Confirmed),
            (0..ORDERS).prop_map(Delivery::Expired),
        ]
    }

    /// What the consumer delivers (and may deliver again): not the hold expiry worker's.
    fn any_consumed() -> impl Strategy<Value = Delivery> {
        prop_oneof![
            (0..ORDERS).prop_map(Delivery::Reserved),
            (0..ORDERS).prop_map(Delivery::Cancelled),
            (0..ORDERS).prop_map(Delivery::Confirmed),
        ]
    }

    /// Drops confirmations of orders not reserved yet: an order is confirmed only after its
    /// shipment, which follows the charge payment made on its reservation.
    fn in_saga_order(deliveries: Vec<Delivery>) -> Vec<Delivery> {
        let mut seen = [false; ORDERS];
        deliveries
            .into_iter()
            .filter(|delivery| match *delivery {
                Delivery::Reserved(order) => {
                    seen[order] = true;
                    true
                }
                Delivery::Confirmed(order) => seen[order],
                Delivery::Cancelled(_) | Delivery::Expired(_) => true,
            })
            .collect()
    }

    fn any_start() -> impl Strategy<Value = (Option<i64>, Vec<i64>)> {
        (
            prop::option::weighted(0.9, 0i64..3_000),
            proptest::collection::vec(0i64..2_000, ORDERS),
        )
    }

    proptest! {
        #[test]
        fn money_is_conserved_and_each_order_is_charged_at_most_once(
            (start, totals) in any_start(),
            deliveries in proptest::collection::vec(any_delivery(), 0..16),
        ) {
            let mut account = Account::new(start, totals);
            for delivery in deliveries {
                account.deliver(delivery);
                match (start, account.balance_cents) {
                    (Some(start), Some(balance)) => {
                        prop_assert!(balance >= 0);
                        prop_assert_eq!(balance + account.owed(), start);
                    }
                    (None, None) => prop_assert_eq!(account.owed(), 0),
                    (start, balance) => prop_assert!(false, "the account went from {start:?} to {balance:?}"),
                }
                let charged: i64 = account.payments.iter().flatten()
                    .filter(|payment| payment.status == PaymentStatus::Charged)
                    .map(|payment| payment.amount_cents)
                    .sum();
                prop_assert_eq!(charged, account.owed());
                for order in 0..ORDERS {
                    let published = account.published(order);
                    prop_assert!(
                        matches!(published[..], [] | ["declined"] | ["charged"] | ["charged", "refunded"]),
                        "order {order} published {published:?}"
                    );
                }
            }
        }

        #[test]
        fn an_event_applied_twice_changes_nothing_more_than_once(
            (start, totals) in any_start(),
            deliveries in proptest::collection::vec(any_delivery(), 0..16),
        ) {
            let mut account = Account::new(start, totals);
            for delivery in deliveries {
                account.deliver(delivery);
                let mut twice = account.clone();
                twice.deliver(delivery);
                prop_assert_eq!(&twice, &account);
            }
        }

        #[test]
        fn redeliveries_at_any_later_point_change_nothing(
            (start, totals) in any_start(),
            (original, delivered) in proptest::collection::vec(any_consumed(), 0..12)
                .prop_map(in_saga_order)
                .prop_flat_map(shared::testing::with_redeliveries),
        ) {
            let mut once = Account::new(start, totals);
            let mut again = once.clone();
            original.into_iter().for_each(|delivery| once.deliver(delivery));
            delivered.into_iter().for_each(|delivery| again.deliver(delivery));
            prop_assert_eq!(once, again);
        }

        #[test]
        fn a_confirmed_charge_is_never_refunded_by_its_hold_expiring(
            (start, totals) in any_start(),
            deliveries in proptest::collection::vec(any_delivery(), 0..16),
        ) {
            let mut account = Account::new(start, totals);
            for delivery in deliveries {
                let before = account.payments[delivery.order()].clone();
                account.deliver(delivery);
                if let (Delivery::Expired(order), Some(payment)) = (delivery, before) {
                    if payment.status == PaymentStatus::Charged && payment.confirmed {
                        prop_assert_eq!(account.payments[order].as_ref(), Some(&payment));
                    }
                }
            }
        }

        #[test]
        fn an_order_cancelled_before_its_reservation_is_never_charged(
            (start, totals) in any_start(),
            deliveries in proptest::collection::vec(any_delivery(), 0..16),
        ) {
            let mut account = Account::new(start, totals);
            for delivery in &deliveries {
                account.deliver(*delivery);
            }
            for order in 0..ORDERS {
                let first = deliveries.iter().find(|delivery| delivery.order() == order);
                if first == Some(&Delivery::Cancelled(order)) {
                    let voided = Payment {
                        status: PaymentStatus::Voided,
                        customer_id: None,
                        amount_cents: 0,
                        decline_reason: None,
                        confirmed: false,
                        hold_expired: false,
                    };
                    prop_assert_eq!(account.payments[order].as_ref(), Some(&voided));
                    prop_assert!(account.published(order).is_empty());
                }
            }
        }

        #[test]
        fn the_ledger_folds_to_the_balance_with_contiguous_versions_and_one_entry_per_money_event(
            (start, totals) in any_start(),
            steps in proptest::collection::vec(any_step(), 0..24),
        ) {
            let mut account = Account::new(start, totals);
            for step in steps {
                match step {
                    Step::Saga(delivery) => account.deliver(delivery),
                    Step::Deposit(amount_cents) => account.deposit(amount_cents),
                }
                let replayed = ledger::replay(&account.ledger);
                prop_assert_eq!(replayed.problems(), &[] as &[String]);
                prop_assert_eq!(replayed.head().map(|head| head.balance_cents), account.balance_cents);
                let versions: Vec<i64> = account.ledger.iter().map(|entry| entry.version).collect();
                let contiguous: Vec<i64> = (1..=account.ledger.len() as i64).collect();
                prop_assert_eq!(versions, contiguous);
                // Every charge and refund published is in the ledger, and nothing else moved
                // money but the opening and the deposits.
                let published: Vec<(Uuid, i64)> = account.emitted.iter()
                    .filter_map(|(_, emitted)| match emitted {
                        Emit::Charged(charged) => Some((charged.order_id, -charged.amount_cents)),
                        Emit::Refunded(refunded) => Some((refunded.order_id, refunded.amount_cents)),
                        Emit::Declined(_) => None,
                    })
                    .collect();
                let posted: Vec<(Uuid, i64)> = account.ledger.iter()
                    .filter(|entry| matches!(entry.kind, EntryKind::Charged | EntryKind::Refunded))
                    .filter_map(|entry| Some((entry.order_id?, entry.amount_cents)))
                    .collect();
                prop_assert_eq!(posted, published);
            }
        }
    }

    /// A saga event, or a deposit through the API.
    #[derive(Debug, Clone, Copy)]
    enum Step {
        Saga(Delivery),
        Deposit(i64),
    }

    fn any_step() -> impl Strategy<Value = Step> {
        prop_oneof![
            4 => any_delivery().prop_map(Step::Saga),
            1 => (1i64..3_000).prop_map(Step::Deposit),
        ]
    }
}
