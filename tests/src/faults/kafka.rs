//! Kafka tooling for the fault cases: consumer lag and committed offsets of a group, committing
//! offsets for an empty group (rewind), producing raw records (poison), reading a whole topic
//! (dead letters), and the duplicator that delivers every event twice.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use futures::stream::FuturesUnordered;
use futures::StreamExt;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, StreamConsumer};
use rdkafka::message::{BorrowedMessage, Header, Headers, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{ClientConfig, Message, Offset, TopicPartitionList};
use tokio::sync::watch;

const TIMEOUT: Duration = Duration::from_secs(10);

/// Where a group stands on one partition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionState {
    pub topic: String,
    pub partition: i32,
    /// The group's committed offset (the next message it will read), if any.
    pub committed: Option<i64>,
    pub low: i64,
    pub high: i64,
}

impl PartitionState {
    /// Messages the group has not consumed yet.
    pub fn lag(&self) -> i64 {
        self.high - self.committed.unwrap_or(self.low).max(self.low)
    }
}

impl std::fmt::Display for PartitionState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let committed = self
            .committed
            .map_or_else(|| "none".to_owned(), |c| c.to_string());
        write!(
            f,
            "{}[{}] committed {committed} of {}",
            self.topic, self.partition, self.high
        )
    }
}

fn base_config(brokers: &str) -> ClientConfig {
    let mut config = ClientConfig::new();
    config.set("bootstrap.servers", brokers);
    config.set("log_level", "3");
    config
}

/// A consumer that never joins a group: for committed offsets, watermarks, metadata.
fn inspector(brokers: &str, group: &str) -> anyhow::Result<BaseConsumer> {
    base_config(brokers)
        .set("group.id", group)
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .create()
        .context("creating an inspecting consumer")
}

fn partitions(consumer: &BaseConsumer, topic: &str) -> anyhow::Result<Vec<i32>> {
    let metadata = consumer
        .fetch_metadata(Some(topic), TIMEOUT)
        .with_context(|| format!("metadata of {topic}"))?;
    let topic_metadata = metadata
        .topics()
        .iter()
        .find(|t| t.name() == topic)
        .with_context(|| format!("no metadata for {topic}"))?;
    if let Some(error) = topic_metadata.error() {
        bail!("metadata of {topic}: {error:?}");
    }
    let mut ids: Vec<i32> = topic_metadata.partitions().iter().map(|p| p.id()).collect();
    ids.sort();
    if ids.is_empty() {
        bail!("{topic} has no partitions");
    }
    Ok(ids)
}

/// `group`'s committed offset and the watermarks of every partition of `topics`.
pub async fn group_state(
    brokers: &str,
    group: &str,
    topics: &[String],
) -> anyhow::Result<Vec<PartitionState>> {
    let (brokers, group, topics) = (brokers.to_owned(), group.to_owned(), topics.to_vec());
    tokio::task::spawn_blocking(move || {
        let consumer = inspector(&brokers, &group)?;
        let mut list = TopicPartitionList::new();
        let mut states = Vec::new();
        for topic in &topics {
            for partition in partitions(&consumer, topic)? {
                list.add_partition(topic, partition);
                let (low, high) = consumer
                    .fetch_watermarks(topic, partition, TIMEOUT)
                    .with_context(|| format!("watermarks of {topic}[{partition}]"))?;
                states.push(PartitionState {
                    topic: topic.clone(),
                    partition,
                    committed: None,
                    low,
                    high,
                });
            }
        }
        let committed = consumer
            .committed_offsets(list, TIMEOUT)
            .with_context(|| format!("committed offsets of {group}"))?;
        for state in &mut states {
            if let Some(element) = committed.find_partition(&state.topic, state.partition) {
                if let Offset::Offset(offset) = element.offset() {
                    state.committed = Some(offset);
                }
            }
        }
        Ok(states)
    })
    .await?
}

/// Commits `offsets` for `group` from outside the group (it must have no members then: this
/// is how an operator rewinds a stopped consumer group).
pub async fn commit_offsets(
    brokers: &str,
    group: &str,
    offsets: &[(String, i32, i64)],
) -> anyhow::Result<()> {
    let (brokers, group, offsets) = (brokers.to_owned(), group.to_owned(), offsets.to_vec());
    tokio::task::spawn_blocking(move || {
        let consumer = inspector(&brokers, &group)?;
        let mut list = TopicPartitionList::new();
        for (topic, partition, offset) in &offsets {
            list.add_partition_offset(topic, *partition, Offset::Offset(*offset))?;
        }
        consumer
            .commit(&list, CommitMode::Sync)
            .with_context(|| format!("committing offsets for {group}"))
    })
    .await?
}

/// A producer like the services' (idempotent, acks=all).
pub fn producer(brokers: &str) -> anyhow::Result<FutureProducer> {
    base_config(brokers)
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("linger.ms", "5")
        .set("message.timeout.ms", "30000")
        .create()
        .context("creating a producer")
}

