//! The delivery guarantees end to end: re-delivered events change nothing, and money and stock
//! are conserved over a large mixed batch of orders.

use std::collections::HashMap;
use std::time::Duration;

use e2e::{eventually, unique, Api, Backdoor, SAGA_TIMEOUT};
use futures::StreamExt;
use serde_json::{json, Value};
use shared::topics::Topic;
use uuid::Uuid;

/// Everything the four services hold about one order and its customer and product.
async fn snapshot(api: &Api, order_id: Uuid, customer: &str, sku: &str) -> Value {
    json!({
        "order": api.order(order_id).await,
        "balance": api.balance(customer).await,
        "product": api.product(sku).await,
        "payment": api.payment(order_id).await.1,
        "shipment": api.shipment(order_id).await.1,
        "timeline": api.timeline(order_id).await,
    })
}

/// The envelope a service published for `order_id`, read back from its published outbox rows.
async fn published(
    backdoor: &Backdoor,
    database_url: &str,
    order_id: Uuid,
    event_type: &str,
) -> Value {
    let pool = backdoor.database(database_url).await;
    let envelope: sqlx::types::Json<Value> = sqlx::query_scalar(
        "select envelope from outbox_published where message_key = $1 and event_type = $2",
    )
    .bind(order_id.to_string())
    .bind(event_type)
    .fetch_one(&pool)
    .await
    .expect("the event in the outbox");
    envelope.0
}

#[tokio::test]
async fn the_same_events_delivered_again_change_nothing() {
    let (api, backdoor) = (Api::new(), Backdoor::new());
    let (sku, customer) = (unique("sku"), unique("customer"));
    api.create_product(&sku, 400, 10).await;
    api.open_account(&customer, 10_000).await;
    let order_id = api.place_order(&customer, &[(&sku, 3)], "FR").await;
    assert_eq!(api.wait_terminal(order_id).await["status"], "CONFIRMED");
    let expected = eventually("the confirmed order to settle", SAGA_TIMEOUT, || async {
        let state = snapshot(&api, order_id, &customer, &sku).await;
        (state["product"]["sold"] == 3 && state["timeline"].as_array().map(Vec::len) == Some(5))
            .then_some(state)
    })
    .await;

    let databases = &api.system.database_urls;
    let created = published(&backdoor, &databases.order, order_id, "order.created.v1").await;
    let reserved = published(
        &backdoor,
        &databases.inventory,
        order_id,
        "inventory.reserved.v1",
    )
    .await;
    let charged = published(
        &backdoor,
        &databases.payment,
        order_id,
        "payment.charged.v2",
    )
    .await;
    let scheduled = published(
        &backdoor,
        &databases.shipping,
        order_id,
        "shipment.scheduled.v1",
    )
    .await;
    // The same bytes again (a producer retry or a consumer re-delivery), and the same event
    // under a new id (a re-published copy): neither may reserve, charge or ship a second time.
    let mut renamed = reserved.clone();
    renamed["id"] = json!(Uuid::now_v7());
    let key = order_id.to_string();
    let mut deliveries = Vec::new();
    for (topic, envelope, consumers) in [
        (Topic::Order, &created, &["inventory"][..]),
        (Topic::Inventory, &reserved, &["payment", "order"][..]),
        (Topic::Inventory, &renamed, &["payment"][..]),
        (Topic::Payment, &charged, &["shipping", "order"][..]),
        (Topic::Shipping, &scheduled, &["order"][..]),
    ] {
        let bytes = serde_json::to_vec(envelope).unwrap();
        for _ in 0..2 {
            let (partition, offset) = backdoor
                .produce(topic, &key, &bytes, envelope["type"].as_str())
                .await;
            deliveries.extend(
                consumers
                    .iter()
                    .map(|consumer| (*consumer, topic, partition, offset)),
            );
        }
    }
    for (consumer, topic, partition, offset) in deliveries {
        backdoor
            .wait_consumed(consumer, topic, partition, offset)
            .await;
    }

    let mut after = snapshot(&api, order_id, &customer, &sku).await;
    // The renamed copy is a new event to the order service: it is recorded, and changes nothing else.
    let timeline = after["timeline"].as_array_mut().unwrap();
    assert_eq!(
        timeline
            .iter()
            .filter(|event| *event == "inventory.reserved.v1")
            .count(),
        2
    );
    let first = timeline
        .iter()
        .position(|event| event == "inventory.reserved.v1")
        .unwrap();
    let last = timeline
        .iter()
        .rposition(|event| event == "inventory.reserved.v1")
        .unwrap();
    timeline.remove(last.max(first));
    assert_eq!(after, expected);
}

/// A small deterministic generator, so a failing batch can be replayed.
struct Lcg(u64);

impl Lcg {
    fn next(&mut self, bound: usize) -> usize {
        self.0 = self
            .0
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        ((self.0 >> 33) % bound as u64) as usize
    }
}

struct Planned {
    customer: String,
    lines: Vec<(String, i32)>,
    country: &'static str,
    cancel: bool,
}

