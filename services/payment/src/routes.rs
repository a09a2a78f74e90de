//! The payment API: open accounts, deposit into them, read their balance (now or at a past
//! moment) and their ledger, read an order's payment.

use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use chrono::{DateTime, SecondsFormat, Utc};
use serde::{Deserialize, Serialize};
use shared::http::{
    self, check_length, idempotency_key, path_segment, ApiError, ValidJson, ValidPath, ValidQuery,
    Validate,
};
use sqlx::PgPool;
use uuid::Uuid;

use crate::accounts::{self, LedgerRow, WriteError};
use crate::ledger::{self, LedgerError, MAX_BALANCE_CENTS};

pub fn router(pool: PgPool) -> Router {
    Router::new()
        .route("/accounts", post(open_account))
        .route("/accounts/{customer_id}", get(get_account))
        .route("/accounts/{customer_id}/deposits", post(deposit))
        .route("/accounts/{customer_id}/ledger", get(get_ledger))
        .route("/payments/{order_id}", get(get_payment))
        .with_state(pool)
}

const MAX_CUSTOMER_ID_CHARS: usize = 64;
/// The largest single deposit.
const MAX_DEPOSIT_CENTS: i64 = MAX_BALANCE_CENTS;
const DEFAULT_PAGE_SIZE: i64 = 20;
const MAX_PAGE_SIZE: i64 = 100;

#[derive(Debug, Serialize)]
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

fn account_not_found(customer_id: &str) -> ApiError {
    ApiError::not_found(
        "account_not_found",
        format!("no account for customer {customer_id}"),
    )
}

fn version_conflict(error: WriteError) -> ApiError {
    match error {
        WriteError::Conflict { .. } => {
            ApiError::conflict("version_conflict", format!("{error}; retry the request"))
        }
        WriteError::Database(error) => error.into(),
    }
}

