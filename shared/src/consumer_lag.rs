//! Consumer lag per group, topic and partition, sampled every [`SAMPLE_EVERY`] off the
//! consumer's path: a client of its own (it never joins the group) reads the group's committed
//! offsets and each partition's high watermark, and sets `sagashop_consumer_lag_records` to
//! their difference (from the low watermark when the group has committed nothing there yet).
//! Every replica of a service reports its group's whole lag: aggregate with `max`, not `sum`.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{Offset, TopicPartitionList};

use crate::config::KafkaConfig;
use crate::service::CancellationToken;

/// How often the lag is sampled.
pub const SAMPLE_EVERY: Duration = Duration::from_secs(15);

const TIMEOUT: Duration = Duration::from_secs(5);

/// One partition's lag.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionLag {
    pub topic: String,
    pub partition: i32,
    pub records: i64,
}

/// Samples the lag of `group` on `topics` until `shutdown`, as the gauge of `service`.
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
        Ok(client) => Arc::new(client),
        Err(error) => {
            tracing::warn!(error = format!("{error:#}"), "no consumer-lag metrics");
            shutdown.cancelled().await;
            return;
        }
    };
    loop {
        let (sampling, sampled_topics) = (Arc::clone(&client), topics.clone());
        match tokio::task::spawn_blocking(move || sample(&sampling, &sampled_topics)).await {
            Ok(Ok(lags)) => {
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
            Ok(Err(error)) => {
                tracing::debug!(error = format!("{error:#}"), "sampling the consumer lag")
            }
            Err(error) => tracing::debug!(%error, "the consumer-lag sample panicked"),
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(SAMPLE_EVERY) => {}
        }
    }
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
