//! The invariants over hand-made snapshots: a consistent one breaks nothing, and each kind of
//! damage breaks the invariants named for it, counted in the summary's fields.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use serde_json::{json, Value};
use uuid::Uuid;

use super::invariants::Found;
use super::snapshot::{Known, KnownOrder, Snapshot};
use super::Report;
use crate::faults::kafka::PartitionState;
use crate::faults::workload::{Account, Catalog, Product};
use crate::faults::Svc;

/// A quiet little system: alice's order of 2 x sku-a (500 each) confirmed and charged, bob's
/// cancelled by him before payment (its payment `VOIDED`, hidden by the API).
struct World {
    catalog: Catalog,
    foreign: BTreeSet<Uuid>,
    orders: BTreeMap<Uuid, KnownOrder>,
    snap: Snapshot,
    confirmed: Uuid,
    cancelled: Uuid,
}

fn known_order(n: usize, customer: &str, items: &[(&str, i32)], cancel: bool) -> KnownOrder {
    KnownOrder {
        label: format!("order #{n}"),
        customer: customer.to_owned(),
        items: items.iter().map(|(s, q)| ((*s).to_owned(), *q)).collect(),
        country: "FR".to_owned(),
        cancel_accepted: cancel,
    }
}

fn ok(body: Value) -> anyhow::Result<(u16, Value)> {
    Ok((200, body))
}

fn not_found() -> anyhow::Result<(u16, Value)> {
    Ok((404, Value::Null))
}

/// A row of payment's `ledger_entries`.
fn entry(version: i64, kind: &str, amount: i64, balance_after: i64) -> Value {
    json!({"version": version, "kind": kind, "amount_cents": amount,
           "balance_after_cents": balance_after})
}

fn world() -> World {
    let (confirmed, cancelled) = (Uuid::now_v7(), Uuid::now_v7());
    let catalog = Catalog {
        products: vec![Product {
            sku: "sku-a".into(),
            price_cents: 500,
            stock: 10,
        }],
        accounts: vec![
            Account {
                customer: "alice".into(),
                balance_cents: 10_000,
            },
            Account {
                customer: "bob".into(),
                balance_cents: 2_000,
            },
        ],
        customers: vec!["alice".into(), "bob".into()],
    };
    let orders = BTreeMap::from([
        (confirmed, known_order(0, "alice", &[("sku-a", 2)], false)),
        (cancelled, known_order(1, "bob", &[("sku-a", 1)], true)),
    ]);
    let by_id = |rows: Vec<(Uuid, Value)>| rows.into_iter().collect::<HashMap<_, _>>();
    let snap = Snapshot {
        orders: by_id(vec![
            (
                confirmed,
                json!({"order_id": confirmed, "customer_id": "alice", "status": "CONFIRMED",
                       "cancellation_reason": null, "total_cents": 1000}),
            ),
            (
                cancelled,
                json!({"order_id": cancelled, "customer_id": "bob", "status": "CANCELLED",
                       "cancellation_reason": "cancelled_by_customer", "total_cents": null}),
            ),
        ]),
        payments: by_id(vec![
            (
                confirmed,
                json!({"customer_id": "alice", "status": "CHARGED", "amount_cents": 1000}),
            ),
            (
                cancelled,
                json!({"customer_id": "bob", "status": "VOIDED", "amount_cents": 0}),
            ),
        ]),
        shipments: by_id(vec![(confirmed, json!({"status": "SCHEDULED"}))]),
        reservations: by_id(vec![
            (confirmed, json!({"status": "COMMITTED"})),
            (cancelled, json!({"status": "RELEASED"})),
        ]),
        balances: HashMap::from([("alice".into(), 9_000), ("bob".into(), 2_000)]),
        ledgers: HashMap::from([
            (
                "alice".into(),
                vec![
                    entry(1, "OPENED", 10_000, 10_000),
                    entry(2, "CHARGED", -1_000, 9_000),
                ],
            ),
            ("bob".into(), vec![entry(1, "OPENED", 2_000, 2_000)]),
        ]),
        products: HashMap::from([(
            "sku-a".into(),
            json!({"sku": "sku-a", "name": "Lamp", "price_cents": 500, "available": 8,
                   "reserved": 0, "sold": 2, "version": 5}),
        )]),
        catalog: HashMap::from([(
            "sku-a".into(),
            json!({"sku": "sku-a", "name": "Lamp", "price_cents": 500, "available": 8,
                   "version": 5, "source_offset": 4}),
        )]),
        query_catalog: HashMap::from([(
            "sku-a".into(),
            json!({"sku": "sku-a", "name": "Lamp", "price_cents": 500, "available": 8,
                   "reserved": 0, "sold": 2, "version": 5}),
        )]),
        outboxes: Svc::all().map(|svc| (svc, 0)).collect(),
        groups: vec![(
            Svc::INVENTORY,
            "inventory-group".into(),
            vec![PartitionState {
                topic: "order.events".into(),
                partition: 0,
                committed: Some(4),
                low: 0,
                high: 4,
            }],
        )],
        api_records: vec![
            (
                "orders",
                confirmed,
                ok(json!({"status": "CONFIRMED", "total_cents": 1000})),
            ),
            (
                "payments",
                confirmed,
                ok(json!({"status": "CHARGED", "amount_cents": 1000})),
            ),
            ("shipments", confirmed, ok(json!({"status": "SCHEDULED"}))),
            (
                "orders",
                cancelled,
                ok(json!({"status": "CANCELLED", "total_cents": null})),
            ),
            ("payments", cancelled, not_found()),
            ("shipments", cancelled, not_found()),
        ],
        api_accounts: vec![
            ("alice".into(), ok(json!({"balance_cents": 9_000}))),
            ("bob".into(), ok(json!({"balance_cents": 2_000}))),
        ],
        api_products: vec![(
            "sku-a".into(),
            ok(json!({"available": 8, "reserved": 0, "sold": 2})),
        )],
        api_views: Vec::new(),
    };
    World {
        catalog,
        foreign: BTreeSet::new(),
        orders,
        snap,
        confirmed,
        cancelled,
    }
}

