//! The one snapshot the invariants read, and what the harness knows to compare it with.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::Duration;

use futures::StreamExt;
use serde_json::Value;
use sqlx::types::Json;
use uuid::Uuid;

use super::Expectations;
use crate::faults::kafka::{group_state, PartitionState};
use crate::faults::workload::{Catalog, Outcome, Workload};
use crate::faults::{FaultSystem, Svc};

/// Unpublished outbox rows per service.
pub(super) type Outboxes = Vec<(Svc, i64)>;
/// Every service's consumer group and where it stands on each partition it consumes.
pub(super) type Groups = Vec<(Svc, String, Vec<PartitionState>)>;

/// Every service's outbox backlog and consumer group state (also what "quiet" waits for).
pub(super) async fn outboxes_and_groups(
    system: &FaultSystem,
) -> anyhow::Result<(Outboxes, Groups)> {
    let mut outboxes = Vec::new();
    let mut groups = Vec::new();
    for svc in Svc::all() {
        let pending: i64 = sqlx::query_scalar("select count(*) from outbox")
            .fetch_one(&system.pool(svc))
            .await?;
        outboxes.push((svc, pending));
        let group = system.group(svc);
        let states = group_state(
            &system.broker.address(),
            &group,
            &system.consumed_topics(svc),
        )
        .await?;
        groups.push((svc, group, states));
    }
    Ok((outboxes, groups))
}

/// An order the harness was answered 202 for, with what it asked.
#[derive(Debug, Clone)]
pub(super) struct KnownOrder {
    /// `order #<n> <id>` for a workload order, `order <id>` for another.
    pub(super) label: String,
    pub(super) customer: String,
    pub(super) items: Vec<(String, i32)>,
    pub(super) country: String,
    /// The customer's cancellation was answered 202.
    pub(super) cancel_accepted: bool,
}

/// What the harness knows without asking the system.
pub(super) struct Known<'a> {
    pub(super) orders: BTreeMap<Uuid, KnownOrder>,
    pub(super) catalog: &'a Catalog,
    pub(super) prices: HashMap<&'a str, i64>,
    pub(super) has_account: BTreeSet<&'a str>,
    pub(super) foreign_order_ids: &'a BTreeSet<Uuid>,
    pub(super) saga_deadline_ms: u64,
}

impl<'a> Known<'a> {
    pub(super) fn new(
        workload: &'a Workload,
        outcome: &Outcome,
        expectations: &'a Expectations,
        saga_deadline_ms: u64,
    ) -> Self {
        let mut orders = BTreeMap::new();
        for (n, order_id) in &outcome.accepted {
            let planned = &workload.orders[*n];
            orders.insert(
                *order_id,
                KnownOrder {
                    label: format!("order #{n} {order_id}"),
                    customer: planned.customer.clone(),
                    items: planned.items.clone(),
                    country: planned.country.clone(),
                    cancel_accepted: outcome.cancelled_by_client.contains(n),
                },
            );
        }
        for extra in &expectations.extra_accepted {
            orders.insert(
                extra.order_id,
                KnownOrder {
                    label: format!("order {}", extra.order_id),
                    customer: extra.customer.clone(),
                    items: extra.items.clone(),
                    country: extra.country.clone(),
                    cancel_accepted: false,
                },
            );
        }
        let catalog = &workload.catalog;
        Self {
            orders,
            catalog,
            prices: catalog
                .products
                .iter()
                .map(|p| (p.sku.as_str(), p.price_cents))
                .collect(),
            has_account: catalog
                .accounts
                .iter()
                .map(|a| a.customer.as_str())
                .collect(),
            foreign_order_ids: &expectations.foreign_order_ids,
            saga_deadline_ms,
        }
    }
}

/// An HTTP answer: status and JSON body (null if it was not JSON).
pub(super) type Reply = anyhow::Result<(u16, Value)>;

/// The records whose HTTP view is compared with the database: (path, service).
pub(super) const API_RECORDS: [(&str, Svc); 3] = [
    ("orders", Svc::ORDER),
    ("payments", Svc::PAYMENT),
    ("shipments", Svc::SHIPPING),
];

