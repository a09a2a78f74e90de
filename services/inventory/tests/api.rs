//! The inventory service's HTTP API, driven through its router with the production layers on a
//! fresh PostgreSQL database per test (no Kafka). Needs `DATABASE_URL`: run `cargo xtask test`.

async fn start() -> TestApp {
    let pool = shared::testing::fresh_database("inventory_api").await;
    inventory_service::migrate(&pool)
        .await
        .expect("migrating the test database");
    TestApp::new(inventory_service::router(pool.clone()), pool)
}

use axum::http::{header, Method, StatusCode};
use serde_json::{json, Value};
use shared::testing::{
    assert_error, assert_rejected, bad_bodies, invalid, patched, request, TestApp, JSON,
};

fn product(sku: &str, stock: i32) -> Value {
    json!({"sku": sku, "name": format!("Product {sku}"), "price_cents": 1_250, "stock": stock})
}

async fn create(app: &TestApp, sku: &str, stock: i32) {
    let (status, body) = app
        .send(Method::POST, "/products", Some(product(sku, stock)))
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
}

async fn available(app: &TestApp, sku: &str) -> Value {
    let (status, body) = app
        .send(Method::GET, &format!("/products/{sku}"), None)
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    body["available"].clone()
}

/// Follows `next_cursor` from the first page; returns every page's skus.
async fn walk(app: &TestApp, limit: usize) -> Vec<Vec<String>> {
    let mut pages = Vec::new();
    let mut uri = format!("/products?limit={limit}");
    loop {
        let (status, page) = app.send(Method::GET, &uri, None).await;
        assert_eq!(status, StatusCode::OK, "{page}");
        let skus: Vec<String> = page["products"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["sku"].as_str().unwrap().to_owned())
            .collect();
        assert!(skus.len() <= limit, "{page}");
        pages.push(skus);
        match page["next_cursor"].as_str() {
            Some(cursor) => uri = format!("/products?limit={limit}&cursor={cursor}"),
            None => return pages,
        }
        assert!(pages.len() <= 20, "pagination does not end");
    }
}

#[tokio::test]
async fn creating_a_product_returns_201_with_its_location_and_all_stock_available() {
    let app = start().await;
    let body = json!({"sku": "MUG-01", "name": "Mug", "price_cents": 1_250, "stock": 7});
    let reply = app
        .call(request(
            Method::POST,
            "/products",
            JSON,
            body.to_string().into_bytes(),
        ))
        .await;
    assert_eq!(reply.status, StatusCode::CREATED, "{}", reply.body);
    assert_eq!(reply.headers[header::LOCATION], "/products/MUG-01");
    let expected = json!({"sku": "MUG-01", "name": "Mug", "price_cents": 1_250, "available": 7, "reserved": 0, "sold": 0});
    assert_eq!(reply.body, expected);

    let (status, read) = app.send(Method::GET, "/products/MUG-01", None).await;
    assert_eq!((status, read), (StatusCode::OK, expected));
}

#[tokio::test]
async fn creating_an_existing_sku_is_409_and_keeps_the_original() {
    let app = start().await;
    create(&app, "TEA", 3).await;
    let again = json!({"sku": "TEA", "name": "Other tea", "price_cents": 1, "stock": 99});
    assert_error(
        &app.send(Method::POST, "/products", Some(again)).await,
        StatusCode::CONFLICT,
        "product_exists",
    );
    let (_, read) = app.send(Method::GET, "/products/TEA", None).await;
    assert_eq!(
        (&read["name"], &read["available"]),
        (&json!("Product TEA"), &json!(3))
    );
}

#[tokio::test]
async fn products_at_the_limits_are_accepted() {
    let app = start().await;
    let cases = [
        json!({"sku": "free", "name": "Free sample", "price_cents": 0, "stock": 0}),
        json!({"sku": "dear", "name": "Dear", "price_cents": 1_000_000_000_i64, "stock": 1_000_000}),
        json!({"sku": "s".repeat(64), "name": "n".repeat(200), "price_cents": 1, "stock": 1}),
        // 200 characters, 400 bytes: the limit counts characters.
        json!({"sku": "Az09-_.", "name": "é".repeat(200), "price_cents": 1, "stock": 1}),
    ];
    for body in cases {
        let (status, created) = app
            .send(Method::POST, "/products", Some(body.clone()))
            .await;
        assert_eq!(status, StatusCode::CREATED, "{created}");
        assert_eq!(
            (&created["sku"], &created["available"]),
            (&body["sku"], &body["stock"])
        );
    }
    assert_eq!(app.count("select count(*) from products").await, 4);
}

#[tokio::test]
async fn a_body_of_exactly_64_kib_is_accepted() {
    let app = start().await;
    let mut body = product("PADDED", 1).to_string().into_bytes();
    body.resize(shared::http::MAX_BODY_BYTES, b' ');
    let reply = app
        .call(request(Method::POST, "/products", JSON, body))
        .await;
    assert_eq!(reply.status, StatusCode::CREATED, "{}", reply.body);
}

