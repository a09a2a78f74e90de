//! The load: seeding over HTTP, open-loop `POST /orders` at a fixed schedule, and waiting for
//! quiet (every order of a step terminal, every outbox drained), with the database probes
//! these need.

use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use chrono::{DateTime, Utc};
use devenv::Stop;
use serde_json::{json, Value};
use shared::topology::SERVICES;
use sqlx::postgres::PgPoolOptions;
use sqlx::PgPool;
use tokio::sync::mpsc;
use tokio::time::MissedTickBehavior;
use uuid::Uuid;

use crate::config::Mix;
use crate::stack::{database_name, Databases, Services};
use crate::stats::Summary;

/// Most stock a product may hold (inventory's `MAX_STOCK`).
pub const MAX_STOCK: i64 = 1_000_000;
const PRICE_CENTS: i64 = 100;
/// The largest balance an account may open with (payment's `MAX_BALANCE_CENTS`).
const RICH_BALANCE_CENTS: i64 = 1_000_000_000_000;
/// The sku of the product with no stock (`--mix mixed`).
const SOLD_OUT_SKU: &str = "sold-out";
/// The customer whose account cannot pay (`--mix mixed`).
const POOR_CUSTOMER: &str = "poor";

/// What one order is meant to end as.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// CONFIRMED.
    Happy,
    /// CANCELLED, payment_declined: the customer's account has no money.
    Declined,
    /// CANCELLED, shipping_unavailable: shipped to `AQ`.
    Unshippable,
    /// CANCELLED, out_of_stock: the product has no stock.
    OutOfStock,
    /// CANCELLED, cancelled_by_customer: `POST /orders/{id}/cancel` right after the 202.
    Cancelled,
}

/// The kind of the `index`-th order of a run: with `mixed`, of every ten orders six are happy
/// and one is each of the other kinds, interleaved.
pub fn kind(mix: Mix, index: u64) -> Kind {
    match (mix, index % 10) {
        (Mix::Happy, _) => Kind::Happy,
        (Mix::Mixed, 1) => Kind::Declined,
        (Mix::Mixed, 3) => Kind::Unshippable,
        (Mix::Mixed, 5) => Kind::OutOfStock,
        (Mix::Mixed, 7) => Kind::Cancelled,
        (Mix::Mixed, _) => Kind::Happy,
    }
}

/// The requests of a step at `rate` per second for `duration`.
pub fn order_count(rate: f64, duration: Duration) -> u64 {
    (rate * duration.as_secs_f64()).round().max(1.0) as u64
}

/// The HTTP APIs of the services.
#[derive(Clone)]
pub struct Api {
    http: reqwest::Client,
    order: String,
    payment: String,
    inventory: String,
}

impl Api {
    pub fn new(http: reqwest::Client, services: &Services) -> Self {
        Self {
            http,
            order: services.url("order"),
            payment: services.url("payment"),
            inventory: services.url("inventory"),
        }
    }

    async fn post(&self, url: String, body: Value, expect: u16) -> Result<Value> {
        let response = self
            .http
            .post(&url)
            .json(&body)
            .send()
            .await
            .with_context(|| format!("POST {url}"))?;
        let status = response.status().as_u16();
        let body: Value = response.json().await.unwrap_or(Value::Null);
        ensure!(status == expect, "POST {url}: {status} {body}");
        Ok(body)
    }

    async fn create_product(&self, sku: &str, stock: i64) -> Result<()> {
        let body = json!({"sku": sku, "name": sku, "price_cents": PRICE_CENTS, "stock": stock});
        self.post(format!("{}/products", self.inventory), body, 201)
            .await
            .map(drop)
    }

    async fn available(&self, sku: &str) -> Result<i64> {
        let url = format!("{}/products/{sku}", self.inventory);
        let product: Value = self.http.get(&url).send().await?.json().await?;
        product["available"]
            .as_i64()
            .with_context(|| format!("GET {url}: {product}"))
    }

