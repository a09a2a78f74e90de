//! Kafka clients configured for the project's guarantees: an idempotent producer with
//! `acks=all`, consumers that store offsets only when told to, and explicit topic creation, all
//! authenticating as `KafkaSecurity` says (plaintext, or SASL such as SCRAM over TCP or TLS).

use std::time::Duration;

use anyhow::Context;
use rdkafka::admin::{
    AdminClient, AdminOptions, NewTopic, OwnedResourceSpecifier, ResourceSpecifier,
    TopicReplication,
};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, StreamConsumer};
use rdkafka::error::RDKafkaErrorCode;
use rdkafka::producer::{FutureProducer, Producer};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};

use crate::config::{KafkaConfig, KafkaSecurity};

/// `retention.ms` of the dead-letter topics the services create (30 days, as
/// `docker/kafka/create-topics.sh`): someone has to look at them, and no consumer reads them.
pub const DEAD_LETTER_RETENTION_MS: i64 = 2_592_000_000;

/// What every client (producer, consumer, admin, the dead-letter tool's reader) is configured
/// with: the brokers and how to authenticate to them.
pub fn base_config(config: &KafkaConfig) -> anyhow::Result<ClientConfig> {
    let mut client = ClientConfig::new();
    client
        .set("bootstrap.servers", &config.brokers)
        .set("socket.keepalive.enable", "true");
    for (key, value) in security_settings(&config.security)? {
        client.set(key, value);
    }
    Ok(client)
}

/// The librdkafka settings for `security`: `security.protocol`, and for the SASL protocols
/// the mechanism and the credentials (both required), and the CA file for the TLS ones.
pub fn security_settings(security: &KafkaSecurity) -> anyhow::Result<Vec<(&'static str, String)>> {
    let protocol = security.protocol.to_ascii_lowercase();
    let mut settings = vec![("security.protocol", protocol.clone())];
    if protocol.starts_with("sasl_") {
        let (Some(username), Some(password)) = (&security.sasl_username, &security.sasl_password)
        else {
            anyhow::bail!(
                "KAFKA_SECURITY_PROTOCOL={protocol} needs KAFKA_SASL_USERNAME and KAFKA_SASL_PASSWORD"
            );
        };
        settings.extend([
            (
                "sasl.mechanism",
                security.sasl_mechanism.to_ascii_uppercase(),
            ),
            ("sasl.username", username.clone()),
            ("sasl.password", password.clone()),
        ]);
    }
    if protocol.ends_with("ssl") {
        if let Some(location) = &security.ssl_ca_location {
            settings.push(("ssl.ca.location", location.clone()));
        }
    }
    Ok(settings)
}

/// `message.max.bytes` of the producer: the largest record (key, payload, headers and framing)
/// it sends. Kafka's own default, below the broker's default limit of 1 MiB.
pub const PRODUCER_MAX_MESSAGE_BYTES: usize = 1_000_000;

/// An idempotent producer (`enable.idempotence=true`, `acks=all`): broker-side retries never
/// duplicate or reorder messages within a partition.
pub fn producer(config: &KafkaConfig) -> anyhow::Result<FutureProducer> {
    base_config(config)?
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("linger.ms", config.linger_ms.to_string())
        .set("message.timeout.ms", "30000")
        .set("message.max.bytes", PRODUCER_MAX_MESSAGE_BYTES.to_string())
        .create()
        .context("creating the Kafka producer")
}

/// A group consumer that commits, every second, only the offsets the application stored after
/// its database transaction committed (`enable.auto.offset.store=false`).
pub fn consumer(config: &KafkaConfig, group_id: &str) -> anyhow::Result<GroupConsumer> {
    let consumer: StreamConsumer = base_config(config)?
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
    let topics: Vec<(String, Option<i64>)> =
        topics.iter().map(|name| (name.clone(), None)).collect();
    ensure_topics_retained(config, &topics).await
}

/// [`ensure_topics`], each topic created with the `retention.ms` beside it (`None`: the
/// broker's default). Existing topics keep theirs.
pub async fn ensure_topics_retained(
    config: &KafkaConfig,
    topics: &[(String, Option<i64>)],
) -> anyhow::Result<()> {
    let topics: Vec<(String, Vec<(String, String)>)> = topics
        .iter()
        .map(|(name, retention_ms)| {
            let settings = retention_ms
                .map(|ms| ("retention.ms".to_owned(), ms.to_string()))
                .into_iter()
                .collect();
            (name.clone(), settings)
        })
        .collect();
    ensure_topics_configured(config, &topics).await
}

