//! `overload`: on top of the (retrying) workload, single-attempt orders offered open-loop at
//! `FAULTS_OVERLOAD_RATE` a second (default 270: twice the ~135 sagas/s measured in
//! BENCHMARKS.md) for `FAULTS_OVERLOAD_SECS` (default 20, at most 60). The order service must
//! shed with 503 `overloaded` and `Retry-After` rather than queue without bound (the saga
//! backlog stays within its bound), every accepted order must end with every invariant intact,
//! and once the load stops a fresh order must confirm within a few seconds, by itself.

use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::time::Duration;

use e2e::faults::check::ExtraOrder;
use e2e::faults::system::Options;
use e2e::faults::workload::{retry_after, Account, Product};
use e2e::faults::{Case, Faults, Rng, Svc};
use serde_json::{json, Value};
use tokio::task::JoinSet;
use tokio::time::Instant;
use uuid::Uuid;

/// The order service's bounds in this case, below their defaults (500 and 256): the debug
/// build on a busy 2-core machine completes 10-60 sagas a second, and the backlog must drain
/// well within [`RECOVERED_WITHIN`] (with 500 it took up to 57 s on a loaded machine).
const MAX_PENDING_ORDERS: i64 = 200;
const MAX_IN_FLIGHT_ORDERS: i64 = 64;
/// Requests of the overload in flight at most (the harness's own bound; one that would exceed
/// it is counted `not_offered`).
const MAX_OUTSTANDING: usize = 256;
/// A fresh order after the load must confirm this soon after it is accepted...
const CONFIRMED_WITHIN: Duration = Duration::from_secs(5);
/// ...and one must, this soon after the load stopped.
const RECOVERED_WITHIN: Duration = Duration::from_secs(60);
/// Products and customers the overload orders spread over (one row each would serialise them).
const BULK_PRODUCTS: usize = 16;
const BULK_CUSTOMERS: usize = 64;

