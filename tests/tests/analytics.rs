//! Real-time analytics end to end: orders placed through the order service show up in the
//! query service's windows (`GET /analytics/windows`) and on its live stream
//! (`GET /analytics/stream`), and once quiet the windows equal a recomputation from the order
//! database.

use std::time::Duration;

use e2e::faults::check::windows::{mismatches, read};
use e2e::{eventually, unique, Api, Backdoor, SAGA_TIMEOUT};
use serde_json::Value;

/// Sums `field[key]` over every window of the last hour.
async fn units_of(api: &Api, sku: &str) -> i64 {
    let (status, body) = api
        .get(format!("{}/analytics/windows", api.system.query_url))
        .await;
    assert_eq!(status, 200, "{body}");
    body["windows"]
        .as_array()
        .expect("windows")
        .iter()
        .filter_map(|window| window["units_by_sku"][sku].as_i64())
        .sum()
}

#[tokio::test]
async fn the_windows_count_orders_and_agree_with_the_order_database() {
    let api = Api::new();
    let (sku, customer, stranger) = (unique("sku"), unique("customer"), unique("stranger"));
    api.create_product(&sku, 700, 10).await;
    api.open_account(&customer, 10_000).await;
    let confirmed = api.place_order(&customer, &[(&sku, 3)], "FR").await;
    // No account: declined, hence cancelled.
    let declined = api.place_order(&stranger, &[(&sku, 1)], "FR").await;
    assert_eq!(api.wait_terminal(confirmed).await["status"], "CONFIRMED");
    let declined = api.wait_terminal(declined).await;
    assert_eq!(declined["status"], "CANCELLED");
    assert_eq!(declined["cancellation_reason"], "payment_declined");

    // Both orders ended on topics the query service reads in any order: wait until the
    // windows count the confirmed units and a declined order (never fewer than these two).
    let body = eventually(
        "the confirmed units and a declined order in the windows",
        SAGA_TIMEOUT,
        || async {
            let (status, body) = api
                .get(format!("{}/analytics/windows", api.system.query_url))
                .await;
            assert_eq!(status, 200, "{body}");
            let declined: i64 = body["windows"]
                .as_array()
                .expect("windows")
                .iter()
                .filter_map(|w| w["orders_cancelled"]["payment_declined"].as_i64())
                .sum();
            (units_of(&api, &sku).await == 3 && declined >= 1).then_some(body)
        },
    )
    .await;
    assert_eq!(body["window_ms"], 60_000);
    assert!(body["watermark"].is_string(), "{body}");
    let windows = body["windows"].as_array().expect("windows");
    let sum = |f: &dyn Fn(&Value) -> i64| windows.iter().map(f).sum::<i64>();
    assert!(sum(&|w| w["orders_placed"].as_i64().unwrap_or(0)) >= 2);
    assert!(sum(&|w| w["orders_confirmed"].as_i64().unwrap_or(0)) >= 1);
    assert!(
        sum(&|w| w["orders_cancelled"]["payment_declined"]
            .as_i64()
            .unwrap_or(0))
            >= 1
    );
    assert!(sum(&|w| w["revenue_cents"].as_i64().unwrap_or(0)) >= 2_100);
    assert!(sum(&|w| w["saga_duration_ms"]["count"].as_i64().unwrap_or(0)) >= 2);
    for window in windows {
        assert!(["open", "closed"].contains(&window["state"].as_str().unwrap_or("")));
        assert!(
            window["saga_duration_ms"]["p95_ms"].as_i64()
                >= window["saga_duration_ms"]["p50_ms"].as_i64()
        );
    }

    windows_match_orders(&api).await;
}

