//! Reservations under concurrency and over time: a consumer batch locks every product its
//! events touch before applying any of them, in sku order (`EventHandler::lock_shared_rows`),
//! so that concurrent batches never deadlock on stock; the hold expiry worker locks in the same
//! order, and releases a reservation in the trace it was made in. On a fresh PostgreSQL
//! database; needs `DATABASE_URL`: run `cargo xtask test`.

use axum::http::{Method, StatusCode};
use inventory_service::domain::SagaEvent;
use inventory_service::handler::InventoryEventHandler;
use serde_json::json;
use shared::events::{OrderConfirmed, OrderCreated, OrderLine, ShippingAddress};
use shared::testing::{self, TestApp};
use shared::traces::{self, ServiceTracer, StoredContext};
use shared::{Envelope, EventHandler};
use std::time::Duration;
use uuid::Uuid;

fn created(order_id: Uuid, skus: &[&str]) -> SagaEvent {
    SagaEvent::OrderCreated(OrderCreated {
        order_id,
        customer_id: "alice".to_owned(),
        items: skus
            .iter()
            .map(|sku| OrderLine {
                sku: (*sku).to_owned(),
                quantity: 1,
            })
            .collect(),
        shipping_address: ShippingAddress {
            country: "FR".to_owned(),
            rest: Default::default(),
        },
    })
}

/// A new order of one `sku`, reserved as the consumer leaves it; returns its id.
async fn reserve(pool: &sqlx::PgPool, sku: &str) -> Uuid {
    reserve_in(pool, sku, None).await
}

/// [`reserve`], applying the event in the trace `trace` (as the consumer applies it in the
/// trace its `traceparent` header carries).
async fn reserve_in(pool: &sqlx::PgPool, sku: &str, trace: Option<&StoredContext>) -> Uuid {
    let order_id = Uuid::now_v7();
    let event = created(order_id, &[sku]);
    let SagaEvent::OrderCreated(order) = &event else {
        unreachable!("created() makes an OrderCreated")
    };
    let envelope = Envelope::new("test", order_id, None, order);
    let mut tx = pool.begin().await.unwrap();
    let tracer = ServiceTracer::default();
    let applied = InventoryEventHandler.handle(&mut tx, &envelope, &event);
    traces::continue_stored(&tracer, trace, "test", order_id, applied)
        .await
        .unwrap();
    tx.commit().await.unwrap();
    order_id
}

/// A fresh inventory database (named after `name`) stocking `skus`, 10 each at 100 cents.
async fn stocking(name: &str, skus: &[&str]) -> sqlx::PgPool {
    let pool = shared::testing::fresh_database(name).await;
    inventory_service::migrate(&pool).await.expect("migrating");
    let app = TestApp::new(inventory_service::router(pool.clone()), pool.clone());
    for sku in skus {
        let product = json!({"sku": sku, "name": sku, "price_cents": 100, "stock": 10});
        let (status, body) = app.send(Method::POST, "/products", Some(product)).await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
    }
    pool
}

#[tokio::test]
async fn a_batch_locks_the_products_of_new_and_decided_orders_and_no_other() {
    let pool = stocking("inventory_batch_locks", &["apple", "kiwi", "pear", "plum"]).await;
    // An order holding a reservation of pear, as the consumer leaves it.
    let reserved = reserve(&pool, "pear").await;

    // A batch: a new order of apple, and the confirmation of the pear order.
    let batch = [
        created(Uuid::now_v7(), &["apple"]),
        SagaEvent::OrderConfirmed(OrderConfirmed { order_id: reserved }),
    ];
    let mut holder = pool.begin().await.unwrap();
    InventoryEventHandler
        .lock_shared_rows(&mut holder, &batch.iter().collect::<Vec<_>>())
        .await
        .unwrap();
    let free: Vec<String> =
        sqlx::query_scalar("select sku from products order by sku for update skip locked")
            .fetch_all(&pool)
            .await
            .unwrap();
    assert_eq!(
        free,
        ["kiwi", "plum"],
        "apple and pear are held by the batch"
    );
    holder.rollback().await.unwrap();
}

/// The hold expiry worker locks as a batch does: the reservation's products first, then the
/// reservation. While a batch holds the product, the waiting worker holds no reservation (so
/// the batch can take it), and it releases the hold once the product is free.
#[tokio::test]
async fn the_hold_expiry_worker_locks_the_products_before_the_reservation() {
    let pool = stocking("inventory_expiry_locks", &["pear"]).await;
    let order_id = reserve(&pool, "pear").await;

    // A batch holds the product; the worker (every hold expired at once) waits for it.
    let mut batch = pool.begin().await.unwrap();
    let confirmed = SagaEvent::OrderConfirmed(OrderConfirmed { order_id });
    InventoryEventHandler
        .lock_shared_rows(&mut batch, &[&confirmed])
        .await
        .unwrap();
    let worker = tokio::spawn({
        let pool = pool.clone();
        async move {
            inventory_service::hold_expiry::sweep(&pool, &ServiceTracer::default(), Duration::ZERO)
                .await
        }
    });
    shared::testing::wait_for_a_lock_waiter(&pool).await;
    // The batch can still lock the reservation: the waiting worker does not hold it.
    let reservation: Uuid = sqlx::query_scalar(
        "select order_id from reservations where order_id = $1 for update nowait",
    )
    .bind(order_id)
    .fetch_one(&mut *batch)
    .await
    .expect("the reservation is free while the worker waits for its product");
    assert_eq!(reservation, order_id);
    batch.rollback().await.unwrap();

    assert_eq!(worker.await.unwrap().unwrap(), 1, "the hold was released");
    let status: String = sqlx::query_scalar("select status from reservations where order_id = $1")
        .bind(order_id)
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(status, "RELEASED");
}

/// A reservation remembers the trace it was made in, and the hold expiry worker releases it in
/// that trace: the `inventory.released` it writes carries the same trace id.
#[tokio::test]
async fn the_hold_expiry_worker_releases_in_the_reservations_trace() {
    let pool = stocking("inventory_expiry_trace", &["pear"]).await;
    let order_trace = testing::a_trace();
    let order_id = reserve_in(&pool, "pear", Some(&order_trace)).await;

    let released =
        inventory_service::hold_expiry::sweep(&pool, &ServiceTracer::default(), Duration::ZERO)
            .await
            .unwrap();
    assert_eq!(released, 1);
    assert_eq!(
        testing::outbox_trace_id(&pool, order_id, "inventory.released")
            .await
            .as_deref(),
        Some(testing::A_TRACE_ID),
        "the release continues the reservation's trace"
    );
}
