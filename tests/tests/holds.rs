//! The participants' hold timeout end to end: a reservation, charge and shipment that no
//! decision reaches within `HOLD_TIMEOUT_MS` are compensated, and a confirmed order's are not.
//! The first test stalls the whole order service on a row lock, so they run one at a time.

use std::time::Duration;

use e2e::{eventually, system_with, unique, Api, Backdoor, Settings, SAGA_TIMEOUT};
use serde_json::json;
use sqlx::PgPool;
use tokio::sync::Mutex;
use uuid::Uuid;

/// Holds expire fast here; sagas still have a minute before the order service times them out.
const HOLD_TIMEOUT: Duration = Duration::from_secs(5);
const SETTINGS: Settings = Settings {
    saga_deadline_ms: 60_000,
    hold_timeout_ms: Some(HOLD_TIMEOUT.as_millis() as u64),
    otlp_endpoint: None,
};
static ONE_AT_A_TIME: Mutex<()> = Mutex::const_new(());

fn clients() -> (Api, Backdoor) {
    let system = system_with(SETTINGS);
    (Api::on(system), Backdoor::on(system))
}

/// `table`'s status and reason for the order, once it has a row.
async fn hold(pool: &PgPool, table: &str, order_id: Uuid) -> Option<(String, Option<String>)> {
    sqlx::query_as(&format!(
        "select status, reason from {table} where order_id = $1"
    ))
    .bind(order_id)
    .fetch_optional(pool)
    .await
    .unwrap()
}

