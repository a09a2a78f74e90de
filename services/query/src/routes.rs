//! The read API: order views, lists of them and customer views. Every response carries
//! `as_of`: the offsets and the latest event time the views reflect (docs/QUERY.md).

use axum::extract::State;
use axum::routing::get;
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use shared::http::{self, ApiError, ValidPath, ValidQuery};
use sqlx::PgPool;
use uuid::Uuid;

use crate::projection::Status;
use crate::views::{self, AsOf, CustomerView, Filter, OrderResponse};

const DEFAULT_PAGE_SIZE: i64 = 50;
const MAX_PAGE_SIZE: i64 = 500;
const MAX_ID_CHARS: usize = 64;

pub fn router(pool: PgPool) -> Router {
    Router::new()
        .route("/views/orders", get(list_orders))
        .route("/views/orders/{order_id}", get(get_order))
        .route("/views/customers/{customer_id}", get(get_customer))
        .with_state(pool)
}

#[derive(Serialize)]
struct OrderBody {
    #[serde(flatten)]
    order: OrderResponse,
    as_of: AsOf,
}

async fn get_order(
    State(pool): State<PgPool>,
    ValidPath(order_id): ValidPath<Uuid>,
) -> Result<Json<OrderBody>, ApiError> {
    // Read before the view: the view is at least as new as the offsets it is served with.
    let as_of = views::as_of(&pool).await?;
    let order = views::order(&pool, order_id).await?.ok_or_else(|| {
        ApiError::not_found(
            "order_not_found",
            format!("no event of order {order_id} has been seen (yet)"),
        )
    })?;
    Ok(Json(OrderBody { order, as_of }))
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
    orders: Vec<OrderResponse>,
    /// Pass as `cursor` to get the next page; `null` on the last page.
    next_cursor: Option<Uuid>,
    as_of: AsOf,
}

async fn list_orders(
    State(pool): State<PgPool>,
    ValidQuery(query): ValidQuery<ListQuery>,
) -> Result<Json<OrderPage>, ApiError> {
    let status = query
        .status
        .as_deref()
        .map(|status| {
            Status::parse(status).ok_or_else(|| {
                ApiError::bad_request(
                    "invalid_query",
                    "status must be PENDING, CONFIRMED, CANCELLED or FAILED",
                )
            })
        })
        .transpose()?;
    if let Some(customer_id) = &query.customer_id {
        check_id(customer_id)?;
    }
    let limit = http::page_limit(query.limit, DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE)?;
    let filter = Filter {
        customer_id: query.customer_id,
        status,
        limit,
        after: query.cursor,
    };
    let as_of = views::as_of(&pool).await?;
    let (orders, next_cursor) = views::list(&pool, &filter).await?;
    Ok(Json(OrderPage {
        orders,
        next_cursor,
        as_of,
    }))
}

#[derive(Serialize)]
struct CustomerBody {
    #[serde(flatten)]
    customer: CustomerView,
    as_of: AsOf,
}

async fn get_customer(
    State(pool): State<PgPool>,
    ValidPath(customer_id): ValidPath<String>,
) -> Result<Json<CustomerBody>, ApiError> {
    check_id(&customer_id).map_err(|_| {
        ApiError::bad_request("invalid_path", "customer_id must be 1 to 64 characters")
    })?;
    let as_of = views::as_of(&pool).await?;
    let customer = views::customer(&pool, &customer_id).await?.ok_or_else(|| {
        ApiError::not_found(
            "customer_not_found",
            format!("no order of customer {customer_id} has been seen (yet)"),
        )
    })?;
    Ok(Json(CustomerBody { customer, as_of }))
}

fn check_id(id: &str) -> Result<(), ApiError> {
    let chars = id.chars().count();
    if chars == 0 || chars > MAX_ID_CHARS {
        return Err(ApiError::bad_request(
            "invalid_query",
            format!("customer_id must be 1 to {MAX_ID_CHARS} characters"),
        ));
    }
    Ok(())
}