    async fn restock(&self, sku: &str, quantity: i64) -> Result<()> {
        let url = format!("{}/products/{sku}/restock", self.inventory);
        self.post(url, json!({"quantity": quantity}), 200)
            .await
            .map(drop)
    }

    async fn open_account(&self, customer: &str, balance_cents: i64) -> Result<()> {
        let body = json!({"customer_id": customer, "balance_cents": balance_cents});
        self.post(format!("{}/accounts", self.payment), body, 201)
            .await
            .map(drop)
    }
}

/// The products and accounts orders use.
pub struct Seed {
    customers: Vec<String>,
    skus: Vec<String>,
}

impl Seed {
    /// Rich accounts and well-stocked products; for `mixed` also the poor account and the
    /// sold-out product.
    pub async fn create(api: &Api, customers: u32, products: u32, mix: Mix) -> Result<Self> {
        let seed = Self {
            customers: (1..=customers).map(|i| format!("rich-{i}")).collect(),
            skus: (1..=products).map(|i| format!("sku-{i}")).collect(),
        };
        for customer in &seed.customers {
            api.open_account(customer, RICH_BALANCE_CENTS).await?;
        }
        for sku in &seed.skus {
            api.create_product(sku, MAX_STOCK).await?;
        }
        if mix == Mix::Mixed {
            api.open_account(POOR_CUSTOMER, 0).await?;
            api.create_product(SOLD_OUT_SKU, 0).await?;
        }
        Ok(seed)
    }

    /// Units each product must hold for `orders` more orders.
    fn need_per_product(&self, orders: u64) -> i64 {
        i64::try_from(orders.div_ceil(self.skus.len() as u64)).unwrap_or(i64::MAX)
    }

    /// Restocks every product that holds fewer units than `orders` more orders need (up to
    /// the most a product may hold).
    pub async fn top_up(&self, api: &Api, orders: u64) -> Result<()> {
        let need = self.need_per_product(orders).min(MAX_STOCK);
        for sku in &self.skus {
            let available = api.available(sku).await?;
            if available < need {
                api.restock(sku, MAX_STOCK - available).await?;
            }
        }
        Ok(())
    }

    /// Whether `orders` need more than half of what a product can hold: then stock is also
    /// topped up during the step ([`Seed::restocker`]).
    pub fn needs_restocking_during(&self, orders: u64) -> bool {
        self.need_per_product(orders) > MAX_STOCK / 2
    }

    /// Every 2 s, restocks each product that is below half of the most it may hold.
    pub fn restocker(&self, api: &Api) -> tokio::task::JoinHandle<()> {
        let (api, skus) = (api.clone(), self.skus.clone());
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_secs(2)).await;
                for sku in &skus {
                    let restocked = async {
                        let available = api.available(sku).await?;
                        if available < MAX_STOCK / 2 {
                            api.restock(sku, MAX_STOCK - available).await?;
                        }
                        anyhow::Ok(())
                    };
                    if let Err(error) = restocked.await {
                        eprintln!("bench: restocking {sku} failed: {error:#}");
                    }
                }
            }
        })
    }

    fn body(&self, kind: Kind, index: u64) -> Value {
        let customer = match kind {
            Kind::Declined => POOR_CUSTOMER,
            _ => &self.customers[(index % self.customers.len() as u64) as usize],
        };
        let sku = match kind {
            Kind::OutOfStock => SOLD_OUT_SKU,
            _ => &self.skus[(index % self.skus.len() as u64) as usize],
        };
        let country = match kind {
            Kind::Unshippable => "AQ",
            _ => "FR",
        };
        json!({
            "customer_id": customer,
            "items": [{"sku": sku, "quantity": 1}],
            "shipping_address": {"country": country, "city": "Lyon", "line1": "1 rue de la Paix"},
        })
    }
}

/// One `POST /orders` of a step.
#[derive(Debug, Clone)]
pub struct Request {
    /// How late it was sent, against its place in the schedule (the bench keeping up).
    pub lag_ms: f64,
    pub latency_ms: f64,
    /// HTTP status; 0 when no response came (connection error or 30 s timeout).
    pub status: u16,
    pub order_id: Option<Uuid>,
    /// Status of the customer's cancel request, for [`Kind::Cancelled`].
    pub cancel_status: Option<u16>,
}

