//! The order service's HTTP API, driven through its router with the production layers on a
//! fresh PostgreSQL database per test (no Kafka: events stop in the outbox table). Needs
//! `DATABASE_URL`: run `cargo xtask test`.

async fn start() -> TestApp {
    let pool = shared::testing::fresh_database("order_api").await;
    order_service::migrate(&pool)
        .await
        .expect("migrating the test database");
    TestApp::new(order_service::router(pool.clone()), pool)
}

use axum::http::{header, HeaderValue, Method, StatusCode};
use serde_json::{json, Value};
use shared::testing::{
    assert_error, assert_rejected, bad_bodies, invalid, patched, request, Reply, TestApp, JSON,
};
use uuid::Uuid;

fn order_body(customer_id: &str) -> Value {
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
async fn place(app: &TestApp, body: &Value, key: Option<HeaderValue>) -> Reply {
    let mut request = request(Method::POST, "/orders", JSON, body.to_string().into_bytes());
    if let Some(key) = key {
        request.headers_mut().insert("idempotency-key", key);
    }
    app.call(request).await
}

/// Places an order that must be accepted; returns its id.
async fn place_ok(app: &TestApp, body: &Value) -> Uuid {
    let reply = place(app, body, None).await;
    assert_eq!(reply.status, StatusCode::ACCEPTED, "{}", reply.body);
    reply.body["order_id"].as_str().unwrap().parse().unwrap()
}

fn key(value: &str) -> Option<HeaderValue> {
    Some(HeaderValue::from_str(value).unwrap())
}

/// `(event_type, envelope)` of every outbox row, oldest first.
async fn outbox(app: &TestApp) -> Vec<(String, Value)> {
    sqlx::query_as("select event_type, envelope from outbox order by seq")
        .fetch_all(&app.pool)
        .await
        .unwrap()
}

async fn cancel(app: &TestApp, order_id: Uuid) -> (StatusCode, Value) {
    app.send(Method::POST, &format!("/orders/{order_id}/cancel"), None)
        .await
}

/// Follows `next_cursor` from `first_uri` (which has a `limit`); returns every page's order ids.
async fn walk(app: &TestApp, first_uri: &str) -> Vec<Vec<Uuid>> {
    let mut pages = Vec::new();
    let mut uri = first_uri.to_owned();
    loop {
        let (status, page) = app.send(Method::GET, &uri, None).await;
        assert_eq!(status, StatusCode::OK, "{page}");
        let ids = page["orders"]
            .as_array()
            .unwrap()
            .iter()
            .map(|o| o["order_id"].as_str().unwrap().parse().unwrap());
        pages.push(ids.collect());
        match page["next_cursor"].as_str() {
            Some(cursor) => uri = format!("{first_uri}&cursor={cursor}"),
            None => return pages,
        }
        assert!(pages.len() <= 20, "pagination does not end");
    }
}

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
        {"sku": "MUG-01", "quantity": 2, "unit_price_cents": null},
        {"sku": "TEA", "quantity": 1, "unit_price_cents": null},
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

#[tokio::test]
async fn invalid_order_bodies_are_rejected_and_create_nothing() {
    let app = start().await;
    let valid = order_body("carol");
    let field = |pointer, value| patched(&valid, pointer, value);
    let fifty_one: Vec<Value> = (0..51)
        .map(|i| json!({"sku": format!("SKU-{i}"), "quantity": 1}))
        .collect();
    let mut cases = bad_bodies(&valid);
    cases.extend([
        invalid("customer_id missing", field("/customer_id", None)),
        invalid(
            "customer_id a number",
            field("/customer_id", Some(json!(7))),
        ),
        invalid("customer_id empty", field("/customer_id", Some(json!("")))),
        invalid(
            "customer_id blank",
            field("/customer_id", Some(json!(" \t "))),
        ),
        invalid(
            "customer_id 65 characters",
            field("/customer_id", Some(json!("c".repeat(65)))),
        ),
        invalid("items missing", field("/items", None)),
        invalid("items null", field("/items", Some(Value::Null))),
        invalid(
            "items an object",
            field("/items", Some(json!({"sku": "A", "quantity": 1}))),
        ),
        invalid("no items", field("/items", Some(json!([])))),
        invalid("51 items", field("/items", Some(Value::Array(fifty_one)))),
        invalid("quantity missing", field("/items/0/quantity", None)),
        invalid("quantity zero", field("/items/0/quantity", Some(json!(0)))),
        invalid(
            "quantity negative",
            field("/items/0/quantity", Some(json!(-1))),
        ),
        invalid(
            "quantity over 1000",
            field("/items/0/quantity", Some(json!(1_001))),
        ),
        invalid(
            "quantity a string",
            field("/items/0/quantity", Some(json!("2"))),
        ),
        invalid(
            "quantity fractional",
            field("/items/0/quantity", Some(json!(1.5))),
        ),
        invalid(
            "quantity beyond i32",
            field("/items/0/quantity", Some(json!(2_147_483_648_i64))),
        ),
        invalid("sku missing", field("/items/0/sku", None)),
        invalid("sku empty", field("/items/0/sku", Some(json!("")))),
        invalid(
            "sku 65 characters",
            field("/items/0/sku", Some(json!("s".repeat(65)))),
        ),
        invalid(
            "unknown item field",
            field("/items/0/price_cents", Some(json!(1))),
        ),
        invalid("sku twice", field("/items/1/sku", Some(json!("MUG-01")))),
        invalid("address missing", field("/shipping_address", None)),
        invalid(
            "address a string",
            field("/shipping_address", Some(json!("1 rue de Rivoli, Paris"))),
        ),
        invalid("country missing", field("/shipping_address/country", None)),
        invalid(
            "country lower case",
            field("/shipping_address/country", Some(json!("fr"))),
        ),
        invalid(
            "country three letters",
            field("/shipping_address/country", Some(json!("FRA"))),
        ),
        invalid(
            "country one letter",
            field("/shipping_address/country", Some(json!("F"))),
        ),
        invalid(
            "country empty",
            field("/shipping_address/country", Some(json!(""))),
        ),
        invalid(
            "country not ASCII",
            field("/shipping_address/country", Some(json!("É"))),
        ),
        invalid(
            "country a number",
            field("/shipping_address/country", Some(json!(33))),
        ),
        invalid(
            "unknown address field",
            field("/shipping_address/phone", Some(json!("+33 1 23"))),
        ),
        invalid(
            "name 201 characters",
            field("/shipping_address/name", Some(json!("n".repeat(201)))),
        ),
        invalid(
            "line1 blank",
            field("/shipping_address/line1", Some(json!("   "))),
        ),
        invalid(
            "postal_code a number",
            field("/shipping_address/postal_code", Some(json!(75001))),
        ),
    ]);
    assert_rejected(&app, Method::POST, "/orders", cases).await;
    assert_eq!(app.count("select count(*) from orders").await, 0);
    assert_eq!(app.count("select count(*) from outbox").await, 0);
}

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

#[tokio::test]
async fn unknown_orders_are_404_and_non_uuid_ids_400() {
    let app = start().await;
    let unknown = Uuid::new_v4();
    let cases = [
        (
            Method::GET,
            format!("/orders/{unknown}"),
            StatusCode::NOT_FOUND,
            "order_not_found",
        ),
        (
            Method::GET,
            format!("/orders/{unknown}/timeline"),
            StatusCode::NOT_FOUND,
            "order_not_found",
        ),
        (
            Method::POST,
            format!("/orders/{unknown}/cancel"),
            StatusCode::NOT_FOUND,
            "order_not_found",
        ),
        (
            Method::GET,
            "/orders/not-a-uuid".to_owned(),
            StatusCode::BAD_REQUEST,
            "invalid_path",
        ),
        (
            Method::GET,
            "/orders/42/timeline".to_owned(),
            StatusCode::BAD_REQUEST,
            "invalid_path",
        ),
        (
            Method::POST,
            "/orders/not-a-uuid/cancel".to_owned(),
            StatusCode::BAD_REQUEST,
            "invalid_path",
        ),
    ];
    for (method, uri, status, code) in cases {
        assert_error(&app.send(method, &uri, None).await, status, code);
    }
    assert_eq!(app.count("select count(*) from outbox").await, 0);
}

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

#[tokio::test]
async fn listing_pages_newest_first_and_yields_every_order_once() {
    let app = start().await;
    let mut placed = Vec::new();
    for i in 0..7 {
        placed.push(place_ok(&app, &order_body(if i % 2 == 0 { "mia" } else { "ned" })).await);
    }
    let newest_first: Vec<Uuid> = placed.iter().rev().copied().collect();

    let pages = walk(&app, "/orders?limit=3").await;
    assert_eq!(pages.iter().map(Vec::len).collect::<Vec<_>>(), [3, 3, 1]);
    assert_eq!(pages.concat(), newest_first);

    // A full last page still has a cursor; the page after it is empty and ends the walk.
    assert_eq!(
        walk(&app, "/orders?limit=7").await,
        [newest_first.clone(), Vec::new()]
    );

    let (status, all) = app.send(Method::GET, "/orders", None).await;
    assert_eq!(
        (status, &all["next_cursor"]),
        (StatusCode::OK, &Value::Null)
    );
    assert_eq!(all["orders"].as_array().unwrap().len(), 7);
    assert_eq!(all["orders"][0]["order_id"], json!(newest_first[0]));
    assert_eq!(all["orders"][0]["status"], "PENDING");
}

#[tokio::test]
async fn listing_filters_by_customer_and_status() {
    let app = start().await;
    let mut by_customer: Vec<(&str, Uuid)> = Vec::new();
    for customer in ["oli", "pat", "oli", "pat", "oli"] {
        by_customer.push((customer, place_ok(&app, &order_body(customer)).await));
    }
    let ids = |wanted: &dyn Fn(usize, &str) -> bool| -> Vec<Uuid> {
        by_customer
            .iter()
            .enumerate()
            .rev()
            .filter(|(i, (c, _))| wanted(*i, c))
            .map(|(_, (_, id))| *id)
            .collect()
    };
    // Cancel oli's first order and pat's last.
    for index in [0, 3] {
        assert_eq!(
            cancel(&app, by_customer[index].1).await.0,
            StatusCode::ACCEPTED
        );
    }
    let cancelled = |i: usize| i == 0 || i == 3;

    let cases: Vec<(&str, Vec<Uuid>)> = vec![
        ("customer_id=oli", ids(&|_, c| c == "oli")),
        ("customer_id=pat", ids(&|_, c| c == "pat")),
        ("customer_id=nobody", Vec::new()),
        ("status=CANCELLED", ids(&|i, _| cancelled(i))),
        ("status=PENDING", ids(&|i, _| !cancelled(i))),
        ("status=CONFIRMED", Vec::new()),
        (
            "customer_id=oli&status=PENDING",
            ids(&|i, c| c == "oli" && !cancelled(i)),
        ),
        (
            "customer_id=pat&status=CANCELLED",
            ids(&|i, c| c == "pat" && cancelled(i)),
        ),
    ];
    for (query, expected) in cases {
        // Page size 1 so the filter must also hold across pages.
        let pages = walk(&app, &format!("/orders?limit=1&{query}")).await;
        assert_eq!(pages.concat(), expected, "{query}");
    }
}

#[tokio::test]
async fn listing_with_bad_query_parameters_is_400() {
    let app = start().await;
    let long_customer = format!("customer_id={}", "c".repeat(65));
    let queries = [
        "status=pending",
        "status=SHIPPED",
        "status=",
        "limit=0",
        "limit=101",
        "limit=-1",
        "limit=ten",
        "cursor=not-a-uuid",
        "cursor=",
        "page=2",
        &long_customer,
    ];
    for query in queries {
        let reply = app
            .send(Method::GET, &format!("/orders?{query}"), None)
            .await;
        assert_error(&reply, StatusCode::BAD_REQUEST, "invalid_query");
    }
    let (status, page) = app.send(Method::GET, "/orders?limit=100", None).await;
    assert_eq!(
        (status, page),
        (StatusCode::OK, json!({"orders": [], "next_cursor": null}))
    );
}

#[tokio::test]
async fn unknown_routes_are_404_and_wrong_methods_405_with_json_errors() {
    let app = start().await;
    let id = Uuid::new_v4();
    let cases = [
        (
            Method::GET,
            "/nope".to_owned(),
            StatusCode::NOT_FOUND,
            "not_found",
        ),
        (
            Method::GET,
            "/".to_owned(),
            StatusCode::NOT_FOUND,
            "not_found",
        ),
        (
            Method::GET,
            format!("/orders/{id}/nope"),
            StatusCode::NOT_FOUND,
            "not_found",
        ),
        (
            Method::PUT,
            "/orders".to_owned(),
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
        ),
        (
            Method::DELETE,
            format!("/orders/{id}"),
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
        ),
        (
            Method::POST,
            format!("/orders/{id}"),
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
        ),
        (
            Method::GET,
            format!("/orders/{id}/cancel"),
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
        ),
        (
            Method::POST,
            format!("/orders/{id}/timeline"),
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
        ),
    ];
    for (method, uri, status, code) in cases {
        assert_error(&app.send(method, &uri, None).await, status, code);
    }
}

#[tokio::test]
async fn a_nul_anywhere_in_an_order_is_a_client_error() {
    let app = start().await;
    let reply = app
        .send(Method::GET, "/orders?customer_id=a%00b", None)
        .await;
    assert_error(&reply, StatusCode::BAD_REQUEST, "invalid_characters");
    let valid = order_body("nul");
    for pointer in ["/customer_id", "/items/0/sku", "/shipping_address/city"] {
        let reply = place(
            &app,
            &patched(&valid, pointer, Some(json!("a\u{0}b"))),
            None,
        )
        .await;
        assert_error(
            &(reply.status, reply.body),
            StatusCode::UNPROCESSABLE_ENTITY,
            "validation_failed",
        );
    }
}
