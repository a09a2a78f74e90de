//! The invariants: each a small named function of one [`Snapshot`] and of what the harness
//! knows ([`Known`]), returning its [`Violations`]. Pure (no I/O): `tests.rs` breaks each one.

use std::collections::{BTreeSet, HashMap};

use serde_json::Value;
use uuid::Uuid;

use super::snapshot::{text, Known, KnownOrder, Snapshot};

/// What every invariant found in one snapshot.
pub(super) struct Found {
    pub(super) lost: Violations,
    pub(super) stuck: Violations,
    pub(super) timed_out: Violations,
    pub(super) double_charged: Violations,
    pub(super) money: Violations,
    pub(super) ledger: Violations,
    pub(super) oversold: Violations,
    pub(super) agree: Violations,
    pub(super) api_orders: Violations,
    pub(super) api_balances: Violations,
    pub(super) api_stock: Violations,
    pub(super) unexpected: Violations,
    pub(super) orphans: Violations,
    pub(super) outbox: Violations,
    pub(super) lag: Violations,
    pub(super) replica: Violations,
    pub(super) views: Violations,
    /// Terminal orders per status (`CONFIRMED`, `CANCELLED`, `FAILED`).
    pub(super) terminal: HashMap<String, usize>,
}

impl Found {
    /// Runs every invariant over `snap`.
    pub(super) fn check(known: &Known, snap: &Snapshot) -> Self {
        let mut terminal = HashMap::new();
        for (_, _, records) in terminal_records(known, snap) {
            *terminal.entry(records.status.to_owned()).or_default() += 1;
        }
        Self {
            lost: no_order_lost(known, snap),
            stuck: no_stuck_saga(known, snap),
            timed_out: no_saga_timed_out(known, snap),
            double_charged: no_double_charge(known, snap),
            money: money_conserved(known, snap),
            ledger: ledger_matches_balances(known, snap),
            oversold: no_oversell(known, snap),
            agree: services_agree(known, snap),
            api_orders: api_shows_orders(known, snap),
            api_balances: api_shows_balances(known, snap),
            api_stock: api_shows_stock(known, snap),
            unexpected: no_unexpected_order(known, snap),
            orphans: no_orphan_record(known, snap),
            outbox: outbox_drained(known, snap),
            lag: no_consumer_lag(known, snap),
            replica: replica_matches_products(known, snap),
            views: views_match_write_side(known, snap),
            terminal,
        }
    }

    /// Every invariant's violations, in the order they are reported.
    pub(super) fn into_all(self) -> [Violations; 17] {
        [
            self.lost,
            self.stuck,
            self.timed_out,
            self.double_charged,
            self.money,
            self.ledger,
            self.oversold,
            self.agree,
            self.api_orders,
            self.api_balances,
            self.api_stock,
            self.unexpected,
            self.orphans,
            self.outbox,
            self.lag,
            self.replica,
            self.views,
        ]
    }
}

/// What one invariant found in the snapshot.
#[derive(Debug)]
pub(super) struct Violations {
    pub(super) invariant: &'static str,
    /// One explanation per violation.
    pub(super) problems: Vec<String>,
    /// The orders involved (their records and timelines are printed on failure).
    pub(super) orders: BTreeSet<Uuid>,
    /// What the summary counts for this invariant beyond its orders (accounts, products,
    /// events, cents).
    pub(super) count: i64,
    /// Context that is no violation.
    pub(super) notes: Vec<String>,
}

impl Violations {
    fn of(invariant: &'static str) -> Self {
        Self {
            invariant,
            problems: Vec::new(),
            orders: BTreeSet::new(),
            count: 0,
            notes: Vec::new(),
        }
    }

    fn order(&mut self, order_id: Uuid, problem: String) {
        self.orders.insert(order_id);
        self.problems.push(problem);
    }

    /// A violation the summary counts as `count`.
    fn counted(&mut self, count: i64, problem: String) {
        self.count += count;
        self.problems.push(problem);
    }
}

/// One accepted order as the services hold it ("" for a status nobody holds).
struct Records<'s> {
    order: &'s Value,
    status: &'s str,
    reason: &'s str,
    total: Option<i64>,
    payment_status: &'s str,
    /// The payment's amount (0 without a payment).
    amount: i64,
    shipment_status: &'s str,
    reservation_status: &'s str,
}

const TERMINAL: [&str; 3] = ["CONFIRMED", "CANCELLED", "FAILED"];

