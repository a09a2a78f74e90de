//! The projection's rules: views derived from event sets, whatever the order of arrival and
//! however often an event is re-delivered, and statuses that agree with the order service's.

use chrono::TimeZone;
use proptest::prelude::*;
use shared::events::{
    CancellationReason, DeclineReason, OrderCancelled, OrderConfirmed, OrderCreated, OrderLine,
    PaymentCharged, PaymentDeclined, PaymentMethod, PaymentRefunded, PricedLine, RefundFailed,
    ShipmentCancelled, ShipmentRejected, ShipmentScheduled, ShippingAddress, StockRejected,
    StockRejection, StockReleased, StockReserved,
};
use shared::EventPayload;

use super::*;

const CUSTOMER: &str = "alice";

fn order_id() -> Uuid {
    Uuid::from_u128(0x0190_0000_0000_7000_8000_0000_0000_0001)
}

fn address(country: &str) -> ShippingAddress {
    ShippingAddress {
        country: country.to_owned(),
        rest: Default::default(),
    }
}

/// An envelope of `payload` from `source`, `second` seconds into the saga.
fn event<P: EventPayload>(source: &str, second: u32, payload: &P) -> Envelope {
    let mut envelope = Envelope::new(source, order_id(), None, payload);
    envelope.occurred_at = Utc
        .with_ymd_and_hms(2026, 1, 1, 12, 0, second)
        .single()
        .expect("a valid time");
    envelope
}

fn created(country: &str) -> Envelope {
    event(
        "order",
        0,
        &OrderCreated {
            order_id: order_id(),
            customer_id: CUSTOMER.to_owned(),
            items: vec![
                OrderLine {
                    sku: "MUG".to_owned(),
                    quantity: 2,
                },
                OrderLine {
                    sku: "TEE".to_owned(),
                    quantity: 1,
                },
            ],
            shipping_address: address(country),
        },
    )
}

fn reserved() -> Envelope {
    event(
        "inventory",
        1,
        &StockReserved {
            order_id: order_id(),
            customer_id: CUSTOMER.to_owned(),
            items: vec![
                PricedLine {
                    sku: "MUG".to_owned(),
                    quantity: 2,
                    unit_price_cents: 1_250,
                },
                PricedLine {
                    sku: "TEE".to_owned(),
                    quantity: 1,
                    unit_price_cents: 2_000,
                },
            ],
            total_cents: 4_500,
            shipping_address: address("FR"),
        },
    )
}

fn charged() -> Envelope {
    event(
        "payment",
        2,
        &PaymentCharged {
            order_id: order_id(),
            customer_id: CUSTOMER.to_owned(),
            amount_cents: 4_500,
            shipping_address: address("FR"),
            payment_method: PaymentMethod::AccountBalance,
        },
    )
}

fn cancelled(second: u32, reason: CancellationReason) -> Envelope {
    event(
        "order",
        second,
        &OrderCancelled {
            order_id: order_id(),
            reason,
        },
    )
}

/// The events of a confirmed saga, in the order they happen.
fn confirmed_saga() -> Vec<Envelope> {
    vec![
        created("FR"),
        reserved(),
        charged(),
        event(
            "shipping",
            3,
            &ShipmentScheduled {
                order_id: order_id(),
                country: "FR".to_owned(),
            },
        ),
        event(
            "order",
            4,
            &OrderConfirmed {
                order_id: order_id(),
            },
        ),
    ]
}

/// Payment declined: the order is cancelled and the stock released.
fn declined_saga() -> Vec<Envelope> {
    vec![
        created("FR"),
        reserved(),
        event(
            "payment",
            2,
            &PaymentDeclined {
                order_id: order_id(),
                reason: DeclineReason::InsufficientFunds,
            },
        ),
        cancelled(3, CancellationReason::PaymentDeclined),
        event(
            "inventory",
            4,
            &StockReleased {
                order_id: order_id(),
                items: Vec::new(),
            },
        ),
    ]
}

/// Not shippable: rejected, cancelled, refunded, released.
fn unshippable_saga() -> Vec<Envelope> {
    vec![
        created("AQ"),
        reserved(),
        charged(),
        event(
            "shipping",
            3,
            &ShipmentRejected {
                order_id: order_id(),
                country: "AQ".to_owned(),
            },
        ),
        cancelled(4, CancellationReason::ShippingUnavailable),
        event(
            "payment",
            5,
            &PaymentRefunded {
                order_id: order_id(),
                amount_cents: 4_500,
            },
        ),
        event(
            "inventory",
            5,
            &StockReleased {
                order_id: order_id(),
                items: Vec::new(),
            },
        ),
    ]
}

