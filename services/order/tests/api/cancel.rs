//! `POST /orders/{id}/cancel`: only a pending order, exactly once, with `order.cancelled.v1`.

use axum::http::{Method, StatusCode};
use serde_json::{json, Value};
use shared::testing::assert_error;

use crate::helpers::{cancel, order_body, outbox, place_ok, start};

#[tokio::test]
async fn cancelling_a_pending_order_is_202_and_writes_order_cancelled() {
    let app = start().await;
    let order_id = place_ok(&app, &order_body("ivy")).await;

    let (status, body) = cancel(&app, order_id).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    let cancelled = json!({"order_id": order_id, "status": "CANCELLED", "cancellation_reason": "cancelled_by_customer"});
    assert_eq!(body, cancelled);

    let (_, order) = app
        .send(Method::GET, &format!("/orders/{order_id}"), None)
        .await;
    assert_eq!(
        (&order["status"], &order["cancellation_reason"]),
        (&cancelled["status"], &cancelled["cancellation_reason"])
    );

    let events = outbox(&app).await;
    let types: Vec<&str> = events
        .iter()
        .map(|(event_type, _)| event_type.as_str())
        .collect();
    assert_eq!(types, ["order.created.v1", "order.cancelled.v1"]);
    assert_eq!(
        events[1].1["payload"],
        json!({"order_id": order_id, "reason": "cancelled_by_customer"})
    );

    let (_, timeline) = app
        .send(Method::GET, &format!("/orders/{order_id}/timeline"), None)
        .await;
    assert_eq!(timeline["status"], "CANCELLED");
    let listed: Vec<&Value> = timeline["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| &e["type"])
        .collect();
    assert_eq!(
        listed,
        [&json!("order.created.v1"), &json!("order.cancelled.v1")]
    );
}

#[tokio::test]
async fn cancelling_twice_is_409_and_emits_one_cancellation() {
    let app = start().await;
    let order_id = place_ok(&app, &order_body("jo")).await;
    assert_eq!(cancel(&app, order_id).await.0, StatusCode::ACCEPTED);
    assert_error(
        &cancel(&app, order_id).await,
        StatusCode::CONFLICT,
        "order_not_pending",
    );
    assert_eq!(
        app.count("select count(*) from outbox where event_type = 'order.cancelled.v1'")
            .await,
        1
    );
}

#[tokio::test]
async fn cancelling_a_confirmed_order_is_409_and_keeps_it_confirmed() {
    let app = start().await;
    let order_id = place_ok(&app, &order_body("kim")).await;
    // Confirmation comes from the saga's events; set it directly.
    sqlx::query("update orders set status = 'CONFIRMED' where order_id = $1")
        .bind(order_id)
        .execute(&app.pool)
        .await
        .unwrap();

    assert_error(
        &cancel(&app, order_id).await,
        StatusCode::CONFLICT,
        "order_not_pending",
    );
    let (_, order) = app
        .send(Method::GET, &format!("/orders/{order_id}"), None)
        .await;
    assert_eq!(order["status"], "CONFIRMED");
    assert_eq!(
        app.count("select count(*) from outbox where event_type = 'order.cancelled.v1'")
            .await,
        0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_cancels_succeed_exactly_once() {
    let app = start().await;
    let order_id = place_ok(&app, &order_body("lee")).await;
    let tasks: Vec<_> = (0..6)
        .map(|_| {
            let app = app.clone();
            tokio::spawn(async move { cancel(&app, order_id).await })
        })
        .collect();
    let mut accepted = 0;
    for task in tasks {
        let reply = task.await.unwrap();
        if reply.0 == StatusCode::ACCEPTED {
            accepted += 1;
        } else {
            assert_error(&reply, StatusCode::CONFLICT, "order_not_pending");
        }
    }
    assert_eq!(accepted, 1);
    assert_eq!(
        app.count("select count(*) from outbox where event_type = 'order.cancelled.v1'")
            .await,
        1
    );
}
