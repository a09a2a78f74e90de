//! The participants' events reach the order service on separate topics, in any order: a
//! shipment and a reservation reported ahead of the charge they follow confirm the order only
//! once the charge is applied too, so a `CONFIRMED` order always shows its total, prices and
//! payment method.

use std::time::Duration;

use axum::http::{Method, StatusCode};
use serde_json::Value;
use shared::events::{
    Event, PaymentCharged, PaymentMethod, PricedLine, ShipmentScheduled, StockReserved,
};
use shared::testing::TestApp;
use shared::{Envelope, EventHandler, EventPayload};
use uuid::Uuid;

use crate::helpers::{order_body, outbox, place_ok, start};

/// Applies `payload` as the order service's consumer would, in one transaction.
async fn apply<P: EventPayload>(app: &TestApp, order_id: Uuid, payload: &P) {
    let handler = order_service::handler::OrderEventHandler {
        saga_deadline: Duration::from_secs(600),
    };
    let envelope = Envelope::new("test", order_id, None, payload);
    let event: Event = envelope.event().expect("a current event");
    let input = handler.select(event).expect("the order service handles it");
    let mut tx = app.pool.begin().await.unwrap();
    handler.handle(&mut tx, &envelope, &input).await.unwrap();
    tx.commit().await.unwrap();
}

async fn order(app: &TestApp, order_id: Uuid) -> Value {
    let (status, order) = app
        .send(Method::GET, &format!("/orders/{order_id}"), None)
        .await;
    assert_eq!(status, StatusCode::OK, "{order}");
    order
}

async fn confirmations(app: &TestApp) -> usize {
    outbox(app)
        .await
        .into_iter()
        .filter(|(event_type, _)| event_type.starts_with("order.confirmed"))
        .count()
}

#[tokio::test]
async fn the_order_is_confirmed_on_the_last_of_the_three_successes_whatever_their_order() {
    let app = start().await;
    let body = order_body("alice");
    let order_id = place_ok(&app, &body).await;
    let address: shared::events::ShippingAddress =
        serde_json::from_value(body["shipping_address"].clone()).unwrap();

    apply(
        &app,
        order_id,
        &ShipmentScheduled {
            order_id,
            country: "FR".to_owned(),
        },
    )
    .await;
    let seen = order(&app, order_id).await;
    assert_eq!(
        (&seen["status"], &seen["total_cents"]),
        (&"PENDING".into(), &Value::Null),
        "no confirmation without the reservation: {seen}"
    );

    apply(
        &app,
        order_id,
        &StockReserved {
            order_id,
            customer_id: "alice".to_owned(),
            items: vec![
                PricedLine {
                    sku: "MUG-01".to_owned(),
                    quantity: 2,
                    unit_price_cents: 1_250,
                },
                PricedLine {
                    sku: "TEA".to_owned(),
                    quantity: 1,
                    unit_price_cents: 400,
                },
            ],
            total_cents: 2_900,
            shipping_address: address.clone(),
        },
    )
    .await;
    let seen = order(&app, order_id).await;
    assert_eq!(
        (
            &seen["status"],
            &seen["total_cents"],
            &seen["payment_method"]
        ),
        (&"PENDING".into(), &2_900.into(), &Value::Null),
        "no confirmation without the charge: {seen}"
    );
    assert_eq!(confirmations(&app).await, 0);

    apply(
        &app,
        order_id,
        &PaymentCharged {
            order_id,
            customer_id: "alice".to_owned(),
            amount_cents: 2_900,
            shipping_address: address,
            payment_method: PaymentMethod::AccountBalance,
        },
    )
    .await;
    let seen = order(&app, order_id).await;
    assert_eq!(seen["status"], "CONFIRMED", "{seen}");
    assert_eq!(
        (&seen["total_cents"], &seen["payment_method"]),
        (&2_900.into(), &"account_balance".into())
    );
    let prices: Vec<_> = seen["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|item| (item["sku"].clone(), item["unit_price_cents"].clone()))
        .collect();
    assert_eq!(
        prices,
        [("MUG-01".into(), 1_250.into()), ("TEA".into(), 400.into())]
    );
    assert_eq!(confirmations(&app).await, 1);
}
