//! Publishes a product's current state (`shared::state::ProductState`) to the compacted topic
//! `inventory.products`, keyed by sku, through the outbox: in the transaction of every change
//! (created, restocked, reserved, released, sold), one record per product per transaction;
//! the relay publishes only the latest of a product's rows waiting together (`outbox::superseded`).
//! Inventory deletes no product, so it publishes no tombstone. Products that existed before
//! this record did were published once by migration 0004, in the format `emit_state` writes.

use shared::outbox;
use shared::state::ProductState;
use sqlx::PgConnection;

/// The columns of a [`ProductState`], for `returning` clauses.
pub(crate) const STATE_COLUMNS: &str =
    "sku, name, price_cents, available, reserved, sold, version, updated_at";

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
