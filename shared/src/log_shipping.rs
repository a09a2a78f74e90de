//! Logs through Kafka: a `tracing` layer turns each log event into a JSON [`LogRecord`] and
//! hands it to a bounded channel without waiting (a full buffer drops the record and counts it in
//! `sagashop_log_records_dropped_total`), and [`start`] runs a task that produces the records to
//! the `logs` topic with a producer of its own. `sagashop-logs` reads them back
//! ([`crate::log_reader`]).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use anyhow::Context as _;
use chrono::{DateTime, Utc};
use rdkafka::producer::{BaseRecord, DeliveryResult, Producer, ProducerContext, ThreadedProducer};
use rdkafka::ClientContext;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use tokio::sync::mpsc;
use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing::{Event, Metadata, Subscriber};
use tracing_subscriber::filter::{FilterFn, Filtered};
use tracing_subscriber::layer::{Context, Layer};
use tracing_subscriber::registry::LookupSpan;

use crate::config::KafkaConfig;

/// The topic's base name; [`topic`] adds the deployment's prefix.
pub const LOG_TOPIC: &str = "logs";

/// `retention.ms` of the logs topic: three days. Logs are for following what happened, not an
/// archive; the topic stays small enough to scan from its start.
pub const LOG_RETENTION_MS: i64 = 259_200_000;

/// How many records wait for the producer at most; past that, new ones are dropped.
pub const BUFFER_RECORDS: usize = 8192;

/// The logs topic with the configured prefix.
pub fn topic(prefix: &str) -> String {
    format!("{prefix}{LOG_TOPIC}")
}

/// One log line as it travels on the logs topic (JSON).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LogRecord {
    pub time: DateTime<Utc>,
    /// `ERROR`, `WARN`, `INFO`, `DEBUG` or `TRACE`.
    pub level: String,
    /// The service that logged it (`order`, ...).
    pub service: String,
    /// The module (or crate) it was logged from.
    pub target: String,
    pub message: String,
    /// The order it is about: an `order_id` field of the event or of a span it happened in.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub order_id: Option<String>,
    /// The trace it belongs to: the OpenTelemetry span's, or a `trace_id` field.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trace_id: Option<String>,
    /// The event's other fields, then those of the spans it happened in (innermost wins).
    #[serde(default, skip_serializing_if = "Map::is_empty")]
    pub fields: Map<String, Value>,
}

/// The layer: builds a [`LogRecord`] per event and tries to queue it; never waits.
pub struct LogShippingLayer {
    sender: mpsc::Sender<LogRecord>,
    dropped: Arc<AtomicU64>,
}

/// The receiving end, until [`start`] takes it (or a test does).
static PENDING: Mutex<Option<mpsc::Receiver<LogRecord>>> = Mutex::new(None);

/// The service of this process, once [`start`] names it (labels the drop counter).
static SERVICE: OnceLock<&'static str> = OnceLock::new();

/// The shipper's producer, for [`flush`].
static PRODUCER: OnceLock<Arc<ThreadedProducer<DeliveryCounter>>> = OnceLock::new();

/// The layer with its channel of `capacity` records, and the receiving end.
pub fn channel(capacity: usize) -> (LogShippingLayer, mpsc::Receiver<LogRecord>) {
    let (sender, receiver) = mpsc::channel(capacity.max(1));
    let layer = LogShippingLayer {
        sender,
        dropped: Arc::default(),
    };
    (layer, receiver)
}

