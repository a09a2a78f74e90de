//! A local replica of a compacted state topic (`crate::state`), kept in the service's own
//! database: a [`Replica`] runs as a worker (`ServiceBuilder::worker`) and hands every record to
//! a [`ReplicaStore`] the service implements (its own table: upsert by key, delete on a
//! tombstone).
//!
//! - **No consumer group membership**: the reader assigns itself every partition of the
//!   topic, so every instance reads everything and no rebalance ever pauses it (librdkafka
//!   wants a `group.id` to assign: the service's own, never joined, never committed to).
//! - **Offsets in the database**: `replica_offsets (topic, kafka_partition, next_offset)` is
//!   written in the transaction that applies the records before it, so a restart resumes
//!   exactly where the database is. A partition with no stored offset is read from the earliest
//!   one: a fresh database rebuilds the replica from the compacted topic.
//! - **Idempotent, also when several instances share one database**: a transaction locks its
//!   partitions' offset rows and applies only the records at or past the stored offset.
//! - **Current**: the replica is current when, for every partition, what is stored has reached
//!   the high watermark read from the broker. [`Replica::wait_current`] reads the watermarks
//!   now and waits (bounded) for this process's reader to have seen the database reach them;
//!   what this process saw is a lower bound of what is stored, so it never says current too
//!   early. [`Replica::is_current`] is the state at the last refresh (no broker round trip).
//! - **Visible**: `sagashop_replica_lag_records`, `sagashop_replica_current` and
//!   `sagashop_replica_behind_seconds` (how long it has not been current; grows while the
//!   reader is stuck) per service and topic on `/metrics`, refreshed every
//!   [`ReplicaSettings::refresh`]; a reader that fails retries with backoff from the stored
//!   offsets (`sagashop_replica_restarts_total`). A record whose value does not decode is
//!   skipped with an error log (`sagashop_replica_records_skipped_total`).
//!
//! Not handled: partitions added to the topic while the reader runs (it sees them when it
//! restarts).

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use futures::StreamExt;
use rdkafka::consumer::{BaseConsumer, Consumer, StreamConsumer};
use rdkafka::message::{BorrowedMessage, Message};
use rdkafka::{Offset, TopicPartitionList};
use serde::de::DeserializeOwned;
use sqlx::{PgConnection, PgPool};
use tokio_util::sync::CancellationToken;

use crate::config::KafkaConfig;
use crate::kafka;
use crate::topics::StateTopic;

/// Where a record sits in the topic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Position {
    pub partition: i32,
    pub offset: i64,
}

/// The service's side of a replica: how one record changes its table, in the reader's
/// transaction (which also stores the offset).
pub trait ReplicaStore: Send + Sync + 'static {
    /// The record type of the topic (e.g. `shared::state::ProductState`).
    type Record: DeserializeOwned + Send;

    /// The latest state of `key`: insert or replace its row.
    fn upsert(
        &self,
        conn: &mut PgConnection,
        key: &str,
        record: Self::Record,
        at: Position,
    ) -> impl Future<Output = Result<(), sqlx::Error>> + Send;

    /// A tombstone: `key` was deleted.
    fn delete(
        &self,
        conn: &mut PgConnection,
        key: &str,
        at: Position,
    ) -> impl Future<Output = Result<(), sqlx::Error>> + Send;
}

/// How a reader paces itself.
#[derive(Debug, Clone)]
pub struct ReplicaSettings {
    /// Most records applied in one transaction.
    pub batch_size: usize,
    /// How often the watermarks are read for [`Replica::is_current`] and the metrics.
    pub refresh: Duration,
    /// The longest a broker request (metadata, watermarks) may take.
    pub broker_timeout: Duration,
}

impl Default for ReplicaSettings {
    fn default() -> Self {
        Self {
            batch_size: 500,
            refresh: Duration::from_secs(1),
            broker_timeout: Duration::from_secs(5),
        }
    }
}

/// A replica of one state topic: clone it into the routes that read the replica and into the
/// worker that runs it ([`Replica::run`]).
#[derive(Clone)]
pub struct Replica(Arc<Inner>);

