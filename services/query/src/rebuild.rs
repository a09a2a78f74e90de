//! Rebuilding the views from the topics alone (Kafka as the event store), while the service
//! keeps serving and consuming: see [`run`].

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::Context;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::BorrowedMessage;
use rdkafka::{Message, Offset, TopicPartitionList};
use serde::Serialize;
use shared::topology;
use shared::Envelope;
use sqlx::{Connection, PgPool};

use crate::startup::MIGRATOR;
use crate::views::{self, Table, REBUILD_LOCK, VIEWS_LOCK};
use crate::Config;

/// A topic partition, by full topic name.
type Partition = (String, i32);

/// What a rebuild did.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// Events applied to the fresh tables (before and during the catch-up).
    pub events_applied: u64,
    /// Messages skipped because they are not events of ours (the live consumer dead-letters them).
    pub skipped: u64,
    /// Orders in the views swapped in.
    pub orders: i64,
    /// Orders whose events (all or some) the topics no longer held, carried over from the live
    /// views.
    pub carried_over: u64,
    /// The offsets the live views had reached when the swap happened: the rebuilt views
    /// reflect at least these (`topic -> partition -> next offset`).
    pub live_offsets: BTreeMap<String, BTreeMap<i32, i64>>,
    /// How long the live consumer was held (the catch-up and the swap), in milliseconds.
    pub held_ms: u64,
    pub took_ms: u64,
}

/// Most events applied in one transaction of the replay.
const REPLAY_BATCH: usize = 500;
/// How long the replay waits for a message before it commits what it has.
const IDLE: Duration = Duration::from_millis(200);
/// How long a replay may go without a message while it still expects some.
const STALLED: Duration = Duration::from_secs(60);

