//! Distributed traces: one order is one W3C trace across HTTP, the outbox, Kafka and every
//! service's handling (docs/OBSERVABILITY.md, Traces).
//!
//! Each service owns a [`ServiceTracer`] (its own tracer provider, `service.name` =
//! `<name>-service`), so services sharing a process (the e2e suite) still export under their own
//! names; it exports over OTLP/HTTP only when `OTEL_EXPORTER_OTLP_ENDPOINT` is set. The context
//! flows explicitly: an incoming `traceparent` (HTTP or Kafka header) becomes the parent of the
//! service's span, which is attached (with the tracer) to the future doing the work;
//! [`crate::outbox::emit`] stores the current context with the row it writes; the relay
//! sends it as the `traceparent` / `tracestate` Kafka headers ([`KafkaHeaderInjector`],
//! [`KafkaHeaderExtractor`]); the consumer continues it. Without an exporter no span is made:
//! an incoming context is only passed along unchanged, and a message without one costs a
//! header look-up.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{MatchedPath, Request, State};
use axum::middleware::Next;
use axum::response::Response;
use opentelemetry::context::FutureExt as _;
use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator};
use opentelemetry::trace::{
    SpanContext, SpanKind, Status, TraceContextExt, Tracer as _, TracerProvider as _,
};
use opentelemetry::{Context, KeyValue};
use opentelemetry_otlp::{Protocol, WithExportConfig};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{SdkTracer, SdkTracerProvider};
use opentelemetry_sdk::Resource;
use rdkafka::message::{Header, Headers, OwnedHeaders};

/// The W3C trace context headers, on HTTP requests and Kafka records alike.
pub const TRACEPARENT: &str = "traceparent";
pub const TRACESTATE: &str = "tracestate";

/// Span attribute: the order (saga) id.
pub const ORDER_ID: &str = "order.id";
/// Span attribute: the versioned event type, e.g. `order.created.v1`.
pub const EVENT_TYPE: &str = "event.type";
/// Span attribute on the spans of compensating steps: `true`.
pub const COMPENSATION: &str = "saga.compensation";

/// Where and how spans are exported; part of every service's configuration.
#[derive(Debug, Clone, clap::Args)]
pub struct TracesConfig {
    /// OTLP/HTTP base URL of a trace collector (e.g. Jaeger's `http://jaeger:4318`); spans go
    /// to `<url>/v1/traces`. Unset: no span is exported, and none is made.
    #[arg(long, env = "OTEL_EXPORTER_OTLP_ENDPOINT")]
    pub otel_exporter_otlp_endpoint: Option<String>,

    /// How spans are encoded: `http/protobuf` or `http/json` (gRPC is not built in).
    #[arg(
        long,
        env = "OTEL_EXPORTER_OTLP_PROTOCOL",
        default_value = "http/protobuf",
        value_parser = ["http/protobuf", "http/json"]
    )]
    pub otel_exporter_otlp_protocol: String,
}

/// No export.
impl Default for TracesConfig {
    fn default() -> Self {
        Self {
            otel_exporter_otlp_endpoint: None,
            otel_exporter_otlp_protocol: "http/protobuf".to_owned(),
        }
    }
}

/// A service's tracer: makes and exports spans when an OTLP endpoint is configured, else does
/// nothing. Cheap to clone.
#[derive(Clone, Default)]
pub struct ServiceTracer(Option<Arc<Exporting>>);

struct Exporting {
    provider: SdkTracerProvider,
    tracer: SdkTracer,
}

impl std::fmt::Debug for ServiceTracer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("ServiceTracer")
            .field(&self.is_exporting())
            .finish()
    }
}

