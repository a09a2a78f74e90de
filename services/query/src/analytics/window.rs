//! Event-time tumbling windows over the saga's events, as pure functions (no I/O).
//!
//! Events of one order arrive on four topics in any interleaving, and terminal events carry
//! neither the order's creation time, nor its total, nor its lines. So every order keeps
//! [`OrderFacts`]: each fact is the earliest of its kind by event time (ties broken by value),
//! which makes applying an observation commutative, associative and idempotent. An order's
//! contribution to the windows is a pure function of its facts ([`contributions`]); applying an
//! event yields the difference between the contributions after and before it ([`observe`]), so
//! the windows hold the same totals whatever order the events came in.
//!
//! What each metric counts, in the window of which event time:
//! - `orders_placed`: `order.created`, at its time.
//! - `orders_confirmed`, `revenue_cents` (the order's total: the reservation's `total_cents`,
//!   else the charged `amount_cents`) and `units_by_sku` (the quantities of the order's lines
//!   as placed): `order.confirmed`, at its time. A confirmed order that later fails still
//!   counts here: it was confirmed.
//! - `orders_cancelled` by reason: `order.cancelled`, at its time.
//! - `orders_failed`: the order ends `FAILED` exactly when the order service makes it so: a
//!   confirmed order with any compensation (`inventory.released`, `payment.refunded`,
//!   `shipment.cancelled`: a hold expired after the confirmation), at the earliest one's time;
//!   an order never confirmed with `inventory.release_failed` or `payment.refund_failed`, at
//!   the earliest one's time.
//! - `saga_duration_ms`: from `order.created` to the saga's end (its confirmation or
//!   cancellation, else its failure), in the window of the end; exact percentiles from the
//!   multiset of durations in whole milliseconds.
//!
//! Outcome metrics need the order's `order.created`: an order the order service never had
//! (an orphan answered with `order.cancelled`) is not counted. `events` counts every event in
//! the window of its own time; `late_events` those that arrived once that window was closed
//! (they are still applied: nothing is dropped).
//!
//! The watermark is the latest event time seen minus the bounded out-of-orderness; a window
//! is closed once the watermark reaches its end plus the allowed lateness.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// Window size, out-of-orderness and allowed lateness, in milliseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WindowConfig {
    /// `ANALYTICS_WINDOW_MS`: the length of a tumbling window.
    pub window_ms: i64,
    /// `ANALYTICS_OUT_OF_ORDERNESS_MS`: how far behind the latest event time the watermark is.
    pub out_of_orderness_ms: i64,
    /// `ANALYTICS_ALLOWED_LATENESS_MS`: how long past its end (on the watermark) a window stays
    /// open.
    pub allowed_lateness_ms: i64,
}

impl Default for WindowConfig {
    fn default() -> Self {
        Self {
            window_ms: 60_000,
            out_of_orderness_ms: 5_000,
            allowed_lateness_ms: 30_000,
        }
    }
}

impl WindowConfig {
    /// The start (epoch milliseconds) of the window holding `at`.
    pub fn window_of(&self, at: DateTime<Utc>) -> i64 {
        self.window_of_ms(at.timestamp_millis())
    }

    /// The start of the window holding the instant `ms` (epoch milliseconds).
    pub fn window_of_ms(&self, ms: i64) -> i64 {
        ms.div_euclid(self.window_ms) * self.window_ms
    }

    /// The watermark given the latest event time seen.
    pub fn watermark(&self, max_event_time: Option<DateTime<Utc>>) -> Option<i64> {
        max_event_time.map(|max| max.timestamp_millis() - self.out_of_orderness_ms)
    }

    /// Whether the window starting at `window_start` is closed at `watermark`.
    pub fn is_closed(&self, window_start: i64, watermark: Option<i64>) -> bool {
        watermark.is_some_and(|wm| wm >= window_start + self.window_ms + self.allowed_lateness_ms)
    }
}

/// An event's time as PostgreSQL stores it (whole microseconds, truncated as the services
/// write it), so windows and durations agree with the write side's `order_timeline`.
pub fn event_time(occurred_at: DateTime<Utc>) -> DateTime<Utc> {
    DateTime::from_timestamp_micros(occurred_at.timestamp_micros()).unwrap_or(occurred_at)
}

