//! After the workload: wait until the system is quiet, then check the invariants in every
//! service's database (the harness owns them) and over HTTP, and summarise.
//!
//! Quiet: every accepted order is terminal (or the wait timed out: those are `stuck`), every
//! outbox is drained, and every service's consumer group has committed up to the high
//! watermark of every partition it consumes, twice in a row with nothing new produced.
//!
//! Invariants:
//! - `lost`: accepted orders (answered 202) the order service does not know, or that never
//!   became terminal; `stuck`: accepted orders not terminal.
//! - `double_charged`: orders charged more than their total, or charged (payment `CHARGED`)
//!   while `CANCELLED` or `FAILED`; customers whose balance went down by more than the
//!   charges payment holds for them. Money is conserved: opening balance = balance + charges
//!   not refunded, for every customer (`money_delta` sums the differences).
//! - `oversold`: products whose available + reserved + sold differs from the stock, with a
//!   negative field, with units still reserved once every order is terminal, or whose sold
//!   units differ from the units of the confirmed orders.
//! - `disagree`: orders on which the services' views disagree: `CONFIRMED` <=> payment
//!   `CHARGED` with amount = `total_cents` (= the priced lines), shipment `SCHEDULED`,
//!   reservation `COMMITTED`; `CANCELLED`/`FAILED` => no `CHARGED` payment, no `SCHEDULED`
//!   shipment, no `RESERVED`/`COMMITTED` reservation; an order to `AQ`, with an unknown sku or
//!   by a customer without an account is never confirmed; a customer cancellation answered 202
//!   leaves the order `CANCELLED` (`cancelled_by_customer`); the HTTP API shows what the
//!   databases hold.
//! - every outbox drained, no consumer lag, no service process exited on its own, no order the
//!   client was never answered 202 for (`unexpected`).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt::Write as _;
use std::time::Duration;

use futures::StreamExt;
use serde_json::Value;
use sqlx::types::Json;
use tokio::time::Instant;
use uuid::Uuid;

use super::kafka::{group_state, Duplicator};
use super::workload::{Outcome, Workload};
use super::{FaultSystem, Svc};

/// What the case knows beyond the workload.
#[derive(Debug, Default)]
pub struct Expectations {
    /// Orders accepted outside the workload (e.g. Idempotency-Key bursts): (order id, items,
    /// customer, country).
    pub extra_accepted: Vec<ExtraOrder>,
    /// Order ids that may exist in other services without the order service knowing them
    /// (e.g. the order id of a poison message).
    pub foreign_order_ids: BTreeSet<Uuid>,
    /// Injected faults, for the summary.
    pub faults: u64,
    /// Extra `key=value` fields for the summary line.
    pub notes: Vec<(String, String)>,
}

#[derive(Debug, Clone)]
pub struct ExtraOrder {
    pub order_id: Uuid,
    pub customer: String,
    pub items: Vec<(String, i32)>,
    pub country: String,
}

/// The result of one case.
#[derive(Debug, Default)]
pub struct Report {
    pub case: String,
    pub seed: u64,
    pub planned: usize,
    pub accepted: usize,
    pub confirmed: usize,
    pub cancelled: usize,
    pub failed: usize,
    pub timed_out: usize,
    pub faults: u64,
    pub lost: usize,
    pub double_charged: usize,
    pub oversold: usize,
    pub stuck: usize,
    pub disagree: usize,
    pub unexpected: usize,
    pub outbox_pending: i64,
    pub lag: i64,
    pub money_delta: i64,
    pub gave_up: usize,
    pub http_retries: u64,
    pub settle: Duration,
    pub notes: Vec<(String, String)>,
    /// Every violation, explained.
    pub problems: Vec<String>,
    /// Helpful context printed on failure (timelines of offending orders, ...).
    pub details: Vec<String>,
}