impl World {
    /// The report of this world's invariants: counters, and every violation by invariant.
    fn report(&self) -> Report {
        let known = Known {
            orders: self.orders.clone(),
            prices: self
                .catalog
                .products
                .iter()
                .map(|p| (p.sku.as_str(), p.price_cents))
                .collect(),
            has_account: self
                .catalog
                .accounts
                .iter()
                .map(|a| a.customer.as_str())
                .collect(),
            catalog: &self.catalog,
            foreign_order_ids: &self.foreign,
            saga_deadline_ms: 60_000,
        };
        let found = Found::check(&known, &self.snap);
        let mut report = Report::default();
        report.count(&found);
        for violations in found.into_all() {
            report.record(violations);
        }
        report
    }

    fn order(&mut self, id: Uuid) -> &mut Value {
        self.snap.orders.get_mut(&id).expect("an order")
    }

    fn ledger(&mut self, customer: &str) -> &mut Vec<Value> {
        self.snap.ledgers.get_mut(customer).expect("a ledger")
    }

    fn api(&mut self, path: &str, id: Uuid) -> &mut anyhow::Result<(u16, Value)> {
        let (_, _, reply) = self
            .snap
            .api_records
            .iter_mut()
            .find(|(p, i, _)| *p == path && *i == id)
            .expect("an API reply");
        reply
    }
}

#[test]
fn a_consistent_snapshot_breaks_nothing() {
    let report = world().report();
    assert_eq!(report.problems, Vec::new());
    assert_eq!(
        (report.confirmed, report.cancelled, report.failed),
        (1, 1, 0)
    );
    let counters = [
        report.lost,
        report.stuck,
        report.timed_out,
        report.double_charged,
        report.oversold,
        report.disagree,
        report.unexpected,
    ];
    assert_eq!(counters, [0; 7]);
    assert_eq!(
        (report.outbox_pending, report.lag, report.money_delta),
        (0, 0, 0)
    );
    assert!(
        report.summary().contains(" broken=none"),
        "{}",
        report.summary()
    );
}

#[test]
fn an_accepted_order_the_order_service_does_not_hold_is_lost() {
    let mut w = world();
    let id = w.cancelled;
    w.snap.orders.remove(&id);
    *w.api("orders", id) = not_found();
    let report = w.report();
    assert_eq!(report.broken(), ["no_order_lost"]);
    assert_eq!((report.lost, report.stuck), (1, 0));
    assert!(report.summary().contains(" broken=no_order_lost"));
}

#[test]
fn an_order_still_pending_is_stuck_and_lost() {
    let mut w = world();
    let id = w.cancelled;
    w.order(id)["status"] = json!("PENDING");
    w.order(id)["cancellation_reason"] = Value::Null;
    *w.api("orders", id) = ok(json!({"status": "PENDING", "total_cents": null}));
    let report = w.report();
    assert_eq!(report.broken(), ["no_stuck_saga"]);
    assert_eq!((report.lost, report.stuck, report.cancelled), (1, 1, 0));
}

