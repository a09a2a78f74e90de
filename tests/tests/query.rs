//! The query service (CQRS read side) end to end: its views of a mixed batch of orders agree
//! with the write side, product names come from its catalog table, lists page and filter,
//! customers are summed up, and bad input gets a JSON 4xx. Real broker and PostgreSQL.

#[path = "support/query.rs"]
#[allow(dead_code)]
mod support;

use e2e::{eventually, Api, Backdoor, SAGA_TIMEOUT};
use serde_json::{json, Value};
use support::{fields_of, mixed_batch, or_null, settled_view};
use uuid::Uuid;

#[tokio::test]
async fn every_order_view_agrees_with_the_order_payment_and_shipping_services() {
    let (api, backdoor) = (Api::new(), Backdoor::new());
    let batch = mixed_batch(&api, &backdoor).await;
    // The catalog replica names the products (read when a view is served).
    let query = backdoor.database(&api.system.database_urls.query).await;
    let name = format!("Product {}", batch.sku);
    eventually(
        "the product in the catalog replica",
        SAGA_TIMEOUT,
        || async {
            let replicated: Option<String> =
                sqlx::query_scalar("select name from catalog where sku = $1")
                    .bind(&batch.sku)
                    .fetch_optional(&query)
                    .await
                    .unwrap();
            (replicated.as_ref() == Some(&name)).then_some(())
        },
    )
    .await;

    for placed in &batch.orders {
        let view = settled_view(&api, placed.order_id).await;
        let order = api.order(placed.order_id).await;
        let what = placed.what;
        assert_eq!(view["order_id"], order["order_id"], "{what}");
        assert_eq!(view["customer_id"], json!(placed.customer), "{what}");
        assert_eq!(
            view["reason"], order["cancellation_reason"],
            "{what}: {view}"
        );
        let payment = api.payment(placed.order_id).await;
        assert_eq!(
            fields_of(&view["payment"], &["status"]),
            or_null(&payment, &["status"]),
            "{what}: {view}"
        );
        if !view["payment"]["amount_cents"].is_null() {
            assert_eq!(view["payment"]["amount_cents"], payment.1["amount_cents"]);
        }
        let shipment = api.shipment(placed.order_id).await;
        assert_eq!(
            fields_of(&view["shipment"], &["status", "country"]),
            or_null(&shipment, &["status", "country"]),
            "{what}: {view}"
        );
        // Every event of the saga is a step, as the order service's timeline lists them.
        let mut steps: Vec<String> = view["steps"]
            .as_array()
            .expect("steps")
            .iter()
            .map(|step| step["type"].as_str().unwrap().to_owned())
            .collect();
        let mut timeline = api.timeline(placed.order_id).await;
        steps.sort();
        timeline.sort();
        assert_eq!(steps, timeline, "{what}");
        let duration = view["duration_ms"]
            .as_i64()
            .expect("a terminal order has a duration");
        assert!((0..60_000).contains(&duration), "{what}: {view}");
        assert!(view["as_of"]["last_event_at"].is_string(), "{view}");
    }

    let [confirmed, out_of_stock, unshippable, declined, cancelled] = &batch.orders[..] else {
        panic!("five orders");
    };
    let view = settled_view(&api, confirmed.order_id).await;
    assert_eq!(view["status"], "CONFIRMED");
    assert_eq!(
        view["lines"],
        json!([{"sku": batch.sku, "product_name": name, "quantity": 2, "unit_price_cents": 1250}])
    );
    assert_eq!(view["total_cents"], 2_500);
    assert_eq!(view["payment"]["method"], "account_balance");
    // What the view reflects: every topic the service reads.
    let offsets = view["as_of"]["offsets"].as_object().expect("offsets");
    for topic in [
        "order.events",
        "inventory.events",
        "payment.events",
        "shipping.events",
    ] {
        let name = format!("{}{topic}", api.system.topic_prefix);
        assert!(offsets.contains_key(&name), "{name} in {offsets:?}");
    }
    for (placed, reason) in [
        (out_of_stock, "out_of_stock"),
        (unshippable, "shipping_unavailable"),
        (declined, "payment_declined"),
        (cancelled, "cancelled_by_customer"),
    ] {
        let view = settled_view(&api, placed.order_id).await;
        assert_eq!(
            (&view["status"], &view["reason"]),
            (&json!("CANCELLED"), &json!(reason))
        );
    }
    assert!(view_of(&api, out_of_stock.order_id).await["lines"][0]["unit_price_cents"].is_null());
    assert_eq!(
        view_of(&api, declined.order_id).await["payment"]["reason"],
        "insufficient_funds"
    );

    // The customer: four orders, one confirmed, what it cost.
    let (status, customer) = api
        .get(format!(
            "{}/views/customers/{}",
            api.system.query_url, batch.rich
        ))
        .await;
    assert_eq!(status, 200, "{customer}");
    assert_eq!(customer["orders"], 4);
    assert_eq!(
        customer["orders_by_status"],
        json!({"PENDING": 0, "CONFIRMED": 1, "CANCELLED": 3, "FAILED": 0})
    );
    assert_eq!(customer["total_spent_cents"], 2_500);
    let (_, poor) = api
        .get(format!(
            "{}/views/customers/{}",
            api.system.query_url, batch.poor
        ))
        .await;
    assert_eq!(
        (&poor["orders"], &poor["total_spent_cents"]),
        (&json!(1), &json!(0))
    );

    // Lists: newest first, in pages, filtered.
    let page = |query: String| {
        let api = &api;
        async move {
            let (status, page) = api
                .get(format!("{}/views/orders?{query}", api.system.query_url))
                .await;
            assert_eq!(status, 200, "{page}");
            page
        }
    };
    let ids = |page: &Value| -> Vec<Uuid> {
        page["orders"]
            .as_array()
            .expect("orders")
            .iter()
            .map(|order| order["order_id"].as_str().unwrap().parse().unwrap())
            .collect()
    };
    let first = page(format!("customer_id={}&limit=3", batch.rich)).await;
    let cursor = first["next_cursor"]
        .as_str()
        .expect("a next page")
        .to_owned();
    let second = page(format!(
        "customer_id={}&limit=3&cursor={cursor}",
        batch.rich
    ))
    .await;
    assert_eq!(second["next_cursor"], Value::Null);
    let mut listed = ids(&first);
    listed.extend(ids(&second));
    let mut expected: Vec<Uuid> = batch
        .orders
        .iter()
        .filter(|placed| placed.customer == batch.rich)
        .map(|placed| placed.order_id)
        .collect();
    expected.sort_by(|a, b| b.cmp(a));
    assert_eq!(listed, expected, "newest first, each once");
    let cancelled_only = page(format!("customer_id={}&status=CANCELLED", batch.rich)).await;
    assert_eq!(ids(&cancelled_only).len(), 3);
    assert!(cancelled_only["orders"]
        .as_array()
        .unwrap()
        .iter()
        .all(|order| order["status"] == "CANCELLED"));
}

