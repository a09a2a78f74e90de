//! `windows_match_orders`: once quiet, the query service's analytics windows hold exactly what
//! a recomputation from the order database gives (`orders` for status, reason, total and
//! lines; `order_timeline` for the time of every event of every order), metric by metric and
//! window by window. `events` and `late_events` depend on arrival order and are not compared.
//!
//! The recomputation follows docs/ANALYTICS.md, taking each order's outcome from the order
//! service: placed at `order.created`; confirmed (revenue = `total_cents`, units = the order's
//! lines) at `order.confirmed`; cancelled by `cancellation_reason` at `order.cancelled`; an
//! order `FAILED` at its earliest compensation if it was confirmed, else at its earliest
//! failed compensation; its saga duration from `order.created` to the decision (else the
//! failure), in whole milliseconds, in the window of its end.

use std::collections::{BTreeMap, BTreeSet};

use chrono::{DateTime, Utc};
use serde_json::Value;
use sqlx::types::Json;
use uuid::Uuid;

use super::invariants::Violations;
use crate::faults::{FaultSystem, Svc};

/// (window start in epoch ms, metric, key) -> value, as `analytics_cells` stores them.
pub type Cells = BTreeMap<(i64, String, String), i64>;

/// One order as the order service holds it.
#[derive(Debug, Clone)]
pub struct OrderRecord {
    pub order_id: Uuid,
    pub status: String,
    pub reason: Option<String>,
    pub total_cents: Option<i64>,
    /// (sku, quantity) as placed.
    pub items: Vec<(String, i64)>,
    /// (event subject, occurred_at), e.g. (`order.created`, ...).
    pub timeline: Vec<(String, DateTime<Utc>)>,
}

impl OrderRecord {
    fn first(&self, subjects: &[&str]) -> Option<DateTime<Utc>> {
        self.timeline
            .iter()
            .filter(|(subject, _)| subjects.contains(&subject.as_str()))
            .map(|(_, at)| *at)
            .min()
    }
}

const COMPENSATIONS: [&str; 3] = [
    "inventory.released",
    "payment.refunded",
    "shipment.cancelled",
];
const FAILED_COMPENSATIONS: [&str; 2] = ["inventory.release_failed", "payment.refund_failed"];

/// The windows recomputed from the order database; an order that cannot be placed in them is
/// reported in `problems`.
pub fn recompute(orders: &[OrderRecord], window_ms: i64, problems: &mut Vec<String>) -> Cells {
    let mut cells = Cells::new();
    let window = |at: DateTime<Utc>| at.timestamp_millis().div_euclid(window_ms) * window_ms;
    let mut add = |at: DateTime<Utc>, metric: &str, key: &str, value: i64| {
        *cells
            .entry((window(at), metric.to_owned(), key.to_owned()))
            .or_default() += value;
    };
    for order in orders {
        let id = order.order_id;
        let Some(created) = order.first(&["order.created"]) else {
            problems.push(format!("order {id} has no order.created in its timeline"));
            continue;
        };
        add(created, "placed", "", 1);
        let confirmed = order.first(&["order.confirmed"]);
        if let Some(at) = confirmed {
            add(at, "confirmed", "", 1);
            add(at, "revenue_cents", "", order.total_cents.unwrap_or(0));
            for (sku, quantity) in &order.items {
                add(at, "units", sku, *quantity);
            }
        }
        let cancelled = order.first(&["order.cancelled"]);
        if let Some(at) = cancelled {
            let reason = order.reason.as_deref().unwrap_or("");
            add(at, "cancelled", reason, 1);
        }
        let mut failed = None;
        if order.status == "FAILED" {
            let subjects: &[&str] = match confirmed {
                Some(_) => &COMPENSATIONS,
                None => &FAILED_COMPENSATIONS,
            };
            failed = order.first(subjects);
            match failed {
                Some(at) => add(at, "failed", "", 1),
                None => problems.push(format!(
                    "order {id} is FAILED with none of {subjects:?} in its timeline"
                )),
            }
        }
        if let Some(end) = confirmed.or(cancelled).or(failed) {
            let ms = (end - created).num_milliseconds().max(0);
            add(end, "saga_duration_ms", &ms.to_string(), 1);
        }
    }
    cells.retain(|_, value| *value != 0);
    cells
}