/// What a step sent.
pub struct Load {
    pub started_at: DateTime<Utc>,
    pub requests: Vec<Request>,
}

impl Load {
    pub fn accepted_ids(&self) -> Vec<Uuid> {
        self.requests.iter().filter_map(|r| r.order_id).collect()
    }
}

#[derive(Default)]
struct Counters {
    sent: AtomicU64,
    accepted: AtomicU64,
    errors: AtomicU64,
}

/// Sends `count` orders at `rate` per second, on schedule however slow the responses are:
/// each request runs in its own task, and ticks missed by a busy runtime are sent at once
/// (`MissedTickBehavior::Burst`). `first_index` numbers the orders across the run (it picks
/// their kind and customer). Prints progress to stderr once a second.
#[allow(clippy::too_many_arguments)]
pub async fn run_load(
    api: &Api,
    seed: &Seed,
    probe: &Probe,
    mix: Mix,
    rate: f64,
    count: u64,
    first_index: u64,
    label: &str,
    stop: &Stop,
) -> Result<Load> {
    let counters = Arc::new(Counters::default());
    let (accepted_tx, accepted_rx) = mpsc::unbounded_channel();
    let seed_body = |index| seed.body(kind(mix, index), index);
    let mut interval = tokio::time::interval(Duration::from_secs_f64(1.0 / rate));
    interval.set_missed_tick_behavior(MissedTickBehavior::Burst);
    let started = Instant::now();
    let started_at = Utc::now();
    let mut tasks = Vec::with_capacity(usize::try_from(count).unwrap_or(0));
    let progress = Progress {
        label: label.to_owned(),
        count,
        counters: Arc::clone(&counters),
        started,
    };
    let sending = async {
        for n in 0..count {
            interval.tick().await;
            let index = first_index + n;
            let cancel = kind(mix, index) == Kind::Cancelled;
            let due = started + Duration::from_secs_f64(n as f64 / rate);
            let task = tokio::spawn(place_order(
                api.clone(),
                seed_body(index),
                cancel,
                due,
                Arc::clone(&counters),
                accepted_tx.clone(),
            ));
            tasks.push(task);
        }
        drop(accepted_tx);
        let mut requests = Vec::with_capacity(tasks.len());
        for task in tasks {
            requests.push(task.await.context("a request task panicked")?);
        }
        anyhow::Ok(requests)
    };
    let requests = tokio::select! {
        result = sending => result?,
        () = progress.run(probe, accepted_rx) => bail!("progress reporting ended"),
        _ = stop.wait() => bail!("interrupted"),
    };
    Ok(Load {
        started_at,
        requests,
    })
}

async fn place_order(
    api: Api,
    body: Value,
    cancel: bool,
    due: Instant,
    counters: Arc<Counters>,
    accepted: mpsc::UnboundedSender<Uuid>,
) -> Request {
    let sent = Instant::now();
    counters.sent.fetch_add(1, Ordering::Relaxed);
    let response = api
        .http
        .post(format!("{}/orders", api.order))
        .json(&body)
        .send()
        .await;
    let (status, order_id) = match response {
        Ok(response) => {
            let status = response.status().as_u16();
            let body: Value = response.json().await.unwrap_or(Value::Null);
            let id = body["order_id"].as_str().and_then(|s| s.parse().ok());
            (status, id.filter(|_| status == 202))
        }
        Err(_) => (0, None),
    };
    let latency_ms = sent.elapsed().as_secs_f64() * 1000.0;
    match order_id {
        Some(id) => {
            counters.accepted.fetch_add(1, Ordering::Relaxed);
            let _ = accepted.send(id);
        }
        None => {
            counters.errors.fetch_add(1, Ordering::Relaxed);
        }
    }
    let mut cancel_status = None;
    if let (true, Some(id)) = (cancel, order_id) {
        let url = format!("{}/orders/{id}/cancel", api.order);
        cancel_status = Some(match api.http.post(&url).send().await {
            Ok(response) => response.status().as_u16(),
            Err(_) => 0,
        });
    }
    Request {
        lag_ms: sent.saturating_duration_since(due).as_secs_f64() * 1000.0,
        latency_ms,
        status,
        order_id,
        cancel_status,
    }
}

