//! The payment service's HTTP API, driven through its router with the production layers on a
//! fresh PostgreSQL database per test (no Kafka). Needs `DATABASE_URL`: run `cargo xtask test`.

async fn start() -> TestApp {
    let pool = shared::testing::fresh_database("payment_api").await;
    payment_service::migrate(&pool)
        .await
        .expect("migrating the test database");
    TestApp::new(payment_service::router(pool.clone()), pool)
}

use axum::http::{header, Method, StatusCode};
use serde_json::{json, Value};
use shared::testing::{
    assert_error, assert_rejected, bad_bodies, invalid, patched, request, TestApp, JSON,
};
use uuid::Uuid;

#[tokio::test]
async fn opening_an_account_returns_201_with_its_location_and_balance() {
    let app = start().await;
    let body = json!({"customer_id": "alice", "balance_cents": 5_000});
    let reply = app
        .call(request(
            Method::POST,
            "/accounts",
            JSON,
            body.to_string().into_bytes(),
        ))
        .await;
    assert_eq!(reply.status, StatusCode::CREATED, "{}", reply.body);
    assert_eq!(reply.headers[header::LOCATION], "/accounts/alice");
    assert_eq!(reply.body, body);

    let (status, account) = app.send(Method::GET, "/accounts/alice", None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(account, body);
}

#[tokio::test]
async fn opening_an_existing_account_is_409_and_keeps_the_first_balance() {
    let app = start().await;
    let (status, _) = app
        .send(
            Method::POST,
            "/accounts",
            Some(json!({"customer_id": "bob", "balance_cents": 10})),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED);

    let again = app
        .send(
            Method::POST,
            "/accounts",
            Some(json!({"customer_id": "bob", "balance_cents": 999})),
        )
        .await;
    assert_error(&again, StatusCode::CONFLICT, "account_exists");

    let (_, account) = app.send(Method::GET, "/accounts/bob", None).await;
    assert_eq!(account["balance_cents"], 10);
}

#[tokio::test]
async fn accounts_at_the_limits_are_accepted() {
    let app = start().await;
    let cases = [
        ("zero-balance", 0_i64),
        ("max-balance", 1_000_000_000_000),
        (&"c".repeat(64), 1),
        // 64 characters, 128 bytes: the limit counts characters.
        (&"é".repeat(64), 1),
    ];
    for (customer_id, balance_cents) in cases {
        let body = json!({"customer_id": customer_id, "balance_cents": balance_cents});
        let (status, account) = app
            .send(Method::POST, "/accounts", Some(body.clone()))
            .await;
        assert_eq!((status, &account), (StatusCode::CREATED, &body));
    }
    assert_eq!(app.count("select count(*) from accounts").await, 4);
}

#[tokio::test]
async fn invalid_account_bodies_are_rejected_and_open_nothing() {
    let app = start().await;
    let valid = json!({"customer_id": "carol", "balance_cents": 100});
    let field = |pointer, value| patched(&valid, pointer, value);
    let mut cases = bad_bodies(&valid);
    cases.extend([
        invalid("customer_id missing", field("/customer_id", None)),
        invalid("balance_cents missing", field("/balance_cents", None)),
        invalid("customer_id null", field("/customer_id", Some(Value::Null))),
        invalid(
            "customer_id a number",
            field("/customer_id", Some(json!(42))),
        ),
        invalid("customer_id empty", field("/customer_id", Some(json!("")))),
        invalid(
            "customer_id blank",
            field("/customer_id", Some(json!("   "))),
        ),
        invalid(
            "customer_id 65 characters",
            field("/customer_id", Some(json!("c".repeat(65)))),
        ),
        invalid(
            "balance_cents a string",
            field("/balance_cents", Some(json!("100"))),
        ),
        invalid(
            "balance_cents fractional",
            field("/balance_cents", Some(json!(1.5))),
        ),
        invalid(
            "balance_cents negative",
            field("/balance_cents", Some(json!(-1))),
        ),
        invalid(
            "balance_cents over the maximum",
            field("/balance_cents", Some(json!(1_000_000_000_001_i64))),
        ),
        invalid(
            "balance_cents beyond i64",
            field("/balance_cents", Some(json!(1e20))),
        ),
    ]);
    assert_rejected(&app, Method::POST, "/accounts", cases).await;
    assert_eq!(app.count("select count(*) from accounts").await, 0);
}

#[tokio::test]
async fn an_unknown_account_is_404() {
    let app = start().await;
    let reply = app.send(Method::GET, "/accounts/nobody", None).await;
    assert_error(&reply, StatusCode::NOT_FOUND, "account_not_found");
}

#[tokio::test]
async fn a_payment_lookup_is_404_when_none_and_400_for_a_non_uuid() {
    let app = start().await;
    let cases = [
        (
            format!("/payments/{}", Uuid::new_v4()),
            StatusCode::NOT_FOUND,
            "payment_not_found",
        ),
        (
            "/payments/not-a-uuid".to_owned(),
            StatusCode::BAD_REQUEST,
            "invalid_path",
        ),
        (
            "/payments/12345".to_owned(),
            StatusCode::BAD_REQUEST,
            "invalid_path",
        ),
    ];
    for (uri, status, code) in cases {
        assert_error(&app.send(Method::GET, &uri, None).await, status, code);
    }
}

#[tokio::test]
async fn a_recorded_payment_is_shown_and_a_voided_one_is_not() {
    let app = start().await;
    // Payments are only written by the saga's event handler, so record them directly.
    let charged = Uuid::new_v4();
    let declined = Uuid::new_v4();
    let voided = Uuid::new_v4();
    sqlx::query(
        "insert into payments (order_id, customer_id, amount_cents, status, reason) values
         ($1, 'dave', 1500, 'CHARGED', null),
         ($2, 'erin', 0, 'DECLINED', 'insufficient_funds'),
         ($3, null, 0, 'VOIDED', null)",
    )
    .bind(charged)
    .bind(declined)
    .bind(voided)
    .execute(&app.pool)
    .await
    .unwrap();

    let (status, payment) = app
        .send(Method::GET, &format!("/payments/{charged}"), None)
        .await;
    assert_eq!(status, StatusCode::OK);
    let expected = json!({"order_id": charged, "customer_id": "dave", "status": "CHARGED", "amount_cents": 1500, "reason": null});
    assert_eq!(payment, expected);

    let (_, payment) = app
        .send(Method::GET, &format!("/payments/{declined}"), None)
        .await;
    assert_eq!(
        (&payment["status"], &payment["reason"]),
        (&json!("DECLINED"), &json!("insufficient_funds"))
    );

    let hidden = app
        .send(Method::GET, &format!("/payments/{voided}"), None)
        .await;
    assert_error(&hidden, StatusCode::NOT_FOUND, "payment_not_found");
}

#[tokio::test]
async fn unknown_routes_are_404_and_wrong_methods_405_with_json_errors() {
    let app = start().await;
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
            "/accounts/alice/extra".to_owned(),
            StatusCode::NOT_FOUND,
            "not_found",
        ),
        (
            Method::GET,
            "/accounts".to_owned(),
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
        ),
        (
            Method::PUT,
            "/accounts".to_owned(),
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
        ),
        (
            Method::DELETE,
            "/accounts/alice".to_owned(),
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
        ),
        (
            Method::POST,
            format!("/payments/{order_id}"),
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
        ),
    ];
    for (method, uri, status, code) in cases {
        assert_error(&app.send(method, &uri, None).await, status, code);
    }
}

