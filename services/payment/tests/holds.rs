//! Charges under concurrency and over time: a consumer batch locks the account of every order
//! its events concern before applying any of them, in customer order
//! (`EventHandler::lock_shared_rows`), so that concurrent batches never deadlock on balances;
//! the hold expiry worker locks in the same order, and refunds a charge in the trace it was
//! made in. On a fresh PostgreSQL database; needs `DATABASE_URL`: run `cargo xtask test`.

use axum::http::{Method, StatusCode};
use payment_service::domain::SagaEvent;
use payment_service::handler::PaymentEventHandler;
use serde_json::json;
use shared::events::{
    CancellationReason, OrderCancelled, PricedLine, ShippingAddress, StockReserved,
};
use shared::testing::{self, TestApp};
use shared::traces::{self, ServiceTracer, StoredContext};
use shared::{Envelope, EventHandler};
use std::time::Duration;
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

/// A new order of `customer`'s, charged as the consumer leaves it; returns its id.
async fn charge(pool: &sqlx::PgPool, handler: &PaymentEventHandler, customer: &str) -> Uuid {
    charge_in(pool, handler, customer, None).await
}

/// [`charge`], applying the event in the trace `trace` (as the consumer applies it in the
/// trace its `traceparent` header carries).
async fn charge_in(
    pool: &sqlx::PgPool,
    handler: &PaymentEventHandler,
    customer: &str,
    trace: Option<&StoredContext>,
) -> Uuid {
    let order_id = Uuid::now_v7();
    let reservation = SagaEvent::StockReserved(reserved(order_id, customer));
    let SagaEvent::StockReserved(payload) = &reservation else {
        unreachable!("made just above")
    };
    let envelope = Envelope::new("test", order_id, None, payload);
    let mut tx = pool.begin().await.unwrap();
    let applied = handler.handle(&mut tx, &envelope, &reservation);
    traces::continue_stored(&ServiceTracer::default(), trace, "test", order_id, applied)
        .await
        .unwrap();
    tx.commit().await.unwrap();
    order_id
}

/// A fresh payment database (named after `name`) with an account of 1,000 cents for each of
/// `customers`.
async fn with_accounts(name: &str, customers: &[&str]) -> sqlx::PgPool {
    let pool = shared::testing::fresh_database(name).await;
    payment_service::migrate(&pool).await.expect("migrating");
    let app = TestApp::new(payment_service::router(pool.clone()), pool.clone());
    for customer in customers {
        let account = json!({"customer_id": customer, "balance_cents": 1_000});
        let (status, body) = app.send(Method::POST, "/accounts", Some(account)).await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
    }
    pool
}

#[tokio::test]
async fn a_batch_locks_the_accounts_of_new_and_decided_orders_and_no_other() {
    let pool = with_accounts("payment_batch_locks", &["alice", "bob", "carol", "dave"]).await;
    let handler = PaymentEventHandler { charged_version: 2 };
    // Carol's order, charged as the consumer leaves it.
    let charged = charge(&pool, &handler, "carol").await;

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

/// The hold expiry worker locks as a batch does: the customer's account first, then the
/// payment. While a batch holds the account, the waiting worker holds no payment (so the batch
/// can take it), and it refunds the hold once the account is free.
#[tokio::test]
async fn the_hold_expiry_worker_locks_the_account_before_the_payment() {
    let pool = with_accounts("payment_expiry_locks", &["carol"]).await;
    let handler = PaymentEventHandler { charged_version: 2 };
    let order_id = charge(&pool, &handler, "carol").await;

    // A batch holds the account; the worker (every hold expired at once) waits for it.
    let mut batch = pool.begin().await.unwrap();
    let cancelled = SagaEvent::OrderCancelled(OrderCancelled {
        order_id,
        reason: CancellationReason::CancelledByCustomer,
    });
    handler
        .lock_shared_rows(&mut batch, &[&cancelled])
        .await
        .unwrap();
    let worker = tokio::spawn({
        let pool = pool.clone();
        async move {
            payment_service::hold_expiry::sweep(&pool, &ServiceTracer::default(), Duration::ZERO, 2)
                .await
        }
    });
    shared::testing::wait_for_a_lock_waiter(&pool).await;
    // The batch can still lock the payment: the waiting worker does not hold it.
    let payment: Uuid =
        sqlx::query_scalar("select order_id from payments where order_id = $1 for update nowait")
            .bind(order_id)
            .fetch_one(&mut *batch)
            .await
            .expect("the payment is free while the worker waits for its account");
    assert_eq!(payment, order_id);
    batch.rollback().await.unwrap();

    assert_eq!(worker.await.unwrap().unwrap(), 1, "the hold was refunded");
    let status: String = sqlx::query_scalar("select status from payments where order_id = $1")
        .bind(order_id)
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(status, "REFUNDED");
}

/// A charge remembers the trace it was made in, and the hold expiry worker refunds it in that
/// trace: the `payment.refunded` it writes carries the same trace id.
#[tokio::test]
async fn the_hold_expiry_worker_refunds_in_the_charges_trace() {
    let pool = with_accounts("payment_expiry_trace", &["carol"]).await;
    let handler = PaymentEventHandler { charged_version: 2 };
    let order_trace = testing::a_trace();
    let order_id = charge_in(&pool, &handler, "carol", Some(&order_trace)).await;

    let refunded =
        payment_service::hold_expiry::sweep(&pool, &ServiceTracer::default(), Duration::ZERO, 2)
            .await
            .unwrap();
    assert_eq!(refunded, 1);
    assert_eq!(
        testing::outbox_trace_id(&pool, order_id, "payment.refunded")
            .await
            .as_deref(),
        Some(testing::A_TRACE_ID),
        "the refund continues the charge's trace"
    );
}
