//! The replicated catalog end to end: inventory publishes every product's state to the
//! compacted topic `inventory.products`, the order service keeps a replica of it and uses it
//! to enrich order lines and to refuse skus it has never seen, only when it is current; the
//! query service keeps one too and serves it at `GET /catalog`.

use std::time::Duration;

use e2e::{eventually, order_body, unique, Api, Backdoor};
use serde_json::{json, Value};
use sqlx::PgPool;

const REPLICATION: Duration = Duration::from_secs(30);

async fn order_database() -> PgPool {
    let backdoor = Backdoor::new();
    backdoor
        .database(&backdoor.system.database_urls.order)
        .await
}

async fn inventory_database() -> PgPool {
    let backdoor = Backdoor::new();
    backdoor
        .database(&backdoor.system.database_urls.inventory)
        .await
}

/// `sku, name, price_cents, available, version` of `skus` in `table`, in sku order.
async fn listed(
    pool: &PgPool,
    table: &str,
    skus: &[String],
) -> Vec<(String, String, i64, i32, i64)> {
    sqlx::query_as(&format!(
        "select sku, name, price_cents, available, version from {table}
         where sku = any($1) order by sku"
    ))
    .bind(skus)
    .fetch_all(pool)
    .await
    .expect("reading products")
}

/// Waits until the order service's replica lists `sku` with `available` units.
async fn replicated(sku: &str, available: i32) {
    let pool = order_database().await;
    eventually(
        &format!("the catalog replica to list {sku} with {available} available"),
        REPLICATION,
        || async {
            let row: Option<i32> =
                sqlx::query_scalar("select available from catalog where sku = $1")
                    .bind(sku)
                    .fetch_optional(&pool)
                    .await
                    .expect("reading the replica");
            (row == Some(available)).then_some(())
        },
    )
    .await;
}

#[tokio::test]
async fn a_product_created_and_ordered_at_once_is_accepted() {
    let api = Api::new();
    let (sku, customer) = (unique("sku"), unique("customer"));
    api.open_account(&customer, 10_000).await;
    for _ in 0..3 {
        let fresh = unique("fresh");
        api.create_product(&fresh, 300, 5).await;
        let order_id = api.place_order(&customer, &[(&fresh, 1)], "FR").await;
        let order = api.wait_terminal(order_id).await;
        assert_eq!(order["status"], "CONFIRMED", "{order}");
    }
    // Two new products in one order, one line each.
    let other = unique("sku");
    api.create_product(&sku, 250, 5).await;
    api.create_product(&other, 100, 5).await;
    let order_id = api
        .place_order(&customer, &[(&sku, 2), (&other, 1)], "FR")
        .await;
    let order = api.wait_terminal(order_id).await;
    assert_eq!(order["status"], "CONFIRMED", "{order}");
    assert_eq!(order["total_cents"], 600);
}

#[tokio::test]
async fn a_sku_the_current_replica_never_saw_is_refused_with_422() {
    let api = Api::new();
    let (sku, customer) = (unique("sku"), unique("customer"));
    api.open_account(&customer, 10_000).await;
    api.create_product(&sku, 500, 3).await;
    replicated(&sku, 3).await;

    let ghost = unique("ghost");
    let (status, reply) = api
        .post(
            format!("{}/orders", api.system.order_url),
            order_body(&customer, &[(&sku, 1), (&ghost, 1)], "FR"),
        )
        .await;
    assert_eq!(status, 422, "{reply}");
    assert_eq!(reply["error"]["code"], "unknown_product", "{reply}");
    let message = reply["error"]["message"].as_str().expect("a message");
    assert!(message.contains(&ghost), "{message}");
    assert!(!message.contains(&sku), "{message}");
    let (_, orders) = api
        .get(format!(
            "{}/orders?customer_id={customer}",
            api.system.order_url
        ))
        .await;
    assert_eq!(orders["orders"], json!([]), "no order was made: {orders}");
    // The known sku alone is fine.
    api.place_order(&customer, &[(&sku, 1)], "FR").await;
}

#[tokio::test]
async fn order_lines_show_the_name_and_the_price_at_placement() {
    let api = Api::new();
    let (sku, customer) = (unique("sku"), unique("customer"));
    api.open_account(&customer, 10_000).await;
    api.create_product(&sku, 1_234, 4).await;
    replicated(&sku, 4).await;

    let order_id = api.place_order(&customer, &[(&sku, 2)], "FR").await;
    let placed = api.order(order_id).await;
    let line = &placed["items"][0];
    assert_eq!(line["sku"], sku.as_str(), "{placed}");
    assert_eq!(line["quantity"], 2);
    assert_eq!(line["name"], format!("Product {sku}"), "{placed}");
    assert_eq!(line["price_at_placement_cents"], 1_234, "{placed}");

    let order = api.wait_terminal(order_id).await;
    assert_eq!(order["status"], "CONFIRMED", "{order}");
    let line = &order["items"][0];
    assert_eq!(line["unit_price_cents"], 1_234, "{order}");
    assert_eq!(
        line["name"],
        format!("Product {sku}"),
        "kept once priced: {order}"
    );
    assert_eq!(line["price_at_placement_cents"], 1_234, "{order}");
    assert_eq!(order["total_cents"], 2_468);
}

