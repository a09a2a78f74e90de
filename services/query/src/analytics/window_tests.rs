//! The window rules without I/O: window assignment, watermarks and lateness, per-order facts
//! and the cell deltas they give, folded the same whatever the order of arrival.

use chrono::TimeZone;
use proptest::prelude::*;
use uuid::Uuid;

use super::*;

fn at(ms: i64) -> DateTime<Utc> {
    Utc.timestamp_millis_opt(ms).unwrap()
}

fn config() -> WindowConfig {
    WindowConfig {
        window_ms: 60_000,
        out_of_orderness_ms: 5_000,
        allowed_lateness_ms: 10_000,
    }
}

fn created(lines: &[(&str, i64)]) -> Observation {
    Observation::Created {
        lines: lines.iter().map(|(s, q)| ((*s).to_owned(), *q)).collect(),
    }
}

fn cancelled(reason: &str) -> Observation {
    Observation::Cancelled {
        reason: reason.to_owned(),
    }
}

#[test]
fn a_confirmed_order_counts_where_each_of_its_events_happened() {
    let mut engine = Engine::new(config());
    let order = Uuid::now_v7();
    engine.apply(order, at(59_000), &created(&[("A", 2), ("B", 1)]));
    engine.apply(
        order,
        at(59_500),
        &Observation::Reserved { total_cents: 2_500 },
    );
    engine.apply(
        order,
        at(60_100),
        &Observation::Charged {
            amount_cents: 2_500,
        },
    );
    engine.apply(order, at(60_300), &Observation::Other);
    engine.apply(order, at(61_000), &Observation::Confirmed);
    let windows = engine.windows();
    let first = &windows[&0];
    assert_eq!((first.placed, first.confirmed, first.events), (1, 0, 2));
    let second = &windows[&60_000];
    assert_eq!(second.placed, 0);
    assert_eq!(second.confirmed, 1);
    assert_eq!(second.revenue_cents, 2_500);
    assert_eq!(second.units_by_sku["A"], 2);
    assert_eq!(second.units_by_sku["B"], 1);
    assert_eq!(second.durations, BTreeMap::from([(2_000, 1)]));
    assert_eq!(second.events, 3);
    assert_eq!(second.failed, 0);
}

#[test]
fn the_total_arriving_after_the_confirmation_still_lands_in_its_window() {
    let mut engine = Engine::new(config());
    let order = Uuid::now_v7();
    engine.apply(order, at(61_000), &Observation::Confirmed);
    engine.apply(order, at(1_000), &created(&[("A", 1)]));
    assert_eq!(engine.windows()[&60_000].revenue_cents, 0);
    engine.apply(
        order,
        at(2_000),
        &Observation::Charged { amount_cents: 900 },
    );
    assert_eq!(engine.windows()[&60_000].revenue_cents, 900);
    // The reservation's total is the order's total when both are known.
    engine.apply(
        order,
        at(1_500),
        &Observation::Reserved { total_cents: 1_000 },
    );
    assert_eq!(engine.windows()[&60_000].revenue_cents, 1_000);
}

#[test]
fn cancellations_are_counted_by_reason_and_compensations_after_them_do_not_fail_the_order() {
    let mut engine = Engine::new(config());
    for reason in ["out_of_stock", "payment_declined", "payment_declined"] {
        let order = Uuid::now_v7();
        engine.apply(order, at(1_000), &created(&[("A", 1)]));
        engine.apply(order, at(3_000), &cancelled(reason));
        engine.apply(order, at(4_000), &Observation::Compensated);
    }
    let window = &engine.windows()[&0];
    assert_eq!(window.cancelled["out_of_stock"], 1);
    assert_eq!(window.cancelled["payment_declined"], 2);
    assert_eq!(window.failed, 0);
    assert_eq!(window.confirmed, 0);
    assert_eq!(window.units_by_sku, BTreeMap::new());
    assert_eq!(window.saga_duration().count, 3);
}

#[test]
fn an_order_fails_exactly_when_the_order_service_would_fail_it() {
    let mut engine = Engine::new(config());
    // Confirmed, then a hold expired: FAILED at the compensation.
    let expired = Uuid::now_v7();
    engine.apply(expired, at(1_000), &created(&[("A", 1)]));
    engine.apply(expired, at(2_000), &Observation::Confirmed);
    engine.apply(expired, at(70_000), &Observation::Compensated);
    // Cancelled, then a refund failed: FAILED at the failure.
    let refund = Uuid::now_v7();
    engine.apply(refund, at(1_000), &created(&[("A", 1)]));
    engine.apply(refund, at(130_000), &Observation::CompensationFailed);
    engine.apply(refund, at(2_000), &cancelled("payment_declined"));
    // Confirmed, then a release failed: stays CONFIRMED.
    let confirmed = Uuid::now_v7();
    engine.apply(confirmed, at(1_000), &created(&[("A", 1)]));
    engine.apply(confirmed, at(2_000), &Observation::Confirmed);
    engine.apply(confirmed, at(3_000), &Observation::CompensationFailed);
    let windows = engine.windows();
    assert_eq!(windows[&0].failed, 0);
    assert_eq!(windows[&60_000].failed, 1);
    assert_eq!(windows[&120_000].failed, 1);
    assert_eq!(windows[&0].confirmed, 2);
    // The cancelled one's saga ended at its cancellation, not its failure.
    assert_eq!(windows[&0].saga_duration().count, 3);
}