struct Inner {
    service: &'static str,
    topic: String,
    kafka: KafkaConfig,
    settings: ReplicaSettings,
    /// Watermark and metadata queries; it is never assigned anything.
    client: Arc<BaseConsumer>,
    state: Mutex<Seen>,
    changed: tokio::sync::Notify,
}

/// What this process knows.
#[derive(Default)]
struct Seen {
    /// Per partition, the next offset the database is known to have applied up to.
    stored: BTreeMap<i32, i64>,
    /// Per partition, (low, high) watermarks at the last refresh.
    watermarks: BTreeMap<i32, (i64, i64)>,
    /// When it was last seen current (`None`: never).
    current_at: Option<Instant>,
    started: Option<Instant>,
    /// The topic's partitions, once read.
    partitions: Option<Vec<i32>>,
}

/// Whether `stored` (next offset per partition) has reached every partition's high
/// watermark in `watermarks` ((low, high) per partition). An empty partition (low = high) is
/// reached whatever is stored; a partition with no stored offset has offset 0.
pub fn reached(stored: &BTreeMap<i32, i64>, watermarks: &BTreeMap<i32, (i64, i64)>) -> bool {
    !watermarks.is_empty()
        && watermarks.iter().all(|(partition, &(low, high))| {
            low >= high || stored.get(partition).copied().unwrap_or(0) >= high
        })
}

/// Records behind the high watermarks in all.
fn lag(stored: &BTreeMap<i32, i64>, watermarks: &BTreeMap<i32, (i64, i64)>) -> i64 {
    watermarks
        .iter()
        .map(|(partition, &(low, high))| {
            let next = stored.get(partition).copied().unwrap_or(0).max(low);
            (high - next).max(0)
        })
        .sum()
}

impl Replica {
    /// A replica of `topic` (with the configured prefix) for `service`; nothing runs until
    /// [`Replica::run`].
    pub fn new(
        kafka: &KafkaConfig,
        service: &'static str,
        topic: StateTopic,
        settings: ReplicaSettings,
    ) -> anyhow::Result<Self> {
        let client: BaseConsumer = kafka::base_config(kafka)?
            .create()
            .context("creating the replica's watermark client")?;
        Ok(Self(Arc::new(Inner {
            service,
            topic: topic.name(&kafka.topic_prefix),
            kafka: kafka.clone(),
            settings,
            client: Arc::new(client),
            state: Mutex::new(Seen::default()),
            changed: tokio::sync::Notify::new(),
        })))
    }

    /// The topic's full name.
    pub fn topic(&self) -> &str {
        &self.0.topic
    }

    /// Whether the replica had reached the high watermarks at the last refresh.
    pub fn is_current(&self) -> bool {
        let seen = self.0.state.lock().expect("not poisoned");
        reached(&seen.stored, &seen.watermarks)
    }

    /// Reads every partition's high watermark from the broker now and waits until the
    /// database is known to have applied up to them: `true` if it did within `timeout`
    /// (watermark read included), `false` if not (the broker or the reader is slow, or down).
    /// Every partition, not only a key's: which partition a key lands on is the producer's
    /// partitioner's business (librdkafka's and Java's differ).
    pub async fn wait_current(&self, timeout: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        let targets = match tokio::time::timeout_at(deadline, self.read_watermarks(timeout)).await {
            Ok(Ok(targets)) => targets,
            Ok(Err(error)) => {
                tracing::debug!(
                    error = format!("{error:#}"),
                    "could not read the watermarks"
                );
                return false;
            }
            Err(_) => return false,
        };
        loop {
            let changed = self.0.changed.notified();
            if reached(&self.0.state.lock().expect("not poisoned").stored, &targets) {
                return true;
            }
            if tokio::time::timeout_at(deadline, changed).await.is_err() {
                return false;
            }
        }
    }

    /// The next offset stored per partition, as far as this process has seen.
    pub fn stored_offsets(&self) -> BTreeMap<i32, i64> {
        self.0.state.lock().expect("not poisoned").stored.clone()
    }

