//! Reading and replaying a service's dead-letter topic (`<service>-service.dlq`).
//!
//! A dead letter is the original message (key, bytes, headers) plus `dlq.*` headers saying why
//! it failed and where it came from. Replaying publishes the original back to its topic; every
//! consumer of that topic sees it again, which is safe: consumers are idempotent (inbox).
//!
//! A letter too large for the producer was sent truncated (`dlq.truncated=true`,
//! `dlq.original_bytes`): it is not replayed (its bytes are not the original's); the original
//! is at `dlq.topic`, `dlq.partition`, `dlq.offset` for as long as that topic retains it.

use std::time::Duration;

use anyhow::Context;
use rdkafka::consumer::BaseConsumer;
use rdkafka::message::{Header, Headers, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{ClientConfig, Message};
use serde::Serialize;

use crate::config::KafkaConfig;

const TIMEOUT: Duration = Duration::from_secs(10);

/// One message of a dead-letter topic.
#[derive(Debug, Clone, Serialize)]
pub struct DeadLetter {
    /// Where it sits in the dead-letter topic: `partition:offset` identifies it for replay.
    pub partition: i32,
    pub offset: i64,
    pub key: Option<String>,
    /// The original bytes, as sent to the failing consumer.
    pub payload: Vec<u8>,
    /// Every header, the original ones and the `dlq.*` ones.
    pub headers: Vec<(String, String)>,
}

impl DeadLetter {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(key, _)| key == name)
            .map(|(_, value)| value.as_str())
    }

    /// Why the consumer gave up on it.
    pub fn error(&self) -> &str {
        self.header("dlq.error").unwrap_or("(unknown)")
    }

    /// The topic it was consumed from, which replay publishes it back to.
    pub fn source_topic(&self) -> Option<&str> {
        self.header("dlq.topic")
    }

    /// Whether it holds less than the original (see the module documentation); then the size
    /// of the original payload, when known.
    pub fn truncated(&self) -> Option<Option<usize>> {
        (self.header("dlq.truncated") == Some("true")).then(|| {
            self.header("dlq.original_bytes")
                .and_then(|n| n.parse().ok())
        })
    }

    /// Where the original message is: `topic[partition]@offset`.
    pub fn origin(&self) -> String {
        format!(
            "{}[{}]@{}",
            self.source_topic().unwrap_or("?"),
            self.header("dlq.partition").unwrap_or("?"),
            self.header("dlq.offset").unwrap_or("?"),
        )
    }
}

/// Reads every message of `topic` from the beginning to the current end, from the plaintext
/// broker at `brokers`.
pub fn read_all(brokers: &str, topic: &str) -> anyhow::Result<Vec<DeadLetter>> {
    let mut client = ClientConfig::new();
    client.set("bootstrap.servers", brokers);
    read_all_with(client, topic)
}

/// Like [`read_all`], connecting and authenticating as `kafka` says.
pub fn read_all_as(kafka: &KafkaConfig, topic: &str) -> anyhow::Result<Vec<DeadLetter>> {
    read_all_with(crate::kafka::base_config(kafka)?, topic)
}

fn read_all_with(mut client: ClientConfig, topic: &str) -> anyhow::Result<Vec<DeadLetter>> {
    let consumer: BaseConsumer = client
        .set("group.id", "sagashop-dlq-reader")
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "false")
        .create()
        .context("creating a Kafka consumer")?;
    let mut ends = crate::kafka::assign_from_start(&consumer, topic, TIMEOUT)?;
    let mut letters = Vec::new();
    if ends.is_empty() {
        return Ok(letters);
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while !ends.is_empty() {
        anyhow::ensure!(
            std::time::Instant::now() < deadline,
            "timed out reading {topic}"
        );
        let Some(message) = consumer.poll(Duration::from_millis(500)) else {
            continue;
        };
        let message = message.with_context(|| format!("reading {topic}"))?;
        let headers = message
            .headers()
            .map(|headers| {
                headers
                    .iter()
                    .map(|h| {
                        (
                            h.key.to_owned(),
                            String::from_utf8_lossy(h.value.unwrap_or_default()).into_owned(),
                        )
                    })
                    .collect()
            })
            .unwrap_or_default();
        letters.push(DeadLetter {
            partition: message.partition(),
            offset: message.offset(),
            key: message
                .key()
                .map(|key| String::from_utf8_lossy(key).into_owned()),
            payload: message.payload().unwrap_or_default().to_vec(),
            headers,
        });
        let (partition, offset) = (message.partition(), message.offset());
        ends.retain(|(p, high)| !(*p == partition && offset + 1 >= *high));
    }
    letters.sort_by_key(|letter| (letter.partition, letter.offset));
    Ok(letters)
}

/// Publishes a dead letter's original key, bytes and headers back to the topic it came from,
/// with a `dlq.replayed_from` header; returns that topic. A truncated letter is refused.
pub async fn replay(
    producer: &FutureProducer,
    dead_letter_topic: &str,
    letter: &DeadLetter,
) -> anyhow::Result<String> {
    if let Some(original_bytes) = letter.truncated() {
        anyhow::bail!(
            "dead letter {}:{} is truncated (the original had {} bytes): it cannot be replayed; \
             the original is at {}",
            letter.partition,
            letter.offset,
            original_bytes.map_or_else(|| "?".to_owned(), |n| n.to_string()),
            letter.origin()
        );
    }
    let topic = letter
        .source_topic()
        .with_context(|| {
            format!(
                "dead letter {}:{} has no dlq.topic header",
                letter.partition, letter.offset
            )
        })?
        .to_owned();
    let replayed_from = format!("{dead_letter_topic}:{}:{}", letter.partition, letter.offset);
    let mut headers = OwnedHeaders::new();
    for (key, value) in letter
        .headers
        .iter()
        .filter(|(key, _)| !key.starts_with("dlq."))
    {
        headers = headers.insert(Header {
            key,
            value: Some(value.as_str()),
        });
    }
    headers = headers.insert(Header {
        key: "dlq.replayed_from",
        value: Some(replayed_from.as_str()),
    });
    let mut record = FutureRecord::<str, [u8]>::to(&topic)
        .payload(&letter.payload)
        .headers(headers);
    if let Some(key) = &letter.key {
        record = record.key(key.as_str());
    }
    producer
        .send(record, TIMEOUT)
        .await
        .map_err(|(error, _)| error)
        .with_context(|| format!("publishing to {topic}"))?;
    Ok(topic)
}
