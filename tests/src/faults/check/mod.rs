//! After the workload: wait until the system is quiet, take one [`Snapshot`] of everything
//! the invariants read (every service's tables, outboxes and consumer groups, and what the HTTP
//! API shows), then run the named invariants over it, each a small function returning its
//! [`Violations`]. The [`Report`] names every broken invariant in its summary line
//! (`broken=...`) and in every failure message.
//!
//! Quiet: every accepted order is terminal (or the wait timed out: those are `stuck`), every
//! outbox is drained, and every service's consumer group has committed up to the high
//! watermark of every partition it consumes, twice in a row with nothing new produced.
//!
//! The invariants, with the summary field each counts into:
//! - `no_order_lost` (`lost`): accepted orders (answered 202) the order service does not know;
//!   `no_stuck_saga` (`stuck`, and `lost`): accepted orders not terminal.
//! - `no_saga_timed_out` (`timed_out`): orders cancelled by the saga deadline (a stalled saga).
//! - `no_double_charge` (`double_charged`): orders charged more than their total, or charged
//!   (payment `CHARGED`) while `CANCELLED` or `FAILED`; customers whose balance went down by
//!   more than the charges payment holds for them.
//! - `money_conserved` (`money_delta`, the sum of the differences): opening balance = balance +
//!   charges not refunded, for every customer; no account gone or negative.
//! - `ledger_matches_balances`: every account's balance is the fold of its ledger entries
//!   (versions contiguous from 1, each running balance the previous one plus its amount); no
//!   ledger without an account.
//! - `no_oversell` (`oversold`): products whose available + reserved + sold differs from the
//!   stock, with a negative field, with units still reserved once every order is terminal, or
//!   whose sold units differ from the units of the confirmed orders.
//! - `services_agree` (`disagree`): `CONFIRMED` <=> payment `CHARGED` with amount =
//!   `total_cents` (= the priced lines), shipment `SCHEDULED`, reservation `COMMITTED`;
//!   `CANCELLED`/`FAILED` => no `CHARGED` payment, no `SCHEDULED` shipment, no
//!   `RESERVED`/`COMMITTED` reservation; no order `FAILED` and no compensation failed; an order
//!   to `AQ`, with an unknown sku or by a customer without an account is never confirmed; a
//!   customer cancellation answered 202 leaves the order `CANCELLED` (`cancelled_by_customer`).
//! - `api_shows_orders` (`disagree`), `api_shows_balances`, `api_shows_stock` (`oversold`): the
//!   HTTP API shows what the databases hold.
//! - `no_unexpected_order` (`unexpected`): orders no client was answered 202 for;
//!   `no_orphan_record`: no active payment, shipment or reservation of an order the order
//!   service does not know.
//! - `outbox_drained` (`outbox`), `no_consumer_lag` (`lag`).
//! - `views_match_write_side` (`disagree`): the query service's view of every terminal order
//!   shows the status, reason, payment (status, amount) and shipment (status, country) the
//!   order, payment and shipping databases hold.
//! - `windows_match_orders`: the query service's analytics windows equal a recomputation from
//!   the order database ([`windows`]).
//!
//! And around the snapshot: `no_order_given_up` (`gave_up`), `no_client_anomaly`,
//! `quiet_in_time`, `no_unexpected_exit` (no service process exited on its own), and
//! `snapshot` when it cannot be taken.

mod invariants;
pub mod rewind;
mod snapshot;
#[cfg(test)]
mod tests;
pub mod windows;

use std::collections::{BTreeSet, HashMap};
use std::fmt::{Display, Write as _};
use std::time::Duration;

use serde_json::Value;
use sqlx::types::Json;
use tokio::time::Instant;
use uuid::Uuid;

use super::kafka::Duplicator;
use super::workload::{Outcome, Workload};
use super::{FaultSystem, Svc};
use invariants::{Found, Violations};
use snapshot::{outboxes_and_groups, text, Known, Snapshot};

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
    /// Every violation: the invariant it breaks and what happened.
    pub problems: Vec<(&'static str, String)>,
    /// Helpful context printed on failure (timelines of offending orders, ...).
    pub details: Vec<String>,
}

