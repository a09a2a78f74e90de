//! Placing an order: 202 `PENDING`, `order.created.v1` in the outbox, the order and its
//! timeline read back, and the limits of what is accepted.

use axum::http::{header, Method, StatusCode};
use serde_json::{json, Value};
use shared::testing::patched;
use uuid::Uuid;

use crate::helpers::{order_body, place, place_ok, start};

#[tokio::test]
async fn placing_an_order_is_202_pending_and_writes_order_created_to_the_outbox() {
    let app = start().await;
    let body = order_body("alice");
    let reply = place(&app, &body, None).await;
    assert_eq!(reply.status, StatusCode::ACCEPTED, "{}", reply.body);
    let order_id: Uuid = reply.body["order_id"].as_str().unwrap().parse().unwrap();
    assert_eq!(
        reply.body,
        json!({"order_id": order_id, "status": "PENDING"})
    );
    assert_eq!(
        reply.headers[header::LOCATION],
        format!("/orders/{order_id}").as_str()
    );

    let (topic, message_key, event_type, envelope): (String, String, String, Value) =
        sqlx::query_as("select topic, message_key, event_type, envelope from outbox")
            .fetch_one(&app.pool)
            .await
            .unwrap();
    assert_eq!(
        (topic.as_str(), event_type.as_str()),
        ("order.events", "order.created.v1")
    );
    assert_eq!(message_key, order_id.to_string());
    assert_eq!(
        (&envelope["type"], &envelope["source"]),
        (&json!("order.created.v1"), &json!("order"))
    );
    assert_eq!(
        (&envelope["order_id"], &envelope["causation_id"]),
        (&json!(order_id), &Value::Null)
    );
    let payload = json!({
        "order_id": order_id,
        "customer_id": "alice",
        "items": body["items"],
        "shipping_address": body["shipping_address"],
    });
    assert_eq!(envelope["payload"], payload);

    let (status, timeline) = app
        .send(Method::GET, &format!("/orders/{order_id}/timeline"), None)
        .await;
    assert_eq!(status, StatusCode::OK, "{timeline}");
    assert_eq!(
        (&timeline["order_id"], &timeline["status"]),
        (&json!(order_id), &json!("PENDING"))
    );
    let events = timeline["events"].as_array().unwrap();
    assert_eq!(events.len(), 1, "{timeline}");
    assert_eq!(events[0]["event_id"], envelope["id"]);
    assert_eq!(
        (&events[0]["type"], &events[0]["source"]),
        (&json!("order.created.v1"), &json!("order"))
    );
}

#[tokio::test]
async fn a_placed_order_reads_back_pending_with_its_items_and_address() {
    let app = start().await;
    let body = order_body("alice");
    let order_id = place_ok(&app, &body).await;

    let (status, order) = app
        .send(Method::GET, &format!("/orders/{order_id}"), None)
        .await;
    assert_eq!(status, StatusCode::OK, "{order}");
    assert_eq!(order["order_id"], json!(order_id));
    assert_eq!(order["customer_id"], "alice");
    assert_eq!(order["status"], "PENDING");
    let items = json!([
        {"sku": "MUG-01", "quantity": 2, "unit_price_cents": null, "name": null,
         "price_at_placement_cents": null},
        {"sku": "TEA", "quantity": 1, "unit_price_cents": null, "name": null,
         "price_at_placement_cents": null},
    ]);
    assert_eq!(order["items"], items);
    assert_eq!(
        (&order["total_cents"], &order["cancellation_reason"]),
        (&Value::Null, &Value::Null)
    );
    assert_eq!(order["shipping_address"], body["shipping_address"]);
    assert!(
        order["created_at"].is_string() && order["updated_at"].is_string(),
        "{order}"
    );
}

#[tokio::test]
async fn an_address_needs_only_a_country_and_null_fields_are_dropped() {
    let app = start().await;
    let minimal = patched(
        &order_body("bob"),
        "/shipping_address",
        Some(json!({"country": "DE"})),
    );
    let nulls = patched(&minimal, "/shipping_address/line2", Some(Value::Null));
    for body in [minimal, nulls] {
        let order_id = place_ok(&app, &body).await;
        let (_, order) = app
            .send(Method::GET, &format!("/orders/{order_id}"), None)
            .await;
        assert_eq!(order["shipping_address"], json!({"country": "DE"}));
    }
}

#[tokio::test]
async fn orders_at_the_limits_are_accepted() {
    let app = start().await;
    let fifty_lines: Vec<Value> = (0..50)
        .map(|i| json!({"sku": format!("SKU-{i}"), "quantity": 1}))
        .collect();
    let long = "a".repeat(200);
    let address = json!({
        "country": "ES", "name": long, "line1": long, "line2": long, "city": long, "region": long, "postal_code": long
    });
    let cases = [
        patched(&order_body("x"), "/items", Some(Value::Array(fifty_lines))),
        patched(
            &order_body("x"),
            "/items",
            Some(json!([{"sku": "s".repeat(64), "quantity": 1_000}])),
        ),
        patched(
            &order_body("x"),
            "/customer_id",
            Some(json!("c".repeat(64))),
        ),
        // 64 characters, 128 bytes: the limit counts characters.
        patched(
            &order_body("x"),
            "/customer_id",
            Some(json!("é".repeat(64))),
        ),
        patched(&order_body("x"), "/shipping_address", Some(address)),
    ];
    for body in &cases {
        place_ok(&app, body).await;
    }
    assert_eq!(app.count("select count(*) from orders").await, 5);
}

/// The lines of a new order carry the name and price the catalog replica lists; a sku it does
/// not list is accepted (no replica runs here, so it cannot be known to be current).
#[tokio::test]
async fn a_placed_order_shows_the_catalog_name_and_price_of_its_lines() {
    let app = start().await;
    sqlx::query(
        "insert into catalog (sku, name, price_cents, available, version, updated_at,
                              source_partition, source_offset)
         values ('MUG-01', 'Blue mug', 1250, 7, 3, now(), 0, 41)",
    )
    .execute(&app.pool)
    .await
    .unwrap();
    let order_id = place_ok(&app, &order_body("alice")).await;
    let (status, order) = app
        .send(Method::GET, &format!("/orders/{order_id}"), None)
        .await;
    assert_eq!(status, StatusCode::OK, "{order}");
    assert_eq!(order["items"][0]["name"], "Blue mug", "{order}");
    assert_eq!(order["items"][0]["price_at_placement_cents"], 1250);
    assert_eq!(order["items"][0]["unit_price_cents"], Value::Null);
    assert_eq!(order["items"][1]["name"], Value::Null, "TEA is not listed");
}