/// The layer to install in the process's subscriber, filtered so the log producer's own logs
/// (rdkafka's, this module's) never feed back into it. [`start`] ships what it collects.
pub fn layer<S>() -> Filtered<LogShippingLayer, FilterFn, S>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    let (layer, receiver) = channel(BUFFER_RECORDS);
    *PENDING
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner()) = Some(receiver);
    layer.with_filter(FilterFn::new(shipped as fn(&Metadata<'_>) -> bool))
}

/// Whether records from where `metadata` points are shipped: not the Kafka client's own logs
/// and not this module's (a failing producer would otherwise log about every record it drops).
fn shipped(metadata: &Metadata<'_>) -> bool {
    let target = metadata.target();
    !(target.starts_with("rdkafka")
        || target.starts_with("librdkafka")
        || target.starts_with(module_path!()))
}

impl LogShippingLayer {
    /// How many records this layer dropped because the buffer was full.
    pub fn dropped(&self) -> Arc<AtomicU64> {
        Arc::clone(&self.dropped)
    }
}

/// The fields of a span, kept in its extensions.
struct SpanFields(Map<String, Value>);

impl<S> Layer<S> for LogShippingLayer
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    fn on_new_span(&self, attrs: &Attributes<'_>, id: &Id, ctx: Context<'_, S>) {
        if self.sender.is_closed() {
            return;
        }
        let mut fields = JsonVisitor::default();
        attrs.record(&mut fields);
        if let Some(span) = ctx.span(id) {
            span.extensions_mut().insert(SpanFields(fields.fields));
        }
    }

    fn on_record(&self, id: &Id, values: &Record<'_>, ctx: Context<'_, S>) {
        let Some(span) = ctx.span(id) else { return };
        let mut extensions = span.extensions_mut();
        if let Some(SpanFields(fields)) = extensions.get_mut::<SpanFields>() {
            let mut visitor = JsonVisitor {
                fields: std::mem::take(fields),
                message: None,
            };
            values.record(&mut visitor);
            *fields = visitor.fields;
        }
    }

    fn on_event(&self, event: &Event<'_>, ctx: Context<'_, S>) {
        // Logging off (LOG_TOPIC_ENABLED=false): the receiver is gone, nothing to build.
        if self.sender.is_closed() {
            return;
        }
        let mut visitor = JsonVisitor::default();
        event.record(&mut visitor);
        let mut fields = visitor.fields;
        if let Some(scope) = ctx.event_scope(event) {
            // Innermost span first: a field already there (the event's or an inner span's) wins.
            for span in scope {
                let extensions = span.extensions();
                if let Some(SpanFields(span_fields)) = extensions.get::<SpanFields>() {
                    for (key, value) in span_fields {
                        fields.entry(key.clone()).or_insert_with(|| value.clone());
                    }
                }
            }
        }
        let text = |key: &str, fields: &mut Map<String, Value>| {
            fields.remove(key).map(|value| match value {
                Value::String(text) => text,
                other => other.to_string(),
            })
        };
        let metadata = event.metadata();
        let record = LogRecord {
            time: Utc::now(),
            level: metadata.level().to_string(),
            service: text("service", &mut fields).unwrap_or_default(),
            target: metadata.target().to_owned(),
            message: visitor.message.unwrap_or_default(),
            order_id: text("order_id", &mut fields),
            trace_id: text("trace_id", &mut fields).or_else(crate::traces::current_trace_id),
            fields,
        };
        if let Err(mpsc::error::TrySendError::Full(_)) = self.sender.try_send(record) {
            self.dropped.fetch_add(1, Ordering::Relaxed);
            metrics::counter!(
                "sagashop_log_records_dropped_total",
                "service" => SERVICE.get().copied().unwrap_or("unknown"),
                "reason" => "buffer_full",
            )
            .increment(1);
        }
    }
}

/// Collects fields as JSON values; `message` separately.
#[derive(Default)]
struct JsonVisitor {
    fields: Map<String, Value>,
    message: Option<String>,
}

impl JsonVisitor {
    fn put(&mut self, field: &Field, value: Value) {
        if field.name() == "message" {
            self.message = Some(match value {
                Value::String(text) => text,
                other => other.to_string(),
            });
        } else {
            self.fields.insert(field.name().to_owned(), value);
        }
    }
}

impl Visit for JsonVisitor {
    fn record_f64(&mut self, field: &Field, value: f64) {
        self.put(field, Value::from(value));
    }
    fn record_i64(&mut self, field: &Field, value: i64) {
        self.put(field, Value::from(value));
    }
    fn record_u64(&mut self, field: &Field, value: u64) {
        self.put(field, Value::from(value));
    }
    fn record_bool(&mut self, field: &Field, value: bool) {
        self.put(field, Value::from(value));
    }
    fn record_str(&mut self, field: &Field, value: &str) {
        self.put(field, Value::from(value));
    }
    fn record_error(&mut self, field: &Field, value: &(dyn std::error::Error + 'static)) {
        self.put(field, Value::from(value.to_string()));
    }
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        self.put(field, Value::from(format!("{value:?}")));
    }
}

/// Counts records the broker never took (the producer's delivery reports).
struct DeliveryCounter;

impl ClientContext for DeliveryCounter {}

impl ProducerContext for DeliveryCounter {
    type DeliveryOpaque = ();

    fn delivery(&self, result: &DeliveryResult<'_>, _: ()) {
        if result.is_err() {
            count_dropped("undelivered");
        }
    }
}

fn count_dropped(reason: &'static str) {
    metrics::counter!(
        "sagashop_log_records_dropped_total",
        "service" => SERVICE.get().copied().unwrap_or("unknown"),
        "reason" => reason,
    )
    .increment(1);
}

/// Starts shipping what the installed [`layer`] collects to the logs topic as `service`, on a
/// task of the current runtime with a producer of its own (acks=1, one request in flight so a
/// retry never reorders, a bounded queue: a record it cannot queue or deliver is dropped and
/// counted). Does nothing when no layer is installed or shipping already started (several
/// services in one process: the first one ships, records carry the `service` field of their
/// spans); `enabled = false` closes the channel instead, so the layer stops building records.
pub fn start(service: &'static str, kafka: &KafkaConfig, enabled: bool) -> anyhow::Result<()> {
    let Some(mut receiver) = PENDING
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
        .take()
    else {
        return Ok(());
    };
    if !enabled {
        receiver.close();
        return Ok(());
    }
    let _ = SERVICE.set(service);
    for reason in ["buffer_full", "queue_full", "undelivered", "unserializable"] {
        metrics::counter!("sagashop_log_records_dropped_total", "service" => service, "reason" => reason)
            .increment(0);
    }
    let producer: ThreadedProducer<DeliveryCounter> = crate::kafka::base_config(kafka)?
        .set("acks", "1")
        // One request in flight: a batch the broker refused is retried before the next one is
        // sent, so one order's lines stay in the order they were logged.
        .set("max.in.flight.requests.per.connection", "1")
        .set("linger.ms", "100")
        .set("message.timeout.ms", "30000")
        .set("queue.buffering.max.messages", BUFFER_RECORDS.to_string())
        .create_with_context(DeliveryCounter)
        .context("creating the log producer")?;
    let producer = Arc::new(producer);
    let _ = PRODUCER.set(Arc::clone(&producer));
    let topic = topic(&kafka.topic_prefix);
    tokio::spawn(async move {
        while let Some(mut record) = receiver.recv().await {
            if record.service.is_empty() {
                record.service = service.to_owned();
            }
            let Ok(payload) = serde_json::to_vec(&record) else {
                count_dropped("unserializable");
                continue;
            };
            // Keyed by order, so one order's lines stay in order on one partition.
            let key = record.order_id.as_deref().unwrap_or(&record.service);
            if producer
                .send(BaseRecord::to(&topic).key(key).payload(&payload))
                .is_err()
            {
                count_dropped("queue_full");
            }
        }
    });
    Ok(())
}

/// Waits up to `timeout` for the records handed to the shipper to reach the broker (those
/// still in the channel get a moment to be handed over first). Nothing to do when not shipping.
pub async fn flush(timeout: Duration) {
    let Some(producer) = PRODUCER.get().cloned() else {
        return;
    };
    tokio::task::yield_now().await;
    let flushed = tokio::task::spawn_blocking(move || producer.flush(timeout));
    let _ = flushed.await;
}

#[cfg(test)]
mod tests {
    use tracing_subscriber::layer::SubscriberExt;

    use super::*;

    #[test]
    fn records_carry_the_event_and_span_fields_with_the_order_and_trace_ids() {
        let (layer, mut receiver) = channel(16);
        let subscriber = tracing_subscriber::registry().with(layer);
        tracing::subscriber::with_default(subscriber, || {
            let outer = tracing::info_span!("task", service = "payment", task = "consumer");
            let _outer = outer.enter();
            let inner = tracing::info_span!(
                "event",
                order_id = "0192-abc",
                event_type = "order.created.v1",
                trace_id = tracing::field::Empty,
            );
            inner.record("trace_id", "4bf92f3577b34da6a3ce929d0e0e4736");
            let _inner = inner.enter();
            tracing::warn!(attempts = 2, task = "overridden", "retrying");
        });
        let record = receiver.try_recv().expect("one record");
        assert_eq!(record.level, "WARN");
        assert_eq!(record.service, "payment");
        assert_eq!(record.message, "retrying");
        assert_eq!(record.order_id.as_deref(), Some("0192-abc"));
        assert_eq!(
            record.trace_id.as_deref(),
            Some("4bf92f3577b34da6a3ce929d0e0e4736")
        );
        assert_eq!(record.fields["attempts"], 2);
        assert_eq!(record.fields["task"], "overridden");
        assert_eq!(record.fields["event_type"], "order.created.v1");
        let json = serde_json::to_string(&record).unwrap();
        assert_eq!(serde_json::from_str::<LogRecord>(&json).unwrap(), record);
    }

    #[test]
    fn the_trace_id_is_the_current_opentelemetry_contexts() {
        use opentelemetry::trace::{
            SpanContext, SpanId, TraceContextExt, TraceFlags, TraceId, TraceState,
        };
        let (layer, mut receiver) = channel(4);
        let subscriber = tracing_subscriber::registry().with(layer);
        tracing::subscriber::with_default(subscriber, || {
            tracing::info!("outside any trace");
            let traced = opentelemetry::Context::new().with_remote_span_context(SpanContext::new(
                TraceId::from_hex("0af7651916cd43dd8448eb211c80319c").unwrap(),
                SpanId::from_hex("b7ad6b7169203331").unwrap(),
                TraceFlags::SAMPLED,
                true,
                TraceState::default(),
            ));
            let _attached = traced.attach();
            tracing::info!("inside");
        });
        let ids: Vec<Option<String>> = std::iter::from_fn(|| receiver.try_recv().ok())
            .map(|record| record.trace_id)
            .collect();
        assert_eq!(
            ids,
            [None, Some("0af7651916cd43dd8448eb211c80319c".to_owned())]
        );
    }

    #[test]
    fn a_full_buffer_drops_and_counts_without_waiting() {
        let (layer, mut receiver) = channel(3);
        let dropped = layer.dropped();
        let subscriber = tracing_subscriber::registry().with(layer);
        tracing::subscriber::with_default(subscriber, || {
            for n in 0..10 {
                tracing::info!(n, "line");
            }
        });
        assert_eq!(dropped.load(Ordering::Relaxed), 7);
        let kept: Vec<Value> = std::iter::from_fn(|| receiver.try_recv().ok())
            .map(|record| record.fields["n"].clone())
            .collect();
        assert_eq!(kept, [0, 1, 2]);
    }

    #[test]
    fn a_closed_channel_builds_nothing_and_counts_nothing() {
        let (layer, mut receiver) = channel(3);
        let dropped = layer.dropped();
        receiver.close();
        let subscriber = tracing_subscriber::registry().with(layer);
        tracing::subscriber::with_default(subscriber, || tracing::info!("unshipped"));
        assert_eq!(dropped.load(Ordering::Relaxed), 0);
        assert!(receiver.try_recv().is_err());
    }

    #[test]
    fn the_kafka_clients_and_the_shipper_itself_are_not_shipped() {
        let (layer, mut receiver) = channel(16);
        let subscriber = tracing_subscriber::registry()
            .with(layer.with_filter(FilterFn::new(shipped as fn(&Metadata<'_>) -> bool)));
        tracing::subscriber::with_default(subscriber, || {
            tracing::warn!(target: "librdkafka", "broker down");
            tracing::warn!(target: "rdkafka::client", "broker down");
            tracing::warn!("from the shipper");
            tracing::warn!(target: "order_service::routes", "kept");
        });
        let targets: Vec<String> = std::iter::from_fn(|| receiver.try_recv().ok())
            .map(|record| record.target)
            .collect();
        assert_eq!(targets, ["order_service::routes"]);
    }
}
