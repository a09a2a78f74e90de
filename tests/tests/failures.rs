//! Failure handling end to end: the saga deadline, a compensation that can never succeed,
//! poison messages and their replay, and events that arrive out of order. The tests hold
//! database locks that stall a whole service, so they run one at a time.

use e2e::{eventually, system_with, unique, Api, Backdoor, Settings, SAGA_TIMEOUT};
use serde_json::json;
use shared::events::{
    CancellationReason, OrderCancelled, OrderCreated, OrderLine, PaymentCharged, PricedLine,
    ShippingAddress, StockReserved,
};
use shared::topics::Topic;
use shared::topology::{self, Service, INVENTORY};
use shared::{Envelope, EventPayload};
use tokio::sync::Mutex;
use uuid::Uuid;

/// A deadline short enough to test, long enough for a healthy saga (well under a second here).
const SETTINGS: Settings = Settings {
    saga_deadline_ms: 4_000,
    hold_timeout_ms: None,
    otlp_endpoint: None,
};
static ONE_AT_A_TIME: Mutex<()> = Mutex::const_new(());

fn clients() -> (Api, Backdoor) {
    let system = system_with(SETTINGS);
    (Api::on(system), Backdoor::on(system))
}

async fn wait_status(api: &Api, order_id: Uuid, status: &str) -> serde_json::Value {
    eventually(
        &format!("order {order_id} to be {status}"),
        SAGA_TIMEOUT,
        || async {
            let order = api.order(order_id).await;
            (order["status"] == status).then_some(order)
        },
    )
    .await
}

#[tokio::test]
async fn a_saga_past_its_deadline_is_cancelled_and_its_late_charge_refunded() {
    let _serial = ONE_AT_A_TIME.lock().await;
    let (api, backdoor) = clients();
    let (sku, customer) = (unique("sku"), unique("customer"));
    api.create_product(&sku, 500, 5).await;
    api.open_account(&customer, 10_000).await;
    let payments = backdoor.database(&api.system.database_urls.payment).await;
    // Payment's partition of the order topic is held up by a decoy: an order.cancelled of
    // another order whose payment row is locked, so the cancellation of ours, queued behind it
    // on the same partition (same key), cannot reach payment before the charge does.
    let decoy = Uuid::now_v7();
    sqlx::query("insert into payments (order_id, status) values ($1, 'VOIDED')")
        .bind(decoy)
        .execute(&payments)
        .await
        .unwrap();
    let mut hold_cancellations = payments.begin().await.unwrap();
    sqlx::query("select 1 from payments where order_id = $1 for update")
        .bind(decoy)
        .execute(&mut *hold_cancellations)
        .await
        .unwrap();
    // And the account's row: the charge blocks on it, so the saga stalls past its deadline.
    let mut hold_charge = payments.begin().await.unwrap();
    sqlx::query("select 1 from accounts where customer_id = $1 for update")
        .bind(&customer)
        .execute(&mut *hold_charge)
        .await
        .unwrap();

    let order_id = api.place_order(&customer, &[(&sku, 2)], "FR").await;
    let cancelled = OrderCancelled {
        order_id: decoy,
        reason: CancellationReason::CancelledByCustomer,
    };
    let envelope = Envelope::new("chaos", decoy, None, &cancelled);
    backdoor
        .produce(
            Topic::Order,
            &order_id.to_string(),
            &serde_json::to_vec(&envelope).unwrap(),
            Some(&envelope.event_type),
        )
        .await;
    let order = api.wait_terminal(order_id).await;
    assert_eq!(
        (&order["status"], &order["cancellation_reason"]),
        (&json!("CANCELLED"), &json!("timeout")),
        "{order}"
    );

    // Shipping reads the cancellation and the charge from two topics: let the cancellation
    // reach it first (a VOIDED record), so that the late charge ships nothing at all (the
    // other way round it would schedule, then cancel, the shipment).
    let shipments = backdoor.database(&api.system.database_urls.shipping).await;
    eventually(
        "shipping to record the cancellation",
        SAGA_TIMEOUT,
        || async {
            let status: Option<String> =
                sqlx::query_scalar("select status from shipments where order_id = $1")
                    .bind(order_id)
                    .fetch_optional(&shipments)
                    .await
                    .unwrap();
            (status.as_deref() == Some("VOIDED")).then_some(())
        },
    )
    .await;
    // The charge lands after the cancellation...
    hold_charge.commit().await.unwrap();
    eventually("the late charge", SAGA_TIMEOUT, || async {
        let (status, payment) = api.payment(order_id).await;
        (status == 200 && payment["status"] == "CHARGED").then_some(())
    })
    .await;
    assert_eq!(api.balance(&customer).await, 9_000);
    // ...and once the cancellation reaches payment, it is refunded in full.
    hold_cancellations.commit().await.unwrap();
    let payment = eventually("the late charge to be refunded", SAGA_TIMEOUT, || async {
        let (_, payment) = api.payment(order_id).await;
        (payment["status"] == "REFUNDED").then_some(payment)
    })
    .await;
    assert_eq!(payment["amount_cents"], 1_000, "{payment}");
    wait_timeline(&api, order_id, "payment.refunded.v1").await;
    backdoor.wait_quiet().await;
    let product = api.product(&sku).await;
    assert_eq!(
        (
            &product["available"],
            &product["reserved"],
            &product["sold"]
        ),
        (&json!(5), &json!(0), &json!(0)),
        "{product}"
    );
    assert_eq!(api.balance(&customer).await, 10_000);
    let (status, shipment) = api.shipment(order_id).await;
    assert_eq!(status, 404, "nothing was shipped: {shipment}");
    let order = api.order(order_id).await;
    assert_eq!(
        (&order["status"], &order["cancellation_reason"]),
        (&json!("CANCELLED"), &json!("timeout")),
        "{order}"
    );
}

