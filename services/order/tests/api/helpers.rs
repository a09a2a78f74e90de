//! What every test here shares: a fresh app, a valid order body, placing and cancelling.

use axum::http::{HeaderValue, Method, StatusCode};
use serde_json::{json, Value};
use shared::testing::{request, Reply, TestApp, JSON};
use uuid::Uuid;

/// The order service's router with the production layers on a fresh, migrated database.
pub async fn start() -> TestApp {
    let pool = shared::testing::fresh_database("order_api").await;
    order_service::migrate(&pool)
        .await
        .expect("migrating the test database");
    TestApp::new(order_service::router(pool.clone()), pool)
}

/// A valid order of two lines to a full French address.
pub fn order_body(customer_id: &str) -> Value {
    json!({
        "customer_id": customer_id,
        "items": [{"sku": "MUG-01", "quantity": 2}, {"sku": "TEA", "quantity": 1}],
        "shipping_address": {
            "country": "FR",
            "name": "Alice Martin",
            "line1": "1 rue de Rivoli",
            "city": "Paris",
            "postal_code": "75001"
        }
    })
}

/// `POST /orders`, with an `Idempotency-Key` header if `key` is given.
pub async fn place(app: &TestApp, body: &Value, key: Option<HeaderValue>) -> Reply {
    let mut request = request(Method::POST, "/orders", JSON, body.to_string().into_bytes());
    if let Some(key) = key {
        request.headers_mut().insert("idempotency-key", key);
    }
    app.call(request).await
}

/// Places an order that must be accepted; returns its id.
pub async fn place_ok(app: &TestApp, body: &Value) -> Uuid {
    let reply = place(app, body, None).await;
    assert_eq!(reply.status, StatusCode::ACCEPTED, "{}", reply.body);
    reply.body["order_id"].as_str().unwrap().parse().unwrap()
}

/// An `Idempotency-Key` header value.
pub fn key(value: &str) -> Option<HeaderValue> {
    Some(HeaderValue::from_str(value).unwrap())
}

/// `(event_type, envelope)` of every outbox row, oldest first.
pub async fn outbox(app: &TestApp) -> Vec<(String, Value)> {
    sqlx::query_as("select event_type, envelope from outbox order by seq")
        .fetch_all(&app.pool)
        .await
        .unwrap()
}

/// `POST /orders/{id}/cancel`.
pub async fn cancel(app: &TestApp, order_id: Uuid) -> (StatusCode, Value) {
    app.send(Method::POST, &format!("/orders/{order_id}/cancel"), None)
        .await
}