fn env_or(name: &str, default: f64) -> f64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(default)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twice_the_capacity_is_shed_with_503_and_nothing_is_lost() {
    let rate = env_or("FAULTS_OVERLOAD_RATE", 270.0).max(1.0);
    let period = Duration::from_secs_f64(env_or("FAULTS_OVERLOAD_SECS", 20.0).clamp(1.0, 60.0));
    let mut options = Options::default();
    options.env.extend([
        (
            "MAX_PENDING_ORDERS".to_owned(),
            MAX_PENDING_ORDERS.to_string(),
        ),
        (
            "MAX_IN_FLIGHT_ORDERS".to_owned(),
            MAX_IN_FLIGHT_ORDERS.to_string(),
        ),
    ]);
    let mut case = Case::start("overload", 100, options, |workload| {
        workload.duration = period;
        let catalog = &mut workload.catalog;
        for i in 0..BULK_PRODUCTS {
            catalog.products.push(Product {
                sku: bulk_sku(i),
                price_cents: 100,
                stock: 1_000_000,
            });
        }
        for i in 0..BULK_CUSTOMERS {
            catalog.accounts.push(Account {
                customer: bulk_customer(i),
                balance_cents: 100_000_000,
            });
            catalog.customers.push(bulk_customer(i));
        }
    })
    .await;
    println!("faults: [overload] offering {rate}/s for {period:?} on top of the workload");
    let (outcome, load) = case
        .run(async move |f: Faults<'_>| overload(f, rate, period).await)
        .await;
    let expectations = e2e::faults::Expectations {
        extra_accepted: load.accepted.clone(),
        ..Default::default()
    };
    let mut report = case.check(&outcome, expectations).await;
    if load.shed == 0 {
        report.violation(
            "sheds_load",
            format!(
                "{} orders offered, none shed with 503 overloaded",
                load.sent
            ),
        );
    }
    if load.shed_without_retry_after > 0 {
        report.violation(
            "sheds_load",
            format!(
                "{} 503 overloaded without Retry-After",
                load.shed_without_retry_after
            ),
        );
    }
    for problem in &load.problems {
        report.violation("no_client_anomaly", problem.clone());
    }
    let bound = MAX_PENDING_ORDERS + MAX_IN_FLIGHT_ORDERS;
    if load.max_pending > bound {
        report.violation(
            "backlog_bounded",
            format!(
                "{} orders PENDING at once, more than MAX_PENDING_ORDERS + MAX_IN_FLIGHT_ORDERS \
                 = {bound}",
                load.max_pending
            ),
        );
    }
    match load.recovered {
        Some(after) => report.note("recovered", format!("{:.1}s", after.as_secs_f64())),
        None => report.violation(
            "recovers",
            format!(
                "no fresh order confirmed within {CONFIRMED_WITHIN:?} in the \
                 {RECOVERED_WITHIN:?} after the load stopped"
            ),
        ),
    }
    report.faults = load.shed;
    report.note("offered_rate", format!("{rate:.0}/s"));
    report.note(
        "achieved_rate",
        format!("{:.0}/s", load.sent as f64 / load.elapsed.as_secs_f64()),
    );
    report.note("overload_sent", load.sent);
    report.note("overload_accepted", load.accepted.len());
    report.note("shed", load.shed);
    report.note("not_offered", load.not_offered);
    report.note("max_pending", load.max_pending);
    report.finish();
}

fn bulk_sku(i: usize) -> String {
    format!("bulk-{i:02}")
}

fn bulk_customer(i: usize) -> String {
    format!("bulk-customer-{i:02}")
}

/// What the overload got back.
#[derive(Default)]
struct Load {
    /// Orders offered (sent or counted `not_offered`).
    sent: u64,
    /// Orders not sent because [`MAX_OUTSTANDING`] were already in flight.
    not_offered: u64,
    elapsed: Duration,
    accepted: Vec<ExtraOrder>,
    shed: u64,
    shed_without_retry_after: u64,
    problems: Vec<String>,
    /// The most orders `PENDING` at once, sampled every 250 ms.
    max_pending: i64,
    /// How long after the load stopped a fresh order first confirmed in time.
    recovered: Option<Duration>,
}

/// One overload order's answer.
enum Answer {
    Accepted(ExtraOrder),
    Shed { retry_after: bool },
    Problem(String),
}

/// Offers `rate` orders a second for `period`, samples the backlog meanwhile, then probes
/// for recovery.
async fn overload(f: Faults<'_>, rate: f64, period: Duration) -> Load {
    let Faults {
        system,
        rng,
        http,
        clock,
        ..
    } = f;
    let url = format!("{}/orders", system.url(Svc::ORDER));
    let pool = system.pool(Svc::ORDER);
    let max_pending = AtomicI64::new(0);
    let done = AtomicBool::new(false);
    let sample = async {
        while !done.load(Ordering::SeqCst) {
            if let Ok(pending) =
                sqlx::query_scalar::<_, i64>("select count(*) from orders where status = 'PENDING'")
                    .fetch_one(&pool)
                    .await
            {
                max_pending.fetch_max(pending, Ordering::SeqCst);
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    };
    let offer = async {
        let mut load = Load::default();
        let mut in_flight = JoinSet::new();
        let started = Instant::now();
        while started.elapsed() < period {
            let due = (started.elapsed().as_secs_f64() * rate) as u64;
            while load.sent < due {
                load.sent += 1;
                if in_flight.len() >= MAX_OUTSTANDING {
                    load.not_offered += 1;
                    continue;
                }
                let (body, order) = bulk_order(rng);
                in_flight.spawn(place_once(http.clone(), url.clone(), body, order));
            }
            while let Some(answer) = in_flight.try_join_next() {
                record(&mut load, answer.expect("an overload request"));
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        load.elapsed = started.elapsed();
        clock.log(format_args!(
            "overload stopped: {} offered in {:.1}s, {} in flight",
            load.sent,
            load.elapsed.as_secs_f64(),
            in_flight.len()
        ));
        while let Some(answer) = in_flight.join_next().await {
            record(&mut load, answer.expect("an overload request"));
        }
        done.store(true, Ordering::SeqCst);
        load
    };
    let (mut load, ()) = tokio::join!(offer, sample);
    load.max_pending = max_pending.load(Ordering::SeqCst);
    clock.log(format_args!(
        "{} accepted, {} shed, max {} pending; probing for recovery",
        load.accepted.len(),
        load.shed,
        load.max_pending
    ));
    let stopped = Instant::now();
    while stopped.elapsed() < RECOVERED_WITHIN {
        let (body, order) = bulk_order(rng);
        let order = match place_once(http.clone(), url.clone(), body, order).await {
            Answer::Accepted(order) => order,
            Answer::Shed { .. } => {
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
            Answer::Problem(problem) => {
                load.problems.push(format!("recovery probe: {problem}"));
                break;
            }
        };
        let accepted = Instant::now();
        let order_id = order.order_id;
        load.accepted.push(order);
        let order_url = format!("{}/orders/{order_id}", system.url(Svc::ORDER));
        let confirmed = loop {
            if let Ok(response) = http.get(&order_url).send().await {
                let order: Value = response.json().await.unwrap_or(Value::Null);
                if order["status"] == "CONFIRMED" {
                    break true;
                }
            }
            if accepted.elapsed() > CONFIRMED_WITHIN {
                break false;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        if confirmed {
            load.recovered = Some(stopped.elapsed());
            clock.log(format_args!(
                "recovered: order {order_id} confirmed {:.2}s after it was accepted",
                accepted.elapsed().as_secs_f64()
            ));
            break;
        }
    }
    load
}

fn record(load: &mut Load, answer: Answer) {
    match answer {
        Answer::Accepted(order) => load.accepted.push(order),
        Answer::Shed { retry_after } => {
            load.shed += 1;
            if !retry_after {
                load.shed_without_retry_after += 1;
            }
        }
        Answer::Problem(problem) => load.problems.push(problem),
    }
}

/// A one-line order of a bulk product by a bulk customer, with its Idempotency-Key.
fn bulk_order(rng: &mut Rng) -> (Value, ExtraOrder) {
    let sku = bulk_sku(rng.below(BULK_PRODUCTS as u64) as usize);
    let customer = bulk_customer(rng.below(BULK_CUSTOMERS as u64) as usize);
    let body = json!({
        "customer_id": customer,
        "items": [{"sku": sku, "quantity": 1}],
        "shipping_address": {"country": "FR", "city": "Overload"},
    });
    let order = ExtraOrder {
        order_id: Uuid::nil(),
        customer,
        items: vec![(sku, 1)],
        country: "FR".to_owned(),
    };
    (body, order)
}

/// Sends one order. A 503 `overloaded` to the first attempt is final (nothing was written); an
/// answer that leaves it unknown whether the order was taken (no answer, another 5xx, the key
/// in use) is retried with the same Idempotency-Key until it is known.
async fn place_once(
    http: reqwest::Client,
    url: String,
    body: Value,
    mut order: ExtraOrder,
) -> Answer {
    let key = Uuid::new_v4().to_string();
    let started = Instant::now();
    let mut first = true;
    loop {
        let request = http.post(&url).header("Idempotency-Key", &key).json(&body);
        let (why, wait) = match request.send().await {
            Err(error) => (format!("{error}"), None),
            Ok(response) => {
                let status = response.status().as_u16();
                let wait = retry_after(&response);
                let reply: Value = response.json().await.unwrap_or(Value::Null);
                let code = &reply["error"]["code"];
                match status {
                    202 => match reply["order_id"].as_str().and_then(|id| id.parse().ok()) {
                        Some(order_id) => {
                            order.order_id = order_id;
                            return Answer::Accepted(order);
                        }
                        None => return Answer::Problem(format!("202 without an id: {reply}")),
                    },
                    503 if first && code == "overloaded" => {
                        return Answer::Shed {
                            retry_after: wait.is_some(),
                        }
                    }
                    409 if code == "idempotency_key_in_use" => (format!("{status} {reply}"), wait),
                    500.. => (format!("{status} {reply}"), wait),
                    _ => return Answer::Problem(format!("{status} {reply}")),
                }
            }
        };
        first = false;
        if started.elapsed() > Duration::from_secs(180) {
            return Answer::Problem(format!("no definite answer after 180 s: {why}"));
        }
        tokio::time::sleep(wait.unwrap_or(Duration::from_millis(200))).await;
    }
}
