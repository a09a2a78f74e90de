//! The order saga end to end: the happy path and every cancellation path, with balances and
//! stock restored exactly, against the real broker and PostgreSQL.

use e2e::{eventually, order_body, unique, Api, Backdoor, SAGA_TIMEOUT};
use serde_json::json;
use shared::topics::Topic;
use uuid::Uuid;

/// Waits until the product is back to `available` with nothing reserved.
async fn wait_stock(api: &Api, sku: &str, available: i64, sold: i64) {
    eventually(
        &format!("stock of {sku} to settle at {available} available, {sold} sold"),
        SAGA_TIMEOUT,
        || async {
            let product = api.product(sku).await;
            (product["available"] == available
                && product["reserved"] == 0
                && product["sold"] == sold)
                .then_some(())
        },
    )
    .await
}

async fn wait_balance(api: &Api, customer: &str, balance: i64) {
    eventually(
        &format!("balance of {customer} to be {balance}"),
        SAGA_TIMEOUT,
        || async { (api.balance(customer).await == balance).then_some(()) },
    )
    .await
}

/// Waits until the order's timeline holds every one of `events` (compensations are reported
/// back to the order service asynchronously).
async fn wait_timeline(api: &Api, order_id: Uuid, events: &[&str]) {
    eventually(
        &format!("timeline of {order_id} to hold {events:?}"),
        SAGA_TIMEOUT,
        || async {
            let timeline = api.timeline(order_id).await;
            events
                .iter()
                .all(|event| timeline.iter().any(|seen| seen == event))
                .then_some(())
        },
    )
    .await
}

#[tokio::test]
async fn an_order_with_stock_money_and_a_served_country_is_confirmed() {
    let api = Api::new();
    let (apple, pear, customer) = (unique("apple"), unique("pear"), unique("customer"));
    api.create_product(&apple, 250, 10).await;
    api.create_product(&pear, 1_000, 3).await;
    api.open_account(&customer, 10_000).await;

    let order_id = api
        .place_order(&customer, &[(&apple, 4), (&pear, 1)], "FR")
        .await;
    let order = api.wait_terminal(order_id).await;

    assert_eq!(order["status"], "CONFIRMED", "{order}");
    assert_eq!(order["total_cents"], 2_000);
    assert_eq!(order["cancellation_reason"], json!(null));
    assert_eq!(order["customer_id"], customer.as_str());
    wait_stock(&api, &apple, 6, 4).await;
    wait_stock(&api, &pear, 2, 1).await;
    assert_eq!(api.balance(&customer).await, 8_000);
    let (status, payment) = api.payment(order_id).await;
    assert_eq!(
        (status, &payment["status"], &payment["amount_cents"]),
        (200, &json!("CHARGED"), &json!(2_000))
    );
    let (status, shipment) = api.shipment(order_id).await;
    assert_eq!(
        (status, &shipment["status"], &shipment["country"]),
        (200, &json!("SCHEDULED"), &json!("FR"))
    );
    assert_eq!(
        api.timeline(order_id).await,
        [
            "order.created.v1",
            "inventory.reserved.v1",
            "payment.charged.v2",
            "shipment.scheduled.v1",
            "order.confirmed.v1"
        ]
    );
    assert_eq!(
        api.order(order_id).await["payment_method"],
        "account_balance"
    );
}

#[tokio::test]
async fn too_little_stock_cancels_with_out_of_stock_and_charges_nothing() {
    let api = Api::new();
    let (sku, other, customer) = (unique("sku"), unique("sku"), unique("customer"));
    api.create_product(&sku, 100, 2).await;
    api.create_product(&other, 100, 5).await;
    api.open_account(&customer, 5_000).await;

    // The second line cannot be served, so the first must not stay reserved either.
    let order_id = api
        .place_order(&customer, &[(&other, 1), (&sku, 3)], "FR")
        .await;
    let order = api.wait_terminal(order_id).await;

    assert_eq!(order["status"], "CANCELLED", "{order}");
    assert_eq!(order["cancellation_reason"], "out_of_stock");
    wait_stock(&api, &sku, 2, 0).await;
    wait_stock(&api, &other, 5, 0).await;
    assert_eq!(api.balance(&customer).await, 5_000);
    assert_eq!(api.payment(order_id).await.0, 404);
    assert_eq!(api.shipment(order_id).await.0, 404);
}

