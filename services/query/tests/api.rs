//! The query service's views and analytics settings against a fresh PostgreSQL database per
//! test (no Kafka: events are applied with the consumer's own code). Needs `DATABASE_URL`:
//! run `cargo xtask test -p query-service`.

use axum::http::{Method, StatusCode};
use query_service::analytics::{Analytics, AnalyticsConfig};
use query_service::views::{self, Table};
use serde_json::Value;
use shared::events::{
    OrderCancelled, OrderCreated, OrderLine, PaymentCharged, PaymentMethod, ShippingAddress,
    StockReleased,
};
use shared::testing::TestApp;
use shared::{Envelope, EventPayload};
use sqlx::PgPool;
use uuid::Uuid;

async fn database(name: &str) -> PgPool {
    let pool = shared::testing::fresh_database(name).await;
    query_service::migrate(&pool)
        .await
        .expect("migrating the test database");
    pool
}

fn event<P: EventPayload>(source: &str, order_id: Uuid, payload: &P) -> Envelope {
    Envelope::new(source, order_id, None, payload)
}

fn created(order_id: Uuid, customer_id: &str) -> Envelope {
    event(
        "order",
        order_id,
        &OrderCreated {
            order_id,
            customer_id: customer_id.to_owned(),
            items: vec![OrderLine {
                sku: "MUG".to_owned(),
                quantity: 1,
            }],
            shipping_address: ShippingAddress {
                country: "FR".to_owned(),
                rest: Default::default(),
            },
        },
    )
}

fn charged(order_id: Uuid, customer_id: &str) -> Envelope {
    event(
        "payment",
        order_id,
        &PaymentCharged {
            order_id,
            customer_id: customer_id.to_owned(),
            amount_cents: 1_250,
            shipping_address: ShippingAddress {
                country: "FR".to_owned(),
                rest: Default::default(),
            },
            payment_method: PaymentMethod::AccountBalance,
        },
    )
}

fn cancelled(order_id: Uuid) -> Envelope {
    event(
        "order",
        order_id,
        &OrderCancelled {
            order_id,
            reason: shared::events::CancellationReason::Timeout,
        },
    )
}

async fn apply(pool: &PgPool, table: Table, envelopes: &[&Envelope]) {
    let mut conn = pool.acquire().await.unwrap();
    for envelope in envelopes {
        views::apply(&mut conn, table, envelope).await.unwrap();
    }
}

#[tokio::test]
async fn events_of_an_order_never_created_are_served_by_id_but_never_listed() {
    let pool = database("query_orphans").await;
    let app = TestApp::new(query_service::router(pool.clone()), pool.clone());
    let (placed, orphan) = (Uuid::now_v7(), Uuid::now_v7());
    apply(
        &pool,
        Table::Live,
        &[
            &created(placed, "alice"),
            &charged(placed, "alice"),
            // The order service never had `orphan`: it answers its events with a cancel.
            &charged(orphan, "alice"),
            &cancelled(orphan),
        ],
    )
    .await;

    let (status, page) = app.send(Method::GET, "/views/orders", None).await;
    assert_eq!(status, StatusCode::OK, "{page}");
    let listed: Vec<&str> = page["orders"]
        .as_array()
        .unwrap()
        .iter()
        .map(|order| order["order_id"].as_str().unwrap())
        .collect();
    assert_eq!(listed, [placed.to_string()]);
    let (_, page) = app
        .send(
            Method::GET,
            "/views/orders?customer_id=alice&status=CANCELLED",
            None,
        )
        .await;
    assert_eq!(page["orders"], Value::Array(Vec::new()), "{page}");
    let (status, customer) = app.send(Method::GET, "/views/customers/alice", None).await;
    assert_eq!(status, StatusCode::OK, "{customer}");
    assert_eq!(customer["orders"], 1, "{customer}");
    assert_eq!(customer["orders_by_status"]["CANCELLED"], 0, "{customer}");

    let (status, view) = app
        .send(Method::GET, &format!("/views/orders/{orphan}"), None)
        .await;
    assert_eq!(status, StatusCode::OK, "{view}");
    assert_eq!(view["status"], "CANCELLED", "{view}");
    assert_eq!(view["created_at"], Value::Null, "{view}");
}

