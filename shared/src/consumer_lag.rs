//! Consumer lag per group, topic and partition, sampled every [`SAMPLE_EVERY`] off the
//! consumer's path: a client of its own (it never joins the group) reads the group's committed
//! offsets and each partition's high watermark, and sets `sagashop_consumer_lag_records` to
//! their difference (from the low watermark when the group has committed nothing there yet).
//! Every replica of a service reports its group's whole lag: aggregate with `max`, not `sum`.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{Offset, TopicPartitionList};

use crate::config::KafkaConfig;
use crate::service::CancellationToken;

/// How often the lag is sampled.
pub const SAMPLE_EVERY: Duration = Duration::from_secs(15);

/// How long one call to the broker may take.
pub const TIMEOUT: Duration = Duration::from_secs(5);

/// One partition's lag.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionLag {
    pub topic: String,
    pub partition: i32,
    pub records: i64,
}

/// Samples the lag of `group` on `topics` until `shutdown`, as the gauge of `service`. The
/// sampling runs on a thread of its own: its calls to the broker block (up to [`TIMEOUT`] each
/// while the broker is down), and a stopping service must not wait for them.
pub async fn run(
    service: &'static str,
    kafka: KafkaConfig,
    group: String,
    topics: Vec<String>,
    shutdown: CancellationToken,
) {
    let client = match crate::kafka::base_config(&kafka).and_then(|mut config| {
        config
            .set("group.id", &group)
            .set("enable.auto.commit", "false")
            .create::<BaseConsumer>()
            .context("creating the consumer-lag client")
    }) {
        Ok(client) => client,
        Err(error) => {
            tracing::warn!(error = format!("{error:#}"), "no consumer-lag metrics");
            shutdown.cancelled().await;
            return;
        }
    };
    let stopped = Arc::new(AtomicBool::new(false));
    let stop = Arc::clone(&stopped);
    let sampler = move || {
        while !stopped.load(Ordering::Relaxed) {
            match sample(&client, &topics) {
                Ok(lags) => {
                    for lag in lags {
                        metrics::gauge!(
                            "sagashop_consumer_lag_records",
                            "service" => service,
                            "group" => group.clone(),
                            "topic" => lag.topic,
                            "partition" => lag.partition.to_string(),
                        )
                        .set(lag.records as f64);
                    }
                }
                Err(error) => {
                    tracing::debug!(error = format!("{error:#}"), "sampling the consumer lag")
                }
            }
            let next = Instant::now() + SAMPLE_EVERY;
            while !stopped.load(Ordering::Relaxed) && Instant::now() < next {
                std::thread::sleep(Duration::from_millis(200));
            }
        }
    };
    if let Err(error) = std::thread::Builder::new()
        .name("consumer-lag".to_owned())
        .spawn(sampler)
    {
        tracing::warn!(%error, "no consumer-lag metrics: could not start its thread");
    }
    shutdown.cancelled().await;
    stop.store(true, Ordering::Relaxed);
}

/// The lag of the client's group on every partition of `topics` (blocking).
pub fn sample(client: &BaseConsumer, topics: &[String]) -> anyhow::Result<Vec<PartitionLag>> {
    let mut partitions = TopicPartitionList::new();
    for topic in topics {
        let metadata = client
            .fetch_metadata(Some(topic), TIMEOUT)
            .with_context(|| format!("reading the metadata of {topic}"))?;
        for found in metadata.topics().iter().filter(|t| t.error().is_none()) {
            for partition in found.partitions() {
                partitions.add_partition(found.name(), partition.id());
            }
        }
    }
    let committed = client
        .committed_offsets(partitions, TIMEOUT)
        .context("reading the group's committed offsets")?;
    let mut lags = Vec::new();
    for element in committed.elements() {
        let (topic, partition) = (element.topic(), element.partition());
        let (low, high) = client
            .fetch_watermarks(topic, partition, TIMEOUT)
            .with_context(|| format!("reading the watermarks of {topic}[{partition}]"))?;
        let from = match element.offset() {
            Offset::Offset(committed) => committed.max(low),
            _ => low,
        };
        lags.push(PartitionLag {
            topic: topic.to_owned(),
            partition,
            records: (high - from).max(0),
        });
    }
    Ok(lags)
}
