//! The replica reader against the real broker and PostgreSQL (`cargo xtask test` sets
//! `KAFKA_BROKERS` and `DATABASE_URL`): a fresh reader rebuilds the latest state per key from
//! the topic, tombstones delete, a restarted reader resumes from its stored offsets (no record
//! is applied twice), and two readers sharing one database apply each record once and end equal
//! to a reader of its own.

use std::collections::BTreeMap;

use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{Offset, TopicPartitionList};
use serde_json::{json, Value};
use uuid::Uuid;

use super::*;
use crate::test_env::messaging_database;

const WAIT: Duration = Duration::from_secs(60);

/// Keeps the latest value per key and logs every record it applies; the log's primary key
/// makes a record applied twice a failed transaction (and the test fails).
struct Table;

impl ReplicaStore for Table {
    type Record = Value;

    async fn upsert(
        &self,
        conn: &mut PgConnection,
        key: &str,
        record: Value,
        at: Position,
    ) -> Result<(), sqlx::Error> {
        log(conn, at).await?;
        sqlx::query(
            "insert into replicated (key, value) values ($1, $2)
             on conflict (key) do update set value = excluded.value",
        )
        .bind(key)
        .bind(record)
        .execute(conn)
        .await?;
        Ok(())
    }

    async fn delete(
        &self,
        conn: &mut PgConnection,
        key: &str,
        at: Position,
    ) -> Result<(), sqlx::Error> {
        log(conn, at).await?;
        sqlx::query("delete from replicated where key = $1")
            .bind(key)
            .execute(conn)
            .await?;
        Ok(())
    }
}

async fn log(conn: &mut PgConnection, at: Position) -> Result<(), sqlx::Error> {
    sqlx::query("insert into applied (kafka_partition, kafka_offset) values ($1, $2)")
        .bind(at.partition)
        .bind(at.offset)
        .execute(conn)
        .await?;
    Ok(())
}

async fn database(name: &str) -> PgPool {
    let pool = messaging_database(name).await;
    sqlx::raw_sql(
        "create table replicated (key text primary key, value jsonb not null);
         create table applied (kafka_partition int, kafka_offset bigint,
                               primary key (kafka_partition, kafka_offset));",
    )
    .execute(&pool)
    .await
    .expect("creating the test tables");
    pool
}

fn kafka_config(prefix: &str) -> KafkaConfig {
    crate::test_env::kafka_config(prefix, 3)
}

/// Sends `records` (a `None` value is a tombstone) and waits for every acknowledgement; updates
/// `expected` (the latest value per key) accordingly.
async fn produce(
    producer: &FutureProducer,
    topic: &str,
    records: &[(String, Option<Value>)],
    expected: &mut BTreeMap<String, Value>,
) {
    for (key, value) in records {
        let payload = value.as_ref().map(Value::to_string);
        let record = FutureRecord::<str, str>::to(topic).key(key);
        let record = match &payload {
            Some(payload) => record.payload(payload),
            None => record,
        };
        producer
            .send(record, Duration::from_secs(10))
            .await
            .map_err(|(error, _)| error)
            .expect("the broker takes the record");
        match value {
            Some(value) => expected.insert(key.clone(), value.clone()),
            None => expected.remove(key),
        };
    }
}

/// 20 keys, each updated `rounds` times; every fifth key is deleted at the end, and key 0 is
/// deleted then created again.
fn batch(round_base: i64, rounds: i64) -> Vec<(String, Option<Value>)> {
    let mut records = Vec::new();
    for round in round_base..round_base + rounds {
        for key in 0..20 {
            records.push((
                format!("sku-{key}"),
                Some(json!({"key": key, "round": round})),
            ));
        }
    }
    for key in (0..20).step_by(5) {
        records.push((format!("sku-{key}"), None));
    }
    records.push((
        "sku-0".to_owned(),
        Some(json!({"key": 0, "reborn": round_base})),
    ));
    records
}

async fn table(pool: &PgPool) -> BTreeMap<String, Value> {
    let rows: Vec<(String, Value)> = sqlx::query_as("select key, value from replicated")
        .fetch_all(pool)
        .await
        .expect("reading the replica");
    rows.into_iter().collect()
}

async fn applied(pool: &PgPool) -> i64 {
    sqlx::query_scalar("select count(*) from applied")
        .fetch_one(pool)
        .await
        .expect("counting")
}

