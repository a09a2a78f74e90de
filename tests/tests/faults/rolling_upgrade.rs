//! `rolling_upgrade`: `payment.charged` goes from v1 to v2 while orders flow, one process at a
//! time, the way README's "Rolling upgrades" describes it:
//!
//! 1. the old deployment: payment writes v1 (`PAYMENT_CHARGED_VERSION=1`);
//! 2. shipping, a consumer of `payment.events`, stops, so v1 charges wait for it on the topic;
//! 3. payment is upgraded (writes v2) while the order service, the other consumer, keeps
//!    running as it was started, and shipping is still away: v2 lands behind the v1 backlog;
//! 4. shipping comes back and reads both versions in topic order;
//! 5. order and inventory restart too: everything runs the new settings.
//!
//! Besides every invariant of the suite: no message is dead-lettered, both versions were
//! published and consumed, and every confirmed order shows how it was paid, the v1 ones upcast.

use std::time::Duration;

use e2e::faults::case::log;
use e2e::faults::check::Expectations;
use e2e::faults::system::Options;
use e2e::faults::{kafka, Case, FaultSystem, Faults, Svc};

const PIN: &str = "PAYMENT_CHARGED_VERSION";
const STOP_TIMEOUT: Duration = Duration::from_secs(15);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rolling_upgrade_from_v1_to_v2_of_an_event_loses_nothing() {
    let mut options = Options::default();
    options.env.push((PIN.to_owned(), "1".to_owned()));
    let mut case = Case::start("rolling_upgrade", 150, options, |_| {}).await;
    let (outcome, steps) = case.run(upgrade).await;
    let mut report = case
        .check(
            &outcome,
            Expectations {
                faults: steps,
                ..Expectations::default()
            },
        )
        .await;
    let system = &case.system;

    let charges = charge_versions(system).await;
    report.note("charged_v1", charges.0);
    report.note("charged_v2", charges.1);
    if charges.0 == 0 || charges.1 == 0 {
        report.violation(
            "both_versions_published",
            format!(
                "payment.events holds {} v1 and {} v2 charges: the upgrade did not happen mid-stream",
                charges.0, charges.1
            ),
        );
    }
    let mut dead_letters = 0;
    for svc in Svc::all() {
        let topic = system.dead_letter_topic(svc);
        let records = kafka::read_topic(&system.broker.address(), &topic)
            .await
            .unwrap_or_else(|e| panic!("[rolling_upgrade] reading {topic}: {e:#}"));
        for record in &records {
            report.violation(
                "nothing_dead_lettered",
                format!(
                    "{topic}: {} ({})",
                    record.header("event_type").unwrap_or_default(),
                    record.header("dlq.error").unwrap_or_default()
                ),
            );
        }
        dead_letters += records.len();
    }
    report.note("dead_letters", dead_letters);

    let orders = system.pool(Svc::ORDER);
    let consumed: Vec<(String, i64)> = sqlx::query_as(
        "select event_type, count(*) from order_timeline
         where event_type like 'payment.charged.%' group by event_type order by event_type",
    )
    .fetch_all(&orders)
    .await
    .expect("reading the order timelines");
    let consumed_by_order = |version: &str| {
        consumed
            .iter()
            .find(|(event_type, _)| event_type == &format!("payment.charged.{version}"))
            .map_or(0, |(_, count)| *count)
    };
    if consumed_by_order("v1") != charges.0 || consumed_by_order("v2") != charges.1 {
        report.violation(
            "both_versions_consumed",
            format!("the order service consumed {consumed:?}; payment published {charges:?}"),
        );
    }
    let unpaid: Vec<(uuid::Uuid, Option<String>)> = sqlx::query_as(
        "select order_id, payment_method from orders
         where status = 'CONFIRMED' and payment_method is distinct from 'account_balance'",
    )
    .fetch_all(&orders)
    .await
    .expect("reading the orders");
    for (order_id, method) in unpaid {
        report.violation(
            "payment_method_recorded",
            format!("confirmed order {order_id} shows payment_method {method:?}"),
        );
    }
    report.finish();
}

/// The upgrade, paced by the workload; returns the steps taken (processes restarted).
async fn upgrade(f: Faults<'_>) -> u64 {
    let Faults {
        system,
        http,
        clock,
        ..
    } = f;
    let case = clock.case;
    let mut steps = 0;
    tokio::time::sleep_until(clock.at(0.15)).await;
    stop(system, Svc::SHIPPING).await;
    clock.log("shipping stopped: v1 charges queue up for it");
    steps += 1;

    tokio::time::sleep_until(clock.at(0.3)).await;
    stop(system, Svc::PAYMENT).await;
    let payment = system.services.get_mut(&Svc::PAYMENT).expect("payment");
    payment.set_env(PIN, None);
    payment
        .start()
        .expect("starting the upgraded payment service");
    payment
        .wait_ready(&http, Duration::from_secs(60))
        .await
        .unwrap_or_else(|e| panic!("[{case}] {e:#}"));
    clock.log("payment upgraded: it writes payment.charged.v2; order still runs as started");
    steps += 1;

    tokio::time::sleep_until(clock.at(0.45)).await;
    let shipping = system.services.get_mut(&Svc::SHIPPING).expect("shipping");
    shipping.set_env(PIN, None);
    shipping.start().expect("starting shipping");
    clock.log("shipping back: it reads the v1 backlog, then v2");
    steps += 1;

    tokio::time::sleep_until(clock.at(0.6)).await;
    for svc in [Svc::ORDER, Svc::INVENTORY] {
        stop(system, svc).await;
        let process = system.services.get_mut(&svc).expect("a service");
        process.set_env(PIN, None);
        process.start().expect("restarting");
        process
            .wait_ready(&http, Duration::from_secs(60))
            .await
            .unwrap_or_else(|e| panic!("[{case}] {e:#}"));
        log(
            case,
            clock.started,
            format_args!("{} upgraded", svc.binary()),
        );
        steps += 1;
    }
    system
        .wait_ready(Duration::from_secs(60))
        .await
        .unwrap_or_else(|e| panic!("[{case}] {e:#}"));
    steps
}

/// SIGTERM, and a clean exit within [`STOP_TIMEOUT`].
async fn stop(system: &mut FaultSystem, svc: Svc) {
    let process = system.services.get_mut(&svc).expect("a service");
    let status = process
        .terminate(STOP_TIMEOUT)
        .await
        .unwrap_or_else(|e| panic!("[rolling_upgrade] stopping {}: {e:#}", svc.binary()));
    assert!(status.success(), "{} exited with {status}", svc.binary());
}

/// How many `payment.charged` events of each version (v1, v2) payment published (distinct event
/// ids: a relay may publish a row again after a restart).
async fn charge_versions(system: &FaultSystem) -> (i64, i64) {
    let topic = system.topic("payment.events");
    let records = kafka::read_topic(&system.broker.address(), &topic)
        .await
        .unwrap_or_else(|e| panic!("[rolling_upgrade] reading {topic}: {e:#}"));
    let count = |event_type: &str| {
        records
            .iter()
            .filter(|record| record.header("event_type").as_deref() == Some(event_type))
            .filter_map(|record| record.header("event_id"))
            .collect::<std::collections::HashSet<_>>()
            .len() as i64
    };
    (count("payment.charged.v1"), count("payment.charged.v2"))
}