#[tokio::test]
async fn a_rebuild_keeps_what_only_the_live_views_still_know() {
    let pool = database("query_carry_over").await;
    sqlx::raw_sql("create table order_views_rebuild (like order_views including all)")
        .execute(&pool)
        .await
        .unwrap();
    // `gone`: retention deleted all its events; `partial`: its refund is gone; `replayed`:
    // the topics hold all of it.
    let (gone, partial, replayed) = (Uuid::now_v7(), Uuid::now_v7(), Uuid::now_v7());
    let partial_events = [
        created(partial, "bob"),
        cancelled(partial),
        event(
            "inventory",
            partial,
            &StockReleased {
                order_id: partial,
                items: Vec::new(),
            },
        ),
    ];
    let replayed_events = [created(replayed, "carol"), charged(replayed, "carol")];
    let gone_events = [created(gone, "dave"), cancelled(gone)];
    let live: Vec<&Envelope> = gone_events
        .iter()
        .chain(&partial_events)
        .chain(&replayed_events)
        .collect();
    apply(&pool, Table::Live, &live).await;
    let in_topics: Vec<&Envelope> = partial_events[..2].iter().chain(&replayed_events).collect();
    apply(&pool, Table::Rebuild, &in_topics).await;

    let mut conn = pool.acquire().await.unwrap();
    let carried = views::carry_over(&mut conn).await.unwrap();
    assert_eq!(carried, 2);
    let differing: i64 = sqlx::query_scalar(
        "select count(*) from order_views l full join order_views_rebuild r using (order_id)
         where to_jsonb(l) is distinct from to_jsonb(r)",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(differing, 0, "the rebuilt rows are the live ones");
    assert_eq!(views::carry_over(&mut conn).await.unwrap(), 0);
}

fn analytics(window_ms: i64) -> Analytics {
    Analytics::new(&AnalyticsConfig {
        analytics_window_ms: window_ms,
        analytics_out_of_orderness_ms: 5_000,
        analytics_allowed_lateness_ms: 30_000,
        analytics_tick_ms: 250,
    })
}

#[tokio::test]
async fn the_window_length_is_kept_from_the_first_start_and_another_is_refused() {
    let pool = database("query_window").await;
    analytics(60_000).check_window(&pool).await.unwrap();
    analytics(60_000).check_window(&pool).await.unwrap();
    let refused = analytics(30_000).check_window(&pool).await.unwrap_err();
    assert!(
        refused.to_string().contains("ANALYTICS_WINDOW_MS is 30000")
            && refused.to_string().contains("windows of 60000 ms"),
        "{refused}"
    );
    let stored: Option<i64> = sqlx::query_scalar("select window_ms from analytics_watermark")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(stored, Some(60_000));
}

#[tokio::test]
async fn a_second_rebuild_exits_while_one_runs() {
    use clap::Parser;
    let admin_url = std::env::var("DATABASE_URL").expect("DATABASE_URL (cargo xtask test)");
    let url = shared::db::create_fresh_database(&admin_url, "query_rebuild_lock")
        .await
        .unwrap();
    let config = query_service::Config::try_parse_from([
        "query-service",
        "--database-url",
        &url,
        "--database-migration-url",
        &url,
        "rebuild",
    ])
    .unwrap();
    // What a running rebuild holds.
    let pool = shared::db::connect(&url, 1).await.unwrap();
    let mut running = pool.acquire().await.unwrap();
    sqlx::query("select pg_advisory_lock($1)")
        .bind(views::REBUILD_LOCK)
        .execute(&mut *running)
        .await
        .unwrap();
    let refused = query_service::rebuild::run(&config).await.unwrap_err();
    assert!(
        refused.to_string().contains("another rebuild is running"),
        "{refused:#}"
    );
    let rebuilt: bool = sqlx::query_scalar("select to_regclass('order_views_rebuild') is not null")
        .fetch_one(&mut *running)
        .await
        .unwrap();
    assert!(!rebuilt, "the refused rebuild touched nothing");
}