/// Everything the invariants read, taken once the system is quiet.
pub(super) struct Snapshot {
    /// Each service's records by order id: `orders`, `payments`, `shipments`, `reservations`.
    pub(super) orders: HashMap<Uuid, Value>,
    pub(super) payments: HashMap<Uuid, Value>,
    pub(super) shipments: HashMap<Uuid, Value>,
    pub(super) reservations: HashMap<Uuid, Value>,
    /// Payment's `accounts`: balance by customer.
    pub(super) balances: HashMap<String, i64>,
    /// Payment's `ledger_entries` by customer, in version order.
    pub(super) ledgers: HashMap<String, Vec<Value>>,
    /// Inventory's `products` by sku.
    pub(super) products: HashMap<String, Value>,
    /// The order service's `catalog` replica of them, by sku.
    pub(super) catalog: HashMap<String, Value>,
    /// The query service's `catalog` replica of them, by sku.
    pub(super) query_catalog: HashMap<String, Value>,
    pub(super) outboxes: Outboxes,
    pub(super) groups: Groups,
    /// `GET /{path}/{order_id}` of every [`API_RECORDS`] path for every known order.
    pub(super) api_records: Vec<(&'static str, Uuid, Reply)>,
    /// `GET /accounts/{customer}` of every account opened.
    pub(super) api_accounts: Vec<(String, Reply)>,
    /// `GET /products/{sku}` of every product created.
    pub(super) api_products: Vec<(String, Reply)>,
    /// The query service's `GET /views/orders/{order_id}` of every known order.
    pub(super) api_views: Vec<(Uuid, Reply)>,
}

impl Snapshot {
    pub(super) async fn take(system: &FaultSystem, known: &Known<'_>) -> anyhow::Result<Self> {
        let orders = by_order(rows(system, Svc::ORDER, "orders").await?);
        let payments = by_order(rows(system, Svc::PAYMENT, "payments").await?);
        let shipments = by_order(rows(system, Svc::SHIPPING, "shipments").await?);
        let reservations = by_order(rows(system, Svc::INVENTORY, "reservations").await?);
        let balances = rows(system, Svc::PAYMENT, "accounts")
            .await?
            .into_iter()
            .map(|a| {
                (
                    text(&a["customer_id"]).to_owned(),
                    a["balance_cents"].as_i64().unwrap_or(i64::MIN),
                )
            })
            .collect();
        let mut ledgers: HashMap<String, Vec<Value>> = HashMap::new();
        for entry in rows(system, Svc::PAYMENT, "ledger_entries").await? {
            let customer = text(&entry["customer_id"]).to_owned();
            ledgers.entry(customer).or_default().push(entry);
        }
        for entries in ledgers.values_mut() {
            entries.sort_by_key(|entry| entry["version"].as_i64());
        }
        let products = rows(system, Svc::INVENTORY, "products")
            .await?
            .into_iter()
            .map(|p| (text(&p["sku"]).to_owned(), p))
            .collect();
        let catalog = replica_once_caught_up(system, Svc::ORDER, &products).await?;
        let query_catalog = replica_once_caught_up(system, Svc::QUERY, &products).await?;
        let (outboxes, groups) = outboxes_and_groups(system).await?;

        let http = &system.http;
        let api_records = futures::stream::iter(known.orders.keys().copied())
            .flat_map(|order_id| {
                futures::stream::iter(API_RECORDS.map(|(path, svc)| (path, svc, order_id)))
            })
            .map(|(path, svc, order_id)| async move {
                let url = format!("{}/{path}/{order_id}", system.url(svc));
                (path, order_id, get_json(http, &url).await)
            })
            .buffer_unordered(8)
            .collect()
            .await;
        let mut api_accounts = Vec::new();
        for account in &known.catalog.accounts {
            let url = format!("{}/accounts/{}", system.url(Svc::PAYMENT), account.customer);
            api_accounts.push((account.customer.clone(), get_json(http, &url).await));
        }
        let mut api_products = Vec::new();
        for product in &known.catalog.products {
            let url = format!("{}/products/{}", system.url(Svc::INVENTORY), product.sku);
            api_products.push((product.sku.clone(), get_json(http, &url).await));
        }
        let api_views = futures::stream::iter(known.orders.keys().copied())
            .map(|order_id| async move {
                let url = format!("{}/views/orders/{order_id}", system.url(Svc::QUERY));
                (order_id, get_json(http, &url).await)
            })
            .buffer_unordered(8)
            .collect()
            .await;
        Ok(Self {
            orders,
            payments,
            shipments,
            reservations,
            balances,
            ledgers,
            products,
            catalog,
            query_catalog,
            outboxes,
            groups,
            api_records,
            api_accounts,
            api_products,
            api_views,
        })
    }

    /// The records of an [`API_RECORDS`] path.
    pub(super) fn records(&self, path: &str) -> &HashMap<Uuid, Value> {
        match path {
            "orders" => &self.orders,
            "payments" => &self.payments,
            _ => &self.shipments,
        }
    }
}

/// The `catalog` of `svc` (the order or the query service) by sku, read again (for up to 15 s)
/// until it equals `products`: the replica has no consumer group, so "quiet" does not wait
/// for it.
async fn replica_once_caught_up(
    system: &FaultSystem,
    svc: Svc,
    products: &HashMap<String, Value>,
) -> anyhow::Result<HashMap<String, Value>> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    loop {
        let catalog: HashMap<String, Value> = rows(system, svc, "catalog")
            .await?
            .into_iter()
            .map(|p| (text(&p["sku"]).to_owned(), p))
            .collect();
        let equal = products
            .keys()
            .chain(catalog.keys())
            .all(|sku| super::invariants::same_replica(products.get(sku), catalog.get(sku)));
        if equal || tokio::time::Instant::now() >= deadline {
            return Ok(catalog);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
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

pub(super) fn text(value: &Value) -> &str {
    value.as_str().unwrap_or("")
}

async fn get_json(http: &reqwest::Client, url: &str) -> Reply {
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