/// What analytics reads from one saga event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Observation {
    /// `order.created` with its lines (sku, quantity).
    Created { lines: Vec<(String, i64)> },
    /// `inventory.reserved`.
    Reserved { total_cents: i64 },
    /// `payment.charged`.
    Charged { amount_cents: i64 },
    /// `order.confirmed`.
    Confirmed,
    /// `order.cancelled` with its reason.
    Cancelled { reason: String },
    /// `inventory.released`, `payment.refunded`, `shipment.cancelled`.
    Compensated,
    /// `inventory.release_failed`, `payment.refund_failed`.
    CompensationFailed,
    /// Any other event: counted in `events` only.
    Other,
}

/// One fact with the event time it was observed at; the earliest (then smallest) wins.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Stamped<T> {
    pub at: DateTime<Utc>,
    pub value: T,
}

/// What is known about one order, from whichever of its events arrived so far.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrderFacts {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created: Option<Stamped<Vec<(String, i64)>>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reserved_total: Option<Stamped<i64>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub charged_total: Option<Stamped<i64>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub confirmed: Option<Stamped<()>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cancelled: Option<Stamped<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub compensated: Option<Stamped<()>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub compensation_failed: Option<Stamped<()>>,
}

fn keep_first<T: Ord>(slot: &mut Option<Stamped<T>>, candidate: Stamped<T>) {
    if slot.as_ref().is_none_or(|held| candidate < *held) {
        *slot = Some(candidate);
    }
}

impl OrderFacts {
    /// These facts with `observation` (of an event at `at`) added.
    pub fn with(&self, at: DateTime<Utc>, observation: &Observation) -> Self {
        let mut next = self.clone();
        match observation {
            Observation::Created { lines } => keep_first(
                &mut next.created,
                Stamped {
                    at,
                    value: lines.clone(),
                },
            ),
            Observation::Reserved { total_cents } => keep_first(
                &mut next.reserved_total,
                Stamped {
                    at,
                    value: *total_cents,
                },
            ),
            Observation::Charged { amount_cents } => keep_first(
                &mut next.charged_total,
                Stamped {
                    at,
                    value: *amount_cents,
                },
            ),
            Observation::Confirmed => keep_first(&mut next.confirmed, Stamped { at, value: () }),
            Observation::Cancelled { reason } => keep_first(
                &mut next.cancelled,
                Stamped {
                    at,
                    value: reason.clone(),
                },
            ),
            Observation::Compensated => {
                keep_first(&mut next.compensated, Stamped { at, value: () })
            }
            Observation::CompensationFailed => {
                keep_first(&mut next.compensation_failed, Stamped { at, value: () })
            }
            Observation::Other => {}
        }
        next
    }

    /// The order's total: the reservation's, else the charge's.
    pub fn total_cents(&self) -> Option<i64> {
        self.reserved_total
            .as_ref()
            .or(self.charged_total.as_ref())
            .map(|total| total.value)
    }

    /// When the order became `FAILED`, if it did (see the module docs).
    pub fn failed_at(&self) -> Option<DateTime<Utc>> {
        match self.confirmed {
            Some(_) => self.compensated.as_ref().map(|c| c.at),
            None => self.compensation_failed.as_ref().map(|f| f.at),
        }
    }

    /// When the saga ended: its decision, else its failure.
    pub fn ended_at(&self) -> Option<DateTime<Utc>> {
        self.confirmed
            .as_ref()
            .map(|c| c.at)
            .or(self.cancelled.as_ref().map(|c| c.at))
            .or_else(|| self.failed_at())
    }
}

/// What a window counts, one value per key.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Metric {
    Placed,
    Confirmed,
    Cancelled(String),
    Failed,
    RevenueCents,
    Units(String),
    /// Sagas that took this many milliseconds.
    SagaDurationMs(i64),
    Events,
    LateEvents,
}

