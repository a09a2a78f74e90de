//! The seeded workload: products with limited stock, accounts with varied balances (and
//! customers without one), and orders of 1 to 3 lines, some to `AQ` (not served), some with an
//! unknown sku, some cancelled by the customer right after placing. Orders are placed over HTTP
//! at a steady pace with bounded concurrency; a request that fails because a service is down
//! (no connection, 5xx, timeout) is retried with the same Idempotency-Key until accepted, no
//! sooner than a 503's `Retry-After` asks.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use anyhow::bail;
use futures::StreamExt;
use serde_json::{json, Value};
use tokio::time::Instant;
use uuid::Uuid;

use super::{FaultSystem, Rng, Svc};

/// The sku of no product: some orders carry it.
pub const UNKNOWN_SKU: &str = "sku-unknown";

/// Served destinations used by the workload (all in the shipping service's default list).
const COUNTRIES: [&str; 6] = ["FR", "DE", "US", "GB", "JP", "IT"];
/// A request is retried for this long before the client gives up on it.
const GIVE_UP_AFTER: Duration = Duration::from_secs(180);

#[derive(Debug, Clone)]
pub struct Product {
    pub sku: String,
    pub price_cents: i64,
    pub stock: i32,
}

#[derive(Debug, Clone)]
pub struct Account {
    pub customer: String,
    pub balance_cents: i64,
}

/// What exists before the first order.
#[derive(Debug, Clone)]
pub struct Catalog {
    pub products: Vec<Product>,
    pub accounts: Vec<Account>,
    /// Every customer, with or without an account.
    pub customers: Vec<String>,
}

#[derive(Debug, Clone)]
pub struct PlannedOrder {
    pub n: usize,
    pub key: String,
    pub customer: String,
    pub items: Vec<(String, i32)>,
    pub country: String,
    /// Cancelled by the customer right after it is accepted.
    pub cancel: bool,
}

impl PlannedOrder {
    pub fn body(&self) -> Value {
        let items: Vec<Value> = self
            .items
            .iter()
            .map(|(sku, quantity)| json!({"sku": sku, "quantity": quantity}))
            .collect();
        json!({
            "customer_id": self.customer,
            "items": items,
            "shipping_address": {"country": self.country, "city": "Faultville"},
        })
    }
}

/// A generated workload.
#[derive(Debug, Clone)]
pub struct Workload {
    pub seed: u64,
    pub catalog: Catalog,
    pub orders: Vec<PlannedOrder>,
    /// Requests in flight at most.
    pub concurrency: usize,
    /// Orders are spread evenly over this long.
    pub duration: Duration,
}

impl Workload {
    pub fn generate(
        tag: &str,
        seed: u64,
        orders: usize,
        concurrency: usize,
        duration: Duration,
    ) -> Self {
        let mut rng = Rng::new(seed);
        let n_products = 10;
        let demand_per_product = (orders as f64 * 4.0 / n_products as f64).max(4.0);
        let products: Vec<Product> = (0..n_products)
            .map(|i| Product {
                sku: format!("sku-{i:02}"),
                price_cents: rng.between(150, 4_000),
                stock: rng.between(
                    (demand_per_product * 0.3) as i64,
                    (demand_per_product * 0.9) as i64,
                ) as i32,
            })
            .collect();
        let customers: Vec<String> = (0..40).map(|i| format!("customer-{i:02}")).collect();
        let mut accounts = Vec::new();
        for customer in &customers {
            if rng.chance(0.85) {
                let balance_cents = if rng.chance(0.3) {
                    rng.between(500, 10_000)
                } else {
                    rng.between(20_000, 150_000)
                };
                accounts.push(Account {
                    customer: customer.clone(),
                    balance_cents,
                });
            }
        }
        let planned = (0..orders)
            .map(|n| {
                let lines = rng.between(1, 3) as usize;
                let mut skus: Vec<String> = products.iter().map(|p| p.sku.clone()).collect();
                rng.shuffle(&mut skus);
                let mut items: Vec<(String, i32)> = skus
                    .into_iter()
                    .take(lines)
                    .map(|sku| (sku, rng.between(1, 3) as i32))
                    .collect();
                if rng.chance(0.03) {
                    items[0].0 = UNKNOWN_SKU.to_owned();
                }
                let country = if rng.chance(0.10) {
                    "AQ".to_owned()
                } else {
                    (*rng.pick(&COUNTRIES)).to_owned()
                };
                PlannedOrder {
                    n,
                    key: format!("{tag}-{seed}-{n}"),
                    customer: rng.pick(&customers).clone(),
                    items,
                    country,
                    cancel: rng.chance(0.10),
                }
            })
            .collect();
        Self {
            seed,
            catalog: Catalog {
                products,
                accounts,
                customers,
            },
            orders: planned,
            concurrency,
            duration,
        }
    }

