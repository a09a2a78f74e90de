//! A consumer batch locks the account of every order its events concern before applying any
//! of them, in customer order (`EventHandler::lock_shared_rows`), so that concurrent batches
//! never deadlock on balances. On a fresh PostgreSQL database; needs `DATABASE_URL`: run
//! `cargo xtask test`.

use axum::http::{Method, StatusCode};
use payment_service::domain::SagaEvent;
use payment_service::handler::PaymentEventHandler;
use serde_json::json;
use shared::events::{
    CancellationReason, OrderCancelled, PricedLine, ShippingAddress, StockReserved,
};
use shared::testing::TestApp;
use shared::{Envelope, EventHandler};
use uuid::Uuid;

fn reserved(order_id: Uuid, customer_id: &str) -> StockReserved {
    StockReserved {
        order_id,
        customer_id: customer_id.to_owned(),
        items: vec![PricedLine {
            sku: "tea".to_owned(),
            quantity: 1,
            unit_price_cents: 100,
        }],
        total_cents: 100,
        shipping_address: ShippingAddress {
            country: "FR".to_owned(),
            rest: Default::default(),
        },
    }
}

#[tokio::test]
async fn a_batch_locks_the_accounts_of_new_and_decided_orders_and_no_other() {
    let pool = shared::testing::fresh_database("payment_batch_locks").await;
    payment_service::migrate(&pool).await.expect("migrating");
    let app = TestApp::new(payment_service::router(pool.clone()), pool.clone());
    for customer in ["alice", "bob", "carol", "dave"] {
        let account = json!({"customer_id": customer, "balance_cents": 1_000});
        let (status, body) = app.send(Method::POST, "/accounts", Some(account)).await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
    }
    let handler = PaymentEventHandler { charged_version: 2 };
    // Carol's order, charged as the consumer leaves it.
    let charged = Uuid::now_v7();
    let reservation = reserved(charged, "carol");
    let envelope = Envelope::new("test", charged, None, &reservation);
    let mut tx = pool.begin().await.unwrap();
    handler
        .handle(&mut tx, &envelope, &SagaEvent::StockReserved(reservation))
        .await
        .unwrap();
    tx.commit().await.unwrap();

    // A batch: a new reservation for alice, and the cancellation of carol's order.
    let batch = [
        SagaEvent::StockReserved(reserved(Uuid::now_v7(), "alice")),
        SagaEvent::OrderCancelled(OrderCancelled {
            order_id: charged,
            reason: CancellationReason::CancelledByCustomer,
        }),
    ];
    let mut holder = pool.begin().await.unwrap();
    handler
        .lock_shared_rows(&mut holder, &batch.iter().collect::<Vec<_>>())
        .await
        .unwrap();
    let free: Vec<String> = sqlx::query_scalar(
        "select customer_id from accounts order by customer_id for update skip locked",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    assert_eq!(
        free,
        ["bob", "dave"],
        "alice and carol are held by the batch"
    );
    holder.rollback().await.unwrap();
}
