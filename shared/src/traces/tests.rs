use std::sync::{Arc, Mutex};

use opentelemetry::trace::{SpanId, TraceFlags, TraceId, TraceState};
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::trace::{SpanData, SpanExporter};
use rdkafka::message::OwnedHeaders;

use super::*;

fn remote(trace: u128, span: u64, state: &str) -> Context {
    Context::new().with_remote_span_context(SpanContext::new(
        TraceId::from(trace),
        SpanId::from(span),
        TraceFlags::SAMPLED,
        true,
        state.parse::<TraceState>().unwrap(),
    ))
}

fn injected(context: &Context) -> OwnedHeaders {
    let mut injector = KafkaHeaderInjector(OwnedHeaders::new().insert(Header {
        key: "event_type",
        value: Some("order.created.v1"),
    }));
    TraceContextPropagator::new().inject_context(context, &mut injector);
    injector.0
}

#[test]
fn kafka_headers_carry_the_trace_context_both_ways() {
    let sent = remote(
        0x4bf9_2f35_77b3_4da6_a3ce_929d_0e0e_4736,
        0x00f0_67aa_0ba9_02b7,
        "vendor=x",
    );
    let headers = injected(&sent);

    let extractor = KafkaHeaderExtractor(&headers);
    assert_eq!(
        extractor.get(TRACEPARENT),
        Some("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")
    );
    assert_eq!(extractor.get(TRACESTATE), Some("vendor=x"));
    assert_eq!(extractor.get("event_type"), Some("order.created.v1"));
    assert_eq!(
        extractor.keys(),
        ["event_type", TRACEPARENT, TRACESTATE].to_vec()
    );

    let received = TraceContextPropagator::new().extract(&extractor);
    assert_eq!(received.span().span_context(), sent.span().span_context());
}

#[test]
fn the_extractor_ignores_case_and_values_that_are_not_text() {
    let headers = OwnedHeaders::new()
        .insert(Header {
            key: "TraceParent",
            value: Some(&[0xff_u8, 0xfe][..]),
        })
        .insert(Header {
            key: "traceparent",
            value: Some("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00".as_bytes()),
        })
        .insert(Header::<&[u8]> {
            key: "tracestate",
            value: None,
        });
    let extractor = KafkaHeaderExtractor(&headers);
    assert_eq!(
        extractor.get(TRACEPARENT),
        Some("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00")
    );
    assert_eq!(extractor.get(TRACESTATE), None);
    assert_eq!(
        KafkaHeaderExtractor(&OwnedHeaders::new()).get(TRACEPARENT),
        None
    );
}

#[test]
fn a_stored_context_round_trips_and_a_bad_one_is_no_context() {
    let context = remote(7, 9, "a=1,b=2");
    let stored = StoredContext::of(context.span().span_context()).unwrap();
    assert_eq!(
        stored,
        StoredContext {
            traceparent: "00-00000000000000000000000000000007-0000000000000009-01".to_owned(),
            tracestate: Some("a=1,b=2".to_owned()),
        }
    );
    assert_eq!(
        stored.context().span().span_context(),
        context.span().span_context()
    );
    let bad = StoredContext {
        traceparent: "00-not-a-trace-01".to_owned(),
        tracestate: None,
    };
    assert!(!bad.context().span().span_context().is_valid());
    assert_eq!(StoredContext::of(&SpanContext::empty_context()), None);
}

#[test]
fn without_an_exporter_an_incoming_context_is_passed_on_unchanged() {
    let tracer = ServiceTracer::default();
    let sent = remote(11, 12, "");
    let headers = injected(&sent);

    let context = tracer
        .consume(
            "process",
            Some(&headers),
            "order.created.v1",
            &"o-1",
            Vec::new,
        )
        .expect("the incoming context");
    assert_eq!(context.span().span_context(), sent.span().span_context());
    let stored = {
        let _attached = context.clone().attach();
        emitting("inventory.reserved.v1", None, "o-1")
    }
    .expect("the incoming context, to store");
    assert_eq!(
        Some(&stored),
        StoredContext::of(sent.span().span_context()).as_ref()
    );

    let (published, span) = tracer.publish(OwnedHeaders::new(), Some(&stored), Vec::new, "x");
    assert!(span.is_none());
    assert_eq!(
        KafkaHeaderExtractor(&published).get(TRACEPARENT),
        Some(stored.traceparent.as_str())
    );

    let untraced = OwnedHeaders::new();
    assert!(tracer
        .consume(
            "process",
            Some(&untraced),
            "order.created.v1",
            &"o-1",
            Vec::new
        )
        .is_none());
    assert_eq!(emitting("order.created.v1", None, "o-1"), None);
}

