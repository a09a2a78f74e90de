//! The consumer loop against the real broker and PostgreSQL (`cargo xtask test` sets
//! `KAFKA_BROKERS` and `DATABASE_URL`): batches applied in one transaction, and what happens to
//! the neighbours of a failing event, of a poison message and of a database failure inside a
//! batch, and of a rebalance while batches are being applied.

use std::collections::{BTreeMap, HashSet};
use std::sync::Mutex;

use rdkafka::consumer::BaseConsumer;
use rdkafka::{Offset, TopicPartitionList};
use serde_json::json;
use uuid::Uuid;

use super::*;
use crate::config::KafkaConfig;
use crate::events::{OrderConfirmed, ShipmentCancelled};
use crate::EventPayload;
use crate::{db, kafka};

const WAIT: Duration = Duration::from_secs(90);

/// A handler that records each effect with the transaction that applied it.
#[derive(Default)]
struct Recorder {
    /// Which consumer instance this is (recorded with each effect).
    worker: &'static str,
    /// Events whose handling always fails (then `give_up` records them).
    refuse: HashSet<Uuid>,
    /// Events whose first attempt writes half its effect, then loses its connection.
    lose_connection_once: Mutex<HashSet<Uuid>>,
    /// Milliseconds each event takes (`pg_sleep`).
    delay_ms: u64,
}

impl EventHandler for Recorder {
    type Input = OrderConfirmed;

    /// Only `order.confirmed` (a test handler may use `_`; a service's handler lists every
    /// event).
    fn select(&self, event: Event) -> Option<OrderConfirmed> {
        match event {
            Event::OrderConfirmed(confirmed) => Some(confirmed),
            _ => None,
        }
    }

    async fn handle(
        &self,
        conn: &mut PgConnection,
        envelope: &Envelope,
        _confirmed: &OrderConfirmed,
    ) -> Result<(), HandlerError> {
        sqlx::query("insert into effects (event_id, worker, txid) values ($1, $2, txid_current())")
            .bind(envelope.id)
            .bind(self.worker)
            .execute(&mut *conn)
            .await?;
        let lose = self
            .lose_connection_once
            .lock()
            .unwrap()
            .remove(&envelope.id);
        if lose {
            sqlx::query("select pg_terminate_backend(pg_backend_pid())")
                .execute(&mut *conn)
                .await?;
        }
        if self.refuse.contains(&envelope.id) {
            return Err(HandlerError::Failed("refused by the test".to_owned()));
        }
        if self.delay_ms > 0 {
            sqlx::query("select pg_sleep($1)")
                .bind(self.delay_ms as f64 / 1000.0)
                .execute(&mut *conn)
                .await?;
        }
        Ok(())
    }

    async fn give_up(
        &self,
        conn: &mut PgConnection,
        envelope: &Envelope,
        _confirmed: &OrderConfirmed,
        reason: &str,
    ) -> Result<bool, sqlx::Error> {
        sqlx::query("insert into gave_up (event_id, reason) values ($1, $2)")
            .bind(envelope.id)
            .bind(reason)
            .execute(conn)
            .await?;
        Ok(true)
    }
}

/// A fresh database with the messaging tables, and fresh topics.
struct Bed {
    pool: PgPool,
    config: KafkaConfig,
    topic: String,
    dead_letters: String,
    producer: FutureProducer,
}

fn required(name: &str) -> String {
    std::env::var(name)
        .unwrap_or_else(|_| panic!("{name} is not set: run the tests with `cargo xtask test`"))
}

