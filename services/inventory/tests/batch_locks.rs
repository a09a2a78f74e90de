//! A consumer batch locks every product its events touch before applying any of them, in sku
//! order (`EventHandler::lock_shared_rows`), so that concurrent batches never deadlock on
//! stock. On a fresh PostgreSQL database; needs `DATABASE_URL`: run `cargo xtask test`.

use axum::http::{Method, StatusCode};
use inventory_service::domain::SagaEvent;
use inventory_service::handler::InventoryEventHandler;
use serde_json::json;
use shared::events::{OrderConfirmed, OrderCreated, OrderLine, ShippingAddress};
use shared::testing::TestApp;
use shared::{Envelope, EventHandler};
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

#[tokio::test]
async fn a_batch_locks_the_products_of_new_and_decided_orders_and_no_other() {
    let pool = shared::testing::fresh_database("inventory_batch_locks").await;
    inventory_service::migrate(&pool).await.expect("migrating");
    let app = TestApp::new(inventory_service::router(pool.clone()), pool.clone());
    for sku in ["apple", "kiwi", "pear", "plum"] {
        let product = json!({"sku": sku, "name": sku, "price_cents": 100, "stock": 10});
        let (status, body) = app.send(Method::POST, "/products", Some(product)).await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
    }
    // An order holding a reservation of pear, as the consumer leaves it.
    let reserved = Uuid::now_v7();
    let event = created(reserved, &["pear"]);
    let SagaEvent::OrderCreated(order) = &event else {
        unreachable!("created() makes an OrderCreated")
    };
    let envelope = Envelope::new("test", reserved, None, order);
    let mut tx = pool.begin().await.unwrap();
    InventoryEventHandler
        .handle(&mut tx, &envelope, &event)
        .await
        .unwrap();
    tx.commit().await.unwrap();

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