/// Produces one record; returns (partition, offset).
pub async fn produce(
    producer: &FutureProducer,
    topic: &str,
    key: Option<&[u8]>,
    payload: &[u8],
    headers: &[(&str, &[u8])],
) -> anyhow::Result<(i32, i64)> {
    let mut owned = OwnedHeaders::new();
    for (key, value) in headers {
        owned = owned.insert(Header {
            key,
            value: Some(*value),
        });
    }
    let mut record = FutureRecord::<[u8], [u8]>::to(topic)
        .payload(payload)
        .headers(owned);
    if let Some(key) = key {
        record = record.key(key);
    }
    let delivery = producer
        .send(record, Duration::from_secs(30))
        .await
        .map_err(|(error, _)| error)
        .with_context(|| format!("producing to {topic}"))?;
    Ok((delivery.partition, delivery.offset))
}

/// A record as read back.
#[derive(Debug, Clone)]
pub struct Record {
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
    pub key: Option<Vec<u8>>,
    pub payload: Option<Vec<u8>>,
    pub headers: Vec<(String, Option<Vec<u8>>)>,
}

impl Record {
    fn from_message(message: &BorrowedMessage<'_>) -> Self {
        let headers = message
            .headers()
            .map(|headers| {
                headers
                    .iter()
                    .map(|h| (h.key.to_owned(), h.value.map(<[u8]>::to_vec)))
                    .collect()
            })
            .unwrap_or_default();
        Self {
            topic: message.topic().to_owned(),
            partition: message.partition(),
            offset: message.offset(),
            key: message.key().map(<[u8]>::to_vec),
            payload: message.payload().map(<[u8]>::to_vec),
            headers,
        }
    }

    /// The value of the last header named `key`, as text.
    pub fn header(&self, key: &str) -> Option<String> {
        self.headers
            .iter()
            .rev()
            .find(|(k, _)| k == key)
            .and_then(|(_, v)| v.as_deref())
            .map(|v| String::from_utf8_lossy(v).into_owned())
    }
}

/// Every record of `topic` from the low to the high watermark at the time of the call (an
/// assigned consumer, no group).
pub async fn read_topic(brokers: &str, topic: &str) -> anyhow::Result<Vec<Record>> {
    let (brokers, topic) = (brokers.to_owned(), topic.to_owned());
    tokio::task::spawn_blocking(move || {
        let consumer: BaseConsumer = base_config(&brokers)
            .set("group.id", "faults-reader")
            .set("enable.auto.commit", "false")
            .set("fetch.wait.max.ms", "10")
            .set("fetch.message.max.bytes", "2000000")
            .create()?;
        let mut list = TopicPartitionList::new();
        let mut remaining: BTreeMap<i32, i64> = BTreeMap::new();
        for partition in partitions(&consumer, &topic)? {
            let (low, high) = consumer.fetch_watermarks(&topic, partition, TIMEOUT)?;
            if high > low {
                list.add_partition_offset(&topic, partition, Offset::Offset(low))?;
                remaining.insert(partition, high);
            }
        }
        let mut records = Vec::new();
        if remaining.is_empty() {
            return Ok(records);
        }
        consumer.assign(&list)?;
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        while !remaining.is_empty() {
            if std::time::Instant::now() > deadline {
                bail!("reading {topic}: still missing {remaining:?} after 60 s");
            }
            match consumer.poll(Duration::from_millis(500)) {
                Some(Ok(message)) => {
                    let record = Record::from_message(&message);
                    if let Some(&high) = remaining.get(&record.partition) {
                        if record.offset + 1 >= high {
                            remaining.remove(&record.partition);
                        }
                        if record.offset < high {
                            records.push(record);
                        }
                    }
                }
                Some(Err(error)) => bail!("reading {topic}: {error}"),
                None => {}
            }
        }
        Ok(records)
    })
    .await?
}

/// The header the duplicator puts on its copies (so it never copies a copy).
pub const COPY_HEADER: &str = "faults.copy";

/// Consumes the four saga topics in a group of its own and produces every message it sees
/// once more to the same topic and partition, with the same key, bytes and headers plus
/// [`COPY_HEADER`]: every event is delivered twice, the copy after the original.
pub struct Duplicator {
    pub group: String,
    topics: Vec<String>,
    brokers: String,
    stop: watch::Sender<bool>,
    task: Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
    pub copied: Arc<AtomicU64>,
    in_flight: Arc<AtomicU64>,
}

