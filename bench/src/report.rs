//! What a run measured: the per-step figures computed from the raw observations, the Markdown
//! table printed on stdout, and the files of the output directory (results.json, report.md,
//! the SVG charts).

use std::collections::BTreeMap;
use std::fmt::Write;
use std::path::Path;

use anyhow::{Context, Result};
use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::chain::ChainResult;
use crate::commit_bound::CommitBound;
use crate::config::Mix;
use crate::sampler::Usage;
use crate::stack::InfraInfo;
use crate::stats::{buckets, flatness, per, rate, ratio, Bucket, Flatness, Summary};
use crate::svg::{self, Chart, Scale, Series};
use crate::workload::{millis, DbCounters, Load, OrderRow, Quiet};

/// Width of the soak's latency-over-time buckets, in seconds.
pub const BUCKET_S: f64 = 10.0;
/// The soak's flatness check: first vs last window of this many seconds, within this share.
const FLAT_WINDOW_S: f64 = 60.0;
const FLAT_TOLERANCE: f64 = 0.10;
/// Requests sent later than this behind schedule are worth a note.
const LATE_MS: f64 = 100.0;

/// How the run was set up.
#[derive(Debug, Clone, Serialize)]
pub struct Settings {
    pub run_id: String,
    pub started_at: DateTime<Utc>,
    pub rates: Vec<f64>,
    pub duration_s: u64,
    pub soak_rate: Option<f64>,
    pub soak_duration_s: u64,
    pub mix: Mix,
    pub fetch_wait_ms: u32,
    pub hops: u32,
    pub quiet_timeout_s: u64,
    pub warmup_orders: u32,
    pub customers: u32,
    pub products: u32,
    pub topic_prefix: String,
    pub infra: InfraInfo,
    pub nproc: usize,
    pub git_commit: Option<String>,
    /// Uncommitted changes in the work tree.
    pub git_dirty: Option<bool>,
    /// The environment of each service (passwords hidden).
    pub service_env: BTreeMap<String, BTreeMap<String, String>>,
}

/// The system with no orders, measured before the first step: what the services cost at rest
/// (idle polling of the consumers and relays, the deadline sweep).
#[derive(Debug, Clone, Serialize)]
pub struct IdleReport {
    pub seconds: f64,
    /// Commits per second in the four service databases (the bench's own subtracted).
    pub commits_per_s: Option<f64>,
    pub usage: Vec<Usage>,
}

impl IdleReport {
    pub fn compute(seconds: f64, before: DbCounters, after: DbCounters, usage: Vec<Usage>) -> Self {
        let commits = (after.commits - before.commits) - (after.own_queries - before.own_queries);
        Self {
            seconds,
            commits_per_s: rate(commits.max(0) as u64, seconds),
            usage,
        }
    }
}

/// One load step (or the soak, or the warm-up), measured.
#[derive(Debug, Clone, Serialize)]
pub struct StepReport {
    pub label: String,
    pub soak: bool,
    pub offered_rate: f64,
    pub duration_s: f64,
    pub sent: u64,
    /// 202 responses.
    pub accepted: u64,
    /// Requests without a 202 (including those with no response at all, status `none`).
    pub errors: u64,
    pub errors_by_status: BTreeMap<String, u64>,
    /// Statuses of the customers' cancel requests (`--mix mixed`).
    pub cancel_statuses: BTreeMap<String, u64>,
    pub quiet: Quiet,
    /// Accepted orders found terminal.
    pub terminal: u64,
    /// Terminal orders / seconds from the first POST to the last terminal `updated_at`.
    pub achieved_rate: Option<f64>,
    /// `updated_at - created_at` of the terminal orders, in ms.
    pub saga: Summary,
    /// Client-side latency of the POST /orders, in ms.
    pub http: Summary,
    /// How late the requests were sent against the schedule, in ms (the bench keeping up).
    pub send_lag: Summary,
    /// `CONFIRMED`, `CANCELLED/<reason>`, `FAILED/<step>`, `PENDING`.
    pub outcomes: BTreeMap<String, u64>,
    /// Outbox rows written in the four databases per accepted order.
    pub events_per_saga: Option<f64>,
    /// Commits in the four databases per accepted order (the bench's own queries subtracted).
    pub commits_per_saga: Option<f64>,
    /// Those commits per second of the step (first POST to quiet).
    pub commits_per_s: Option<f64>,
    /// `commits_per_s` / the commit bound.
    pub commit_bound_share: Option<f64>,
    /// Per process, from the first POST until quiet.
    pub usage: Vec<Usage>,
    pub chain: Option<ChainResult>,
    pub chain_error: Option<String>,
    /// Saga / chain latency.
    pub ratio_p50: Option<f64>,
    pub ratio_p99: Option<f64>,
    /// Soak only: latency by `created_at`, [`BUCKET_S`] wide.
    pub buckets: Vec<Bucket>,
    pub flatness: Option<Flatness>,
}