#[tokio::test]
async fn the_replica_equals_inventorys_products_after_a_mixed_batch() {
    let api = Api::new();
    let skus: Vec<String> = (0..3).map(|_| unique("sku")).collect();
    for (n, sku) in skus.iter().enumerate() {
        api.create_product(sku, 100 * (n as i64 + 1), 6).await;
    }
    let (rich, poor) = (unique("rich"), unique("poor"));
    api.open_account(&rich, 1_000_000).await;
    api.open_account(&poor, 150).await;
    let mut orders = Vec::new();
    for n in 0..12 {
        let sku = &skus[n % skus.len()];
        let customer = if n % 4 == 3 { &poor } else { &rich };
        let country = if n % 5 == 4 { "AQ" } else { "FR" };
        orders.push(
            api.place_order(customer, &[(sku, 1 + (n % 2) as i32)], country)
                .await,
        );
    }
    let mut statuses = Vec::new();
    for order_id in orders {
        statuses.push(api.wait_terminal(order_id).await["status"].clone());
    }
    assert!(statuses.contains(&json!("CONFIRMED")), "{statuses:?}");
    assert!(statuses.contains(&json!("CANCELLED")), "{statuses:?}");

    let (inventory, order) = (inventory_database().await, order_database().await);
    // A terminal order may still have its reservation released after it ended: compare the
    // replica with inventory once nothing is reserved any more, reading both every time.
    let products = eventually(
        "inventory to settle and the replica to equal its products",
        REPLICATION,
        || async {
            let reserved: i64 = sqlx::query_scalar(
                "select coalesce(sum(reserved), 0)::int8 from products where sku = any($1)",
            )
            .bind(&skus)
            .fetch_one(&inventory)
            .await
            .expect("reading reservations");
            let products = listed(&inventory, "products", &skus).await;
            let replica = listed(&order, "catalog", &skus).await;
            (reserved == 0 && replica == products).then_some(products)
        },
    )
    .await;
    assert_eq!(products.len(), 3);
    assert!(
        products
            .iter()
            .any(|(_, _, _, available, _)| *available < 6),
        "some stock was sold: {products:?}"
    );
    for (sku, _, _, available, _) in &products {
        let shown: Value = api.product(sku).await;
        assert_eq!(shown["available"], *available);
    }
    let served = eventually(
        "the query service's GET /catalog to equal the products",
        REPLICATION,
        || async {
            let served = query_catalog(&api, &skus).await;
            (served == products).then_some(served)
        },
    )
    .await;
    assert_eq!(served, products);
}

/// `skus` as the query service's `GET /catalog` lists them (paging from just before the
/// first), in the shape of [`listed`].
async fn query_catalog(api: &Api, skus: &[String]) -> Vec<(String, String, i64, i32, i64)> {
    let mut wanted = skus.to_vec();
    wanted.sort();
    let mut cursor = wanted[0][..wanted[0].len() - 1].to_owned();
    let mut found = Vec::new();
    loop {
        let (status, page) = api
            .get(format!(
                "{}/catalog?limit=100&cursor={cursor}",
                api.system.query_url
            ))
            .await;
        assert_eq!(status, 200, "{page}");
        assert!(page["replica"]["current"].is_boolean(), "{page}");
        let products = page["products"].as_array().expect("products").clone();
        for product in &products {
            let sku = product["sku"].as_str().expect("a sku").to_owned();
            if wanted.contains(&sku) {
                found.push((
                    sku,
                    product["name"].as_str().expect("a name").to_owned(),
                    product["price_cents"].as_i64().expect("a price"),
                    product["available"].as_i64().expect("available") as i32,
                    product["version"].as_i64().expect("a version"),
                ));
            }
        }
        match page["next_cursor"].as_str() {
            Some(next) if found.len() < wanted.len() => cursor = next.to_owned(),
            _ => {
                found.sort();
                return found;
            }
        }
    }
}

#[tokio::test]
async fn the_query_catalog_refuses_bad_queries_with_400() {
    let api = Api::new();
    for query in ["limit=0", "limit=501", "limit=x", "cursor=", "colour=red"] {
        let (status, reply) = api
            .get(format!("{}/catalog?{query}", api.system.query_url))
            .await;
        assert_eq!(status, 400, "{query}: {reply}");
        assert!(reply["error"]["code"].is_string(), "{query}: {reply}");
    }
}