/// The invariant over what [`take`] read.
pub(super) fn windows_match_orders(
    orders: &[OrderRecord],
    analytics: &Cells,
    window_ms: i64,
) -> Violations {
    let mut problems = Vec::new();
    let expected = recompute(orders, window_ms, &mut problems);
    let compared = |cells: &Cells| -> Cells {
        cells
            .iter()
            .filter(|((_, metric, _), value)| {
                **value != 0 && metric != "events" && metric != "late_events"
            })
            .map(|(cell, value)| (cell.clone(), *value))
            .collect()
    };
    let (expected, actual) = (compared(&expected), compared(analytics));
    let cells: BTreeSet<_> = expected.keys().chain(actual.keys()).collect();
    for cell in cells {
        let (want, got) = (
            expected.get(cell).copied().unwrap_or(0),
            actual.get(cell).copied().unwrap_or(0),
        );
        if want != got {
            let (start, metric, key) = cell;
            let start = DateTime::<Utc>::from_timestamp_millis(*start).unwrap_or_default();
            problems.push(format!(
                "window {start} {metric}{}: the order database gives {want}, analytics {got}",
                if key.is_empty() {
                    String::new()
                } else {
                    format!("[{key}]")
                }
            ));
        }
    }
    Violations {
        invariant: "windows_match_orders",
        count: problems.len() as i64,
        problems,
        orders: BTreeSet::new(),
        notes: vec![format!(
            "windows_match_orders: {} orders, {} cells compared",
            orders.len(),
            expected.len()
        )],
    }
}

/// What breaks `windows_match_orders` (empty: nothing), for tests outside the fault suite.
pub fn mismatches(orders: &[OrderRecord], analytics: &Cells, window_ms: i64) -> Vec<String> {
    windows_match_orders(orders, analytics, window_ms).problems
}

/// Reads the orders with their timelines, the analytics cells (folded and pending) and the
/// window size the query service uses.
pub(super) async fn take(system: &FaultSystem) -> anyhow::Result<(Vec<OrderRecord>, Cells, i64)> {
    let (orders, cells) = read(&system.pool(Svc::ORDER), &system.pool(Svc::QUERY)).await?;
    let url = format!("{}/analytics/windows", system.url(Svc::QUERY));
    let body: Value = system.http.get(url).send().await?.json().await?;
    let window_ms = body["window_ms"]
        .as_i64()
        .ok_or_else(|| anyhow::anyhow!("no window_ms in /analytics/windows: {body}"))?;
    Ok((orders, cells, window_ms))
}

/// The orders (with timelines) of the order database and the cells of the query database.
pub async fn read(
    order_db: &sqlx::PgPool,
    query_db: &sqlx::PgPool,
) -> anyhow::Result<(Vec<OrderRecord>, Cells)> {
    type OrderRow = (Uuid, String, Option<String>, Option<i64>, Json<Value>);
    let rows: Vec<OrderRow> = sqlx::query_as(
        "select order_id, status, cancellation_reason, total_cents, items from orders",
    )
    .fetch_all(order_db)
    .await?;
    let events: Vec<(Uuid, String, DateTime<Utc>)> =
        sqlx::query_as("select order_id, event_type, occurred_at from order_timeline")
            .fetch_all(order_db)
            .await?;
    let mut timelines: BTreeMap<Uuid, Vec<(String, DateTime<Utc>)>> = BTreeMap::new();
    for (order_id, event_type, at) in events {
        let subject = event_type
            .rsplit_once(".v")
            .map_or(event_type.as_str(), |(subject, _)| subject)
            .to_owned();
        timelines.entry(order_id).or_default().push((subject, at));
    }
    let orders = rows
        .into_iter()
        .map(
            |(order_id, status, reason, total_cents, items)| OrderRecord {
                order_id,
                status,
                reason,
                total_cents,
                items: items
                    .0
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(|line| {
                        (
                            line["sku"].as_str().unwrap_or_default().to_owned(),
                            line["quantity"].as_i64().unwrap_or_default(),
                        )
                    })
                    .collect(),
                timeline: timelines.remove(&order_id).unwrap_or_default(),
            },
        )
        .collect();
    let rows: Vec<(DateTime<Utc>, String, String, i64)> = sqlx::query_as(
        "select window_start, metric, key, sum(value)::bigint from (
             select window_start, metric, key, value from analytics_cells
             union all
             select window_start, metric, key, value from analytics_deltas
         ) c group by window_start, metric, key",
    )
    .fetch_all(query_db)
    .await?;
    let cells = rows
        .into_iter()
        .map(|(start, metric, key, value)| ((start.timestamp_millis(), metric, key), value))
        .collect();
    Ok((orders, cells))
}

