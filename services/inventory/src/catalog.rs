//! Publishes a product's current state (`shared::state::ProductState`) to the compacted topic
//! `inventory.products`, keyed by sku, through the outbox: in the transaction of every change
//! (created, restocked, reserved, released, sold), one record per product per transaction.
//! Inventory deletes no product, so it publishes no tombstone. Products that existed before
//! this record did were published once by migration 0004, in the format `emit_state` writes.

use chrono::{DateTime, Utc};
use shared::outbox;
use shared::state::ProductState;
use sqlx::PgConnection;

/// The columns of a [`ProductRow`], for `returning` clauses.
pub(crate) const STATE_COLUMNS: &str =
    "sku, name, price_cents, available, reserved, sold, version, updated_at";

/// A product as a change returns it.
#[derive(Debug, sqlx::FromRow)]
pub(crate) struct ProductRow {
    pub sku: String,
    pub name: String,
    pub price_cents: i64,
    pub available: i32,
    pub reserved: i32,
    pub sold: i32,
    pub version: i64,
    pub updated_at: DateTime<Utc>,
}

impl From<ProductRow> for ProductState {
    fn from(row: ProductRow) -> Self {
        ProductState {
            sku: row.sku,
            name: row.name,
            price_cents: row.price_cents,
            available: row.available,
            reserved: row.reserved,
            sold: row.sold,
            version: row.version,
            updated_at: row.updated_at,
        }
    }
}

/// Writes the state of each product in `changed` to the outbox, in the caller's transaction.
pub(crate) async fn publish(
    conn: &mut PgConnection,
    changed: &[ProductState],
) -> Result<(), sqlx::Error> {
    for product in changed {
        outbox::emit_state(conn, &product.sku, Some(product)).await?;
    }
    Ok(())
}