impl ServiceTracer {
    /// The tracer of the service `service_name` (its `service.name`), exporting to the
    /// configured endpoint; a tracer that does nothing when none is.
    pub fn from_config(service_name: &str, config: &TracesConfig) -> anyhow::Result<Self> {
        let Some(endpoint) = config
            .otel_exporter_otlp_endpoint
            .as_deref()
            .map(str::trim)
            .filter(|endpoint| !endpoint.is_empty())
        else {
            return Ok(Self::default());
        };
        let protocol = match config.otel_exporter_otlp_protocol.as_str() {
            "http/json" => Protocol::HttpJson,
            _ => Protocol::HttpBinary,
        };
        let url = format!("{}/v1/traces", endpoint.trim_end_matches('/'));
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .with_endpoint(url.clone())
            .with_protocol(protocol)
            .build()
            .map_err(|error| {
                anyhow::anyhow!("building the OTLP span exporter for {url}: {error}")
            })?;
        let provider = SdkTracerProvider::builder()
            .with_batch_exporter(exporter)
            .with_resource(
                Resource::builder()
                    .with_service_name(service_name.to_owned())
                    .build(),
            )
            .build();
        let tracer = provider.tracer("sagashop");
        tracing::info!(%url, service_name, "exporting traces over OTLP");
        Ok(Self(Some(Arc::new(Exporting { provider, tracer }))))
    }

    /// Whether spans are made and exported.
    pub fn is_exporting(&self) -> bool {
        self.0.is_some()
    }

    /// Sends what is buffered and stops exporting (on a blocking thread, bounded by `timeout`).
    pub async fn shutdown(&self, timeout: Duration) {
        let Some(exporting) = self.0.clone() else {
            return;
        };
        let stopped =
            tokio::task::spawn_blocking(move || exporting.provider.shutdown_with_timeout(timeout))
                .await;
        if let Ok(Err(error)) = stopped {
            tracing::warn!(%error, "could not flush the last spans");
        }
    }

    /// A new span `name` of `kind` under `parent`, as the context to run its work in (which also
    /// carries this tracer, for the spans made inside); `None` when not exporting.
    fn start(
        &self,
        name: String,
        kind: SpanKind,
        parent: &Context,
        attributes: Vec<KeyValue>,
    ) -> Option<Context> {
        let exporting = self.0.as_ref()?;
        let span = exporting
            .tracer
            .span_builder(name)
            .with_kind(kind)
            .with_attributes(attributes)
            .start_with_context(&exporting.tracer, parent);
        Some(parent.with_span(span).with_value(self.clone()))
    }

    /// The context to consume a Kafka message in: a consumer span `process <event type>`
    /// continuing the trace of its headers (a new trace without them). When not exporting,
    /// the context of the headers as it came, if any.
    pub(crate) fn consume<H: Headers>(
        &self,
        name: &str,
        headers: Option<&H>,
        event_type: &str,
        order_id: &dyn std::fmt::Display,
        attributes: impl FnOnce() -> Vec<KeyValue>,
    ) -> Option<Context> {
        let parent = headers.and_then(|headers| {
            KafkaHeaderExtractor(headers)
                .get(TRACEPARENT)
                .map(|_| TraceContextPropagator::new().extract(&KafkaHeaderExtractor(headers)))
        });
        if !self.is_exporting() {
            return parent.filter(|parent| parent.span().span_context().is_valid());
        }
        let mut all = vec![
            KeyValue::new(ORDER_ID, order_id.to_string()),
            KeyValue::new(EVENT_TYPE, event_type.to_owned()),
        ];
        all.extend(attributes());
        self.start(
            format!("{name} {event_type}"),
            SpanKind::Consumer,
            &parent.unwrap_or_default(),
            all,
        )
    }

    /// The Kafka headers of an outbox row published with the trace context it was written in
    /// (`traceparent`, `tracestate`). When exporting, a producer span `publish <event type>` is
    /// made under it and its context is sent instead; the span is returned, to end when the
    /// broker acknowledged the record.
    pub(crate) fn publish(
        &self,
        headers: OwnedHeaders,
        written_in: Option<&StoredContext>,
        attributes: impl FnOnce() -> Vec<KeyValue>,
        event_type: &str,
    ) -> (OwnedHeaders, Option<Context>) {
        let Some(stored) = written_in else {
            return (headers, None);
        };
        if !self.is_exporting() {
            return (stored.insert_into(headers), None);
        }
        let parent = stored.context();
        let Some(span) = self.start(
            format!("publish {event_type}"),
            SpanKind::Producer,
            &parent,
            attributes(),
        ) else {
            return (stored.insert_into(headers), None);
        };
        let mut injector = KafkaHeaderInjector(headers);
        TraceContextPropagator::new().inject_context(&span, &mut injector);
        (injector.0, Some(span))
    }
}

/// The trace context an outbox row was written in, as stored with it (`outbox.traceparent`,
/// `outbox.tracestate`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredContext {
    pub traceparent: String,
    pub tracestate: Option<String>,
}

