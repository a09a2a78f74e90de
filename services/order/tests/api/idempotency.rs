//! The `Idempotency-Key` header: a retry returns the same order, a reused key with another
//! body is refused, keys are per customer, and a malformed key is a 400.

use axum::http::{header, HeaderValue, StatusCode};
use serde_json::{json, Value};
use shared::testing::{assert_error, patched};

use crate::helpers::{key, order_body, place, start};

#[tokio::test]
async fn a_retry_with_the_same_idempotency_key_returns_the_same_order() {
    let app = start().await;
    let body = order_body("dave");
    let first = place(&app, &body, key("retry-1")).await;
    assert_eq!(first.status, StatusCode::ACCEPTED, "{}", first.body);

    // The same body with its fields in another order, and the key as a structured-field string.
    let reordered: Value = serde_json::from_str(&format!(
        r#"{{"shipping_address": {}, "items": {}, "customer_id": "dave"}}"#,
        body["shipping_address"], body["items"]
    ))
    .unwrap();
    for (retry, key) in [
        (&body, key("retry-1")),
        (&reordered, key("retry-1")),
        (&body, key("\"retry-1\"")),
    ] {
        let again = place(&app, retry, key).await;
        assert_eq!(
            (again.status, &again.body),
            (StatusCode::ACCEPTED, &first.body)
        );
        assert_eq!(
            again.headers[header::LOCATION],
            first.headers[header::LOCATION]
        );
    }
    assert_eq!(app.count("select count(*) from orders").await, 1);
    assert_eq!(app.count("select count(*) from outbox").await, 1);
}

#[tokio::test]
async fn reusing_an_idempotency_key_with_another_body_is_422() {
    let app = start().await;
    let first = place(&app, &order_body("erin"), key("reused")).await;
    assert_eq!(first.status, StatusCode::ACCEPTED, "{}", first.body);

    let other = patched(&order_body("erin"), "/items/0/quantity", Some(json!(3)));
    let reply = place(&app, &other, key("reused")).await;
    assert_error(
        &(reply.status, reply.body),
        StatusCode::UNPROCESSABLE_ENTITY,
        "idempotency_key_reused",
    );
    assert_eq!(app.count("select count(*) from orders").await, 1);
    assert_eq!(app.count("select count(*) from outbox").await, 1);
}

#[tokio::test]
async fn different_idempotency_keys_place_different_orders() {
    let app = start().await;
    let first = place(&app, &order_body("fay"), key("key-a")).await;
    let second = place(&app, &order_body("fay"), key("key-b")).await;
    assert_eq!(
        (first.status, second.status),
        (StatusCode::ACCEPTED, StatusCode::ACCEPTED)
    );
    assert_ne!(first.body["order_id"], second.body["order_id"]);
    assert_eq!(app.count("select count(*) from orders").await, 2);
}

#[tokio::test]
async fn idempotency_keys_belong_to_one_customer() {
    let app = start().await;
    let first = place(&app, &order_body("hal"), key("shared-key")).await;
    let second = place(&app, &order_body("ivy"), key("shared-key")).await;
    assert_eq!(
        (first.status, second.status),
        (StatusCode::ACCEPTED, StatusCode::ACCEPTED),
        "{} {}",
        first.body,
        second.body
    );
    assert_ne!(first.body["order_id"], second.body["order_id"]);
    assert_eq!(app.count("select count(*) from orders").await, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_requests_with_one_idempotency_key_place_one_order() {
    let app = start().await;
    let tasks: Vec<_> = (0..8)
        .map(|_| {
            let app = app.clone();
            tokio::spawn(async move {
                let reply = place(&app, &order_body("gus"), key("concurrent")).await;
                (reply.status, reply.body)
            })
        })
        .collect();
    let mut order_ids = Vec::new();
    for task in tasks {
        let (status, body) = task.await.unwrap();
        assert_eq!(status, StatusCode::ACCEPTED, "{body}");
        order_ids.push(body["order_id"].clone());
    }
    order_ids.dedup();
    assert_eq!(order_ids.len(), 1, "{order_ids:?}");
    assert_eq!(app.count("select count(*) from orders").await, 1);
    assert_eq!(app.count("select count(*) from outbox").await, 1);
}

#[tokio::test]
async fn a_malformed_idempotency_key_is_400_and_places_nothing() {
    let app = start().await;
    let long = "k".repeat(256);
    let bad_keys = [
        HeaderValue::from_static(""),
        HeaderValue::from_static("\"\""),
        HeaderValue::from_static("two words"),
        HeaderValue::from_str(&long).unwrap(),
        HeaderValue::from_bytes("clé".as_bytes()).unwrap(),
    ];
    for bad_key in bad_keys {
        let reply = place(&app, &order_body("hal"), Some(bad_key)).await;
        assert_error(
            &(reply.status, reply.body),
            StatusCode::BAD_REQUEST,
            "invalid_idempotency_key",
        );
    }
    assert_eq!(app.count("select count(*) from orders").await, 0);

    let reply = place(&app, &order_body("hal"), key(&"k".repeat(255))).await;
    assert_eq!(reply.status, StatusCode::ACCEPTED, "{}", reply.body);
}

/// The contract of `IDEMPOTENCY_KEY_RETENTION_MS`: a key is remembered for that long after its
/// first request; once pruned, a retry with it is a new request and places a new order. Keys
/// younger than the window stay and still answer with their order.
#[tokio::test]
async fn an_idempotency_key_older_than_its_window_is_pruned_and_a_retry_places_a_new_order() {
    let app = start().await;
    let body = order_body("grace");
    let old = place(&app, &body, key("old-key")).await;
    assert_eq!(old.status, StatusCode::ACCEPTED, "{}", old.body);
    let young = place(&app, &body, key("young-key")).await;
    assert_eq!(young.status, StatusCode::ACCEPTED, "{}", young.body);
    sqlx::query(
        "update idempotency_keys set created_at = now() - interval '2 hours'
         where idempotency_key = 'old-key'",
    )
    .execute(&app.pool)
    .await
    .unwrap();

    let rule = order_service::idempotency_key_retention(3_600_000);
    let pruned = shared::retention::prune(&app.pool, &rule, 100, &Default::default())
        .await
        .expect("pruning idempotency keys");
    assert_eq!(pruned.rows, 1);
    let keys: Vec<String> = sqlx::query_scalar("select idempotency_key from idempotency_keys")
        .fetch_all(&app.pool)
        .await
        .unwrap();
    assert_eq!(keys, ["young-key"]);

    let retry_of_young = place(&app, &body, key("young-key")).await;
    assert_eq!(
        (retry_of_young.status, &retry_of_young.body),
        (StatusCode::ACCEPTED, &young.body)
    );
    let retry_of_old = place(&app, &body, key("old-key")).await;
    assert_eq!(
        retry_of_old.status,
        StatusCode::ACCEPTED,
        "{}",
        retry_of_old.body
    );
    assert_ne!(retry_of_old.body["order_id"], old.body["order_id"]);
    assert_eq!(app.count("select count(*) from orders").await, 3);
}