#[test]
fn an_order_the_order_service_never_had_is_not_counted() {
    let mut engine = Engine::new(config());
    let orphan = Uuid::now_v7();
    engine.apply(orphan, at(1_000), &cancelled("timeout"));
    engine.apply(orphan, at(1_000), &Observation::Compensated);
    let window = &engine.windows()[&0];
    assert_eq!(window.outcomes(), WindowMetrics::default());
    assert_eq!(window.events, 2);
}

#[test]
fn windows_close_on_the_watermark_and_late_events_are_counted_not_lost() {
    let config = config();
    let mut engine = Engine::new(config);
    let order = Uuid::now_v7();
    // Watermark 70 s - 5 s = 65 s: window [0, 60 s) closes at 60 + 10 = 70 s.
    engine.apply(Uuid::now_v7(), at(70_000), &Observation::Other);
    assert!(!config.is_closed(0, config.watermark(engine.max_event_time)));
    assert!(!engine.apply(order, at(30_000), &created(&[("A", 1)])));
    engine.apply(Uuid::now_v7(), at(75_000), &Observation::Other);
    assert!(config.is_closed(0, config.watermark(engine.max_event_time)));
    assert!(!config.is_closed(60_000, config.watermark(engine.max_event_time)));
    assert!(engine.apply(order, at(31_000), &Observation::Confirmed));
    let window = &engine.windows()[&0];
    assert_eq!(window.late_events, 1);
    assert_eq!(window.confirmed, 1);
    assert_eq!(window.events, 2);
    // An event whose own window is open is not late, even if it changes a closed one.
    assert!(!engine.apply(
        order,
        at(74_000),
        &Observation::Reserved { total_cents: 10 }
    ));
    assert_eq!(engine.windows()[&0].revenue_cents, 10);
    assert_eq!(engine.windows()[&0].late_events, 1);
}

#[test]
fn event_times_are_whole_microseconds_as_postgresql_stores_them() {
    let at = Utc.timestamp_nanos(1_700_000_000_123_456_789);
    assert_eq!(
        event_time(at),
        Utc.timestamp_nanos(1_700_000_000_123_456_000)
    );
    let before_epoch = Utc.timestamp_nanos(-1_500);
    assert_eq!(event_time(before_epoch).timestamp_micros(), -2);
}

#[test]
fn percentiles_are_exact_nearest_rank() {
    let mut window = WindowMetrics::default();
    assert_eq!(
        window.saga_duration(),
        DurationSummary {
            count: 0,
            p50_ms: None,
            p95_ms: None
        }
    );
    for ms in 1..=100 {
        window.add(&Metric::SagaDurationMs(ms * 10), 1);
    }
    let summary = window.saga_duration();
    assert_eq!(summary.count, 100);
    assert_eq!(summary.p50_ms, Some(500));
    assert_eq!(summary.p95_ms, Some(950));
    let mut one = WindowMetrics::default();
    one.add(&Metric::SagaDurationMs(7), 1);
    assert_eq!(one.saga_duration().p50_ms, Some(7));
    assert_eq!(one.saga_duration().p95_ms, Some(7));
    // Removing what was added leaves nothing behind.
    one.add(&Metric::SagaDurationMs(7), -1);
    assert_eq!(one, WindowMetrics::default());
}

#[test]
fn metrics_round_trip_through_their_stored_parts() {
    for metric in [
        Metric::Placed,
        Metric::Confirmed,
        Metric::Cancelled("timeout".into()),
        Metric::Failed,
        Metric::RevenueCents,
        Metric::Units("SKU-1".into()),
        Metric::SagaDurationMs(1_234),
        Metric::Events,
        Metric::LateEvents,
    ] {
        let (name, key) = metric.to_parts();
        assert_eq!(Metric::from_parts(name, &key), Some(metric));
    }
    assert_eq!(Metric::from_parts("saga_duration_ms", "x"), None);
    assert_eq!(Metric::from_parts("invented", ""), None);
}

#[test]
fn facts_survive_their_stored_form() {
    let facts = OrderFacts::default()
        .with(at(1), &created(&[("A", 3)]))
        .with(at(2), &cancelled("timeout"))
        .with(at(3), &Observation::Compensated);
    let json = serde_json::to_value(&facts).unwrap();
    assert_eq!(serde_json::from_value::<OrderFacts>(json).unwrap(), facts);
    assert_eq!(
        serde_json::from_value::<OrderFacts>(serde_json::json!({})).unwrap(),
        OrderFacts::default()
    );
}

