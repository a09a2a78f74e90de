//! The order saga as pure functions: an order's state plus one saga event gives its next state
//! and the commands (events) to emit. No I/O here; `handler` and `routes` persist the result.
//!
//! The saga, choreographed: `order.created` -> inventory reserves -> payment charges ->
//! shipping schedules -> the order is confirmed. A failure at any step cancels the order, and
//! `order.cancelled` makes every service undo what it did; so does the saga's deadline. A
//! compensation that can never succeed turns a cancelled order `FAILED`, naming the step.
//! Terminal states absorb every later event, so duplicates and late events change nothing.
//!
//! The participants' events reach the order service on separate topics, so a shipment can be
//! reported before the reservation and the charge it follows: the order is confirmed once all
//! three successes are in, whatever order they came in (a `CONFIRMED` order always shows its
//! total, prices and payment method, and its timeline has every step).
//!
//! A participant compensates on its own only when its hold expired (`HOLD_TIMEOUT_MS`, no
//! decision came): a compensation reported for a `PENDING` order cancels it (`timeout`), so the
//! others release too; one reported for a `CONFIRMED` order (the decision lost the race with
//! the expiry) makes it `FAILED` at step `hold.expired`: it needs a person.

use serde::{Deserialize, Serialize};
use shared::events::{CancellationReason, StockRejection};

/// Where an order stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum OrderStatus {
    Pending,
    Confirmed,
    Cancelled,
    /// Cancelled, but a compensation could not be carried out: needs a person.
    Failed,
}

impl OrderStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "PENDING",
            Self::Confirmed => "CONFIRMED",
            Self::Cancelled => "CANCELLED",
            Self::Failed => "FAILED",
        }
    }

    pub fn parse(value: &str) -> Option<Self> {
        match value {
            "PENDING" => Some(Self::Pending),
            "CONFIRMED" => Some(Self::Confirmed),
            "CANCELLED" => Some(Self::Cancelled),
            "FAILED" => Some(Self::Failed),
            _ => None,
        }
    }

    pub fn is_terminal(self) -> bool {
        self != Self::Pending
    }
}

/// The part of an order the saga decides on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OrderState {
    pub status: OrderStatus,
    pub total_cents: Option<i64>,
    pub cancellation_reason: Option<CancellationReason>,
    /// The compensation step that failed for good (`FAILED` orders only).
    pub failed_step: Option<&'static str>,
    /// Payment charged the order.
    pub payment_charged: bool,
    /// Shipping scheduled the order.
    pub shipment_scheduled: bool,
}

impl OrderState {
    pub fn new() -> Self {
        Self {
            status: OrderStatus::Pending,
            total_cents: None,
            cancellation_reason: None,
            failed_step: None,
            payment_charged: false,
            shipment_scheduled: false,
        }
    }
}

impl Default for OrderState {
    fn default() -> Self {
        Self::new()
    }
}

/// What happened elsewhere in the saga, as the order service sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SagaEvent {
    StockReserved {
        total_cents: i64,
    },
    StockRejected(StockRejection),
    PaymentCharged,
    PaymentDeclined,
    ShipmentScheduled,
    ShipmentRejected,
    /// Compensations that were carried out. After `order.cancelled` they need no decision;
    /// before any decision they mean a participant's hold expired.
    Compensated,
    CustomerCancelled,
    /// The saga's deadline passed.
    DeadlinePassed,
    /// A compensation failed for good; the step is e.g. `payment.refund`.
    CompensationFailed(&'static str),
}

/// What the order service must publish as a result.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    Confirm,
    Cancel(CancellationReason),
}

/// The step a `CONFIRMED` order fails at when a participant's hold expired before the
/// confirmation reached it.
pub const HOLD_EXPIRED_STEP: &str = "hold.expired";

/// Applies `event` to `state`.
pub fn transition(state: &OrderState, event: SagaEvent) -> (OrderState, Vec<Command>) {
    let unchanged = || (state.clone(), Vec::new());
    match (state.status, event) {
        // The first reservation's total stands, even when it arrives after the outcome; a
        // re-delivered one cannot change it.
        (_, SagaEvent::StockReserved { total_cents }) => confirm_when_complete(OrderState {
            total_cents: state.total_cents.or(Some(total_cents)),
            ..state.clone()
        }),
        (OrderStatus::Pending | OrderStatus::Cancelled, SagaEvent::CompensationFailed(step)) => (
            OrderState {
                status: OrderStatus::Failed,
                failed_step: Some(step),
                ..state.clone()
            },
            Vec::new(),
        ),
        (OrderStatus::Confirmed, SagaEvent::Compensated) => (
            OrderState {
                status: OrderStatus::Failed,
                failed_step: Some(HOLD_EXPIRED_STEP),
                ..state.clone()
            },
            Vec::new(),
        ),
        (OrderStatus::Pending, event) => pending(state, event),
        _ => unchanged(),
    }
}