/// The once-a-second progress line of a step.
struct Progress {
    label: String,
    count: u64,
    counters: Arc<Counters>,
    started: Instant,
}

/// Orders looked up per progress tick (the oldest that are not known to be terminal).
const PROGRESS_LOOKUPS: usize = 2000;

impl Progress {
    /// Prints a line a second until dropped (when the sending ends). The orders it looks up
    /// are the oldest accepted ones it has not yet seen terminal.
    async fn run(&self, probe: &Probe, mut accepted: mpsc::UnboundedReceiver<Uuid>) {
        let mut open: VecDeque<Uuid> = VecDeque::new();
        let mut done = 0u64;
        let mut interval = tokio::time::interval(Duration::from_secs(1));
        interval.tick().await;
        loop {
            interval.tick().await;
            while let Ok(id) = accepted.try_recv() {
                open.push_back(id);
            }
            let batch: Vec<Uuid> = open.iter().take(PROGRESS_LOOKUPS).copied().collect();
            let finished = match probe.terminal_latencies(&batch).await {
                Ok(finished) => finished,
                Err(error) => {
                    eprintln!("bench: progress: {error:#}");
                    continue;
                }
            };
            let finished_ids: std::collections::HashSet<Uuid> =
                finished.iter().map(|(id, _)| *id).collect();
            open.retain(|id| !finished_ids.contains(id));
            done += finished.len() as u64;
            let latencies: Vec<f64> = finished.iter().map(|(_, ms)| *ms).collect();
            let p50 = Summary::of(&latencies)
                .p50
                .map_or_else(|| "-".to_owned(), |ms| format!("{ms:.0} ms"));
            let sent = self.counters.sent.load(Ordering::Relaxed);
            let accepted_n = self.counters.accepted.load(Ordering::Relaxed);
            eprintln!(
                "bench: {} t={:>3}s sent {sent}/{} accepted {accepted_n} errors {} | sagas done \
                 {done} in flight {} | saga p50 {p50} (finished in the last second)",
                self.label,
                self.started.elapsed().as_secs(),
                self.count,
                self.counters.errors.load(Ordering::Relaxed),
                accepted_n.saturating_sub(done),
            );
        }
    }
}

/// An order of a step as the order database holds it.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct OrderRow {
    pub status: String,
    pub cancellation_reason: Option<String>,
    pub failed_step: Option<String>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// Database-wide counters of the four service databases at one moment.
#[derive(Debug, Clone, Copy, Default)]
pub struct DbCounters {
    /// Rows in the four outboxes, unpublished and published (pruning after OUTBOX_RETENTION_MS
    /// would make a run longer than that undercount).
    pub outbox_rows: i64,
    /// `xact_commit` of the four databases (pg_stat_database).
    pub commits: i64,
    /// Queries the bench itself ran on them (each one a commit), to subtract.
    pub own_queries: i64,
}

/// Connections to the four service databases and the server's admin database, counting the
/// queries run on the service databases (each is a transaction of its own there).
pub struct Probe {
    pools: BTreeMap<&'static str, PgPool>,
    admin: PgPool,
    names: Vec<String>,
    own: AtomicU64,
}