async fn bed() -> Bed {
    let url = db::create_fresh_database(&required("DATABASE_URL"), "shared_consumer")
        .await
        .expect("creating a test database");
    let pool = db::connect(&url, 5).await.expect("connecting");
    db::prepare(&pool, &sqlx::migrate::Migrator::DEFAULT)
        .await
        .expect("creating the messaging tables");
    sqlx::raw_sql(
        "create table effects (n bigserial primary key, event_id uuid not null, worker text not null, txid bigint not null);
         create table gave_up (event_id uuid not null, reason text not null);",
    )
    .execute(&pool)
    .await
    .expect("creating the test tables");
    let prefix = format!("shared-{}.", &Uuid::new_v4().simple().to_string()[..12]);
    let config = KafkaConfig {
        brokers: required("KAFKA_BROKERS"),
        topic_prefix: prefix.clone(),
        group_id: None,
        fetch_wait_max_ms: 10,
        linger_ms: 5,
        session_timeout_ms: 6_000,
        max_poll_interval_ms: 30_000,
        auto_offset_reset: "earliest".to_owned(),
        max_event_bytes: 262_144,
        topic_partitions: 3,
        replication_factor: 1,
    };
    let topic = format!("{prefix}batches");
    let dead_letters = format!("{prefix}batches.dlq");
    kafka::ensure_topics(&config, &[topic.clone(), dead_letters.clone()])
        .await
        .expect("creating the topics");
    let producer = kafka::producer(&config).expect("a producer");
    Bed {
        pool,
        config,
        topic,
        dead_letters,
        producer,
    }
}

impl Bed {
    /// Starts a consumer loop of `group` with `handler`.
    fn consume(
        &self,
        group: &str,
        handler: Recorder,
    ) -> (CancellationToken, tokio::task::JoinHandle<()>) {
        let consumer = kafka::consumer(&self.config, group).expect("a consumer");
        consumer.subscribe(&[&self.topic]).expect("subscribing");
        let consumer_loop = ConsumerLoop {
            consumer,
            pool: self.pool.clone(),
            outbox: OutboxSignal::new(self.pool.clone()),
            handler: Arc::new(handler),
            producer: self.producer.clone(),
            service: "test",
            group_id: group.to_owned(),
            dead_letter_topic: self.dead_letters.clone(),
            policy: ConsumerPolicy {
                max_attempts: 2,
                max_event_bytes: self.config.max_event_bytes,
                batch_size: 100,
                concurrency: 4,
            },
            deferred: Default::default(),
        };
        let token = CancellationToken::new();
        let task = tokio::spawn(consumer_loop.run(token.clone()));
        (token, task)
    }

    /// Produces `payload` keyed `key` and waits for the broker to take it.
    async fn produce(&self, key: Uuid, payload: &[u8]) {
        let key = key.to_string();
        let record = FutureRecord::to(&self.topic).key(&key).payload(payload);
        self.producer
            .send(record, Duration::from_secs(30))
            .await
            .expect("producing");
    }

    /// Produces a valid event of the handled type for `order_id`; returns its id.
    async fn confirmed(&self, order_id: Uuid) -> Uuid {
        let envelope = Envelope::new("test", order_id, None, &OrderConfirmed { order_id });
        self.produce(order_id, &serde_json::to_vec(&envelope).unwrap())
            .await;
        envelope.id
    }

    /// Produces a valid event of a type the handler does not handle; returns its id.
    async fn ignored(&self, order_id: Uuid) -> Uuid {
        let envelope = Envelope::new("test", order_id, None, &ShipmentCancelled { order_id });
        self.produce(order_id, &serde_json::to_vec(&envelope).unwrap())
            .await;
        envelope.id
    }

    /// Messages in the dead-letter topic.
    async fn dead_lettered(&self) -> i64 {
        let consumer: BaseConsumer = rdkafka::ClientConfig::new()
            .set("bootstrap.servers", &self.config.brokers)
            .create()
            .unwrap();
        (0..self.config.topic_partitions)
            .map(|partition| {
                let (low, high) = consumer
                    .fetch_watermarks(&self.dead_letters, partition, Duration::from_secs(10))
                    .unwrap();
                high - low
            })
            .sum()
    }

    async fn count(&self, sql: &str) -> i64 {
        sqlx::query_scalar(sql)
            .fetch_one(&self.pool)
            .await
            .expect(sql)
    }