impl Duplicator {
    pub fn start(brokers: &str, group: &str, topics: Vec<String>) -> anyhow::Result<Self> {
        let consumer: StreamConsumer = base_config(brokers)
            .set("group.id", group)
            .set("enable.auto.commit", "true")
            .set("auto.commit.interval.ms", "500")
            .set("auto.offset.reset", "earliest")
            .set("fetch.wait.max.ms", "100")
            .set("fetch.message.max.bytes", "2000000")
            .create()
            .context("creating the duplicator's consumer")?;
        let names: Vec<&str> = topics.iter().map(String::as_str).collect();
        consumer.subscribe(&names)?;
        let producer = producer(brokers)?;
        let (stop, mut stopped) = watch::channel(false);
        let copied = Arc::new(AtomicU64::new(0));
        let in_flight = Arc::new(AtomicU64::new(0));
        let (copied_task, in_flight_task) = (copied.clone(), in_flight.clone());
        let task = tokio::spawn(async move {
            let mut deliveries = FuturesUnordered::new();
            loop {
                tokio::select! {
                    _ = stopped.changed() => break,
                    Some(result) = deliveries.next(), if !deliveries.is_empty() => {
                        in_flight_task.fetch_sub(1, Ordering::SeqCst);
                        if let Err(error) = result {
                            return Err(anyhow::anyhow!("duplicator: producing a copy: {error}"));
                        }
                        copied_task.fetch_add(1, Ordering::SeqCst);
                    }
                    message = consumer.recv(), if deliveries.len() < 200 => {
                        let message = match message {
                            Ok(message) => message,
                            Err(error) => {
                                eprintln!("duplicator: consumer error: {error}");
                                tokio::time::sleep(Duration::from_millis(200)).await;
                                continue;
                            }
                        };
                        let record = Record::from_message(&message);
                        if record.header(COPY_HEADER).is_some() {
                            continue;
                        }
                        in_flight_task.fetch_add(1, Ordering::SeqCst);
                        let producer = producer.clone();
                        deliveries.push(async move {
                            let mut headers = OwnedHeaders::new();
                            for (key, value) in &record.headers {
                                headers = headers.insert(Header { key: key.as_str(), value: value.as_deref() });
                            }
                            headers = headers.insert(Header { key: COPY_HEADER, value: Some("1") });
                            let mut copy = FutureRecord::<[u8], [u8]>::to(&record.topic)
                                .partition(record.partition)
                                .headers(headers);
                            if let Some(key) = record.key.as_deref() {
                                copy = copy.key(key);
                            }
                            if let Some(payload) = record.payload.as_deref() {
                                copy = copy.payload(payload);
                            }
                            producer
                                .send(copy, Duration::from_secs(30))
                                .await
                                .map(|_| ())
                                .map_err(|(error, _)| error)
                        });
                    }
                }
            }
            let _ = consumer.commit_consumer_state(CommitMode::Sync);
            Ok(())
        });
        Ok(Self {
            group: group.to_owned(),
            topics,
            brokers: brokers.to_owned(),
            stop,
            task: Some(task),
            copied,
            in_flight,
        })
    }

    /// Whether it has copied everything in the topics so far (no lag, nothing in flight).
    pub async fn caught_up(&mut self) -> anyhow::Result<bool> {
        if let Some(task) = &self.task {
            if task.is_finished() {
                let task = self.task.take().expect("checked");
                task.await??;
                bail!("the duplicator stopped");
            }
        }
        let states = group_state(&self.brokers, &self.group, &self.topics).await?;
        Ok(self.in_flight.load(Ordering::SeqCst) == 0 && states.iter().all(|s| s.lag() == 0))
    }

    pub async fn stop(&mut self) -> anyhow::Result<()> {
        let _ = self.stop.send(true);
        if let Some(task) = self.task.take() {
            task.await??;
        }
        Ok(())
    }
}

/// Fetches `/metrics` and sums the samples of `name` whose labels include every `labels` pair.
pub async fn metric(
    http: &reqwest::Client,
    base_url: &str,
    name: &str,
    labels: &[(&str, &str)],
) -> anyhow::Result<f64> {
    let response = http.get(format!("{base_url}/metrics")).send().await?;
    if !response.status().is_success() {
        bail!("GET {base_url}/metrics: {}", response.status());
    }
    let text = response.text().await?;
    Ok(sum_metric(&text, name, labels))
}

/// Sums the samples of `name` in Prometheus text whose labels include every `labels` pair.
pub fn sum_metric(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    text.lines()
        .filter(|line| !line.starts_with('#'))
        .filter_map(|line| {
            let (series, value) = line.rsplit_once(' ')?;
            let (metric, label_text) = match series.split_once('{') {
                Some((metric, rest)) => (metric, rest.trim_end_matches('}')),
                None => (series, ""),
            };
            if metric != name {
                return None;
            }
            let matches = labels
                .iter()
                .all(|(k, v)| label_text.contains(&format!("{k}=\"{v}\"")));
            matches.then(|| value.parse::<f64>().ok()).flatten()
        })
        .sum()
}