impl Probe {
    pub async fn connect(admin_url: &str, databases: &Databases) -> Result<Self> {
        let options = PgPoolOptions::new()
            .max_connections(2)
            .acquire_timeout(Duration::from_secs(10))
            // No ping before each query: it would be one more transaction to subtract.
            .test_before_acquire(false);
        let mut pools = BTreeMap::new();
        for (service, url) in &databases.urls {
            let pool = options.clone().connect(url).await.with_context(|| {
                format!(
                    "connecting to the {service} database {}",
                    database_name(url)
                )
            })?;
            pools.insert(*service, pool);
        }
        let admin = options
            .connect(admin_url)
            .await
            .context("connecting to PostgreSQL")?;
        Ok(Self {
            pools,
            admin,
            names: databases.names(),
            own: AtomicU64::new(0),
        })
    }

    fn pool(&self, service: &str) -> &PgPool {
        self.own.fetch_add(1, Ordering::Relaxed);
        &self.pools[service]
    }

    /// The order database's `now()` (the clock of `created_at` and `updated_at`).
    pub async fn now(&self) -> Result<DateTime<Utc>> {
        Ok(sqlx::query_scalar("select now()")
            .fetch_one(self.pool("order"))
            .await?)
    }

    /// Orders still PENDING among those created from `from` to `to` (uses the partial index
    /// on pending orders by age).
    pub async fn pending_between(&self, from: DateTime<Utc>, to: DateTime<Utc>) -> Result<i64> {
        Ok(sqlx::query_scalar(
            "select count(*) from orders
             where status = 'PENDING' and created_at >= $1 and created_at <= $2",
        )
        .bind(from)
        .bind(to)
        .fetch_one(self.pool("order"))
        .await?)
    }

    /// Outbox rows not yet published, over the four databases.
    pub async fn unpublished(&self) -> Result<i64> {
        self.sum("select count(*) from outbox").await
    }

    async fn sum(&self, query: &str) -> Result<i64> {
        let mut total = 0;
        for service in SERVICES {
            let n: i64 = sqlx::query_scalar(query)
                .fetch_one(self.pool(service.name))
                .await?;
            total += n;
        }
        Ok(total)
    }

    pub async fn counters(&self) -> Result<DbCounters> {
        let outbox_rows = self
            .sum("select (select count(*) from outbox) + (select count(*) from outbox_published)")
            .await?;
        let own_queries = i64::try_from(self.own.load(Ordering::Relaxed)).unwrap_or(i64::MAX);
        let commits: Option<i64> = sqlx::query_scalar(
            "select sum(xact_commit)::bigint from pg_stat_database where datname = any($1)",
        )
        .bind(&self.names)
        .fetch_one(&self.admin)
        .await?;
        Ok(DbCounters {
            outbox_rows,
            commits: commits.unwrap_or(0),
            own_queries,
        })
    }

    /// Of `ids`, the orders that are terminal, with their saga latency in milliseconds.
    pub async fn terminal_latencies(&self, ids: &[Uuid]) -> Result<Vec<(Uuid, f64)>> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let rows: Vec<(Uuid, DateTime<Utc>, DateTime<Utc>)> = sqlx::query_as(
            "select order_id, created_at, updated_at from orders
             where order_id = any($1) and status <> 'PENDING'",
        )
        .bind(ids)
        .fetch_all(self.pool("order"))
        .await?;
        Ok(rows
            .into_iter()
            .map(|(id, created, updated)| (id, millis(updated - created)))
            .collect())
    }

    pub async fn orders(&self, ids: &[Uuid]) -> Result<Vec<OrderRow>> {
        Ok(sqlx::query_as(
            "select status, cancellation_reason, failed_step, created_at, updated_at
             from orders where order_id = any($1)",
        )
        .bind(ids)
        .fetch_all(self.pool("order"))
        .await?)
    }

    pub async fn close(self) {
        for pool in self.pools.values() {
            pool.close().await;
        }
        self.admin.close().await;
    }
}

pub fn millis(delta: chrono::TimeDelta) -> f64 {
    delta
        .num_microseconds()
        .map_or(f64::INFINITY, |us| us as f64 / 1000.0)
}

/// How waiting for quiet ended.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Quiet {
    pub finished: bool,
    /// Orders of the step still PENDING (when not finished).
    pub pending_orders: i64,
    /// Outbox rows still unpublished (when not finished).
    pub unpublished: i64,
    /// Seconds from the end of the sending until quiet (or the timeout).
    pub waited_s: f64,
}

