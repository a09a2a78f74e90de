//! Traces end to end: the services export to an OTLP/HTTP receiver run by this test, and one
//! order is one trace: every span that names the order is in it, it holds spans from all four
//! saga services, and across each Kafka hop a consumer's span is the child of the producer
//! span that published the event, itself the child of the span that wrote the outbox row.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use axum::extract::State;
use axum::routing::post;
use axum::{Json, Router};
use e2e::{order_body, system_with, unique, Api, Settings, System, SAGA_TIMEOUT};
use serde_json::Value;
use uuid::Uuid;

/// A span as the receiver got it (OTLP/JSON).
#[derive(Debug, Clone)]
struct Span {
    service: String,
    trace_id: String,
    span_id: String,
    /// Empty for a root span.
    parent_span_id: String,
    name: String,
    /// OTLP `SpanKind`: 1 internal, 2 server, 3 client, 4 producer, 5 consumer.
    kind: i64,
    attributes: HashMap<String, String>,
}

const SERVER: i64 = 2;
const PRODUCER: i64 = 4;
const CONSUMER: i64 = 5;

/// The four saga services, as `service.name`.
const SAGA_SERVICES: [&str; 4] = [
    "order-service",
    "inventory-service",
    "payment-service",
    "shipping-service",
];

type Received = Arc<Mutex<Vec<Span>>>;

/// The OTLP/HTTP receiver of this test process: its base URL and what it received.
struct Receiver {
    url: &'static str,
    spans: Received,
}

static RECEIVER: OnceLock<Receiver> = OnceLock::new();

/// Starts the receiver (once, on a runtime of its own, like the system) and the system
/// exporting to it.
fn traced_system() -> (&'static System, &'static Received) {
    let receiver = RECEIVER.get_or_init(|| {
        let spans = Received::default();
        let (sender, bound) = std::sync::mpsc::channel();
        let received = spans.clone();
        std::thread::Builder::new()
            .name("otlp-receiver".into())
            .spawn(move || {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("a runtime for the receiver");
                runtime.block_on(async move {
                    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
                        .await
                        .expect("a port for the receiver");
                    let port = listener.local_addr().expect("its address").port();
                    sender.send(port).expect("the test waits for the port");
                    let app = Router::new()
                        .route("/v1/traces", post(receive))
                        .with_state(received);
                    axum::serve(listener, app).await.expect("serving OTLP");
                });
            })
            .expect("spawning the receiver");
        let port = bound.recv().expect("the receiver's port");
        Receiver {
            url: Box::leak(format!("http://127.0.0.1:{port}").into_boxed_str()),
            spans,
        }
    });
    let system = system_with(Settings {
        otlp_endpoint: Some(receiver.url),
        ..Settings::default()
    });
    (system, &receiver.spans)
}

/// `POST /v1/traces` with an OTLP/JSON `ExportTraceServiceRequest`.
async fn receive(State(received): State<Received>, Json(request): Json<Value>) -> Json<Value> {
    let mut spans = Vec::new();
    for resource_spans in request["resourceSpans"].as_array().into_iter().flatten() {
        let resource = attributes(&resource_spans["resource"]["attributes"]);
        let service = resource.get("service.name").cloned().unwrap_or_default();
        for scope_spans in resource_spans["scopeSpans"]
            .as_array()
            .into_iter()
            .flatten()
        {
            for span in scope_spans["spans"].as_array().into_iter().flatten() {
                let text = |key: &str| span[key].as_str().unwrap_or_default().to_owned();
                spans.push(Span {
                    service: service.clone(),
                    trace_id: text("traceId"),
                    span_id: text("spanId"),
                    parent_span_id: text("parentSpanId"),
                    name: text("name"),
                    kind: span["kind"].as_i64().unwrap_or_default(),
                    attributes: attributes(&span["attributes"]),
                });
            }
        }
    }
    received.lock().expect("the spans").extend(spans);
    Json(serde_json::json!({}))
}

/// OTLP/JSON `KeyValue`s as text (`{"key": .., "value": {"stringValue": ..}}` and the like).
fn attributes(list: &Value) -> HashMap<String, String> {
    list.as_array()
        .into_iter()
        .flatten()
        .filter_map(|pair| {
            let key = pair["key"].as_str()?.to_owned();
            let (_, value) = pair["value"].as_object()?.iter().next()?;
            let value = match value {
                Value::String(text) => text.clone(),
                other => other.to_string(),
            };
            Some((key, value))
        })
        .collect()
}