#[test]
fn an_order_cancelled_by_the_deadline_timed_out() {
    let mut w = world();
    let id = w.cancelled;
    w.order(id)["cancellation_reason"] = json!("timeout");
    w.orders.get_mut(&id).unwrap().cancel_accepted = false;
    let report = w.report();
    assert_eq!(report.broken(), ["no_saga_timed_out"]);
    assert_eq!(report.timed_out, 1);
}

#[test]
fn a_charge_on_a_cancelled_order_is_a_double_charge_and_a_disagreement() {
    let mut w = world();
    let id = w.cancelled;
    w.snap.payments.insert(
        id,
        json!({"customer_id": "bob", "status": "CHARGED", "amount_cents": 500}),
    );
    w.snap.balances.insert("bob".into(), 1_500);
    w.snap.api_accounts[1].1 = ok(json!({"balance_cents": 1_500}));
    w.ledger("bob").push(entry(2, "CHARGED", -500, 1_500));
    *w.api("payments", id) = ok(json!({"status": "CHARGED", "amount_cents": 500}));
    let report = w.report();
    assert_eq!(report.broken(), ["no_double_charge", "services_agree"]);
    assert_eq!((report.double_charged, report.disagree), (1, 1));
    assert_eq!(report.money_delta, 0, "the charge itself is accounted for");
}

#[test]
fn a_confirmed_order_charged_over_its_total_is_a_double_charge() {
    let mut w = world();
    let id = w.confirmed;
    w.snap.payments.get_mut(&id).unwrap()["amount_cents"] = json!(1_200);
    w.snap.balances.insert("alice".into(), 8_800);
    w.snap.api_accounts[0].1 = ok(json!({"balance_cents": 8_800}));
    w.ledger("alice")[1] = entry(2, "CHARGED", -1_200, 8_800);
    *w.api("payments", id) = ok(json!({"status": "CHARGED", "amount_cents": 1_200}));
    let report = w.report();
    assert_eq!(report.broken(), ["no_double_charge", "services_agree"]);
    assert_eq!((report.double_charged, report.disagree), (1, 1));
}

#[test]
fn money_debited_beyond_the_charges_is_a_double_charge_and_not_conserved() {
    let mut w = world();
    w.snap.balances.insert("alice".into(), 8_500);
    w.snap.api_accounts[0].1 = ok(json!({"balance_cents": 8_500}));
    let report = w.report();
    assert_eq!(
        report.broken(),
        [
            "no_double_charge",
            "money_conserved",
            "ledger_matches_balances"
        ]
    );
    assert_eq!((report.double_charged, report.money_delta), (1, 500));
}

#[test]
fn money_credited_from_nowhere_is_not_conserved() {
    let mut w = world();
    w.snap.balances.insert("bob".into(), 2_300);
    w.snap.api_accounts[1].1 = ok(json!({"balance_cents": 2_300}));
    let report = w.report();
    assert_eq!(
        report.broken(),
        ["money_conserved", "ledger_matches_balances"]
    );
    assert_eq!((report.double_charged, report.money_delta), (0, 300));
}