/// Waits until the order service's catalog replica lists `sku`: it has applied the topic at
/// least that far.
async fn wait_replicated(sku: &str) {
    let backdoor = Backdoor::new();
    let pool = backdoor
        .database(&backdoor.system.database_urls.order)
        .await;
    eventually(
        &format!("the order service's catalog replica to list {sku}"),
        SAGA_TIMEOUT,
        || async {
            let listed: Option<i64> =
                sqlx::query_scalar("select version from catalog where sku = $1")
                    .bind(sku)
                    .fetch_optional(&pool)
                    .await
                    .expect("reading the replica");
            listed.map(|_| ())
        },
    )
    .await;
}

/// The order service refuses a sku its current catalog replica never saw (422): no order is
/// made and the customer pays nothing.
#[tokio::test]
async fn an_unknown_product_is_refused_with_unknown_product() {
    let api = Api::new();
    let (known, customer) = (unique("sku"), unique("customer"));
    api.open_account(&customer, 5_000).await;
    api.create_product(&known, 100, 1).await;
    wait_replicated(&known).await;

    let (status, reply) = api
        .post(
            format!("{}/orders", api.system.order_url),
            order_body(&customer, &[(&unique("missing"), 1)], "FR"),
        )
        .await;
    assert_eq!(status, 422, "{reply}");
    assert_eq!(reply["error"]["code"], "unknown_product", "{reply}");
    let (_, orders) = api
        .get(format!(
            "{}/orders?customer_id={customer}",
            api.system.order_url
        ))
        .await;
    assert_eq!(orders["orders"], json!([]), "{orders}");
    assert_eq!(api.balance(&customer).await, 5_000);
}

/// A sku the replica lists but inventory never had (here a row written into the replica by
/// hand) is accepted, and inventory's reservation cancels the order: nothing is charged.
#[tokio::test]
async fn a_sku_inventory_never_had_is_cancelled_with_unknown_product() {
    let api = Api::new();
    let (ghost, customer) = (unique("ghost"), unique("customer"));
    api.open_account(&customer, 5_000).await;
    let backdoor = Backdoor::new();
    let order_db = backdoor
        .database(&backdoor.system.database_urls.order)
        .await;
    sqlx::query(
        "insert into catalog (sku, name, price_cents, available, version, updated_at,
                              source_partition, source_offset)
         values ($1, 'Ghost', 100, 10, 1, now(), 0, 0)",
    )
    .bind(&ghost)
    .execute(&order_db)
    .await
    .expect("listing a product inventory never had");

    let order_id = api.place_order(&customer, &[(&ghost, 1)], "FR").await;
    let order = api.wait_terminal(order_id).await;
    assert_eq!(order["status"], "CANCELLED", "{order}");
    assert_eq!(order["cancellation_reason"], "unknown_product", "{order}");
    assert_eq!(api.payment(order_id).await.0, 404);
    assert_eq!(api.balance(&customer).await, 5_000);
}

#[tokio::test]
async fn a_declined_payment_releases_the_stock() {
    let api = Api::new();
    let (sku, poor, nobody) = (unique("sku"), unique("poor"), unique("no-account"));
    api.create_product(&sku, 700, 5).await;
    api.open_account(&poor, 1_000).await;

    let low_balance = api.place_order(&poor, &[(&sku, 2)], "FR").await;
    let no_account = api.place_order(&nobody, &[(&sku, 1)], "FR").await;

    for order_id in [low_balance, no_account] {
        let order = api.wait_terminal(order_id).await;
        assert_eq!(order["status"], "CANCELLED", "{order}");
        assert_eq!(order["cancellation_reason"], "payment_declined");
        let (status, payment) = api.payment(order_id).await;
        assert_eq!((status, &payment["status"]), (200, &json!("DECLINED")));
        assert_eq!(api.shipment(order_id).await.0, 404);
    }
    assert_eq!(
        api.payment(low_balance).await.1["reason"],
        "insufficient_funds"
    );
    assert_eq!(api.payment(no_account).await.1["reason"], "no_account");
    wait_stock(&api, &sku, 5, 0).await;
    assert_eq!(api.balance(&poor).await, 1_000);
    wait_timeline(
        &api,
        low_balance,
        &[
            "payment.declined.v1",
            "order.cancelled.v1",
            "inventory.released.v1",
        ],
    )
    .await;
}