/// The service that publishes events of `event_type` (its topic's owner).
fn publisher_of(event_type: &str) -> &'static str {
    match event_type.split('.').next() {
        Some("order") => "order-service",
        Some("inventory") => "inventory-service",
        Some("payment") => "payment-service",
        Some("shipment") => "shipping-service",
        _ => panic!("no publisher known for {event_type}"),
    }
}

/// The order's one trace, once it holds `expected` (`(service, span name)`) and every link
/// checks; panics naming what is missing or wrong after a generous deadline.
async fn wait_for_trace(
    received: &Received,
    order_id: Uuid,
    expected: &[(&str, &str)],
) -> (String, Vec<Span>) {
    let deadline = tokio::time::Instant::now() + SAGA_TIMEOUT;
    loop {
        let spans = received.lock().expect("the spans").clone();
        let problems = match check_trace(&spans, order_id, expected) {
            Ok(found) => return found,
            Err(problems) => problems,
        };
        assert!(
            tokio::time::Instant::now() < deadline,
            "the trace of order {order_id} is not complete after {SAGA_TIMEOUT:?}:\n{}",
            problems.join("\n")
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// The trace of `order_id` and its spans, or what is missing or wrong in it.
fn check_trace(
    spans: &[Span],
    order_id: Uuid,
    expected: &[(&str, &str)],
) -> Result<(String, Vec<Span>), Vec<String>> {
    let order = order_id.to_string();
    let traces: BTreeSet<&str> = spans
        .iter()
        .filter(|span| span.attributes.get("order.id") == Some(&order))
        .map(|span| span.trace_id.as_str())
        .collect();
    let trace_id = match traces.len() {
        0 => return Err(vec![format!("no span names order {order}")]),
        1 => traces.into_iter().next().expect("one trace").to_owned(),
        _ => {
            return Err(vec![format!(
                "the spans of order {order} are in {} traces: {traces:?}",
                traces.len()
            )])
        }
    };
    let trace: Vec<Span> = spans
        .iter()
        .filter(|span| span.trace_id == trace_id)
        .cloned()
        .collect();
    let by_id: HashMap<&str, &Span> = trace
        .iter()
        .map(|span| (span.span_id.as_str(), span))
        .collect();
    let mut problems = Vec::new();
    for (service, name) in expected {
        if !trace
            .iter()
            .any(|span| span.service == *service && span.name == *name)
        {
            problems.push(format!("no span {name:?} from {service}"));
        }
    }
    for span in trace.iter().filter(|span| span.kind == CONSUMER) {
        let event_type = span
            .attributes
            .get("event.type")
            .cloned()
            .unwrap_or_default();
        let Some(producer) = by_id.get(span.parent_span_id.as_str()) else {
            problems.push(format!(
                "the parent of {} ({}) is not in the trace",
                span.name, span.service
            ));
            continue;
        };
        if producer.kind != PRODUCER
            || producer.name != format!("publish {event_type}")
            || producer.service != publisher_of(&event_type)
        {
            problems.push(format!(
                "{} ({}) has parent {} ({}), not the producer of {event_type}",
                span.name, span.service, producer.name, producer.service
            ));
            continue;
        }
        match by_id.get(producer.parent_span_id.as_str()) {
            Some(writer)
                if writer.service == producer.service
                    && writer.attributes.get("event.type") == Some(&event_type)
                    && (writer.name.starts_with("emit ")
                        || writer.name.starts_with("compensate: ")) => {}
            Some(writer) => problems.push(format!(
                "publish {event_type} has parent {} ({}), not the span that wrote it",
                writer.name, writer.service
            )),
            None => problems.push(format!(
                "the span that wrote {event_type} ({}) is not in the trace",
                producer.service
            )),
        }
    }
    if problems.is_empty() {
        Ok((trace_id, trace))
    } else {
        Err(problems)
    }
}

fn services_in(trace: &[Span]) -> BTreeSet<&str> {
    trace.iter().map(|span| span.service.as_str()).collect()
}

#[tokio::test]
async fn a_confirmed_order_is_one_trace_continuing_the_callers_traceparent() {
    let (system, received) = traced_system();
    let api = Api::on(system);
    let (sku, customer) = (unique("sku"), unique("customer"));
    api.create_product(&sku, 300, 5).await;
    api.open_account(&customer, 10_000).await;

    let caller_trace = Uuid::new_v4().simple().to_string();
    let caller_span = &Uuid::new_v4().simple().to_string()[..16];
    let (status, reply) = api
        .send(
            api.http
                .post(format!("{}/orders", system.order_url))
                .header("traceparent", format!("00-{caller_trace}-{caller_span}-01"))
                .json(&order_body(&customer, &[(&sku, 2)], "FR")),
        )
        .await;
    assert_eq!(status, 202, "{reply}");
    let order_id: Uuid = reply["order_id"]
        .as_str()
        .expect("an order id")
        .parse()
        .unwrap();
    assert_eq!(api.wait_terminal(order_id).await["status"], "CONFIRMED");

    let (trace_id, trace) = wait_for_trace(
        received,
        order_id,
        &[
            ("order-service", "POST /orders"),
            ("order-service", "emit order.created.v1"),
            ("inventory-service", "process order.created.v1"),
            ("payment-service", "process inventory.reserved.v1"),
            ("shipping-service", "process payment.charged.v2"),
            ("order-service", "process shipment.scheduled.v1"),
            ("order-service", "emit order.confirmed.v1"),
            ("inventory-service", "process order.confirmed.v1"),
            ("payment-service", "process order.confirmed.v1"),
            ("shipping-service", "process order.confirmed.v1"),
        ],
    )
    .await;

    assert_eq!(trace_id, caller_trace, "the caller's trace is continued");
    let request = trace
        .iter()
        .find(|span| span.name == "POST /orders")
        .expect("the request's span");
    assert_eq!(
        (request.kind, request.parent_span_id.as_str()),
        (SERVER, caller_span)
    );
    for service in SAGA_SERVICES {
        assert!(
            services_in(&trace).contains(service),
            "{service} is in the trace"
        );
    }
    assert!(
        !trace
            .iter()
            .any(|span| span.name.starts_with("compensate: ")),
        "a confirmed order compensates nothing"
    );
}

#[tokio::test]
async fn a_declined_payment_is_one_trace_with_its_compensations() {
    let (system, received) = traced_system();
    let api = Api::on(system);
    let (sku, poor) = (unique("sku"), unique("poor"));
    api.create_product(&sku, 700, 5).await;
    api.open_account(&poor, 100).await;

    let order_id = api.place_order(&poor, &[(&sku, 1)], "FR").await;
    let order = api.wait_terminal(order_id).await;
    assert_eq!(order["cancellation_reason"], "payment_declined", "{order}");

    let (_, trace) = wait_for_trace(
        received,
        order_id,
        &[
            ("order-service", "POST /orders"),
            ("inventory-service", "process order.created.v1"),
            ("payment-service", "process inventory.reserved.v1"),
            ("payment-service", "emit payment.declined.v1"),
            ("order-service", "process payment.declined.v1"),
            ("order-service", "compensate: cancel order"),
            ("inventory-service", "process order.cancelled.v1"),
            ("inventory-service", "compensate: release reservation"),
            ("payment-service", "process order.cancelled.v1"),
            ("shipping-service", "process order.cancelled.v1"),
        ],
    )
    .await;

    let roots: Vec<&Span> = trace
        .iter()
        .filter(|span| span.parent_span_id.is_empty())
        .collect();
    assert_eq!(roots.len(), 1, "one root: {roots:#?}");
    assert_eq!(
        (roots[0].name.as_str(), roots[0].service.as_str()),
        ("POST /orders", "order-service"),
        "a new trace starts at the request"
    );
    for service in SAGA_SERVICES {
        assert!(
            services_in(&trace).contains(service),
            "{service} is in the trace"
        );
    }
    let release = trace
        .iter()
        .find(|span| span.name == "compensate: release reservation")
        .expect("the release");
    assert_eq!(release.attributes["saga.compensation"], "true");
    assert_eq!(release.attributes["order.id"], order_id.to_string());
}