/// Rebuilds the order views from the earliest offsets of every event topic and swaps them in:
///
/// 1. takes [`REBUILD_LOCK`] for its session (a second rebuild exits at once) and creates
///    `order_views_rebuild`, empty, like `order_views`;
/// 2. reads every partition of every topic the service consumes from its low watermark (the
///    earliest offset retention kept; an assigned consumer, no group: the live group is
///    untouched) up to the end it had when the rebuild started, applying each event with the
///    live projection's code;
/// 3. takes [`VIEWS_LOCK`] exclusively (the live consumer holds it shared in every transaction
///    that applies an event, so it waits from here on), reads the offsets the live views
///    reflect (`consumer_offsets`) and replays on up to them, so nothing the live consumer
///    applied meanwhile is missing;
/// 4. swaps the tables in one transaction (`order_views` is renamed away and dropped,
///    `order_views_rebuild` takes its name) and lets the live consumer go on where it was.
///
/// Between 2 and 3 it carries over what only the live views still know ([`views::carry_over`]):
/// the rows of orders retention deleted every event of, and the events of an order some of
/// whose events it deleted; so a rebuild recomputes every view and loses none.
///
/// Reads are served throughout (from the old table until the swap commits). Runs as the
/// owner (`DATABASE_MIGRATION_URL` when set), which may create and rename tables.
pub async fn run(config: &Config) -> anyhow::Result<Report> {
    let started = Instant::now();
    let common = &config.common;
    let url = common
        .database_migration_url
        .as_deref()
        .unwrap_or(&common.database_url);
    let pool = shared::db::connect(url, 3).await?;
    shared::db::prepare(&pool, &MIGRATOR).await?;
    // Held by this connection, out of the pool, until it closes: when the rebuild ends, fails
    // or its process dies.
    let mut rebuild_lock = pool.acquire().await?.detach();
    let locked: bool = sqlx::query_scalar("select pg_try_advisory_lock($1)")
        .bind(REBUILD_LOCK)
        .fetch_one(&mut rebuild_lock)
        .await
        .context("taking the rebuild lock")?;
    anyhow::ensure!(
        locked,
        "another rebuild is running on this database (it holds advisory lock {REBUILD_LOCK:#x}); \
         run one at a time"
    );
    sqlx::raw_sql(
        "drop table if exists order_views_rebuild;
         create table order_views_rebuild (like order_views including all);",
    )
    .execute(&pool)
    .await
    .context("creating the fresh tables")?;

    let prefix = &common.kafka.topic_prefix;
    let topics: Vec<String> = topology::QUERY
        .consumes
        .iter()
        .map(|topic| topic.name(prefix))
        .collect();
    let group = common
        .kafka
        .group_id
        .clone()
        .unwrap_or_else(|| topology::QUERY.group_id.to_owned());
    let consumer: StreamConsumer = shared::kafka::base_config(&common.kafka)?
        // Never joined nor committed: assign() reads without the group.
        .set("group.id", format!("{group}-rebuild"))
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "false")
        // Retention deleting what the replay is about to read moves it to what is left.
        .set("auto.offset.reset", "earliest")
        .set(
            "fetch.wait.max.ms",
            common.kafka.fetch_wait_max_ms.to_string(),
        )
        .create()
        .context("creating the replay consumer")?;
    let (consumer, watermarks) = tokio::task::spawn_blocking(move || {
        let watermarks = watermarks(&consumer, &topics);
        (consumer, watermarks)
    })
    .await?;
    let watermarks = watermarks?;
    let ends: BTreeMap<Partition, i64> = watermarks
        .iter()
        .map(|(key, (_, high))| (key.clone(), *high))
        .collect();
    let mut assignment = TopicPartitionList::new();
    for ((topic, partition), (low, _)) in &watermarks {
        assignment.add_partition_offset(topic, *partition, Offset::Offset(*low))?;
    }
    consumer
        .assign(&assignment)
        .context("assigning the partitions")?;

    let mut replay = Replay {
        pool: pool.clone(),
        consumer,
        prefix: prefix.clone(),
        // Below the low watermark retention deleted everything: nothing to wait for there.
        positions: watermarks
            .iter()
            .map(|(key, (low, _))| (key.clone(), *low))
            .collect(),
        paused: Vec::new(),
        events_applied: 0,
        skipped: 0,
    };
    // What the topics held when the rebuild started, without holding anything.
    replay.until(&ends).await?;
    // Without holding anything either: whatever the live consumer applies from here on comes
    // from the topics, which the catch-up replays.
    let carried_over = {
        let mut tx = pool.begin().await?;
        let carried_over = views::carry_over(&mut tx)
            .await
            .context("carrying over what the topics no longer hold")?;
        tx.commit().await?;
        carried_over
    };

    let mut lock = pool.acquire().await?;
    sqlx::query("select pg_advisory_lock($1)")
        .bind(VIEWS_LOCK)
        .execute(&mut *lock)
        .await
        .context("taking the views lock")?;
    let held = Instant::now();
    let swapped = async {
        let live_offsets = views::as_of(&pool).await?.offsets;
        let live: BTreeMap<Partition, i64> = live_offsets
            .iter()
            .flat_map(|(topic, partitions)| {
                partitions
                    .iter()
                    .map(move |(partition, offset)| ((topic.clone(), *partition), *offset))
            })
            .filter(|(key, _)| replay.positions.contains_key(key))
            .collect();
        replay.until(&live).await?;
        let mut tx = lock.begin().await?;
        sqlx::raw_sql(
            "alter table order_views rename to order_views_retired;
             alter table order_views_rebuild rename to order_views;
             drop table order_views_retired;",
        )
        .execute(&mut *tx)
        .await
        .context("swapping the rebuilt tables in")?;
        tx.commit().await?;
        anyhow::Ok(live_offsets)
    }
    .await;
    let unlocked = sqlx::query("select pg_advisory_unlock($1)")
        .bind(VIEWS_LOCK)
        .execute(&mut *lock)
        .await;
    let held_ms = held.elapsed().as_millis() as u64;
    let live_offsets = swapped?;
    if let Err(error) = unlocked {
        // The lock goes with the connection.
        tracing::warn!(%error, "releasing the views lock; closing its connection");
        let _ = lock.detach().close().await;
    }
    let orders = sqlx::query_scalar("select count(*) from order_views")
        .fetch_one(&pool)
        .await?;
    let _ = rebuild_lock.close().await;
    Ok(Report {
        events_applied: replay.events_applied,
        skipped: replay.skipped,
        orders,
        carried_over,
        live_offsets,
        held_ms,
        took_ms: started.elapsed().as_millis() as u64,
    })
}

