//! The pure-broker reference: producer -> topic 0 -> relay 1 -> topic 1 -> ... -> sink, with
//! as many consume hops as the saga needs to reach its terminal status. Every relay is a
//! consumer group of its own with its own idempotent producer, built like the services' clients
//! (`shared::kafka`), and stores a message's offset only once its forward was acknowledged.
//! Messages look like events: a random uuid key, the two headers the outbox relay sets, and a
//! payload of about an envelope's size carrying the time it was produced.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use devenv::Stop;
use rdkafka::consumer::Consumer;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, Message, OwnedHeaders};
use rdkafka::producer::{DeliveryFuture, FutureProducer, FutureRecord};
use serde::Serialize;
use shared::config::KafkaConfig;
use shared::kafka::GroupConsumer;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio::time::MissedTickBehavior;
use uuid::Uuid;

use crate::stats::Summary;

/// Bytes of padding in each payload, so that messages are about as large as an envelope.
const PAD_BYTES: usize = 400;
/// Messages sent through the whole chain before the measured ones.
const WARMUP_MESSAGES: u64 = 20;
/// How long the groups may take to form and the warm-up to come through.
const SETUP_TIMEOUT: Duration = Duration::from_secs(60);

/// What one chain run measured.
#[derive(Debug, Clone, Serialize)]
pub struct ChainResult {
    pub hops: u32,
    pub rate: f64,
    pub sent: u64,
    pub received: u64,
    /// Produce errors of the chain's head.
    pub send_errors: u64,
    /// Every measured message reached the sink before the timeout.
    pub finished: bool,
    /// Produce-to-sink latency, in milliseconds.
    pub latency: Summary,
    /// Seconds until the groups had their partitions and the warm-up came through.
    pub setup_s: f64,
}

#[derive(Serialize, serde::Deserialize)]
struct Payload {
    seq: u64,
    warmup: bool,
    /// Microseconds since the Unix epoch when the head produced it.
    produced_us: i64,
    pad: String,
}

fn headers() -> OwnedHeaders {
    let event_id = Uuid::now_v7().to_string();
    OwnedHeaders::new()
        .insert(Header {
            key: "event_type",
            value: Some("bench.chain.v1"),
        })
        .insert(Header {
            key: "event_id",
            value: Some(event_id.as_str()),
        })
}

/// A message that arrived at the sink.
struct Arrival {
    warmup: bool,
    latency_ms: f64,
}

/// Runs the chain `name` (its topics and groups are `<prefix>chain-<name>...`) at `rate`
/// messages per second for `count` messages, and waits up to `timeout` for the last ones.
pub async fn run(
    kafka: &KafkaConfig,
    name: &str,
    hops: u32,
    rate: f64,
    count: u64,
    timeout: Duration,
    stop: &Stop,
) -> Result<ChainResult> {
    let base = format!("{}chain-{name}", kafka.topic_prefix);
    let topics: Vec<String> = (0..hops).map(|i| format!("{base}.hop-{i}")).collect();
    stop.guard(shared::kafka::ensure_topics(kafka, &topics))
        .await?;
    let (quit_tx, quit) = watch::channel(false);
    let mut consumers = Vec::new();
    let mut tasks = Vec::new();
    for i in 1..hops as usize {
        let consumer = subscribe(kafka, &format!("{base}.relay-{i}"), &topics[i - 1])?;
        let producer = shared::kafka::producer(kafka)?;
        consumers.push(Arc::clone(&consumer));
        tasks.push(tokio::spawn(relay(
            consumer,
            producer,
            topics[i].clone(),
            quit.clone(),
        )));
    }
    let sink_consumer = subscribe(kafka, &format!("{base}.sink"), &topics[hops as usize - 1])?;
    consumers.push(Arc::clone(&sink_consumer));
    let (arrivals_tx, mut arrivals) = mpsc::unbounded_channel();
    tasks.push(tokio::spawn(sink(sink_consumer, arrivals_tx, quit.clone())));
    let head = shared::kafka::producer(kafka)?;

    let result = async {
        let setup = Instant::now();
        wait_for_assignments(&consumers, kafka.topic_partitions, stop).await?;
        let mut warm = 0;
        for seq in 0..WARMUP_MESSAGES {
            send(&head, &topics[0], seq, true).await?;
        }
        let deadline = Instant::now() + SETUP_TIMEOUT;
        while warm < WARMUP_MESSAGES {
            let arrival = tokio::time::timeout_at(deadline.into(), arrivals.recv());
            match stop.guard(async { Ok(arrival.await) }).await? {
                Ok(Some(a)) => warm += u64::from(a.warmup),
                Ok(None) => bail!("the chain's sink stopped"),
                Err(_) => bail!(
                    "the chain's warm-up did not come through within {SETUP_TIMEOUT:?} \
                     ({warm}/{WARMUP_MESSAGES})"
                ),
            }
        }
        let setup_s = setup.elapsed().as_secs_f64();

        let mut interval = tokio::time::interval(Duration::from_secs_f64(1.0 / rate));
        interval.set_missed_tick_behavior(MissedTickBehavior::Burst);
        let mut deliveries = Vec::new();
        let mut latencies = Vec::new();
        for seq in 0..count {
            tokio::select! {
                _ = interval.tick() => {}
                _ = stop.wait() => bail!("interrupted"),
            }
            deliveries.push(send(&head, &topics[0], seq, false).await?);
            while let Ok(arrival) = arrivals.try_recv() {
                if !arrival.warmup {
                    latencies.push(arrival.latency_ms);
                }
            }
        }
        let mut send_errors = 0;
        for delivery in deliveries {
            if !matches!(delivery.await, Ok(Ok(_))) {
                send_errors += 1;
            }
        }
        let deadline = Instant::now() + timeout;
        let expected = count - send_errors;
        while (latencies.len() as u64) < expected {
            let arrival = tokio::time::timeout_at(deadline.into(), arrivals.recv());
            match stop.guard(async { Ok(arrival.await) }).await? {
                Ok(Some(a)) if !a.warmup => latencies.push(a.latency_ms),
                Ok(Some(_)) => {}
                Ok(None) | Err(_) => break,
            }
        }
        Ok(ChainResult {
            hops,
            rate,
            sent: count,
            received: latencies.len() as u64,
            send_errors,
            finished: latencies.len() as u64 >= expected,
            latency: Summary::of(&latencies),
            setup_s,
        })
    }
    .await;

    let _ = quit_tx.send(true);
    for task in tasks {
        let _ = task.await;
    }
    // Closing a consumer leaves its group, which blocks: not on the runtime's threads.
    let _ = tokio::task::spawn_blocking(move || drop((consumers, head))).await;
    result
}

