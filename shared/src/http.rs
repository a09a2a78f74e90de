//! HTTP plumbing: the one JSON error shape, extractors that turn every bad input into a 4xx
//! with a stable code, and the layers every service router gets.

use std::borrow::Cow;

use axum::body::Bytes;
use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{DefaultBodyLimit, FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, HeaderName, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::{Json, Router};
use serde::de::DeserializeOwned;
use serde::Serialize;
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::trace::TraceLayer;

/// Largest request body accepted, in bytes; larger ones get 413.
pub const MAX_BODY_BYTES: usize = 64 * 1024;

/// An HTTP error: `{"error": {"code": "...", "message": "..."}}` with its status.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: Cow<'static, str>,
    pub message: String,
    /// Sent as `Retry-After` (seconds): when the client may try again.
    pub retry_after_secs: Option<u32>,
}

#[derive(Serialize)]
struct ErrorBody<'a> {
    error: ErrorDetail<'a>,
}

#[derive(Serialize)]
struct ErrorDetail<'a> {
    code: &'a str,
    message: &'a str,
}

impl ApiError {
    pub fn new(
        status: StatusCode,
        code: impl Into<Cow<'static, str>>,
        message: impl Into<String>,
    ) -> Self {
        Self {
            status,
            code: code.into(),
            message: message.into(),
            retry_after_secs: None,
        }
    }
    pub fn bad_request(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, code, message)
    }
    pub fn not_found(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, code, message)
    }
    pub fn conflict(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::CONFLICT, code, message)
    }
    /// 503 `overloaded` with `Retry-After: 1`: the request was shed, not queued; retry it.
    pub fn overloaded(message: impl Into<String>) -> Self {
        Self {
            retry_after_secs: Some(1),
            ..Self::new(StatusCode::SERVICE_UNAVAILABLE, "overloaded", message)
        }
    }
    /// 422: well-formed JSON whose content is not acceptable.
    pub fn invalid(message: impl Into<String>) -> Self {
        Self::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "validation_failed",
            message,
        )
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} {}: {}",
            self.status.as_u16(),
            self.code,
            self.message
        )
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = ErrorBody {
            error: ErrorDetail {
                code: &self.code,
                message: &self.message,
            },
        };
        let mut response = (self.status, Json(body)).into_response();
        if let Some(seconds) = self.retry_after_secs {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, header::HeaderValue::from(seconds));
        }
        response
    }
}

/// A database failure is the server's problem, never the input's: 503, so clients retry; no
/// free connection within the pool's acquire timeout is overload (`overloaded`, Retry-After).
impl From<sqlx::Error> for ApiError {
    fn from(error: sqlx::Error) -> Self {
        if matches!(error, sqlx::Error::PoolTimedOut) {
            tracing::warn!("no database connection free in time; request shed");
            return Self::overloaded("the service is overloaded; retry later");
        }
        // 22021: the input holds a character PostgreSQL cannot store (a NUL): the caller's fault.
        if let Some(database_error) = error.as_database_error() {
            if database_error.code().as_deref() == Some("22021") {
                return Self::bad_request(
                    "invalid_characters",
                    "text may not contain NUL characters",
                );
            }
        }
        tracing::error!(%error, "database error while serving a request");
        Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            "the service cannot reach its database; retry later",
        )
    }
}

/// Request bodies check their own content after parsing; the message names the field.
pub trait Validate {
    fn validate(&self) -> Result<(), ApiError>;
}

/// Checks that `value` is 1 to `max` characters, not blank, with no control characters.
pub fn check_length(field: &str, value: &str, max: usize) -> Result<(), ApiError> {
    let length = value.chars().count();
    if value.chars().any(char::is_control) {
        Err(ApiError::invalid(format!(
            "{field} must not contain control characters"
        )))
    } else if length == 0 || value.trim().is_empty() {
        Err(ApiError::invalid(format!("{field} must not be empty")))
    } else if length > max {
        Err(ApiError::invalid(format!(
            "{field} must be at most {max} characters"
        )))
    } else {
        Ok(())
    }
}

/// A list endpoint's `limit` query parameter: `default` when absent, 400 `invalid_query`
/// unless it is 1 to `max`.
pub fn page_limit(limit: Option<i64>, default: i64, max: i64) -> Result<i64, ApiError> {
    let limit = limit.unwrap_or(default);
    if (1..=max).contains(&limit) {
        Ok(limit)
    } else {
        Err(ApiError::bad_request(
            "invalid_query",
            format!("limit must be between 1 and {max}"),
        ))
    }
}

/// Longest `Idempotency-Key` accepted.
pub const MAX_IDEMPOTENCY_KEY_CHARS: usize = 255;

