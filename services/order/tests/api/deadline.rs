//! The saga deadline continues the trace an order was placed in.

use std::time::Duration;

use shared::traces::{ServiceTracer, TracesConfig};

use crate::helpers::{order_body, outbox, place_ok, start};

#[tokio::test]
async fn a_timed_out_order_is_cancelled_in_the_trace_it_was_placed_in() {
    let app = start().await;
    let (traced, untraced) = (
        place_ok(&app, &order_body("alice")).await,
        place_ok(&app, &order_body("bob")).await,
    );
    let placed_in = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    sqlx::query("update orders set traceparent = $2, tracestate = 'a=1' where order_id = $1")
        .bind(traced)
        .bind(placed_in)
        .execute(&app.pool)
        .await
        .unwrap();
    // Exporting to a port where nothing listens: the spans are dropped, the context is not.
    let tracer = ServiceTracer::from_config(
        "order-service",
        &TracesConfig {
            otel_exporter_otlp_endpoint: Some("http://127.0.0.1:9".to_owned()),
            ..TracesConfig::default()
        },
    )
    .unwrap();

    let cancelled = order_service::deadline::sweep(&app.pool, &tracer, Duration::ZERO)
        .await
        .unwrap();
    assert_eq!(cancelled, 2);

    let rows: Vec<(String, Option<String>, Option<String>)> = sqlx::query_as(
        "select message_key, traceparent, tracestate from outbox
         where event_type = 'order.cancelled.v1' order by message_key",
    )
    .fetch_all(&app.pool)
    .await
    .unwrap();
    let context_of = |order: uuid::Uuid| {
        rows.iter()
            .find(|(key, _, _)| *key == order.to_string())
            .map(|(_, parent, state)| (parent.clone(), state.clone()))
            .expect("the order's cancellation")
    };
    let (parent, state) = context_of(traced);
    let parent = parent.expect("the cancellation is traced");
    assert!(
        parent.starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-"),
        "{parent}"
    );
    assert!(
        !parent.contains("00f067aa0ba902b7"),
        "a span of its own: {parent}"
    );
    assert_eq!(state.as_deref(), Some("a=1"));
    // An order placed outside any trace starts one when it times out.
    let (parent, _) = context_of(untraced);
    assert!(parent.is_some_and(|parent| !parent.contains("4bf92f3577b34da6a3ce929d0e0e4736")));
    assert_eq!(outbox(&app).await.len(), 4, "two created, two cancelled");
}