#[tokio::test]
async fn an_unserved_country_refunds_the_payment_and_releases_the_stock() {
    let api = Api::new();
    let (sku, customer) = (unique("sku"), unique("customer"));
    api.create_product(&sku, 1_250, 4).await;
    api.open_account(&customer, 10_000).await;

    let order_id = api.place_order(&customer, &[(&sku, 2)], "AQ").await;
    let order = api.wait_terminal(order_id).await;

    assert_eq!(order["status"], "CANCELLED", "{order}");
    assert_eq!(order["cancellation_reason"], "shipping_unavailable");
    wait_balance(&api, &customer, 10_000).await;
    wait_stock(&api, &sku, 4, 0).await;
    let (_, payment) = api.payment(order_id).await;
    assert_eq!(
        (&payment["status"], &payment["amount_cents"]),
        (&json!("REFUNDED"), &json!(2_500))
    );
    let (_, shipment) = api.shipment(order_id).await;
    assert_eq!(
        (&shipment["status"], &shipment["country"]),
        (&json!("REJECTED"), &json!("AQ"))
    );
    let compensations = [
        "shipment.rejected.v1",
        "order.cancelled.v1",
        "payment.refunded.v1",
        "inventory.released.v1",
    ];
    wait_timeline(&api, order_id, &compensations).await;
}

/// Cancels `order_id` as its customer: 202 `CANCELLED`, and a second time 409.
async fn cancel(api: &Api, order_id: Uuid) {
    let url = format!("{}/orders/{order_id}/cancel", api.system.order_url);
    let (status, reply) = api.send(api.http.post(&url)).await;
    assert_eq!(
        (status, &reply["status"], &reply["cancellation_reason"]),
        (202, &json!("CANCELLED"), &json!("cancelled_by_customer")),
        "{reply}"
    );
    let (status, reply) = api.send(api.http.post(&url)).await;
    assert_eq!(
        (status, &reply["error"]["code"]),
        (409, &json!("order_not_pending"))
    );
}

/// The database status of `order_id`'s row in `table` (`None`: no row), bypassing the API.
async fn stored_status(pool: &sqlx::PgPool, table: &str, order_id: Uuid) -> Option<String> {
    sqlx::query_scalar(&format!("select status from {table} where order_id = $1"))
        .bind(order_id)
        .fetch_optional(pool)
        .await
        .unwrap()
}

#[tokio::test]
async fn a_customer_cancellation_before_the_stock_is_reserved_charges_nothing() {
    let (api, backdoor) = (Api::new(), Backdoor::new());
    let (sku, customer) = (unique("sku"), unique("customer"));
    api.create_product(&sku, 300, 5).await;
    api.open_account(&customer, 10_000).await;
    // Hold the product's row: inventory cannot reserve, so nothing happens past the order.
    let inventory = backdoor.database(&api.system.database_urls.inventory).await;
    let mut hold_stock = inventory.begin().await.unwrap();
    sqlx::query("select 1 from products where sku = $1 for update")
        .bind(&sku)
        .execute(&mut *hold_stock)
        .await
        .unwrap();

    let order_id = api.place_order(&customer, &[(&sku, 2)], "FR").await;
    cancel(&api, order_id).await;
    // Payment and shipping hear of the cancellation before any reservation exists.
    let payments = backdoor.database(&api.system.database_urls.payment).await;
    let shipments = backdoor.database(&api.system.database_urls.shipping).await;
    eventually(
        "payment and shipping to void the order",
        SAGA_TIMEOUT,
        || async {
            let voided = Some("VOIDED".to_owned());
            (stored_status(&payments, "payments", order_id).await == voided
                && stored_status(&shipments, "shipments", order_id).await == voided)
                .then_some(())
        },
    )
    .await;
    hold_stock.commit().await.unwrap();

    // The reservation made late is released; the void stops the charge.
    wait_timeline(&api, order_id, &["inventory.released.v1"]).await;
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
    assert_eq!(api.payment(order_id).await.0, 404, "never charged");
    assert_eq!(api.shipment(order_id).await.0, 404, "never shipped");
    let order = api.order(order_id).await;
    assert_eq!(
        (&order["status"], &order["cancellation_reason"]),
        (&json!("CANCELLED"), &json!("cancelled_by_customer"))
    );
    assert_eq!(
        api.timeline(order_id).await,
        [
            "order.created.v1",
            "order.cancelled.v1",
            "inventory.reserved.v1",
            "inventory.released.v1"
        ]
    );
}