/// The `Idempotency-Key` header, as a bare token or a quoted structured-field string: `None`
/// without one, 400 `invalid_idempotency_key` unless it is 1 to [`MAX_IDEMPOTENCY_KEY_CHARS`]
/// visible ASCII characters.
pub fn idempotency_key(headers: &HeaderMap) -> Result<Option<String>, ApiError> {
    let Some(value) = headers.get("idempotency-key") else {
        return Ok(None);
    };
    let invalid = || {
        ApiError::bad_request(
            "invalid_idempotency_key",
            format!(
                "Idempotency-Key must be 1 to {MAX_IDEMPOTENCY_KEY_CHARS} visible ASCII characters"
            ),
        )
    };
    let value = value.to_str().map_err(|_| invalid())?.trim();
    let key = value
        .strip_prefix('"')
        .and_then(|inner| inner.strip_suffix('"'))
        .unwrap_or(value);
    if key.is_empty()
        || key.len() > MAX_IDEMPOTENCY_KEY_CHARS
        || !key.bytes().all(|byte| byte.is_ascii_graphic())
    {
        return Err(invalid());
    }
    Ok(Some(key.to_owned()))
}

/// Like `axum::Json`, but every rejection is an [`ApiError`] and the body is validated.
pub struct ValidJson<T>(pub T);

impl<S, T> FromRequest<S> for ValidJson<T>
where
    S: Send + Sync,
    T: DeserializeOwned + Validate,
{
    type Rejection = ApiError;

    async fn from_request(request: Request, state: &S) -> Result<Self, Self::Rejection> {
        if !has_json_content_type(&request) {
            return Err(ApiError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported_media_type",
                "expected a request body with `Content-Type: application/json`",
            ));
        }
        let bytes = Bytes::from_request(request, state)
            .await
            .map_err(|rejection| {
                if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
                    ApiError::new(
                        StatusCode::PAYLOAD_TOO_LARGE,
                        "payload_too_large",
                        format!("the request body is larger than {MAX_BODY_BYTES} bytes"),
                    )
                } else {
                    ApiError::bad_request("unreadable_body", rejection.body_text())
                }
            })?;
        // Syntax first, so a truncated body is a 400 even when its first field is unknown.
        let json: serde_json::Value = serde_json::from_slice(&bytes).map_err(|error| {
            ApiError::bad_request(
                "malformed_json",
                format!("the body is not valid JSON: {error}"),
            )
        })?;
        let value = T::deserialize(json)
            .map_err(|error| ApiError::invalid(format!("invalid request body: {error}")))?;
        value.validate()?;
        Ok(Self(value))
    }
}

fn has_json_content_type(request: &Request) -> bool {
    let Some(content_type) = request
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
    else {
        return false;
    };
    let essence = content_type
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase();
    essence == "application/json"
        || (essence.starts_with("application/") && essence.ends_with("+json"))
}

/// Like `axum::extract::Path`, with a JSON 400 on rejection.
pub struct ValidPath<T>(pub T);

impl<S, T> FromRequestParts<S> for ValidPath<T>
where
    S: Send + Sync,
    T: DeserializeOwned + Send,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        reject_nul(parts.uri.path())?;
        axum::extract::Path::<T>::from_request_parts(parts, state)
            .await
            .map(|axum::extract::Path(value)| Self(value))
            .map_err(|rejection: PathRejection| {
                ApiError::bad_request("invalid_path", rejection.body_text())
            })
    }
}

/// Like `axum::extract::Query`, with a JSON 400 on rejection.
pub struct ValidQuery<T>(pub T);

impl<S, T> FromRequestParts<S> for ValidQuery<T>
where
    S: Send + Sync,
    T: DeserializeOwned,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        reject_nul(parts.uri.query().unwrap_or_default())?;
        axum::extract::Query::<T>::from_request_parts(parts, state)
            .await
            .map(|axum::extract::Query(value)| Self(value))
            .map_err(|rejection: QueryRejection| {
                ApiError::bad_request("invalid_query", rejection.body_text())
            })
    }
}

/// A percent-encoded NUL can never match stored text (PostgreSQL cannot store it).
fn reject_nul(raw: &str) -> Result<(), ApiError> {
    if raw.to_ascii_lowercase().contains("%00") {
        return Err(ApiError::bad_request(
            "invalid_characters",
            "the URL may not contain NUL characters",
        ));
    }
    Ok(())
}

/// Percent-encodes `value` for use as one path segment (e.g. in a `Location` header).
pub fn path_segment(value: &str) -> String {
    let mut encoded = String::with_capacity(value.len());
    for byte in value.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'.' | b'_' | b'~') {
            encoded.push(char::from(byte));
        } else {
            encoded.push_str(&format!("%{byte:02X}"));
        }
    }
    encoded
}

