//! The records of the compacted state topics: the current state of one entity, keyed by its id,
//! published by its owner through the outbox on every change (`outbox::emit_state`) and kept
//! by replicas (`crate::replica`). Unlike saga events they are not in [`crate::events::Event`]:
//! nobody reacts to them, a reader only keeps the latest per key. Their JSON Schemas are
//! published and gated like the events' (`crate::schemas`); a null value (tombstone) deletes.

use chrono::{DateTime, Utc};
use schemars::JsonSchema;
use serde::{de::DeserializeOwned, Deserialize, Serialize};

use crate::topics::StateTopic;

/// A record of a state topic: its versioned type (in the `event_type` header), its topic and
/// its key.
pub trait StateRecord: Serialize + DeserializeOwned + JsonSchema {
    /// Versioned type name such as `inventory.product.v1`: `<SUBJECT>.v<VERSION>`.
    const TYPE: &'static str;
    /// The record's name across its versions, e.g. `inventory.product`.
    const SUBJECT: &'static str;
    /// The version this type is, from 1.
    const VERSION: u32;
    /// The state topic it is published to.
    const TOPIC: StateTopic;

    /// The Kafka key: the entity's id.
    fn key(&self) -> &str;
}

/// A product as inventory holds it, after a change: published keyed by sku to
/// `inventory.products` in the transaction of the change. Readers ignore fields they do not
/// know, so a later release may add optional ones.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema, sqlx::FromRow)]
pub struct ProductState {
    pub sku: String,
    pub name: String,
    /// The current unit price.
    pub price_cents: i64,
    /// Units that can be reserved now.
    pub available: i32,
    /// Units held for orders not yet decided.
    pub reserved: i32,
    /// Units sold (reserved, then confirmed).
    pub sold: i32,
    /// Increases by one with every change of the product: a replica keeps the highest.
    pub version: i64,
    /// When inventory changed it.
    #[schemars(with = "String", extend("format" = "date-time"))]
    pub updated_at: DateTime<Utc>,
}

impl StateRecord for ProductState {
    const TYPE: &'static str = "inventory.product.v1";
    const SUBJECT: &'static str = "inventory.product";
    const VERSION: u32 = 1;
    const TOPIC: StateTopic = StateTopic::Products;

    fn key(&self) -> &str {
        &self.sku
    }
}

/// The replica of `inventory.products` that a service keeps in its own database, the same in
/// every service that keeps one: a `catalog` table (`sku` primary key, `name`, `price_cents`,
/// `available`, `reserved`, `sold`, `version`, `updated_at`, `source_partition`,
/// `source_offset`, `replicated_at`) that the service's migrations create. A record replaces
/// the row of its sku only over an older version; a tombstone deletes it.
pub struct ProductCatalog;

impl crate::replica::ReplicaStore for ProductCatalog {
    type Record = ProductState;

    async fn upsert(
        &self,
        conn: &mut sqlx::PgConnection,
        key: &str,
        product: ProductState,
        at: crate::replica::Position,
    ) -> Result<(), sqlx::Error> {
        if product.sku != key {
            tracing::error!(key, sku = %product.sku, "a product record under another sku's key; skipped");
            return Ok(());
        }
        sqlx::query(
            "insert into catalog (sku, name, price_cents, available, reserved, sold, version,
                                  updated_at, source_partition, source_offset)
             values ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)
             on conflict (sku) do update set
                 name = excluded.name, price_cents = excluded.price_cents,
                 available = excluded.available, reserved = excluded.reserved,
                 sold = excluded.sold, version = excluded.version,
                 updated_at = excluded.updated_at, source_partition = excluded.source_partition,
                 source_offset = excluded.source_offset, replicated_at = now()
             where catalog.version < excluded.version",
        )
        .bind(&product.sku)
        .bind(&product.name)
        .bind(product.price_cents)
        .bind(product.available)
        .bind(product.reserved)
        .bind(product.sold)
        .bind(product.version)
        .bind(product.updated_at)
        .bind(at.partition)
        .bind(at.offset)
        .execute(conn)
        .await?;
        Ok(())
    }

    async fn delete(
        &self,
        conn: &mut sqlx::PgConnection,
        key: &str,
        _at: crate::replica::Position,
    ) -> Result<(), sqlx::Error> {
        sqlx::query("delete from catalog where sku = $1")
            .bind(key)
            .execute(conn)
            .await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::split_type;

    #[test]
    fn the_type_names_its_subject_and_version() {
        assert_eq!(
            split_type(ProductState::TYPE),
            Some((ProductState::SUBJECT, ProductState::VERSION))
        );
    }

    #[test]
    fn fields_added_by_a_later_release_are_ignored() {
        let json = serde_json::json!({
            "sku": "A-1", "name": "Lamp", "price_cents": 1250, "available": 3, "reserved": 1,
            "sold": 2, "version": 7, "updated_at": "2026-01-01T00:00:00Z", "colour": "red",
        });
        let product: ProductState = serde_json::from_value(json).unwrap();
        assert_eq!(product.key(), "A-1");
        assert_eq!((product.available, product.version), (3, 7));
    }
}