fn pending(state: &OrderState, event: SagaEvent) -> (OrderState, Vec<Command>) {
    let cancel = |reason| {
        let next = OrderState {
            status: OrderStatus::Cancelled,
            cancellation_reason: Some(reason),
            ..state.clone()
        };
        (next, vec![Command::Cancel(reason)])
    };
    match event {
        SagaEvent::StockRejected(StockRejection::OutOfStock) => {
            cancel(CancellationReason::OutOfStock)
        }
        SagaEvent::StockRejected(StockRejection::UnknownProduct) => {
            cancel(CancellationReason::UnknownProduct)
        }
        SagaEvent::PaymentDeclined => cancel(CancellationReason::PaymentDeclined),
        SagaEvent::ShipmentRejected => cancel(CancellationReason::ShippingUnavailable),
        SagaEvent::CustomerCancelled => cancel(CancellationReason::CancelledByCustomer),
        SagaEvent::DeadlinePassed | SagaEvent::Compensated => cancel(CancellationReason::Timeout),
        SagaEvent::PaymentCharged => confirm_when_complete(OrderState {
            payment_charged: true,
            ..state.clone()
        }),
        SagaEvent::ShipmentScheduled => confirm_when_complete(OrderState {
            shipment_scheduled: true,
            ..state.clone()
        }),
        SagaEvent::StockReserved { .. } | SagaEvent::CompensationFailed(_) => {
            (state.clone(), Vec::new())
        }
    }
}

/// Confirms a `PENDING` order once stock, payment and shipping have all reported success.
fn confirm_when_complete(next: OrderState) -> (OrderState, Vec<Command>) {
    let complete = next.total_cents.is_some() && next.payment_charged && next.shipment_scheduled;
    if next.status == OrderStatus::Pending && complete {
        let confirmed = OrderState {
            status: OrderStatus::Confirmed,
            ..next
        };
        (confirmed, vec![Command::Confirm])
    } else {
        (next, Vec::new())
    }
}

/// [`transition`] for a saga that may be past its deadline (`overdue`). An outcome reported
/// after the deadline is the deadline's: a saga past it is never confirmed, even when the
/// sweeper has not got to it yet (after an outage, the backlog may reach the consumer first);
/// it is cancelled (`timeout`) instead, keeping what the event taught (the total). So with the
/// participants' `HOLD_TIMEOUT_MS` above `SAGA_DEADLINE_MS`, no confirmation can follow a hold
/// expiring.
pub fn decide(state: &OrderState, event: SagaEvent, overdue: bool) -> (OrderState, Vec<Command>) {
    let (next, commands) = transition(state, event);
    if overdue && state.status == OrderStatus::Pending && next.status == OrderStatus::Confirmed {
        let learned = OrderState {
            status: OrderStatus::Pending,
            ..next
        };
        return transition(&learned, SagaEvent::DeadlinePassed);
    }
    (next, commands)
}

