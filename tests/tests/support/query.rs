//! A mixed batch of orders for the query service's tests, and how to read its views.

use e2e::{eventually, unique, Api, Backdoor, SAGA_TIMEOUT};
use serde_json::Value;
use uuid::Uuid;

/// One order of the batch and how the write side ends it.
pub struct Placed {
    pub what: &'static str,
    pub order_id: Uuid,
    pub customer: String,
}

/// The rich customer's orders (confirmed, out of stock, unshippable, cancelled by the customer)
/// and the poor customer's declined one, all settled (the system is quiet).
pub struct Batch {
    pub orders: Vec<Placed>,
    pub rich: String,
    pub poor: String,
    pub sku: String,
}

/// Places the batch and waits until every order is terminal and the system is quiet.
pub async fn mixed_batch(api: &Api, backdoor: &Backdoor) -> Batch {
    let (sku, scarce, held) = (unique("mug"), unique("rare"), unique("held"));
    let (rich, poor) = (unique("rich"), unique("poor"));
    api.create_product(&sku, 1_250, 100).await;
    api.create_product(&scarce, 500, 1).await;
    api.create_product(&held, 300, 5).await;
    api.open_account(&rich, 1_000_000).await;
    api.open_account(&poor, 100).await;
    let mut orders = vec![
        Placed {
            what: "confirmed",
            order_id: api.place_order(&rich, &[(&sku, 2)], "FR").await,
            customer: rich.clone(),
        },
        Placed {
            what: "out_of_stock",
            order_id: api.place_order(&rich, &[(&scarce, 5)], "FR").await,
            customer: rich.clone(),
        },
        Placed {
            what: "unshippable",
            order_id: api.place_order(&rich, &[(&sku, 1)], "AQ").await,
            customer: rich.clone(),
        },
        Placed {
            what: "declined",
            order_id: api.place_order(&poor, &[(&sku, 1)], "FR").await,
            customer: poor.clone(),
        },
    ];
    // Held product row: nothing happens past the order until it is cancelled.
    let inventory = backdoor.database(&api.system.database_urls.inventory).await;
    let mut hold = inventory.begin().await.unwrap();
    sqlx::query("select 1 from products where sku = $1 for update")
        .bind(&held)
        .execute(&mut *hold)
        .await
        .unwrap();
    let cancelled = api.place_order(&rich, &[(&held, 1)], "FR").await;
    let url = format!("{}/orders/{cancelled}/cancel", api.system.order_url);
    let (status, reply) = api.send(api.http.post(&url)).await;
    assert_eq!(status, 202, "{reply}");
    hold.commit().await.unwrap();
    orders.push(Placed {
        what: "cancelled_by_customer",
        order_id: cancelled,
        customer: rich.clone(),
    });
    for placed in &orders {
        api.wait_terminal(placed.order_id).await;
    }
    backdoor.wait_quiet().await;
    Batch {
        orders,
        rich,
        poor,
        sku,
    }
}

/// `GET /views/orders/{order_id}` once it is there and agrees with the order service on the
/// status (the view is eventually consistent).
pub async fn settled_view(api: &Api, order_id: Uuid) -> Value {
    let order = api.order(order_id).await;
    eventually(
        &format!("the view of {order_id} to say {}", order["status"]),
        SAGA_TIMEOUT,
        || async {
            let (status, view) = api
                .get(format!("{}/views/orders/{order_id}", api.system.query_url))
                .await;
            (status == 200 && view["status"] == order["status"]).then_some(view)
        },
    )
    .await
}

/// Every row of the query service's order views, as JSON, by order id.
pub async fn view_rows(backdoor: &Backdoor, api: &Api) -> Vec<Value> {
    let pool = backdoor.database(&api.system.database_urls.query).await;
    let rows: Value = sqlx::query_scalar(
        "select coalesce(jsonb_agg(to_jsonb(v) order by v.order_id), '[]') from order_views v",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    match rows {
        Value::Array(rows) => rows,
        other => panic!("not a list of rows: {other}"),
    }
}

/// `null` when the write side answers 404, else the fields the view shows of it.
pub fn or_null(reply: &(u16, Value), fields: &[&str]) -> Value {
    match reply.0 {
        404 => Value::Null,
        200 => fields
            .iter()
            .map(|field| (field.to_string(), reply.1[field].clone()))
            .collect::<serde_json::Map<String, Value>>()
            .into(),
        status => panic!("unexpected {status}: {}", reply.1),
    }
}

/// The same fields of a view's `payment` or `shipment` (`null` stays `null`).
pub fn fields_of(value: &Value, fields: &[&str]) -> Value {
    if value.is_null() {
        return Value::Null;
    }
    fields
        .iter()
        .map(|field| (field.to_string(), value[field].clone()))
        .collect::<serde_json::Map<String, Value>>()
        .into()
}