impl Report {
    pub fn summary(&self) -> String {
        let mut line = format!(
            "case={} seed={} orders={} accepted={} confirmed={} cancelled={} failed={} \
             timed_out={} faults={} lost={} double_charged={} oversold={} stuck={} disagree={} \
             unexpected={} outbox={} lag={} money_delta={} gave_up={} retries={} settle={:.1}s \
             broken={}",
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
            match self.broken() {
                broken if broken.is_empty() => "none".to_owned(),
                broken => broken.join(","),
            },
        );
        for (key, value) in &self.notes {
            let _ = write!(line, " {key}={value}");
        }
        line
    }

    /// Records a violation of `invariant`.
    pub fn violation(&mut self, invariant: &'static str, text: impl Into<String>) {
        self.problems.push((invariant, text.into()));
    }

    /// The broken invariants, in the order their first violation was recorded.
    pub fn broken(&self) -> Vec<&'static str> {
        let mut broken: Vec<&'static str> = Vec::new();
        for (invariant, _) in &self.problems {
            if !broken.contains(invariant) {
                broken.push(invariant);
            }
        }
        broken
    }

    /// Adds a `key=value` field to the summary line.
    pub fn note(&mut self, key: &str, value: impl Display) {
        self.notes.push((key.to_owned(), value.to_string()));
    }

    /// The summary's counters from what the invariants found.
    fn count(&mut self, found: &Found) {
        let terminal = |status: &str| found.terminal.get(status).copied().unwrap_or(0);
        self.confirmed = terminal("CONFIRMED");
        self.cancelled = terminal("CANCELLED");
        self.failed = terminal("FAILED");
        // An order that never became terminal is lost as well as stuck.
        self.lost = found.lost.orders.len() + found.stuck.orders.len();
        self.stuck = found.stuck.orders.len();
        self.timed_out = found.timed_out.orders.len();
        self.double_charged =
            found.double_charged.orders.len() + found.double_charged.count as usize;
        self.money_delta = found.money.count;
        self.oversold = (found.oversold.count + found.api_stock.count) as usize;
        self.disagree = found
            .agree
            .orders
            .iter()
            .chain(&found.api_orders.orders)
            .chain(&found.views.orders)
            .collect::<BTreeSet<_>>()
            .len();
        self.unexpected = found.unexpected.count as usize;
        self.outbox_pending = found.outbox.count;
        self.lag = found.lag.count;
    }

    fn record(&mut self, violations: Violations) {
        for problem in violations.problems {
            self.violation(violations.invariant, problem);
        }
        self.details.extend(violations.notes);
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
            for (invariant, problem) in self.problems.iter().take(60) {
                eprintln!("  - {invariant}: {problem}");
            }
            for detail in self.details.iter().take(20) {
                eprintln!("{detail}");
            }
            panic!(
                "[{}] invariants broken ({}): {}\n{}",
                self.case,
                self.broken().join(", "),
                line,
                self.problems
                    .iter()
                    .take(10)
                    .map(|(invariant, problem)| format!("{invariant}: {problem}"))
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
        report.violation(
            "no_order_given_up",
            format!("order #{n} never accepted (client gave up): {why}"),
        );
    }
    for anomaly in &outcome.anomalies {
        report.violation("no_client_anomaly", anomaly.clone());
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
                report.violation(
                    "quiet_in_time",
                    format!("{pending} accepted orders not terminal after {terminal_timeout:?}"),
                );
                break;
            }
            Err(error) if Instant::now() < deadline => {
                eprintln!("[{}] reading orders: {error:#}", system.case)
            }
            Err(error) => {
                report.violation(
                    "quiet_in_time",
                    format!("cannot read the orders: {error:#}"),
                );
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
                    report.violation(
                        "quiet_in_time",
                        format!("not quiet after 90 s: {}", description.join("; ")),
                    );
                    break;
                }
            }
            Err(error) => {
                previous = None;
                if Instant::now() > quiet_deadline {
                    report.violation(
                        "quiet_in_time",
                        format!("cannot tell whether it is quiet: {error:#}"),
                    );
                    break;
                }
            }
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    report.settle = started.elapsed();

    for exit in system.unexpected_exits() {
        report.violation("no_unexpected_exit", exit);
    }
    if let Err(error) = check(system, workload, outcome, &expectations, &mut report).await {
        report.violation("snapshot", format!("taking the snapshot failed: {error:#}"));
    }
    report
}