impl Report {
    pub fn summary(&self) -> String {
        let mut line = format!(
            "case={} seed={} orders={} accepted={} confirmed={} cancelled={} failed={} \
             timed_out={} faults={} lost={} double_charged={} oversold={} stuck={} disagree={} \
             unexpected={} outbox={} lag={} money_delta={} gave_up={} retries={} settle={:.1}s",
            self.case,
            self.seed,
            self.planned,
            self.accepted,
            self.confirmed,
            self.cancelled,
            self.failed,
            self.timed_out,
            self.faults,
            self.lost,
            self.double_charged,
            self.oversold,
            self.stuck,
            self.disagree,
            self.unexpected,
            self.outbox_pending,
            self.lag,
            self.money_delta,
            self.gave_up,
            self.http_retries,
            self.settle.as_secs_f64(),
        );
        for (key, value) in &self.notes {
            let _ = write!(line, " {key}={value}");
        }
        line
    }

    pub fn problem(&mut self, text: impl Into<String>) {
        self.problems.push(text.into());
    }

    /// Prints the summary line (and appends it to `target/<profile>/faults-summary.txt`); with
    /// problems, prints them and panics (the system then prints its logs as it drops).
    pub fn finish(&self) {
        let line = self.summary();
        println!("faults: {line}");
        let summary_file = super::system::target_dir().join("faults-summary.txt");
        if let Ok(mut file) = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(summary_file)
        {
            use std::io::Write;
            let verdict = if self.problems.is_empty() {
                "ok"
            } else {
                "FAILED"
            };
            let _ = writeln!(file, "{} {verdict} {line}", super::system::timestamp());
        }
        if !self.problems.is_empty() {
            eprintln!("[{}] {} problem(s):", self.case, self.problems.len());
            for problem in self.problems.iter().take(60) {
                eprintln!("  - {problem}");
            }
            for detail in self.details.iter().take(20) {
                eprintln!("{detail}");
            }
            panic!(
                "[{}] invariants broken: {}\n{}",
                self.case,
                line,
                self.problems
                    .iter()
                    .take(10)
                    .cloned()
                    .collect::<Vec<_>>()
                    .join("\n")
            );
        }
    }
}