#[tokio::test]
async fn json_content_types_with_parameters_or_suffixes_are_accepted() {
    let app = start().await;
    let content_types = [
        "application/json; charset=utf-8",
        "Application/JSON",
        "application/merge-patch+json",
    ];
    for (i, content_type) in content_types.into_iter().enumerate() {
        let body = product(&format!("CT-{i}"), 1).to_string().into_bytes();
        let reply = app
            .call(request(Method::POST, "/products", Some(content_type), body))
            .await;
        assert_eq!(
            reply.status,
            StatusCode::CREATED,
            "{content_type}: {}",
            reply.body
        );
    }
}

#[tokio::test]
async fn invalid_product_bodies_are_rejected_and_create_nothing() {
    let app = start().await;
    let valid = product("VALID", 1);
    let field = |pointer, value| patched(&valid, pointer, value);
    let mut cases = bad_bodies(&valid);
    cases.extend([
        invalid("sku missing", field("/sku", None)),
        invalid("name missing", field("/name", None)),
        invalid("price_cents missing", field("/price_cents", None)),
        invalid("stock missing", field("/stock", None)),
        invalid("sku a number", field("/sku", Some(json!(7)))),
        invalid("sku empty", field("/sku", Some(json!("")))),
        invalid(
            "sku 65 characters",
            field("/sku", Some(json!("s".repeat(65)))),
        ),
        invalid("sku with a slash", field("/sku", Some(json!("a/b")))),
        invalid("sku with a space", field("/sku", Some(json!("a b")))),
        invalid("sku not ASCII", field("/sku", Some(json!("café")))),
        invalid("name null", field("/name", Some(Value::Null))),
        invalid("name blank", field("/name", Some(json!("  ")))),
        invalid(
            "name 201 characters",
            field("/name", Some(json!("n".repeat(201)))),
        ),
        invalid(
            "price_cents a string",
            field("/price_cents", Some(json!("12"))),
        ),
        invalid(
            "price_cents fractional",
            field("/price_cents", Some(json!(12.5))),
        ),
        invalid(
            "price_cents negative",
            field("/price_cents", Some(json!(-1))),
        ),
        invalid(
            "price_cents over the maximum",
            field("/price_cents", Some(json!(1_000_000_001))),
        ),
        invalid("stock negative", field("/stock", Some(json!(-1)))),
        invalid(
            "stock over the maximum",
            field("/stock", Some(json!(1_000_001))),
        ),
        invalid(
            "stock beyond i32",
            field("/stock", Some(json!(3_000_000_000_i64))),
        ),
        invalid("stock a boolean", field("/stock", Some(json!(true)))),
    ]);
    assert_rejected(&app, Method::POST, "/products", cases).await;
    assert_eq!(app.count("select count(*) from products").await, 0);
}

#[tokio::test]
async fn an_unknown_product_is_404() {
    let app = start().await;
    assert_error(
        &app.send(Method::GET, "/products/NOPE", None).await,
        StatusCode::NOT_FOUND,
        "product_not_found",
    );
}