/// Runs `events` from a new order; returns the final state and every command emitted.
pub fn replay(events: impl IntoIterator<Item = SagaEvent>) -> (OrderState, Vec<Command>) {
    events.into_iter().fold(
        (OrderState::new(), Vec::new()),
        |(state, mut commands), event| {
            let (next, emitted) = transition(&state, event);
            commands.extend(emitted);
            (next, commands)
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn happy_path() -> Vec<SagaEvent> {
        vec![
            SagaEvent::StockReserved { total_cents: 1_500 },
            SagaEvent::PaymentCharged,
            SagaEvent::ShipmentScheduled,
        ]
    }

    #[test]
    fn every_step_succeeding_confirms_the_order() {
        let (state, commands) = replay(happy_path());
        assert_eq!(state.status, OrderStatus::Confirmed);
        assert_eq!(state.total_cents, Some(1_500));
        assert_eq!(commands, vec![Command::Confirm]);
    }

    #[test]
    fn each_failure_cancels_with_its_reason() {
        let cases = [
            (
                vec![SagaEvent::StockRejected(StockRejection::OutOfStock)],
                CancellationReason::OutOfStock,
            ),
            (
                vec![SagaEvent::StockRejected(StockRejection::UnknownProduct)],
                CancellationReason::UnknownProduct,
            ),
            (
                vec![
                    SagaEvent::StockReserved { total_cents: 10 },
                    SagaEvent::PaymentDeclined,
                ],
                CancellationReason::PaymentDeclined,
            ),
            (
                vec![
                    SagaEvent::StockReserved { total_cents: 10 },
                    SagaEvent::PaymentCharged,
                    SagaEvent::ShipmentRejected,
                ],
                CancellationReason::ShippingUnavailable,
            ),
            (
                vec![SagaEvent::CustomerCancelled],
                CancellationReason::CancelledByCustomer,
            ),
        ];
        for (events, reason) in cases {
            let (state, commands) = replay(events);
            assert_eq!(state.status, OrderStatus::Cancelled);
            assert_eq!(state.cancellation_reason, Some(reason));
            assert_eq!(commands, vec![Command::Cancel(reason)]);
        }
    }

    #[test]
    fn terminal_orders_ignore_later_events() {
        let (confirmed, _) = replay(happy_path());
        for event in [
            SagaEvent::CustomerCancelled,
            SagaEvent::PaymentDeclined,
            SagaEvent::ShipmentRejected,
        ] {
            assert_eq!(
                transition(&confirmed, event),
                (confirmed.clone(), Vec::new())
            );
        }
        let (cancelled, _) = replay([SagaEvent::CustomerCancelled]);
        assert_eq!(
            transition(&cancelled, SagaEvent::ShipmentScheduled),
            (cancelled.clone(), Vec::new())
        );
    }

    #[test]
    fn a_saga_past_its_deadline_is_cancelled_with_timeout() {
        let (state, commands) = replay([
            SagaEvent::StockReserved { total_cents: 5 },
            SagaEvent::DeadlinePassed,
        ]);
        assert_eq!(state.status, OrderStatus::Cancelled);
        assert_eq!(commands, vec![Command::Cancel(CancellationReason::Timeout)]);
        let (confirmed, _) = replay(happy_path());
        assert_eq!(
            transition(&confirmed, SagaEvent::DeadlinePassed),
            (confirmed.clone(), Vec::new())
        );
    }

    #[test]
    fn a_shipment_reported_after_the_deadline_cancels_instead_of_confirming() {
        let (reserved, _) = replay([
            SagaEvent::StockReserved { total_cents: 5 },
            SagaEvent::PaymentCharged,
        ]);
        let (state, commands) = decide(&reserved, SagaEvent::ShipmentScheduled, true);
        assert_eq!(state.status, OrderStatus::Cancelled);
        assert_eq!(commands, vec![Command::Cancel(CancellationReason::Timeout)]);
        assert_eq!(
            decide(&reserved, SagaEvent::ShipmentScheduled, false),
            transition(&reserved, SagaEvent::ShipmentScheduled)
        );
        assert_eq!(
            decide(&reserved, SagaEvent::ShipmentRejected, true),
            transition(&reserved, SagaEvent::ShipmentRejected)
        );
    }

    #[test]
    fn the_three_successes_confirm_in_whatever_order_they_arrive() {
        let successes = happy_path();
        for order in [
            [0, 1, 2],
            [0, 2, 1],
            [1, 0, 2],
            [1, 2, 0],
            [2, 0, 1],
            [2, 1, 0],
        ] {
            let arrived: Vec<SagaEvent> = order.iter().map(|&i| successes[i]).collect();
            let (state, commands) = replay(arrived.iter().copied());
            assert_eq!(
                (state.status, state.total_cents),
                (OrderStatus::Confirmed, Some(1_500)),
                "{arrived:?}"
            );
            assert_eq!(commands, vec![Command::Confirm], "{arrived:?}");
            // Confirmed on the last of the three, not before.
            let (before_last, commands) = replay(arrived[..2].iter().copied());
            assert_eq!(before_last.status, OrderStatus::Pending, "{arrived:?}");
            assert!(commands.is_empty(), "{arrived:?}");
        }
        // Past the deadline, the reservation completing it cancels instead, keeping the total.
        let (waiting, _) = replay([SagaEvent::ShipmentScheduled, SagaEvent::PaymentCharged]);
        let (state, commands) =
            decide(&waiting, SagaEvent::StockReserved { total_cents: 40 }, true);
        assert_eq!(
            (state.status, state.total_cents),
            (OrderStatus::Cancelled, Some(40))
        );
        assert_eq!(commands, vec![Command::Cancel(CancellationReason::Timeout)]);
        // A cancellation while it waits stands.
        let (state, commands) = replay([
            SagaEvent::ShipmentScheduled,
            SagaEvent::PaymentCharged,
            SagaEvent::CustomerCancelled,
            SagaEvent::StockReserved { total_cents: 40 },
        ]);
        assert_eq!(state.status, OrderStatus::Cancelled);
        assert_eq!(
            commands,
            vec![Command::Cancel(CancellationReason::CancelledByCustomer)]
        );
    }

    #[test]
    fn a_compensation_that_fails_for_good_makes_the_order_failed() {
        let (state, commands) = replay([
            SagaEvent::StockReserved { total_cents: 5 },
            SagaEvent::PaymentCharged,
            SagaEvent::ShipmentRejected,
            SagaEvent::CompensationFailed("payment.refund"),
        ]);
        assert_eq!(state.status, OrderStatus::Failed);
        assert_eq!(state.failed_step, Some("payment.refund"));
        assert_eq!(
            state.cancellation_reason,
            Some(CancellationReason::ShippingUnavailable)
        );
        assert_eq!(
            commands,
            vec![Command::Cancel(CancellationReason::ShippingUnavailable)]
        );
        let (confirmed, _) = replay(happy_path());
        assert_eq!(
            transition(&confirmed, SagaEvent::CompensationFailed("x"))
                .0
                .status,
            OrderStatus::Confirmed
        );
    }

    #[test]
    fn a_total_arriving_after_the_outcome_is_still_recorded() {
        let (state, _) = replay([
            SagaEvent::CustomerCancelled,
            SagaEvent::StockReserved { total_cents: 70 },
        ]);
        assert_eq!(
            (state.status, state.total_cents),
            (OrderStatus::Cancelled, Some(70))
        );
    }

    #[test]
    fn a_hold_expiring_before_the_decision_cancels_and_after_it_fails_the_order() {
        let (state, commands) = replay([
            SagaEvent::StockReserved { total_cents: 5 },
            SagaEvent::Compensated,
        ]);
        assert_eq!(state.status, OrderStatus::Cancelled);
        assert_eq!(commands, vec![Command::Cancel(CancellationReason::Timeout)]);
        let mut events = happy_path();
        events.push(SagaEvent::Compensated);
        let (state, commands) = replay(events);
        assert_eq!(
            (state.status, state.failed_step),
            (OrderStatus::Failed, Some(HOLD_EXPIRED_STEP))
        );
        assert_eq!(commands, vec![Command::Confirm]);
        let (cancelled, _) = replay([SagaEvent::CustomerCancelled]);
        assert_eq!(
            transition(&cancelled, SagaEvent::Compensated),
            (cancelled.clone(), Vec::new())
        );
    }

    fn any_event() -> impl Strategy<Value = SagaEvent> {
        prop_oneof![
            (1i64..100_000).prop_map(|total_cents| SagaEvent::StockReserved { total_cents }),
            Just(SagaEvent::StockRejected(StockRejection::OutOfStock)),
            Just(SagaEvent::StockRejected(StockRejection::UnknownProduct)),
            Just(SagaEvent::PaymentCharged),
            Just(SagaEvent::PaymentDeclined),
            Just(SagaEvent::ShipmentScheduled),
            Just(SagaEvent::ShipmentRejected),
            Just(SagaEvent::Compensated),
            Just(SagaEvent::CustomerCancelled),
            Just(SagaEvent::DeadlinePassed),
            Just(SagaEvent::CompensationFailed("payment.refund")),
        ]
    }

    proptest! {
        #[test]
        fn duplicates_and_redeliveries_change_nothing(
            (original, delivered) in proptest::collection::vec(any_event(), 0..8).prop_flat_map(shared::testing::with_redeliveries)
        ) {
            let (once, once_commands) = replay(original.iter().copied());
            let (again, again_commands) = replay(delivered.iter().copied());
            prop_assert_eq!(&once, &again);
            prop_assert_eq!(once_commands, again_commands);
        }

        #[test]
        fn a_saga_emits_at_most_one_outcome(events in proptest::collection::vec(any_event(), 0..12)) {
            let (state, commands) = replay(events);
            prop_assert!(commands.len() <= 1);
            // Whatever order the topics deliver in, a confirmed order knows its total.
            if commands.first() == Some(&Command::Confirm) {
                prop_assert!(state.total_cents.is_some());
            }
            match commands.first() {
                Some(Command::Confirm) => prop_assert!(
                    state.status == OrderStatus::Confirmed
                        || state.failed_step == Some(HOLD_EXPIRED_STEP)
                ),
                Some(Command::Cancel(reason)) => {
                    prop_assert!(matches!(state.status, OrderStatus::Cancelled | OrderStatus::Failed));
                    prop_assert_eq!(state.cancellation_reason, Some(*reason));
                }
                None => prop_assert!(matches!(state.status, OrderStatus::Pending | OrderStatus::Failed)),
            }
        }
    }
}
