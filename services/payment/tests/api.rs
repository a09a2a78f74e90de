//! The payment service's HTTP API, driven through its router with the production layers on a
//! fresh PostgreSQL database per test (no Kafka). Needs `DATABASE_URL`: run `cargo xtask test`.

mod support {
    use axum::body::{to_bytes, Body};
    use axum::http::{header, HeaderMap, Method, Request, StatusCode};
    use axum::Router;
    use serde_json::{json, Value};
    use sqlx::PgPool;
    use tower::ServiceExt;

    pub const JSON: Option<&str> = Some("application/json");

    pub struct TestApp {
        pub router: Router,
        pub pool: PgPool,
    }

    /// What the service answered; `body` is `Null` when the response has none.
    pub struct Reply {
        pub status: StatusCode,
        pub headers: HeaderMap,
        pub body: Value,
    }

    impl TestApp {
        /// The service's router with the production layers, on a database nobody else uses.
        pub async fn start() -> Self {
            let admin_url = std::env::var("DATABASE_URL").unwrap_or_else(|_| {
                panic!("DATABASE_URL is not set: run the tests with `cargo xtask test`")
            });
            let url = shared::db::create_fresh_database(&admin_url, "payment_api")
                .await
                .expect("creating a test database");
            let pool = shared::db::connect(&url, 5)
                .await
                .expect("connecting to the test database");
            payment_service::migrate(&pool)
                .await
                .expect("migrating the test database");
            let router = shared::http::with_common_layers(payment_service::router(pool.clone()));
            Self { router, pool }
        }

        /// Sends `body` (if any) as JSON and returns the status and the JSON body.
        pub async fn send(
            &self,
            method: Method,
            uri: &str,
            body: Option<Value>,
        ) -> (StatusCode, Value) {
            let body = body.map(|body| body.to_string().into_bytes());
            let content_type = if body.is_some() { JSON } else { None };
            let reply = self
                .call(request(method, uri, content_type, body.unwrap_or_default()))
                .await;
            (reply.status, reply.body)
        }

        /// Sends `request`; fails the test on any 5xx, on a non-JSON body and on an error that
        /// is not `{"error":{"code","message"}}` with both non-empty.
        pub async fn call(&self, request: Request<Body>) -> Reply {
            let what = format!("{} {}", request.method(), request.uri());
            let response = self
                .router
                .clone()
                .oneshot(request)
                .await
                .expect("the router is infallible");
            let status = response.status();
            let headers = response.headers().clone();
            let bytes = to_bytes(response.into_body(), usize::MAX)
                .await
                .expect("reading the body");
            let text = String::from_utf8_lossy(&bytes);
            assert!(!status.is_server_error(), "{what} -> {status}: {text}");
            if bytes.is_empty() {
                return Reply {
                    status,
                    headers,
                    body: Value::Null,
                };
            }
            let content_type = headers
                .get(header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok());
            assert_eq!(
                content_type,
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
            Reply {
                status,
                headers,
                body,
            }
        }

        pub async fn count(&self, sql: &str) -> i64 {
            sqlx::query_scalar(sql)
                .fetch_one(&self.pool)
                .await
                .expect(sql)
        }
    }