/// Keeps what it is given, for the assertions.
#[derive(Debug, Clone, Default)]
struct Collected(Arc<Mutex<Vec<SpanData>>>);

impl SpanExporter for Collected {
    async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
        self.0.lock().unwrap().extend(batch);
        Ok(())
    }
}

impl Collected {
    fn named(&self, name: &str) -> SpanData {
        let spans = self.0.lock().unwrap();
        spans
            .iter()
            .find(|span| span.name == name)
            .unwrap_or_else(|| panic!("no span {name}: {spans:#?}"))
            .clone()
    }
}

fn exporting_to(collected: &Collected) -> ServiceTracer {
    let provider = SdkTracerProvider::builder()
        .with_simple_exporter(collected.clone())
        .build();
    let tracer = provider.tracer("test");
    ServiceTracer(Some(Arc::new(Exporting { provider, tracer })))
}

#[test]
fn an_event_is_consumed_emitted_and_published_as_parent_and_child_spans() {
    let collected = Collected::default();
    let tracer = exporting_to(&collected);

    // A message without a trace context starts a trace.
    let consumed = tracer
        .consume(
            "process",
            None::<&OwnedHeaders>,
            "payment.declined.v1",
            &"o-1",
            || vec![KeyValue::new("messaging.kafka.offset", 3_i64)],
        )
        .expect("a consumer span");
    let stored = {
        let _attached = consumed.clone().attach();
        emitting("order.cancelled.v1", Some("cancel order"), "o-1")
    }
    .expect("the context of the emit span");
    finish(Some(&consumed), Ok("applied"));

    let (headers, published) = tracer.publish(
        OwnedHeaders::new(),
        Some(&stored),
        Vec::new,
        "order.cancelled.v1",
    );
    let published = published.expect("a producer span");
    finish(Some(&published), Ok("acknowledged"));
    let next = tracer
        .consume(
            "process",
            Some(&headers),
            "order.cancelled.v1",
            &"o-1",
            Vec::new,
        )
        .expect("the next consumer span");
    finish(Some(&next), Err(&"refused"));

    let process = collected.named("process payment.declined.v1");
    let compensate = collected.named("compensate: cancel order");
    let publish = collected.named("publish order.cancelled.v1");
    let next = collected.named("process order.cancelled.v1");
    assert_eq!(process.parent_span_id, SpanId::INVALID);
    assert_eq!(process.span_kind, SpanKind::Consumer);
    assert_eq!(compensate.parent_span_id, process.span_context.span_id());
    assert_eq!(publish.span_kind, SpanKind::Producer);
    assert_eq!(publish.parent_span_id, compensate.span_context.span_id());
    assert_eq!(next.parent_span_id, publish.span_context.span_id());
    assert!(matches!(next.status, Status::Error { .. }));
    for span in [&compensate, &publish, &next] {
        assert_eq!(
            span.span_context.trace_id(),
            process.span_context.trace_id()
        );
    }
    assert!(compensate
        .attributes
        .contains(&KeyValue::new(COMPENSATION, true)));
    assert!(compensate
        .attributes
        .contains(&KeyValue::new(ORDER_ID, "o-1")));
    assert!(process
        .attributes
        .contains(&KeyValue::new(EVENT_TYPE, "payment.declined.v1")));
    assert!(process
        .attributes
        .contains(&KeyValue::new("outcome", "applied")));
}