/// The raw observations of a step.
pub struct StepInput<'a> {
    pub label: String,
    pub soak: bool,
    pub rate: f64,
    pub duration_s: f64,
    pub load: &'a Load,
    pub quiet: Quiet,
    pub rows: &'a [OrderRow],
    pub before: DbCounters,
    pub after: DbCounters,
    /// Seconds from the first POST until quiet.
    pub window_s: f64,
    pub usage: Vec<Usage>,
    pub commit_bound: Option<f64>,
}

fn outcome(row: &OrderRow) -> String {
    match (
        row.status.as_str(),
        &row.cancellation_reason,
        &row.failed_step,
    ) {
        ("CANCELLED", Some(reason), _) => format!("CANCELLED/{reason}"),
        ("FAILED", _, Some(step)) => format!("FAILED/{step}"),
        (status, _, _) => status.to_owned(),
    }
}

fn status_label(status: u16) -> String {
    match status {
        0 => "none".to_owned(),
        s => s.to_string(),
    }
}

impl StepReport {
    pub fn compute(input: StepInput<'_>) -> Self {
        let requests = &input.load.requests;
        let sent = requests.len() as u64;
        let accepted = requests.iter().filter(|r| r.order_id.is_some()).count() as u64;
        let mut errors_by_status = BTreeMap::new();
        for r in requests.iter().filter(|r| r.order_id.is_none()) {
            *errors_by_status.entry(status_label(r.status)).or_insert(0) += 1;
        }
        let mut cancel_statuses = BTreeMap::new();
        for status in requests.iter().filter_map(|r| r.cancel_status) {
            *cancel_statuses.entry(status_label(status)).or_insert(0) += 1;
        }
        let mut outcomes = BTreeMap::new();
        for row in input.rows {
            *outcomes.entry(outcome(row)).or_insert(0) += 1;
        }
        let terminal: Vec<&OrderRow> = input
            .rows
            .iter()
            .filter(|r| r.status != "PENDING")
            .collect();
        let latencies: Vec<f64> = terminal
            .iter()
            .map(|r| millis(r.updated_at - r.created_at))
            .collect();
        let achieved_rate = terminal
            .iter()
            .map(|r| r.updated_at)
            .max()
            .and_then(|last| {
                rate(
                    terminal.len() as u64,
                    millis(last - input.load.started_at) / 1000.0,
                )
            });
        let http: Vec<f64> = requests
            .iter()
            .filter(|r| r.status != 0)
            .map(|r| r.latency_ms)
            .collect();
        let commits = (input.after.commits - input.before.commits)
            - (input.after.own_queries - input.before.own_queries);
        let commits_per_s = rate(commits.max(0) as u64, input.window_s);
        let (buckets, flatness) = match input.soak {
            true => {
                let series: Vec<(f64, f64)> = terminal
                    .iter()
                    .map(|r| {
                        (
                            millis(r.created_at - input.load.started_at) / 1000.0,
                            millis(r.updated_at - r.created_at),
                        )
                    })
                    .collect();
                (
                    buckets(&series, BUCKET_S),
                    flatness(&series, FLAT_WINDOW_S, FLAT_TOLERANCE),
                )
            }
            false => (Vec::new(), None),
        };
        Self {
            label: input.label,
            soak: input.soak,
            offered_rate: input.rate,
            duration_s: input.duration_s,
            sent,
            accepted,
            errors: sent - accepted,
            errors_by_status,
            cancel_statuses,
            quiet: input.quiet,
            terminal: terminal.len() as u64,
            achieved_rate,
            saga: Summary::of(&latencies),
            http: Summary::of(&http),
            send_lag: Summary::of(&requests.iter().map(|r| r.lag_ms).collect::<Vec<_>>()),
            outcomes,
            events_per_saga: per(input.after.outbox_rows - input.before.outbox_rows, accepted),
            commits_per_saga: per(commits, accepted),
            commits_per_s,
            commit_bound_share: ratio(commits_per_s, input.commit_bound),
            usage: input.usage,
            chain: None,
            chain_error: None,
            ratio_p50: None,
            ratio_p99: None,
            buckets,
            flatness,
        }
    }