/// Waits until the order's timeline holds `event`.
async fn wait_timeline(api: &Api, order_id: Uuid, event: &str) {
    eventually(
        &format!("{event} in the timeline of {order_id}"),
        SAGA_TIMEOUT,
        || async {
            api.timeline(order_id)
                .await
                .iter()
                .any(|e| e == event)
                .then_some(())
        },
    )
    .await
}

#[tokio::test]
async fn a_refund_that_can_never_be_made_leaves_the_order_failed_and_counted() {
    let _serial = ONE_AT_A_TIME.lock().await;
    let (api, backdoor) = clients();
    let (sku, customer) = (unique("sku"), unique("customer"));
    api.create_product(&sku, 800, 5).await;
    api.open_account(&customer, 10_000).await;
    // Stall shipping until the charge is made and the account is gone.
    let shipping = backdoor.database(&api.system.database_urls.shipping).await;
    let mut stall = shipping.begin().await.unwrap();
    sqlx::query("lock table shipments in exclusive mode")
        .execute(&mut *stall)
        .await
        .unwrap();

    let order_id = api.place_order(&customer, &[(&sku, 1)], "AQ").await;
    eventually("the charge", SAGA_TIMEOUT, || async {
        (api.payment(order_id).await.1["status"] == "CHARGED").then_some(())
    })
    .await;
    let payments = backdoor.database(&api.system.database_urls.payment).await;
    sqlx::query("delete from accounts where customer_id = $1")
        .bind(&customer)
        .execute(&payments)
        .await
        .unwrap();
    stall.commit().await.unwrap();

    let order = wait_status(&api, order_id, "FAILED").await;
    assert_eq!(order["failed_step"], "payment.refund", "{order}");
    assert_eq!(order["cancellation_reason"], "shipping_unavailable");
    let (_, payment) = api.payment(order_id).await;
    assert_eq!(payment["status"], "REFUND_FAILED", "{payment}");
    assert!(
        payment["reason"]
            .as_str()
            .unwrap_or_default()
            .contains("cannot be refunded"),
        "{payment}"
    );
    // The other compensations still happened.
    eventually("the stock to come back", SAGA_TIMEOUT, || async {
        let product = api.product(&sku).await;
        (product["available"] == 5 && product["reserved"] == 0).then_some(())
    })
    .await;
    assert!(api
        .timeline(order_id)
        .await
        .contains(&"payment.refund_failed.v1".to_owned()));
    let metrics = api
        .http
        .get(format!("{}/metrics", api.system.payment_url))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let counted = metrics.lines().any(|line| {
        line.starts_with("sagashop_compensation_failures_total")
            && line.contains("step=\"payment.refund\"")
            && !line.ends_with(" 0")
    });
    assert!(counted, "{metrics}");
    // FAILED is terminal.
    let (status, _) = api
        .send(
            api.http
                .post(format!("{}/orders/{order_id}/cancel", api.system.order_url)),
        )
        .await;
    assert_eq!(status, 409);
}

