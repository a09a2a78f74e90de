//! The end-to-end harness: starts the services of the topology once per test process, against the real
//! broker at `KAFKA_BROKERS` and fresh, uniquely named databases on the PostgreSQL server at
//! `DATABASE_URL` (both set by `cargo xtask test`), with a unique topic prefix and consumer
//! groups so runs never share state. Tests talk to the services over HTTP like a user would.

pub mod faults;

use std::sync::{mpsc, OnceLock};
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use serde_json::{json, Value};
use shared::topics::Topic;
use shared::topology::{self, Service, INVENTORY, ORDER, PAYMENT, QUERY, SHIPPING};
use sqlx::PgPool;
use uuid::Uuid;

/// The running system shared by every test of this process.
pub struct System {
    pub order_url: String,
    pub payment_url: String,
    pub inventory_url: String,
    pub shipping_url: String,
    /// The query service (read views built from every topic).
    pub query_url: String,
    pub brokers: String,
    pub topic_prefix: String,
    pub database_urls: Databases,
}

/// The URL of each service's own database.
pub struct Databases {
    pub order: String,
    pub payment: String,
    pub inventory: String,
    pub shipping: String,
    pub query: String,
}

/// Countries the test system's shipping service serves (`AQ` is not one of them).
pub const SERVED_COUNTRIES: &str = "FR,DE,US,GB";

static SYSTEM: OnceLock<System> = OnceLock::new();

/// What a test binary may change about its system.
#[derive(Debug, Clone, Copy)]
pub struct Settings {
    /// The order service's `SAGA_DEADLINE_MS`.
    pub saga_deadline_ms: u64,
    /// The participants' `HOLD_TIMEOUT_MS` (`None`: their default).
    pub hold_timeout_ms: Option<u64>,
    /// Every service's `OTEL_EXPORTER_OTLP_ENDPOINT`, with `http/json` (`None`: no traces).
    pub otlp_endpoint: Option<&'static str>,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            saga_deadline_ms: 60_000,
            hold_timeout_ms: None,
            otlp_endpoint: None,
        }
    }
}

/// Starts the system on first use (on a runtime of its own that outlives each test).
pub fn system() -> &'static System {
    system_with(Settings::default())
}

/// Like [`system`], with `settings` for the first caller of the process (every test of one
/// binary must pass the same).
pub fn system_with(settings: Settings) -> &'static System {
    SYSTEM.get_or_init(|| {
        let (sender, receiver) = mpsc::channel();
        std::thread::Builder::new()
            .name("sagashop-system".into())
            .spawn(move || {
                let runtime = tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(2)
                    .enable_all()
                    .build()
                    .expect("a tokio runtime for the services");
                runtime.block_on(async move {
                    match start(settings).await {
                        Ok((system, applications)) => {
                            let _ = sender.send(Ok(system));
                            futures_run_forever(applications).await;
                        }
                        Err(error) => {
                            let _ = sender.send(Err(format!("{error:#}")));
                        }
                    }
                });
            })
            .expect("spawning the system thread");
        match receiver.recv() {
            Ok(Ok(system)) => system,
            Ok(Err(error)) => panic!("could not start the system: {error}"),
            Err(_) => panic!("the system thread died while starting"),
        }
    })
}

type Running = Vec<tokio::task::JoinHandle<anyhow::Result<()>>>;

async fn futures_run_forever(applications: Running) {
    for application in applications {
        match application.await {
            Ok(Ok(())) => {}
            Ok(Err(error)) => eprintln!("a service stopped with an error: {error:#}"),
            Err(error) => eprintln!("a service task failed: {error}"),
        }
    }
}

fn required_env(name: &str) -> anyhow::Result<String> {
    std::env::var(name).with_context(|| {
        format!("{name} is not set: run the suite with `cargo xtask test`, which starts PostgreSQL and the broker")
    })
}

/// A new database `e2e_<service>_<uuid>` on the server; returns its URL.
async fn fresh_database(admin_url: &str, service: &Service) -> anyhow::Result<String> {
    shared::db::create_fresh_database(admin_url, &format!("e2e_{}", service.name)).await
}