/// Once quiet, every window equals the recomputation from the order database. Other tests of
/// this binary place orders too: a comparison that raced one is taken again once quiet.
async fn windows_match_orders(api: &Api) {
    let backdoor = Backdoor::new();
    let databases = &api.system.database_urls;
    let (order_db, query_db) = (
        backdoor.database(&databases.order).await,
        backdoor.database(&databases.query).await,
    );
    let deadline = tokio::time::Instant::now() + SAGA_TIMEOUT;
    loop {
        backdoor.wait_quiet().await;
        let (orders, cells) = read(&order_db, &query_db)
            .await
            .expect("reading both databases");
        assert!(!orders.is_empty());
        let problems = mismatches(&orders, &cells, 60_000);
        if problems.is_empty() {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the windows differ from the order database: {problems:#?}"
        );
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// A refund that can never be made (the account is deleted after the charge) leaves the order
/// `FAILED`: counted in `orders_failed` as well as in `orders_cancelled`.
#[tokio::test]
async fn a_failed_order_is_counted_as_failed() {
    let (api, backdoor) = (Api::new(), Backdoor::new());
    let (sku, customer) = (unique("sku"), unique("customer"));
    api.create_product(&sku, 800, 5).await;
    api.open_account(&customer, 10_000).await;
    // Shipping stalls until the charge is made and the account is gone.
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
    eventually("the order to fail", SAGA_TIMEOUT, || async {
        (api.order(order_id).await["status"] == "FAILED").then_some(())
    })
    .await;
    eventually("a failed order in the windows", SAGA_TIMEOUT, || async {
        let (_, body) = api
            .get(format!("{}/analytics/windows", api.system.query_url))
            .await;
        let failed: i64 = body["windows"]
            .as_array()?
            .iter()
            .filter_map(|w| w["orders_failed"].as_i64())
            .sum();
        (failed >= 1).then_some(())
    })
    .await;
    windows_match_orders(&api).await;
}

#[tokio::test]
async fn bad_window_queries_are_answered_400_in_json() {
    let api = Api::new();
    let url = |query: &str| format!("{}/analytics/windows?{query}", api.system.query_url);
    for query in [
        "from=yesterday",
        "to=2026-13-01T00:00:00Z",
        "from=2026-12-06T12:00:00Z&to=2026-12-06T12:00:00Z",
        "from=2026-12-06T13:00:00Z&to=2026-12-06T12:00:00Z",
        "from=2026-01-01T00:00:00Z&to=2026-02-01T00:00:00Z",
        "from=1900-01-01T00:00:00Z&to=1900-01-01T01:00:00Z",
        "since=2026-12-06T12:00:00Z",
    ] {
        let (status, body) = api.get(url(query)).await;
        assert_eq!(status, 400, "{query}: {body}");
        assert!(body["error"]["code"].is_string(), "{query}: {body}");
        assert!(body["error"]["message"].is_string(), "{query}: {body}");
    }
    let (status, body) = api
        .get(url(
            "from=2026-12-06T10:00:00Z&to=2026-12-06T11:00:00%2B01:00",
        ))
        .await;
    assert_eq!(status, 400, "an offset that makes to = from: {body}");
    let (status, body) = api
        .get(url("from=2020-01-01T00:00:00Z&to=2020-01-01T01:00:00Z"))
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["windows"], serde_json::json!([]));
}

/// One server-sent event: (event name, data).
type SseEvent = (String, String);

/// Reads the next complete event off the stream (skipping keep-alive comments).
async fn next_event(response: &mut reqwest::Response, buffer: &mut String) -> SseEvent {
    loop {
        if let Some(end) = buffer.find("\n\n") {
            let block: String = buffer.drain(..end + 2).collect();
            let (mut name, mut data) = (String::new(), String::new());
            for line in block.lines() {
                if let Some(value) = line.strip_prefix("event:") {
                    name = value.trim().to_owned();
                } else if let Some(value) = line.strip_prefix("data:") {
                    data.push_str(value.strip_prefix(' ').unwrap_or(value));
                }
            }
            if !name.is_empty() || !data.is_empty() {
                return (name, data);
            }
            continue;
        }
        let chunk = response
            .chunk()
            .await
            .expect("reading the stream")
            .expect("the stream stays open");
        buffer.push_str(&String::from_utf8_lossy(&chunk));
    }
}

#[tokio::test]
async fn the_stream_sends_a_snapshot_then_the_window_updates_of_a_new_order() {
    let api = Api::new();
    let mut response = api
        .http
        .get(format!("{}/analytics/stream", api.system.query_url))
        .send()
        .await
        .expect("the stream opens");
    assert_eq!(response.status(), 200);
    assert_eq!(
        response.headers()["content-type"].to_str().unwrap(),
        "text/event-stream"
    );
    let mut buffer = String::new();
    let (name, data) = next_event(&mut response, &mut buffer).await;
    assert_eq!(name, "snapshot");
    let snapshot: Value = serde_json::from_str(&data).expect("a JSON snapshot");
    assert!(snapshot["windows"].is_array(), "{snapshot}");

    let (sku, customer) = (unique("sku"), unique("customer"));
    api.create_product(&sku, 400, 10).await;
    api.open_account(&customer, 10_000).await;
    let order_id = api.place_order(&customer, &[(&sku, 2)], "DE").await;
    let mut placed_seen = false;
    let streamed = tokio::time::timeout(SAGA_TIMEOUT, async {
        loop {
            let (name, data) = next_event(&mut response, &mut buffer).await;
            assert_eq!(name, "window", "{data}");
            let window: Value = serde_json::from_str(&data).expect("a JSON window");
            placed_seen |= window["orders_placed"].as_i64().unwrap_or(0) >= 1;
            if window["units_by_sku"][&sku] == 2 {
                return window;
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("no window update with {sku} within {SAGA_TIMEOUT:?}"));
    assert!(placed_seen || streamed["orders_placed"].as_i64().unwrap_or(0) >= 1);
    assert!(
        streamed["orders_confirmed"].as_i64().unwrap_or(0) >= 1,
        "{streamed}"
    );
    assert!(
        streamed["revenue_cents"].as_i64().unwrap_or(0) >= 800,
        "{streamed}"
    );
    assert!(streamed["start"].is_string() && streamed["end"].is_string());
    assert_eq!(api.wait_terminal(order_id).await["status"], "CONFIRMED");
    // The stream stays open; its keep-alive is a comment, so nothing else is due.
    let _ = tokio::time::timeout(Duration::from_millis(100), response.chunk()).await;
}

/// An event whose window closed long ago (its `occurred_at` two hours back) is applied to that
/// window and counted there as late, not dropped.
#[tokio::test]
async fn a_late_event_is_counted_in_its_closed_window() {
    let (api, backdoor) = (Api::new(), Backdoor::new());
    // Some event of now, so the watermark is about now.
    let (sku, customer) = (unique("sku"), unique("customer"));
    api.create_product(&sku, 100, 5).await;
    api.open_account(&customer, 1_000).await;
    let order_id = api.place_order(&customer, &[(&sku, 1)], "FR").await;
    api.wait_terminal(order_id).await;

    let late_order = uuid::Uuid::now_v7();
    let occurred_at = chrono::Utc::now() - chrono::Duration::hours(2)
        + chrono::Duration::milliseconds(i64::from(late_order.as_u128() as u16));
    let envelope = serde_json::json!({
        "id": uuid::Uuid::now_v7(), "type": "shipment.scheduled.v1", "source": "shipping",
        "occurred_at": occurred_at, "order_id": late_order, "causation_id": null,
        "payload": {"order_id": late_order, "country": "FR"},
    });
    backdoor
        .produce(
            shared::topics::Topic::Shipping,
            &late_order.to_string(),
            envelope.to_string().as_bytes(),
            Some("shipment.scheduled.v1"),
        )
        .await;
    let minute = chrono::Duration::minutes(1);
    let url = format!(
        "{}/analytics/windows?from={}&to={}",
        api.system.query_url,
        (occurred_at - minute).to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        (occurred_at + minute).to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
    );
    let window = eventually("the late event in its window", SAGA_TIMEOUT, || async {
        let (_, body) = api.get(url.clone()).await;
        body["windows"]
            .as_array()?
            .iter()
            .find(|w| w["late_events"].as_i64() > Some(0))
            .cloned()
    })
    .await;
    assert_eq!(window["state"], "closed", "{window}");
    assert_eq!(window["late_events"], 1, "{window}");
    assert_eq!(window["events"], 1, "{window}");
    assert_eq!(window["orders_placed"], 0, "{window}");
}
