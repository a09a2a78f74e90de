//! Kafka as the event store: the query service's views rebuilt from the topics alone, while the
//! service keeps serving and consuming, equal the views it built live. Its own test binary, so
//! no other test's orders move the views under the comparison. Real broker and PostgreSQL.

#[path = "support/query.rs"]
#[allow(dead_code)]
mod support;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use e2e::{Api, Backdoor};
use serde_json::Value;
use support::{mixed_batch, settled_view, view_rows};

fn rebuild_config(api: &Api) -> query_service::Config {
    let system = api.system;
    let group = format!(
        "{}{}",
        system.topic_prefix,
        shared::topology::QUERY.group_id
    );
    query_service::Config::try_parse_from([
        "query-service",
        "--database-url",
        &system.database_urls.query,
        "--kafka-brokers",
        &system.brokers,
        "--kafka-topic-prefix",
        &system.topic_prefix,
        "--kafka-group-id",
        &group,
        "rebuild",
    ])
    .expect("the rebuild's arguments")
}

#[tokio::test]
async fn views_rebuilt_from_the_topics_while_the_service_runs_equal_the_live_ones() {
    let (api, backdoor) = (Api::new(), Backdoor::new());
    let batch = mixed_batch(&api, &backdoor).await;
    for placed in &batch.orders {
        settled_view(&api, placed.order_id).await;
    }
    backdoor.wait_quiet().await;
    let live = view_rows(&backdoor, &api).await;
    assert!(live.len() >= batch.orders.len(), "{live:?}");

    // Readers keep asking and customers keep ordering while the rebuild runs.
    let stop = Arc::new(AtomicBool::new(false));
    let reader = {
        let (stop, watched) = (stop.clone(), batch.orders[0].order_id);
        tokio::spawn(async move {
            let api = Api::new();
            let mut answers: Vec<u16> = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                let url = format!("{}/views/orders/{watched}", api.system.query_url);
                answers.push(api.get(url).await.0);
                let list = format!("{}/views/orders?limit=5", api.system.query_url);
                answers.push(api.get(list).await.0);
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            answers
        })
    };
    let writer = {
        let stop = stop.clone();
        let (customer, sku) = (batch.rich.clone(), batch.sku.clone());
        tokio::spawn(async move {
            let api = Api::new();
            let mut placed = Vec::new();
            while !stop.load(Ordering::Relaxed) && placed.len() < 20 {
                placed.push(api.place_order(&customer, &[(&sku, 1)], "DE").await);
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            placed
        })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    let report = query_service::rebuild::run(&rebuild_config(&api))
        .await
        .expect("the rebuild");
    stop.store(true, Ordering::Relaxed);
    let answers = reader.await.unwrap();
    let during = writer.await.unwrap();
    eprintln!("rebuild: {report:?}; {} reads during it", answers.len());
    assert!(!answers.is_empty());
    assert!(
        answers.iter().all(|status| *status == 200),
        "every read during the rebuild answered 200: {answers:?}"
    );
    assert!(!during.is_empty(), "orders were placed during the rebuild");
    assert!(
        report.events_applied as usize >= event_count(&live),
        "{report:?}"
    );

    // Nothing the live consumer applied before or during the rebuild is lost, and it goes on
    // applying to the swapped-in tables.
    for order_id in &during {
        api.wait_terminal(*order_id).await;
    }
    for order_id in &during {
        let view = settled_view(&api, *order_id).await;
        assert_eq!(view["status"], "CONFIRMED", "{view}");
    }
    backdoor.wait_quiet().await;
    let rebuilt = view_rows(&backdoor, &api).await;
    for row in &live {
        let again = rebuilt
            .iter()
            .find(|candidate| candidate["order_id"] == row["order_id"])
            .unwrap_or_else(|| panic!("{} is missing after the rebuild", row["order_id"]));
        assert_eq!(
            again, row,
            "the rebuilt view of an order settled before the rebuild"
        );
    }
    assert_eq!(rebuilt.len(), live.len() + during.len());

    // Once more, quiet: the whole table rebuilt equals the whole table live, row for row.
    let report = query_service::rebuild::run(&rebuild_config(&api))
        .await
        .expect("a second rebuild");
    assert_eq!(view_rows(&backdoor, &api).await, rebuilt, "{report:?}");
    let one_more = api.place_order(&batch.rich, &[(&batch.sku, 1)], "FR").await;
    api.wait_terminal(one_more).await;
    assert_eq!(settled_view(&api, one_more).await["status"], "CONFIRMED");
}

fn event_count(rows: &[Value]) -> usize {
    rows.iter()
        .map(|row| row["events"].as_array().map_or(0, Vec::len))
        .sum()
}