async fn start(settings: Settings) -> anyhow::Result<(System, Running)> {
    let admin_url = required_env("DATABASE_URL")?;
    let brokers = required_env("KAFKA_BROKERS")?;
    let run = Uuid::new_v4().simple().to_string();
    let topic_prefix = format!("e2e-{}.", &run[..12]);
    let database_urls = Databases {
        order: fresh_database(&admin_url, &ORDER).await?,
        payment: fresh_database(&admin_url, &PAYMENT).await?,
        inventory: fresh_database(&admin_url, &INVENTORY).await?,
        shipping: fresh_database(&admin_url, &SHIPPING).await?,
        query: fresh_database(&admin_url, &QUERY).await?,
    };
    let args = |service: &Service, database_url: &str| -> Vec<String> {
        [
            service.package,
            "--database-url",
            database_url,
            "--http-host",
            "127.0.0.1",
            "--http-port",
            "0",
            "--kafka-brokers",
            &brokers,
            "--kafka-topic-prefix",
            &topic_prefix,
            "--kafka-group-id",
            &format!("{topic_prefix}{}", service.group_id),
        ]
        .map(str::to_owned)
        .into_iter()
        .chain(
            settings
                .hold_timeout_ms
                .filter(|_| service.name != ORDER.name && service.name != QUERY.name)
                .map(|ms| ["--hold-timeout-ms".to_owned(), ms.to_string()])
                .into_iter()
                .flatten(),
        )
        .chain(
            settings
                .otlp_endpoint
                .map(|endpoint| {
                    [
                        "--otel-exporter-otlp-endpoint",
                        endpoint,
                        "--otel-exporter-otlp-protocol",
                        "http/json",
                    ]
                    .map(str::to_owned)
                })
                .into_iter()
                .flatten(),
        )
        .collect::<Vec<String>>()
    };
    let mut order_args = args(&ORDER, &database_urls.order);
    order_args.extend([
        "--saga-deadline-ms".to_owned(),
        settings.saga_deadline_ms.to_string(),
    ]);
    let order =
        order_service::Application::build(order_service::Config::try_parse_from(order_args)?)
            .await?;
    let payment = payment_service::Application::build(payment_service::Config::try_parse_from(
        args(&PAYMENT, &database_urls.payment),
    )?)
    .await?;
    let inventory = inventory_service::Application::build(
        inventory_service::Config::try_parse_from(args(&INVENTORY, &database_urls.inventory))?,
    )
    .await?;
    let mut shipping_args = args(&SHIPPING, &database_urls.shipping);
    shipping_args.extend(["--countries".to_owned(), SERVED_COUNTRIES.to_owned()]);
    let shipping = shipping_service::Application::build(shipping_service::Config::try_parse_from(
        shipping_args,
    )?)
    .await?;
    let query = query_service::Application::build(query_service::Config::try_parse_from(args(
        &QUERY,
        &database_urls.query,
    ))?)
    .await?;
    let url = |port: u16| format!("http://127.0.0.1:{port}");
    let system = System {
        order_url: url(order.port()),
        payment_url: url(payment.port()),
        inventory_url: url(inventory.port()),
        shipping_url: url(shipping.port()),
        query_url: url(query.port()),
        brokers,
        topic_prefix,
        database_urls,
    };
    let running = vec![
        tokio::spawn(order.run_until_stopped()),
        tokio::spawn(payment.run_until_stopped()),
        tokio::spawn(inventory.run_until_stopped()),
        tokio::spawn(shipping.run_until_stopped()),
        tokio::spawn(query.run_until_stopped()),
    ];
    Ok((system, running))
}

/// A unique identifier for test data, e.g. `sku-3f2a9c1e`.
pub fn unique(prefix: &str) -> String {
    format!("{prefix}-{}", &Uuid::new_v4().simple().to_string()[..12])
}

/// How long a saga may take in these tests before it counts as stuck.
pub const SAGA_TIMEOUT: Duration = Duration::from_secs(90);

/// An HTTP client for one test (clients are not shared across test runtimes).
pub struct Api {
    pub system: &'static System,
    pub http: reqwest::Client,
}

/// A response's status and JSON body (`Null` when the body is not JSON).
pub type Reply = (u16, Value);

impl Api {
    pub fn new() -> Self {
        Self::on(system())
    }

