//! `poison`: poison of four kinds produced into every saga topic while orders flow; every
//! consumer must dead-letter exactly the poison of the topics it consumes.

use std::collections::BTreeSet;

use e2e::faults::kafka;
use e2e::faults::system::Options;
use e2e::faults::{saga_topics, Case, Expectations, Faults, Svc};
use serde_json::json;
use uuid::Uuid;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn poison_messages_in_every_topic() {
    let mut case = Case::start("poison", 200, Options::default(), |_| {}).await;
    let (outcome, poison) = case.run(produce_poison).await;
    let expectations = Expectations {
        faults: poison.len() as u64,
        foreign_order_ids: poison.iter().map(|(_, id)| *id).collect(),
        ..Expectations::default()
    };
    let mut report = case.check(&outcome, expectations).await;

    // Every consumer dead-lettered exactly the poison of the topics it consumes, with the
    // original key, bytes and headers plus where it came from.
    let system = &case.system;
    let brokers = system.broker.address();
    let invariant = "poison_dead_lettered";
    let mut dead_letters = 0;
    for svc in Svc::all() {
        let dlq = system.dead_letter_topic(svc);
        let records = match kafka::read_topic(&brokers, &dlq).await {
            Ok(records) => records,
            Err(error) => {
                report.violation(invariant, format!("reading {dlq}: {error:#}"));
                continue;
            }
        };
        dead_letters += records.len();
        let consumed_topics = system.consumed_topics(svc);
        let consumed: Vec<&Poison> = poison
            .iter()
            .map(|(p, _)| p)
            .filter(|p| consumed_topics.contains(&p.topic))
            .collect();
        let mut seen: BTreeSet<(String, i32, i64)> = BTreeSet::new();
        for record in &records {
            let origin = (
                record.header("dlq.topic").unwrap_or_default(),
                record
                    .header("dlq.partition")
                    .and_then(|p| p.parse().ok())
                    .unwrap_or(-1),
                record
                    .header("dlq.offset")
                    .and_then(|o| o.parse().ok())
                    .unwrap_or(-1),
            );
            let Some(original) = consumed
                .iter()
                .find(|p| (p.topic.clone(), p.partition, p.offset) == origin)
            else {
                report.violation(
                    invariant,
                    format!(
                        "{dlq}: unexpected dead letter from {origin:?}: {:?}",
                        record.header("dlq.error")
                    ),
                );
                continue;
            };
            if !seen.insert(origin.clone()) {
                report.violation(
                    invariant,
                    format!(
                        "{dlq}: {} from {origin:?} dead-lettered twice",
                        original.kind
                    ),
                );
            }
            let mut wrong = Vec::new();
            if record.payload.as_deref() != Some(original.payload.as_slice()) {
                wrong.push("the bytes differ".to_owned());
            }
            if record.key.as_deref() != Some(original.key.as_slice()) {
                wrong.push("the key differs".to_owned());
            }
            for (key, value) in &original.headers {
                if record.header(key).as_deref() != Some(&*String::from_utf8_lossy(value)) {
                    wrong.push(format!("header {key} missing or changed"));
                }
            }
            if record.header("dlq.error").is_none_or(|e| e.is_empty()) {
                wrong.push("no dlq.error".to_owned());
            }
            if record.header("dlq.group") != Some(system.group(svc)) {
                wrong.push(format!("dlq.group is {:?}", record.header("dlq.group")));
            }
            if !wrong.is_empty() {
                report.violation(
                    invariant,
                    format!(
                        "{dlq}: {} from {origin:?}: {}",
                        original.kind,
                        wrong.join(", ")
                    ),
                );
            }
        }
        for original in consumed {
            let origin = (original.topic.clone(), original.partition, original.offset);
            if !seen.contains(&origin) {
                report.violation(
                    invariant,
                    format!(
                        "{dlq}: missing {} poison from {}[{}]@{}",
                        original.kind, original.topic, original.partition, original.offset
                    ),
                );
            }
        }
    }
    report.note("poison", poison.len());
    report.note("dead_letters", dead_letters);
    report.finish();
}