fn subscribe(kafka: &KafkaConfig, group: &str, topic: &str) -> Result<Arc<GroupConsumer>> {
    let consumer = shared::kafka::consumer(kafka, group)?;
    consumer
        .subscribe(&[topic])
        .with_context(|| format!("subscribing to {topic}"))?;
    Ok(Arc::new(consumer))
}

async fn wait_for_assignments(
    consumers: &[Arc<GroupConsumer>],
    partitions: i32,
    stop: &Stop,
) -> Result<()> {
    let deadline = Instant::now() + SETUP_TIMEOUT;
    let wanted = usize::try_from(partitions).unwrap_or(1);
    loop {
        let assigned = consumers
            .iter()
            .filter(|c| c.assignment().is_ok_and(|a| a.count() >= wanted))
            .count();
        if assigned == consumers.len() {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!(
                "only {assigned} of the chain's {} consumers got their partitions within \
                 {SETUP_TIMEOUT:?}",
                consumers.len()
            );
        }
        stop.guard(async {
            tokio::time::sleep(Duration::from_millis(100)).await;
            Ok(())
        })
        .await?;
    }
}

/// Queues one message at the head of the chain.
async fn send(
    producer: &FutureProducer,
    topic: &str,
    seq: u64,
    warmup: bool,
) -> Result<DeliveryFuture> {
    let payload = serde_json::to_vec(&Payload {
        seq,
        warmup,
        produced_us: chrono::Utc::now().timestamp_micros(),
        pad: "x".repeat(PAD_BYTES),
    })?;
    let key = Uuid::new_v4().to_string();
    forward(producer, topic, key.as_bytes(), &payload, headers()).await
}

/// `send_result`, waiting while the producer's queue is full.
async fn forward(
    producer: &FutureProducer,
    topic: &str,
    key: &[u8],
    payload: &[u8],
    headers: OwnedHeaders,
) -> Result<DeliveryFuture> {
    let mut record = FutureRecord::to(topic)
        .key(key)
        .payload(payload)
        .headers(headers);
    loop {
        match producer.send_result(record) {
            Ok(delivery) => return Ok(delivery),
            Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                record = back;
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            Err((error, _)) => return Err(error).context("producing to the chain"),
        }
    }
}