    pub fn request(
        method: Method,
        uri: &str,
        content_type: Option<&str>,
        body: Vec<u8>,
    ) -> Request<Body> {
        let mut request = Request::builder().method(method).uri(uri);
        if let Some(content_type) = content_type {
            request = request.header(header::CONTENT_TYPE, content_type);
        }
        if !body.is_empty() {
            request = request.header(header::CONTENT_LENGTH, body.len());
        }
        request.body(Body::from(body)).expect("a valid request")
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

    /// A request body the endpoint must refuse, with the status and code it must refuse it with.
    pub struct BadBody {
        pub case: String,
        pub content_type: Option<&'static str>,
        pub body: Vec<u8>,
        pub status: StatusCode,
        pub code: &'static str,
    }

    /// Well-formed JSON that the endpoint must refuse with 422 `validation_failed`.
    pub fn invalid(case: &str, body: Value) -> BadBody {
        let body = body.to_string().into_bytes();
        BadBody {
            case: case.into(),
            content_type: JSON,
            body,
            status: StatusCode::UNPROCESSABLE_ENTITY,
            code: "validation_failed",
        }
    }

    /// `valid` with the field at the JSON `pointer` set to `value`, or removed if `None`.
    pub fn patched(valid: &Value, pointer: &str, value: Option<Value>) -> Value {
        let mut body = valid.clone();
        let (parent, field) = pointer.rsplit_once('/').expect("a JSON pointer");
        let object = body
            .pointer_mut(parent)
            .and_then(Value::as_object_mut)
            .expect("an object");
        match value {
            Some(value) => object.insert(field.to_owned(), value),
            None => object.remove(field),
        };
        body
    }

    /// What every JSON endpoint refuses the same way, whatever its fields.
    pub fn bad_bodies(valid: &Value) -> Vec<BadBody> {
        let valid_bytes = valid.to_string().into_bytes();
        let malformed = |case: &str, body: Vec<u8>| BadBody {
            case: case.into(),
            content_type: JSON,
            body,
            status: StatusCode::BAD_REQUEST,
            code: "malformed_json",
        };
        let unsupported = |case: &str, content_type| BadBody {
            case: case.into(),
            content_type,
            body: valid_bytes.clone(),
            status: StatusCode::UNSUPPORTED_MEDIA_TYPE,
            code: "unsupported_media_type",
        };
        let mut oversized = valid_bytes.clone();
        oversized.resize(shared::http::MAX_BODY_BYTES + 1, b' ');
        let mut trailing = valid_bytes.clone();
        trailing.extend_from_slice(b" x");
        vec![
            malformed("not JSON", b"{,}".to_vec()),
            malformed("truncated", valid_bytes[..valid_bytes.len() - 1].to_vec()),
            malformed("empty", Vec::new()),
            malformed("trailing garbage", trailing),
            unsupported("text/plain", Some("text/plain")),
            unsupported("a form", Some("application/x-www-form-urlencoded")),
            unsupported("no content type", None),
            BadBody {
                case: "over 64 KiB".into(),
                content_type: JSON,
                body: oversized,
                status: StatusCode::PAYLOAD_TOO_LARGE,
                code: "payload_too_large",
            },
            invalid(
                "unknown field",
                patched(valid, "/unexpected", Some(json!(1))),
            ),
            invalid("an array", Value::Array(vec![valid.clone()])),
            invalid("null", Value::Null),
        ]
    }

    /// Sends each case to `uri` and checks its status and error code.
    pub async fn assert_rejected(app: &TestApp, method: Method, uri: &str, cases: Vec<BadBody>) {
        for case in cases {
            let reply = app
                .call(request(method.clone(), uri, case.content_type, case.body))
                .await;
            assert_eq!(
                (reply.status, reply.body["error"]["code"].as_str()),
                (case.status, Some(case.code)),
                "{}: {}",
                case.case,
                reply.body
            );
        }
    }
}

use axum::http::{header, Method, StatusCode};
use serde_json::{json, Value};
use support::{
    assert_error, assert_rejected, bad_bodies, invalid, patched, request, TestApp, JSON,
};
use uuid::Uuid;

#[tokio::test]
async fn opening_an_account_returns_201_with_its_location_and_balance() {
    let app = TestApp::start().await;
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
    let app = TestApp::start().await;
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
    let app = TestApp::start().await;
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
    let app = TestApp::start().await;
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
    let app = TestApp::start().await;
    let reply = app.send(Method::GET, "/accounts/nobody", None).await;
    assert_error(&reply, StatusCode::NOT_FOUND, "account_not_found");
}

#[tokio::test]
async fn a_payment_lookup_is_404_when_none_and_400_for_a_non_uuid() {
    let app = TestApp::start().await;
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
    let app = TestApp::start().await;
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
    let app = TestApp::start().await;
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
    let app = TestApp::start().await;
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
    let app = TestApp::start().await;
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
    let app = TestApp::start().await;
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