#[tokio::test]
async fn poison_is_dead_lettered_the_partitions_keep_flowing_and_replay_works() {
    let _serial = ONE_AT_A_TIME.lock().await;
    let (api, backdoor) = clients();
    let consumers: Vec<&Service> = topology::consumers_of(Topic::Order).collect();
    let before: Vec<usize> =
        futures::future::join_all(consumers.iter().map(|c| backdoor.dead_letters(c.name)))
            .await
            .iter()
            .map(Vec::len)
            .collect();

    let order_id = Uuid::now_v7();
    let unknown = json!({
        "id": Uuid::now_v7(), "type": "order.exploded.v1", "source": "chaos", "occurred_at": "2026-01-01T00:00:00Z",
        "order_id": order_id, "causation_id": null, "payload": {}
    });
    let mut mismatched = unknown.clone();
    mismatched["id"] = json!(Uuid::now_v7());
    mismatched["type"] = json!(OrderCreated::TYPE);
    mismatched["payload"] = json!({"order_id": order_id, "items": "many"});
    let poison: Vec<Vec<u8>> = vec![
        b"\x00\x01 definitely not JSON".to_vec(),
        serde_json::to_vec(&unknown).unwrap(),
        serde_json::to_vec(&mismatched).unwrap(),
        vec![b'x'; 300 * 1024],
    ];
    let partitions = 0..3; // KAFKA_TOPIC_PARTITIONS
    for partition in partitions.clone() {
        for bytes in &poison {
            backdoor
                .produce_to(
                    Topic::Order,
                    Some(partition),
                    &order_id.to_string(),
                    bytes,
                    None,
                )
                .await;
        }
    }

    // Real orders on every partition still go through: orders are placed until each
    // partition has at least two (the partition of an order is the producer's for its key).
    let (sku, customer) = (unique("sku"), unique("customer"));
    api.create_product(&sku, 100, 200).await;
    api.open_account(&customer, 100_000).await;
    let line = [(sku.as_str(), 1)];
    let mut orders: Vec<(i32, Uuid)> = Vec::new();
    while partitions
        .clone()
        .any(|p| orders.iter().filter(|(q, _)| *q == p).count() < 2)
    {
        assert!(
            orders.len() < 60,
            "60 orders and a partition still has fewer than two"
        );
        let order_id = api.place_order(&customer, &line, "FR").await;
        orders.push((
            e2e::partition_of(&order_id.to_string(), partitions.len() as i32),
            order_id,
        ));
    }
    for (_, order_id) in &orders {
        assert_eq!(api.wait_terminal(*order_id).await["status"], "CONFIRMED");
    }
    // Where they really went: each order's order.created on the partition computed for it.
    let order_topic = Topic::Order.name(&api.system.topic_prefix);
    let brokers = api.system.brokers.clone();
    let published =
        tokio::task::spawn_blocking(move || shared::dead_letters::read_all(&brokers, &order_topic))
            .await
            .unwrap()
            .expect("reading the order topic");
    for (partition, order_id) in &orders {
        let key = order_id.to_string();
        let landed: Vec<i32> = published
            .iter()
            .filter(|message| message.key.as_deref() == Some(key.as_str()))
            .map(|message| message.partition)
            .collect();
        assert!(
            !landed.is_empty() && landed.iter().all(|p| p == partition),
            "order {order_id}: computed partition {partition}, published on {landed:?}"
        );
    }

    let expected = poison.len() * partitions.len();
    for (service, before) in consumers.iter().zip(&before) {
        let consumer = service.name;
        let letters = eventually(
            &format!("{consumer}'s dead letters"),
            SAGA_TIMEOUT,
            || async {
                let letters = backdoor.dead_letters(consumer).await;
                (letters.len() >= before + expected).then_some(letters)
            },
        )
        .await;
        let new = &letters[*before..];
        assert_eq!(new.len(), expected, "{consumer}");
        for letter in new {
            assert!(
                poison.contains(&letter.payload),
                "{consumer}: the original bytes are kept"
            );
            assert_eq!(
                letter.source_topic(),
                Some(Topic::Order.name(&api.system.topic_prefix).as_str())
            );
            assert_eq!(letter.header("dlq.attempts"), Some("3"));
            assert_eq!(
                letter.header("dlq.group"),
                Some(format!("{}{}", api.system.topic_prefix, service.group_id).as_str())
            );
            assert!(
                letter.header("dlq.offset").is_some() && letter.header("dlq.partition").is_some()
            );
            assert!(!letter.error().is_empty());
        }
        let errors: Vec<&str> = new.iter().map(|letter| letter.error()).collect();
        for expected_error in [
            "not an event envelope",
            "unknown event type",
            "does not match its schema",
            "larger than",
        ] {
            assert_eq!(
                errors.iter().filter(|e| e.contains(expected_error)).count(),
                3,
                "{consumer}: {errors:?}"
            );
        }
    }

    // Replay sends the original back to its topic; still poison, it comes back marked.
    let letters = backdoor.dead_letters("inventory").await;
    let letter = letters.last().unwrap();
    let producer = shared::kafka::producer(&shared_kafka_config(&api)).unwrap();
    let dlq = INVENTORY.dead_letter_topic(&api.system.topic_prefix);
    shared::dead_letters::replay(&producer, &dlq, letter)
        .await
        .unwrap();
    let replayed = eventually(
        "the replayed message to come back",
        SAGA_TIMEOUT,
        || async {
            let again = backdoor.dead_letters("inventory").await;
            (again.len() > letters.len())
                .then(|| again.last().cloned())
                .flatten()
        },
    )
    .await;
    assert_eq!(replayed.payload, letter.payload);
    assert_eq!(
        replayed.header("dlq.replayed_from"),
        Some(format!("{dlq}:{}:{}", letter.partition, letter.offset).as_str())
    );
}