/// Forwards every message of its topic to `to`; stores each offset once the broker
/// acknowledged the forward (a second task awaits the acknowledgements in order).
async fn relay(
    consumer: Arc<GroupConsumer>,
    producer: FutureProducer,
    to: String,
    mut quit: watch::Receiver<bool>,
) {
    let (acks_tx, mut acks) = mpsc::unbounded_channel::<(DeliveryFuture, String, i32, i64)>();
    let storer: JoinHandle<()> = {
        let consumer = Arc::clone(&consumer);
        tokio::spawn(async move {
            while let Some((delivery, topic, partition, offset)) = acks.recv().await {
                if matches!(delivery.await, Ok(Ok(_))) {
                    let _ = consumer.store_offset(&topic, partition, offset);
                }
            }
        })
    };
    loop {
        let message = tokio::select! {
            message = consumer.recv() => message,
            _ = quit.wait_for(|q| *q) => break,
        };
        let Ok(message) = message else { continue };
        let headers = message
            .headers()
            .map(rdkafka::message::BorrowedHeaders::detach)
            .unwrap_or_default();
        let key = message.key().unwrap_or_default();
        let payload = message.payload().unwrap_or_default();
        match forward(&producer, &to, key, payload, headers).await {
            Ok(delivery) => {
                let origin = (
                    message.topic().to_owned(),
                    message.partition(),
                    message.offset(),
                );
                let _ = acks_tx.send((delivery, origin.0, origin.1, origin.2));
            }
            Err(error) => eprintln!("bench: chain relay to {to}: {error:#}"),
        }
    }
    drop(acks_tx);
    storer.abort();
}

/// Receives the last topic's messages and reports when each was produced.
async fn sink(
    consumer: Arc<GroupConsumer>,
    arrivals: mpsc::UnboundedSender<Arrival>,
    mut quit: watch::Receiver<bool>,
) {
    loop {
        let message = tokio::select! {
            message = consumer.recv() => message,
            _ = quit.wait_for(|q| *q) => break,
        };
        let Ok(message) = message else { continue };
        let now_us = chrono::Utc::now().timestamp_micros();
        let Some(payload) = message
            .payload()
            .and_then(|p| serde_json::from_slice::<Payload>(p).ok())
        else {
            continue;
        };
        let _ = consumer.store_offset_from_message(&message);
        let arrival = Arrival {
            warmup: payload.warmup,
            latency_ms: (now_us - payload.produced_us) as f64 / 1000.0,
        };
        if arrivals.send(arrival).is_err() {
            break;
        }
    }
}

/// The Kafka settings of the chain's clients: exactly what a service of the run gets from its
/// environment `env` (later entries win), read with the services' own `KafkaConfig` and its
/// defaults; nothing is taken from the bench's own environment.
pub fn kafka_config(env: &[(String, String)]) -> Result<KafkaConfig> {
    use clap::{CommandFactory, FromArgMatches, Parser};
    #[derive(Parser)]
    struct Client {
        #[command(flatten)]
        kafka: KafkaConfig,
    }
    let command = Client::command().mut_args(|arg| arg.env(None::<&'static str>));
    let mut args = vec!["chain".to_owned()];
    for arg in Client::command().get_arguments() {
        let (Some(var), Some(long)) = (arg.get_env(), arg.get_long()) else {
            continue;
        };
        if let Some((_, value)) = env.iter().rev().find(|(k, _)| var == k.as_str()) {
            args.push(format!("--{long}={value}"));
        }
    }
    let matches = command
        .try_get_matches_from(&args)
        .context("reading the services' Kafka settings")?;
    let mut kafka = Client::from_arg_matches(&matches)?.kafka;
    kafka.group_id = None;
    Ok(kafka)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payloads_are_about_an_envelope_in_size_and_round_trip() {
        let bytes = serde_json::to_vec(&Payload {
            seq: 7,
            warmup: false,
            produced_us: 1_700_000_000_000_000,
            pad: "x".repeat(PAD_BYTES),
        })
        .unwrap();
        assert!((400..600).contains(&bytes.len()), "{}", bytes.len());
        let back: Payload = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(back.seq, 7);
        assert_eq!(back.produced_us, 1_700_000_000_000_000);
    }

    #[test]
    fn the_chain_reads_what_the_services_read() {
        let env = |pairs: &[(&str, &str)]| -> Vec<(String, String)> {
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        };
        let kafka = kafka_config(&env(&[
            ("KAFKA_BROKERS", "b:1"),
            ("KAFKA_FETCH_WAIT_MAX_MS", "10"),
            ("KAFKA_TOPIC_PARTITIONS", "3"),
            ("KAFKA_TOPIC_PARTITIONS", "6"),
            ("DATABASE_URL", "postgres://x/y"),
        ]))
        .unwrap();
        assert_eq!(kafka.brokers, "b:1");
        assert_eq!(kafka.fetch_wait_max_ms, 10);
        assert_eq!(kafka.topic_partitions, 6);
        assert_eq!(kafka.auto_offset_reset, "earliest");
        assert!(kafka_config(&env(&[("KAFKA_TOPIC_PARTITIONS", "many")])).is_err());
    }
}