/// Three times during the workload (at 15%, 45% and 75% of it), the four kinds of
/// [`poison_messages`] into each saga topic. Returns what was produced, with the order id each
/// names.
async fn produce_poison(f: Faults<'_>) -> Vec<(Poison, Uuid)> {
    let Faults { system, clock, .. } = f;
    let case = clock.case;
    let producer = kafka::producer(&system.broker.address()).expect("a producer");
    let mut poison: Vec<(Poison, Uuid)> = Vec::new();
    for (round, at) in [0.15, 0.45, 0.75].into_iter().enumerate() {
        tokio::time::sleep_until(clock.at(at)).await;
        for topic in saga_topics() {
            for (kind, order_id, payload, headers) in poison_messages(topic, round) {
                let name = system.topic(topic);
                let key = order_id.to_string().into_bytes();
                let header_refs: Vec<(&str, &[u8])> = headers
                    .iter()
                    .map(|(k, v)| (k.as_str(), v.as_slice()))
                    .collect();
                let (partition, offset) =
                    kafka::produce(&producer, &name, Some(&key), &payload, &header_refs)
                        .await
                        .unwrap_or_else(|e| panic!("[{case}] producing poison: {e:#}"));
                poison.push((
                    Poison {
                        kind,
                        topic: name,
                        partition,
                        offset,
                        key,
                        payload,
                        headers,
                    },
                    order_id,
                ));
            }
        }
        clock.log(format_args!(
            "poison round {} produced ({} messages so far)",
            round + 1,
            poison.len()
        ));
    }
    poison
}

/// A poison message before it is produced: kind, the order id it names, bytes, headers.
type PoisonMessage = (&'static str, Uuid, Vec<u8>, Vec<(String, Vec<u8>)>);

/// One poison message as produced.
#[derive(Debug, Clone)]
struct Poison {
    kind: &'static str,
    topic: String,
    partition: i32,
    offset: i64,
    key: Vec<u8>,
    payload: Vec<u8>,
    headers: Vec<(String, Vec<u8>)>,
}

/// The four kinds of poison for one saga topic (base name): not JSON, an envelope of an unknown
/// type, a known type whose payload does not match its schema, and a valid event of 300 KiB
/// (over KAFKA_MAX_EVENT_BYTES, under the broker's 1 MiB). Each is keyed by a fresh order id.
fn poison_messages(topic: &str, round: usize) -> Vec<PoisonMessage> {
    let envelope = |order_id: Uuid, event_type: &str, payload: serde_json::Value| {
        json!({
            "id": Uuid::now_v7(), "type": event_type, "source": "faults",
            "occurred_at": "2026-01-01T00:00:00Z", "order_id": order_id,
            "causation_id": null, "payload": payload,
        })
    };
    let big = "x".repeat(300 * 1024);
    let (main_type, valid_big): (&str, Box<dyn Fn(Uuid) -> serde_json::Value>) = match topic {
        "order.events" => (
            "order.cancelled.v1",
            Box::new(move |id| {
                envelope(
                    id,
                    "order.created.v1",
                    json!({
            "order_id": id, "customer_id": "poison-customer",
            "items": [{"sku": "sku-poison", "quantity": 1}],
            "shipping_address": {"country": "AQ", "line1": big}}),
                )
            }),
        ),
        "inventory.events" => (
            "inventory.reserved.v1",
            Box::new(move |id| {
                envelope(
                    id,
                    "inventory.reserved.v1",
                    json!({
            "order_id": id, "customer_id": "poison-customer", "items": [], "total_cents": 0,
            "shipping_address": {"country": "AQ", "line1": big}}),
                )
            }),
        ),
        "payment.events" => (
            "payment.charged.v1",
            Box::new(move |id| {
                envelope(
                    id,
                    "payment.charged.v1",
                    json!({
            "order_id": id, "customer_id": "poison-customer", "amount_cents": 0,
            "shipping_address": {"country": "AQ", "line1": big}}),
                )
            }),
        ),
        _ => (
            "shipment.scheduled.v1",
            Box::new(move |id| {
                envelope(
                    id,
                    "shipment.scheduled.v1",
                    json!({
            "order_id": id, "country": big}),
                )
            }),
        ),
    };
    let mut messages = Vec::new();
    let mut add =
        |kind: &'static str, order_id: Uuid, payload: Vec<u8>, event_type: Option<&str>| {
            let mut headers = vec![(
                "faults.poison".to_owned(),
                format!("{kind}-{round}").into_bytes(),
            )];
            if let Some(event_type) = event_type {
                headers.insert(0, ("event_type".to_owned(), event_type.as_bytes().to_vec()));
            }
            messages.push((kind, order_id, payload, headers));
        };
    let id = Uuid::now_v7();
    add(
        "not_json",
        id,
        format!("\u{1}this is not JSON {{ {id}").into_bytes(),
        None,
    );
    let id = Uuid::now_v7();
    add(
        "unknown_type",
        id,
        envelope(id, "order.exploded.v1", json!({"order_id": id}))
            .to_string()
            .into_bytes(),
        Some("order.exploded.v1"),
    );
    let id = Uuid::now_v7();
    add(
        "bad_payload",
        id,
        envelope(id, main_type, json!({"order_id": "not-a-uuid"}))
            .to_string()
            .into_bytes(),
        Some(main_type),
    );
    let id = Uuid::now_v7();
    let big_event = valid_big(id);
    let big_type = big_event["type"].as_str().unwrap_or_default().to_owned();
    add(
        "oversized",
        id,
        big_event.to_string().into_bytes(),
        Some(&big_type),
    );
    messages
}