#[tokio::test]
async fn holds_no_decision_reaches_are_compensated_after_the_hold_timeout() {
    let _serial = ONE_AT_A_TIME.lock().await;
    let (api, backdoor) = clients();
    let (sku, customer) = (unique("sku"), unique("customer"));
    api.create_product(&sku, 400, 5).await;
    api.open_account(&customer, 10_000).await;
    let databases = &api.system.database_urls;
    let (orders, inventory) = (
        backdoor.database(&databases.order).await,
        backdoor.database(&databases.inventory).await,
    );
    let (payments, shipments) = (
        backdoor.database(&databases.payment).await,
        backdoor.database(&databases.shipping).await,
    );

    // Stall inventory on the product while the order is placed, then stall the order service
    // on the order: the participants go on, the order service cannot decide.
    let mut stall_inventory = inventory.begin().await.unwrap();
    sqlx::query("select 1 from products where sku = $1 for update")
        .bind(&sku)
        .execute(&mut *stall_inventory)
        .await
        .unwrap();
    let order_id = api.place_order(&customer, &[(&sku, 2)], "FR").await;
    let mut stall_order = orders.begin().await.unwrap();
    sqlx::query("select 1 from orders where order_id = $1 for update")
        .bind(order_id)
        .execute(&mut *stall_order)
        .await
        .unwrap();
    stall_inventory.commit().await.unwrap();

    eventually(
        "every participant to hold something",
        SAGA_TIMEOUT,
        || async {
            let scheduled = hold(&shipments, "shipments", order_id).await;
            (scheduled.map(|(status, _)| status).as_deref() == Some("SCHEDULED")).then_some(())
        },
    )
    .await;
    assert_eq!(api.balance(&customer).await, 9_200);

    // No decision comes: every hold is compensated, with reason hold_expired.
    let expired = |status: &str| Some((status.to_owned(), Some("hold_expired".to_owned())));
    eventually("the holds to expire", SAGA_TIMEOUT, || async {
        let all = (
            hold(&inventory, "reservations", order_id).await,
            hold(&payments, "payments", order_id).await,
            hold(&shipments, "shipments", order_id).await,
        );
        (all == (
            expired("RELEASED"),
            expired("REFUNDED"),
            expired("CANCELLED"),
        ))
            .then_some(())
    })
    .await;
    let product = api.product(&sku).await;
    assert_eq!(
        (
            &product["available"],
            &product["reserved"],
            &product["sold"]
        ),
        (&json!(5), &json!(0), &json!(0))
    );
    assert_eq!(api.balance(&customer).await, 10_000);
    assert_eq!(api.order(order_id).await["status"], "PENDING");

    // The order service comes back to the whole story: a compensation before its decision
    // cancels the order; a confirmation that raced the expiries ends it FAILED at hold.expired.
    // Either way nothing is held and nothing is charged or sold.
    stall_order.rollback().await.unwrap();
    // A confirmation that raced the expiries is terminal for a moment: the order is CONFIRMED
    // until the compensations behind it are read, then FAILED. Wait for where it ends.
    let order = eventually(
        "the order to end CANCELLED or FAILED",
        SAGA_TIMEOUT,
        || async {
            let order = api.order(order_id).await;
            matches!(order["status"].as_str(), Some("CANCELLED" | "FAILED")).then_some(order)
        },
    )
    .await;
    eprintln!("the order ended {}", order["status"]);
    match order["status"].as_str() {
        Some("CANCELLED") => assert_eq!(order["cancellation_reason"], "timeout", "{order}"),
        Some("FAILED") => {
            assert_eq!(order["failed_step"], "hold.expired", "{order}");
            // Each participant recorded the confirmation that came after its expiry.
            for (pool, table) in [
                (&inventory, "reservations"),
                (&payments, "payments"),
                (&shipments, "shipments"),
            ] {
                eventually(&format!("{table} to record the late confirmation"), SAGA_TIMEOUT, || async {
                    let late: bool = sqlx::query_scalar(&format!(
                        "select confirmed_at is not null and reason = 'hold_expired' from {table} where order_id = $1"
                    ))
                    .bind(order_id)
                    .fetch_one(pool)
                    .await
                    .unwrap();
                    late.then_some(())
                })
                .await;
            }
        }
        _ => panic!("a saga whose holds expired ended {order}"),
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let product = api.product(&sku).await;
    assert_eq!(
        (
            &product["available"],
            &product["reserved"],
            &product["sold"]
        ),
        (&json!(5), &json!(0), &json!(0))
    );
    assert_eq!(api.balance(&customer).await, 10_000);
}

#[tokio::test]
async fn a_confirmed_orders_holds_are_never_compensated_by_the_timer() {
    let _serial = ONE_AT_A_TIME.lock().await;
    let (api, backdoor) = clients();
    let (sku, customer) = (unique("sku"), unique("customer"));
    api.create_product(&sku, 250, 4).await;
    api.open_account(&customer, 1_000).await;
    let order_id = api.place_order(&customer, &[(&sku, 2)], "FR").await;
    let order = api.wait_terminal(order_id).await;
    assert_eq!(order["status"], "CONFIRMED", "{order}");

    // Well past the hold timeout, plus sweeps.
    tokio::time::sleep(HOLD_TIMEOUT + Duration::from_secs(3)).await;
    let product = api.product(&sku).await;
    assert_eq!(
        (
            &product["available"],
            &product["reserved"],
            &product["sold"]
        ),
        (&json!(2), &json!(0), &json!(2))
    );
    assert_eq!(api.balance(&customer).await, 500);
    let (_, payment) = api.payment(order_id).await;
    assert_eq!(payment["status"], "CHARGED", "{payment}");
    let (_, shipment) = api.shipment(order_id).await;
    assert_eq!(shipment["status"], "SCHEDULED", "{shipment}");
    assert_eq!(api.order(order_id).await["status"], "CONFIRMED");
    let payments = backdoor.database(&api.system.database_urls.payment).await;
    let settled: bool =
        sqlx::query_scalar("select confirmed_at is not null from payments where order_id = $1")
            .bind(order_id)
            .fetch_one(&payments)
            .await
            .unwrap();
    assert!(settled, "the charge of a confirmed order is settled");
}