    /// Waits until `done` holds, or panics after [`WAIT`] (a liveness bound, not a speed test).
    async fn wait_for(&self, what: &str, sql: &str, expected: i64) {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let now = self.count(sql).await;
            if now == expected {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{what}: {now} after {WAIT:?}, expected {expected}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The event ids in `effects`, in the order they were applied.
    async fn applied(&self) -> Vec<Uuid> {
        sqlx::query_scalar("select event_id from effects order by n")
            .fetch_all(&self.pool)
            .await
            .expect("reading effects")
    }

    /// Events applied per transaction, for the transactions that applied any.
    async fn events_per_transaction(&self) -> Vec<i64> {
        sqlx::query_scalar("select count(*) from effects group by txid order by min(n)")
            .fetch_all(&self.pool)
            .await
            .expect("reading effects")
    }

    /// The committed offset of `group` for each partition of the topic, and its high watermark.
    fn committed_and_high(&self, group: &str) -> BTreeMap<i32, (i64, i64)> {
        let consumer: BaseConsumer = rdkafka::ClientConfig::new()
            .set("bootstrap.servers", &self.config.brokers)
            .set("group.id", group)
            .create()
            .expect("a consumer for offsets");
        let mut partitions = TopicPartitionList::new();
        for partition in 0..self.config.topic_partitions {
            partitions.add_partition(&self.topic, partition);
        }
        let committed = consumer
            .committed_offsets(partitions, Duration::from_secs(10))
            .expect("committed offsets");
        committed
            .elements()
            .iter()
            .map(|element| {
                let offset = match element.offset() {
                    Offset::Offset(offset) => offset,
                    _ => 0,
                };
                let (_, high) = consumer
                    .fetch_watermarks(&self.topic, element.partition(), Duration::from_secs(10))
                    .expect("watermarks");
                (element.partition(), (offset, high))
            })
            .collect()
    }
}

async fn stop(consumer: (CancellationToken, tokio::task::JoinHandle<()>)) {
    consumer.0.cancel();
    consumer.1.await.expect("the consumer loop ends cleanly");
}

/// Waits until `handled` are applied, stops `consumer`, and checks that each was applied once,
/// in order, and that `group` committed every offset.
async fn finish(
    bed: &Bed,
    consumer: (CancellationToken, tokio::task::JoinHandle<()>),
    group: &str,
    handled: &[Uuid],
) {
    bed.wait_for(
        "events applied",
        "select count(*) from effects",
        handled.len() as i64,
    )
    .await;
    stop(consumer).await;
    assert_eq!(
        bed.applied().await,
        handled,
        "every event applied once, in order"
    );
    for (partition, (committed, high)) in bed.committed_and_high(group) {
        assert_eq!(
            committed, high,
            "partition {partition}: every offset committed"
        );
    }
}

/// Produces `count` handled events for one order (so one partition, in this order).
async fn one_partition(bed: &Bed, count: usize) -> Vec<Uuid> {
    let order_id = Uuid::now_v7();
    let mut ids = Vec::new();
    for _ in 0..count {
        ids.push(bed.confirmed(order_id).await);
    }
    ids
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_event_in_a_batch_leaves_its_neighbours_applied_once_in_order() {
    let bed = bed().await;
    let order_id = Uuid::now_v7();
    let mut handled = Vec::new();
    for _ in 0..6 {
        handled.push(bed.confirmed(order_id).await);
    }
    let ignored = bed.ignored(order_id).await;
    for _ in 0..6 {
        handled.push(bed.confirmed(order_id).await);
    }
    let refused = handled.remove(4);
    let recorder = Recorder {
        worker: "a",
        refuse: HashSet::from([refused]),
        ..Recorder::default()
    };
    let consumer = bed.consume("failing", recorder);
    bed.wait_for("events given up", "select count(*) from gave_up", 1)
        .await;
    finish(&bed, consumer, "failing", &handled).await;

    let gave_up: Vec<Uuid> = sqlx::query_scalar("select event_id from gave_up")
        .fetch_all(&bed.pool)
        .await
        .unwrap();
    assert_eq!(
        gave_up,
        vec![refused],
        "the failing event was given up explicitly"
    );
    let batched = bed.events_per_transaction().await;
    assert!(
        batched.iter().any(|&events| events > 1),
        "events were applied in batches, not one transaction each: {batched:?}"
    );
    let inbox: Vec<Uuid> = sqlx::query_scalar("select event_id from inbox")
        .fetch_all(&bed.pool)
        .await
        .unwrap();
    assert!(
        !inbox.contains(&ignored),
        "an unhandled type needs no inbox row"
    );
    assert_eq!(
        inbox.len(),
        handled.len() + 1,
        "one inbox row per handled event"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_poison_message_in_a_batch_is_dead_lettered_and_its_neighbours_applied() {
    let bed = bed().await;
    let order_id = Uuid::now_v7();
    let mut handled = Vec::new();
    for _ in 0..5 {
        handled.push(bed.confirmed(order_id).await);
    }
    bed.produce(order_id, b"{ not an event").await;
    for _ in 0..5 {
        handled.push(bed.confirmed(order_id).await);
    }
    let consumer = bed.consume("poison", Recorder::default());
    finish(&bed, consumer, "poison", &handled).await;

    let consumer: BaseConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", &bed.config.brokers)
        .create()
        .unwrap();
    let dead_letters_high: i64 = (0..bed.config.topic_partitions)
        .map(|partition| {
            consumer
                .fetch_watermarks(&bed.dead_letters, partition, Duration::from_secs(10))
                .unwrap()
                .1
        })
        .sum();
    assert_eq!(
        dead_letters_high, 1,
        "the poison message is in the dead-letter topic"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_failure_inside_a_batch_rolls_it_back_and_applies_each_event_once() {
    let bed = bed().await;
    let handled = one_partition(&bed, 12).await;
    let recorder = Recorder {
        worker: "a",
        lose_connection_once: Mutex::new(HashSet::from([handled[6]])),
        ..Recorder::default()
    };
    let consumer = bed.consume("database", recorder);
    finish(&bed, consumer, "database", &handled).await;

    // The lost connection rolled back the half-written effect of event 6 and everything else
    // of its batch; each was applied again, once.
    assert_eq!(
        bed.count("select count(*) from inbox").await,
        handled.len() as i64
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rebalance_while_batches_are_applied_loses_nothing_and_applies_nothing_twice() {
    let bed = bed().await;
    let mut handled = Vec::new();
    for _ in 0..400 {
        handled.push(bed.confirmed(Uuid::new_v4()).await);
    }
    let slow = |worker| Recorder {
        worker,
        delay_ms: 15,
        ..Recorder::default()
    };
    let first = bed.consume("rebalance", slow("first"));
    bed.wait_for(
        "events applied by the first",
        "select least(count(*), 40) from effects",
        40,
    )
    .await;
    // A second member joins mid-stream: partitions move while the first is inside batches.
    // More events keep arriving, so the second has work once it has partitions.
    let second = bed.consume("rebalance", slow("second"));
    for _ in 0..400 {
        handled.push(bed.confirmed(Uuid::new_v4()).await);
    }
    bed.wait_for(
        "events applied",
        "select count(distinct event_id) from effects",
        handled.len() as i64,
    )
    .await;
    stop(second).await;
    stop(first).await;

    let applied = bed.applied().await;
    assert_eq!(applied.len(), handled.len(), "no event applied twice");
    let applied: HashSet<Uuid> = applied.into_iter().collect();
    assert_eq!(applied, handled.iter().copied().collect(), "no event lost");
    let by_second = bed
        .count("select count(*) from effects where worker = 'second'")
        .await;
    assert!(
        by_second > 0,
        "the second member took partitions over mid-stream"
    );
}

/// Events as other releases write them: an older version (upcast), a newer version than this
/// build knows with a field it does not know (read as the current one), and unknown envelope
/// fields. None is dead-lettered; each is applied once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_of_other_releases_are_applied_not_dead_lettered() {
    let bed = bed().await;
    let order_id = Uuid::now_v7();
    let mut handled = Vec::new();
    handled.push(bed.confirmed(order_id).await);
    let later_release = |version: u32| {
        let mut envelope = serde_json::to_value(Envelope::new(
            "a-later-release",
            order_id,
            None,
            &OrderConfirmed { order_id },
        ))
        .unwrap();
        envelope["type"] = json!(format!("order.confirmed.v{version}"));
        envelope["payload"]["confirmed_by"] = json!("a field added later");
        envelope["trace_parent"] = json!("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01");
        let id: Uuid = serde_json::from_value(envelope["id"].clone()).unwrap();
        (id, serde_json::to_vec(&envelope).unwrap())
    };
    for version in [OrderConfirmed::VERSION + 1, OrderConfirmed::VERSION + 7] {
        let (id, bytes) = later_release(version);
        bed.produce(order_id, &bytes).await;
        handled.push(id);
    }
    handled.push(bed.confirmed(order_id).await);
    let consumer = bed.consume("releases", Recorder::default());
    finish(&bed, consumer, "releases", &handled).await;
    assert_eq!(bed.dead_lettered().await, 0, "nothing was dead-lettered");
}