struct Running {
    replica: Replica,
    stop: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

fn start(config: &KafkaConfig, pool: &PgPool) -> Running {
    let replica = Replica::new(
        config,
        "test",
        StateTopic::Products,
        ReplicaSettings {
            refresh: Duration::from_millis(200),
            ..ReplicaSettings::default()
        },
    )
    .expect("a replica");
    let stop = CancellationToken::new();
    let task = tokio::spawn(replica.clone().run(pool.clone(), Table, stop.clone()));
    Running {
        replica,
        stop,
        task,
    }
}

impl Running {
    async fn current(&self) {
        assert!(
            self.replica.wait_current(WAIT).await,
            "the replica did not catch up within {WAIT:?}: stored {:?}",
            self.replica.stored_offsets()
        );
    }

    async fn stop(self) {
        self.stop.cancel();
        tokio::time::timeout(WAIT, self.task)
            .await
            .expect("the reader stops")
            .expect("the reader does not panic");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_rebuild_resume_delete_and_agree_when_sharing_a_database() {
    let prefix = format!("replica-{}.", &Uuid::new_v4().simple().to_string()[..12]);
    let config = kafka_config(&prefix);
    let topic = StateTopic::Products.name(&prefix);
    let settings = vec![("cleanup.policy".to_owned(), "compact".to_owned())];
    kafka::ensure_topics_configured(&config, &[(topic.clone(), settings)])
        .await
        .expect("creating the topic");
    let producer = kafka::producer(&config).expect("a producer");
    let mut expected = BTreeMap::new();

    // An empty topic: current at once, nothing replicated.
    let own = database("shared_replica_own").await;
    let first = start(&config, &own);
    first.current().await;
    assert!(table(&own).await.is_empty());

    // A first batch, replicated by the running reader.
    let records = batch(0, 3);
    produce(&producer, &topic, &records, &mut expected).await;
    first.current().await;
    assert_eq!(
        table(&own).await,
        expected,
        "the replica after the first batch"
    );
    assert!(!expected.contains_key("sku-5"), "a tombstone deletes");
    assert_eq!(expected["sku-0"], json!({"key": 0, "reborn": 0}));
    let mut sent = records.len() as i64;
    assert_eq!(applied(&own).await, sent);

    // Stopped, more records, started again: it resumes from its stored offsets (a record
    // applied twice would fail on the log's primary key and never let it catch up).
    first.stop().await;
    let records = batch(3, 2);
    produce(&producer, &topic, &records, &mut expected).await;
    sent += records.len() as i64;
    let again = start(&config, &own);
    again.current().await;
    assert_eq!(table(&own).await, expected, "the replica after a restart");
    assert_eq!(
        applied(&own).await,
        sent,
        "every record applied exactly once"
    );

    // Two fresh readers sharing one database rebuild from the topic, while more comes in; each
    // record is applied once between them and the result equals the reader of its own.
    let shared = database("shared_replica_shared").await;
    let (one, two) = (start(&config, &shared), start(&config, &shared));
    let records = batch(5, 2);
    produce(&producer, &topic, &records, &mut expected).await;
    sent += records.len() as i64;
    for running in [&again, &one, &two] {
        running.current().await;
    }
    assert_eq!(table(&own).await, expected);
    assert_eq!(
        table(&shared).await,
        expected,
        "two readers on one database"
    );
    assert_eq!(applied(&own).await, sent);
    let shared_applied = applied(&shared).await;
    assert!(
        shared_applied <= sent,
        "{shared_applied} applications of {sent} records: some applied twice"
    );
    for running in [again, one, two] {
        running.stop().await;
    }
}

#[test]
fn current_means_every_partition_reached_its_high_watermark() {
    let marks: BTreeMap<i32, (i64, i64)> = [(0, (0, 5)), (1, (0, 0)), (2, (7, 7))].into();
    assert!(
        reached(&[(0, 5)].into(), &marks),
        "empty partitions need nothing"
    );
    assert!(reached(&[(0, 6), (1, 3)].into(), &marks));
    assert!(!reached(&[(0, 4)].into(), &marks));
    assert!(!reached(&BTreeMap::new(), &marks));
    assert!(
        !reached(&[(0, 5)].into(), &BTreeMap::new()),
        "no watermarks read: not known to be current"
    );
    assert_eq!(lag(&[(0, 2)].into(), &marks), 3);
    let compacted: BTreeMap<i32, (i64, i64)> = [(0, (10, 12))].into();
    assert_eq!(lag(&BTreeMap::new(), &compacted), 2);
}

/// Reads every record of partition 0 of `topic` from its start: (offset, key, value).
fn read_all(config: &KafkaConfig, topic: &str) -> Vec<(i64, String, Option<String>)> {
    use rdkafka::consumer::BaseConsumer;
    let consumer: BaseConsumer = kafka::base_config(config)
        .unwrap()
        .set("group.id", "compaction-reader")
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "false")
        .create()
        .unwrap();
    let (low, high) = consumer
        .fetch_watermarks(topic, 0, Duration::from_secs(10))
        .unwrap();
    let mut assignment = TopicPartitionList::new();
    assignment
        .add_partition_offset(topic, 0, Offset::Beginning)
        .unwrap();
    consumer.assign(&assignment).unwrap();
    let mut records = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while low < high
        && records
            .last()
            .is_none_or(|(offset, _, _)| offset + 1 < high)
    {
        assert!(Instant::now() < deadline, "reading {topic} took too long");
        if let Some(message) = consumer.poll(Duration::from_millis(200)) {
            let message = message.unwrap();
            let key = String::from_utf8_lossy(message.key().unwrap_or_default()).into_owned();
            let value = message
                .payload()
                .map(|value| String::from_utf8_lossy(value).into_owned());
            records.push((message.offset(), key, value));
        }
    }
    records
}

/// The compaction experiment (docs/CATALOG.md): 10 keys updated 20 times each and one of them
/// deleted, on a compacted topic, then read from the start until only the latest record of each
/// key is left. tansu 0.6 compacts in its maintenance task (every 10 minutes unless the storage
/// URL says `?maintenance_interval=2s`), so this runs only when asked, against a broker started
/// for it: `COMPACTION_WAIT_S=60 KAFKA_BROKERS=... cargo test -p shared --lib compaction --
/// --ignored`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs a broker that compacts within COMPACTION_WAIT_S"]
async fn a_compacted_topic_keeps_the_latest_record_of_each_key() {
    let wait = Duration::from_secs(
        std::env::var("COMPACTION_WAIT_S")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(60),
    );
    let prefix = format!("compaction-{}.", &Uuid::new_v4().simple().to_string()[..12]);
    let mut config = kafka_config(&prefix);
    config.topic_partitions = 1;
    let topic = StateTopic::Products.name(&prefix);
    let settings = StateTopic::Products
        .config()
        .iter()
        .map(|(key, value)| ((*key).to_owned(), (*value).to_owned()))
        .collect();
    kafka::ensure_topics_configured(&config, &[(topic.clone(), settings)])
        .await
        .expect("creating the topic");
    let producer = kafka::producer(&config).expect("a producer");
    let mut expected = BTreeMap::new();
    let mut records = Vec::new();
    for round in 0..20 {
        for key in 0..10 {
            records.push((format!("k{key}"), Some(json!({"round": round}))));
        }
    }
    records.push(("k0".to_owned(), None));
    produce(&producer, &topic, &records, &mut expected).await;
    let started = Instant::now();
    let before = read_all(&config, &topic);
    let after = loop {
        let now = read_all(&config, &topic);
        if now.len() == 10 || started.elapsed() > wait {
            break now;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    };
    eprintln!(
        "compaction: {} records -> {} after {:.1} s; offsets kept: {:?}",
        before.len(),
        after.len(),
        started.elapsed().as_secs_f64(),
        after
            .iter()
            .map(|(offset, _, _)| *offset)
            .collect::<Vec<_>>()
    );
    assert_eq!(
        after.len(),
        10,
        "one record per key within {wait:?}: {after:?}"
    );
    let last = after.iter().map(|(offset, _, _)| *offset).max();
    assert_eq!(last, Some(records.len() as i64 - 1), "offsets never change");
    let latest: BTreeMap<String, Option<String>> = after
        .into_iter()
        .map(|(_, key, value)| (key, value))
        .collect();
    assert_eq!(
        latest["k0"], None,
        "the tombstone is the key's latest record"
    );
    for key in 1..10 {
        let value: Value =
            serde_json::from_str(latest[&format!("k{key}")].as_deref().unwrap()).expect("JSON");
        assert_eq!(value, json!({"round": 19}));
    }
}
