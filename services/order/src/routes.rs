//! The order API: place, read, list and cancel orders, and read a saga's timeline. A new
//! order's lines carry the name and price the catalog replica lists (`crate::catalog`).

use std::collections::HashSet;

use axum::extract::{FromRef, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use shared::events::{OrderCreated, OrderLine, ShippingAddress};
use shared::http::{
    self, check_length, idempotency_key, ApiError, ValidJson, ValidPath, ValidQuery, Validate,
};
use shared::outbox::OutboxSignal;
use sqlx::PgPool;
use uuid::Uuid;

use crate::admission::Admission;
use crate::catalog::{Catalog, Decision};
use crate::domain::{OrderStatus, SagaEvent};
use crate::handler::{advance, emit};
use crate::repository::{self, Order, OrderFilter, OrderItem};

pub fn router(
    pool: PgPool,
    outbox: OutboxSignal,
    admission: Admission,
    catalog: Catalog,
) -> Router {
    Router::new()
        .route("/orders", post(place_order).get(list_orders))
        .route("/orders/{order_id}", get(get_order))
        .route("/orders/{order_id}/timeline", get(get_timeline))
        .route("/orders/{order_id}/cancel", post(cancel_order))
        .with_state(AppState {
            pool,
            outbox,
            admission,
            catalog,
        })
}

/// What the handlers share: the database, the signal that wakes the outbox relay, the
/// bounds on new orders and the catalog replica.
#[derive(Clone)]
struct AppState {
    pool: PgPool,
    outbox: OutboxSignal,
    admission: Admission,
    catalog: Catalog,
}

impl FromRef<AppState> for Catalog {
    fn from_ref(state: &AppState) -> Self {
        state.catalog.clone()
    }
}

impl FromRef<AppState> for Admission {
    fn from_ref(state: &AppState) -> Self {
        state.admission.clone()
    }
}

impl FromRef<AppState> for PgPool {
    fn from_ref(state: &AppState) -> Self {
        state.pool.clone()
    }
}

impl FromRef<AppState> for OutboxSignal {
    fn from_ref(state: &AppState) -> Self {
        state.outbox.clone()
    }
}

const MAX_ID_CHARS: usize = 64;
const MAX_ADDRESS_FIELD_CHARS: usize = 200;
const MAX_LINES: usize = 50;
const MAX_QUANTITY: i32 = 1_000;
const DEFAULT_PAGE_SIZE: i64 = 20;
const MAX_PAGE_SIZE: i64 = 100;

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct PlaceOrder {
    customer_id: String,
    items: Vec<LineRequest>,
    shipping_address: AddressRequest,
}

/// A line as the API takes it: strict, unlike the event that carries it on.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct LineRequest {
    sku: String,
    quantity: i32,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct AddressRequest {
    country: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    line1: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    line2: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    city: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    region: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    postal_code: Option<String>,
}

impl Validate for PlaceOrder {
    fn validate(&self) -> Result<(), ApiError> {
        check_length("customer_id", &self.customer_id, MAX_ID_CHARS)?;
        if self.items.is_empty() || self.items.len() > MAX_LINES {
            return Err(ApiError::invalid(format!(
                "items must hold 1 to {MAX_LINES} lines"
            )));
        }
        let mut skus = HashSet::new();
        for (index, line) in self.items.iter().enumerate() {
            check_length(&format!("items[{index}].sku"), &line.sku, MAX_ID_CHARS)?;
            if !(1..=MAX_QUANTITY).contains(&line.quantity) {
                return Err(ApiError::invalid(format!(
                    "items[{index}].quantity must be between 1 and {MAX_QUANTITY}"
                )));
            }
            if !skus.insert(line.sku.as_str()) {
                return Err(ApiError::invalid(format!(
                    "items[{index}].sku {} appears twice; put the whole quantity on one line",
                    line.sku
                )));
            }
        }
        let address = &self.shipping_address;
        let country = &address.country;
        if country.len() != 2 || !country.bytes().all(|byte| byte.is_ascii_uppercase()) {
            return Err(ApiError::invalid(
                "shipping_address.country must be an ISO 3166-1 alpha-2 code such as \"FR\"",
            ));
        }
        let fields = [
            ("name", &address.name),
            ("line1", &address.line1),
            ("line2", &address.line2),
            ("city", &address.city),
            ("region", &address.region),
            ("postal_code", &address.postal_code),
        ];
        for (field, value) in fields {
            if let Some(value) = value {
                check_length(
                    &format!("shipping_address.{field}"),
                    value,
                    MAX_ADDRESS_FIELD_CHARS,
                )?;
            }
        }
        Ok(())
    }
}

impl AddressRequest {
    fn to_address(&self) -> ShippingAddress {
        let mut rest = match serde_json::to_value(self) {
            Ok(serde_json::Value::Object(map)) => map,
            _ => serde_json::Map::new(),
        };
        rest.remove("country");
        ShippingAddress {
            country: self.country.clone(),
            rest,
        }
    }
}

#[derive(Serialize)]
struct Accepted {
    order_id: Uuid,
    status: OrderStatus,
}

fn accepted(order_id: Uuid, status: OrderStatus) -> Response {
    let location = format!("/orders/{order_id}");
    (
        StatusCode::ACCEPTED,
        [(header::LOCATION, location)],
        Json(Accepted { order_id, status }),
    )
        .into_response()
}

async fn place_order(
    State(pool): State<PgPool>,
    State(outbox): State<OutboxSignal>,
    State(admission): State<Admission>,
    State(catalog): State<Catalog>,
    headers: HeaderMap,
    ValidJson(request): ValidJson<PlaceOrder>,
) -> Result<Response, ApiError> {
    let key = idempotency_key(&headers)?;
    let request_json =
        serde_json::to_value(&request).map_err(|_| ApiError::invalid("unserializable request"))?;
    // Before admission: a wait for the replica holds no in-flight slot (crate::catalog).
    let skus: Vec<&str> = request.items.iter().map(|line| line.sku.as_str()).collect();
    let (listings, decision) = catalog.check(&pool, &skus).await?;
    let _slot = admission.admit()?;
    if let Some(key) = &key {
        if let Some(response) = replay(&pool, &request.customer_id, key, &request_json).await? {
            return Ok(response);
        }
    }
    if let Decision::RejectUnknown(unknown) = decision {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "unknown_product",
            format!("no product {}", unknown.join(", ")),
        ));
    }
    let order_id = Uuid::now_v7();
    let address = request.shipping_address.to_address();
    let items: Vec<OrderItem> = request
        .items
        .iter()
        .map(|line| {
            let listing = listings.get(&line.sku);
            OrderItem {
                sku: line.sku.clone(),
                quantity: line.quantity,
                unit_price_cents: None,
                name: listing.map(|listing| listing.name.clone()),
                price_at_placement_cents: listing.map(|listing| listing.price_cents),
            }
        })
        .collect();
    let lines: Vec<OrderLine> = request
        .items
        .into_iter()
        .map(|line| OrderLine {
            sku: line.sku,
            quantity: line.quantity,
        })
        .collect();
    let mut tx = pool.begin().await?;
    repository::insert_order(&mut tx, order_id, &request.customer_id, &items, &address).await?;
    if let Some(key) = &key {
        // Blocks while a concurrent request with the same key is in flight, then loses to it.
        if !repository::claim_idempotency_key(
            &mut tx,
            &request.customer_id,
            key,
            &request_json,
            order_id,
        )
        .await?
        {
            tx.rollback().await?;
            return replay(&pool, &request.customer_id, key, &request_json)
                .await?
                .ok_or_else(|| ApiError::conflict("idempotency_key_in_use", "retry the request"));
        }
    }
    let created = OrderCreated {
        order_id,
        customer_id: request.customer_id,
        items: lines,
        shipping_address: address,
    };
    emit(&mut tx, order_id, None, &created).await?;
    tx.commit().await?;
    outbox.committed();
    admission.accepted();
    tracing::info!(%order_id, "order accepted");
    Ok(accepted(order_id, OrderStatus::Pending))
}