async fn view_of(api: &Api, order_id: Uuid) -> Value {
    let (status, view) = api
        .get(format!("{}/views/orders/{order_id}", api.system.query_url))
        .await;
    assert_eq!(status, 200, "{view}");
    view
}

#[tokio::test]
async fn unknown_ids_are_404_and_bad_input_400_always_as_json() {
    let api = Api::new();
    let base = &api.system.query_url;
    let cases = [
        (
            format!("{base}/views/orders/{}", Uuid::now_v7()),
            404,
            "order_not_found",
        ),
        (
            format!("{base}/views/customers/nobody-{}", Uuid::new_v4()),
            404,
            "customer_not_found",
        ),
        (
            format!("{base}/views/orders/not-a-uuid"),
            400,
            "invalid_path",
        ),
        (format!("{base}/views/orders?limit=0"), 400, "invalid_query"),
        (
            format!("{base}/views/orders?limit=501"),
            400,
            "invalid_query",
        ),
        (
            format!("{base}/views/orders?limit=ten"),
            400,
            "invalid_query",
        ),
        (
            format!("{base}/views/orders?status=SHIPPED"),
            400,
            "invalid_query",
        ),
        (
            format!("{base}/views/orders?cursor=yesterday"),
            400,
            "invalid_query",
        ),
        (
            format!("{base}/views/orders?colour=blue"),
            400,
            "invalid_query",
        ),
        (
            format!("{base}/views/orders?customer_id={}", "x".repeat(65)),
            400,
            "invalid_query",
        ),
        (
            format!("{base}/views/orders?customer_id=a%00b"),
            400,
            "invalid_characters",
        ),
        (
            format!("{base}/views/customers/{}", "x".repeat(65)),
            400,
            "invalid_path",
        ),
    ];
    for (url, status, code) in cases {
        let (got, body) = api.get(url.clone()).await;
        assert_eq!(
            (got, &body["error"]["code"]),
            (status, &json!(code)),
            "{url}: {body}"
        );
        assert!(body["error"]["message"].is_string(), "{url}: {body}");
    }
}