async fn not_found() -> ApiError {
    ApiError::not_found("not_found", "no such route")
}

async fn method_not_allowed() -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        "method not allowed on this route",
    )
}

/// Adds what every service router needs: JSON 404/405, the body limit, request ids and a
/// request span.
pub fn with_common_layers(router: Router) -> Router {
    let request_id = HeaderName::from_static("x-request-id");
    router
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .layer(PropagateRequestIdLayer::new(request_id.clone()))
        .layer(TraceLayer::new_for_http())
        .layer(SetRequestIdLayer::new(request_id, MakeRequestUuid))
}

/// Wraps every request of `router` in a span naming `service` (so its log records carry it)
/// and records its latency in `sagashop_http_request_duration_seconds`, labelled by service,
/// method, matched route (`unmatched` for a 404 fallback: no label per unknown path) and status
/// class (`2xx`, `4xx`, `5xx`, ...): request rate, errors and latency per route in one histogram.
pub fn observed(router: Router, service: &'static str) -> Router {
    router.layer(axum::middleware::from_fn(
        move |request: Request, next: axum::middleware::Next| observe(service, request, next),
    ))
}

/// The segment of `path` where the matched `route` has `{name}`.
fn path_parameter<'a>(route: &str, path: &'a str, name: &str) -> Option<&'a str> {
    let placeholder = format!("{{{name}}}");
    let index = route
        .split('/')
        .position(|segment| segment == placeholder)?;
    path.split('/').nth(index).filter(|value| !value.is_empty())
}