/// The known orders the order service holds, with their records in every service.
fn held_records<'s>(
    known: &'s Known<'_>,
    snap: &'s Snapshot,
) -> impl Iterator<Item = (Uuid, &'s KnownOrder, Records<'s>)> {
    known.orders.iter().filter_map(|(order_id, k)| {
        let order = snap.orders.get(order_id)?;
        let payment = snap.payments.get(order_id);
        let records = Records {
            order,
            status: text(&order["status"]),
            reason: text(&order["cancellation_reason"]),
            total: order["total_cents"].as_i64(),
            payment_status: payment.map_or("", |p| text(&p["status"])),
            amount: payment
                .and_then(|p| p["amount_cents"].as_i64())
                .unwrap_or(0),
            shipment_status: snap
                .shipments
                .get(order_id)
                .map_or("", |s| text(&s["status"])),
            reservation_status: snap
                .reservations
                .get(order_id)
                .map_or("", |r| text(&r["status"])),
        };
        Some((*order_id, k, records))
    })
}

/// The known orders the order service holds in a terminal state.
fn terminal_records<'s>(
    known: &'s Known<'_>,
    snap: &'s Snapshot,
) -> impl Iterator<Item = (Uuid, &'s KnownOrder, Records<'s>)> {
    held_records(known, snap).filter(|(_, _, r)| TERMINAL.contains(&r.status))
}

/// Charges payment holds (not refunded) per customer.
fn charges_held(snap: &Snapshot) -> HashMap<&str, i64> {
    let mut charged: HashMap<&str, i64> = HashMap::new();
    for payment in snap.payments.values() {
        if matches!(text(&payment["status"]), "CHARGED" | "REFUND_FAILED") {
            *charged.entry(text(&payment["customer_id"])).or_default() +=
                payment["amount_cents"].as_i64().unwrap_or(0);
        }
    }
    charged
}

fn no_order_lost(known: &Known, snap: &Snapshot) -> Violations {
    let mut v = Violations::of("no_order_lost");
    for (order_id, k) in &known.orders {
        if !snap.orders.contains_key(order_id) {
            v.order(
                *order_id,
                format!(
                    "{}: accepted (202) but unknown to the order service",
                    k.label
                ),
            );
        }
    }
    v
}

fn no_stuck_saga(known: &Known, snap: &Snapshot) -> Violations {
    let mut v = Violations::of("no_stuck_saga");
    for (order_id, k, r) in held_records(known, snap) {
        if !TERMINAL.contains(&r.status) {
            v.order(order_id, format!("{}: still {}", k.label, r.status));
        }
    }
    v
}

/// Every fault here lasts seconds, the deadline a minute: a saga that needed the deadline was
/// stalled, even if the compensation then left everything consistent.
fn no_saga_timed_out(known: &Known, snap: &Snapshot) -> Violations {
    let mut v = Violations::of("no_saga_timed_out");
    for (order_id, k, r) in terminal_records(known, snap) {
        if r.reason == "timeout" {
            v.order(
                order_id,
                format!(
                    "{}: cancelled by the saga deadline ({} ms): it stalled",
                    k.label, known.saga_deadline_ms
                ),
            );
        }
    }
    v
}

fn no_double_charge(known: &Known, snap: &Snapshot) -> Violations {
    let mut v = Violations::of("no_double_charge");
    for (order_id, k, r) in terminal_records(known, snap) {
        if r.payment_status != "CHARGED" {
            continue;
        }
        match (r.status, r.total) {
            ("CONFIRMED", Some(total)) if r.amount > total => v.order(
                order_id,
                format!(
                    "{} (CONFIRMED): charged {}, more than its total_cents {total}",
                    k.label, r.amount
                ),
            ),
            ("CONFIRMED", _) => {}
            (status, _) => v.order(
                order_id,
                format!(
                    "{} ({status}): its payment is CHARGED ({})",
                    k.label, r.amount
                ),
            ),
        }
    }
    let charges = charges_held(snap);
    for account in &known.catalog.accounts {
        let Some(&balance) = snap.balances.get(&account.customer) else {
            continue; // money_conserved reports it
        };
        let held = charges.get(account.customer.as_str()).copied().unwrap_or(0);
        let delta = account.balance_cents - balance - held;
        if delta > 0 {
            v.counted(
                1,
                format!(
                    "{}'s balance went down by {delta} more than the charges payment holds for \
                     them (opened with {}, balance {balance}, charges held {held})",
                    account.customer, account.balance_cents
                ),
            );
        }
    }
    v
}