fn observation() -> impl Strategy<Value = Observation> {
    prop_oneof![
        prop::collection::vec(("[A-C]", 1..4i64), 1..3)
            .prop_map(|lines| Observation::Created { lines }),
        (1..5_000i64).prop_map(|total_cents| Observation::Reserved { total_cents }),
        (1..5_000i64).prop_map(|amount_cents| Observation::Charged { amount_cents }),
        Just(Observation::Confirmed),
        prop::sample::select(vec!["out_of_stock", "payment_declined", "timeout"])
            .prop_map(cancelled),
        Just(Observation::Compensated),
        Just(Observation::CompensationFailed),
        Just(Observation::Other),
    ]
}

/// An event of an order: its time, what it says and a sort key giving its arrival order.
type Timed = (DateTime<Utc>, Observation, u32);
/// Orders, each with its events.
type Orders = Vec<(Uuid, Vec<Timed>)>;

/// Orders whose events arrive in an arbitrary order.
fn orders() -> impl Strategy<Value = Orders> {
    let event = (0..300_000i64, observation(), any::<u32>()).prop_map(|(ms, o, k)| (at(ms), o, k));
    prop::collection::vec(
        (
            any::<u128>().prop_map(Uuid::from_u128),
            prop::collection::vec(event, 1..8),
        ),
        1..12,
    )
}

fn arrivals(orders: &[(Uuid, Vec<Timed>)]) -> Vec<(u32, Uuid, DateTime<Utc>, Observation)> {
    let mut all: Vec<_> = orders
        .iter()
        .flat_map(|(id, events)| events.iter().map(|(t, o, k)| (*k, *id, *t, o.clone())))
        .collect();
    all.sort_by_key(|(k, ..)| *k);
    all
}

fn outcomes(engine: &Engine) -> BTreeMap<i64, WindowMetrics> {
    engine
        .windows()
        .into_iter()
        .map(|(start, w)| (start, w.outcomes()))
        .filter(|(_, w)| *w != WindowMetrics::default())
        .collect()
}

proptest! {
    /// Events of one order come on different topics in any interleaving: the windows end the
    /// same as applying each order's events in their own order, and no event is lost.
    #[test]
    fn windows_do_not_depend_on_the_order_events_arrive_in(orders in orders()) {
        let mut in_order = Engine::new(config());
        for (id, events) in &orders {
            for (t, o, _) in events {
                in_order.apply(*id, *t, o);
            }
        }
        let mut shuffled = Engine::new(config());
        let arrived = arrivals(&orders);
        for (_, id, t, o) in &arrived {
            shuffled.apply(*id, *t, o);
        }
        prop_assert_eq!(outcomes(&shuffled), outcomes(&in_order));
        prop_assert_eq!(&shuffled.orders, &in_order.orders);
        let events: i64 = shuffled.windows().values().map(|w| w.events).sum();
        prop_assert_eq!(events, arrived.len() as i64);
        let late: i64 = shuffled.windows().values().map(|w| w.late_events).sum();
        prop_assert!(late <= events);
    }

    /// A re-delivered event (the inbox drops it before analytics, but were it not) changes
    /// no outcome.
    #[test]
    fn observing_an_event_twice_changes_no_outcome(orders in orders()) {
        let mut once = Engine::new(config());
        let mut twice = Engine::new(config());
        for (_, id, t, o) in arrivals(&orders) {
            once.apply(id, t, &o);
            twice.apply(id, t, &o);
            twice.apply(id, t, &o);
        }
        prop_assert_eq!(outcomes(&twice), outcomes(&once));
    }

    /// Every order is counted once: placed, confirmed, cancelled, ended and failed orders add
    /// up to the orders that have those facts.
    #[test]
    fn every_order_is_counted_once(orders in orders()) {
        let mut engine = Engine::new(config());
        for (_, id, t, o) in arrivals(&orders) {
            engine.apply(id, t, &o);
        }
        let windows = engine.windows();
        let sum = |f: &dyn Fn(&WindowMetrics) -> i64| windows.values().map(f).sum::<i64>();
        let known = || engine.orders.values().filter(|f| f.created.is_some());
        prop_assert_eq!(sum(&|w| w.placed), known().count() as i64);
        prop_assert_eq!(sum(&|w| w.confirmed), known().filter(|f| f.confirmed.is_some()).count() as i64);
        prop_assert_eq!(
            sum(&|w| w.cancelled.values().sum()),
            known().filter(|f| f.cancelled.is_some()).count() as i64
        );
        prop_assert_eq!(sum(&|w| w.failed), known().filter(|f| f.failed_at().is_some()).count() as i64);
        prop_assert_eq!(
            sum(&|w| w.saga_duration().count),
            known().filter(|f| f.ended_at().is_some()).count() as i64
        );
        prop_assert_eq!(
            sum(&|w| w.revenue_cents),
            known().filter(|f| f.confirmed.is_some()).filter_map(|f| f.total_cents()).sum::<i64>()
        );
        for w in windows.values() {
            prop_assert!(w.durations.keys().all(|ms| *ms >= 0));
        }
    }
}
