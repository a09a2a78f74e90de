//! `lock_wait_rebalance`: while orders flow, a product row of the inventory database is held
//! locked (`select ... for update` in an open transaction) so the inventory consumer waits on
//! it, and a second inventory instance joins the group meanwhile. The stuck member must not
//! hold up its group: the rebalance completes while the lock is held (the second instance
//! receives events); after it is released every invariant holds. How much else is reserved
//! meanwhile is reported, not required: a partition keeps its order, so each one stalls, by
//! design, once an order of the locked product reaches its head, and how soon that happens
//! depends on the workload's keys and on how long the broker takes to rebalance.

use std::time::Duration;

use e2e::faults::system::Options;
use e2e::faults::{kafka, Case, Expectations, Faults, Svc};
use sqlx::Connection;
use tokio::time::Instant;

/// How long the row stays locked. The second instance's first event comes 7-20 s after it
/// starts on an idle machine (its start, tansu's rebalance, which waits for the stuck member's
/// next poll, and its own first lock waits of `DATABASE_LOCK_TIMEOUT_MS`, 3 s each); 45 s
/// leaves room for a loaded one. Still well inside the saga deadline (60 s).
const HOLD: Duration = Duration::from_secs(45);
/// The locked row (every order of it waits on the lock).
const LOCKED_SKU: &str = "sku-00";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consumer_in_a_lock_wait_does_not_hold_up_its_group() {
    let mut case = Case::start("lock_wait_rebalance", 200, Options::default(), |_| {}).await;
    let (outcome, held) = case.run(lock_a_row_and_join).await;
    let expectations = Expectations {
        faults: 1,
        ..Expectations::default()
    };
    let mut report = case.check(&outcome, expectations).await;
    match held.joined_consumed_after {
        Some(after) => report.note("second_instance_received_after_s", format!("{after:.1}")),
        None => report.violation(
            "rebalance_while_locked",
            format!("the second inventory instance received no event while the row was locked ({HOLD:?})"),
        ),
    }
    report.note("settled_while_locked", held.settled_while_locked);
    report.note("reserved_late_in_lock", held.reserved_late_in_lock);
    report.note("lock_waiters_seen", held.lock_waiters_seen);
    if held.lock_waiters_seen == 0 {
        report.violation("fault_injected", "no consumer waited on the locked row");
    }
    report.finish();
}

/// What happened while the row was locked.
struct Held {
    /// Seconds from the second instance's start until it had received events (its partitions).
    joined_consumed_after: Option<f64>,
    /// Orders that left PENDING during the hold.
    settled_while_locked: i64,
    /// Reservations made in the second half of the hold (reported only).
    reserved_late_in_lock: i64,
    /// Most sessions seen waiting on a lock at once in the inventory database.
    lock_waiters_seen: i64,
}

/// A quarter into the workload: lock the row, start the second inventory instance, watch for
/// [`HOLD`], release.
async fn lock_a_row_and_join(f: Faults<'_>) -> Held {
    let Faults {
        system,
        http,
        clock,
        ..
    } = f;
    let case = clock.case;
    tokio::time::sleep_until(clock.at(0.25)).await;
    let mut locker = sqlx::PgConnection::connect(&system.database_urls[&Svc::INVENTORY])
        .await
        .unwrap_or_else(|e| panic!("[{case}] connecting to the inventory database: {e:#}"));
    let mut lock = locker.begin().await.expect("begin");
    sqlx::query("select sku from products where sku = $1 for update")
        .bind(LOCKED_SKU)
        .execute(&mut *lock)
        .await
        .unwrap_or_else(|e| panic!("[{case}] locking {LOCKED_SKU}: {e:#}"));
    let locked_at = Instant::now();
    clock.log(format_args!("{LOCKED_SKU} locked for {HOLD:?}"));
    let inventory = system.pool(Svc::INVENTORY);
    let orders = system.pool(Svc::ORDER);
    let settled = || async {
        sqlx::query_scalar::<_, i64>("select count(*) from orders where status <> 'PENDING'")
            .fetch_one(&orders)
            .await
            .unwrap_or(0)
    };
    let settled_before = settled().await;
    // Reservations the inventory consumers made in the second half of the hold.
    let reservations = || async {
        sqlx::query_scalar::<_, i64>("select count(*) from reservations")
            .fetch_one(&inventory)
            .await
            .unwrap_or(0)
    };
    let mut reservations_at_half = None;

    let extra = system
        .extras
        .get_mut(&Svc::INVENTORY)
        .expect("a second inventory instance");
    extra.start().expect("starting a second inventory instance");
    let started = Instant::now();
    let mut ready = false;
    let mut joined_consumed_after = None;
    let mut lock_waiters_seen = 0;
    while locked_at.elapsed() < HOLD {
        let waiters: i64 = sqlx::query_scalar(
            "select count(*) from pg_stat_activity
             where wait_event_type = 'Lock' and datname = current_database()",
        )
        .fetch_one(&inventory)
        .await
        .unwrap_or(0);
        lock_waiters_seen = lock_waiters_seen.max(waiters);
        if !ready {
            ready = extra
                .wait_ready(&http, Duration::from_millis(1))
                .await
                .is_ok();
        }
        if ready && joined_consumed_after.is_none() {
            // Events it applied or tried (its first may wait on the lock too).
            let mut received = 0.0;
            for metric in [
                "sagashop_events_consumed_total",
                "sagashop_consumer_retries_total",
            ] {
                received += kafka::metric(&http, &extra.url(), metric, &[])
                    .await
                    .unwrap_or(0.0);
            }
            if received > 0.0 {
                joined_consumed_after = Some(started.elapsed().as_secs_f64());
                clock.log(format_args!(
                    "{} received events {:.1}s after it started, the row still locked",
                    extra.label(),
                    started.elapsed().as_secs_f64()
                ));
            }
        }
        if reservations_at_half.is_none() && locked_at.elapsed() >= HOLD / 2 {
            reservations_at_half = Some(reservations().await);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let settled_while_locked = settled().await - settled_before;
    let reserved_late_in_lock = reservations().await - reservations_at_half.unwrap_or(0);
    lock.rollback().await.expect("releasing the lock");
    clock.log(format_args!(
        "{LOCKED_SKU} released; {settled_while_locked} orders settled meanwhile, \
         {reserved_late_in_lock} reservations in its second half, \
         at most {lock_waiters_seen} sessions waited on a lock"
    ));
    Held {
        joined_consumed_after,
        settled_while_locked,
        reserved_late_in_lock,
        lock_waiters_seen,
    }
}