/// Per customer, opening balance = balance + charges not refunded.
fn money_conserved(known: &Known, snap: &Snapshot) -> Violations {
    let mut v = Violations::of("money_conserved");
    let charges = charges_held(snap);
    for account in &known.catalog.accounts {
        let Some(&balance) = snap.balances.get(&account.customer) else {
            v.counted(0, format!("account {} is gone", account.customer));
            continue;
        };
        let held = charges.get(account.customer.as_str()).copied().unwrap_or(0);
        let delta = account.balance_cents - balance - held;
        if balance < 0 {
            v.counted(
                0,
                format!("{} has a negative balance {balance}", account.customer),
            );
        }
        if delta != 0 {
            v.counted(
                delta.abs(),
                format!(
                    "money not conserved for {}: opened with {}, balance {balance}, charges held \
                     {held} (off by {delta})",
                    account.customer, account.balance_cents
                ),
            );
        }
    }
    v
}

/// Every account's balance is the fold of its ledger: versions 1, 2, 3, ... with no gap, each
/// running balance the previous one plus its amount, the last one the balance; no ledger
/// without an account.
fn ledger_matches_balances(_: &Known, snap: &Snapshot) -> Violations {
    let mut v = Violations::of("ledger_matches_balances");
    let customers: BTreeSet<&String> = snap.balances.keys().chain(snap.ledgers.keys()).collect();
    for customer in customers {
        let entries = snap.ledgers.get(customer).map_or(&[][..], Vec::as_slice);
        let mut wrong = Vec::new();
        let mut fold = 0_i64;
        for (expected, entry) in (1_i64..).zip(entries) {
            let version = entry["version"].as_i64();
            if version != Some(expected) {
                wrong.push(format!("entry {expected} has version {version:?}"));
            }
            fold += entry["amount_cents"].as_i64().unwrap_or(0);
            if entry["balance_after_cents"].as_i64() != Some(fold) {
                wrong.push(format!(
                    "version {expected} says the balance is {} but the amounts add up to {fold}",
                    entry["balance_after_cents"]
                ));
            }
        }
        match snap.balances.get(customer) {
            None => wrong.push(format!("{} ledger entries but no account", entries.len())),
            Some(_) if entries.is_empty() => wrong.push("no ledger entry".to_owned()),
            Some(&balance) if balance != fold => {
                wrong.push(format!("balance {balance} but its ledger folds to {fold}"))
            }
            Some(_) => {}
        }
        if !wrong.is_empty() {
            v.counted(1, format!("ledger of {customer}: {}", wrong.join("; ")));
        }
    }
    v
}

/// Available + reserved + sold = stocked, nothing negative, nothing reserved once every order
/// is terminal, sold = units of the confirmed orders.
fn no_oversell(known: &Known, snap: &Snapshot) -> Violations {
    let mut v = Violations::of("no_oversell");
    let mut confirmed_units: HashMap<&str, i64> = HashMap::new();
    for (_, k, r) in held_records(known, snap) {
        if r.status == "CONFIRMED" {
            for (sku, quantity) in &k.items {
                *confirmed_units.entry(sku.as_str()).or_default() += i64::from(*quantity);
            }
        }
    }
    for product in &known.catalog.products {
        let Some(row) = snap.products.get(&product.sku) else {
            v.counted(1, format!("product {} is gone", product.sku));
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
            v.counted(1, format!("product {}: {}", product.sku, wrong.join("; ")));
        }
    }
    v
}