    /// Reads and applies the topic into `store` until `shutdown` is cancelled; a failure (the
    /// database or the broker) is logged and retried with backoff from the stored offsets.
    pub async fn run<S: ReplicaStore>(self, pool: PgPool, store: S, shutdown: CancellationToken) {
        self.0.state.lock().expect("not poisoned").started = Some(Instant::now());
        let store = Arc::new(store);
        let mut backoff = Duration::from_millis(200);
        while !shutdown.is_cancelled() {
            let started = Instant::now();
            match self.read(&pool, &store, &shutdown).await {
                Ok(()) => return,
                Err(error) => {
                    metrics::counter!("sagashop_replica_restarts_total",
                        "service" => self.0.service, "topic" => self.0.topic.clone())
                    .increment(1);
                    if started.elapsed() > Duration::from_secs(30) {
                        backoff = Duration::from_millis(200);
                    }
                    tracing::warn!(
                        topic = %self.0.topic,
                        error = format!("{error:#}"),
                        "replica reader failed; resuming from the stored offsets in {backoff:?}"
                    );
                    tokio::select! {
                        _ = shutdown.cancelled() => return,
                        _ = tokio::time::sleep(backoff) => {}
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                }
            }
        }
    }

    /// One run of the reader: assign every partition from the stored offsets and apply what
    /// comes; `Ok` on shutdown.
    async fn read<S: ReplicaStore>(
        &self,
        pool: &PgPool,
        store: &Arc<S>,
        shutdown: &CancellationToken,
    ) -> anyhow::Result<()> {
        let partitions = self.read_partitions().await?;
        self.0.state.lock().expect("not poisoned").partitions = Some(partitions.clone());
        let stored = load_offsets(pool, &self.0.topic).await?;
        self.saw_stored(&stored);
        let mut assignment = TopicPartitionList::new();
        for &partition in &partitions {
            let offset = stored
                .get(&partition)
                .map_or(Offset::Beginning, |&next| Offset::Offset(next));
            assignment
                .add_partition_offset(&self.0.topic, partition, offset)
                .context("building the assignment")?;
        }
        // librdkafka assigns partitions only to a consumer with a group id; it never joins the
        // group (no subscribe) nor commits to it (offsets live in the database). The service's
        // own group, which its Kafka user may already use (docker/kafka/set-acls.sh).
        let group_id = self
            .0
            .kafka
            .group_id
            .clone()
            .unwrap_or_else(|| format!("{}-service", self.0.service));
        let consumer: StreamConsumer = kafka::base_config(&self.0.kafka)?
            .set("group.id", group_id)
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("enable.partition.eof", "false")
            .set("auto.offset.reset", "earliest")
            .set(
                "fetch.wait.max.ms",
                self.0.kafka.fetch_wait_max_ms.to_string(),
            )
            .create()
            .context("creating the replica's consumer")?;
        consumer
            .assign(&assignment)
            .context("assigning the partitions")?;
        tracing::info!(topic = %self.0.topic, ?stored, "replica reader assigned {} partitions", partitions.len());
        let result = self.apply_stream(pool, store, &consumer, shutdown).await;
        // Destroying a client waits for its threads (and for a broker that may not answer): on
        // a thread of its own, which the process does not wait for when it exits.
        drop(off_runtime(move || drop(consumer)));
        result
    }

    async fn apply_stream<S: ReplicaStore>(
        &self,
        pool: &PgPool,
        store: &Arc<S>,
        consumer: &StreamConsumer,
        shutdown: &CancellationToken,
    ) -> anyhow::Result<()> {
        let mut batches = consumer
            .stream()
            .ready_chunks(self.0.settings.batch_size.max(1));
        let mut refresh = tokio::time::interval(self.0.settings.refresh);
        refresh.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let batch = tokio::select! {
                _ = shutdown.cancelled() => return Ok(()),
                _ = refresh.tick() => {
                    self.refresh().await;
                    continue;
                }
                batch = batches.next() => batch,
            };
            let Some(batch) = batch else {
                anyhow::bail!("the consumer's stream ended");
            };
            let mut messages = Vec::with_capacity(batch.len());
            for message in batch {
                match message {
                    Ok(message) => messages.push(message),
                    Err(error) => {
                        tracing::warn!(topic = %self.0.topic, %error, "kafka consumer error")
                    }
                }
            }
            if !messages.is_empty() {
                let stored = self.apply(pool, store.as_ref(), &messages).await?;
                self.saw_stored(&stored);
            }
        }
    }