impl Metric {
    /// The metric's name and key as stored.
    pub fn to_parts(&self) -> (&'static str, String) {
        match self {
            Self::Placed => ("placed", String::new()),
            Self::Confirmed => ("confirmed", String::new()),
            Self::Cancelled(reason) => ("cancelled", reason.clone()),
            Self::Failed => ("failed", String::new()),
            Self::RevenueCents => ("revenue_cents", String::new()),
            Self::Units(sku) => ("units", sku.clone()),
            Self::SagaDurationMs(ms) => ("saga_duration_ms", ms.to_string()),
            Self::Events => ("events", String::new()),
            Self::LateEvents => ("late_events", String::new()),
        }
    }

    /// The metric of a stored name and key; `None` for one this build does not know.
    pub fn from_parts(name: &str, key: &str) -> Option<Self> {
        Some(match name {
            "placed" => Self::Placed,
            "confirmed" => Self::Confirmed,
            "cancelled" => Self::Cancelled(key.to_owned()),
            "failed" => Self::Failed,
            "revenue_cents" => Self::RevenueCents,
            "units" => Self::Units(key.to_owned()),
            "saga_duration_ms" => Self::SagaDurationMs(key.parse().ok()?),
            "events" => Self::Events,
            "late_events" => Self::LateEvents,
            _ => return None,
        })
    }
}

/// One cell of the windows: a metric of the window starting at `window_start` (epoch ms).
pub type Cell = (i64, Metric);

/// Changes to apply to the windows' cells.
pub type Deltas = BTreeMap<Cell, i64>;

/// Everything an order's facts put into the windows.
pub fn contributions(facts: &OrderFacts, config: &WindowConfig) -> Deltas {
    let mut cells = Deltas::new();
    let Some(created) = &facts.created else {
        return cells;
    };
    let mut add = |at: DateTime<Utc>, metric: Metric, value: i64| {
        *cells.entry((config.window_of(at), metric)).or_default() += value;
    };
    add(created.at, Metric::Placed, 1);
    if let Some(confirmed) = &facts.confirmed {
        add(confirmed.at, Metric::Confirmed, 1);
        if let Some(total) = facts.total_cents() {
            add(confirmed.at, Metric::RevenueCents, total);
        }
        for (sku, quantity) in &created.value {
            add(confirmed.at, Metric::Units(sku.clone()), *quantity);
        }
    }
    if let Some(cancelled) = &facts.cancelled {
        add(cancelled.at, Metric::Cancelled(cancelled.value.clone()), 1);
    }
    if let Some(failed_at) = facts.failed_at() {
        add(failed_at, Metric::Failed, 1);
    }
    if let Some(ended_at) = facts.ended_at() {
        let ms = (ended_at - created.at).num_milliseconds().max(0);
        add(ended_at, Metric::SagaDurationMs(ms), 1);
    }
    cells.retain(|_, value| *value != 0);
    cells
}

/// `after - before`, without the cells that did not change.
pub fn difference(before: &Deltas, after: &Deltas) -> Deltas {
    let mut delta = after.clone();
    for (cell, value) in before {
        *delta.entry(cell.clone()).or_default() -= value;
    }
    delta.retain(|_, value| *value != 0);
    delta
}

/// The outcome of observing one event of an order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Observed {
    pub facts: OrderFacts,
    pub deltas: Deltas,
    /// The event arrived after its own window closed.
    pub late: bool,
}

/// Applies an event at `at` (its `occurred_at`) to an order's facts, given the watermark when
/// it is processed: the new facts and the changes to the windows (including the event's own
/// `events` and, if late, `late_events` count).
pub fn observe(
    facts: &OrderFacts,
    at: DateTime<Utc>,
    observation: &Observation,
    watermark: Option<i64>,
    config: &WindowConfig,
) -> Observed {
    let next = facts.with(at, observation);
    let mut deltas = difference(&contributions(facts, config), &contributions(&next, config));
    let own = config.window_of(at);
    *deltas.entry((own, Metric::Events)).or_default() += 1;
    let late = config.is_closed(own, watermark);
    if late {
        *deltas.entry((own, Metric::LateEvents)).or_default() += 1;
    }
    Observed {
        facts: next,
        deltas,
        late,
    }
}

/// Percentiles of the sagas that ended in a window.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct DurationSummary {
    pub count: i64,
    pub p50_ms: Option<i64>,
    pub p95_ms: Option<i64>,
}