fn view_of(events: &[Envelope]) -> OrderView {
    let mut seen = OrderEvents::default();
    for envelope in events {
        if let Some(next) = seen.apply(Recorded::of(envelope)) {
            seen = next;
        }
    }
    OrderView::of(order_id(), &seen)
}

#[test]
fn a_confirmed_saga_shows_lines_prices_payment_shipment_steps_and_duration() {
    let view = view_of(&confirmed_saga());
    assert_eq!(view.status, Status::Confirmed);
    assert_eq!(view.reason, None);
    assert_eq!(view.customer_id.as_deref(), Some(CUSTOMER));
    assert_eq!(
        view.lines,
        [
            Line {
                sku: "MUG".to_owned(),
                quantity: 2,
                unit_price_cents: Some(1_250)
            },
            Line {
                sku: "TEE".to_owned(),
                quantity: 1,
                unit_price_cents: Some(2_000)
            },
        ]
    );
    assert_eq!(view.total_cents, Some(4_500));
    assert_eq!(
        view.payment,
        Some(Payment {
            status: "CHARGED",
            amount_cents: Some(4_500),
            method: Some("account_balance"),
            reason: None
        })
    );
    assert_eq!(
        view.shipment,
        Some(Shipment {
            status: "SCHEDULED",
            country: "FR".to_owned()
        })
    );
    let steps: Vec<&str> = view.steps.iter().map(|s| s.event_type.as_str()).collect();
    assert_eq!(
        steps,
        [
            "order.created.v1",
            "inventory.reserved.v1",
            "payment.charged.v2",
            "shipment.scheduled.v1",
            "order.confirmed.v1"
        ]
    );
    assert_eq!(view.duration_ms, Some(4_000));
    assert_eq!(view.finished_at, view.last_event_at);
}

#[test]
fn a_pending_order_has_no_end_and_no_duration() {
    let view = view_of(&confirmed_saga()[..3]);
    assert_eq!(view.status, Status::Pending);
    assert_eq!((view.finished_at, view.duration_ms), (None, None));
}

#[test]
fn a_declined_order_is_cancelled_with_its_reason_and_the_decline() {
    let view = view_of(&declined_saga());
    assert_eq!(view.status, Status::Cancelled);
    assert_eq!(view.reason, Some("payment_declined"));
    assert_eq!(
        view.payment,
        Some(Payment {
            status: "DECLINED",
            amount_cents: None,
            method: None,
            reason: Some("insufficient_funds")
        })
    );
    assert_eq!(view.shipment, None);
    assert_eq!(view.duration_ms, Some(3_000));
}

#[test]
fn an_unshippable_order_is_refunded_and_its_shipment_rejected() {
    let view = view_of(&unshippable_saga());
    assert_eq!(view.status, Status::Cancelled);
    assert_eq!(view.reason, Some("shipping_unavailable"));
    assert_eq!(view.payment.as_ref().map(|p| p.status), Some("REFUNDED"));
    assert_eq!(
        view.shipment,
        Some(Shipment {
            status: "REJECTED",
            country: "AQ".to_owned()
        })
    );
    assert_eq!(view.country.as_deref(), Some("AQ"));
}

#[test]
fn an_out_of_stock_order_has_no_prices() {
    let view = view_of(&[
        created("FR"),
        event(
            "inventory",
            1,
            &StockRejected {
                order_id: order_id(),
                reason: StockRejection::OutOfStock,
                sku: "MUG".to_owned(),
            },
        ),
        cancelled(2, CancellationReason::OutOfStock),
    ]);
    assert_eq!(view.status, Status::Cancelled);
    assert_eq!(view.reason, Some("out_of_stock"));
    assert!(view
        .lines
        .iter()
        .all(|line| line.unit_price_cents.is_none()));
    assert_eq!(view.total_cents, None);
}

#[test]
fn a_failed_refund_makes_the_order_failed_at_that_step() {
    let mut events = unshippable_saga();
    events[5] = event(
        "payment",
        5,
        &RefundFailed {
            order_id: order_id(),
            amount_cents: 4_500,
            error: "account closed".to_owned(),
        },
    );
    let view = view_of(&events);
    assert_eq!(view.status, Status::Failed);
    assert_eq!(view.failed_step, Some("payment.refund"));
    assert_eq!(view.reason, Some("shipping_unavailable"));
    assert_eq!(
        view.payment.as_ref().map(|p| p.status),
        Some("REFUND_FAILED")
    );
}

