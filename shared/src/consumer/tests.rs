//! The consumer loop against the real broker and PostgreSQL (`cargo xtask test` sets
//! `KAFKA_BROKERS` and `DATABASE_URL`): batches applied in one transaction, and what happens to
//! the neighbours of a failing event, of a poison message and of a database failure inside a
//! batch, and of a rebalance while batches are being applied; and that nothing stalls a
//! partition for good: records too large to dead-letter whole, a missing dead-letter topic,
//! database errors that fail every time.

use std::collections::{BTreeMap, HashSet};
use std::sync::Mutex;

use rdkafka::consumer::BaseConsumer;
use rdkafka::{Offset, TopicPartitionList};
use serde_json::json;
use uuid::Uuid;

use super::*;
use crate::config::KafkaConfig;
use crate::events::{CancellationReason, OrderCancelled, OrderConfirmed, ShipmentScheduled};
use crate::test_env::{kafka_config, messaging_database, required};
use crate::topics::Topic;
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
    /// Events whose handling runs a query that fails the same way every time.
    broken_query: BTreeMap<Uuid, &'static str>,
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

    /// Records the orders of the batch with the transaction.
    async fn lock_shared_rows(
        &self,
        conn: &mut PgConnection,
        inputs: &[&OrderConfirmed],
    ) -> Result<(), sqlx::Error> {
        let orders: Vec<Uuid> = inputs.iter().map(|confirmed| confirmed.order_id).collect();
        sqlx::query("insert into shared_locks select unnest($1::uuid[]), txid_current()")
            .bind(&orders)
            .execute(conn)
            .await?;
        Ok(())
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
        if let Some(query) = self.broken_query.get(&envelope.id) {
            let _: String = sqlx::query_scalar(query).fetch_one(&mut *conn).await?;
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

async fn bed() -> Bed {
    let pool = messaging_database("shared_consumer").await;
    sqlx::raw_sql(
        "create table effects (n bigserial primary key, event_id uuid not null, worker text not null, txid bigint not null);
         create table gave_up (event_id uuid not null, reason text not null);
         create table shared_locks (order_id uuid not null, txid bigint not null);",
    )
    .execute(&pool)
    .await
    .expect("creating the test tables");
    let prefix = format!("shared-{}.", &Uuid::new_v4().simple().to_string()[..12]);
    let config = kafka_config(&prefix, 3);
    // The topic `order.confirmed` belongs on (an event is accepted only from its owner's topic).
    let topic = Topic::Order.name(&prefix);
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
        spawn(self.consumer_loop(group, handler))
    }

    /// A consumer loop of `group` with `handler`, not started.
    fn consumer_loop(&self, group: &str, handler: Recorder) -> ConsumerLoop<Recorder> {
        let consumer = kafka::consumer(&self.config, group).expect("a consumer");
        consumer.subscribe(&[&self.topic]).expect("subscribing");
        ConsumerLoop {
            consumer,
            pool: self.pool.clone(),
            outbox: OutboxSignal::new(self.pool.clone()),
            handler: Arc::new(handler),
            producer: self.producer.clone(),
            service: "test",
            tracer: Default::default(),
            topic_prefix: self.config.topic_prefix.clone(),
            group_id: group.to_owned(),
            dead_letter_topic: self.dead_letters.clone(),
            kafka: self.config.clone(),
            policy: ConsumerPolicy {
                max_attempts: 2,
                max_event_bytes: self.config.max_event_bytes,
                dead_letter_max_bytes: kafka::PRODUCER_MAX_MESSAGE_BYTES,
                batch_size: 100,
                concurrency: 4,
            },
            progress: Progress::default(),
            deferred: Default::default(),
            records_offsets: false,
        }
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
        let envelope = Envelope::new(
            "test",
            order_id,
            None,
            &OrderCancelled {
                order_id,
                reason: CancellationReason::Timeout,
            },
        );
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

fn spawn(
    consumer_loop: ConsumerLoop<Recorder>,
) -> (CancellationToken, tokio::task::JoinHandle<()>) {
    let token = CancellationToken::new();
    let task = tokio::spawn(consumer_loop.run(token.clone()));
    (token, task)
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
async fn a_batch_records_the_next_offset_in_its_own_transaction() {
    let bed = bed().await;
    let handled = one_partition(&bed, 8).await;
    let mut consumer_loop = bed.consumer_loop("offsets", Recorder::default());
    consumer_loop.records_offsets = true;
    finish(&bed, spawn(consumer_loop), "offsets", &handled).await;

    let batched = bed.events_per_transaction().await;
    assert!(
        batched.iter().any(|&events| events > 1),
        "events were applied in batches: {batched:?}"
    );
    let offsets: Vec<(String, i32, i64)> =
        sqlx::query_as("select topic, kafka_partition, next_offset from consumer_offsets")
            .fetch_all(&bed.pool)
            .await
            .unwrap();
    let high = bed.committed_and_high("offsets");
    let [(topic, partition, next_offset)] = offsets.as_slice() else {
        panic!("one row for the one partition: {offsets:?}");
    };
    assert_eq!(topic, &bed.topic);
    assert_eq!(
        *next_offset, high[partition].1,
        "the offset after the last applied message"
    );
    // xmin is the 32-bit transaction id; txid_current() adds the epoch above it.
    let same_transaction: bool = sqlx::query_scalar(
        "select (select xmin::text::bigint from consumer_offsets)
              = (select txid % 4294967296 from effects order by n desc limit 1)",
    )
    .fetch_one(&bed.pool)
    .await
    .unwrap();
    assert!(
        same_transaction,
        "the offset is written by the transaction that applied the last message"
    );
}

/// Checks that every transaction that applied events handed exactly those (all of `order_id`)
/// to `lock_shared_rows`; returns, per transaction, its id, how many events it applied, how
/// many inputs it handed over and whether all were of `order_id`.
async fn each_transaction_locked_what_it_applied(
    bed: &Bed,
    order_id: Uuid,
) -> Vec<(i64, i64, i64, bool)> {
    let per_transaction: Vec<(i64, i64, i64, bool)> = sqlx::query_as(
        "select effects.txid, count(*),
                (select count(*) from shared_locks where shared_locks.txid = effects.txid),
                (select coalesce(bool_and(shared_locks.order_id = $1), true) from shared_locks
                 where shared_locks.txid = effects.txid)
         from effects group by effects.txid",
    )
    .bind(order_id)
    .fetch_all(&bed.pool)
    .await
    .unwrap();
    for (txid, applied, handed, only_handled) in &per_transaction {
        assert_eq!(
            (applied, handed, only_handled),
            (applied, applied, &true),
            "transaction {txid} handed each event it applied, and only those, to \
             lock_shared_rows: {per_transaction:?}"
        );
    }
    per_transaction
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_hands_the_handler_all_its_inputs_before_applying_any() {
    let bed = bed().await;
    // One order's events (one partition, in order), with events the handler ignores between.
    let (order_id, other) = (Uuid::now_v7(), Uuid::now_v7());
    let mut handled = Vec::new();
    for _ in 0..8 {
        handled.push(bed.confirmed(order_id).await);
        bed.ignored(other).await;
    }
    finish(
        &bed,
        spawn(bed.consumer_loop("locks", Recorder::default())),
        "locks",
        &handled,
    )
    .await;

    let per_transaction = each_transaction_locked_what_it_applied(&bed, order_id).await;
    assert!(
        per_transaction
            .iter()
            .any(|(_, applied, _, _)| *applied > 1),
        "events were applied in batches: {per_transaction:?}"
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
    let order_id = Uuid::now_v7();
    let mut handled = Vec::new();
    for _ in 0..12 {
        handled.push(bed.confirmed(order_id).await);
    }
    // Event 0 starts the first batch, so its retry takes the one-message path.
    let recorder = Recorder {
        worker: "a",
        lose_connection_once: Mutex::new(HashSet::from([handled[0], handled[6]])),
        ..Recorder::default()
    };
    let consumer = bed.consume("database", recorder);
    finish(&bed, consumer, "database", &handled).await;

    // The lost connections rolled back the half-written effects of events 0 and 6 and
    // everything else of their batches; each was applied again, once.
    assert_eq!(
        bed.count("select count(*) from inbox").await,
        handled.len() as i64
    );
    // The one-message path, too, hands its event to lock_shared_rows before applying it.
    let per_transaction = each_transaction_locked_what_it_applied(&bed, order_id).await;
    assert!(
        per_transaction
            .iter()
            .any(|(_, applied, _, _)| *applied == 1),
        "event 0 was applied alone: {per_transaction:?}"
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

/// Only the owner of an event publishes it: a `shipment.scheduled` produced on the order topic
/// (by anyone but shipping) is dead-lettered, not believed, and its neighbours are applied.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_on_a_topic_its_owner_does_not_own_is_refused() {
    let bed = bed().await;
    let order_id = Uuid::now_v7();
    let mut handled = vec![bed.confirmed(order_id).await];
    let forged = Envelope::new(
        "intruder",
        order_id,
        None,
        &ShipmentScheduled {
            order_id,
            country: "FR".to_owned(),
        },
    );
    bed.produce(order_id, &serde_json::to_vec(&forged).unwrap())
        .await;
    handled.push(bed.confirmed(order_id).await);
    let consumer = bed.consume("forged", Recorder::default());
    finish(&bed, consumer, "forged", &handled).await;
    assert_eq!(
        bed.dead_lettered().await,
        1,
        "the forged event was dead-lettered"
    );
    let inbox: Vec<Uuid> = sqlx::query_scalar("select event_id from inbox")
        .fetch_all(&bed.pool)
        .await
        .unwrap();
    assert!(
        !inbox.contains(&forged.id),
        "the forged event was not applied"
    );
}

/// Reads the dead-letter topic `topic` from the start.
async fn letters(bed: &Bed, topic: &str) -> Vec<crate::dead_letters::DeadLetter> {
    let (brokers, topic) = (bed.config.brokers.clone(), topic.to_owned());
    tokio::task::spawn_blocking(move || crate::dead_letters::read_all(&brokers, &topic))
        .await
        .unwrap()
        .expect("reading the dead letters")
}

/// A record the consumer's producer cannot send whole (larger than its 1,000,000 bytes, smaller
/// than the broker's 1 MiB) is dead-lettered truncated, saying where the original is, and the
/// next message of its partition is applied.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_record_too_large_to_dead_letter_whole_is_dead_lettered_truncated() {
    let bed = bed().await;
    let order_id = Uuid::now_v7();
    let before = bed.confirmed(order_id).await;
    // Another client, allowed larger records, as a producer of another system could be.
    let large: FutureProducer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", &bed.config.brokers)
        .set("message.max.bytes", "2000000")
        .create()
        .unwrap();
    let original = vec![b'x'; 1_040_000];
    let key = order_id.to_string();
    let rdkafka::producer::future_producer::Delivery { offset, .. } = large
        .send(
            FutureRecord::to(&bed.topic)
                .key(&key)
                .payload(&original)
                .headers(OwnedHeaders::new().insert(Header {
                    key: "event_type",
                    value: Some("order.confirmed"),
                })),
            Duration::from_secs(30),
        )
        .await
        .expect("the broker takes a record just under 1 MiB");
    let after = bed.confirmed(order_id).await;
    let consumer = bed.consume("oversized", Recorder::default());
    finish(&bed, consumer, "oversized", &[before, after]).await;

    let letters = letters(&bed, &bed.dead_letters).await;
    assert_eq!(letters.len(), 1, "one dead letter");
    let letter = &letters[0];
    assert_eq!(
        letter.truncated(),
        Some(Some(original.len())),
        "{:?}",
        letter.headers
    );
    assert_eq!(
        letter.origin(),
        format!(
            "{}[{}]@{offset}",
            bed.topic,
            letter.header("dlq.partition").unwrap()
        )
    );
    assert!(
        !letter.payload.is_empty() && letter.payload.len() < kafka::PRODUCER_MAX_MESSAGE_BYTES,
        "the payload was cut to what fits: {} bytes",
        letter.payload.len()
    );
    assert!(
        original.starts_with(&letter.payload),
        "the start of the original is kept"
    );
    assert_eq!(letter.header("event_type"), Some("order.confirmed"));
    let replayed = crate::dead_letters::replay(&bed.producer, &bed.dead_letters, letter).await;
    let refusal = format!(
        "{:#}",
        replayed.expect_err("a truncated letter is not replayed")
    );
    assert!(refusal.contains("truncated"), "{refusal}");
}

/// A dead-letter topic the broker does not know is created, and the letter lands in it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_dead_letter_topic_is_created() {
    let bed = bed().await;
    let order_id = Uuid::now_v7();
    bed.produce(order_id, b"{ not an event").await;
    let after = bed.confirmed(order_id).await;
    let mut consumer_loop = bed.consumer_loop("missing-dlq", Recorder::default());
    let missing = format!("{}missing.dlq", bed.config.topic_prefix);
    consumer_loop.dead_letter_topic = missing.clone();
    finish(&bed, spawn(consumer_loop), "missing-dlq", &[after]).await;

    let letters = letters(&bed, &missing).await;
    assert_eq!(
        letters.len(),
        1,
        "the poison message is in the created topic"
    );
    assert_eq!(letters[0].source_topic(), Some(bed.topic.as_str()));
    assert_eq!(letters[0].payload, b"{ not an event");
}

/// A query that fails the same way on every attempt (an undefined table, a value that does
/// not decode) is given up after the bounded attempts; the partition goes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn database_errors_that_fail_every_time_are_given_up_not_retried_forever() {
    let bed = bed().await;
    let order_id = Uuid::now_v7();
    let first = bed.confirmed(order_id).await;
    let undefined = bed.confirmed(order_id).await;
    let middle = bed.confirmed(order_id).await;
    let undecodable = bed.confirmed(order_id).await;
    let last = bed.confirmed(order_id).await;
    let recorder = Recorder {
        broken_query: BTreeMap::from([
            (undefined, "select name from no_such_table"),
            (undecodable, "select 42"),
        ]),
        ..Recorder::default()
    };
    let consumer = bed.consume("deterministic", recorder);
    bed.wait_for("events given up", "select count(*) from gave_up", 2)
        .await;
    finish(&bed, consumer, "deterministic", &[first, middle, last]).await;
    let gave_up: Vec<(Uuid, String)> = sqlx::query_as("select event_id, reason from gave_up")
        .fetch_all(&bed.pool)
        .await
        .unwrap();
    let gave_up: BTreeMap<Uuid, String> = gave_up.into_iter().collect();
    assert!(gave_up[&undefined].contains("no_such_table"), "{gave_up:?}");
    assert!(gave_up.contains_key(&undecodable), "{gave_up:?}");
}

/// Every SQLSTATE class that fails the same way on a retry is `Failed`; the ones a retry can
/// pass (connections, deadlocks, serialization, locks, cancellation, resources) are transient.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlstates_that_fail_every_time_are_failed_the_others_transient() {
    let pool = db::connect(&required("DATABASE_URL"), 1)
        .await
        .expect("connecting");
    let failed = [
        "0A000", "22P02", "22012", "23505", "23503", "42601", "42P01", "42703", "42501", "42883",
    ];
    let transient = [
        "40001", "40P01", "55P03", "57014", "57P01", "08006", "53300", "25P03",
    ];
    for code in failed.iter().chain(&transient) {
        let raised = sqlx::query(&format!(
            "do $$ begin raise exception 'test' using errcode = '{code}'; end $$"
        ))
        .execute(&pool)
        .await
        .expect_err("the block raises");
        assert_eq!(
            raised
                .as_database_error()
                .and_then(|error| error.code())
                .as_deref(),
            Some(*code)
        );
        let classified = HandlerError::from(raised);
        assert_eq!(
            matches!(classified, HandlerError::Failed(_)),
            failed.contains(code),
            "SQLSTATE {code}: {classified:?}"
        );
    }
}

#[test]
fn errors_reading_rows_fail_every_time_the_connection_ones_do_not() {
    let decode = || -> sqlx::error::BoxDynError { "unknown status shipped_later".into() };
    for error in [
        sqlx::Error::Decode(decode()),
        sqlx::Error::ColumnDecode {
            index: "0".to_owned(),
            source: decode(),
        },
        sqlx::Error::ColumnNotFound("status".to_owned()),
        sqlx::Error::TypeNotFound {
            type_name: "order_status".to_owned(),
        },
        sqlx::Error::RowNotFound,
    ] {
        let classified = HandlerError::from(error);
        assert!(
            matches!(classified, HandlerError::Failed(_)),
            "{classified:?}"
        );
    }
    for error in [
        sqlx::Error::PoolTimedOut,
        sqlx::Error::PoolClosed,
        sqlx::Error::Io(std::io::Error::from(std::io::ErrorKind::ConnectionReset)),
        sqlx::Error::Protocol("unexpected end".to_owned()),
    ] {
        let classified = HandlerError::from(error);
        assert!(
            matches!(classified, HandlerError::Database(_)),
            "{classified:?}"
        );
    }
}