/// Waits until every outbox is drained and every consumer group has committed up to the end
/// of what it consumes, twice in a row with nothing new (the quiet of [`settle_and_check`]).
pub async fn wait_quiet(system: &FaultSystem, timeout: Duration) -> anyhow::Result<()> {
    let deadline = Instant::now() + timeout;
    let mut previous: Option<Vec<String>> = None;
    loop {
        let (quiet, fingerprint) = quiet_state(system, None).await?;
        if quiet && previous.as_ref() == Some(&fingerprint) {
            return Ok(());
        }
        if Instant::now() > deadline {
            anyhow::bail!("not quiet after {timeout:?}: {}", fingerprint.join("; "));
        }
        previous = quiet.then_some(fingerprint);
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

async fn pending_orders(system: &FaultSystem, accepted: &[Uuid]) -> anyhow::Result<usize> {
    let terminal: i64 = sqlx::query_scalar(
        "select count(*) from orders where order_id = any($1) and status <> 'PENDING'",
    )
    .bind(accepted)
    .fetch_one(&system.pool(Svc::ORDER))
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
    let (outboxes, groups) = outboxes_and_groups(system).await?;
    for (svc, pending) in outboxes {
        if pending > 0 {
            busy.push(format!("{} outbox has {pending} unpublished", svc.name()));
        }
    }
    for (svc, group, states) in groups {
        for state in states {
            if state.lag() > 0 {
                busy.push(format!("{group} lags on {state}"));
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

/// Takes the snapshot, runs every invariant over it and records what they found.
async fn check(
    system: &FaultSystem,
    workload: &Workload,
    outcome: &Outcome,
    expectations: &Expectations,
    report: &mut Report,
) -> anyhow::Result<()> {
    let known = Known::new(
        workload,
        outcome,
        expectations,
        system.options.saga_deadline_ms,
    );
    let snapshot = Snapshot::take(system, &known).await?;
    let found = Found::check(&known, &snapshot);
    report.count(&found);
    let offending: BTreeSet<Uuid> = found
        .into_all()
        .into_iter()
        .flat_map(|violations| {
            let orders = violations.orders.clone();
            report.record(violations);
            orders
        })
        .collect();
    let (orders, cells, window_ms) = windows::take(system).await?;
    report.note("analytics_cells", cells.len());
    report.record(windows::windows_match_orders(&orders, &cells, window_ms));
    // Context for the offending orders: every service's record and the timeline.
    for order_id in offending.iter().take(8) {
        report
            .details
            .push(order_context(system, &snapshot, *order_id).await);
    }
    Ok(())
}

/// An offending order's record in every service and its timeline, for the failure output.
async fn order_context(system: &FaultSystem, snap: &Snapshot, order_id: Uuid) -> String {
    let timeline: Vec<Json<Value>> = sqlx::query_scalar(
        "select to_jsonb(t) from order_timeline t where order_id = $1 order by seq",
    )
    .bind(order_id)
    .fetch_all(&system.pool(Svc::ORDER))
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
    let record = |records: &HashMap<Uuid, Value>| {
        records
            .get(&order_id)
            .map_or("-".to_owned(), Value::to_string)
    };
    format!(
        "order {order_id}:\n  order       {}\n  payment     {}\n  shipment    {}\n  reservation {}\n  timeline    {}",
        record(&snap.orders),
        record(&snap.payments),
        record(&snap.shipments),
        record(&snap.reservations),
        events.join(" -> "),
    )
}
