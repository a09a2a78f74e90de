//! The payment API: open and read accounts, read an order's payment.

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use shared::http::{check_length, path_segment, ApiError, ValidJson, ValidPath, Validate};
use sqlx::PgPool;
use uuid::Uuid;

pub fn router(pool: PgPool) -> Router {
    Router::new()
        .route("/accounts", post(open_account))
        .route("/accounts/{customer_id}", get(get_account))
        .route("/payments/{order_id}", get(get_payment))
        .with_state(pool)
}

const MAX_CUSTOMER_ID_CHARS: usize = 64;
const MAX_BALANCE_CENTS: i64 = 1_000_000_000_000;

#[derive(Debug, Serialize, sqlx::FromRow)]
struct Account {
    customer_id: String,
    balance_cents: i64,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct NewAccount {
    customer_id: String,
    balance_cents: i64,
}

impl Validate for NewAccount {
    fn validate(&self) -> Result<(), ApiError> {
        check_length("customer_id", &self.customer_id, MAX_CUSTOMER_ID_CHARS)?;
        if !(0..=MAX_BALANCE_CENTS).contains(&self.balance_cents) {
            return Err(ApiError::invalid(format!(
                "balance_cents must be between 0 and {MAX_BALANCE_CENTS}"
            )));
        }
        Ok(())
    }
}

async fn open_account(
    State(pool): State<PgPool>,
    ValidJson(account): ValidJson<NewAccount>,
) -> Result<Response, ApiError> {
    let created: Option<Account> = sqlx::query_as(
        "insert into accounts (customer_id, balance_cents) values ($1, $2)
         on conflict (customer_id) do nothing returning customer_id, balance_cents",
    )
    .bind(&account.customer_id)
    .bind(account.balance_cents)
    .fetch_optional(&pool)
    .await?;
    let created = created.ok_or_else(|| {
        ApiError::conflict(
            "account_exists",
            format!("customer {} already has an account", account.customer_id),
        )
    })?;
    let location = format!("/accounts/{}", path_segment(&created.customer_id));
    Ok((
        StatusCode::CREATED,
        [(header::LOCATION, location)],
        Json(created),
    )
        .into_response())
}

async fn get_account(
    State(pool): State<PgPool>,
    ValidPath(customer_id): ValidPath<String>,
) -> Result<Json<Account>, ApiError> {
    sqlx::query_as("select customer_id, balance_cents from accounts where customer_id = $1")
        .bind(&customer_id)
        .fetch_optional(&pool)
        .await?
        .map(Json)
        .ok_or_else(|| {
            ApiError::not_found(
                "account_not_found",
                format!("no account for customer {customer_id}"),
            )
        })
}

#[derive(Debug, Serialize, sqlx::FromRow)]
struct Payment {
    order_id: Uuid,
    customer_id: Option<String>,
    status: String,
    amount_cents: i64,
    /// Why it was declined (`no_account`, `insufficient_funds`).
    reason: Option<String>,
}

async fn get_payment(
    State(pool): State<PgPool>,
    ValidPath(order_id): ValidPath<Uuid>,
) -> Result<Json<Payment>, ApiError> {
    sqlx::query_as("select order_id, customer_id, status, amount_cents, reason from payments where order_id = $1 and status <> 'VOIDED'")
        .bind(order_id)
        .fetch_optional(&pool)
        .await?
        .map(Json)
        .ok_or_else(|| ApiError::not_found("payment_not_found", format!("no payment for order {order_id}")))
}