    /// Adds the chain measured for this step and the saga/chain ratios.
    pub fn set_chain(&mut self, chain: Result<ChainResult>) {
        match chain {
            Ok(chain) => {
                self.ratio_p50 = ratio(self.saga.p50, chain.latency.p50);
                self.ratio_p99 = ratio(self.saga.p99, chain.latency.p99);
                self.chain = Some(chain);
            }
            Err(error) => self.chain_error = Some(format!("{error:#}")),
        }
    }

    fn usage(&self, name: &str) -> Option<&Usage> {
        self.usage.iter().find(|u| u.name == name)
    }
}

/// Everything a run produced.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub settings: Settings,
    pub commit_bound: Option<CommitBound>,
    pub commit_bound_error: Option<String>,
    pub idle: Option<IdleReport>,
    pub warmup: Option<StepReport>,
    pub steps: Vec<StepReport>,
    pub soak: Option<StepReport>,
    pub finished_at: DateTime<Utc>,
}

/// The processes of the resource columns, in order: the services, then the rest.
pub fn processes() -> impl Iterator<Item = &'static str> {
    shared::topology::names().chain(["broker", "postgres", "bench"])
}

fn num(value: Option<f64>, decimals: usize) -> String {
    value.map_or_else(|| "-".to_owned(), |v| format!("{v:.decimals$}"))
}

impl Report {
    fn rows(&self) -> impl Iterator<Item = &StepReport> {
        self.steps.iter().chain(&self.soak)
    }

