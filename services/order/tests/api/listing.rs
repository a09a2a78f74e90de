//! `GET /orders`: cursor pages newest first, filters by customer and status, bad queries.

use axum::http::{Method, StatusCode};
use serde_json::{json, Value};
use shared::testing::{assert_error, TestApp};
use uuid::Uuid;

use crate::helpers::{cancel, order_body, place_ok, start};

/// Follows `next_cursor` from `first_uri` (which has a `limit`); returns every page's order ids.
async fn walk(app: &TestApp, first_uri: &str) -> Vec<Vec<Uuid>> {
    let mut pages = Vec::new();
    let mut uri = first_uri.to_owned();
    loop {
        let (status, page) = app.send(Method::GET, &uri, None).await;
        assert_eq!(status, StatusCode::OK, "{page}");
        let ids = page["orders"]
            .as_array()
            .unwrap()
            .iter()
            .map(|o| o["order_id"].as_str().unwrap().parse().unwrap());
        pages.push(ids.collect());
        match page["next_cursor"].as_str() {
            Some(cursor) => uri = format!("{first_uri}&cursor={cursor}"),
            None => return pages,
        }
        assert!(pages.len() <= 20, "pagination does not end");
    }
}

#[tokio::test]
async fn listing_pages_newest_first_and_yields_every_order_once() {
    let app = start().await;
    let mut placed = Vec::new();
    for i in 0..7 {
        placed.push(place_ok(&app, &order_body(if i % 2 == 0 { "mia" } else { "ned" })).await);
    }
    let newest_first: Vec<Uuid> = placed.iter().rev().copied().collect();

    let pages = walk(&app, "/orders?limit=3").await;
    assert_eq!(pages.iter().map(Vec::len).collect::<Vec<_>>(), [3, 3, 1]);
    assert_eq!(pages.concat(), newest_first);

    // A full last page still has a cursor; the page after it is empty and ends the walk.
    assert_eq!(
        walk(&app, "/orders?limit=7").await,
        [newest_first.clone(), Vec::new()]
    );

    let (status, all) = app.send(Method::GET, "/orders", None).await;
    assert_eq!(
        (status, &all["next_cursor"]),
        (StatusCode::OK, &Value::Null)
    );
    assert_eq!(all["orders"].as_array().unwrap().len(), 7);
    assert_eq!(all["orders"][0]["order_id"], json!(newest_first[0]));
    assert_eq!(all["orders"][0]["status"], "PENDING");
}

#[tokio::test]
async fn listing_filters_by_customer_and_status() {
    let app = start().await;
    let mut by_customer: Vec<(&str, Uuid)> = Vec::new();
    for customer in ["oli", "pat", "oli", "pat", "oli"] {
        by_customer.push((customer, place_ok(&app, &order_body(customer)).await));
    }
    let ids = |wanted: &dyn Fn(usize, &str) -> bool| -> Vec<Uuid> {
        by_customer
            .iter()
            .enumerate()
            .rev()
            .filter(|(i, (c, _))| wanted(*i, c))
            .map(|(_, (_, id))| *id)
            .collect()
    };
    // Cancel oli's first order and pat's last.
    for index in [0, 3] {
        assert_eq!(
            cancel(&app, by_customer[index].1).await.0,
            StatusCode::ACCEPTED
        );
    }
    let cancelled = |i: usize| i == 0 || i == 3;

    let cases: Vec<(&str, Vec<Uuid>)> = vec![
        ("customer_id=oli", ids(&|_, c| c == "oli")),
        ("customer_id=pat", ids(&|_, c| c == "pat")),
        ("customer_id=nobody", Vec::new()),
        ("status=CANCELLED", ids(&|i, _| cancelled(i))),
        ("status=PENDING", ids(&|i, _| !cancelled(i))),
        ("status=CONFIRMED", Vec::new()),
        (
            "customer_id=oli&status=PENDING",
            ids(&|i, c| c == "oli" && !cancelled(i)),
        ),
        (
            "customer_id=pat&status=CANCELLED",
            ids(&|i, c| c == "pat" && cancelled(i)),
        ),
    ];
    for (query, expected) in cases {
        // Page size 1 so the filter must also hold across pages.
        let pages = walk(&app, &format!("/orders?limit=1&{query}")).await;
        assert_eq!(pages.concat(), expected, "{query}");
    }
}

#[tokio::test]
async fn listing_with_bad_query_parameters_is_400() {
    let app = start().await;
    let long_customer = format!("customer_id={}", "c".repeat(65));
    let queries = [
        "status=pending",
        "status=SHIPPED",
        "status=",
        "limit=0",
        "limit=101",
        "limit=-1",
        "limit=ten",
        "cursor=not-a-uuid",
        "cursor=",
        "page=2",
        &long_customer,
    ];
    for query in queries {
        let reply = app
            .send(Method::GET, &format!("/orders?{query}"), None)
            .await;
        assert_error(&reply, StatusCode::BAD_REQUEST, "invalid_query");
    }
    let (status, page) = app.send(Method::GET, "/orders?limit=100", None).await;
    assert_eq!(
        (status, page),
        (StatusCode::OK, json!({"orders": [], "next_cursor": null}))
    );
}