    /// A client for a system started with [`system_with`].
    pub fn on(system: &'static System) -> Self {
        Self {
            system,
            http: reqwest::Client::new(),
        }
    }

    pub async fn send(&self, request: reqwest::RequestBuilder) -> Reply {
        let response = request.send().await.expect("the service answers");
        let status = response.status().as_u16();
        let bytes = response.bytes().await.expect("a response body");
        (
            status,
            serde_json::from_slice(&bytes).unwrap_or(Value::Null),
        )
    }

    pub async fn get(&self, url: String) -> Reply {
        self.send(self.http.get(url)).await
    }

    pub async fn post(&self, url: String, body: Value) -> Reply {
        self.send(self.http.post(url).json(&body)).await
    }

    pub async fn create_product(&self, sku: &str, price_cents: i64, stock: i32) {
        let body = json!({"sku": sku, "name": format!("Product {sku}"), "price_cents": price_cents, "stock": stock});
        let (status, reply) = self
            .post(format!("{}/products", self.system.inventory_url), body)
            .await;
        assert_eq!(status, 201, "creating product {sku}: {reply}");
    }

    pub async fn open_account(&self, customer_id: &str, balance_cents: i64) {
        let body = json!({"customer_id": customer_id, "balance_cents": balance_cents});
        let (status, reply) = self
            .post(format!("{}/accounts", self.system.payment_url), body)
            .await;
        assert_eq!(status, 201, "opening account {customer_id}: {reply}");
    }

    /// Places an order and returns its id; panics unless it is accepted.
    pub async fn place_order(
        &self,
        customer_id: &str,
        items: &[(&str, i32)],
        country: &str,
    ) -> Uuid {
        let (status, reply) = self
            .post(
                format!("{}/orders", self.system.order_url),
                order_body(customer_id, items, country),
            )
            .await;
        assert_eq!(status, 202, "placing an order: {reply}");
        assert_eq!(reply["status"], "PENDING");
        reply["order_id"]
            .as_str()
            .and_then(|id| id.parse().ok())
            .expect("an order id")
    }

    pub async fn order(&self, order_id: Uuid) -> Value {
        let (status, order) = self
            .get(format!("{}/orders/{order_id}", self.system.order_url))
            .await;
        assert_eq!(status, 200, "{order}");
        order
    }