/// The services' views of every terminal order agree with each other and with what the client
/// asked.
fn services_agree(known: &Known, snap: &Snapshot) -> Violations {
    let mut v = Violations::of("services_agree");
    for (order_id, k, r) in terminal_records(known, snap) {
        let (status, payment_status) = (r.status, r.payment_status);
        let (shipment_status, reservation_status) = (r.shipment_status, r.reservation_status);
        let mut wrong = Vec::new();
        if status == "CONFIRMED" {
            let priced: Option<i64> = k
                .items
                .iter()
                .map(|(sku, q)| known.prices.get(sku.as_str()).map(|p| p * i64::from(*q)))
                .sum();
            if payment_status != "CHARGED" {
                wrong.push(format!("payment is {payment_status:?}, not CHARGED"));
            } else if Some(r.amount) != r.total {
                wrong.push(format!(
                    "charged {} but total_cents is {:?}",
                    r.amount, r.total
                ));
            }
            if r.total != priced {
                wrong.push(format!(
                    "total_cents {:?} but the lines cost {priced:?}",
                    r.total
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
            if !known.has_account.contains(k.customer.as_str()) {
                wrong.push(format!("confirmed for {} who has no account", k.customer));
            }
            if k.items
                .iter()
                .any(|(sku, _)| !known.prices.contains_key(sku.as_str()))
            {
                wrong.push("confirmed with an unknown sku".to_owned());
            }
        } else {
            if payment_status == "CHARGED" {
                wrong.push(format!(
                    "{status} but its payment is CHARGED ({})",
                    r.amount
                ));
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
                    r.order["failed_step"]
                ));
            }
        }
        if k.cancel_accepted && (status != "CANCELLED" || r.reason != "cancelled_by_customer") {
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
            v.order(
                order_id,
                format!("{} ({status} {}): {}", k.label, r.reason, wrong.join("; ")),
            );
        }
    }
    v
}

/// `GET /orders/{id}`, `/payments/{id}`, `/shipments/{id}` show the status (and total, amount)
/// the databases hold; a record the API hides (none, or `VOIDED`) is a 404.
fn api_shows_orders(_: &Known, snap: &Snapshot) -> Violations {
    let mut v = Violations::of("api_shows_orders");
    for (path, order_id, reply) in &snap.api_records {
        // The API hides VOIDED records (a cancellation seen before the step).
        let row = snap
            .records(path)
            .get(order_id)
            .filter(|row| row["status"] != "VOIDED");
        let ok = match (reply, row) {
            (Ok((404, _)), None) => true,
            (Ok((200, body)), Some(row)) => {
                body["status"] == row["status"]
                    && (*path != "orders" || body["total_cents"] == row["total_cents"])
                    && (*path != "payments" || body["amount_cents"] == row["amount_cents"])
            }
            _ => false,
        };
        if !ok {
            v.order(
                *order_id,
                format!(
                    "GET /{path}/{order_id}: {reply:?} but the database holds {}",
                    row.map_or("nothing".to_owned(), Value::to_string)
                ),
            );
        }
    }
    v
}

/// `GET /accounts/{customer}` shows the balance the database holds.
fn api_shows_balances(_: &Known, snap: &Snapshot) -> Violations {
    let mut v = Violations::of("api_shows_balances");
    for (customer, reply) in &snap.api_accounts {
        let db = snap.balances.get(customer).copied();
        if reply
            .as_ref()
            .ok()
            .and_then(|(_, body)| body["balance_cents"].as_i64())
            != db
        {
            v.counted(
                0,
                format!("GET /accounts/{customer}: {reply:?} but the database holds {db:?}"),
            );
        }
    }
    v
}

/// `GET /products/{sku}` shows the stock the database holds.
fn api_shows_stock(_: &Known, snap: &Snapshot) -> Violations {
    let mut v = Violations::of("api_shows_stock");
    for (sku, reply) in &snap.api_products {
        let row = snap.products.get(sku);
        let same = match (reply, row) {
            (Ok((200, body)), Some(row)) => ["available", "reserved", "sold"]
                .iter()
                .all(|f| body[f] == row[f]),
            (Ok((404, _)), None) => true,
            _ => false,
        };
        if !same {
            v.counted(
                1,
                format!(
                    "GET /products/{sku}: {reply:?} but the database holds {}",
                    row.map_or("nothing".to_owned(), Value::to_string)
                ),
            );
        }
    }
    v
}

/// Every order the order service holds was answered 202 to a client.
fn no_unexpected_order(known: &Known, snap: &Snapshot) -> Violations {
    let mut v = Violations::of("no_unexpected_order");
    for (order_id, order) in &snap.orders {
        if !known.orders.contains_key(order_id) {
            v.counted(
                1,
                format!(
                    "order {order_id} ({} of {}) exists but no client was answered 202 for it",
                    text(&order["status"]),
                    text(&order["customer_id"])
                ),
            );
        }
    }
    v
}

/// No payment, shipment or reservation in effect for an order the order service does not know
/// (other records of such orders are noted, not violations).
fn no_orphan_record(known: &Known, snap: &Snapshot) -> Violations {
    let mut v = Violations::of("no_orphan_record");
    for (what, records, active) in [
        ("payment", &snap.payments, &["CHARGED", "REFUND_FAILED"][..]),
        ("shipment", &snap.shipments, &["SCHEDULED"][..]),
        (
            "reservation",
            &snap.reservations,
            &["RESERVED", "COMMITTED", "RELEASE_FAILED"][..],
        ),
    ] {
        for (order_id, row) in records {
            if snap.orders.contains_key(order_id) || known.foreign_order_ids.contains(order_id) {
                continue;
            }
            let status = text(&row["status"]);
            let what = format!(
                "{what} {status} for order {order_id}, which the order service does not know"
            );
            if active.contains(&status) {
                v.counted(0, what);
            } else {
                v.notes.push(format!("note: {what}"));
            }
        }
    }
    v
}

fn outbox_drained(_: &Known, snap: &Snapshot) -> Violations {
    let mut v = Violations::of("outbox_drained");
    for (svc, pending) in &snap.outboxes {
        if *pending > 0 {
            v.counted(
                *pending,
                format!("{} outbox: {pending} events never published", svc.name()),
            );
        }
    }
    v
}

fn no_consumer_lag(_: &Known, snap: &Snapshot) -> Violations {
    let mut v = Violations::of("no_consumer_lag");
    for (_, group, states) in &snap.groups {
        for state in states.iter().filter(|s| s.lag() > 0) {
            v.counted(state.lag(), format!("{group} has not consumed {state}"));
        }
    }
    v
}

/// The fields of a product the catalog replicas (order's and query's) hold, compared with
/// inventory's `products` row.
pub(super) const REPLICATED_FIELDS: [&str; 4] = ["name", "price_cents", "available", "version"];

/// Whether the replica's row of a product equals inventory's (both `None`: equal).
pub(super) fn same_replica(product: Option<&Value>, replica: Option<&Value>) -> bool {
    match (product, replica) {
        (Some(product), Some(replica)) => REPLICATED_FIELDS
            .iter()
            .all(|field| product[field] == replica[field]),
        (None, None) => true,
        _ => false,
    }
}

/// Once quiet, the `catalog` replicas of the order and the query service hold every product
/// of inventory, with the same name, price, available units and version, and nothing else.
fn replica_matches_products(_: &Known, snap: &Snapshot) -> Violations {
    let mut v = Violations::of("replica_matches_products");
    for (service, catalog) in [("order", &snap.catalog), ("query", &snap.query_catalog)] {
        let skus: BTreeSet<&String> = snap.products.keys().chain(catalog.keys()).collect();
        for sku in skus {
            let (product, replica) = (snap.products.get(sku), catalog.get(sku));
            if !same_replica(product, replica) {
                v.counted(
                    1,
                    format!(
                        "product {sku}: inventory holds {} but the {service} service's catalog replica {}",
                        product.map_or("nothing".to_owned(), Value::to_string),
                        replica.map_or("nothing".to_owned(), Value::to_string)
                    ),
                );
            }
        }
    }
    v
}

/// Once quiet, the query service's view of every terminal order (`GET /views/orders/{id}`)
/// agrees with the write side: the order's status and cancellation reason, the payment's
/// status and amount, the shipment's status and country. A record no event announced (none,
/// or `VOIDED`: a cancellation seen before the step) shows as `null`.
fn views_match_write_side(_: &Known, snap: &Snapshot) -> Violations {
    let mut v = Violations::of("views_match_write_side");
    for (order_id, reply) in &snap.api_views {
        // An order the order service lacks or did not end is reported by its own invariants.
        let Some(order) = snap.orders.get(order_id) else {
            continue;
        };
        if !TERMINAL.contains(&text(&order["status"])) {
            continue;
        }
        let view = match reply {
            Ok((200, view)) => view,
            other => {
                v.order(
                    *order_id,
                    format!(
                        "GET /views/orders/{order_id}: {other:?}, but the order is {}",
                        order["status"]
                    ),
                );
                continue;
            }
        };
        let mut differences = Vec::new();
        let mut compare = |what: &str, shown: &Value, held: &Value| {
            if shown != held {
                differences.push(format!("{what} {shown} (write side {held})"));
            }
        };
        compare("status", &view["status"], &order["status"]);
        compare("reason", &view["reason"], &order["cancellation_reason"]);
        let announced = |records: &HashMap<Uuid, Value>| {
            records
                .get(order_id)
                .filter(|record| record["status"] != "VOIDED")
                .cloned()
        };
        match announced(&snap.payments) {
            None => compare("payment", &view["payment"], &Value::Null),
            Some(payment) => {
                compare(
                    "payment status",
                    &view["payment"]["status"],
                    &payment["status"],
                );
                if matches!(
                    text(&payment["status"]),
                    "CHARGED" | "REFUNDED" | "REFUND_FAILED"
                ) {
                    compare(
                        "payment amount",
                        &view["payment"]["amount_cents"],
                        &payment["amount_cents"],
                    );
                }
            }
        }
        match announced(&snap.shipments) {
            None => compare("shipment", &view["shipment"], &Value::Null),
            Some(shipment) => {
                compare(
                    "shipment status",
                    &view["shipment"]["status"],
                    &shipment["status"],
                );
                compare(
                    "shipment country",
                    &view["shipment"]["country"],
                    &shipment["country"],
                );
            }
        }
        if !differences.is_empty() {
            v.order(
                *order_id,
                format!(
                    "the view of {order_id} differs from the write side: {}",
                    differences.join(", ")
                ),
            );
        }
    }
    v
}