/// The response to a retry with a customer's known Idempotency-Key; 422 if the body differs.
async fn replay(
    pool: &PgPool,
    customer_id: &str,
    key: &str,
    request: &serde_json::Value,
) -> Result<Option<Response>, ApiError> {
    let Some((first_request, order_id)) =
        repository::find_idempotency_key(pool, customer_id, key).await?
    else {
        return Ok(None);
    };
    if &first_request != request {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "idempotency_key_reused",
            "this Idempotency-Key was used with a different request body",
        ));
    }
    let order = repository::find_order(pool, order_id)
        .await?
        .ok_or_else(|| ApiError::conflict("idempotency_key_in_use", "retry the request"))?;
    Ok(Some(accepted(order.order_id, order.status)))
}

async fn find(pool: &PgPool, order_id: Uuid) -> Result<Order, ApiError> {
    repository::find_order(pool, order_id)
        .await?
        .ok_or_else(|| ApiError::not_found("order_not_found", format!("no order {order_id}")))
}

async fn get_order(
    State(pool): State<PgPool>,
    ValidPath(order_id): ValidPath<Uuid>,
) -> Result<Json<Order>, ApiError> {
    find(&pool, order_id).await.map(Json)
}

#[derive(Serialize)]
struct Timeline {
    order_id: Uuid,
    status: OrderStatus,
    events: Vec<repository::TimelineEntry>,
}