/// [`ensure_topics`], each topic created with the topic configuration beside it (e.g.
/// `cleanup.policy=compact`; empty: the broker's defaults). Existing topics keep theirs.
pub async fn ensure_topics_configured(
    config: &KafkaConfig,
    topics: &[(String, Vec<(String, String)>)],
) -> anyhow::Result<()> {
    if topics.is_empty() {
        // librdkafka refuses an empty request (InvalidArgument).
        return Ok(());
    }
    let admin: AdminClient<DefaultClientContext> = base_config(config)?
        .create()
        .context("creating the Kafka admin client")?;
    let new_topics: Vec<NewTopic<'_>> = topics
        .iter()
        .map(|(name, settings)| {
            settings.iter().fold(
                NewTopic::new(
                    name,
                    config.topic_partitions,
                    TopicReplication::Fixed(config.replication_factor),
                ),
                |topic, (key, value)| topic.set(key, value),
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

/// How long the broker keeps what it could deliver again, in milliseconds (-1: forever): the
/// longest `retention.ms` of `topics`, and `offsets.retention.minutes`. Each value the broker
/// does not report (tansu reports only what a topic was created with, and no broker settings)
/// is taken from the `assumed_*` argument; the log says which.
pub async fn redelivery_retention(
    config: &KafkaConfig,
    producer: &FutureProducer,
    topics: &[String],
    assumed_topic_ms: i64,
    assumed_offsets_ms: i64,
) -> anyhow::Result<(i64, i64)> {
    const TIMEOUT: Duration = Duration::from_secs(5);
    let admin: AdminClient<DefaultClientContext> = base_config(config)?
        .create()
        .context("creating the Kafka admin client")?;
    let options = AdminOptions::new().request_timeout(Some(TIMEOUT));
    let metadata_client = producer.clone();
    let broker_id = tokio::task::spawn_blocking(move || {
        let metadata = metadata_client
            .client()
            .fetch_metadata(None, TIMEOUT)
            .ok()?;
        metadata.brokers().first().map(|broker| broker.id())
    })
    .await
    .context("metadata task")?;
    let mut specifiers: Vec<ResourceSpecifier<'_>> = topics
        .iter()
        .map(|name| ResourceSpecifier::Topic(name))
        .collect();
    specifiers.extend(broker_id.map(ResourceSpecifier::Broker));
    let described = admin
        .describe_configs(&specifiers, &options)
        .await
        .unwrap_or_else(|error| {
            tracing::debug!(%error, "the broker does not describe its configuration");
            Vec::new()
        });
    let reported = |specifier: &OwnedResourceSpecifier, key: &str| -> Option<i64> {
        let resource = described
            .iter()
            .flatten()
            .find(|resource| &resource.specifier == specifier)?;
        resource.get(key)?.value.as_deref()?.parse().ok()
    };
    let mut topic_ms: Option<i64> = None;
    for name in topics {
        let retention = reported(&OwnedResourceSpecifier::Topic(name.clone()), "retention.ms");
        if retention.is_none() {
            tracing::info!(
                topic = %name,
                assumed_ms = assumed_topic_ms,
                "the broker does not report the topic's retention.ms; assuming KAFKA_TOPIC_RETENTION_MS"
            );
        }
        let retention = retention.unwrap_or(assumed_topic_ms);
        topic_ms = Some(match topic_ms {
            _ if retention < 0 => -1,
            Some(longest) if longest < 0 => -1,
            Some(longest) => longest.max(retention),
            None => retention,
        });
    }
    let offsets_ms = broker_id
        .and_then(|id| {
            reported(
                &OwnedResourceSpecifier::Broker(id),
                "offsets.retention.minutes",
            )
        })
        .map(|minutes| if minutes < 0 { -1 } else { minutes * 60_000 });
    if offsets_ms.is_none() {
        tracing::info!(
            assumed_ms = assumed_offsets_ms,
            "the broker does not report offsets.retention.minutes; assuming KAFKA_OFFSETS_RETENTION_MS"
        );
    }
    Ok((
        topic_ms.unwrap_or(assumed_topic_ms),
        offsets_ms.unwrap_or(assumed_offsets_ms),
    ))
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

/// Assigns `consumer` (of a group it never joins) every partition of `topic` from its low
/// watermark, for tools that read a whole topic; returns the end offset (high watermark) of
/// each partition that holds records, so the reader knows when it has read them all. An error
/// when the topic does not exist.
pub fn assign_from_start(
    consumer: &BaseConsumer,
    topic: &str,
    timeout: Duration,
) -> anyhow::Result<Vec<(i32, i64)>> {
    assign_from_time(consumer, topic, None, timeout)
}

/// Like [`assign_from_start`], but with `since` (milliseconds since the epoch) each partition
/// starts at its first record stamped at or after it (the broker's `ListOffsets` by timestamp):
/// the records before it are never fetched. A partition with none starts at its end (Apache
/// Kafka; tansu 0.6 answers offset 0 then, so it is read whole). A broker that cannot answer
/// leaves every partition at its start (the reader's own filter still drops what is older);
/// returns the end offset of each partition with records to read.
pub fn assign_from_time(
    consumer: &BaseConsumer,
    topic: &str,
    since: Option<i64>,
    timeout: Duration,
) -> anyhow::Result<Vec<(i32, i64)>> {
    let metadata = consumer
        .fetch_metadata(Some(topic), timeout)
        .with_context(|| format!("reading the metadata of {topic}"))?;
    let partitions: Vec<i32> = metadata
        .topics()
        .iter()
        .filter(|t| t.name() == topic && t.error().is_none())
        .flat_map(|t| t.partitions().iter().map(|p| p.id()))
        .collect();
    anyhow::ensure!(!partitions.is_empty(), "topic {topic} does not exist");
    let from_time = since.map(|since| starts_at(consumer, topic, &partitions, since, timeout));
    let mut assignment = TopicPartitionList::new();
    let mut ends = Vec::new();
    for partition in partitions {
        let (low, high) = consumer
            .fetch_watermarks(topic, partition, timeout)
            .with_context(|| format!("reading the end of {topic}[{partition}]"))?;
        let start = match from_time.as_ref().and_then(|starts| starts.get(&partition)) {
            Some(Offset::Offset(offset)) => (*offset).max(low).min(high),
            Some(Offset::End) => high,
            _ => low,
        };
        assignment.add_partition_offset(topic, partition, Offset::Offset(start))?;
        if high > start {
            ends.push((partition, high));
        }
    }
    consumer
        .assign(&assignment)
        .with_context(|| format!("assigning the partitions of {topic}"))?;
    Ok(ends)
}

/// Each partition's first offset stamped at or after `since` (`Offset::End` when none is);
/// empty when the broker cannot say.
fn starts_at(
    consumer: &BaseConsumer,
    topic: &str,
    partitions: &[i32],
    since: i64,
    timeout: Duration,
) -> std::collections::HashMap<i32, Offset> {
    let mut query = TopicPartitionList::new();
    for partition in partitions {
        if query
            .add_partition_offset(topic, *partition, Offset::Offset(since))
            .is_err()
        {
            return Default::default();
        }
    }
    match consumer.offsets_for_times(query, timeout) {
        Ok(found) => found
            .elements()
            .iter()
            .filter(|element| element.error().is_ok())
            .map(|element| (element.partition(), element.offset()))
            .collect(),
        Err(error) => {
            tracing::warn!(%error, topic, "the broker could not find offsets by time; reading from the start");
            Default::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        kafka: KafkaConfig,
    }

    fn config(args: &[&str]) -> KafkaConfig {
        Cli::try_parse_from(std::iter::once("test").chain(args.iter().copied()))
            .expect("valid arguments")
            .kafka
    }

    fn settings(args: &[&str]) -> Vec<(&'static str, String)> {
        security_settings(&config(args).security).expect("valid settings")
    }

    fn compose_service() -> KafkaConfig {
        config(&[
            "--kafka-brokers",
            "127.0.0.1:1",
            "--kafka-security-protocol",
            "SASL_PLAINTEXT",
            "--kafka-sasl-username",
            "payment-service",
            "--kafka-sasl-password",
            "s3cret",
        ])
    }

    #[test]
    fn by_default_the_clients_connect_in_plaintext_without_credentials() {
        assert_eq!(
            settings(&[]),
            [("security.protocol", "plaintext".to_owned())]
        );
    }

    #[test]
    fn sasl_sends_the_mechanism_and_the_credentials() {
        let settings = security_settings(&compose_service().security).expect("valid settings");
        assert_eq!(
            settings,
            [
                ("security.protocol", "sasl_plaintext".to_owned()),
                ("sasl.mechanism", "SCRAM-SHA-512".to_owned()),
                ("sasl.username", "payment-service".to_owned()),
                ("sasl.password", "s3cret".to_owned()),
            ]
        );
        let tls = settings_of_tls();
        assert!(tls.contains(&("ssl.ca.location", "/etc/ca.pem".to_owned())));
        assert!(tls.contains(&("sasl.mechanism", "SCRAM-SHA-256".to_owned())));
    }

    fn settings_of_tls() -> Vec<(&'static str, String)> {
        settings(&[
            "--kafka-security-protocol",
            "sasl_ssl",
            "--kafka-sasl-mechanism",
            "scram-sha-256",
            "--kafka-sasl-username",
            "u",
            "--kafka-sasl-password",
            "p",
            "--kafka-ssl-ca-location",
            "/etc/ca.pem",
        ])
    }

    #[test]
    fn sasl_without_credentials_is_refused_at_start_up() {
        let config = config(&["--kafka-security-protocol", "sasl_plaintext"]);
        let error = security_settings(&config.security).unwrap_err();
        assert!(
            format!("{error}").contains("KAFKA_SASL_USERNAME"),
            "{error}"
        );
        assert!(producer(&config).is_err());
    }

    #[test]
    fn the_password_is_not_in_the_debug_output() {
        let debug = format!("{:?}", compose_service());
        assert!(!debug.contains("s3cret"), "{debug}");
        assert!(debug.contains("payment-service"), "{debug}");
    }

    /// librdkafka offers SCRAM only when built with OpenSSL (rdkafka's `ssl` feature): without
    /// it, creating a client with these settings fails ("No provider for SASL mechanism").
    /// Creating a client does not connect, so no broker is needed.
    #[tokio::test]
    async fn every_client_accepts_scram_settings() {
        let config = compose_service();
        let _producer = producer(&config).expect("a SCRAM producer");
        let _consumer = consumer(&config, "payment-service").expect("a SCRAM consumer");
        let admin: Result<AdminClient<DefaultClientContext>, _> =
            base_config(&config).expect("settings").create();
        admin.expect("a SCRAM admin client");
    }

    /// Against the test broker (`cargo xtask test` sets `KAFKA_BROKERS`): assigned from a
    /// time, a partition starts at its first record stamped at or after it.
    #[tokio::test]
    async fn assigned_from_a_time_a_partition_starts_at_its_first_record_stamped_then() {
        use rdkafka::producer::FutureRecord;
        use rdkafka::Message;

        let config = crate::test_env::kafka_config(
            &format!("kafka-times-{}.", uuid::Uuid::now_v7().simple()),
            1,
        );
        let topic = format!("{}stamped", config.topic_prefix);
        ensure_topics(&config, std::slice::from_ref(&topic))
            .await
            .expect("creating the topic");
        let producer = producer(&config).expect("a producer");
        let now = chrono::Utc::now().timestamp_millis();
        let stamps = [now - 3_000, now - 2_000, now - 1_000];
        for stamp in stamps {
            producer
                .send(
                    FutureRecord::to(&topic)
                        .key("k")
                        .payload(&stamp.to_string())
                        .timestamp(stamp),
                    Duration::from_secs(30),
                )
                .await
                .expect("producing");
        }
        let timeout = Duration::from_secs(10);
        let first_read = |since: Option<i64>| {
            let consumer: BaseConsumer = base_config(&config)
                .unwrap()
                .set("group.id", "kafka-times-reader")
                .set("enable.auto.commit", "false")
                .create()
                .unwrap();
            let ends = assign_from_time(&consumer, &topic, since, timeout).unwrap();
            let first = (!ends.is_empty()).then(|| loop {
                if let Some(message) = consumer.poll(Duration::from_millis(500)) {
                    break message.expect("a record").offset();
                }
            });
            (ends, first)
        };
        assert_eq!(first_read(None), (vec![(0, 3)], Some(0)));
        assert_eq!(first_read(Some(stamps[1])), (vec![(0, 3)], Some(1)));
        assert_eq!(first_read(Some(stamps[1] + 1)), (vec![(0, 3)], Some(2)));
        // A time after every record: Apache Kafka answers "none" (the partition starts at its
        // end); tansu 0.6 answers offset 0 (read from the start, the reader's filter drops
        // all). Either way no record is skipped, so neither is asserted here.
    }
}
