//! Unknown orders, ids that are not UUIDs, unknown routes and wrong methods: JSON errors.

use axum::http::{Method, StatusCode};
use shared::testing::assert_error;
use uuid::Uuid;

use crate::helpers::start;

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
