//! Shipments over time: a scheduled shipment remembers the trace it was scheduled in, and the
//! hold expiry worker cancels it in that trace. On a fresh PostgreSQL database; needs
//! `DATABASE_URL`: run `cargo xtask test`.

use std::time::Duration;

use shared::events::{PaymentCharged, PaymentMethod, ShippingAddress};
use shared::testing;
use shared::traces::{self, ServiceTracer};
use shared::{Envelope, EventHandler};
use shipping_service::domain::{Countries, SagaEvent};
use shipping_service::handler::ShippingEventHandler;
use uuid::Uuid;

#[tokio::test]
async fn the_hold_expiry_worker_cancels_in_the_shipments_trace() {
    let pool = shared::testing::fresh_database("shipping_expiry_trace").await;
    shipping_service::migrate(&pool).await.expect("migrating");
    let countries = Countries::parse("FR").expect("a country list");
    let handler = ShippingEventHandler {
        countries: countries.clone(),
    };
    // An order paid for, its payment applied in the order's trace.
    let order_id = Uuid::now_v7();
    let charged = PaymentCharged {
        order_id,
        customer_id: "carol".to_owned(),
        amount_cents: 100,
        shipping_address: ShippingAddress {
            country: "FR".to_owned(),
            rest: Default::default(),
        },
        payment_method: PaymentMethod::AccountBalance,
    };
    let envelope = Envelope::new("test", order_id, None, &charged);
    let order_trace = testing::a_trace();
    let tracer = ServiceTracer::default();
    let mut tx = pool.begin().await.unwrap();
    let event = SagaEvent::PaymentCharged(charged);
    let applied = handler.handle(&mut tx, &envelope, &event);
    traces::continue_stored(&tracer, Some(&order_trace), "test", order_id, applied)
        .await
        .unwrap();
    tx.commit().await.unwrap();

    let cancelled =
        shipping_service::hold_expiry::sweep(&pool, &tracer, &countries, Duration::ZERO)
            .await
            .unwrap();
    assert_eq!(cancelled, 1);
    assert_eq!(
        testing::outbox_trace_id(&pool, order_id, "shipment.cancelled")
            .await
            .as_deref(),
        Some(testing::A_TRACE_ID),
        "the cancellation continues the shipment's trace"
    );
}