    /// The per-step Markdown table.
    pub fn table(&self) -> String {
        let mut header: Vec<String> = [
            "offered/s",
            "achieved/s",
            "done",
            "saga p50 ms",
            "saga p90 ms",
            "saga p99 ms",
            "saga max ms",
            "chain p50 ms",
            "chain p99 ms",
            "saga/chain p50",
            "saga/chain p99",
            "HTTP p50 ms",
            "HTTP p99 ms",
            "errors",
            "events/saga",
            "commits/saga",
            "commits/s",
            "% of commit bound",
        ]
        .map(str::to_owned)
        .to_vec();
        header.extend(processes().map(|p| format!("CPU% {p}")));
        header.extend(processes().map(|p| format!("RSS MiB {p}")));
        let mut out = String::new();
        let _ = writeln!(out, "| {} |", header.join(" | "));
        let _ = writeln!(out, "|{}", "---|".repeat(header.len()));
        for step in self.rows() {
            let chain = step.chain.as_ref().map(|c| &c.latency);
            let done = match step.quiet.finished {
                true => format!("{}/{}", step.terminal, step.accepted),
                false => format!("{}/{} (unfinished)", step.terminal, step.accepted),
            };
            let offered = match step.soak {
                true => format!(
                    "{} (soak {:.0} s)",
                    svg::label(step.offered_rate),
                    step.duration_s
                ),
                false => svg::label(step.offered_rate),
            };
            let mut cells = vec![
                offered,
                num(step.achieved_rate, 1),
                done,
                num(step.saga.p50, 0),
                num(step.saga.p90, 0),
                num(step.saga.p99, 0),
                num(step.saga.max, 0),
                num(chain.and_then(|c| c.p50), 0),
                num(chain.and_then(|c| c.p99), 0),
                num(step.ratio_p50, 2),
                num(step.ratio_p99, 2),
                num(step.http.p50, 1),
                num(step.http.p99, 1),
                step.errors.to_string(),
                num(step.events_per_saga, 2),
                num(step.commits_per_saga, 1),
                num(step.commits_per_s, 0),
                num(step.commit_bound_share.map(|s| s * 100.0), 0),
            ];
            cells.extend(processes().map(|p| num(step.usage(p).and_then(|u| u.cpu_percent), 0)));
            cells.extend(processes().map(|p| num(step.usage(p).and_then(|u| u.peak_rss_mib), 0)));
            let _ = writeln!(out, "| {} |", cells.join(" | "));
        }
        out
    }

    /// The lines after the table: commit bound, outcomes, problems, the soak.
    pub fn summary(&self) -> String {
        let mut out = String::new();
        match (&self.commit_bound, &self.commit_bound_error) {
            (Some(b), _) => {
                let _ = writeln!(
                    out,
                    "Commit bound: {:.0} commits/s ({} connections x {:.0} s of consumer-shaped \
                     transactions: inbox insert + state update + outbox insert with ~500 B jsonb, \
                     in the services' schema; p50 {} ms, p99 {} ms per transaction). \
                     \"% of commit bound\" is a step's commits/s in the four service databases \
                     over this.",
                    b.commits_per_s,
                    b.connections,
                    b.seconds,
                    num(b.latency.p50, 1),
                    num(b.latency.p99, 1),
                );
            }
            (None, Some(error)) => {
                let _ = writeln!(out, "Commit bound: failed: {error}");
            }
            (None, None) => {
                let _ = writeln!(out, "Commit bound: not measured (--no-commit-bound).");
            }
        }
        if let Some(idle) = &self.idle {
            let cpu: Vec<String> = idle
                .usage
                .iter()
                .map(|u| format!("{} {}", u.name, num(u.cpu_percent, 0)))
                .collect();
            let _ = writeln!(
                out,
                "Idle (no orders, {:.0} s before the steps): {} commits/s; CPU% {}.",
                idle.seconds,
                num(idle.commits_per_s, 0),
                cpu.join(", ")
            );
        }
        for step in self.rows() {
            let outcomes: Vec<String> = step
                .outcomes
                .iter()
                .map(|(k, v)| format!("{k} {v}"))
                .collect();
            let mut line = format!("{}: outcomes: {}", step.label, outcomes.join(", "));
            if !step.errors_by_status.is_empty() {
                let errors: Vec<String> = step
                    .errors_by_status
                    .iter()
                    .map(|(k, v)| format!("{k} x{v}"))
                    .collect();
                let _ = write!(line, "; HTTP errors: {}", errors.join(", "));
            }
            if !step.cancel_statuses.is_empty() {
                let cancels: Vec<String> = step
                    .cancel_statuses
                    .iter()
                    .map(|(k, v)| format!("{k} x{v}"))
                    .collect();
                let _ = write!(line, "; cancel requests: {}", cancels.join(", "));
            }
            if let Some(lag) = step.send_lag.max.filter(|lag| *lag > LATE_MS) {
                let _ = write!(
                    line,
                    "; the bench sent up to {lag:.0} ms behind schedule (p99 {} ms)",
                    num(step.send_lag.p99, 0)
                );
            }
            if !step.quiet.finished {
                let _ = write!(
                    line,
                    "; NOT FINISHED after {:.0} s: {} orders pending, {} outbox rows unpublished",
                    step.quiet.waited_s, step.quiet.pending_orders, step.quiet.unpublished
                );
            }
            if let Some(chain) = &step.chain {
                let _ = write!(
                    line,
                    "; chain {}/{} received, p90 {} ms",
                    chain.received,
                    chain.sent,
                    num(chain.latency.p90, 0)
                );
            }
            if let Some(error) = &step.chain_error {
                let _ = write!(line, "; chain failed: {error}");
            }
            let _ = writeln!(out, "{line}");
        }
        if let Some(soak) = &self.soak {
            match &soak.flatness {
                Some(f) => {
                    let _ = writeln!(
                        out,
                        "Soak: {} orders/s for {:.0} s: saga p50 {:.0} ms in the first minute, \
                         {:.0} ms in the last, ratio {:.2}: {}",
                        svg::label(soak.offered_rate),
                        soak.duration_s,
                        f.first_p50,
                        f.last_p50,
                        f.ratio,
                        match f.flat {
                            true => "flat (within 10%)",
                            false => "NOT flat (more than 10% apart)",
                        }
                    );
                }
                None => {
                    let _ = writeln!(out, "Soak: no terminal orders to compare.");
                }
            }
        }
        out
    }