#[tokio::test]
async fn a_customer_cancellation_after_the_shipment_is_scheduled_undoes_all_three() {
    let (api, backdoor) = (Api::new(), Backdoor::new());
    let (sku, customer) = (unique("sku"), unique("customer"));
    api.create_product(&sku, 300, 5).await;
    api.open_account(&customer, 10_000).await;
    // The order service is kept from confirming: a finished decoy order's row is locked, and a
    // copy (new id) of its shipment.scheduled is put on every partition of the shipping topic,
    // so ours (shipment.scheduled) queues behind one of them.
    let decoy_customer = unique("decoy");
    api.open_account(&decoy_customer, 1_000).await;
    let decoy = api.place_order(&decoy_customer, &[(&sku, 1)], "FR").await;
    assert_eq!(api.wait_terminal(decoy).await["status"], "CONFIRMED");
    api.create_product(&sku_restock(&sku), 300, 5).await;
    let orders = backdoor.database(&api.system.database_urls.order).await;
    let mut hold_orders = orders.begin().await.unwrap();
    sqlx::query("select 1 from orders where order_id = $1 for update")
        .bind(decoy)
        .execute(&mut *hold_orders)
        .await
        .unwrap();
    let shipping = backdoor.database(&api.system.database_urls.shipping).await;
    let scheduled: sqlx::types::Json<serde_json::Value> = sqlx::query_scalar(
        "select envelope from outbox_published \
         where message_key = $1 and event_type = 'shipment.scheduled.v1'",
    )
    .bind(decoy.to_string())
    .fetch_one(&shipping)
    .await
    .unwrap();
    for partition in 0..3 {
        // KAFKA_TOPIC_PARTITIONS
        let mut copy = scheduled.0.clone();
        copy["id"] = json!(Uuid::now_v7());
        backdoor
            .produce_to(
                Topic::Shipping,
                Some(partition),
                &decoy.to_string(),
                &serde_json::to_vec(&copy).unwrap(),
                copy["type"].as_str(),
            )
            .await;
    }

    let order_id = api
        .place_order(&customer, &[(&sku_restock(&sku), 2)], "FR")
        .await;
    eventually("the charge and the shipment", SAGA_TIMEOUT, || async {
        (api.payment(order_id).await.1["status"] == "CHARGED"
            && api.shipment(order_id).await.1["status"] == "SCHEDULED")
            .then_some(())
    })
    .await;
    assert_eq!(api.balance(&customer).await, 9_400);
    cancel(&api, order_id).await;
    // Every step is compensated while the order service still cannot read a thing.
    eventually("the compensations", SAGA_TIMEOUT, || async {
        let product = api.product(&sku_restock(&sku)).await;
        (api.payment(order_id).await.1["status"] == "REFUNDED"
            && api.shipment(order_id).await.1["status"] == "CANCELLED"
            && product["reserved"] == 0)
            .then_some(())
    })
    .await;
    hold_orders.commit().await.unwrap();

    // The shipment.scheduled it reads late does not confirm a cancelled order.
    wait_timeline(
        &api,
        order_id,
        &[
            "shipment.scheduled.v1",
            "payment.refunded.v1",
            "inventory.released.v1",
            "shipment.cancelled.v1",
        ],
    )
    .await;
    backdoor.wait_quiet().await;
    let (_, payment) = api.payment(order_id).await;
    assert_eq!(
        (&payment["status"], &payment["amount_cents"]),
        (&json!("REFUNDED"), &json!(600)),
        "{payment}"
    );
    assert_eq!(api.balance(&customer).await, 10_000);
    let product = api.product(&sku_restock(&sku)).await;
    assert_eq!(
        (
            &product["available"],
            &product["reserved"],
            &product["sold"]
        ),
        (&json!(5), &json!(0), &json!(0)),
        "{product}"
    );
    assert_eq!(api.shipment(order_id).await.1["status"], "CANCELLED");
    let order = api.order(order_id).await;
    assert_eq!(
        (&order["status"], &order["cancellation_reason"]),
        (&json!("CANCELLED"), &json!("cancelled_by_customer"))
    );
}

/// A second product, so the decoy's sale does not count in this order's stock.
fn sku_restock(sku: &str) -> String {
    format!("{sku}-b")
}