/// Waits until no order created from `from` to `to` is PENDING and no outbox row is
/// unpublished, then until the inboxes stop growing (the consumption of the last events, such
/// as `order.confirmed.v1` by inventory, belongs to the step); at most `timeout`.
pub async fn wait_quiet(
    probe: &Probe,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
    timeout: Duration,
    stop: &Stop,
) -> Result<Quiet> {
    let waiting = async {
        let started = Instant::now();
        let mut last_print = Instant::now();
        loop {
            let pending_orders = probe.pending_between(from, to).await?;
            let unpublished = probe.unpublished().await?;
            if pending_orders == 0 && unpublished == 0 {
                settle(probe).await?;
                return Ok(Quiet {
                    finished: true,
                    pending_orders,
                    unpublished,
                    waited_s: started.elapsed().as_secs_f64(),
                });
            }
            if started.elapsed() > timeout {
                return Ok(Quiet {
                    finished: false,
                    pending_orders,
                    unpublished,
                    waited_s: started.elapsed().as_secs_f64(),
                });
            }
            if last_print.elapsed() >= Duration::from_secs(1) {
                last_print = Instant::now();
                eprintln!(
                    "bench: waiting for quiet ({:.0} s): {pending_orders} orders pending, \
                     {unpublished} outbox rows unpublished",
                    started.elapsed().as_secs_f64()
                );
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    };
    stop.guard(waiting).await
}

/// Until the inbox row count stays the same for 1.2 s (at most 10 s): then the last
/// consumptions have committed and PostgreSQL has flushed their statistics (at most a second
/// after a backend's last transaction).
async fn settle(probe: &Probe) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut last = probe.sum("select count(*) from inbox").await?;
    while Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(1200)).await;
        let now = probe.sum("select count(*) from inbox").await?;
        if now == last {
            break;
        }
        last = now;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_mixed_mix_is_sixty_percent_happy_and_ten_percent_of_each_other_kind() {
        let kinds: Vec<Kind> = (0..1000).map(|i| kind(Mix::Mixed, i)).collect();
        let share = |k: Kind| kinds.iter().filter(|&&x| x == k).count();
        assert_eq!(share(Kind::Happy), 600);
        for k in [
            Kind::Declined,
            Kind::Unshippable,
            Kind::OutOfStock,
            Kind::Cancelled,
        ] {
            assert_eq!(share(k), 100, "{k:?}");
        }
        assert!((0..100).all(|i| kind(Mix::Happy, i) == Kind::Happy));
    }

    #[test]
    fn order_counts_round_to_the_schedule() {
        assert_eq!(order_count(20.0, Duration::from_secs(10)), 200);
        assert_eq!(order_count(0.5, Duration::from_secs(3)), 2);
        assert_eq!(order_count(0.01, Duration::from_secs(1)), 1);
    }

    #[test]
    fn bodies_follow_the_kind() {
        let seed = Seed {
            customers: vec!["rich-1".into(), "rich-2".into()],
            skus: vec!["sku-1".into()],
        };
        let happy = seed.body(Kind::Happy, 3);
        assert_eq!(happy["customer_id"], "rich-2");
        assert_eq!(happy["shipping_address"]["country"], "FR");
        assert_eq!(seed.body(Kind::Declined, 0)["customer_id"], POOR_CUSTOMER);
        assert_eq!(
            seed.body(Kind::Unshippable, 0)["shipping_address"]["country"],
            "AQ"
        );
        assert_eq!(
            seed.body(Kind::OutOfStock, 0)["items"][0]["sku"],
            SOLD_OUT_SKU
        );
        assert!(!seed.needs_restocking_during(500_000));
        assert!(seed.needs_restocking_during(500_001));
    }

    #[test]
    fn millis_of_a_time_delta() {
        assert_eq!(millis(chrono::TimeDelta::microseconds(1500)), 1.5);
    }
}
