//! Re-delivery changes nothing: the [`Effects`] of every service (what an event applied a
//! second time would change: balances and ledger versions, stock, each order's, payment's,
//! reservation's and shipment's state, the timeline, the inbox and the outbox rows) are taken
//! before and after every consumer group is rewound to 0 on a quiet system, and must be equal;
//! and each service must have counted the re-delivered events it had applied as duplicates.
//! With the inbox disabled, the first re-applied charge changes a balance and nothing counts
//! as a duplicate.

use std::collections::BTreeMap;

use crate::faults::{FaultSystem, Svc};

/// What each service's tables say, as `service.table/key` → the row's fields (or a count).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Effects(pub BTreeMap<String, String>);

/// (service, table, key column, the fields a re-applied event would change).
const RECORDS: [(Svc, &str, &str, &str); 6] = [
    (
        Svc::ORDER,
        "orders",
        "order_id",
        "status, cancellation_reason, failed_step, total_cents",
    ),
    (
        Svc::PAYMENT,
        "accounts",
        "customer_id",
        "balance_cents, version",
    ),
    (Svc::PAYMENT, "payments", "order_id", "status, amount_cents"),
    (
        Svc::INVENTORY,
        "products",
        "sku",
        "available, reserved, sold",
    ),
    (Svc::INVENTORY, "reservations", "order_id", "status"),
    (Svc::SHIPPING, "shipments", "order_id", "status"),
];

impl Effects {
    pub async fn take(system: &FaultSystem) -> anyhow::Result<Self> {
        let mut effects = BTreeMap::new();
        for (svc, table, key, fields) in RECORDS {
            let keyed: Vec<(String, String)> = sqlx::query_as(&format!(
                "select {key}::text, row_to_json(r)::text from (select {key}, {fields} from \
                 {table}) r"
            ))
            .fetch_all(&system.pool(svc))
            .await?;
            for (id, row) in keyed {
                effects.insert(format!("{}.{table}/{id}", svc.name()), row);
            }
        }
        for svc in Svc::all() {
            // The events applied, and the events written (published ones move to
            // `outbox_published`; none is pruned within a run).
            for (table, count) in [
                ("inbox", "select count(*) from inbox"),
                (
                    "outbox",
                    "select (select count(*) from outbox) + (select count(*) from outbox_published)",
                ),
            ] {
                let count: i64 = sqlx::query_scalar(count)
                    .fetch_one(&system.pool(svc))
                    .await?;
                effects.insert(format!("{}.{table} rows", svc.name()), count.to_string());
            }
        }
        let timeline: i64 = sqlx::query_scalar("select count(*) from order_timeline")
            .fetch_one(&system.pool(Svc::ORDER))
            .await?;
        effects.insert("order.order_timeline rows".to_owned(), timeline.to_string());
        Ok(Self(effects))
    }

    /// The inbox rows of `svc`: the events it applied.
    pub fn applied(&self, svc: Svc) -> i64 {
        self.0
            .get(&format!("{}.inbox rows", svc.name()))
            .and_then(|count| count.parse().ok())
            .unwrap_or(0)
    }
}

/// What the rewind changed, and which service failed to count its re-delivered events as
/// duplicates (`duplicates`: each service's `sagashop_events_consumed_total{outcome=
/// "duplicate"}` since its restart).
pub fn redelivery_problems(
    before: &Effects,
    after: &Effects,
    duplicates: &[(Svc, f64)],
) -> Vec<String> {
    let mut problems = Vec::new();
    for (key, was) in &before.0 {
        match after.0.get(key) {
            Some(now) if now == was => {}
            Some(now) => problems.push(format!("{key} changed from {was} to {now}")),
            None => problems.push(format!("{key} ({was}) is gone")),
        }
    }
    for (key, now) in &after.0 {
        if !before.0.contains_key(key) {
            problems.push(format!("{key} ({now}) appeared"));
        }
    }
    for (svc, counted) in duplicates {
        let applied = before.applied(*svc);
        if applied == 0 || (*counted as i64) < applied {
            problems.push(format!(
                "{}: {counted} duplicates counted after the rewind, but it had applied \
                 {applied} events",
                svc.binary()
            ));
        }
    }
    problems
}
