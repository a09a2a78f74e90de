//! The payment ledger end to end, against the real broker and PostgreSQL: a saga's charge and
//! refund land in the customer's ledger, each caused by the event the order's timeline shows,
//! between a deposit made over HTTP, and every ledger folds to its balance.

use e2e::{eventually, unique, Api, Backdoor, SAGA_TIMEOUT};
use serde_json::{json, Value};
use uuid::Uuid;

/// The id of the order's `event_type` event, from its timeline.
async fn event_id(api: &Api, order_id: Uuid, event_type: &str) -> Value {
    let (status, timeline) = api
        .get(format!(
            "{}/orders/{order_id}/timeline",
            api.system.order_url
        ))
        .await;
    assert_eq!(status, 200, "{timeline}");
    timeline["events"]
        .as_array()
        .expect("events")
        .iter()
        .find(|event| event["type"] == event_type)
        .map(|event| event["event_id"].clone())
        .unwrap_or_else(|| panic!("no {event_type} in {timeline}"))
}

#[tokio::test]
async fn a_sagas_charge_and_refund_are_in_the_ledger_caused_by_their_events() {
    let api = Api::new();
    let (sku, customer) = (unique("tea"), unique("customer"));
    api.create_product(&sku, 300, 10).await;
    api.open_account(&customer, 5_000).await;

    let confirmed = api.place_order(&customer, &[(&sku, 2)], "FR").await;
    assert_eq!(api.wait_terminal(confirmed).await["status"], "CONFIRMED");
    let deposits = format!("{}/accounts/{customer}/deposits", api.system.payment_url);
    let (status, deposit) = api
        .send(
            api.http
                .post(&deposits)
                .header("idempotency-key", "top-up-1")
                .json(&json!({"amount_cents": 1_000})),
        )
        .await;
    assert_eq!(status, 201, "{deposit}");
    // Not served in AQ: charged, then refunded when the order is cancelled.
    let cancelled = api.place_order(&customer, &[(&sku, 1)], "AQ").await;
    assert_eq!(api.wait_terminal(cancelled).await["status"], "CANCELLED");
    eventually("the refund", SAGA_TIMEOUT, || async {
        (api.balance(&customer).await == 5_400).then_some(())
    })
    .await;

    let (status, page) = api
        .get(format!(
            "{}/accounts/{customer}/ledger",
            api.system.payment_url
        ))
        .await;
    assert_eq!(status, 200, "{page}");
    let entries = page["entries"].as_array().expect("entries");
    let summary: Vec<(i64, &str, i64, i64, Option<&str>)> = entries
        .iter()
        .map(|e| {
            (
                e["version"].as_i64().unwrap(),
                e["kind"].as_str().unwrap(),
                e["amount_cents"].as_i64().unwrap(),
                e["balance_after_cents"].as_i64().unwrap(),
                e["order_id"].as_str(),
            )
        })
        .collect();
    let (confirmed_id, cancelled_id) = (confirmed.to_string(), cancelled.to_string());
    assert_eq!(
        summary,
        [
            (1, "OPENED", 5_000, 5_000, None),
            (2, "CHARGED", -600, 4_400, Some(confirmed_id.as_str())),
            (3, "DEPOSITED", 1_000, 5_400, None),
            (4, "CHARGED", -300, 5_100, Some(cancelled_id.as_str())),
            (5, "REFUNDED", 300, 5_400, Some(cancelled_id.as_str())),
        ],
        "{page}"
    );
    assert_eq!(page["next_cursor"], Value::Null);
    assert_eq!(entries[2]["causation_id"], deposit["causation_id"]);
    // Each saga entry names the event it was applied for.
    assert_eq!(
        entries[1]["causation_id"],
        event_id(&api, confirmed, "inventory.reserved.v1").await
    );
    assert_eq!(
        entries[3]["causation_id"],
        event_id(&api, cancelled, "inventory.reserved.v1").await
    );
    assert_eq!(
        entries[4]["causation_id"],
        event_id(&api, cancelled, "order.cancelled.v1").await
    );
    // The balance just before the deposit, from the ledger.
    let deposited_at = entries[2]["occurred_at"].as_str().unwrap();
    let before: chrono::DateTime<chrono::Utc> = deposited_at.parse().unwrap();
    let before = (before - chrono::Duration::microseconds(1))
        .to_rfc3339_opts(chrono::SecondsFormat::Micros, true);
    let (status, then) = api
        .get(format!(
            "{}/accounts/{customer}?as_of={before}",
            api.system.payment_url
        ))
        .await;
    assert_eq!(
        (status, &then["balance_cents"], &then["version"]),
        (200, &json!(4_400), &json!(2)),
        "{then}"
    );

    // Every ledger of the system (other tests' accounts too) folds to its balance.
    let backdoor = Backdoor::new();
    backdoor.wait_quiet().await;
    let payments = backdoor.database(&api.system.database_urls.payment).await;
    let verification = payment_service::verify::verify(&payments)
        .await
        .expect("verifying the ledgers");
    assert!(verification.is_consistent(), "{verification}");
    assert!(verification.accounts >= 1 && verification.entries >= 5);
}