async fn get_timeline(
    State(pool): State<PgPool>,
    ValidPath(order_id): ValidPath<Uuid>,
) -> Result<Json<Timeline>, ApiError> {
    let order = find(&pool, order_id).await?;
    let events = repository::timeline(&pool, order_id).await?;
    Ok(Json(Timeline {
        order_id,
        status: order.status,
        events,
    }))
}

async fn cancel_order(
    State(pool): State<PgPool>,
    State(outbox): State<OutboxSignal>,
    ValidPath(order_id): ValidPath<Uuid>,
) -> Result<Response, ApiError> {
    let mut tx = pool.begin().await?;
    let order = repository::lock_order(&mut tx, order_id)
        .await?
        .ok_or_else(|| ApiError::not_found("order_not_found", format!("no order {order_id}")))?;
    if order.status.is_terminal() {
        return Err(ApiError::conflict(
            "order_not_pending",
            format!("order {order_id} is already {}", order.status.as_str()),
        ));
    }
    let next = advance(&mut tx, &order, SagaEvent::CustomerCancelled, None).await?;
    tx.commit().await?;
    outbox.committed();
    tracing::info!(%order_id, "order cancelled by the customer");
    let body = serde_json::json!({
        "order_id": order_id,
        "status": next.status,
        "cancellation_reason": next.cancellation_reason,
    });
    Ok((StatusCode::ACCEPTED, Json(body)).into_response())
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ListQuery {
    customer_id: Option<String>,
    status: Option<String>,
    limit: Option<i64>,
    cursor: Option<Uuid>,
}

#[derive(Serialize)]
struct OrderPage {
    orders: Vec<Order>,
    /// Pass as `cursor` to get the next page; `null` on the last page.
    next_cursor: Option<Uuid>,
}

async fn list_orders(
    State(pool): State<PgPool>,
    ValidQuery(query): ValidQuery<ListQuery>,
) -> Result<Json<OrderPage>, ApiError> {
    let status = query
        .status
        .as_deref()
        .map(|status| {
            OrderStatus::parse(status).ok_or_else(|| {
                ApiError::bad_request(
                    "invalid_query",
                    "status must be PENDING, CONFIRMED, CANCELLED or FAILED",
                )
            })
        })
        .transpose()?;
    if let Some(customer_id) = &query.customer_id {
        if customer_id.chars().count() > MAX_ID_CHARS {
            return Err(ApiError::bad_request(
                "invalid_query",
                "customer_id is too long",
            ));
        }
    }
    let limit = http::page_limit(query.limit, DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE)?;
    let filter = OrderFilter {
        customer_id: query.customer_id.as_deref(),
        status,
        before: query.cursor,
        limit,
    };
    let orders = repository::list_orders(&pool, filter).await?;
    let next_cursor = if orders.len() as i64 == limit {
        orders.last().map(|order| order.order_id)
    } else {
        None
    };
    Ok(Json(OrderPage {
        orders,
        next_cursor,
    }))
}