impl StoredContext {
    /// The context a row keeps in its `traceparent` and `tracestate` columns; `None` when it
    /// was written outside any trace.
    pub fn from_columns(traceparent: Option<String>, tracestate: Option<String>) -> Option<Self> {
        traceparent.map(|traceparent| Self {
            traceparent,
            tracestate,
        })
    }

    fn of(span_context: &SpanContext) -> Option<Self> {
        if !span_context.is_valid() {
            return None;
        }
        let traceparent = format!(
            "00-{}-{}-{:02x}",
            span_context.trace_id(),
            span_context.span_id(),
            span_context.trace_flags().to_u8()
        );
        let tracestate =
            Some(span_context.trace_state().header()).filter(|state| !state.is_empty());
        Some(Self {
            traceparent,
            tracestate,
        })
    }

    /// The parsed context (empty when the stored text is not a valid `traceparent`).
    fn context(&self) -> Context {
        TraceContextPropagator::new().extract(self)
    }

    fn insert_into(&self, headers: OwnedHeaders) -> OwnedHeaders {
        let headers = headers.insert(Header {
            key: TRACEPARENT,
            value: Some(self.traceparent.as_str()),
        });
        match &self.tracestate {
            Some(state) => headers.insert(Header {
                key: TRACESTATE,
                value: Some(state.as_str()),
            }),
            None => headers,
        }
    }
}

impl Extractor for StoredContext {
    fn get(&self, key: &str) -> Option<&str> {
        match key {
            TRACEPARENT => Some(&self.traceparent),
            TRACESTATE => self.tracestate.as_deref(),
            _ => None,
        }
    }

    fn keys(&self) -> Vec<&str> {
        vec![TRACEPARENT, TRACESTATE]
    }
}

/// What an event written to the outbox now records of the trace: when the work runs under a
/// span of ours, a span `emit <event type>` (or, for a compensating event,
/// `compensate: <what it undoes>`) and its context; under a context that came from elsewhere
/// (not exporting), that context unchanged; else nothing.
pub(crate) fn emitting(
    event_type: &str,
    compensation: Option<&str>,
    order_id: &str,
) -> Option<StoredContext> {
    Context::map_current(|current| {
        let span_context = current.span().span_context().clone();
        if !span_context.is_valid() {
            return None;
        }
        let Some(tracer) = current.get::<ServiceTracer>() else {
            return StoredContext::of(&span_context);
        };
        let mut attributes = vec![
            KeyValue::new(ORDER_ID, order_id.to_owned()),
            KeyValue::new(EVENT_TYPE, event_type.to_owned()),
        ];
        let name = match compensation {
            Some(what) => {
                attributes.push(KeyValue::new(COMPENSATION, true));
                format!("compensate: {what}")
            }
            None => format!("emit {event_type}"),
        };
        match tracer.start(name, SpanKind::Internal, current, attributes) {
            Some(span) => {
                let stored = StoredContext::of(span.span().span_context());
                span.span().end();
                stored
            }
            None => StoredContext::of(&span_context),
        }
    })
}

/// The trace context of the work being done, to store with a row that later work continues
/// from (e.g. an order, which the saga deadline may cancel); `None` when it is not traced.
pub fn current_context() -> Option<StoredContext> {
    Context::map_current(|current| StoredContext::of(current.span().span_context()))
}

/// Runs `work`, done for the order `order_id` outside any request or event (a background
/// worker), in a span `name` continuing `stored` (the context stored with the order; a new
/// trace without it), so the events it writes join the order's trace. Without an exporter it
/// runs in `stored` as it is.
pub async fn continue_stored<T, E: std::fmt::Display, F: Future<Output = Result<T, E>>>(
    tracer: &ServiceTracer,
    stored: Option<&StoredContext>,
    name: &str,
    order_id: impl std::fmt::Display,
    work: F,
) -> Result<T, E> {
    let parent = stored.map_or_else(Context::new, StoredContext::context);
    let context = tracer
        .start(
            name.to_owned(),
            SpanKind::Internal,
            &parent,
            vec![KeyValue::new(ORDER_ID, order_id.to_string())],
        )
        .or_else(|| Some(parent).filter(|parent| parent.span().span_context().is_valid()));
    let result = run_in(context.as_ref(), work).await;
    match &result {
        Ok(_) => finish(context.as_ref(), Ok("done")),
        Err(error) => finish(context.as_ref(), Err(error)),
    }
    result
}