    /// Creates the products and accounts (before any fault).
    pub async fn setup(&self, system: &FaultSystem) -> anyhow::Result<()> {
        let http = &system.http;
        for product in &self.catalog.products {
            let body = json!({"sku": product.sku, "name": format!("Product {}", product.sku),
                "price_cents": product.price_cents, "stock": product.stock});
            let response = http
                .post(format!("{}/products", system.url(Svc::INVENTORY)))
                .json(&body)
                .send()
                .await?;
            if response.status().as_u16() != 201 {
                bail!(
                    "creating {}: {} {}",
                    product.sku,
                    response.status(),
                    response.text().await?
                );
            }
        }
        for account in &self.catalog.accounts {
            let body =
                json!({"customer_id": account.customer, "balance_cents": account.balance_cents});
            let response = http
                .post(format!("{}/accounts", system.url(Svc::PAYMENT)))
                .json(&body)
                .send()
                .await?;
            if response.status().as_u16() != 201 {
                bail!(
                    "opening {}: {} {}",
                    account.customer,
                    response.status(),
                    response.text().await?
                );
            }
        }
        Ok(())
    }

    /// Places every order (and the customer cancellations) against `targets`.
    pub async fn run(&self, http: &reqwest::Client, targets: &Targets) -> Outcome {
        let start = Instant::now();
        let retries = AtomicU64::new(0);
        let count = self.orders.len().max(1) as u32;
        let results: Vec<Placed> = futures::stream::iter(self.orders.iter())
            .map(|order| {
                let at = start + self.duration * order.n as u32 / count;
                let retries = &retries;
                async move {
                    tokio::time::sleep_until(at).await;
                    place(http, targets, order, retries).await
                }
            })
            .buffer_unordered(self.concurrency)
            .collect()
            .await;
        let mut outcome = Outcome {
            http_retries: retries.load(Ordering::SeqCst),
            ..Outcome::default()
        };
        for placed in results {
            match placed {
                Placed::Accepted {
                    n,
                    order_id,
                    cancel,
                } => {
                    outcome.accepted.push((n, order_id));
                    match cancel {
                        Some(CancelResult::Accepted) => {
                            outcome.cancelled_by_client.insert(n);
                        }
                        Some(CancelResult::Conflict) => outcome.cancels_too_late += 1,
                        Some(CancelResult::Failed(why)) => outcome
                            .anomalies
                            .push(format!("cancel of order #{n}: {why}")),
                        None => {}
                    }
                }
                // A sku the order service's catalog replica never saw, refused while it is
                // current: expected for an order with the unknown sku, and only for it.
                Placed::Rejected { n, status, body }
                    if status == 422
                        && body.contains(r#""code":"unknown_product""#)
                        && self.orders[n]
                            .items
                            .iter()
                            .any(|(sku, _)| sku == UNKNOWN_SKU) =>
                {
                    outcome.refused_unknown_product.push(n)
                }
                Placed::Rejected { n, status, body } => outcome
                    .anomalies
                    .push(format!("order #{n} rejected: {status} {body}")),
                Placed::GaveUp { n, last_error } => {
                    outcome.gave_up.push((n, last_error));
                }
            }
        }
        outcome.accepted.sort();
        outcome
    }
}

/// The order service instances the client may send to (the primary first).
#[derive(Debug, Clone)]
pub struct Targets(Arc<RwLock<Vec<String>>>);

impl Targets {
    pub fn new(primary: String) -> Self {
        Self(Arc::new(RwLock::new(vec![primary])))
    }

    pub fn add(&self, url: String) {
        self.0.write().expect("targets lock").push(url);
    }

    pub fn remove(&self, url: &str) {
        self.0.write().expect("targets lock").retain(|u| u != url);
    }

    fn pick(&self, salt: u64) -> String {
        let urls = self.0.read().expect("targets lock");
        urls[(salt % urls.len() as u64) as usize].clone()
    }
}

/// What the workload got back.
#[derive(Debug, Default, Clone)]
pub struct Outcome {
    /// (order number, order id) of every order answered 202.
    pub accepted: Vec<(usize, Uuid)>,
    /// Orders never accepted: retried for [`GIVE_UP_AFTER`] without success.
    pub gave_up: Vec<(usize, String)>,
    /// Requests retried (connection refused, 5xx, timeouts).
    pub http_retries: u64,
    /// Orders whose customer cancellation was answered 202.
    pub cancelled_by_client: std::collections::BTreeSet<usize>,
    /// Customer cancellations answered 409 (the order was already terminal).
    pub cancels_too_late: usize,
    /// Orders with the unknown sku refused with 422 `unknown_product` (the catalog replica was
    /// current); the others with it are accepted and cancelled by the saga.
    pub refused_unknown_product: Vec<usize>,
    /// Anything else unexpected (4xx on a valid order, 404 on a cancel, ...).
    pub anomalies: Vec<String>,
}

enum CancelResult {
    Accepted,
    Conflict,
    Failed(String),
}

enum Placed {
    Accepted {
        n: usize,
        order_id: Uuid,
        cancel: Option<CancelResult>,
    },
    Rejected {
        n: usize,
        status: u16,
        body: String,
    },
    GaveUp {
        n: usize,
        last_error: String,
    },
}

/// What one attempt of a request got.
enum Attempt {
    Done(u16, Value),
    /// Worth retrying with the same key: no connection, timeout, 5xx, 409 key in use; not
    /// before the `Retry-After` it carried, if any.
    Retry(String, Option<Duration>),
}

/// A response's `Retry-After` in seconds.
pub fn retry_after(response: &reqwest::Response) -> Option<Duration> {
    let seconds = response.headers().get("retry-after")?.to_str().ok()?;
    seconds.trim().parse().ok().map(Duration::from_secs)
}

async fn attempt(request: reqwest::RequestBuilder) -> Attempt {
    match request.send().await {
        Err(error) => Attempt::Retry(format!("{error}"), None),
        Ok(response) => {
            let status = response.status().as_u16();
            let wait = retry_after(&response);
            let body = match response.bytes().await {
                Ok(bytes) => serde_json::from_slice(&bytes)
                    .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into())),
                Err(error) => return Attempt::Retry(format!("reading the body: {error}"), None),
            };
            let key_in_use = status == 409 && body["error"]["code"] == "idempotency_key_in_use";
            if status >= 500 || key_in_use {
                Attempt::Retry(format!("{status} {body}"), wait)
            } else {
                Attempt::Done(status, body)
            }
        }
    }
}