async fn observe(
    service: &'static str,
    request: Request,
    next: axum::middleware::Next,
) -> Response {
    let route = request
        .extensions()
        .get::<axum::extract::MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |path| path.as_str().to_owned());
    let method: &'static str = match *request.method() {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::PATCH => "PATCH",
        Method::DELETE => "DELETE",
        Method::HEAD => "HEAD",
        Method::OPTIONS => "OPTIONS",
        _ => "other",
    };
    // A request about one order carries its id, like the consumer's event span does.
    let order_id = path_parameter(&route, request.uri().path(), "order_id").map(str::to_owned);
    let span = tracing::info_span!(
        "http",
        service,
        method,
        route = %route,
        order_id = order_id.as_deref(),
    );
    let started = std::time::Instant::now();
    let response = tracing::Instrument::instrument(next.run(request), span).await;
    let status_class = format!("{}xx", response.status().as_u16() / 100);
    metrics::histogram!(
        crate::metrics::HTTP_REQUEST_DURATION,
        "service" => service,
        "method" => method,
        "route" => route,
        "status_class" => status_class,
    )
    .record(started.elapsed().as_secs_f64());
    response
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::Body;
    use axum::routing::post;
    use serde::Deserialize;
    use tower::ServiceExt;

    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Thing {
        name: String,
    }

    impl Validate for Thing {
        fn validate(&self) -> Result<(), ApiError> {
            check_length("name", &self.name, 5)
        }
    }

    async fn create(ValidJson(thing): ValidJson<Thing>) -> String {
        thing.name
    }

    async fn send(
        content_type: Option<&str>,
        body: impl Into<Body>,
    ) -> (StatusCode, serde_json::Value) {
        let app = with_common_layers(Router::new().route("/things", post(create)));
        let mut request = Request::post("/things");
        if let Some(content_type) = content_type {
            request = request.header("content-type", content_type);
        }
        let response = app
            .oneshot(request.body(body.into()).unwrap())
            .await
            .unwrap();
        let status = response.status();
        let bytes = axum::body::to_bytes(response.into_body(), usize::MAX)
            .await
            .unwrap();
        (
            status,
            serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::Null),
        )
    }

    #[tokio::test]
    async fn every_bad_body_gets_its_status_and_a_json_error() {
        let json = Some("application/json");
        let cases: Vec<(Option<&str>, Vec<u8>, u16, &str)> = vec![
            (json, b"{".to_vec(), 400, "malformed_json"),
            (json, br#"{"extra":"#.to_vec(), 400, "malformed_json"),
            (
                Some("text/plain"),
                br#"{"name":"a"}"#.to_vec(),
                415,
                "unsupported_media_type",
            ),
            (
                None,
                br#"{"name":"a"}"#.to_vec(),
                415,
                "unsupported_media_type",
            ),
            (
                json,
                br#"{"name":"a","extra":1}"#.to_vec(),
                422,
                "validation_failed",
            ),
            (json, br#"{}"#.to_vec(), 422, "validation_failed"),
            (
                json,
                br#"{"name":"toolong"}"#.to_vec(),
                422,
                "validation_failed",
            ),
            (json, br#"{"name":42}"#.to_vec(), 422, "validation_failed"),
            (
                json,
                vec![b' '; MAX_BODY_BYTES + 1],
                413,
                "payload_too_large",
            ),
        ];
        for (content_type, body, status, code) in cases {
            let (actual, error) = send(content_type, body).await;
            assert_eq!(actual.as_u16(), status, "{error}");
            assert_eq!(error["error"]["code"], code);
            assert!(error["error"]["message"]
                .as_str()
                .is_some_and(|m| !m.is_empty()));
        }
        let (status, _) = send(json, br#"{"name":"ok"}"#.to_vec()).await;
        assert_eq!(status, StatusCode::OK);
        let (status, _) = send(
            Some("application/merge+json; charset=utf-8"),
            br#"{"name":"ok"}"#.to_vec(),
        )
        .await;
        assert_eq!(status, StatusCode::OK);
    }

    #[tokio::test]
    async fn overload_is_a_json_503_with_retry_after() {
        for error in [
            ApiError::overloaded("too busy"),
            ApiError::from(sqlx::Error::PoolTimedOut),
        ] {
            let response = error.into_response();
            assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
            assert_eq!(response.headers()[header::RETRY_AFTER], "1");
            let bytes = axum::body::to_bytes(response.into_body(), usize::MAX)
                .await
                .unwrap();
            let error: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
            assert_eq!(error["error"]["code"], "overloaded");
        }
        let other = ApiError::from(sqlx::Error::PoolClosed).into_response();
        assert_eq!(other.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert!(other.headers().get(header::RETRY_AFTER).is_none());
    }

    #[test]
    fn a_path_parameter_is_read_where_the_route_names_it() {
        let route = "/orders/{order_id}/timeline";
        assert_eq!(
            path_parameter(route, "/orders/0193-ab/timeline", "order_id"),
            Some("0193-ab")
        );
        assert_eq!(
            path_parameter(route, "/orders/0193-ab/timeline", "sku"),
            None
        );
        assert_eq!(path_parameter("/orders", "/orders", "order_id"), None);
        assert_eq!(path_parameter("unmatched", "/orders/x", "order_id"), None);
    }

    #[test]
    fn path_segments_are_percent_encoded() {
        assert_eq!(
            path_segment("team/alice?x=1#é"),
            "team%2Falice%3Fx%3D1%23%C3%A9"
        );
        assert_eq!(path_segment("plain-Sku_1.0~"), "plain-Sku_1.0~");
    }

    #[tokio::test]
    async fn unknown_routes_and_methods_get_json_errors() {
        let app = with_common_layers(Router::new().route("/things", post(create)));
        let response = app
            .clone()
            .oneshot(Request::get("/nope").body(Body::empty()).unwrap())
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::NOT_FOUND);
        let response = app
            .oneshot(Request::get("/things").body(Body::empty()).unwrap())
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::METHOD_NOT_ALLOWED);
        let bytes = axum::body::to_bytes(response.into_body(), usize::MAX)
            .await
            .unwrap();
        let error: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(error["error"]["code"], "method_not_allowed");
    }

    #[test]
    fn an_idempotency_key_is_a_token_or_a_quoted_string_of_visible_ascii() {
        let key = |value: &str| {
            let mut headers = HeaderMap::new();
            headers.insert("idempotency-key", value.parse().unwrap());
            idempotency_key(&headers).map_err(|error| error.code)
        };
        assert_eq!(
            idempotency_key(&HeaderMap::new()).map_err(|e| e.code),
            Ok(None)
        );
        assert_eq!(key("abc-1"), Ok(Some("abc-1".to_owned())));
        assert_eq!(key(" \"abc-1\" "), Ok(Some("abc-1".to_owned())));
        assert_eq!(
            key(&"k".repeat(MAX_IDEMPOTENCY_KEY_CHARS)).map(|k| k.map(|k| k.len())),
            Ok(Some(255))
        );
        for bad in ["\"\"", "a b", &"k".repeat(MAX_IDEMPOTENCY_KEY_CHARS + 1)] {
            assert_eq!(key(bad), Err("invalid_idempotency_key".into()), "{bad:?}");
        }
    }

    #[test]
    fn page_limit_defaults_and_bounds() {
        assert_eq!(page_limit(None, 20, 100).unwrap(), 20);
        assert_eq!(page_limit(Some(1), 20, 100).unwrap(), 1);
        assert_eq!(page_limit(Some(100), 20, 100).unwrap(), 100);
        for out_of_range in [0, -1, 101, i64::MAX] {
            let error = page_limit(Some(out_of_range), 20, 100).unwrap_err();
            assert_eq!(
                error.to_string(),
                "400 invalid_query: limit must be between 1 and 100"
            );
        }
    }
}