/// Waits until the system is quiet and checks every invariant.
pub async fn settle_and_check(
    system: &mut FaultSystem,
    workload: &Workload,
    outcome: &Outcome,
    mut duplicator: Option<&mut Duplicator>,
    expectations: Expectations,
) -> Report {
    let started = Instant::now();
    let mut report = Report {
        case: system.case.clone(),
        seed: workload.seed,
        planned: workload.orders.len(),
        accepted: outcome.accepted.len() + expectations.extra_accepted.len(),
        faults: expectations.faults,
        gave_up: outcome.gave_up.len(),
        http_retries: outcome.http_retries,
        notes: expectations.notes.clone(),
        ..Report::default()
    };
    for (n, why) in &outcome.gave_up {
        report.problem(format!("order #{n} never accepted (client gave up): {why}"));
    }
    for anomaly in &outcome.anomalies {
        report.problem(anomaly.clone());
    }
    let accepted: Vec<Uuid> = outcome
        .accepted
        .iter()
        .map(|(_, id)| *id)
        .chain(expectations.extra_accepted.iter().map(|o| o.order_id))
        .collect();

    // 1. Every accepted order terminal.
    let terminal_timeout =
        Duration::from_millis(system.options.saga_deadline_ms) + Duration::from_secs(45);
    let deadline = Instant::now() + terminal_timeout;
    loop {
        match pending_orders(system, &accepted).await {
            Ok(0) => break,
            Ok(_) if Instant::now() < deadline => {}
            Ok(pending) => {
                report.problem(format!(
                    "{pending} accepted orders not terminal after {terminal_timeout:?}"
                ));
                break;
            }
            Err(error) if Instant::now() < deadline => {
                eprintln!("[{}] reading orders: {error:#}", system.case)
            }
            Err(error) => {
                report.problem(format!("cannot read the orders: {error:#}"));
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }

    // 2. Outboxes drained, no consumer lag, twice in a row with nothing new.
    let quiet_deadline = Instant::now() + Duration::from_secs(90);
    let mut previous: Option<Vec<String>> = None;
    loop {
        let state = quiet_state(system, duplicator.as_deref_mut()).await;
        match state {
            Ok((true, fingerprint)) if previous.as_ref() == Some(&fingerprint) => break,
            Ok((true, fingerprint)) => previous = Some(fingerprint),
            Ok((false, description)) => {
                previous = None;
                if Instant::now() > quiet_deadline {
                    report.problem(format!("not quiet after 90 s: {}", description.join("; ")));
                    break;
                }
            }
            Err(error) => {
                previous = None;
                if Instant::now() > quiet_deadline {
                    report.problem(format!("cannot tell whether it is quiet: {error:#}"));
                    break;
                }
            }
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    report.settle = started.elapsed();

    for exit in system.unexpected_exits() {
        report.problem(exit);
    }
    if let Err(error) = check(system, workload, outcome, &expectations, &mut report).await {
        report.problem(format!("checking the invariants failed: {error:#}"));
    }
    report
}

async fn pending_orders(system: &FaultSystem, accepted: &[Uuid]) -> anyhow::Result<usize> {
    let terminal: i64 = sqlx::query_scalar(
        "select count(*) from orders where order_id = any($1) and status <> 'PENDING'",
    )
    .bind(accepted)
    .fetch_one(&system.pool(Svc::Order))
    .await?;
    Ok(accepted.len() - terminal as usize)
}

/// (quiet?, fingerprint or what is not quiet yet).
async fn quiet_state(
    system: &FaultSystem,
    duplicator: Option<&mut Duplicator>,
) -> anyhow::Result<(bool, Vec<String>)> {
    let mut busy = Vec::new();
    let mut fingerprint = Vec::new();
    for svc in Svc::ALL {
        let pending: i64 =
            sqlx::query_scalar("select count(*) from outbox where published_at is null")
                .fetch_one(&system.pool(svc))
                .await?;
        if pending > 0 {
            busy.push(format!("{} outbox has {pending} unpublished", svc.name()));
        }
        let topics: Vec<String> = svc.consumes().iter().map(|t| system.topic(t)).collect();
        for state in group_state(&system.broker.address(), &system.group(svc), &topics).await? {
            if state.lag() > 0 {
                busy.push(format!("{} lags on {state}", system.group(svc)));
            }
            fingerprint.push(format!("{}:{state}", svc.name()));
        }
    }
    if let Some(duplicator) = duplicator {
        if !duplicator.caught_up().await? {
            busy.push("the duplicator has not copied everything yet".to_owned());
        }
    }
    Ok(match busy.is_empty() {
        true => (true, fingerprint),
        false => (false, busy),
    })
}

async fn rows(system: &FaultSystem, svc: Svc, table: &str) -> anyhow::Result<Vec<Value>> {
    let rows: Vec<Json<Value>> = sqlx::query_scalar(&format!("select to_jsonb(t) from {table} t"))
        .fetch_all(&system.pool(svc))
        .await?;
    Ok(rows.into_iter().map(|row| row.0).collect())
}

fn by_order(rows: Vec<Value>) -> HashMap<Uuid, Value> {
    rows.into_iter()
        .filter_map(|row| Some((row["order_id"].as_str()?.parse().ok()?, row)))
        .collect()
}

fn text(value: &Value) -> &str {
    value.as_str().unwrap_or("")
}

async fn check(
    system: &FaultSystem,
    workload: &Workload,
    outcome: &Outcome,
    expectations: &Expectations,
    report: &mut Report,
) -> anyhow::Result<()> {
    let orders = by_order(rows(system, Svc::Order, "orders").await?);
    let payments = by_order(rows(system, Svc::Payment, "payments").await?);
    let shipments = by_order(rows(system, Svc::Shipping, "shipments").await?);
    let reservations = by_order(rows(system, Svc::Inventory, "reservations").await?);
    let accounts: HashMap<String, i64> = rows(system, Svc::Payment, "accounts")
        .await?
        .into_iter()
        .map(|a| {
            (
                text(&a["customer_id"]).to_owned(),
                a["balance_cents"].as_i64().unwrap_or(i64::MIN),
            )
        })
        .collect();
    let products: HashMap<String, Value> = rows(system, Svc::Inventory, "products")
        .await?
        .into_iter()
        .map(|p| (text(&p["sku"]).to_owned(), p))
        .collect();

    // What the client knows about each accepted order.
    struct Known {
        n: Option<usize>,
        customer: String,
        items: Vec<(String, i32)>,
        country: String,
        cancel_accepted: bool,
    }
    let mut known: BTreeMap<Uuid, Known> = BTreeMap::new();
    for (n, order_id) in &outcome.accepted {
        let planned = &workload.orders[*n];
        known.insert(
            *order_id,
            Known {
                n: Some(*n),
                customer: planned.customer.clone(),
                items: planned.items.clone(),
                country: planned.country.clone(),
                cancel_accepted: outcome.cancelled_by_client.contains(n),
            },
        );
    }
    for extra in &expectations.extra_accepted {
        known.insert(
            extra.order_id,
            Known {
                n: None,
                customer: extra.customer.clone(),
                items: extra.items.clone(),
                country: extra.country.clone(),
                cancel_accepted: false,
            },
        );
    }
    let prices: HashMap<&str, i64> = workload
        .catalog
        .products
        .iter()
        .map(|p| (p.sku.as_str(), p.price_cents))
        .collect();
    let has_account: BTreeSet<&str> = workload
        .catalog
        .accounts
        .iter()
        .map(|a| a.customer.as_str())
        .collect();

    let mut offending: BTreeSet<Uuid> = BTreeSet::new();
    let mut double_charged: BTreeSet<Uuid> = BTreeSet::new();
    let mut disagree: BTreeSet<Uuid> = BTreeSet::new();
    for (order_id, k) in &known {
        let label = match k.n {
            Some(n) => format!("order #{n} {order_id}"),
            None => format!("order {order_id}"),
        };
        let Some(order) = orders.get(order_id) else {
            report.lost += 1;
            report.problem(format!(
                "{label}: accepted (202) but unknown to the order service"
            ));
            offending.insert(*order_id);
            continue;
        };
        let status = text(&order["status"]);
        let reason = text(&order["cancellation_reason"]);
        let total = order["total_cents"].as_i64();
        match status {
            "CONFIRMED" => report.confirmed += 1,
            "CANCELLED" => report.cancelled += 1,
            "FAILED" => report.failed += 1,
            _ => {
                report.stuck += 1;
                report.lost += 1;
                report.problem(format!("{label}: still {status}"));
                offending.insert(*order_id);
                continue;
            }
        }
        if reason == "timeout" {
            // Every fault here lasts seconds, the deadline a minute: a saga that needed the
            // deadline was stalled, even if the compensation then left everything consistent.
            report.timed_out += 1;
            report.problem(format!(
                "{label}: cancelled by the saga deadline ({} ms): it stalled",
                system.options.saga_deadline_ms
            ));
            offending.insert(*order_id);
        }
        let payment = payments.get(order_id);
        let payment_status = payment.map_or("", |p| text(&p["status"]));
        let amount = payment
            .and_then(|p| p["amount_cents"].as_i64())
            .unwrap_or(0);
        let shipment_status = shipments.get(order_id).map_or("", |s| text(&s["status"]));
        let reservation_status = reservations
            .get(order_id)
            .map_or("", |r| text(&r["status"]));
        let mut wrong = Vec::new();
        match status {
            "CONFIRMED" => {
                let priced: Option<i64> = k
                    .items
                    .iter()
                    .map(|(sku, q)| prices.get(sku.as_str()).map(|p| p * i64::from(*q)))
                    .sum();
                if payment_status != "CHARGED" {
                    wrong.push(format!("payment is {payment_status:?}, not CHARGED"));
                } else if Some(amount) != total {
                    wrong.push(format!("charged {amount} but total_cents is {total:?}"));
                }
                if total != priced {
                    wrong.push(format!(
                        "total_cents {total:?} but the lines cost {priced:?}"
                    ));
                }
                if shipment_status != "SCHEDULED" {
                    wrong.push(format!("shipment is {shipment_status:?}, not SCHEDULED"));
                }
                if reservation_status != "COMMITTED" {
                    wrong.push(format!(
                        "reservation is {reservation_status:?}, not COMMITTED"
                    ));
                }
                if k.country == "AQ" {
                    wrong.push("confirmed to AQ, which is not served".to_owned());
                }
                if !has_account.contains(k.customer.as_str()) {
                    wrong.push(format!("confirmed for {} who has no account", k.customer));
                }
                if k.items
                    .iter()
                    .any(|(sku, _)| !prices.contains_key(sku.as_str()))
                {
                    wrong.push("confirmed with an unknown sku".to_owned());
                }
                if let (Some(total), true) = (total, payment_status == "CHARGED") {
                    if amount > total {
                        double_charged.insert(*order_id);
                    }
                }
            }
            _ => {
                if payment_status == "CHARGED" {
                    double_charged.insert(*order_id);
                    wrong.push(format!("{status} but its payment is CHARGED ({amount})"));
                }
                if shipment_status == "SCHEDULED" {
                    wrong.push(format!("{status} but its shipment is SCHEDULED"));
                }
                if reservation_status == "RESERVED" || reservation_status == "COMMITTED" {
                    wrong.push(format!(
                        "{status} but its reservation is {reservation_status}"
                    ));
                }
                if status == "FAILED" {
                    wrong.push(format!(
                        "FAILED (failed_step {}): no compensation should fail in this workload",
                        order["failed_step"]
                    ));
                }
            }
        }
        if k.cancel_accepted && (status != "CANCELLED" || reason != "cancelled_by_customer") {
            wrong.push(
                "the customer's cancellation was answered 202, yet the order is not CANCELLED \
                 (cancelled_by_customer)"
                    .to_owned(),
            );
        }
        if payment_status == "REFUND_FAILED" || reservation_status == "RELEASE_FAILED" {
            wrong.push(format!(
                "a compensation failed: payment {payment_status:?}, reservation {reservation_status:?}"
            ));
        }
        if !wrong.is_empty() {
            disagree.insert(*order_id);
            offending.insert(*order_id);
            report.problem(format!("{label} ({status} {reason}): {}", wrong.join("; ")));
        }
    }
    report.double_charged = double_charged.len();
    offending.extend(double_charged.iter().copied());

    // Orders nobody was answered 202 for.
    for (order_id, order) in &orders {
        if !known.contains_key(order_id) {
            report.unexpected += 1;
            report.problem(format!(
                "order {order_id} ({} of {}) exists but no client was answered 202 for it",
                text(&order["status"]),
                text(&order["customer_id"])
            ));
        }
    }
    // Records of orders the order service does not know.
    for (what, map, active) in [
        ("payment", &payments, &["CHARGED", "REFUND_FAILED"][..]),
        ("shipment", &shipments, &["SCHEDULED"][..]),
        (
            "reservation",
            &reservations,
            &["RESERVED", "COMMITTED", "RELEASE_FAILED"][..],
        ),
    ] {
        for (order_id, row) in map {
            if orders.contains_key(order_id) || expectations.foreign_order_ids.contains(order_id) {
                continue;
            }
            let status = text(&row["status"]);
            if active.contains(&status) {
                report.problem(format!(
                    "{what} {status} for order {order_id}, which the order service does not know"
                ));
            } else {
                report.details.push(format!(
                    "note: {what} {status} for order {order_id}, which the order service does not know"
                ));
            }
        }
    }

    // Money: per customer, opening balance = balance + charges not refunded.
    let mut charged: HashMap<&str, i64> = HashMap::new();
    for payment in payments.values() {
        if matches!(text(&payment["status"]), "CHARGED" | "REFUND_FAILED") {
            *charged.entry(text(&payment["customer_id"])).or_default() +=
                payment["amount_cents"].as_i64().unwrap_or(0);
        }
    }
    for account in &workload.catalog.accounts {
        let Some(&balance) = accounts.get(&account.customer) else {
            report.problem(format!("account {} is gone", account.customer));
            continue;
        };
        let held = charged.get(account.customer.as_str()).copied().unwrap_or(0);
        let delta = account.balance_cents - balance - held;
        if balance < 0 {
            report.problem(format!(
                "{} has a negative balance {balance}",
                account.customer
            ));
        }
        if delta != 0 {
            report.money_delta += delta.abs();
            if delta > 0 {
                report.double_charged += 1;
            }
            report.problem(format!(
                "money not conserved for {}: opened with {}, balance {balance}, charges held {held} \
                 (off by {delta})",
                account.customer, account.balance_cents
            ));
        }
    }

    // Stock: available + reserved + sold = stocked, nothing negative, nothing reserved for a
    // terminal order, sold = units of the confirmed orders.
    let mut confirmed_units: HashMap<&str, i64> = HashMap::new();
    for (order_id, k) in &known {
        if orders.get(order_id).map(|o| text(&o["status"])) == Some("CONFIRMED") {
            for (sku, quantity) in &k.items {
                *confirmed_units.entry(sku.as_str()).or_default() += i64::from(*quantity);
            }
        }
    }
    for product in &workload.catalog.products {
        let Some(row) = products.get(&product.sku) else {
            report.oversold += 1;
            report.problem(format!("product {} is gone", product.sku));
            continue;
        };
        let field = |name: &str| row[name].as_i64().unwrap_or(i64::MIN);
        let (available, reserved, sold) = (field("available"), field("reserved"), field("sold"));
        let mut wrong = Vec::new();
        if available + reserved + sold != i64::from(product.stock) {
            wrong.push(format!(
                "available {available} + reserved {reserved} + sold {sold} != stocked {}",
                product.stock
            ));
        }
        if available < 0 || reserved < 0 || sold < 0 {
            wrong.push("a negative field".to_owned());
        }
        if reserved != 0 {
            wrong.push(format!(
                "{reserved} units still reserved once every order is terminal"
            ));
        }
        let expected_sold = confirmed_units
            .get(product.sku.as_str())
            .copied()
            .unwrap_or(0);
        if sold != expected_sold {
            wrong.push(format!(
                "sold {sold} but the confirmed orders hold {expected_sold}"
            ));
        }
        if !wrong.is_empty() {
            report.oversold += 1;
            report.problem(format!("product {}: {}", product.sku, wrong.join("; ")));
        }
    }

    // Outboxes and lag (after quiet).
    for svc in Svc::ALL {
        let pending: i64 =
            sqlx::query_scalar("select count(*) from outbox where published_at is null")
                .fetch_one(&system.pool(svc))
                .await?;
        if pending > 0 {
            report.outbox_pending += pending;
            report.problem(format!(
                "{} outbox: {pending} events never published",
                svc.name()
            ));
        }
        let topics: Vec<String> = svc.consumes().iter().map(|t| system.topic(t)).collect();
        for state in group_state(&system.broker.address(), &system.group(svc), &topics).await? {
            if state.lag() > 0 {
                report.lag += state.lag();
                report.problem(format!("{} has not consumed {state}", system.group(svc)));
            }
        }
    }

    // The HTTP API shows what the databases hold.
    let api_problems = check_api(
        system,
        &known.keys().copied().collect::<Vec<_>>(),
        &orders,
        &payments,
        &shipments,
    )
    .await;
    for problem in api_problems {
        if let Some(order_id) = problem.0 {
            disagree.insert(order_id);
            offending.insert(order_id);
        }
        report.problem(problem.1);
    }
    for account in &workload.catalog.accounts {
        let reply = get_json(
            &system.http,
            &format!("{}/accounts/{}", system.url(Svc::Payment), account.customer),
        )
        .await;
        let db = accounts.get(&account.customer).copied();
        if reply
            .as_ref()
            .ok()
            .and_then(|(_, v)| v["balance_cents"].as_i64())
            != db
        {
            report.problem(format!(
                "GET /accounts/{}: {reply:?} but the database holds {db:?}",
                account.customer
            ));
        }
    }
    for product in &workload.catalog.products {
        let reply = get_json(
            &system.http,
            &format!("{}/products/{}", system.url(Svc::Inventory), product.sku),
        )
        .await;
        let row = &products[&product.sku];
        let same = reply.as_ref().is_ok_and(|(status, v)| {
            *status == 200
                && ["available", "reserved", "sold"]
                    .iter()
                    .all(|f| v[f] == row[f])
        });
        if !same {
            report.oversold += 1;
            report.problem(format!(
                "GET /products/{}: {reply:?} but the database holds {row}",
                product.sku
            ));
        }
    }
    report.disagree = disagree.len();

    // Context for the offending orders: every service's record and the timeline.
    for order_id in offending.iter().take(8) {
        let timeline: Vec<Json<Value>> = sqlx::query_scalar(
            "select to_jsonb(t) from order_timeline t where order_id = $1 order by seq",
        )
        .bind(order_id)
        .fetch_all(&system.pool(Svc::Order))
        .await
        .unwrap_or_default();
        let events: Vec<String> = timeline
            .iter()
            .map(|e| {
                format!(
                    "{} ({})",
                    text(&e.0["event_type"]),
                    text(&e.0["occurred_at"])
                )
            })
            .collect();
        report.details.push(format!(
            "order {order_id}:\n  order       {}\n  payment     {}\n  shipment    {}\n  reservation {}\n  timeline    {}",
            orders.get(order_id).map_or("-".to_owned(), Value::to_string),
            payments.get(order_id).map_or("-".to_owned(), Value::to_string),
            shipments.get(order_id).map_or("-".to_owned(), Value::to_string),
            reservations.get(order_id).map_or("-".to_owned(), Value::to_string),
            events.join(" -> "),
        ));
    }
    Ok(())
}

async fn get_json(http: &reqwest::Client, url: &str) -> anyhow::Result<(u16, Value)> {
    let mut last = None;
    for _ in 0..3 {
        match http.get(url).send().await {
            Ok(response) => {
                let status = response.status().as_u16();
                let body = response.json().await.unwrap_or(Value::Null);
                return Ok((status, body));
            }
            Err(error) => last = Some(error),
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    Err(last.map_or_else(|| anyhow::anyhow!("no attempt"), anyhow::Error::from))
}

/// GET /orders/{id}, /payments/{id}, /shipments/{id} against the databases.
async fn check_api(
    system: &FaultSystem,
    order_ids: &[Uuid],
    orders: &HashMap<Uuid, Value>,
    payments: &HashMap<Uuid, Value>,
    shipments: &HashMap<Uuid, Value>,
) -> Vec<(Option<Uuid>, String)> {
    let (order_url, payment_url, shipping_url) = (
        system.url(Svc::Order),
        system.url(Svc::Payment),
        system.url(Svc::Shipping),
    );
    let http = &system.http;
    let results: Vec<Vec<(Option<Uuid>, String)>> =
        futures::stream::iter(order_ids.iter().copied())
            .map(|order_id| {
                let (order_url, payment_url, shipping_url) =
                    (&order_url, &payment_url, &shipping_url);
                async move {
                    let mut problems = Vec::new();
                    let checks = [
                        ("orders", order_url, orders.get(&order_id)),
                        ("payments", payment_url, payments.get(&order_id)),
                        ("shipments", shipping_url, shipments.get(&order_id)),
                    ];
                    for (path, base, row) in checks {
                        let url = format!("{base}/{path}/{order_id}");
                        let reply = get_json(http, &url).await;
                        // The API hides VOIDED records (a cancellation seen before the step).
                        let row = row.filter(|row| row["status"] != "VOIDED");
                        let ok = match (&reply, row) {
                            (Ok((404, _)), None) => true,
                            (Ok((200, body)), Some(row)) => {
                                body["status"] == row["status"]
                                    && (path != "orders"
                                        || body["total_cents"] == row["total_cents"])
                                    && (path != "payments"
                                        || body["amount_cents"] == row["amount_cents"])
                            }
                            _ => false,
                        };
                        if !ok {
                            problems.push((
                                Some(order_id),
                                format!(
                                    "GET /{path}/{order_id}: {reply:?} but the database holds {}",
                                    row.map_or("nothing".to_owned(), Value::to_string)
                                ),
                            ));
                        }
                    }
                    problems
                }
            })
            .buffer_unordered(8)
            .collect()
            .await;
    results.into_iter().flatten().collect()
}
