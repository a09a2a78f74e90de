//! The inventory API: create, read, list and restock products. A creation or restock
//! publishes the product's new state (`crate::catalog`) in its transaction.

use axum::extract::{FromRef, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use shared::http::{
    self, check_length, path_segment, ApiError, ValidJson, ValidPath, ValidQuery, Validate,
};
use shared::outbox::OutboxSignal;
use shared::state::ProductState;
use sqlx::PgPool;

use crate::catalog::{self, STATE_COLUMNS};

pub fn router(pool: PgPool, outbox: OutboxSignal) -> Router {
    Router::new()
        .route("/products", post(create_product).get(list_products))
        .route("/products/{sku}", get(get_product))
        .route("/products/{sku}/restock", post(restock))
        .with_state(AppState { pool, outbox })
}

/// The database, and the signal that wakes the outbox relay.
#[derive(Clone)]
struct AppState {
    pool: PgPool,
    outbox: OutboxSignal,
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

const MAX_SKU_CHARS: usize = 64;
const MAX_NAME_CHARS: usize = 200;
const MAX_PRICE_CENTS: i64 = 1_000_000_000;
const MAX_STOCK: i32 = 1_000_000;
const DEFAULT_PAGE_SIZE: i64 = 50;
const MAX_PAGE_SIZE: i64 = 500;

#[derive(Debug, Serialize, sqlx::FromRow)]
struct Product {
    sku: String,
    name: String,
    price_cents: i64,
    available: i32,
    reserved: i32,
    sold: i32,
}

const PRODUCT_COLUMNS: &str = "sku, name, price_cents, available, reserved, sold";

impl From<&ProductState> for Product {
    fn from(state: &ProductState) -> Self {
        Product {
            sku: state.sku.clone(),
            name: state.name.clone(),
            price_cents: state.price_cents,
            available: state.available,
            reserved: state.reserved,
            sold: state.sold,
        }
    }
}

/// Publishes the product a change returned (in `tx`), commits, and wakes the relay.
async fn publish_and_commit(
    mut tx: sqlx::Transaction<'_, sqlx::Postgres>,
    outbox: &OutboxSignal,
    state: ProductState,
) -> Result<Product, ApiError> {
    catalog::publish(&mut tx, std::slice::from_ref(&state)).await?;
    tx.commit().await?;
    outbox.committed();
    Ok(Product::from(&state))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct NewProduct {
    sku: String,
    name: String,
    price_cents: i64,
    stock: i32,
}

fn check_sku(sku: &str) -> Result<(), ApiError> {
    check_length("sku", sku, MAX_SKU_CHARS)?;
    let starts_alphanumeric = sku
        .bytes()
        .next()
        .is_some_and(|byte| byte.is_ascii_alphanumeric());
    if !starts_alphanumeric
        || !sku
            .bytes()
            .all(|byte| byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'_' | b'.'))
    {
        return Err(ApiError::invalid(
            "sku must start with a letter or digit and hold only letters, digits, '-', '_' and '.'",
        ));
    }
    Ok(())
}

impl Validate for NewProduct {
    fn validate(&self) -> Result<(), ApiError> {
        check_sku(&self.sku)?;
        check_length("name", &self.name, MAX_NAME_CHARS)?;
        if !(0..=MAX_PRICE_CENTS).contains(&self.price_cents) {
            return Err(ApiError::invalid(format!(
                "price_cents must be between 0 and {MAX_PRICE_CENTS}"
            )));
        }
        if !(0..=MAX_STOCK).contains(&self.stock) {
            return Err(ApiError::invalid(format!(
                "stock must be between 0 and {MAX_STOCK}"
            )));
        }
        Ok(())
    }
}

async fn create_product(
    State(pool): State<PgPool>,
    State(outbox): State<OutboxSignal>,
    ValidJson(product): ValidJson<NewProduct>,
) -> Result<Response, ApiError> {
    let mut tx = pool.begin().await?;
    let created: Option<ProductState> = sqlx::query_as(&format!(
        "insert into products (sku, name, price_cents, available) values ($1, $2, $3, $4)
         on conflict (sku) do nothing returning {STATE_COLUMNS}"
    ))
    .bind(&product.sku)
    .bind(&product.name)
    .bind(product.price_cents)
    .bind(product.stock)
    .fetch_optional(&mut *tx)
    .await?;
    let created = created.ok_or_else(|| {
        ApiError::conflict(
            "product_exists",
            format!("product {} already exists", product.sku),
        )
    })?;
    let created = publish_and_commit(tx, &outbox, created).await?;
    let location = format!("/products/{}", path_segment(&created.sku));
    Ok((
        StatusCode::CREATED,
        [(header::LOCATION, location)],
        Json(created),
    )
        .into_response())
}

async fn find(pool: &PgPool, sku: &str) -> Result<Product, ApiError> {
    sqlx::query_as(&format!(
        "select {PRODUCT_COLUMNS} from products where sku = $1"
    ))
    .bind(sku)
    .fetch_optional(pool)
    .await?
    .ok_or_else(|| ApiError::not_found("product_not_found", format!("no product {sku}")))
}

async fn get_product(
    State(pool): State<PgPool>,
    ValidPath(sku): ValidPath<String>,
) -> Result<Json<Product>, ApiError> {
    find(&pool, &sku).await.map(Json)
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Restock {
    quantity: i32,
}

impl Validate for Restock {
    fn validate(&self) -> Result<(), ApiError> {
        if !(1..=MAX_STOCK).contains(&self.quantity) {
            return Err(ApiError::invalid(format!(
                "quantity must be between 1 and {MAX_STOCK}"
            )));
        }
        Ok(())
    }
}

async fn restock(
    State(pool): State<PgPool>,
    State(outbox): State<OutboxSignal>,
    ValidPath(sku): ValidPath<String>,
    ValidJson(restock): ValidJson<Restock>,
) -> Result<Json<Product>, ApiError> {
    let mut tx = pool.begin().await?;
    let updated: Option<ProductState> = sqlx::query_as(&format!(
        "update products set available = available + $2, version = version + 1, updated_at = now()
         where sku = $1 and available + $2 <= {MAX_STOCK} returning {STATE_COLUMNS}"
    ))
    .bind(&sku)
    .bind(restock.quantity)
    .fetch_optional(&mut *tx)
    .await?;
    match updated {
        Some(product) => publish_and_commit(tx, &outbox, product).await.map(Json),
        None => {
            drop(tx);
            find(&pool, &sku).await?;
            Err(ApiError::invalid(format!(
                "available stock may not exceed {MAX_STOCK}"
            )))
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ListQuery {
    limit: Option<i64>,
    cursor: Option<String>,
}

#[derive(Serialize)]
struct ProductPage {
    products: Vec<Product>,
    /// Pass as `cursor` to get the next page; `null` on the last page.
    next_cursor: Option<String>,
}

async fn list_products(
    State(pool): State<PgPool>,
    ValidQuery(query): ValidQuery<ListQuery>,
) -> Result<Json<ProductPage>, ApiError> {
    let limit = http::page_limit(query.limit, DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE)?;
    let products: Vec<Product> = sqlx::query_as(&format!(
        "select {PRODUCT_COLUMNS} from products where ($1::text is null or sku > $1) order by sku limit $2"
    ))
    .bind(query.cursor)
    .bind(limit)
    .fetch_all(&pool)
    .await?;
    let next_cursor = if products.len() as i64 == limit {
        products.last().map(|product| product.sku.clone())
    } else {
        None
    };
    Ok(Json(ProductPage {
        products,
        next_cursor,
    }))
}
