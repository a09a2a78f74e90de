//! The shipping service's HTTP API, driven through its router with the production layers on a
//! fresh PostgreSQL database per test (no Kafka). Needs `DATABASE_URL`: run `cargo xtask test`.

mod support {
    use axum::body::{to_bytes, Body};
    use axum::http::{header, Method, Request, StatusCode};
    use axum::Router;
    use serde_json::Value;
    use sqlx::PgPool;
    use tower::ServiceExt;

    pub struct TestApp {
        pub router: Router,
        pub pool: PgPool,
    }

    impl TestApp {
        /// The service's router, serving `countries` (e.g. `"FR,DE"`), with the production
        /// layers, on a database nobody else uses.
        pub async fn start(countries: &str) -> Self {
            let admin_url = std::env::var("DATABASE_URL").unwrap_or_else(|_| {
                panic!("DATABASE_URL is not set: run the tests with `cargo xtask test`")
            });
            let url = shared::db::create_fresh_database(&admin_url, "shipping_api")
                .await
                .expect("creating a test database");
            let pool = shared::db::connect(&url, 5)
                .await
                .expect("connecting to the test database");
            shipping_service::migrate(&pool)
                .await
                .expect("migrating the test database");
            let countries =
                shipping_service::domain::Countries::parse(countries).expect("a country list");
            let router =
                shared::http::with_common_layers(shipping_service::router(pool.clone(), countries));
            Self { router, pool }
        }

        /// Sends a request without a body and returns the status and the JSON body. Fails the
        /// test on any 5xx, on a non-JSON body and on an error that is not
        /// `{"error":{"code","message"}}` with both non-empty.
        pub async fn send(&self, method: Method, uri: &str) -> (StatusCode, Value) {
            let what = format!("{method} {uri}");
            let request = Request::builder()
                .method(method)
                .uri(uri)
                .body(Body::empty())
                .expect("a valid request");
            let response = self
                .router
                .clone()
                .oneshot(request)
                .await
                .expect("the router is infallible");
            let status = response.status();
            let content_type = response
                .headers()
                .get(header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .map(String::from);
            let bytes = to_bytes(response.into_body(), usize::MAX)
                .await
                .expect("reading the body");
            let text = String::from_utf8_lossy(&bytes);
            assert!(!status.is_server_error(), "{what} -> {status}: {text}");
            assert_eq!(
                content_type.as_deref(),
                Some("application/json"),
                "{what} -> {status}: {text}"
            );
            let body: Value =
                serde_json::from_slice(&bytes).unwrap_or_else(|e| panic!("{what}: {e}: {text}"));
            if status.is_client_error() {
                for field in ["code", "message"] {
                    let value = body["error"][field].as_str().unwrap_or_default();
                    assert!(
                        !value.is_empty(),
                        "{what} -> {status}: error.{field} missing in {body}"
                    );
                }
            }
            (status, body)
        }
    }

    #[track_caller]
    pub fn assert_error(actual: &(StatusCode, Value), status: StatusCode, code: &str) {
        assert_eq!(
            (actual.0, &actual.1["error"]["code"]),
            (status, &Value::from(code)),
            "{}",
            actual.1
        );
    }
}

use axum::http::{Method, StatusCode};
use serde_json::json;
use support::{assert_error, TestApp};
use uuid::Uuid;

#[tokio::test]
async fn countries_lists_the_served_codes_sorted_and_deduplicated() {
    let app = TestApp::start("fr, DE,es,FR").await;
    let (status, body) = app.send(Method::GET, "/countries").await;
    assert_eq!(
        (status, body),
        (StatusCode::OK, json!({"countries": ["DE", "ES", "FR"]}))
    );
}

#[tokio::test]
async fn countries_is_an_empty_list_when_none_are_served() {
    let app = TestApp::start("").await;
    let (status, body) = app.send(Method::GET, "/countries").await;
    assert_eq!((status, body), (StatusCode::OK, json!({"countries": []})));
}

#[tokio::test]
async fn a_shipment_lookup_is_404_when_none_and_400_for_a_non_uuid() {
    let app = TestApp::start("FR").await;
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
        assert_error(&app.send(Method::GET, &uri).await, status, code);
    }
}

#[tokio::test]
async fn recorded_shipments_are_shown_and_voided_ones_are_not() {
    let app = TestApp::start("FR").await;
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
            .send(Method::GET, &format!("/shipments/{order_id}"))
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
    let reply = app.send(Method::GET, &format!("/shipments/{voided}")).await;
    assert_error(&reply, StatusCode::NOT_FOUND, "shipment_not_found");
}

#[tokio::test]
async fn unknown_routes_are_404_and_wrong_methods_405_with_json_errors() {
    let app = TestApp::start("FR").await;
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
        assert_error(&app.send(method, &uri).await, status, code);
    }
}