    /// Waits until the order is `CONFIRMED` or `CANCELLED` and returns it.
    pub async fn wait_terminal(&self, order_id: Uuid) -> Value {
        let deadline = tokio::time::Instant::now() + SAGA_TIMEOUT;
        loop {
            let order = self.order(order_id).await;
            if order["status"] != "PENDING" {
                return order;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "order {order_id} still PENDING after {SAGA_TIMEOUT:?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    pub async fn product(&self, sku: &str) -> Value {
        let (status, product) = self
            .get(format!("{}/products/{sku}", self.system.inventory_url))
            .await;
        assert_eq!(status, 200, "{product}");
        product
    }

    pub async fn balance(&self, customer_id: &str) -> i64 {
        let (status, account) = self
            .get(format!(
                "{}/accounts/{customer_id}",
                self.system.payment_url
            ))
            .await;
        assert_eq!(status, 200, "{account}");
        account["balance_cents"].as_i64().expect("a balance")
    }

    pub async fn payment(&self, order_id: Uuid) -> Reply {
        self.get(format!("{}/payments/{order_id}", self.system.payment_url))
            .await
    }

    pub async fn shipment(&self, order_id: Uuid) -> Reply {
        self.get(format!("{}/shipments/{order_id}", self.system.shipping_url))
            .await
    }

    pub async fn timeline(&self, order_id: Uuid) -> Vec<String> {
        let (status, timeline) = self
            .get(format!(
                "{}/orders/{order_id}/timeline",
                self.system.order_url
            ))
            .await;
        assert_eq!(status, 200, "{timeline}");
        timeline["events"]
            .as_array()
            .expect("a list of events")
            .iter()
            .map(|event| event["type"].as_str().unwrap_or_default().to_owned())
            .collect()
    }
}

impl Default for Api {
    fn default() -> Self {
        Self::new()
    }
}

/// The JSON body of `POST /orders`.
pub fn order_body(customer_id: &str, items: &[(&str, i32)], country: &str) -> Value {
    let items: Vec<Value> = items
        .iter()
        .map(|(sku, quantity)| json!({"sku": sku, "quantity": quantity}))
        .collect();
    json!({"customer_id": customer_id, "items": items, "shipping_address": {"country": country, "city": "Paris"}})
}

/// The partition the services' producer puts a message keyed `key` on: librdkafka's default
/// partitioner (`consistent_random`) is the CRC-32 (IEEE) of the key modulo the partitions.
pub fn partition_of(key: &str, partitions: i32) -> i32 {
    let mut crc = !0u32;
    for byte in key.bytes() {
        crc ^= u32::from(byte);
        for _ in 0..8 {
            crc = if crc & 1 == 1 {
                (crc >> 1) ^ 0xEDB8_8320
            } else {
                crc >> 1
            };
        }
    }
    (!crc % partitions as u32) as i32
}

/// Polls `check` until it returns `Some`, or panics with `what` after `timeout`.
pub async fn eventually<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Direct access to the broker and the services' databases, for fault injection and checks.
pub struct Backdoor {
    pub system: &'static System,
}

impl Backdoor {
    pub fn new() -> Self {
        Self::on(system())
    }

    pub fn on(system: &'static System) -> Self {
        Self { system }
    }

    /// A pool on one service's database.
    pub async fn database(&self, url: &str) -> PgPool {
        shared::db::connect(url, 2)
            .await
            .expect("connecting to a service database")
    }

    /// Publishes raw bytes to a saga topic, keyed by `key`; returns (partition, offset).
    pub async fn produce(
        &self,
        topic: Topic,
        key: &str,
        payload: &[u8],
        event_type: Option<&str>,
    ) -> (i32, i64) {
        self.produce_to(topic, None, key, payload, event_type).await
    }

    /// Like [`Backdoor::produce`], to a chosen partition (`None`: the key decides).
    pub async fn produce_to(
        &self,
        topic: Topic,
        partition: Option<i32>,
        key: &str,
        payload: &[u8],
        event_type: Option<&str>,
    ) -> (i32, i64) {
        let producer: FutureProducer = ClientConfig::new()
            .set("bootstrap.servers", &self.system.brokers)
            .set("enable.idempotence", "true")
            .set("acks", "all")
            .create()
            .expect("a producer");
        let name = topic.name(&self.system.topic_prefix);
        let mut headers = OwnedHeaders::new();
        if let Some(event_type) = event_type {
            headers = headers.insert(Header {
                key: "event_type",
                value: Some(event_type),
            });
        }
        let mut record = FutureRecord::to(&name)
            .key(key)
            .payload(payload)
            .headers(headers);
        if let Some(partition) = partition {
            record = record.partition(partition);
        }
        let delivery = producer
            .send(record, Duration::from_secs(30))
            .await
            .map_err(|(error, _)| error)
            .expect("the broker accepts it");
        (delivery.partition, delivery.offset)
    }

    /// Every message of `service`'s dead-letter topic so far.
    pub async fn dead_letters(&self, service: &str) -> Vec<shared::dead_letters::DeadLetter> {
        let topic = known(service).dead_letter_topic(&self.system.topic_prefix);
        let brokers = self.system.brokers.clone();
        tokio::task::spawn_blocking(move || shared::dead_letters::read_all(&brokers, &topic))
            .await
            .expect("the reading task")
            .expect("reading the dead-letter topic")
    }

    /// Waits until `service`'s consumer group has committed past `offset` of `topic`/`partition`:
    /// the message was processed (and its transaction committed) by then.
    pub async fn wait_consumed(&self, service: &str, topic: Topic, partition: i32, offset: i64) {
        let group = format!("{}{}", self.system.topic_prefix, known(service).group_id);
        let name = topic.name(&self.system.topic_prefix);
        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", &self.system.brokers)
            .set("group.id", &group)
            .set("enable.auto.commit", "false")
            .create()
            .expect("a consumer to read committed offsets");
        let mut partitions = TopicPartitionList::new();
        partitions.add_partition(&name, partition);
        let consumer = std::sync::Arc::new(consumer);
        eventually(
            &format!("{group} to consume {name}[{partition}]@{offset}"),
            SAGA_TIMEOUT,
            || {
                let consumer = consumer.clone();
                let partitions = partitions.clone();
                let name = name.clone();
                async move {
                    let committed = tokio::task::spawn_blocking(move || {
                        consumer.committed_offsets(partitions, Duration::from_secs(5))
                    })
                    .await
                    .ok()?
                    .ok()?;
                    match committed.find_partition(&name, partition)?.offset() {
                        Offset::Offset(committed) if committed > offset => Some(()),
                        _ => None,
                    }
                }
            },
        )
        .await
    }

    /// Waits until the system is quiet: no outbox row waiting to be published in any service,
    /// and every consumer group committed up to the end of every partition it consumes, twice
    /// in a row with nothing new (the same end offsets) in between.
    pub async fn wait_quiet(&self) {
        let databases = &self.system.database_urls;
        let mut pools = Vec::new();
        for url in [
            &databases.order,
            &databases.payment,
            &databases.inventory,
            &databases.shipping,
            &databases.query,
        ] {
            pools.push(self.database(url).await);
        }
        let deadline = tokio::time::Instant::now() + SAGA_TIMEOUT;
        let mut previous: Option<Vec<i64>> = None;
        loop {
            let mut drained = true;
            for pool in &pools {
                let unpublished: Option<i64> =
                    sqlx::query_scalar("select count(*) from outbox where failed_at is null")
                        .fetch_one(pool)
                        .await
                        .ok();
                drained &= unpublished == Some(0);
            }
            let ends = if drained {
                self.consumed_to_the_end().await
            } else {
                None
            };
            if ends.is_some() && ends == previous {
                return;
            }
            previous = ends;
            assert!(
                tokio::time::Instant::now() < deadline,
                "timed out after {SAGA_TIMEOUT:?} waiting for the system to be quiet"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// The end offset of every partition every service consumes, if each service's group has
    /// committed up to it.
    async fn consumed_to_the_end(&self) -> Option<Vec<i64>> {
        let (brokers, prefix) = (
            self.system.brokers.clone(),
            self.system.topic_prefix.clone(),
        );
        tokio::task::spawn_blocking(move || {
            let mut ends = Vec::new();
            for service in topology::SERVICES {
                let consumer: BaseConsumer = ClientConfig::new()
                    .set("bootstrap.servers", &brokers)
                    .set("group.id", format!("{prefix}{}", service.group_id))
                    .set("enable.auto.commit", "false")
                    .create()
                    .ok()?;
                let timeout = Duration::from_secs(5);
                let mut partitions = TopicPartitionList::new();
                for topic in service.consumes {
                    let name = topic.name(&prefix);
                    let metadata = consumer.fetch_metadata(Some(&name), timeout).ok()?;
                    for partition in metadata.topics().first()?.partitions() {
                        partitions.add_partition(&name, partition.id());
                    }
                }
                let committed = consumer.committed_offsets(partitions, timeout).ok()?;
                for element in committed.elements() {
                    let (_, end) = consumer
                        .fetch_watermarks(element.topic(), element.partition(), timeout)
                        .ok()?;
                    let done = match element.offset() {
                        Offset::Offset(committed) => committed >= end,
                        _ => end == 0,
                    };
                    if !done {
                        return None;
                    }
                    ends.push(end);
                }
            }
            Some(ends)
        })
        .await
        .ok()?
    }
}

impl Default for Backdoor {
    fn default() -> Self {
        Self::new()
    }
}

/// The service of the topology called `name`; panics on a name it does not have.
pub fn known(name: &str) -> &'static Service {
    topology::by_name(name).unwrap_or_else(|| panic!("shared::topology has no service {name:?}"))
}

#[cfg(test)]
mod tests {
    #[test]
    fn partition_of_is_the_crc32_of_the_key() {
        // The CRC-32 check value: crc32("123456789") = 0xCBF43926.
        assert_eq!(
            super::partition_of("123456789", i32::MAX),
            (0xCBF4_3926u32 % i32::MAX as u32) as i32
        );
        assert_eq!(
            super::partition_of("123456789", 3),
            (0xCBF4_3926u32 % 3) as i32
        );
    }
}