#[tokio::test]
async fn a_confirmed_order_cannot_be_cancelled() {
    let api = Api::new();
    let (sku, customer) = (unique("sku"), unique("customer"));
    api.create_product(&sku, 300, 5).await;
    api.open_account(&customer, 10_000).await;
    let order_id = api.place_order(&customer, &[(&sku, 1)], "DE").await;
    assert_eq!(api.wait_terminal(order_id).await["status"], "CONFIRMED");

    let url = format!("{}/orders/{order_id}/cancel", api.system.order_url);
    let (status, reply) = api.send(api.http.post(&url)).await;

    assert_eq!(
        (status, &reply["error"]["code"]),
        (409, &json!("order_not_pending"))
    );
    assert_eq!(api.order(order_id).await["status"], "CONFIRMED");
    assert_eq!(api.balance(&customer).await, 9_700);
}

#[tokio::test]
async fn an_idempotency_key_retry_creates_one_order() {
    let api = Api::new();
    let (sku, customer) = (unique("sku"), unique("customer"));
    api.create_product(&sku, 100, 50).await;
    api.open_account(&customer, 100_000).await;
    let key = unique("key");
    let body = e2e::order_body(&customer, &[(&sku, 1)], "FR");
    let place = |body: serde_json::Value| {
        let request = api
            .http
            .post(format!("{}/orders", api.system.order_url))
            .header("Idempotency-Key", &key)
            .json(&body);
        api.send(request)
    };

    // Many clients retrying the same request at once.
    let replies = futures::future::join_all((0..20).map(|_| place(body.clone()))).await;
    let ids: std::collections::HashSet<String> = replies
        .iter()
        .map(|(status, reply)| {
            assert_eq!(*status, 202, "{reply}");
            reply["order_id"].as_str().expect("an order id").to_owned()
        })
        .collect();
    assert_eq!(ids.len(), 1, "{ids:?}");
    let order_id: uuid::Uuid = ids.iter().next().unwrap().parse().unwrap();

    assert_eq!(api.wait_terminal(order_id).await["status"], "CONFIRMED");
    let (status, reply) = place(body.clone()).await;
    assert_eq!(
        (status, reply["order_id"].as_str()),
        (202, Some(order_id.to_string().as_str()))
    );
    assert_eq!(reply["status"], "CONFIRMED");

    let different = e2e::order_body(&customer, &[(&sku, 2)], "FR");
    let (status, reply) = place(different).await;
    assert_eq!(
        (status, &reply["error"]["code"]),
        (422, &json!("idempotency_key_reused"))
    );

    let (_, page) = api
        .get(format!(
            "{}/orders?customer_id={customer}",
            api.system.order_url
        ))
        .await;
    assert_eq!(page["orders"].as_array().map(Vec::len), Some(1), "{page}");
    wait_stock(&api, &sku, 49, 1).await;
    assert_eq!(api.balance(&customer).await, 99_900);
}

#[tokio::test]
async fn a_hundred_concurrent_orders_for_the_last_ten_units_confirm_exactly_ten() {
    let api = Api::new();
    let sku = unique("last-ten");
    api.create_product(&sku, 500, 10).await;
    let customers: Vec<String> = (0..100).map(|_| unique("buyer")).collect();
    futures::future::join_all(
        customers
            .iter()
            .map(|customer| api.open_account(customer, 10_000)),
    )
    .await;

    let line = [(sku.as_str(), 1)];
    let order_ids = futures::future::join_all(
        customers
            .iter()
            .map(|customer| api.place_order(customer, &line, "FR")),
    )
    .await;
    let orders = futures::future::join_all(order_ids.iter().map(|id| api.wait_terminal(*id))).await;

    let confirmed = orders
        .iter()
        .filter(|order| order["status"] == "CONFIRMED")
        .count();
    assert_eq!(confirmed, 10);
    for order in orders.iter().filter(|order| order["status"] == "CANCELLED") {
        assert_eq!(order["cancellation_reason"], "out_of_stock", "{order}");
    }
    wait_stock(&api, &sku, 0, 10).await;
    let balances =
        futures::future::join_all(customers.iter().map(|customer| api.balance(customer))).await;
    assert_eq!(
        balances.iter().filter(|balance| **balance == 9_500).count(),
        10
    );
    assert_eq!(
        balances
            .iter()
            .filter(|balance| **balance == 10_000)
            .count(),
        90
    );
}
