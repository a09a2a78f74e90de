//! Kafka clients configured for the project's guarantees: an idempotent producer with
//! `acks=all`, consumers that store offsets only when told to, and explicit topic creation.

use std::time::Duration;

use anyhow::Context;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use rdkafka::error::RDKafkaErrorCode;
use rdkafka::producer::{FutureProducer, Producer};
use rdkafka::ClientConfig;

use crate::config::KafkaConfig;

fn base_config(config: &KafkaConfig) -> ClientConfig {
    let mut client = ClientConfig::new();
    client
        .set("bootstrap.servers", &config.brokers)
        .set("socket.keepalive.enable", "true");
    client
}

/// An idempotent producer (`enable.idempotence=true`, `acks=all`): broker-side retries never
/// duplicate or reorder messages within a partition.
pub fn producer(config: &KafkaConfig) -> anyhow::Result<FutureProducer> {
    base_config(config)
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("linger.ms", config.linger_ms.to_string())
        .set("message.timeout.ms", "30000")
        .create()
        .context("creating the Kafka producer")
}

/// A group consumer that commits, every second, only the offsets the application stored after
/// its database transaction committed (`enable.auto.offset.store=false`).
pub fn consumer(config: &KafkaConfig, group_id: &str) -> anyhow::Result<GroupConsumer> {
    let consumer: StreamConsumer = base_config(config)
        .set("group.id", group_id)
        .set("enable.auto.commit", "true")
        .set("auto.commit.interval.ms", "1000")
        .set("enable.auto.offset.store", "false")
        .set("enable.partition.eof", "false")
        .set("auto.offset.reset", &config.auto_offset_reset)
        .set("session.timeout.ms", config.session_timeout_ms.to_string())
        .set(
            "max.poll.interval.ms",
            config.max_poll_interval_ms.to_string(),
        )
        .set("fetch.wait.max.ms", config.fetch_wait_max_ms.to_string())
        .create()
        .context("creating the Kafka consumer")?;
    Ok(GroupConsumer(Some(consumer)))
}

/// A group consumer whose closing never blocks the async runtime. Closing (the last offset
/// commit, leaving the group) waits for the broker, which may be unreachable: it happens on a
/// thread of its own, waited for a bounded time by [`GroupConsumer::close`], not at all when
/// the consumer is merely dropped (the process may exit before it is done).
pub struct GroupConsumer(Option<StreamConsumer>);

impl GroupConsumer {
    /// Commits the stored offsets and leaves the group; `false` if that took longer than
    /// `timeout` (it goes on in the background).
    pub async fn close(mut self, timeout: Duration) -> bool {
        let Some(consumer) = self.0.take() else {
            return true;
        };
        let (closed, done) = tokio::sync::oneshot::channel();
        close_off_runtime(consumer, Some(closed));
        tokio::time::timeout(timeout, done).await.is_ok()
    }
}

impl std::ops::Deref for GroupConsumer {
    type Target = StreamConsumer;

    fn deref(&self) -> &StreamConsumer {
        self.0
            .as_ref()
            .expect("a consumer is only taken when it closes")
    }
}

impl Drop for GroupConsumer {
    fn drop(&mut self) {
        if let Some(consumer) = self.0.take() {
            close_off_runtime(consumer, None);
        }
    }
}

fn close_off_runtime(consumer: StreamConsumer, closed: Option<tokio::sync::oneshot::Sender<()>>) {
    let close = move || {
        if let Err(error) = consumer.commit_consumer_state(CommitMode::Sync) {
            tracing::debug!(%error, "final offset commit");
        }
        drop(consumer);
        if let Some(closed) = closed {
            let _ = closed.send(());
        }
    };
    if let Err(error) = std::thread::Builder::new()
        .name("kafka-consumer-close".to_owned())
        .spawn(close)
    {
        tracing::warn!(%error, "could not start a thread to close the Kafka consumer");
    }
}

/// Creates `topics` if they do not exist (neither tansu nor our Kafka set-up auto-creates
/// topics), retrying for up to a minute while the broker is unreachable.
pub async fn ensure_topics(config: &KafkaConfig, topics: &[String]) -> anyhow::Result<()> {
    let admin: AdminClient<DefaultClientContext> = base_config(config)
        .create()
        .context("creating the Kafka admin client")?;
    let new_topics: Vec<NewTopic<'_>> = topics
        .iter()
        .map(|name| {
            NewTopic::new(
                name,
                config.topic_partitions,
                TopicReplication::Fixed(config.replication_factor),
            )
        })
        .collect();
    let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    let mut delay = Duration::from_millis(200);
    loop {
        let outcome = match admin.create_topics(&new_topics, &options).await {
            Ok(results) => results.into_iter().try_for_each(|result| match result {
                Ok(_) => Ok(()),
                Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => Ok(()),
                Err((topic, code)) => Err(anyhow::anyhow!("creating topic {topic}: {code}")),
            }),
            Err(error) => Err(anyhow::Error::new(error).context("creating topics")),
        };
        match outcome {
            Ok(()) => return Ok(()),
            Err(error) if tokio::time::Instant::now() < deadline => {
                tracing::warn!(
                    error = format!("{error:#}"),
                    "broker not ready; retrying in {delay:?}"
                );
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(5));
            }
            Err(error) => return Err(error),
        }
    }
}

/// Whether the broker answers a metadata request within `timeout`.
pub async fn check_reachable(producer: &FutureProducer, timeout: Duration) -> anyhow::Result<()> {
    let producer = producer.clone();
    tokio::task::spawn_blocking(move || {
        producer
            .client()
            .fetch_metadata(None, timeout)
            .map(|_| ())
            .context("fetching metadata from the broker")
    })
    .await
    .context("metadata task")?
}