#[tokio::test]
async fn restocking_adds_to_available_and_returns_the_product() {
    let app = start().await;
    create(&app, "PEN", 2).await;
    for expected in [7, 12] {
        let (status, body) = app
            .send(
                Method::POST,
                "/products/PEN/restock",
                Some(json!({"quantity": 5})),
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{body}");
        let product = json!({"sku": "PEN", "name": "Product PEN", "price_cents": 1_250, "available": expected, "reserved": 0, "sold": 0});
        assert_eq!(body, product);
    }
    assert_eq!(available(&app, "PEN").await, 12);
}

#[tokio::test]
async fn restocking_an_unknown_product_is_404() {
    let app = start().await;
    let reply = app
        .send(
            Method::POST,
            "/products/GHOST/restock",
            Some(json!({"quantity": 1})),
        )
        .await;
    assert_error(&reply, StatusCode::NOT_FOUND, "product_not_found");
    assert_eq!(app.count("select count(*) from products").await, 0);
}

#[tokio::test]
async fn restocking_beyond_one_million_available_is_422_and_changes_nothing() {
    let app = start().await;
    create(&app, "BULK", 999_999).await;
    let over = app
        .send(
            Method::POST,
            "/products/BULK/restock",
            Some(json!({"quantity": 2})),
        )
        .await;
    assert_error(&over, StatusCode::UNPROCESSABLE_ENTITY, "validation_failed");
    assert_eq!(available(&app, "BULK").await, 999_999);

    let (status, body) = app
        .send(
            Method::POST,
            "/products/BULK/restock",
            Some(json!({"quantity": 1})),
        )
        .await;
    assert_eq!(
        (status, &body["available"]),
        (StatusCode::OK, &json!(1_000_000))
    );
}

#[tokio::test]
async fn invalid_restock_bodies_are_rejected_and_change_nothing() {
    let app = start().await;
    create(&app, "CUP", 4).await;
    let valid = json!({"quantity": 1});
    let field = |pointer, value| patched(&valid, pointer, value);
    let mut cases = bad_bodies(&valid);
    cases.extend([
        invalid("quantity missing", json!({})),
        invalid("quantity null", field("/quantity", Some(Value::Null))),
        invalid("quantity a string", field("/quantity", Some(json!("5")))),
        invalid("quantity fractional", field("/quantity", Some(json!(1.5)))),
        invalid("quantity zero", field("/quantity", Some(json!(0)))),
        invalid("quantity negative", field("/quantity", Some(json!(-3)))),
        invalid(
            "quantity over the maximum",
            field("/quantity", Some(json!(1_000_001))),
        ),
        invalid(
            "quantity beyond i32",
            field("/quantity", Some(json!(4_294_967_296_i64))),
        ),
    ]);
    assert_rejected(&app, Method::POST, "/products/CUP/restock", cases).await;
    assert_eq!(available(&app, "CUP").await, 4);
}

#[tokio::test]
async fn listing_pages_through_every_product_once_in_sku_order() {
    let app = start().await;
    let mut skus: Vec<String> = ["p-5", "p-2", "p-7", "p-1", "p-6", "p-3", "p-4"]
        .map(String::from)
        .into();
    for sku in &skus {
        create(&app, sku, 1).await;
    }
    skus.sort();

    let pages = walk(&app, 3).await;
    assert_eq!(pages.iter().map(Vec::len).collect::<Vec<_>>(), [3, 3, 1]);
    assert_eq!(pages.concat(), skus);

    // A full last page still has a cursor; the page after it is empty and ends the walk.
    let pages = walk(&app, 7).await;
    assert_eq!(pages, [skus.clone(), Vec::new()]);

    let (_, all) = app.send(Method::GET, "/products", None).await;
    assert_eq!(all["products"].as_array().unwrap().len(), 7);
    assert_eq!(all["next_cursor"], Value::Null);
    assert_eq!(
        all["products"][0],
        json!({"sku": "p-1", "name": "Product p-1", "price_cents": 1_250, "available": 1, "reserved": 0, "sold": 0})
    );
}

#[tokio::test]
async fn listing_an_empty_catalogue_is_an_empty_last_page() {
    let app = start().await;
    let (status, page) = app.send(Method::GET, "/products?limit=500", None).await;
    assert_eq!(
        (status, page),
        (StatusCode::OK, json!({"products": [], "next_cursor": null}))
    );
}

#[tokio::test]
async fn listing_with_bad_query_parameters_is_400() {
    let app = start().await;
    for query in [
        "limit=0",
        "limit=501",
        "limit=-1",
        "limit=ten",
        "limit=",
        "page=2",
        "limit=99999999999999999999",
    ] {
        let reply = app
            .send(Method::GET, &format!("/products?{query}"), None)
            .await;
        assert_error(&reply, StatusCode::BAD_REQUEST, "invalid_query");
    }
}

#[tokio::test]
async fn unknown_routes_are_404_and_wrong_methods_405_with_json_errors() {
    let app = start().await;
    let cases = [
        (Method::GET, "/nope", StatusCode::NOT_FOUND, "not_found"),
        (Method::GET, "/", StatusCode::NOT_FOUND, "not_found"),
        (
            Method::GET,
            "/products/A/restock/more",
            StatusCode::NOT_FOUND,
            "not_found",
        ),
        (
            Method::PUT,
            "/products",
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
        ),
        (
            Method::DELETE,
            "/products/A",
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
        ),
        (
            Method::POST,
            "/products/A",
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
        ),
        (
            Method::GET,
            "/products/A/restock",
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
        ),
    ];
    for (method, uri, status, code) in cases {
        assert_error(&app.send(method, uri, None).await, status, code);
    }
}

#[tokio::test]
async fn a_nul_in_a_sku_or_name_is_a_client_error() {
    let app = start().await;
    let nul_in_url = [
        ("GET", "/products/a%00b"),
        ("POST", "/products/a%00b/restock"),
    ];
    for (method, uri) in nul_in_url {
        let body = (method == "POST").then(|| json!({"quantity": 1}));
        let reply = app.send(method.parse().unwrap(), uri, body).await;
        assert_error(&reply, StatusCode::BAD_REQUEST, "invalid_characters");
    }
    let reply = app.send(Method::GET, "/products?cursor=a%00b", None).await;
    assert_error(&reply, StatusCode::BAD_REQUEST, "invalid_characters");
    let named = json!({"sku": "NUL", "name": "a\u{0}b", "price_cents": 1, "stock": 1});
    let reply = app.send(Method::POST, "/products", Some(named)).await;
    assert_error(
        &reply,
        StatusCode::UNPROCESSABLE_ENTITY,
        "validation_failed",
    );
}
