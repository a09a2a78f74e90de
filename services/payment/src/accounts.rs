//! Accounts and their ledgers in PostgreSQL. Every change to a balance goes through
//! [`open`] or [`append`]: the entries the domain decided are inserted at the next versions
//! and the `accounts` snapshot moves to the new head, in the caller's transaction (the one
//! that also writes the effect and its outbox rows). Two writers from the same head conflict:
//! the second insert of a version fails on the primary key, or its snapshot update finds the
//! version moved, and [`WriteError::Conflict`] fails its transaction.

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::{PgConnection, PgExecutor};
use uuid::Uuid;

use crate::ledger::{Entry, EntryKind, Head};

/// A stored ledger entry, as the API shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, sqlx::FromRow)]
pub struct LedgerRow {
    pub version: i64,
    pub kind: String,
    /// What the entry adds to the balance (negative for a charge).
    pub amount_cents: i64,
    /// The running balance: the fold of every entry up to this one.
    pub balance_after_cents: i64,
    pub order_id: Option<Uuid>,
    /// The consumed event's id, or the id generated for the HTTP command or worker run.
    pub causation_id: Uuid,
    pub occurred_at: DateTime<Utc>,
}

impl LedgerRow {
    /// The entry as the domain knows it (`None` if its kind is unknown).
    pub fn entry(&self) -> Option<Entry> {
        Some(Entry {
            version: self.version,
            kind: EntryKind::parse(&self.kind)?,
            amount_cents: self.amount_cents,
            balance_after_cents: self.balance_after_cents,
            order_id: self.order_id,
        })
    }
}

/// Why entries were not appended.
#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    /// Another writer appended to this ledger first: retry from its new head.
    #[error("the ledger of customer {customer_id} moved past version {version}")]
    Conflict { customer_id: String, version: i64 },
    #[error(transparent)]
    Database(#[from] sqlx::Error),
}

const LEDGER_COLUMNS: &str =
    "version, kind, amount_cents, balance_after_cents, order_id, causation_id, occurred_at";

/// Locks the account's snapshot (`for update`) and returns its head; `None`: no account.
pub async fn lock(conn: &mut PgConnection, customer_id: &str) -> Result<Option<Head>, sqlx::Error> {
    let head: Option<(i64, i64)> = sqlx::query_as(
        "select version, balance_cents from accounts where customer_id = $1 for update",
    )
    .bind(customer_id)
    .fetch_optional(conn)
    .await?;
    Ok(head.map(|(version, balance_cents)| Head {
        version,
        balance_cents,
    }))
}

/// Opens the account with its first entry (`OPENED`, version 1); `None` if it exists.
pub async fn open(
    conn: &mut PgConnection,
    customer_id: &str,
    opened: &Entry,
    causation_id: Uuid,
) -> Result<Option<LedgerRow>, sqlx::Error> {
    let created: Option<String> = sqlx::query_scalar(
        "insert into accounts (customer_id, balance_cents, version) values ($1, $2, $3)
         on conflict (customer_id) do nothing returning customer_id",
    )
    .bind(customer_id)
    .bind(opened.balance_after_cents)
    .bind(opened.version)
    .fetch_optional(&mut *conn)
    .await?;
    if created.is_none() {
        return Ok(None);
    }
    insert(conn, customer_id, opened, causation_id)
        .await
        .map(Some)
}

/// Appends `entries` (numbered after `before` by [`Head::append`]) and moves the snapshot to
/// the last one. `causation_id`: what caused them.
pub async fn append(
    conn: &mut PgConnection,
    customer_id: &str,
    before: Head,
    entries: &[Entry],
    causation_id: Uuid,
) -> Result<Vec<LedgerRow>, WriteError> {
    let conflict = || WriteError::Conflict {
        customer_id: customer_id.to_owned(),
        version: before.version,
    };
    let mut rows = Vec::with_capacity(entries.len());
    for entry in entries {
        match insert(conn, customer_id, entry, causation_id).await {
            Ok(row) => rows.push(row),
            Err(error) if is_version_taken(&error) => return Err(conflict()),
            Err(error) => return Err(error.into()),
        }
    }
    let head = before.after(entries);
    if head != before {
        let moved = sqlx::query(
            "update accounts set balance_cents = $3, version = $4, updated_at = now()
             where customer_id = $1 and version = $2",
        )
        .bind(customer_id)
        .bind(before.version)
        .bind(head.balance_cents)
        .bind(head.version)
        .execute(&mut *conn)
        .await?
        .rows_affected();
        if moved != 1 {
            return Err(conflict());
        }
    }
    Ok(rows)
}