#[test]
fn a_compensation_after_the_confirmation_fails_the_order_at_hold_expired() {
    let mut events = confirmed_saga();
    events.push(event(
        "shipping",
        9,
        &ShipmentCancelled {
            order_id: order_id(),
        },
    ));
    let view = view_of(&events);
    assert_eq!(view.status, Status::Failed);
    assert_eq!(view.failed_step, Some(HOLD_EXPIRED_STEP));
    assert_eq!(view.shipment.map(|s| s.status), Some("CANCELLED"));
}

/// The order service (`domain::transition`) fails a `PENDING` or `CANCELLED` order on a
/// compensation failure, keeps a `CONFIRMED` one (it is failed only by a compensation that was
/// carried out), and emits `order.confirmed` only from `PENDING`: so with `order.confirmed`
/// among the events, a compensation failure came after it and the order stays `CONFIRMED`,
/// until a carried-out compensation makes it `FAILED` at `hold.expired`.
#[test]
fn a_compensation_failure_after_the_confirmation_keeps_the_order_confirmed_as_the_order_service_does(
) {
    let mut events = confirmed_saga();
    events.push(event(
        "payment",
        9,
        &RefundFailed {
            order_id: order_id(),
            amount_cents: 4_500,
            error: "account closed".to_owned(),
        },
    ));
    let view = view_of(&events);
    assert_eq!((view.status, view.failed_step), (Status::Confirmed, None));
    assert_eq!(
        view.payment.as_ref().map(|p| p.status),
        Some("REFUND_FAILED")
    );
    events.push(event(
        "shipping",
        10,
        &ShipmentCancelled {
            order_id: order_id(),
        },
    ));
    let view = view_of(&events);
    assert_eq!(
        (view.status, view.failed_step),
        (Status::Failed, Some(HOLD_EXPIRED_STEP))
    );
}

#[test]
fn a_payment_heard_before_the_order_still_names_the_customer_and_amount() {
    let view = view_of(&[charged()]);
    assert_eq!(view.status, Status::Pending);
    assert_eq!(view.customer_id.as_deref(), Some(CUSTOMER));
    assert_eq!(view.total_cents, Some(4_500));
    assert_eq!(view.created_at, None);
}

#[test]
fn an_event_seen_again_changes_nothing() {
    let first = OrderEvents::default()
        .apply(Recorded::of(&created("FR")))
        .expect("new");
    assert_eq!(first.apply(Recorded::of(&created_again(&first))), None);
}

/// The first recorded event, as a re-delivery carries it.
fn created_again(events: &OrderEvents) -> Envelope {
    let recorded = events.iter().next().expect("one event").clone();
    let mut envelope = created("FR");
    envelope.id = recorded.event_id;
    envelope
}

#[test]
fn statuses_round_trip_through_their_names() {
    for status in [
        Status::Pending,
        Status::Confirmed,
        Status::Cancelled,
        Status::Failed,
    ] {
        assert_eq!(Status::parse(status.as_str()), Some(status));
    }
    assert_eq!(Status::parse("pending"), None);
}

fn sagas() -> impl Strategy<Value = Vec<Envelope>> {
    prop_oneof![
        Just(confirmed_saga()),
        Just(declined_saga()),
        Just(unshippable_saga()),
    ]
}

proptest! {
    /// Events of one order arrive over four topics in any order, some more than once: the view
    /// is the same as when they arrive in the order they happened.
    #[test]
    fn the_view_converges_whatever_the_order_of_arrival(
        (saga, order) in sagas().prop_flat_map(|saga| {
            let n = saga.len();
            (Just(saga), proptest::collection::vec(0..n, n..3 * n).prop_shuffle())
        }),
    ) {
        let in_order = view_of(&saga);
        // Every event at least once, then the random arrivals (with repeats).
        let mut arrivals: Vec<Envelope> = order.iter().map(|&i| saga[i].clone()).collect();
        let mut missing: Vec<Envelope> = saga
            .iter()
            .filter(|event| !arrivals.iter().any(|a| a.id == event.id))
            .cloned()
            .collect();
        missing.reverse();
        arrivals.extend(missing);
        prop_assert_eq!(view_of(&arrivals), in_order);
    }
}
