//! `oversized`: a record just under the broker's 1 MiB limit (over the 1,000,000 bytes the
//! services' producer sends) produced into every saga topic while orders flow; every consumer
//! must dead-letter it truncated, saying where the original is, and go on.

use std::collections::BTreeSet;

use e2e::faults::kafka;
use e2e::faults::system::Options;
use e2e::faults::{saga_topics, Case, Expectations, Faults, Svc};
use rdkafka::producer::FutureProducer;
use serde_json::json;
use uuid::Uuid;

/// Bytes of each oversized record's payload: under tansu's and Kafka's 1 MiB, over the
/// producer's `message.max.bytes`, so a dead letter of it cannot be sent whole.
const RECORD_BYTES: usize = 1_040_000;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_records_in_every_topic() {
    let mut case = Case::start("oversized", 200, Options::default(), |_| {}).await;
    let (outcome, records) = case.run(produce_oversized).await;
    let expectations = Expectations {
        faults: records.len() as u64,
        foreign_order_ids: records.iter().map(|record| record.order_id).collect(),
        ..Expectations::default()
    };
    let mut report = case.check(&outcome, expectations).await;

    let system = &case.system;
    let brokers = system.broker.address();
    let invariant = "oversized_dead_lettered_truncated";
    let mut dead_letters = 0;
    for svc in Svc::all() {
        let dlq = system.dead_letter_topic(svc);
        let letters = match kafka::read_topic(&brokers, &dlq).await {
            Ok(letters) => letters,
            Err(error) => {
                report.violation(invariant, format!("reading {dlq}: {error:#}"));
                continue;
            }
        };
        dead_letters += letters.len();
        let consumed_topics = system.consumed_topics(svc);
        let expected: BTreeSet<(String, i32, i64)> = records
            .iter()
            .filter(|record| consumed_topics.contains(&record.topic))
            .map(|record| (record.topic.clone(), record.partition, record.offset))
            .collect();
        let mut seen = BTreeSet::new();
        for letter in &letters {
            let origin = (
                letter.header("dlq.topic").unwrap_or_default(),
                letter
                    .header("dlq.partition")
                    .and_then(|p| p.parse().ok())
                    .unwrap_or(-1),
                letter
                    .header("dlq.offset")
                    .and_then(|o| o.parse().ok())
                    .unwrap_or(-1),
            );
            let Some(original) = records
                .iter()
                .find(|r| (r.topic.clone(), r.partition, r.offset) == origin)
            else {
                report.violation(
                    invariant,
                    format!("{dlq}: unexpected letter from {origin:?}"),
                );
                continue;
            };
            if !expected.contains(&origin) || !seen.insert(origin.clone()) {
                report.violation(
                    invariant,
                    format!("{dlq}: {origin:?} not expected here or twice"),
                );
            }
            let mut wrong = Vec::new();
            if letter.header("dlq.truncated").as_deref() != Some("true") {
                wrong.push("no dlq.truncated=true".to_owned());
            }
            if letter.header("dlq.original_bytes") != Some(RECORD_BYTES.to_string()) {
                wrong.push(format!(
                    "dlq.original_bytes is {:?}",
                    letter.header("dlq.original_bytes")
                ));
            }
            let payload = letter.payload.as_deref().unwrap_or_default();
            if payload.len() >= RECORD_BYTES || !original.payload.starts_with(payload) {
                wrong.push(format!(
                    "the payload ({} bytes) is not a cut of the original",
                    payload.len()
                ));
            }
            if letter.key.as_deref() != Some(original.order_id.to_string().as_bytes()) {
                wrong.push("the key differs".to_owned());
            }
            if letter.header("dlq.group") != Some(system.group(svc).to_owned()) {
                wrong.push(format!("dlq.group is {:?}", letter.header("dlq.group")));
            }
            if !wrong.is_empty() {
                report.violation(
                    invariant,
                    format!("{dlq}: {origin:?}: {}", wrong.join(", ")),
                );
            }
        }
        for missing in expected.difference(&seen) {
            report.violation(invariant, format!("{dlq}: no dead letter of {missing:?}"));
        }
    }
    report.note("oversized", records.len());
    report.note("dead_letters", dead_letters);
    report.finish();
}

/// One oversized record as produced.
struct Oversized {
    order_id: Uuid,
    topic: String,
    partition: i32,
    offset: i64,
    payload: Vec<u8>,
}

/// At 40% of the workload, one record of [`RECORD_BYTES`] into each saga topic: an envelope of
/// the topic's main event type, padded, keyed by a fresh order id.
async fn produce_oversized(f: Faults<'_>) -> Vec<Oversized> {
    let Faults { system, clock, .. } = f;
    let case = clock.case;
    // Another client, allowed larger records than the services' producer.
    let producer: FutureProducer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", system.broker.address())
        .set("message.max.bytes", "2000000")
        .set("message.timeout.ms", "30000")
        .create()
        .expect("a producer of large records");
    tokio::time::sleep_until(clock.at(0.4)).await;
    let mut records = Vec::new();
    for topic in saga_topics() {
        let order_id = Uuid::now_v7();
        let event_type = match topic {
            "order.events" => "order.created.v1",
            "inventory.events" => "inventory.reserved.v1",
            "payment.events" => "payment.charged.v1",
            _ => "shipment.scheduled.v1",
        };
        let mut envelope = json!({
            "id": Uuid::now_v7(), "type": event_type, "source": "faults",
            "occurred_at": "2026-01-01T00:00:00Z", "order_id": order_id,
            "causation_id": null, "payload": {"order_id": order_id, "padding": ""},
        });
        let padding = RECORD_BYTES - envelope.to_string().len();
        envelope["payload"]["padding"] = json!("x".repeat(padding));
        let payload = envelope.to_string().into_bytes();
        assert_eq!(payload.len(), RECORD_BYTES);
        let name = system.topic(topic);
        let key = order_id.to_string().into_bytes();
        let (partition, offset) = kafka::produce(
            &producer,
            &name,
            Some(&key),
            &payload,
            &[("event_type", event_type.as_bytes())],
        )
        .await
        .unwrap_or_else(|e| panic!("[{case}] producing an oversized record: {e:#}"));
        records.push(Oversized {
            order_id,
            topic: name,
            partition,
            offset,
            payload,
        });
    }
    clock.log(format_args!("{} oversized records produced", records.len()));
    records
}
