//! `idempotency`: bursts of many concurrent clients posting one order with one
//! Idempotency-Key, the order service SIGKILLed during every other burst.

use std::collections::BTreeSet;
use std::time::Duration;

use e2e::faults::check::ExtraOrder;
use e2e::faults::system::{Options, RESTART_AFTER_SIGKILL};
use e2e::faults::workload::{same_key_burst, Account, PlannedOrder, Product};
use e2e::faults::{Case, Expectations, Faults, Svc};
use uuid::Uuid;

const BURSTS: usize = 6;
const CLIENTS: usize = 50;
const BURST_PRICE: i64 = 999;
const BURST_BALANCE: i64 = 10_000;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_idempotency_key_retried_by_many_concurrent_clients() {
    let mut case = Case::start("idempotency", 150, Options::default(), |workload| {
        workload.catalog.products.push(Product {
            sku: "sku-burst".into(),
            price_cents: BURST_PRICE,
            stock: BURSTS as i32,
        });
        for i in 0..BURSTS {
            let customer = format!("burst-customer-{i}");
            workload.catalog.customers.push(customer.clone());
            workload.catalog.accounts.push(Account {
                customer,
                balance_cents: BURST_BALANCE,
            });
        }
    })
    .await;
    let (outcome, (bursts, kills)) = case.run(bursts_of_one_key).await;
    let invariant = "one_order_per_key";
    let mut extra = Vec::new();
    let mut problems = Vec::new();
    for (order, ids, other) in &bursts {
        let distinct: BTreeSet<Uuid> = ids.iter().copied().collect();
        if ids.len() != CLIENTS || distinct.len() != 1 || !other.is_empty() {
            problems.push(format!(
                "key {}: {} of {CLIENTS} clients answered 202, order ids {distinct:?}, other \
                 answers {other:?}",
                order.key,
                ids.len()
            ));
        }
        for order_id in distinct {
            extra.push(ExtraOrder {
                order_id,
                customer: order.customer.clone(),
                items: order.items.clone(),
                country: order.country.clone(),
            });
        }
    }
    let expectations = Expectations {
        faults: kills + BURSTS as u64,
        extra_accepted: extra,
        ..Expectations::default()
    };
    let mut report = case.check(&outcome, expectations).await;
    for problem in problems {
        report.violation(invariant, problem);
    }
    // One key, one order, one charge: the burst customers' own records.
    let order_pool = case.system.pool(Svc::ORDER);
    let payment_pool = case.system.pool(Svc::PAYMENT);
    for (i, (order, _, _)) in bursts.iter().enumerate() {
        let customer = &order.customer;
        let orders: Vec<(Uuid, String)> =
            sqlx::query_as("select order_id, status from orders where customer_id = $1")
                .bind(customer)
                .fetch_all(&order_pool)
                .await
                .expect("orders");
        let keys: i64 =
            sqlx::query_scalar("select count(*) from idempotency_keys where customer_id = $1")
                .bind(customer)
                .fetch_one(&order_pool)
                .await
                .expect("keys");
        let charges: Vec<(String, i64)> =
            sqlx::query_as("select status, amount_cents from payments where customer_id = $1")
                .bind(customer)
                .fetch_all(&payment_pool)
                .await
                .expect("payments");
        let balance: i64 =
            sqlx::query_scalar("select balance_cents from accounts where customer_id = $1")
                .bind(customer)
                .fetch_one(&payment_pool)
                .await
                .expect("balance");
        let charged: i64 = charges
            .iter()
            .filter(|(s, _)| s == "CHARGED")
            .map(|(_, a)| a)
            .sum();
        let ok = orders.len() == 1
            && keys == 1
            && charges.len() == 1
            && orders[0].1 == "CONFIRMED"
            && charged == BURST_PRICE
            && balance == BURST_BALANCE - BURST_PRICE;
        if !ok {
            report.violation(
                invariant,
                format!(
                    "burst {i} ({customer}): orders {orders:?}, idempotency keys {keys}, payments \
                     {charges:?}, balance {balance} (expected one CONFIRMED order charged \
                     {BURST_PRICE} once)"
                ),
            );
        }
    }
    report.note("bursts", format!("{BURSTS}x{CLIENTS}"));
    report.note("order_kills", kills);
    report.finish();
}

/// One burst's order, the order ids its 202s carried and its other answers.
type Burst = (PlannedOrder, Vec<Uuid>, Vec<String>);

/// [`BURSTS`] times, evenly through the workload, [`CLIENTS`] concurrent clients post one order
/// with one Idempotency-Key; in every other burst the order service is SIGKILLed 5-60 ms into
/// the burst and restarted [`RESTART_AFTER_SIGKILL`] later. Returns the bursts and the kills.
async fn bursts_of_one_key(f: Faults<'_>) -> (Vec<Burst>, u64) {
    let Faults {
        system,
        rng,
        targets,
        http,
        clock,
    } = f;
    let case = clock.case;
    let mut bursts = Vec::new();
    let mut kills = 0u64;
    for i in 0..BURSTS {
        tokio::time::sleep_until(clock.at((i as f64 + 0.5) / BURSTS as f64)).await;
        let order = PlannedOrder {
            n: 1_000_000 + i * 1_000,
            key: format!("{case}-burst-{i}-{}", rng.next_u64()),
            customer: format!("burst-customer-{i}"),
            items: vec![("sku-burst".into(), 1)],
            country: "FR".into(),
            cancel: false,
        };
        let kill = i % 2 == 1;
        let burst = same_key_burst(&http, targets, &order, CLIENTS);
        let (ids, other) = if kill {
            let killer = async {
                tokio::time::sleep(rng.millis(5, 60)).await;
                let process = system.services.get_mut(&Svc::ORDER).expect("order");
                process.kill().await.expect("SIGKILL");
                tokio::time::sleep(RESTART_AFTER_SIGKILL).await;
                process.start().expect("restarting");
            };
            let (result, ()) = tokio::join!(burst, killer);
            kills += 1;
            result
        } else {
            burst.await
        };
        let distinct: BTreeSet<Uuid> = ids.iter().copied().collect();
        clock.log(format_args!(
            "burst {i}: {CLIENTS} clients, one key{}: {} answered 202 with {} distinct order \
             id(s), {} other answers",
            if kill {
                ", order service SIGKILLed meanwhile"
            } else {
                ""
            },
            ids.len(),
            distinct.len(),
            other.len()
        ));
        bursts.push((order, ids, other));
    }
    let process = system.services.get_mut(&Svc::ORDER).expect("order");
    process
        .wait_ready(&http, Duration::from_secs(60))
        .await
        .expect("order ready");
    (bursts, kills)
}