    fn markdown(&self) -> String {
        let s = &self.settings;
        let mut out = String::new();
        let _ = writeln!(
            out,
            "# Sagashop benchmark {}\n",
            s.started_at.format("%Y-%m-%d %H:%M:%SZ")
        );
        let rates: Vec<String> = s.rates.iter().map(|r| svg::label(*r)).collect();
        let settings = [
            ("run", s.run_id.clone()),
            (
                "git commit",
                match (&s.git_commit, s.git_dirty) {
                    (Some(c), Some(true)) => format!("{c} (with uncommitted changes)"),
                    (Some(c), _) => c.clone(),
                    (None, _) => "unknown".into(),
                },
            ),
            (
                "rates",
                format!("{} orders/s, {} s each", rates.join(", "), s.duration_s),
            ),
            (
                "soak",
                match s.soak_duration_s {
                    0 => "none".into(),
                    d => format!(
                        "{} orders/s for {d} s",
                        svg::label(s.soak_rate.unwrap_or(0.0))
                    ),
                },
            ),
            ("mix", format!("{:?}", s.mix).to_lowercase()),
            (
                "customers, products",
                format!("{}, {}", s.customers, s.products),
            ),
            ("fetch.wait.max.ms", s.fetch_wait_ms.to_string()),
            ("chain hops", s.hops.to_string()),
            ("warm-up orders", s.warmup_orders.to_string()),
            ("PostgreSQL", {
                let settings: Vec<String> = s
                    .infra
                    .postgres_settings
                    .iter()
                    .map(|(k, v)| format!("{k}={v}"))
                    .collect();
                format!(
                    "{} {} {}",
                    s.infra.postgres,
                    s.infra.postgres_version,
                    settings.join(" ")
                )
            }),
            (
                "broker",
                format!("{} at {}", s.infra.broker, s.infra.broker_address),
            ),
            ("cores", s.nproc.to_string()),
        ];
        for (name, value) in settings {
            let _ = writeln!(out, "- {name}: {value}");
        }
        let _ = writeln!(out, "\n{}\n{}", self.table(), self.summary());
        if let Some(soak) = &self.soak {
            let _ = writeln!(out, "\n## Soak latency over time\n");
            let _ = writeln!(
                out,
                "| from s | orders | p50 ms | p99 ms |\n|---|---|---|---|"
            );
            for b in &soak.buckets {
                let _ = writeln!(
                    out,
                    "| {:.0} | {} | {} | {} |",
                    b.start_s,
                    b.count,
                    num(b.p50, 0),
                    num(b.p99, 0)
                );
            }
        }
        let _ = writeln!(out, "\n## How to read it\n");
        let _ = writeln!(out, "{NOTES}");
        out
    }