#[test]
fn a_balance_that_is_not_the_fold_of_its_ledger_breaks_the_ledger() {
    // Each damage alone, on an otherwise consistent snapshot.
    type Damage = (&'static str, fn(&mut World));
    let damages: [Damage; 5] = [
        ("a charge missing from the ledger", |w| {
            w.ledger("alice").pop();
        }),
        ("a version skipped", |w| {
            w.ledger("alice")[1]["version"] = json!(3);
        }),
        ("a running balance that does not add up", |w| {
            w.ledger("bob")[0]["balance_after_cents"] = json!(2_100);
        }),
        ("an account with no ledger", |w| {
            w.snap.ledgers.remove("bob");
        }),
        ("a ledger with no account", |w| {
            w.snap
                .ledgers
                .insert("carol".into(), vec![entry(1, "OPENED", 0, 0)]);
        }),
    ];
    for (damage, apply) in damages {
        let mut w = world();
        apply(&mut w);
        let report = w.report();
        assert_eq!(report.broken(), ["ledger_matches_balances"], "{damage}");
        assert_eq!(report.problems.len(), 1, "{damage}: {:?}", report.problems);
        assert!(
            report.summary().contains(" broken=ledger_matches_balances"),
            "{damage}"
        );
    }
    // Balance and ledger moved together (a deposit): nothing but money_conserved, which
    // knows of no deposit, sees it.
    let mut w = world();
    w.ledger("bob").push(entry(2, "DEPOSITED", 500, 2_500));
    w.snap.balances.insert("bob".into(), 2_500);
    w.snap.api_accounts[1].1 = ok(json!({"balance_cents": 2_500}));
    assert_eq!(w.report().broken(), ["money_conserved"]);
}

#[test]
fn units_sold_beyond_the_confirmed_orders_are_oversold() {
    let mut w = world();
    let sold_one_more = json!({"sku": "sku-a", "available": 7, "reserved": 0, "sold": 3});
    w.snap
        .products
        .insert("sku-a".into(), sold_one_more.clone());
    w.snap.catalog.insert("sku-a".into(), sold_one_more.clone());
    w.snap.query_catalog.insert("sku-a".into(), sold_one_more);
    w.snap.api_products[0].1 = ok(json!({"available": 7, "reserved": 0, "sold": 3}));
    let report = w.report();
    assert_eq!(report.broken(), ["no_oversell"]);
    assert_eq!(report.oversold, 1);
}

#[test]
fn units_left_reserved_are_oversold() {
    let mut w = world();
    let reserved = json!({"sku": "sku-a", "available": 7, "reserved": 1, "sold": 2});
    w.snap.products.insert("sku-a".into(), reserved.clone());
    w.snap.catalog.insert("sku-a".into(), reserved.clone());
    w.snap.query_catalog.insert("sku-a".into(), reserved);
    w.snap.api_products[0].1 = ok(json!({"available": 7, "reserved": 1, "sold": 2}));
    assert_eq!(w.report().broken(), ["no_oversell"]);
}

#[test]
fn a_confirmed_order_the_other_services_do_not_back_is_a_disagreement() {
    for damage in ["no shipment", "released stock", "to AQ", "unknown sku"] {
        let mut w = world();
        let id = w.confirmed;
        match damage {
            "no shipment" => {
                w.snap.shipments.remove(&id);
                *w.api("shipments", id) = not_found();
            }
            "released stock" => {
                w.snap
                    .reservations
                    .insert(id, json!({"status": "RELEASED"}));
            }
            "to AQ" => w.orders.get_mut(&id).unwrap().country = "AQ".into(),
            _ => w.orders.get_mut(&id).unwrap().items[0].0 = "sku-unknown".into(),
        }
        let report = w.report();
        // An unknown sku also leaves sku-a's sold units without their confirmed order.
        let expected: &[&str] = match damage {
            "unknown sku" => &["no_oversell", "services_agree"],
            _ => &["services_agree"],
        };
        assert_eq!(report.broken(), expected, "{damage}");
        assert_eq!(report.disagree, 1, "{damage}");
    }
}

#[test]
fn a_failed_order_and_an_ignored_cancellation_are_disagreements() {
    let mut w = world();
    let id = w.cancelled;
    w.order(id)["status"] = json!("FAILED");
    w.order(id)["failed_step"] = json!("refund");
    *w.api("orders", id) = ok(json!({"status": "FAILED", "total_cents": null}));
    let report = w.report();
    assert_eq!(report.broken(), ["services_agree"]);
    assert_eq!((report.failed, report.disagree), (1, 1));
    let (_, problem) = &report.problems[0];
    assert!(
        problem.contains("FAILED (failed_step \"refund\")"),
        "{problem}"
    );
    assert!(
        problem.contains("cancellation was answered 202"),
        "{problem}"
    );
}

#[test]
fn an_api_that_disagrees_with_the_databases_is_named() {
    let mut w = world();
    let id = w.confirmed;
    *w.api("orders", id) = ok(json!({"status": "PENDING", "total_cents": 1000}));
    *w.api("payments", w.cancelled) = ok(json!({"status": "VOIDED", "amount_cents": 0}));
    w.snap.api_accounts[0].1 = ok(json!({"balance_cents": 10_000}));
    w.snap.api_products[0].1 = Err(anyhow::anyhow!("connection refused"));
    let report = w.report();
    assert_eq!(
        report.broken(),
        ["api_shows_orders", "api_shows_balances", "api_shows_stock"]
    );
    assert_eq!((report.disagree, report.oversold), (2, 1));
    assert_eq!(report.problems.len(), 4);
}

#[test]
fn an_order_no_client_was_answered_for_is_unexpected() {
    let mut w = world();
    let id = Uuid::now_v7();
    w.snap.orders.insert(
        id,
        json!({"order_id": id, "customer_id": "bob", "status": "CANCELLED"}),
    );
    let report = w.report();
    assert_eq!(report.broken(), ["no_unexpected_order"]);
    assert_eq!(report.unexpected, 1);
}

#[test]
fn records_in_effect_for_orders_nobody_knows_are_orphans() {
    let mut w = world();
    let (charged, voided, foreign) = (Uuid::now_v7(), Uuid::now_v7(), Uuid::now_v7());
    w.snap
        .shipments
        .insert(charged, json!({"status": "SCHEDULED"}));
    w.snap.payments.insert(voided, json!({"status": "VOIDED"}));
    w.snap
        .reservations
        .insert(foreign, json!({"status": "RESERVED"}));
    w.foreign.insert(foreign);
    let report = w.report();
    assert_eq!(report.broken(), ["no_orphan_record"]);
    assert_eq!(report.problems.len(), 1, "{:?}", report.problems);
    assert!(report.problems[0].1.contains(&charged.to_string()));
    assert_eq!(report.details.len(), 1, "the VOIDED payment is only noted");
}

#[test]
fn unpublished_events_and_lagging_groups_are_counted() {
    let mut w = world();
    w.snap.outboxes[2].1 = 3;
    w.snap.groups[0].2[0].committed = Some(2);
    let report = w.report();
    assert_eq!(report.broken(), ["outbox_drained", "no_consumer_lag"]);
    assert_eq!((report.outbox_pending, report.lag), (3, 2));
    assert!(
        report
            .summary()
            .contains(" broken=outbox_drained,no_consumer_lag"),
        "{}",
        report.summary()
    );
}

#[test]
fn a_replica_that_differs_from_the_products_is_named() {
    let mut w = world();
    assert!(w.report().broken().is_empty(), "{:?}", w.report().problems);
    w.snap.catalog.get_mut("sku-a").unwrap()["available"] = json!(9);
    w.snap.catalog.insert(
        "sku-ghost".into(),
        json!({"sku": "sku-ghost", "available": 1}),
    );
    let report = w.report();
    assert_eq!(report.broken(), ["replica_matches_products"]);
    assert_eq!(report.problems.len(), 2, "{:?}", report.problems);
    let mut w = world();
    w.snap.catalog.clear();
    assert_eq!(w.report().broken(), ["replica_matches_products"]);
}

#[test]
fn a_query_replica_that_differs_from_the_products_is_named() {
    let mut w = world();
    w.snap.query_catalog.get_mut("sku-a").unwrap()["version"] = json!(4);
    let report = w.report();
    assert_eq!(report.broken(), ["replica_matches_products"]);
    assert_eq!(report.problems.len(), 1, "{:?}", report.problems);
    assert!(
        report.problems[0]
            .1
            .contains("query service's catalog replica"),
        "{:?}",
        report.problems
    );
    let mut w = world();
    w.snap.query_catalog.clear();
    assert_eq!(w.report().broken(), ["replica_matches_products"]);
}

/// `world()` with the query service's views of both orders, as they should be.
fn world_with_views() -> World {
    let mut w = world();
    let (confirmed, cancelled) = (w.confirmed, w.cancelled);
    w.snap
        .shipments
        .insert(confirmed, json!({"status": "SCHEDULED", "country": "FR"}));
    w.snap.api_views = vec![
        (
            confirmed,
            ok(json!({"status": "CONFIRMED", "reason": null,
                      "payment": {"status": "CHARGED", "amount_cents": 1000},
                      "shipment": {"status": "SCHEDULED", "country": "FR"}})),
        ),
        (
            cancelled,
            ok(
                json!({"status": "CANCELLED", "reason": "cancelled_by_customer",
                      "payment": null, "shipment": null}),
            ),
        ),
    ];
    w
}

fn view(w: &mut World, id: Uuid) -> &mut anyhow::Result<(u16, Value)> {
    let (_, reply) = w
        .snap
        .api_views
        .iter_mut()
        .find(|(i, _)| *i == id)
        .expect("a view");
    reply
}

#[test]
fn views_that_show_the_write_side_break_nothing() {
    let report = world_with_views().report();
    assert_eq!(report.problems, Vec::new());
}

#[test]
fn a_view_that_disagrees_with_the_write_side_is_named() {
    let mut w = world_with_views();
    let (confirmed, cancelled) = (w.confirmed, w.cancelled);
    // Behind (still pending), and a voided payment shown as charged.
    if let Ok((_, body)) = view(&mut w, confirmed) {
        body["status"] = json!("PENDING");
        body["shipment"]["country"] = json!("DE");
    }
    if let Ok((_, body)) = view(&mut w, cancelled) {
        body["payment"] = json!({"status": "CHARGED", "amount_cents": 500});
    }
    let report = w.report();
    assert_eq!(report.broken(), ["views_match_write_side"]);
    assert_eq!(report.disagree, 2);
    assert_eq!(report.problems.len(), 2);
    assert!(report.problems[0]
        .1
        .contains("status \"PENDING\" (write side \"CONFIRMED\")"));
    assert!(report.problems[0].1.contains("shipment country"));
    assert!(report.problems[1].1.contains("payment"));
}

#[test]
fn a_terminal_order_without_a_view_breaks_views_match_write_side() {
    let mut w = world_with_views();
    let (confirmed, cancelled) = (w.confirmed, w.cancelled);
    *view(&mut w, confirmed) = not_found();
    *view(&mut w, cancelled) = Err(anyhow::anyhow!("connection refused"));
    let report = w.report();
    assert_eq!(report.broken(), ["views_match_write_side"]);
    assert_eq!(report.problems.len(), 2);
    // A refund recorded on the write side but not in the view.
    let mut w = world_with_views();
    w.snap.payments.insert(
        w.cancelled,
        json!({"customer_id": "bob", "status": "REFUNDED", "amount_cents": 500}),
    );
    let report = w.report();
    assert!(
        report.broken().contains(&"views_match_write_side"),
        "{:?}",
        report.problems
    );
}

mod redelivery {
    use super::super::rewind::{redelivery_problems, Effects};
    use crate::faults::Svc;

    /// A quiet system: alice charged 1000 for one order of 2 x sku-a, each service's inbox.
    fn quiet() -> Effects {
        Effects(
            [
                ("payment.accounts/alice", r#"{"balance_cents":9000}"#),
                (
                    "payment.payments/o1",
                    r#"{"status":"CHARGED","amount_cents":1000}"#,
                ),
                (
                    "inventory.products/sku-a",
                    r#"{"available":8,"reserved":0,"sold":2}"#,
                ),
                ("order.orders/o1", r#"{"status":"CONFIRMED"}"#),
                ("order.inbox rows", "3"),
                ("payment.inbox rows", "2"),
                ("payment.outbox rows", "1"),
                ("inventory.inbox rows", "2"),
                ("shipping.inbox rows", "2"),
                ("query.inbox rows", "3"),
            ]
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .into(),
        )
    }

    fn counted(each: f64) -> Vec<(Svc, f64)> {
        Svc::all().map(|svc| (svc, each)).collect()
    }

    #[test]
    fn a_rewind_that_changed_nothing_and_was_counted_passes() {
        assert_eq!(
            redelivery_problems(&quiet(), &quiet(), &counted(3.0)),
            Vec::<String>::new()
        );
    }

    #[test]
    fn without_the_inbox_the_re_applied_events_are_caught() {
        // What the same rewind does with the inbox disabled: the reservation and the charge
        // are applied again (and announced again), and nothing counts as a duplicate.
        let mut after = quiet();
        let changed = [
            ("payment.accounts/alice", r#"{"balance_cents":8000}"#),
            (
                "inventory.products/sku-a",
                r#"{"available":6,"reserved":2,"sold":2}"#,
            ),
            ("payment.outbox rows", "2"),
        ];
        for (key, value) in changed {
            after.0.insert(key.to_owned(), value.to_owned());
        }
        let problems = redelivery_problems(&quiet(), &after, &counted(0.0));
        for key in changed.map(|(key, _)| key) {
            assert!(
                problems.iter().any(|p| p.starts_with(key)),
                "{key}: {problems:?}"
            );
        }
        for svc in Svc::all() {
            assert!(
                problems.iter().any(|p| p.starts_with(svc.binary())),
                "{}: {problems:?}",
                svc.binary()
            );
        }
    }

    #[test]
    fn a_record_appearing_or_vanishing_is_caught() {
        let mut after = quiet();
        after.0.remove("order.orders/o1");
        after.0.insert(
            "shipping.shipments/o1".to_owned(),
            r#"{"status":"SCHEDULED"}"#.to_owned(),
        );
        let problems = redelivery_problems(&quiet(), &after, &counted(3.0));
        assert_eq!(problems.len(), 2, "{problems:?}");
    }
}