async fn place(
    http: &reqwest::Client,
    targets: &Targets,
    order: &PlannedOrder,
    retries: &AtomicU64,
) -> Placed {
    let started = Instant::now();
    let body = order.body();
    let mut salt = order.n as u64;
    let mut backoff = Duration::from_millis(100);
    let order_id = loop {
        let url = targets.pick(salt);
        salt += 1;
        let request = http
            .post(format!("{url}/orders"))
            .header("Idempotency-Key", &order.key)
            .json(&body);
        let (last_error, wait) = match attempt(request).await {
            Attempt::Done(202, reply) => match reply["order_id"].as_str().map(str::parse) {
                Some(Ok(order_id)) => break order_id,
                _ => (format!("202 without an order id: {reply}"), None),
            },
            Attempt::Done(status, reply) => {
                return Placed::Rejected {
                    n: order.n,
                    status,
                    body: reply.to_string(),
                }
            }
            Attempt::Retry(why, wait) => (why, wait),
        };
        if started.elapsed() > GIVE_UP_AFTER {
            return Placed::GaveUp {
                n: order.n,
                last_error,
            };
        }
        retries.fetch_add(1, Ordering::Relaxed);
        tokio::time::sleep(wait.map_or(backoff, |wait| wait.max(backoff))).await;
        backoff = (backoff * 2).min(Duration::from_secs(1));
    };
    let cancel = if order.cancel {
        Some(cancel(http, targets, order.n, order_id, retries).await)
    } else {
        None
    };
    Placed::Accepted {
        n: order.n,
        order_id,
        cancel,
    }
}

async fn cancel(
    http: &reqwest::Client,
    targets: &Targets,
    n: usize,
    order_id: Uuid,
    retries: &AtomicU64,
) -> CancelResult {
    let started = Instant::now();
    let mut salt = n as u64;
    let mut backoff = Duration::from_millis(100);
    loop {
        let url = targets.pick(salt);
        salt += 1;
        let request = http.post(format!("{url}/orders/{order_id}/cancel"));
        let (last_error, wait) = match attempt(request).await {
            Attempt::Done(202, _) => return CancelResult::Accepted,
            Attempt::Done(409, _) => return CancelResult::Conflict,
            Attempt::Done(status, reply) => {
                return CancelResult::Failed(format!("{status} {reply}"))
            }
            Attempt::Retry(why, wait) => (why, wait),
        };
        if started.elapsed() > GIVE_UP_AFTER {
            return CancelResult::Failed(format!("gave up: {last_error}"));
        }
        retries.fetch_add(1, Ordering::Relaxed);
        tokio::time::sleep(wait.map_or(backoff, |wait| wait.max(backoff))).await;
        backoff = (backoff * 2).min(Duration::from_secs(1));
    }
}

/// Many concurrent clients posting one order with one Idempotency-Key; returns the order ids
/// every 202 carried (all must be equal) and the other answers.
pub async fn same_key_burst(
    http: &reqwest::Client,
    targets: &Targets,
    order: &PlannedOrder,
    clients: usize,
) -> (Vec<Uuid>, Vec<String>) {
    let retries = AtomicU64::new(0);
    let placed: Vec<Placed> = futures::stream::iter(0..clients)
        .map(|i| {
            let mut order = order.clone();
            order.n = order.n.wrapping_add(i);
            let retries = &retries;
            async move {
                let mut placed = place(http, targets, &order, retries).await;
                if let Placed::Accepted { n, .. } = &mut placed {
                    *n = i;
                }
                placed
            }
        })
        .buffer_unordered(clients)
        .collect()
        .await;
    let mut ids = Vec::new();
    let mut other = Vec::new();
    for p in placed {
        match p {
            Placed::Accepted { order_id, .. } => ids.push(order_id),
            Placed::Rejected { status, body, .. } => other.push(format!("{status} {body}")),
            Placed::GaveUp { last_error, .. } => other.push(format!("gave up: {last_error}")),
        }
    }
    (ids, other)
}