    fn latency_vs_rate(&self) -> Chart {
        let steps = &self.steps;
        let series =
            |name: &str, color, dashed, value: &dyn Fn(&StepReport) -> Option<f64>| Series {
                name: name.to_owned(),
                points: steps.iter().map(|s| (s.offered_rate, value(s))).collect(),
                color,
                dashed,
            };
        let chain = |s: &StepReport, p99: bool| {
            let l = &s.chain.as_ref()?.latency;
            if p99 {
                l.p99
            } else {
                l.p50
            }
        };
        Chart {
            title: "Saga and pure-broker chain latency vs offered rate".into(),
            x_label: "offered rate (orders/s; chain: messages/s)".into(),
            y_label: "latency (ms, log scale)".into(),
            y_scale: Scale::Log,
            series: vec![
                series("saga p50", "#1f77b4", false, &|s| s.saga.p50),
                series("saga p99", "#1f77b4", true, &|s| s.saga.p99),
                series("chain p50", "#ff7f0e", false, &|s| chain(s, false)),
                series("chain p99", "#ff7f0e", true, &|s| chain(s, true)),
            ],
        }
    }

    fn latency_over_time(soak: &StepReport) -> Chart {
        let series = |name: &str, color, dashed, value: fn(&Bucket) -> Option<f64>| Series {
            name: name.to_owned(),
            points: soak
                .buckets
                .iter()
                .map(|b| (b.start_s + BUCKET_S / 2.0, value(b)))
                .collect(),
            color,
            dashed,
        };
        Chart {
            title: format!(
                "Soak at {} orders/s: saga latency by order creation time",
                svg::label(soak.offered_rate)
            ),
            x_label: format!("seconds since the soak started ({BUCKET_S:.0} s buckets)"),
            y_label: "saga latency (ms)".into(),
            y_scale: Scale::Linear,
            series: vec![
                series("p50", "#1f77b4", false, |b| b.p50),
                series("p99", "#d62728", true, |b| b.p99),
            ],
        }
    }

    /// Writes results.json, report.md and the charts into `dir`.
    pub fn write(&self, dir: &Path) -> Result<()> {
        let write = |name: &str, text: String| {
            let path = dir.join(name);
            std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))
        };
        write("results.json", serde_json::to_string_pretty(self)? + "\n")?;
        write("report.md", self.markdown())?;
        write("latency-vs-rate.svg", svg::render(&self.latency_vs_rate()))?;
        if let Some(soak) = &self.soak {
            write(
                "latency-over-time.svg",
                svg::render(&Self::latency_over_time(soak)),
            )?;
        }
        Ok(())
    }
}

const NOTES: &str = "\
- Open loop: each step sends POST /orders at a fixed schedule (a request every 1/rate s, \
  sent on time however slow earlier responses are); a response other than 202 is an error.
- Saga latency is `updated_at - created_at` of each order in the order database: created_at is \
  `now()` of the transaction that inserted the order (the POST), updated_at the \
  `clock_timestamp()` of the change that made it terminal (CONFIRMED/CANCELLED/FAILED); with \
  an order service from before that change (`now()`), the start of the terminal transaction.