#[tokio::test]
async fn money_and_stock_are_conserved_over_a_mixed_batch() {
    const ORDERS: usize = 240;
    let api = Api::new();
    let seed = std::env::var("BATCH_SEED")
        .ok()
        .and_then(|seed| seed.parse().ok())
        .unwrap_or(20_261_122);
    println!("batch seed {seed} (set BATCH_SEED to replay)");
    let mut random = Lcg(seed);

    let products: Vec<(String, i64, i32)> = (0..6)
        .map(|i| (unique("mix"), 100 + 150 * i, 25 + 5 * i as i32))
        .collect();
    for (sku, price, stock) in &products {
        api.create_product(sku, *price, *stock).await;
    }
    let customers: Vec<(String, Option<i64>)> = (0..60)
        .map(|i| {
            (
                unique("mixer"),
                if i % 10 == 9 {
                    None
                } else {
                    Some(2_000 * (i as i64 % 7) + 500)
                },
            )
        })
        .collect();
    for (customer, balance) in &customers {
        if let Some(balance) = balance {
            api.open_account(customer, *balance).await;
        }
    }
    let plans: Vec<Planned> = (0..ORDERS)
        .map(|_| {
            let mut lines: Vec<(String, i32)> = Vec::new();
            for _ in 0..1 + random.next(3) {
                let sku = &products[random.next(products.len())].0;
                if !lines.iter().any(|(seen, _)| seen == sku) {
                    lines.push((sku.clone(), 1 + random.next(3) as i32));
                }
            }
            Planned {
                customer: customers[random.next(customers.len())].0.clone(),
                lines,
                country: if random.next(10) == 0 { "AQ" } else { "FR" },
                cancel: random.next(8) == 0,
            }
        })
        .collect();

    let order_ids: Vec<Uuid> = futures::stream::iter(&plans)
        .map(|plan| async {
            let lines: Vec<(&str, i32)> = plan
                .lines
                .iter()
                .map(|(sku, quantity)| (sku.as_str(), *quantity))
                .collect();
            let order_id = api.place_order(&plan.customer, &lines, plan.country).await;
            if plan.cancel {
                let url = format!("{}/orders/{order_id}/cancel", api.system.order_url);
                let (status, reply) = api.send(api.http.post(url)).await;
                assert!(status == 202 || status == 409, "{reply}");
            }
            order_id
        })
        .buffered(16)
        .collect()
        .await;
    let orders: Vec<Value> = futures::stream::iter(&order_ids)
        .map(|id| api.wait_terminal(*id))
        .buffered(16)
        .collect()
        .await;

    let confirmed: Vec<&Value> = orders
        .iter()
        .filter(|order| order["status"] == "CONFIRMED")
        .collect();
    let mut reasons: HashMap<&str, usize> = HashMap::new();
    for order in &orders {
        *reasons
            .entry(order["cancellation_reason"].as_str().unwrap_or("confirmed"))
            .or_default() += 1;
    }
    println!("orders={} outcomes={reasons:?}", orders.len());
    assert!(
        reasons.len() >= 4,
        "the batch should mix outcomes: {reasons:?}"
    );

    // Stock: every unit is available, reserved or sold; sold units are exactly the confirmed ones.
    let mut sold: HashMap<&str, i64> = HashMap::new();
    let mut charged: HashMap<&str, i64> = HashMap::new();
    for order in &confirmed {
        let mut total = 0;
        for item in order["items"].as_array().unwrap() {
            let quantity = item["quantity"].as_i64().unwrap();
            *sold.entry(item["sku"].as_str().unwrap()).or_default() += quantity;
            total += quantity * item["unit_price_cents"].as_i64().unwrap();
        }
        assert_eq!(order["total_cents"], total, "{order}");
        *charged
            .entry(order["customer_id"].as_str().unwrap())
            .or_default() += total;
    }
    // Once the system is quiet (nothing left to publish or consume), the books are exact, and
    // stay so: a late effect (a second charge, a release applied twice) would show on the
    // second look.
    let backdoor = Backdoor::new();
    for look in ["once quiet", "a second later"] {
        backdoor.wait_quiet().await;
        for (sku, _, stock) in &products {
            let expected_sold = sold.get(sku.as_str()).copied().unwrap_or(0);
            let product = api.product(sku).await;
            let units = ["available", "reserved", "sold"].map(|field| product[field].as_i64());
            assert_eq!(
                units,
                [
                    Some(i64::from(*stock) - expected_sold),
                    Some(0),
                    Some(expected_sold)
                ],
                "{look}: stock of {sku} (available, reserved, sold): {product}"
            );
        }
        // Money: every balance is its opening balance minus its confirmed orders.
        for (customer, opening) in &customers {
            let Some(opening) = opening else { continue };
            let expected = opening - charged.get(customer.as_str()).copied().unwrap_or(0);
            assert!(expected >= 0);
            assert_eq!(
                api.balance(customer).await,
                expected,
                "{look}: balance of {customer}"
            );
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    // Each service's view of each order agrees with the order's outcome.
    let api = &api;
    let checks = futures::stream::iter(&orders)
        .map(|order| async move {
            let order_id: Uuid = order["order_id"].as_str().unwrap().parse().unwrap();
            let (payment_status, payment) = api.payment(order_id).await;
            let (shipment_status, shipment) = api.shipment(order_id).await;
            if order["status"] == "CONFIRMED" {
                assert_eq!(
                    (&payment["status"], &payment["amount_cents"]),
                    (&json!("CHARGED"), &order["total_cents"])
                );
                assert_eq!(shipment["status"], "SCHEDULED", "{order}");
            } else {
                assert!(
                    payment_status == 404 || payment["status"] != "CHARGED",
                    "{order} {payment}"
                );
                assert!(
                    shipment_status == 404 || shipment["status"] != "SCHEDULED",
                    "{order} {shipment}"
                );
            }
        })
        .buffered(16)
        .collect::<Vec<()>>();
    tokio::time::timeout(Duration::from_secs(120), checks)
        .await
        .expect("checking every order");
}