fn shared_kafka_config(api: &Api) -> shared::config::KafkaConfig {
    use clap::Parser;
    #[derive(clap::Parser)]
    struct Args {
        #[command(flatten)]
        kafka: shared::config::KafkaConfig,
    }
    Args::parse_from(["test", "--kafka-brokers", &api.system.brokers]).kafka
}

#[tokio::test]
async fn events_out_of_order_are_never_applied() {
    let _serial = ONE_AT_A_TIME.lock().await;
    let (api, backdoor) = clients();
    let (sku, customer) = (unique("sku"), unique("customer"));
    api.create_product(&sku, 200, 5).await;
    api.open_account(&customer, 1_000).await;
    let order_id = Uuid::now_v7();
    let key = order_id.to_string();
    let address = ShippingAddress {
        country: "FR".into(),
        rest: Default::default(),
    };
    let publish = |topic: Topic, envelope: Envelope| {
        let backdoor = &backdoor;
        let key = key.clone();
        async move {
            let bytes = serde_json::to_vec(&envelope).unwrap();
            backdoor
                .produce(topic, &key, &bytes, Some(&envelope.event_type))
                .await
        }
    };

    // The cancellation arrives first everywhere.
    let cancelled = OrderCancelled {
        order_id,
        reason: CancellationReason::CancelledByCustomer,
    };
    let (partition, offset) = publish(
        Topic::Order,
        Envelope::new("chaos", order_id, None, &cancelled),
    )
    .await;
    for consumer in topology::consumers_of(Topic::Order) {
        backdoor
            .wait_consumed(consumer.name, Topic::Order, partition, offset)
            .await;
    }
    // Then the events it should have followed: the order, its reservation, its charge.
    let created = OrderCreated {
        order_id,
        customer_id: customer.clone(),
        items: vec![OrderLine {
            sku: sku.clone(),
            quantity: 2,
        }],
        shipping_address: address.clone(),
    };
    let reserved = StockReserved {
        order_id,
        customer_id: customer.clone(),
        items: vec![PricedLine {
            sku: sku.clone(),
            quantity: 2,
            unit_price_cents: 200,
        }],
        total_cents: 400,
        shipping_address: address.clone(),
    };
    let charged = PaymentCharged {
        order_id,
        customer_id: customer.clone(),
        amount_cents: 400,
        shipping_address: address,
        payment_method: Default::default(),
    };
    let late = [
        (
            Topic::Order,
            Envelope::new("chaos", order_id, None, &created),
            "inventory",
        ),
        (
            Topic::Inventory,
            Envelope::new("chaos", order_id, None, &reserved),
            "payment",
        ),
        (
            Topic::Payment,
            Envelope::new("chaos", order_id, None, &charged),
            "shipping",
        ),
    ];
    for (topic, envelope, consumer) in late {
        let (partition, offset) = publish(topic, envelope).await;
        backdoor
            .wait_consumed(consumer, topic, partition, offset)
            .await;
    }

    let product = api.product(&sku).await;
    assert_eq!(
        (
            &product["available"],
            &product["reserved"],
            &product["sold"]
        ),
        (&json!(5), &json!(0), &json!(0))
    );
    assert_eq!(api.balance(&customer).await, 1_000);
    assert_eq!(api.payment(order_id).await.0, 404);
    assert_eq!(api.shipment(order_id).await.0, 404);
}