/// One window's metrics, read back from its cells.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WindowMetrics {
    pub placed: i64,
    pub confirmed: i64,
    pub cancelled: BTreeMap<String, i64>,
    pub failed: i64,
    pub revenue_cents: i64,
    pub units_by_sku: BTreeMap<String, i64>,
    /// Saga durations in milliseconds -> how many sagas took that long.
    pub durations: BTreeMap<i64, i64>,
    pub events: i64,
    pub late_events: i64,
}

impl WindowMetrics {
    /// Adds `value` to `metric`.
    pub fn add(&mut self, metric: &Metric, value: i64) {
        let keyed = |map: &mut BTreeMap<String, i64>, key: &String| {
            let entry = map.entry(key.clone()).or_default();
            *entry += value;
            if *entry == 0 {
                map.remove(key);
            }
        };
        match metric {
            Metric::Placed => self.placed += value,
            Metric::Confirmed => self.confirmed += value,
            Metric::Cancelled(reason) => keyed(&mut self.cancelled, reason),
            Metric::Failed => self.failed += value,
            Metric::RevenueCents => self.revenue_cents += value,
            Metric::Units(sku) => keyed(&mut self.units_by_sku, sku),
            Metric::SagaDurationMs(ms) => {
                let entry = self.durations.entry(*ms).or_default();
                *entry += value;
                if *entry == 0 {
                    self.durations.remove(ms);
                }
            }
            Metric::Events => self.events += value,
            Metric::LateEvents => self.late_events += value,
        }
    }

    /// Exact nearest-rank percentiles of the saga durations.
    pub fn saga_duration(&self) -> DurationSummary {
        let count: i64 = self.durations.values().sum();
        let percentile = |p: i64| -> Option<i64> {
            if count <= 0 {
                return None;
            }
            // Nearest rank: the smallest duration with at least ceil(p% of count) at or below.
            let rank = (p * count + 99) / 100;
            let mut seen = 0;
            self.durations.iter().find_map(|(ms, n)| {
                seen += n;
                (seen >= rank.max(1)).then_some(*ms)
            })
        };
        DurationSummary {
            count,
            p50_ms: percentile(50),
            p95_ms: percentile(95),
        }
    }

    /// The metrics without `events` and `late_events`, which depend on arrival order.
    pub fn outcomes(&self) -> Self {
        Self {
            events: 0,
            late_events: 0,
            ..self.clone()
        }
    }
}

/// Folds cells into windows, by window start.
pub fn fold_cells<'a>(
    cells: impl IntoIterator<Item = (&'a Cell, &'a i64)>,
) -> BTreeMap<i64, WindowMetrics> {
    let mut windows: BTreeMap<i64, WindowMetrics> = BTreeMap::new();
    for ((start, metric), value) in cells {
        windows.entry(*start).or_default().add(metric, *value);
    }
    windows
}

/// The whole computation in memory: per-order facts, cells and the latest event time. The
/// service keeps the same state in PostgreSQL; this is its specification, used by the tests.
#[derive(Debug, Clone, Default)]
pub struct Engine {
    pub config: WindowConfig,
    pub orders: BTreeMap<uuid::Uuid, OrderFacts>,
    pub cells: Deltas,
    pub max_event_time: Option<DateTime<Utc>>,
}

impl Engine {
    pub fn new(config: WindowConfig) -> Self {
        Self {
            config,
            ..Self::default()
        }
    }

    /// Applies one event; returns whether it was late.
    pub fn apply(
        &mut self,
        order_id: uuid::Uuid,
        at: DateTime<Utc>,
        observation: &Observation,
    ) -> bool {
        let facts = self.orders.entry(order_id).or_default();
        let watermark = self.config.watermark(self.max_event_time);
        let observed = observe(facts, at, observation, watermark, &self.config);
        *facts = observed.facts;
        for (cell, value) in observed.deltas {
            let entry = self.cells.entry(cell.clone()).or_default();
            *entry += value;
            if *entry == 0 {
                self.cells.remove(&cell);
            }
        }
        self.max_event_time = self.max_event_time.max(Some(at));
        observed.late
    }

    pub fn windows(&self) -> BTreeMap<i64, WindowMetrics> {
        fold_cells(&self.cells)
    }
}

#[cfg(test)]
#[path = "window_tests.rs"]
mod tests;