#[cfg(test)]
mod tests {
    use chrono::TimeZone;

    use super::*;

    fn at(ms: i64) -> DateTime<Utc> {
        Utc.timestamp_millis_opt(ms).unwrap()
    }

    fn order(status: &str, reason: Option<&str>, timeline: &[(&str, i64)]) -> OrderRecord {
        OrderRecord {
            order_id: Uuid::now_v7(),
            status: status.to_owned(),
            reason: reason.map(str::to_owned),
            total_cents: Some(1_000),
            items: vec![("sku-a".to_owned(), 2)],
            timeline: timeline
                .iter()
                .map(|(subject, ms)| ((*subject).to_owned(), at(*ms)))
                .collect(),
        }
    }

    fn cell(start: i64, metric: &str, key: &str) -> (i64, String, String) {
        (start, metric.to_owned(), key.to_owned())
    }

    /// A confirmed order, a cancelled one and one that failed after its cancellation.
    fn world() -> (Vec<OrderRecord>, Cells) {
        let orders = vec![
            order(
                "CONFIRMED",
                None,
                &[("order.created", 1_000), ("order.confirmed", 61_500)],
            ),
            order(
                "CANCELLED",
                Some("out_of_stock"),
                &[
                    ("order.created", 2_000),
                    ("inventory.rejected", 2_100),
                    ("order.cancelled", 2_200),
                ],
            ),
            order(
                "FAILED",
                Some("payment_declined"),
                &[
                    ("order.created", 3_000),
                    ("order.cancelled", 4_000),
                    ("payment.refund_failed", 130_000),
                ],
            ),
        ];
        let cells = Cells::from([
            (cell(0, "placed", ""), 3),
            (cell(0, "cancelled", "out_of_stock"), 1),
            (cell(0, "cancelled", "payment_declined"), 1),
            (cell(0, "saga_duration_ms", "200"), 1),
            (cell(0, "saga_duration_ms", "1000"), 1),
            (cell(0, "events", ""), 9),
            (cell(60_000, "confirmed", ""), 1),
            (cell(60_000, "revenue_cents", ""), 1_000),
            (cell(60_000, "units", "sku-a"), 2),
            (cell(60_000, "saga_duration_ms", "60500"), 1),
            (cell(120_000, "failed", ""), 1),
            (cell(120_000, "late_events", ""), 1),
        ]);
        (orders, cells)
    }

    #[test]
    fn windows_recomputed_from_the_orders_break_nothing() {
        let (orders, cells) = world();
        let found = windows_match_orders(&orders, &cells, 60_000);
        assert!(found.problems.is_empty(), "{:?}", found.problems);
    }

    #[test]
    fn a_window_that_lost_or_double_counted_an_order_breaks_it() {
        let (orders, mut cells) = world();
        *cells.get_mut(&cell(0, "placed", "")).unwrap() = 2;
        cells.insert(cell(60_000, "failed", ""), 1);
        let found = windows_match_orders(&orders, &cells, 60_000);
        assert_eq!(found.invariant, "windows_match_orders");
        assert_eq!(found.problems.len(), 2, "{:?}", found.problems);
        assert_eq!(found.count, 2);
        assert!(found.problems[0].contains("placed: the order database gives 3, analytics 2"));
    }

    #[test]
    fn a_failed_order_the_timeline_cannot_place_breaks_it() {
        let (mut orders, cells) = world();
        orders[2]
            .timeline
            .retain(|(subject, _)| subject != "payment.refund_failed");
        let found = windows_match_orders(&orders, &cells, 60_000);
        assert!(found
            .problems
            .iter()
            .any(|problem| problem.contains("is FAILED with none of")));
    }
}