/// Opens the account with its first ledger entry (`OPENED`).
async fn open_account(
    State(pool): State<PgPool>,
    ValidJson(account): ValidJson<NewAccount>,
) -> Result<Response, ApiError> {
    let opened = ledger::open(account.balance_cents)
        .map_err(|error| ApiError::invalid(error.to_string()))?;
    let mut tx = pool.begin().await?;
    let created = accounts::open(&mut tx, &account.customer_id, &opened, Uuid::now_v7())
        .await?
        .ok_or_else(|| {
            ApiError::conflict(
                "account_exists",
                format!("customer {} already has an account", account.customer_id),
            )
        })?;
    tx.commit().await?;
    let location = format!("/accounts/{}", path_segment(&account.customer_id));
    let body = Account {
        customer_id: account.customer_id,
        balance_cents: created.balance_after_cents,
    };
    Ok((
        StatusCode::CREATED,
        [(header::LOCATION, location)],
        Json(body),
    )
        .into_response())
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct AccountQuery {
    /// An RFC 3339 time: the balance at that moment, from the ledger.
    as_of: Option<String>,
}

/// The balance at a past moment: the running balance of the last entry written by then.
#[derive(Debug, Serialize)]
struct BalanceAsOf {
    customer_id: String,
    balance_cents: i64,
    as_of: DateTime<Utc>,
    /// The last ledger entry at that moment.
    version: i64,
}

async fn get_account(
    State(pool): State<PgPool>,
    ValidPath(customer_id): ValidPath<String>,
    ValidQuery(query): ValidQuery<AccountQuery>,
) -> Result<Response, ApiError> {
    let Some(as_of) = query.as_of else {
        let head = accounts::head(&pool, &customer_id)
            .await?
            .ok_or_else(|| account_not_found(&customer_id))?;
        let account = Account {
            customer_id,
            balance_cents: head.balance_cents,
        };
        return Ok(Json(account).into_response());
    };
    let as_of = DateTime::parse_from_rfc3339(&as_of)
        .map_err(|_| {
            ApiError::bad_request(
                "invalid_query",
                "as_of must be an RFC 3339 time such as 2026-01-31T12:00:00Z \
                 (a + in an offset is sent as %2B)",
            )
        })?
        .with_timezone(&Utc);
    let mut tx = pool.begin().await?;
    if accounts::head(&mut *tx, &customer_id).await?.is_none() {
        return Err(account_not_found(&customer_id));
    }
    let Some(entry) = accounts::entry_as_of(&mut *tx, &customer_id, as_of).await? else {
        let opened = accounts::entry(&mut *tx, &customer_id, 1)
            .await?
            .map_or_else(|| "later".to_owned(), |entry| utc(entry.occurred_at));
        return Err(ApiError::not_found(
            "account_not_open",
            format!(
                "customer {customer_id} had no account at {}: its ledger starts at {opened}",
                utc(as_of)
            ),
        ));
    };
    Ok(Json(BalanceAsOf {
        customer_id,
        balance_cents: entry.balance_after_cents,
        as_of,
        version: entry.version,
    })
    .into_response())
}

fn utc(time: DateTime<Utc>) -> String {
    time.to_rfc3339_opts(SecondsFormat::AutoSi, true)
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Deposit {
    amount_cents: i64,
}

impl Validate for Deposit {
    fn validate(&self) -> Result<(), ApiError> {
        if !(1..=MAX_DEPOSIT_CENTS).contains(&self.amount_cents) {
            return Err(ApiError::invalid(format!(
                "amount_cents must be between 1 and {MAX_DEPOSIT_CENTS}"
            )));
        }
        Ok(())
    }
}

/// A ledger entry of one account, as `POST .../deposits` answers.
#[derive(Debug, Serialize)]
struct Deposited {
    customer_id: String,
    #[serde(flatten)]
    entry: LedgerRow,
}

fn deposited(customer_id: String, entry: LedgerRow) -> Response {
    (StatusCode::CREATED, Json(Deposited { customer_id, entry })).into_response()
}

/// Appends a `DEPOSITED` entry. With an Idempotency-Key (scoped to the customer), a retry with
/// the same body gets the first answer and deposits nothing; a different body is 422.
async fn deposit(
    State(pool): State<PgPool>,
    ValidPath(customer_id): ValidPath<String>,
    headers: HeaderMap,
    ValidJson(request): ValidJson<Deposit>,
) -> Result<Response, ApiError> {
    let key = idempotency_key(&headers)?;
    let request_json =
        serde_json::to_value(&request).map_err(|_| ApiError::invalid("unserializable request"))?;
    let mut tx = pool.begin().await?;
    // The account's lock orders deposits, so a retry waits for the first to commit.
    let head = accounts::lock(&mut tx, &customer_id)
        .await?
        .ok_or_else(|| account_not_found(&customer_id))?;
    if let Some(key) = &key {
        if let Some((first_request, version)) =
            accounts::find_deposit_key(&mut tx, &customer_id, key).await?
        {
            if first_request != request_json {
                return Err(ApiError::new(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "idempotency_key_reused",
                    "this Idempotency-Key was used with a different request body",
                ));
            }
            let entry = accounts::entry(&mut *tx, &customer_id, version)
                .await?
                .ok_or_else(|| ApiError::conflict("idempotency_key_in_use", "retry the request"))?;
            return Ok(deposited(customer_id, entry));
        }
    }
    let entry = head
        .deposit(request.amount_cents)
        .map_err(|error| match error {
            LedgerError::Limit => ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "balance_limit_exceeded",
                format!(
                    "a deposit of {} cents would take the balance of {} cents beyond \
                 {MAX_BALANCE_CENTS} cents",
                    request.amount_cents, head.balance_cents
                ),
            ),
            error => ApiError::invalid(error.to_string()),
        })?;
    let mut rows = accounts::append(&mut tx, &customer_id, head, &[entry], Uuid::now_v7())
        .await
        .map_err(version_conflict)?;
    let row = rows.pop().ok_or_else(|| {
        ApiError::conflict("version_conflict", "the deposit was not recorded; retry")
    })?;
    if let Some(key) = &key {
        if !accounts::claim_deposit_key(&mut tx, &customer_id, key, &request_json, row.version)
            .await?
        {
            tx.rollback().await?;
            return Err(ApiError::conflict(
                "idempotency_key_in_use",
                "retry the request",
            ));
        }
    }
    tx.commit().await?;
    tracing::info!(customer_id, version = row.version, "deposit recorded");
    Ok(deposited(customer_id, row))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct LedgerQuery {
    limit: Option<i64>,
    /// The version after which the page starts (a page's `next_cursor`).
    cursor: Option<i64>,
}

#[derive(Debug, Serialize)]
struct LedgerPage {
    customer_id: String,
    /// In version order, each with the running balance.
    entries: Vec<LedgerRow>,
    /// Pass as `cursor` for the next page; `null` on the last one.
    next_cursor: Option<i64>,
}

async fn get_ledger(
    State(pool): State<PgPool>,
    ValidPath(customer_id): ValidPath<String>,
    ValidQuery(query): ValidQuery<LedgerQuery>,
) -> Result<Json<LedgerPage>, ApiError> {
    let limit = http::page_limit(query.limit, DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE)?;
    let cursor = query.cursor.unwrap_or(0);
    if cursor < 0 {
        return Err(ApiError::bad_request(
            "invalid_query",
            "cursor must be a next_cursor this endpoint returned",
        ));
    }
    // One snapshot: the account and its entries as of the same moment.
    let mut tx = pool.begin().await?;
    sqlx::query("set transaction isolation level repeatable read, read only")
        .execute(&mut *tx)
        .await?;
    if accounts::head(&mut *tx, &customer_id).await?.is_none() {
        return Err(account_not_found(&customer_id));
    }
    let mut entries = accounts::entries(&mut *tx, &customer_id, cursor, limit + 1).await?;
    tx.commit().await?;
    let next_cursor = if entries.len() as i64 > limit {
        entries.truncate(limit as usize);
        entries.last().map(|entry| entry.version)
    } else {
        None
    };
    Ok(Json(LedgerPage {
        customer_id,
        entries,
        next_cursor,
    }))
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
