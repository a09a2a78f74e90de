//! Helpers for a service's tests (feature `testing`): a fresh database, the service's router
//! driven without a socket, the bad bodies every JSON endpoint must refuse, and re-deliveries
//! for the property tests of the saga rules.

use axum::body::{to_bytes, Body};
use axum::http::{header, HeaderMap, Method, Request, StatusCode};
use axum::Router;
use serde_json::{json, Value};
use sqlx::PgPool;
use tower::ServiceExt;

pub const JSON: Option<&str> = Some("application/json");

#[derive(Clone)]
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
    /// `router` with the production layers (JSON 404/405, body limit, request ids), over `pool`.
    pub fn new(router: Router, pool: PgPool) -> Self {
        Self {
            router: crate::http::with_common_layers(router),
            pool,
        }
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
    oversized.resize(crate::http::MAX_BODY_BYTES + 1, b' ');
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

/// A pool on a new, uniquely named database on the server at `DATABASE_URL` (set by
/// `cargo xtask test`).
pub async fn fresh_database(name_prefix: &str) -> PgPool {
    let admin_url = std::env::var("DATABASE_URL").unwrap_or_else(|_| {
        panic!("DATABASE_URL is not set: run the tests with `cargo xtask test`")
    });
    let url = crate::db::create_fresh_database(&admin_url, name_prefix)
        .await
        .expect("creating a test database");
    crate::db::connect(&url, 5)
        .await
        .expect("connecting to the test database")
}

/// A trace to apply an event in, as the consumer applies one in the trace its `traceparent`
/// header carries; its trace id is [`A_TRACE_ID`].
pub fn a_trace() -> crate::traces::StoredContext {
    crate::traces::StoredContext {
        traceparent: format!("00-{A_TRACE_ID}-b7ad6b7169203331-01"),
        tracestate: None,
    }
}

/// The trace id of [`a_trace`].
pub const A_TRACE_ID: &str = "0af7651916cd43dd8448eb211c80319c";

/// The trace id the outbox row of `order_id`'s event `event_type` (e.g. `inventory.released`,
/// any version) carries; `None` when it carries no trace context. Panics when there is no
/// such row.
pub async fn outbox_trace_id(
    pool: &PgPool,
    order_id: uuid::Uuid,
    event_type: &str,
) -> Option<String> {
    let traceparent: Option<String> = sqlx::query_scalar(
        "select traceparent from outbox where message_key = $1 and event_type like $2 || '.v%'",
    )
    .bind(order_id.to_string())
    .bind(event_type)
    .fetch_one(pool)
    .await
    .unwrap_or_else(|error| panic!("no {event_type} of {order_id} in the outbox: {error}"));
    traceparent.and_then(|traceparent| traceparent.split('-').nth(1).map(str::to_owned))
}

/// Waits until a session of `pool`'s database waits for a lock (a transaction a test started
/// is blocked behind one the test holds); panics after 30 s.
pub async fn wait_for_a_lock_waiter(pool: &PgPool) {
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let waiting: i64 = sqlx::query_scalar(
            "select count(*) from pg_stat_activity
             where datname = current_database() and wait_event_type = 'Lock'",
        )
        .fetch_one(pool)
        .await
        .expect("reading pg_stat_activity");
        if waiting > 0 {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no session waited for a lock within 30 s"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

/// `deliveries` with some of them delivered again at a random later point (a duplicate or a
/// re-delivery after a rewind; never before its first delivery): the original order and the
/// order as delivered.
pub fn with_redeliveries<T: Clone + std::fmt::Debug>(
    deliveries: Vec<T>,
) -> impl proptest::strategy::Strategy<Value = (Vec<T>, Vec<T>)> {
    use proptest::strategy::Strategy;
    let len = deliveries.len();
    proptest::collection::vec((0..len.max(1), 0..=len), 0..8).prop_map(move |redeliveries| {
        let mut delivered: Vec<(usize, T)> = deliveries
            .iter()
            .enumerate()
            .map(|(i, delivery)| (i * 2 + 1, delivery.clone()))
            .collect();
        for (which, after) in redeliveries {
            if let Some(delivery) = deliveries.get(which) {
                delivered.push((after.max(which) * 2 + 2, delivery.clone()));
            }
        }
        delivered.sort_by_key(|(position, _)| *position);
        let delivered = delivered
            .into_iter()
            .map(|(_, delivery)| delivery)
            .collect();
        (deliveries.clone(), delivered)
    })
}
