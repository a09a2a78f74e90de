//! The participants' events reach the order service on separate topics, in any order: a
//! shipment reported ahead of its reservation confirms the order only once the reservation
//! (its prices and total) is applied.

use std::time::Duration;

use axum::http::{Method, StatusCode};
use shared::events::{Event, PricedLine, ShipmentScheduled, StockReserved};
use shared::{Envelope, EventHandler, EventPayload};

use crate::helpers::{order_body, outbox, place_ok, start};

/// Applies `payload` as the order service's consumer would, in one transaction.
async fn apply<P: EventPayload>(app: &shared::testing::TestApp, order_id: uuid::Uuid, payload: &P) {
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

#[tokio::test]
async fn a_shipment_reported_before_the_reservation_confirms_once_the_prices_are_known() {
    let app = start().await;
    let body = order_body("alice");
    let order_id = place_ok(&app, &body).await;
    let address = serde_json::from_value(body["shipping_address"].clone()).unwrap();

    apply(
        &app,
        order_id,
        &ShipmentScheduled {
            order_id,
            country: "FR".to_owned(),
        },
    )
    .await;
    let (status, order) = app
        .send(Method::GET, &format!("/orders/{order_id}"), None)
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        (&order["status"], &order["total_cents"]),
        (&"PENDING".into(), &serde_json::Value::Null),
        "no confirmation without the reservation: {order}"
    );
    let confirmations = || async {
        outbox(&app)
            .await
            .into_iter()
            .filter(|(event_type, _)| event_type.starts_with("order.confirmed"))
            .count()
    };
    assert_eq!(confirmations().await, 0);

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
            shipping_address: address,
        },
    )
    .await;
    let (_, order) = app
        .send(Method::GET, &format!("/orders/{order_id}"), None)
        .await;
    assert_eq!(order["status"], "CONFIRMED", "{order}");
    assert_eq!(order["total_cents"], 2_900);
    let prices: Vec<_> = order["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|item| (item["sku"].clone(), item["unit_price_cents"].clone()))
        .collect();
    assert_eq!(
        prices,
        [("MUG-01".into(), 1_250.into()), ("TEA".into(), 400.into())]
    );
    assert_eq!(confirmations().await, 1);
}