#[tokio::test]
async fn a_customer_id_with_a_control_character_is_422_and_opens_nothing() {
    let app = start().await;
    let reply = app
        .send(
            Method::POST,
            "/accounts",
            Some(json!({"customer_id": "a\nb", "balance_cents": 1})),
        )
        .await;
    assert_error(
        &reply,
        StatusCode::UNPROCESSABLE_ENTITY,
        "validation_failed",
    );
    assert_eq!(app.count("select count(*) from accounts").await, 0);
}

#[tokio::test]
async fn a_customer_id_with_a_nul_is_422_on_open_and_400_on_read() {
    let app = start().await;
    let reply = app.send(Method::GET, "/accounts/a%00b", None).await;
    assert_error(&reply, StatusCode::BAD_REQUEST, "invalid_characters");
    let reply = app
        .send(
            Method::POST,
            "/accounts",
            Some(json!({"customer_id": "a\u{0}b", "balance_cents": 1})),
        )
        .await;
    assert_error(
        &reply,
        StatusCode::UNPROCESSABLE_ENTITY,
        "validation_failed",
    );
}

#[tokio::test]
async fn the_location_of_an_account_leads_back_to_it_whatever_its_customer_id() {
    let app = start().await;
    for customer_id in ["team/alice", "bob?x=1", "carol#1"] {
        let body = json!({"customer_id": customer_id, "balance_cents": 7});
        let reply = app
            .call(request(
                Method::POST,
                "/accounts",
                JSON,
                body.to_string().into_bytes(),
            ))
            .await;
        assert_eq!(reply.status, StatusCode::CREATED);
        let location = reply.headers[header::LOCATION].to_str().unwrap().to_owned();
        let (status, account) = app.send(Method::GET, &location, None).await;
        assert_eq!(
            (status, &account),
            (StatusCode::OK, &body),
            "Location {location}"
        );
    }
}