- Achieved = terminal orders of the step / (last terminal updated_at - first POST).
- A step ends when every order of it is terminal, every outbox is published and the inboxes \
  stopped growing (or after --quiet-timeout: then it is \"unfinished\").
- Idle: the same counters over a few seconds with no orders, before the first step: the \
  background commits and CPU included in every step's figures.
- Events/saga: outbox rows written in the four databases during the step per accepted order. \
  Commits/saga: `xact_commit` of the four databases (pg_stat_database) over the step, minus the \
  bench's own queries, per accepted order; it includes the services' background transactions \
  (outbox polls, the saga deadline sweep). Commits/s: the same over the step's duration.
- The chain is producer -> topic -> relay -> ... -> sink on the same broker, with as many consume \
  hops as the saga (--hops), each relay its own consumer group and idempotent producer (the \
  services' client settings and fetch wait), offsets stored after each forward was \
  acknowledged; run right after the step at the same message rate (one message per saga) and \
  duration. Ratios are saga / chain.
- CPU% is CPU time over the step's wall time (first POST to quiet) in % of one core; RSS is the \
  largest resident set sampled once a second. PostgreSQL counts the postmaster and all its \
  backends (shared memory counted once); broker and PostgreSQL are only measured when private.";

#[cfg(test)]
mod tests {
    use super::*;
    use crate::workload::Request;
    use uuid::Uuid;

    fn at(ms: i64) -> DateTime<Utc> {
        DateTime::from_timestamp_millis(1_700_000_000_000 + ms).unwrap()
    }

    fn row(status: &str, reason: Option<&str>, created: i64, updated: i64) -> OrderRow {
        OrderRow {
            status: status.into(),
            cancellation_reason: reason.map(Into::into),
            failed_step: None,
            created_at: at(created),
            updated_at: at(updated),
        }
    }

    fn step(soak: bool) -> StepReport {
        let load = Load {
            started_at: at(0),
            requests: vec![
                Request {
                    lag_ms: 0.0,
                    latency_ms: 5.0,
                    status: 202,
                    order_id: Some(Uuid::new_v4()),
                    cancel_status: None,
                },
                Request {
                    lag_ms: 0.5,
                    latency_ms: 7.0,
                    status: 202,
                    order_id: Some(Uuid::new_v4()),
                    cancel_status: Some(202),
                },
                Request {
                    lag_ms: 1.0,
                    latency_ms: 9.0,
                    status: 503,
                    order_id: None,
                    cancel_status: None,
                },
                Request {
                    lag_ms: 1.5,
                    latency_ms: 30000.0,
                    status: 0,
                    order_id: None,
                    cancel_status: None,
                },
            ],
        };
        let rows = [
            row("CONFIRMED", None, 10, 610),
            row("CANCELLED", Some("cancelled_by_customer"), 500, 1_000),
        ];
        StepReport::compute(StepInput {
            label: "2/s".into(),
            soak,
            rate: 2.0,
            duration_s: 2.0,
            load: &load,
            quiet: Quiet {
                finished: true,
                pending_orders: 0,
                unpublished: 0,
                waited_s: 1.0,
            },
            rows: &rows,
            before: DbCounters {
                outbox_rows: 100,
                commits: 1_000,
                own_queries: 10,
            },
            after: DbCounters {
                outbox_rows: 110,
                commits: 1_040,
                own_queries: 20,
            },
            window_s: 3.0,
            usage: vec![Usage {
                name: "order".into(),
                cpu_seconds: Some(0.3),
                cpu_percent: Some(10.0),
                peak_rss_mib: Some(20.0),
            }],
            commit_bound: Some(100.0),
        })
    }

    #[test]
    fn a_step_is_computed_from_its_observations() {
        let step = step(false);
        assert_eq!((step.sent, step.accepted, step.errors), (4, 2, 2));
        assert_eq!(step.errors_by_status["503"], 1);
        assert_eq!(step.errors_by_status["none"], 1);
        assert_eq!(step.cancel_statuses["202"], 1);
        assert_eq!(step.terminal, 2);
        assert_eq!(step.saga.p50, Some(500.0));
        assert_eq!(step.saga.max, Some(600.0));
        // Two terminal orders, the last at 1.0 s after the first POST.
        assert_eq!(step.achieved_rate, Some(2.0));
        assert_eq!(
            step.http.count, 3,
            "no-response requests have no HTTP latency"
        );
        assert_eq!(step.outcomes["CANCELLED/cancelled_by_customer"], 1);
        assert_eq!(step.events_per_saga, Some(5.0));
        // 40 commits, 10 of them the bench's own.
        assert_eq!(step.commits_per_saga, Some(15.0));
        assert_eq!(step.commits_per_s, Some(10.0));
        assert_eq!(step.commit_bound_share, Some(0.1));
        assert!(step.buckets.is_empty() && step.flatness.is_none());
    }

    #[test]
    fn a_soak_has_buckets_and_a_flatness_check() {
        let step = step(true);
        assert_eq!(step.buckets.len(), 1);
        assert_eq!(step.buckets[0].count, 2);
        assert!(step.flatness.is_some());
    }

    fn report() -> Report {
        let mut step = step(false);
        step.set_chain(Ok(ChainResult {
            hops: 4,
            rate: 2.0,
            sent: 4,
            received: 4,
            send_errors: 0,
            finished: true,
            latency: Summary::of(&[100.0, 250.0]),
            setup_s: 3.0,
        }));
        Report {
            settings: Settings {
                run_id: "abc".into(),
                started_at: at(0),
                rates: vec![2.0],
                duration_s: 2,
                soak_rate: None,
                soak_duration_s: 0,
                mix: Mix::Mixed,
                fetch_wait_ms: 10,
                hops: 4,
                quiet_timeout_s: 120,
                warmup_orders: 0,
                customers: 1,
                products: 1,
                topic_prefix: "bench-abc.".into(),
                infra: InfraInfo {
                    postgres: "private cluster".into(),
                    postgres_settings: BTreeMap::from([("fsync".into(), "on".into())]),
                    postgres_version: "15".into(),
                    broker_address: "127.0.0.1:9092".into(),
                    broker: "tansu (private)".into(),
                },
                nproc: 2,
                git_commit: None,
                git_dirty: None,
                service_env: BTreeMap::new(),
            },
            commit_bound: None,
            commit_bound_error: None,
            idle: Some(IdleReport::compute(
                5.0,
                DbCounters {
                    outbox_rows: 0,
                    commits: 100,
                    own_queries: 5,
                },
                DbCounters {
                    outbox_rows: 0,
                    commits: 160,
                    own_queries: 15,
                },
                Vec::new(),
            )),
            warmup: None,
            steps: vec![step],
            soak: None,
            finished_at: at(10_000),
        }
    }

    #[test]
    fn the_table_has_a_row_per_step_and_a_cell_per_column() {
        let report = report();
        let table = report.table();
        let lines: Vec<&str> = table.lines().collect();
        assert_eq!(lines.len(), 3);
        let columns = lines[0].matches('|').count();
        assert_eq!(columns, 18 + 2 * processes().count() + 1);
        assert!(lines.iter().all(|l| l.matches('|').count() == columns));
        // saga p50 500 over chain p50 100.
        assert!(lines[2].contains("| 5.00 |"), "{}", lines[2]);
        assert!(report.summary().contains("CONFIRMED 1"));
        assert!(
            report.summary().contains("10 commits/s"),
            "{}",
            report.summary()
        );
    }

    #[test]
    fn the_files_are_written() {
        let dir = std::env::temp_dir().join(format!("bench-report-test-{}", Uuid::new_v4()));
        std::fs::create_dir_all(&dir).unwrap();
        report().write(&dir).unwrap();
        let json: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(dir.join("results.json")).unwrap())
                .unwrap();
        assert_eq!(json["steps"][0]["accepted"], 2);
        assert!(std::fs::read_to_string(dir.join("report.md"))
            .unwrap()
            .contains("| offered/s |"));
        assert!(std::fs::read_to_string(dir.join("latency-vs-rate.svg"))
            .unwrap()
            .contains("chain p50"));
        assert!(!dir.join("latency-over-time.svg").exists());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