/// Every partition of `topics` with its low and high watermarks (the earliest offset still
/// held, the offset of the next message).
fn watermarks(
    consumer: &StreamConsumer,
    topics: &[String],
) -> anyhow::Result<BTreeMap<Partition, (i64, i64)>> {
    let timeout = Duration::from_secs(10);
    let mut ends = BTreeMap::new();
    for topic in topics {
        let metadata = consumer
            .fetch_metadata(Some(topic), timeout)
            .with_context(|| format!("reading the partitions of {topic}"))?;
        let partitions = metadata
            .topics()
            .first()
            .map(|topic| topic.partitions().len())
            .unwrap_or_default();
        anyhow::ensure!(partitions > 0, "topic {topic} has no partitions");
        for partition in 0..partitions as i32 {
            let watermarks = consumer
                .fetch_watermarks(topic, partition, timeout)
                .with_context(|| format!("reading the watermarks of {topic}[{partition}]"))?;
            ends.insert((topic.clone(), partition), watermarks);
        }
    }
    Ok(ends)
}

/// The replay into the fresh tables: where it is on each partition.
struct Replay {
    pool: PgPool,
    consumer: StreamConsumer,
    prefix: String,
    /// The next offset to apply, per partition.
    positions: BTreeMap<Partition, i64>,
    /// Partitions that reached the target of the last phase.
    paused: Vec<Partition>,
    events_applied: u64,
    skipped: u64,
}

impl Replay {
    /// Applies every message below `targets` (per partition), in transactions of up to
    /// [`REPLAY_BATCH`] events; messages at or past a target are left for later (the
    /// partition is sought back to them).
    async fn until(&mut self, targets: &BTreeMap<Partition, i64>) -> anyhow::Result<()> {
        let behind = |positions: &BTreeMap<Partition, i64>| {
            targets
                .iter()
                .any(|(key, target)| positions.get(key).is_some_and(|at| at < target))
        };
        if !self.paused.is_empty() {
            let mut resumed = TopicPartitionList::new();
            for (topic, partition) in self.paused.drain(..) {
                resumed.add_partition(&topic, partition);
            }
            self.consumer.resume(&resumed)?;
        }
        let mut last_message = Instant::now();
        while behind(&self.positions) {
            let mut tx = self.pool.begin().await?;
            let mut in_tx = 0;
            while in_tx < REPLAY_BATCH && behind(&self.positions) {
                let message = match tokio::time::timeout(IDLE, self.consumer.recv()).await {
                    Err(_) => break,
                    Ok(Err(error)) => {
                        tracing::warn!(%error, "replay: kafka error");
                        continue;
                    }
                    Ok(Ok(message)) => message,
                };
                last_message = Instant::now();
                let key = (message.topic().to_owned(), message.partition());
                let target = targets.get(&key).copied().unwrap_or(0);
                if message.offset() >= target {
                    // Past what this phase replays: read it again in the next one.
                    let offset = message.offset();
                    drop(message);
                    self.pause_at(key, offset)?;
                    continue;
                }
                if self
                    .positions
                    .get(&key)
                    .is_some_and(|at| message.offset() < *at)
                {
                    continue;
                }
                match self.envelope(&message) {
                    Some(envelope) => {
                        views::apply(&mut tx, Table::Rebuild, &envelope).await?;
                        self.events_applied += 1;
                        in_tx += 1;
                    }
                    None => self.skipped += 1,
                }
                self.positions.insert(key, message.offset() + 1);
            }
            tx.commit().await?;
            anyhow::ensure!(
                last_message.elapsed() < STALLED,
                "the replay got no message for {STALLED:?} while behind {targets:?} (at {:?})",
                self.positions
            );
        }
        Ok(())
    }

    /// Stops fetching `key` and sets it back to `offset` for the next phase.
    fn pause_at(&mut self, key: Partition, offset: i64) -> anyhow::Result<()> {
        let mut partition = TopicPartitionList::new();
        partition.add_partition(&key.0, key.1);
        self.consumer.pause(&partition)?;
        self.consumer.seek(
            &key.0,
            key.1,
            Offset::Offset(offset),
            Duration::from_secs(1),
        )?;
        self.paused.push(key);
        Ok(())
    }

    /// The event in `message`, if it is one of ours from its owner's topic (what the live
    /// consumer accepts).
    fn envelope(&self, message: &BorrowedMessage<'_>) -> Option<Envelope> {
        let envelope: Envelope = serde_json::from_slice(message.payload()?).ok()?;
        let event = envelope.event().ok()?;
        let owner = event.topic().base_name();
        (message.topic().strip_prefix(self.prefix.as_str()) == Some(owner)).then_some(envelope)
    }
}