#[tokio::test]
async fn a_forged_order_the_order_service_never_accepted_is_released_everywhere() {
    let _serial = ONE_AT_A_TIME.lock().await;
    let (api, backdoor) = clients();
    let (sku, customer) = (unique("sku"), unique("customer"));
    api.create_product(&sku, 300, 5).await;
    api.open_account(&customer, 10_000).await;
    // An order.created the order service never wrote: as after a restore that lost the order.
    let order_id = Uuid::now_v7();
    let forged = OrderCreated {
        order_id,
        customer_id: customer.clone(),
        items: vec![OrderLine {
            sku: sku.clone(),
            quantity: 2,
        }],
        shipping_address: ShippingAddress {
            country: "FR".into(),
            rest: Default::default(),
        },
    };
    let envelope = Envelope::new(topology::ORDER.name, order_id, None, &forged);
    let bytes = serde_json::to_vec(&envelope).unwrap();
    backdoor
        .produce(
            Topic::Order,
            &order_id.to_string(),
            &bytes,
            Some(&envelope.event_type),
        )
        .await;

    // Inventory reserved it (that is what the order service answered), then released it.
    let inventory = backdoor.database(&api.system.database_urls.inventory).await;
    eventually(
        "the forged reservation to be released",
        SAGA_TIMEOUT,
        || async {
            let status: Option<String> =
                sqlx::query_scalar("select status from reservations where order_id = $1")
                    .bind(order_id)
                    .fetch_optional(&inventory)
                    .await
                    .unwrap();
            (status.as_deref() == Some("RELEASED")).then_some(())
        },
    )
    .await;
    backdoor.wait_quiet().await;
    let product = api.product(&sku).await;
    assert_eq!(
        (&product["available"], &product["reserved"]),
        (&json!(5), &json!(0)),
        "{product}"
    );
    assert_eq!(api.balance(&customer).await, 10_000);
    eventually(
        "payment and shipping to hold nothing",
        SAGA_TIMEOUT,
        || async {
            let (payment_status, payment) = api.payment(order_id).await;
            let (shipment_status, shipment) = api.shipment(order_id).await;
            let paid = payment_status == 200 && payment["status"] == "CHARGED";
            let shipped = shipment_status == 200 && shipment["status"] == "SCHEDULED";
            (!paid && !shipped).then_some(())
        },
    )
    .await;
    assert_eq!(api.product(&sku).await["sold"], 0);

    // No order was made up for it; the orphan is on record.
    let (status, reply) = api
        .get(format!("{}/orders/{order_id}", api.system.order_url))
        .await;
    assert_eq!(status, 404, "{reply}");
    let orders = backdoor.database(&api.system.database_urls.order).await;
    let (first_event_type, events): (String, i64) =
        sqlx::query_as("select first_event_type, events from orphan_events where order_id = $1")
            .bind(order_id)
            .fetch_one(&orders)
            .await
            .unwrap();
    // Whichever participant event the order service consumed first (it reads three topics, and
    // nothing orders one topic's events against another's): inventory's reservation, or the
    // charge that followed it.
    assert!(
        [
            "inventory.reserved.",
            "payment.charged.",
            "shipment.scheduled."
        ]
        .iter()
        .any(|kind| first_event_type.starts_with(kind)),
        "{first_event_type}"
    );
    assert!(events >= 1);
}