#[test]
fn an_endpoint_turns_exporting_on_with_either_protocol() {
    let config = |endpoint: Option<&str>, protocol: &str| TracesConfig {
        otel_exporter_otlp_endpoint: endpoint.map(str::to_owned),
        otel_exporter_otlp_protocol: protocol.to_owned(),
    };
    for (endpoint, exporting) in [
        (None, false),
        (Some(""), false),
        (Some("  "), false),
        (Some("http://127.0.0.1:4318"), true),
        (Some("http://127.0.0.1:4318/"), true),
    ] {
        for protocol in ["http/protobuf", "http/json"] {
            let tracer = ServiceTracer::from_config("test-service", &config(endpoint, protocol))
                .expect("a tracer");
            assert_eq!(tracer.is_exporting(), exporting, "{endpoint:?} {protocol}");
        }
    }
    assert!(
        ServiceTracer::from_config("test-service", &config(Some("not a url"), "http/json"))
            .is_err()
    );
}

#[tokio::test]
async fn a_request_is_handled_in_the_callers_trace() {
    use axum::body::Body;
    use axum::routing::get;
    use tower::ServiceExt;

    async fn trace_id() -> String {
        current_trace_id().unwrap_or_default()
    }
    let collected = Collected::default();
    for tracer in [ServiceTracer::default(), exporting_to(&collected)] {
        let app = axum::Router::new()
            .route("/orders", get(trace_id))
            .route("/health/live", get(trace_id))
            .layer(axum::middleware::from_fn_with_state(
                tracer.clone(),
                http_layer,
            ));
        let call = |path: &str, traceparent: Option<&str>| {
            let mut request = axum::http::Request::get(path);
            if let Some(traceparent) = traceparent {
                request = request.header(TRACEPARENT, traceparent);
            }
            let app = app.clone();
            let request = request.body(Body::empty()).unwrap();
            async move {
                let response = app.oneshot(request).await.unwrap();
                let body = axum::body::to_bytes(response.into_body(), usize::MAX)
                    .await
                    .unwrap();
                String::from_utf8(body.to_vec()).unwrap()
            }
        };
        let caller = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        assert_eq!(
            call("/orders", Some(caller)).await,
            "4bf92f3577b34da6a3ce929d0e0e4736"
        );
        assert_eq!(call("/health/live", Some(caller)).await, "");
        let started = call("/orders", None).await;
        assert_eq!(started.is_empty(), !tracer.is_exporting(), "{started}");
    }
    let request = collected.named("GET /orders");
    assert_eq!(request.span_kind, SpanKind::Server);
    assert_eq!(request.parent_span_id, SpanId::from(0x00f0_67aa_0ba9_02b7));
    assert!(request
        .attributes
        .contains(&KeyValue::new("http.response.status_code", 200_i64)));
}

#[tokio::test]
async fn a_worker_continues_the_trace_stored_with_an_order() {
    let collected = Collected::default();
    let tracer = exporting_to(&collected);
    let request = remote(0xabc, 0xdef, "");
    let stored = {
        let _attached = request.clone().attach();
        current_context()
    };
    let written = continue_stored(&tracer, stored.as_ref(), "saga deadline", &"o-1", async {
        Ok::<_, String>(emitting("order.cancelled.v1", Some("cancel order"), "o-1"))
    })
    .await
    .unwrap()
    .expect("the context the event is written in");

    let deadline = collected.named("saga deadline");
    let cancel = collected.named("compensate: cancel order");
    assert_eq!(deadline.span_context.trace_id(), TraceId::from(0xabc));
    assert_eq!(deadline.parent_span_id, SpanId::from(0xdef));
    assert_eq!(cancel.parent_span_id, deadline.span_context.span_id());
    assert_eq!(
        written.context().span().span_context().span_id(),
        cancel.span_context.span_id()
    );

    // Without an exporter the stored context is passed on as it is.
    let passed_on = continue_stored(
        &ServiceTracer::default(),
        stored.as_ref(),
        "saga deadline",
        &"o-1",
        async { Ok::<_, String>(emitting("order.cancelled.v1", None, "o-1")) },
    )
    .await
    .unwrap();
    assert_eq!(passed_on, stored);
    assert_eq!(current_context(), None);
}