    /// Applies `messages` (in their order within each partition) and their offsets in one
    /// transaction; returns the stored offsets of their partitions afterwards.
    async fn apply<S: ReplicaStore>(
        &self,
        pool: &PgPool,
        store: &S,
        messages: &[BorrowedMessage<'_>],
    ) -> anyhow::Result<BTreeMap<i32, i64>> {
        let topic = &self.0.topic;
        let mut partitions: Vec<i32> = messages.iter().map(Message::partition).collect();
        partitions.sort_unstable();
        partitions.dedup();
        let mut tx = pool.begin().await?;
        sqlx::query(
            "insert into replica_offsets (topic, kafka_partition, next_offset)
             select $1, partition, 0 from unnest($2::int[]) as partition
             on conflict (topic, kafka_partition) do nothing",
        )
        .bind(topic)
        .bind(&partitions)
        .execute(&mut *tx)
        .await?;
        // Locked in partition order: instances sharing the database take turns.
        let locked: Vec<(i32, i64)> = sqlx::query_as(
            "select kafka_partition, next_offset from replica_offsets
             where topic = $1 and kafka_partition = any($2) order by kafka_partition for update",
        )
        .bind(topic)
        .bind(&partitions)
        .fetch_all(&mut *tx)
        .await?;
        let mut next: BTreeMap<i32, i64> = locked.into_iter().collect();
        let (mut applied, mut skipped) = (0_u64, 0_u64);
        for message in messages {
            let position = Position {
                partition: message.partition(),
                offset: message.offset(),
            };
            let stored = next.entry(position.partition).or_insert(0);
            if position.offset < *stored {
                continue;
            }
            *stored = position.offset + 1;
            let key = match message.key().map(std::str::from_utf8) {
                Some(Ok(key)) => key,
                _ => {
                    tracing::error!(
                        topic,
                        ?position,
                        "a state record without a UTF-8 key; skipped"
                    );
                    skipped += 1;
                    continue;
                }
            };
            match message.payload() {
                None => store.delete(&mut tx, key, position).await?,
                Some(value) => match serde_json::from_slice::<S::Record>(value) {
                    Ok(record) => store.upsert(&mut tx, key, record, position).await?,
                    Err(error) => {
                        tracing::error!(topic, key, ?position, %error, "a state record that does not decode; skipped");
                        skipped += 1;
                        continue;
                    }
                },
            }
            applied += 1;
        }
        let (parts, offsets): (Vec<i32>, Vec<i64>) = next.iter().map(|(p, o)| (*p, *o)).unzip();
        sqlx::query(
            "update replica_offsets set next_offset = moved.next_offset, updated_at = now()
             from unnest($2::int[], $3::bigint[]) as moved (kafka_partition, next_offset)
             where topic = $1 and replica_offsets.kafka_partition = moved.kafka_partition
               and replica_offsets.next_offset < moved.next_offset",
        )
        .bind(topic)
        .bind(&parts)
        .bind(&offsets)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        let labels = [
            ("service", self.0.service.to_owned()),
            ("topic", topic.clone()),
        ];
        metrics::counter!("sagashop_replica_records_applied_total", &labels).increment(applied);
        if skipped > 0 {
            metrics::counter!("sagashop_replica_records_skipped_total", &labels).increment(skipped);
        }
        Ok(next)
    }

    /// Records offsets the database is known to hold and wakes whoever waits for them.
    fn saw_stored(&self, stored: &BTreeMap<i32, i64>) {
        let mut seen = self.0.state.lock().expect("not poisoned");
        for (&partition, &next) in stored {
            let known = seen.stored.entry(partition).or_insert(next);
            *known = (*known).max(next);
        }
        if reached(&seen.stored, &seen.watermarks) {
            seen.current_at = Some(Instant::now());
        }
        drop(seen);
        self.0.changed.notify_waiters();
    }

    /// Reads the watermarks and updates [`Replica::is_current`] and the metrics.
    async fn refresh(&self) {
        let watermarks = match self.read_watermarks(self.0.settings.broker_timeout).await {
            Ok(watermarks) => watermarks,
            Err(error) => {
                tracing::debug!(
                    error = format!("{error:#}"),
                    "could not read the watermarks"
                );
                return;
            }
        };
        let mut seen = self.0.state.lock().expect("not poisoned");
        seen.watermarks = watermarks;
        let current = reached(&seen.stored, &seen.watermarks);
        let now = Instant::now();
        if current {
            seen.current_at = Some(now);
        }
        let behind = if current {
            0.0
        } else {
            let since = seen.current_at.or(seen.started).unwrap_or(now);
            now.duration_since(since).as_secs_f64()
        };
        let lag = lag(&seen.stored, &seen.watermarks);
        drop(seen);
        let labels = [
            ("service", self.0.service.to_owned()),
            ("topic", self.0.topic.clone()),
        ];
        metrics::gauge!("sagashop_replica_lag_records", &labels).set(lag as f64);
        metrics::gauge!("sagashop_replica_current", &labels).set(if current { 1.0 } else { 0.0 });
        metrics::gauge!("sagashop_replica_behind_seconds", &labels).set(behind);
    }

    /// The topic's partitions, from the broker's metadata the first time.
    async fn partitions(&self) -> anyhow::Result<Vec<i32>> {
        if let Some(known) = &self.0.state.lock().expect("not poisoned").partitions {
            return Ok(known.clone());
        }
        let partitions = self.read_partitions().await?;
        self.0.state.lock().expect("not poisoned").partitions = Some(partitions.clone());
        Ok(partitions)
    }

    async fn read_partitions(&self) -> anyhow::Result<Vec<i32>> {
        let client = Arc::clone(&self.0.client);
        let topic = self.0.topic.clone();
        let timeout = self.0.settings.broker_timeout;
        off_runtime(move || {
            let metadata = client
                .fetch_metadata(Some(&topic), timeout)
                .context("fetching the topic's metadata")?;
            let found = metadata
                .topics()
                .iter()
                .find(|found| found.name() == topic)
                .with_context(|| format!("the broker does not know topic {topic}"))?;
            if let Some(error) = found.error() {
                anyhow::bail!("topic {topic}: {error:?}");
            }
            let mut partitions: Vec<i32> = found.partitions().iter().map(|p| p.id()).collect();
            partitions.sort_unstable();
            if partitions.is_empty() {
                anyhow::bail!("topic {topic} has no partitions");
            }
            Ok(partitions)
        })
        .await?
    }

    /// (low, high) watermarks of every partition, read from the broker now.
    async fn read_watermarks(
        &self,
        timeout: Duration,
    ) -> anyhow::Result<BTreeMap<i32, (i64, i64)>> {
        let partitions = self.partitions().await?;
        let client = Arc::clone(&self.0.client);
        let topic = self.0.topic.clone();
        off_runtime(move || {
            partitions
                .into_iter()
                .map(|partition| {
                    let marks = client
                        .fetch_watermarks(&topic, partition, timeout)
                        .with_context(|| format!("watermarks of {topic}/{partition}"))?;
                    Ok((partition, marks))
                })
                .collect()
        })
        .await?
    }
}

/// Runs `work`, a blocking librdkafka call, on a thread of its own rather than the runtime's
/// blocking pool: a runtime waits for its blocking tasks when it shuts down, so a call to a
/// broker that does not answer would hold the process's exit past its shutdown budget.
fn off_runtime<T: Send + 'static>(
    work: impl FnOnce() -> T + Send + 'static,
) -> impl Future<Output = anyhow::Result<T>> {
    let (sender, receiver) = tokio::sync::oneshot::channel();
    let started = std::thread::Builder::new()
        .name("replica-broker-call".to_owned())
        .spawn(move || {
            let _ = sender.send(work());
        });
    async move {
        started.context("starting a thread for a broker call")?;
        receiver
            .await
            .context("the broker call's thread ended without an answer")
    }
}

/// The stored next offset of every partition of `topic`.
async fn load_offsets(pool: &PgPool, topic: &str) -> Result<BTreeMap<i32, i64>, sqlx::Error> {
    let rows: Vec<(i32, i64)> =
        sqlx::query_as("select kafka_partition, next_offset from replica_offsets where topic = $1")
            .bind(topic)
            .fetch_all(pool)
            .await?;
    Ok(rows.into_iter().collect())
}

#[cfg(test)]
mod tests;
