//! Upgrading to migration 0004 publishes every existing product once, as `outbox::emit_state`
//! would: replicas of an upgraded deployment learn of products that never change again. Needs
//! `DATABASE_URL`: run `cargo xtask test`.

use std::borrow::Cow;

use shared::state::{ProductState, StateRecord};
use sqlx::PgPool;

/// The migrations before the product version (a deployment of the previous release).
async fn migrated_before_0004(name: &str) -> PgPool {
    let pool = shared::testing::fresh_database(name).await;
    let mut before = sqlx::migrate!("./migrations");
    before.migrations = Cow::Owned(
        before
            .migrations
            .iter()
            .filter(|m| m.version < 4)
            .cloned()
            .collect(),
    );
    shared::db::prepare(&pool, &before)
        .await
        .expect("migrating to the previous release");
    pool
}

async fn outbox_states(pool: &PgPool) -> Vec<(String, String, String, ProductState)> {
    let rows: Vec<(String, String, String, sqlx::types::Json<ProductState>)> = sqlx::query_as(
        "select topic, message_key, event_type, envelope from outbox order by message_key",
    )
    .fetch_all(pool)
    .await
    .unwrap();
    rows.into_iter()
        .map(|(topic, key, event_type, state)| (topic, key, event_type, state.0))
        .collect()
}

#[tokio::test]
async fn the_upgrade_publishes_every_existing_product_once() {
    let pool = migrated_before_0004("inventory_backfill").await;
    sqlx::query(
        "insert into products (sku, name, price_cents, available, reserved, sold, updated_at)
         values ('B-2', 'Chair', 4500, 3, 1, 2, '2026-03-04 05:06:07.123456+02'),
                ('A-1', 'Lamp', 1250, 10, 0, 0, now())",
    )
    .execute(&pool)
    .await
    .unwrap();
    let before: Vec<ProductState> = sqlx::query_as::<
        _,
        (
            String,
            String,
            i64,
            i32,
            i32,
            i32,
            chrono::DateTime<chrono::Utc>,
        ),
    >(
        "select sku, name, price_cents, available, reserved, sold, updated_at from products
         order by sku",
    )
    .fetch_all(&pool)
    .await
    .unwrap()
    .into_iter()
    .map(
        |(sku, name, price_cents, available, reserved, sold, updated_at)| ProductState {
            sku,
            name,
            price_cents,
            available,
            reserved,
            sold,
            version: 1,
            updated_at,
        },
    )
    .collect();

    inventory_service::migrate(&pool).await.expect("upgrading");

    let published = outbox_states(&pool).await;
    let expected: Vec<_> = before
        .into_iter()
        .map(|state| {
            (
                ProductState::TOPIC.base_name().to_owned(),
                state.key().to_owned(),
                ProductState::TYPE.to_owned(),
                state,
            )
        })
        .collect();
    assert_eq!(published, expected);

    inventory_service::migrate(&pool)
        .await
        .expect("migrating again");
    assert_eq!(outbox_states(&pool).await.len(), 2, "applied once");
}

#[tokio::test]
async fn a_fresh_database_publishes_nothing() {
    let pool = shared::testing::fresh_database("inventory_backfill_fresh").await;
    inventory_service::migrate(&pool).await.expect("migrating");
    assert!(outbox_states(&pool).await.is_empty());
}