/// Inserts one entry. Its time is the clock's when it is written, never before its
/// predecessor's, so versions and times go up together.
async fn insert(
    conn: &mut PgConnection,
    customer_id: &str,
    entry: &Entry,
    causation_id: Uuid,
) -> Result<LedgerRow, sqlx::Error> {
    sqlx::query_as(&format!(
        "insert into ledger_entries
             (customer_id, version, kind, amount_cents, balance_after_cents, order_id, causation_id, occurred_at)
         values ($1, $2, $3, $4, $5, $6, $7, greatest(clock_timestamp(),
             (select occurred_at from ledger_entries where customer_id = $1 and version = $2 - 1)))
         returning {LEDGER_COLUMNS}"
    ))
    .bind(customer_id)
    .bind(entry.version)
    .bind(entry.kind.as_str())
    .bind(entry.amount_cents)
    .bind(entry.balance_after_cents)
    .bind(entry.order_id)
    .bind(causation_id)
    .fetch_one(conn)
    .await
}

fn is_version_taken(error: &sqlx::Error) -> bool {
    error.as_database_error().is_some_and(|error| {
        error.is_unique_violation() && error.constraint() == Some("ledger_entries_pkey")
    })
}

/// The account's balance and version as its snapshot holds them.
pub async fn head<'c>(
    executor: impl PgExecutor<'c>,
    customer_id: &str,
) -> Result<Option<Head>, sqlx::Error> {
    let head: Option<(i64, i64)> =
        sqlx::query_as("select version, balance_cents from accounts where customer_id = $1")
            .bind(customer_id)
            .fetch_optional(executor)
            .await?;
    Ok(head.map(|(version, balance_cents)| Head {
        version,
        balance_cents,
    }))
}

/// Up to `limit` entries after version `after`, in version order.
pub async fn entries<'c>(
    executor: impl PgExecutor<'c>,
    customer_id: &str,
    after: i64,
    limit: i64,
) -> Result<Vec<LedgerRow>, sqlx::Error> {
    sqlx::query_as(&format!(
        "select {LEDGER_COLUMNS} from ledger_entries
         where customer_id = $1 and version > $2 order by version limit $3"
    ))
    .bind(customer_id)
    .bind(after)
    .bind(limit)
    .fetch_all(executor)
    .await
}

/// The entry at `version`.
pub async fn entry<'c>(
    executor: impl PgExecutor<'c>,
    customer_id: &str,
    version: i64,
) -> Result<Option<LedgerRow>, sqlx::Error> {
    sqlx::query_as(&format!(
        "select {LEDGER_COLUMNS} from ledger_entries where customer_id = $1 and version = $2"
    ))
    .bind(customer_id)
    .bind(version)
    .fetch_optional(executor)
    .await
}

/// The last entry written at or before `at`: the balance at that moment is its running
/// balance. `None`: the ledger had no entry yet.
pub async fn entry_as_of<'c>(
    executor: impl PgExecutor<'c>,
    customer_id: &str,
    at: DateTime<Utc>,
) -> Result<Option<LedgerRow>, sqlx::Error> {
    sqlx::query_as(&format!(
        "select {LEDGER_COLUMNS} from ledger_entries
         where customer_id = $1 and occurred_at <= $2
         order by occurred_at desc, version desc limit 1"
    ))
    .bind(customer_id)
    .bind(at)
    .fetch_optional(executor)
    .await
}

/// The request and ledger version a customer's deposit Idempotency-Key was first used for.
pub async fn find_deposit_key(
    conn: &mut PgConnection,
    customer_id: &str,
    key: &str,
) -> Result<Option<(serde_json::Value, i64)>, sqlx::Error> {
    sqlx::query_as(
        "select request, version from deposit_idempotency_keys
         where customer_id = $1 and idempotency_key = $2",
    )
    .bind(customer_id)
    .bind(key)
    .fetch_optional(conn)
    .await
}

/// Stores a customer's deposit Idempotency-Key; `false` means it was already taken.
pub async fn claim_deposit_key(
    conn: &mut PgConnection,
    customer_id: &str,
    key: &str,
    request: &serde_json::Value,
    version: i64,
) -> Result<bool, sqlx::Error> {
    let inserted = sqlx::query(
        "insert into deposit_idempotency_keys (customer_id, idempotency_key, request, version)
         values ($1, $2, $3, $4)
         on conflict (customer_id, idempotency_key) do nothing",
    )
    .bind(customer_id)
    .bind(key)
    .bind(request)
    .bind(version)
    .execute(conn)
    .await?
    .rows_affected();
    Ok(inserted == 1)
}
