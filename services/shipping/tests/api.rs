//! The shipping service's HTTP API, driven through its router with the production layers on a
//! fresh PostgreSQL database per test (no Kafka). Needs `DATABASE_URL`: run `cargo xtask test`.

/// The shipping API serving `countries` (e.g. `"FR,DE"`), on a database nobody else uses.
async fn start(countries: &str) -> TestApp {
    let pool = shared::testing::fresh_database("shipping_api").await;
    shipping_service::migrate(&pool)
        .await
        .expect("migrating the test database");
    let countries = shipping_service::domain::Countries::parse(countries).expect("a country list");
    TestApp::new(shipping_service::router(pool.clone(), countries), pool)
}

use axum::http::{Method, StatusCode};
use serde_json::json;
use shared::testing::{assert_error, TestApp};
use uuid::Uuid;

#[tokio::test]
async fn countries_lists_the_served_codes_sorted_and_deduplicated() {
    let app = start("fr, DE,es,FR").await;
    let (status, body) = app.send(Method::GET, "/countries", None).await;
    assert_eq!(
        (status, body),
        (StatusCode::OK, json!({"countries": ["DE", "ES", "FR"]}))
    );
}

#[tokio::test]
async fn countries_is_an_empty_list_when_none_are_served() {
    let app = start("").await;
    let (status, body) = app.send(Method::GET, "/countries", None).await;
    assert_eq!((status, body), (StatusCode::OK, json!({"countries": []})));
}

#[tokio::test]
async fn a_shipment_lookup_is_404_when_none_and_400_for_a_non_uuid() {
    let app = start("FR").await;
    let cases = [
        (
            format!("/shipments/{}", Uuid::new_v4()),
            StatusCode::NOT_FOUND,
            "shipment_not_found",
        ),
        (
            "/shipments/not-a-uuid".to_owned(),
            StatusCode::BAD_REQUEST,
            "invalid_path",
        ),
        (
            "/shipments/12345".to_owned(),
            StatusCode::BAD_REQUEST,
            "invalid_path",
        ),
        (
            format!("/shipments/{}x", Uuid::new_v4()),
            StatusCode::BAD_REQUEST,
            "invalid_path",
        ),
    ];
    for (uri, status, code) in cases {
        assert_error(&app.send(Method::GET, &uri, None).await, status, code);
    }
}

#[tokio::test]
async fn recorded_shipments_are_shown_and_voided_ones_are_not() {
    let app = start("FR").await;
    // Shipments are only written by the saga's event handler, so record them directly.
    let shown = [
        ("SCHEDULED", Some("FR")),
        ("REJECTED", Some("AQ")),
        ("CANCELLED", Some("FR")),
        ("SCHEDULED", None),
    ];
    for (status, country) in shown {
        let order_id = Uuid::new_v4();
        sqlx::query(
            "insert into shipments (order_id, status, country, address) values ($1, $2, $3, '{}')",
        )
        .bind(order_id)
        .bind(status)
        .bind(country)
        .execute(&app.pool)
        .await
        .unwrap();
        let (http_status, shipment) = app
            .send(Method::GET, &format!("/shipments/{order_id}"), None)
            .await;
        assert_eq!(http_status, StatusCode::OK, "{shipment}");
        assert_eq!(
            shipment,
            json!({"order_id": order_id, "status": status, "country": country})
        );
    }

    let voided = Uuid::new_v4();
    sqlx::query("insert into shipments (order_id, status) values ($1, 'VOIDED')")
        .bind(voided)
        .execute(&app.pool)
        .await
        .unwrap();
    let reply = app
        .send(Method::GET, &format!("/shipments/{voided}"), None)
        .await;
    assert_error(&reply, StatusCode::NOT_FOUND, "shipment_not_found");
}

#[tokio::test]
async fn unknown_routes_are_404_and_wrong_methods_405_with_json_errors() {
    let app = start("FR").await;
    let order_id = Uuid::new_v4();
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
            "/shipments".to_owned(),
            StatusCode::NOT_FOUND,
            "not_found",
        ),
        (
            Method::GET,
            format!("/shipments/{order_id}/cancel"),
            StatusCode::NOT_FOUND,
            "not_found",
        ),
        (
            Method::POST,
            "/countries".to_owned(),
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
        ),
        (
            Method::DELETE,
            "/countries".to_owned(),
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
        ),
        (
            Method::POST,
            format!("/shipments/{order_id}"),
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
        ),
        (
            Method::PUT,
            format!("/shipments/{order_id}"),
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
        ),
    ];
    for (method, uri, status, code) in cases {
        assert_error(&app.send(method, &uri, None).await, status, code);
    }
}