/// The trace id of the work being done, if it is traced (for log lines).
pub fn current_trace_id() -> Option<String> {
    Context::map_current(|current| {
        let span_context = current.span().span_context().clone();
        span_context
            .is_valid()
            .then(|| span_context.trace_id().to_string())
    })
}

/// Runs `work` in `context` (see [`ServiceTracer::consume`]), or as it is without one.
pub(crate) async fn run_in<F: Future>(context: Option<&Context>, work: F) -> F::Output {
    match context {
        Some(context) => work.with_context(context.clone()).await,
        None => work.await,
    }
}

/// Ends the span of `context` (if it has one of ours): `Err` marks it failed with the reason,
/// `Ok` records the outcome (`applied`, `duplicate`, ...) as `outcome`.
pub(crate) fn finish(context: Option<&Context>, outcome: Result<&str, &dyn std::fmt::Display>) {
    let Some(context) = context.filter(|context| context.get::<ServiceTracer>().is_some()) else {
        return;
    };
    let span = context.span();
    match outcome {
        Ok(outcome) => span.set_attribute(KeyValue::new("outcome", outcome.to_owned())),
        Err(error) => span.set_status(Status::error(error.to_string())),
    }
    span.end();
}

/// Middleware of every service's router: continues an incoming `traceparent` (else starts a
/// trace) with a server span `<METHOD> <route>` around the request, in whose context the
/// handler runs (and writes its outbox rows). The health endpoints and `/metrics` are not
/// traced.
pub(crate) async fn http_layer(
    State(tracer): State<ServiceTracer>,
    request: Request,
    next: Next,
) -> Response {
    let path = request.uri().path();
    if path.starts_with("/health/") || path == "/metrics" {
        return next.run(request).await;
    }
    let has_parent = request.headers().contains_key(TRACEPARENT);
    if !has_parent && !tracer.is_exporting() {
        return next.run(request).await;
    }
    let parent = if has_parent {
        TraceContextPropagator::new().extract(&HttpHeaderExtractor(request.headers()))
    } else {
        Context::new()
    };
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| path.to_owned(), |route| route.as_str().to_owned());
    let method = request.method().as_str().to_owned();
    let Some(context) = tracer.start(
        format!("{method} {route}"),
        SpanKind::Server,
        &parent,
        vec![
            KeyValue::new("http.request.method", method),
            KeyValue::new("http.route", route),
        ],
    ) else {
        // Not exporting: the handler only passes the caller's context on.
        let parent = Some(parent).filter(|parent| parent.span().span_context().is_valid());
        return run_in(parent.as_ref(), next.run(request)).await;
    };
    let response = next.run(request).with_context(context.clone()).await;
    let span = context.span();
    let status = response.status();
    span.set_attribute(KeyValue::new(
        "http.response.status_code",
        i64::from(status.as_u16()),
    ));
    if status.is_server_error() {
        span.set_status(Status::error(status.to_string()));
    }
    span.end();
    response
}

/// Reads trace context headers from an HTTP request.
struct HttpHeaderExtractor<'a>(&'a axum::http::HeaderMap);

impl Extractor for HttpHeaderExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|value| value.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(axum::http::HeaderName::as_str).collect()
    }
}

/// Writes trace context headers into Kafka record headers.
pub struct KafkaHeaderInjector(pub OwnedHeaders);

impl Injector for KafkaHeaderInjector {
    fn set(&mut self, key: &str, value: String) {
        let headers = std::mem::replace(&mut self.0, OwnedHeaders::new());
        self.0 = headers.insert(Header {
            key,
            value: Some(value.as_str()),
        });
    }
}

/// Reads trace context headers from Kafka record headers (the first valid UTF-8 value of a
/// key; keys compared without regard to case, as W3C headers are).
pub struct KafkaHeaderExtractor<'a, H: Headers>(pub &'a H);

impl<H: Headers> Extractor for KafkaHeaderExtractor<'_, H> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0
            .iter()
            .filter(|header| header.key.eq_ignore_ascii_case(key))
            .find_map(|header| std::str::from_utf8(header.value?).ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.iter().map(|header| header.key).collect()
    }
}

#[cfg(test)]
mod tests;
