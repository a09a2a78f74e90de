//! The relay against the real broker and PostgreSQL (`cargo xtask test` sets `KAFKA_BROKERS`
//! and `DATABASE_URL`): a row the broker refuses every time is parked, visibly, and the rows
//! after it are published.

use rdkafka::consumer::{BaseConsumer, Consumer};

use super::*;
use crate::events::OrderConfirmed;
use crate::kafka;
use crate::test_env::{kafka_config, messaging_database};

const WAIT: Duration = Duration::from_secs(60);

/// A relay of `pool`'s outbox to the topics named with `prefix`.
fn relay(pool: &PgPool, config: &crate::config::KafkaConfig) -> OutboxRelay {
    OutboxRelay::new(
        "test",
        crate::traces::ServiceTracer::default(),
        OutboxSignal::new(pool.clone()),
        kafka::producer(config).expect("a producer"),
        config.topic_prefix.clone(),
        RelaySettings {
            poll_interval: Duration::from_millis(200),
            batch_size: 500,
            max_in_flight: 5000,
        },
    )
}

/// Writes an `order.confirmed` of `order_id` to the outbox.
async fn confirmed(tx: &mut PgConnection, order_id: Uuid) -> Envelope {
    emit(tx, "test", order_id, None, &OrderConfirmed { order_id })
        .await
        .unwrap()
}

/// A reader of partition 0 of each of `topics`, from the beginning.
fn reader(config: &crate::config::KafkaConfig, topics: &[&String]) -> BaseConsumer {
    let consumer: BaseConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", &config.brokers)
        .set("group.id", "outbox-test-reader")
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    let mut assignment = rdkafka::TopicPartitionList::new();
    for topic in topics {
        assignment
            .add_partition_offset(topic, 0, rdkafka::Offset::Beginning)
            .unwrap();
    }
    consumer.assign(&assignment).unwrap();
    consumer
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_row_the_broker_refuses_is_parked_and_the_rows_after_it_are_published() {
    let pool = messaging_database("shared_outbox").await;
    let prefix = format!("outbox-{}.", &Uuid::new_v4().simple().to_string()[..12]);
    let config = kafka_config(&prefix, 1);
    let topic = Topic::Order.name(&prefix);
    kafka::ensure_topics(&config, std::slice::from_ref(&topic))
        .await
        .expect("creating the topic");

    // One order's events: the middle one is larger than any producer sends.
    let order_id = Uuid::now_v7();
    let mut tx = pool.begin().await.unwrap();
    let before = confirmed(&mut tx, order_id).await;
    let mut too_large = Envelope::new("test", order_id, None, &OrderConfirmed { order_id });
    too_large.payload = serde_json::json!({"order_id": order_id, "padding": "x".repeat(1_100_000)});
    enqueue(
        &mut tx,
        Topic::Order,
        &order_id.to_string(),
        &too_large,
        None,
    )
    .await
    .unwrap();
    let after = confirmed(&mut tx, order_id).await;
    tx.commit().await.unwrap();

    let shutdown = CancellationToken::new();
    let running = tokio::spawn(relay(&pool, &config).run(shutdown.clone()));
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let (published, parked): (i64, i64) = sqlx::query_as(
            "select (select count(*) from outbox_published),
                    (select count(*) from outbox where failed_at is not null)",
        )
        .fetch_one(&pool)
        .await
        .unwrap();
        if (published, parked) == (2, 1) {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "after {WAIT:?}: {published} published, {parked} parked; expected 2 and 1"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    shutdown.cancel();
    running.await.unwrap();

    let (event_id, failure): (Uuid, String) =
        sqlx::query_as("select event_id, failure from outbox where failed_at is not null")
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(
        event_id, too_large.id,
        "the too-large row is the parked one"
    );
    assert!(failure.contains("MessageSizeTooLarge"), "{failure}");
    assert_eq!(pending(&pool).await.unwrap(), 0, "nothing waits behind it");
    assert_eq!(oldest_unpublished(&pool).await.unwrap(), None);
    assert_eq!(failed(&pool).await.unwrap(), 1);

    let consumer = reader(&config, &[&topic]);
    let (low, high) = consumer
        .fetch_watermarks(&topic, 0, Duration::from_secs(10))
        .unwrap();
    assert_eq!(
        high - low,
        2,
        "only the events before and after it are in the topic"
    );
    let mut published = Vec::new();
    while published.len() < 2 {
        assert!(
            tokio::time::Instant::now() < deadline + WAIT,
            "reading {topic}"
        );
        if let Some(message) = consumer.poll(Duration::from_millis(500)) {
            let message = message.expect("reading the topic");
            let envelope: Envelope =
                serde_json::from_slice(rdkafka::Message::payload(&message).unwrap()).unwrap();
            published.push(envelope.id);
        }
    }
    assert_eq!(published, [before.id, after.id], "in their order");
}

#[test]
fn only_the_latest_state_row_of_a_key_is_published() {
    let products = StateTopic::Products.base_name();
    let rows = [
        (1, products, "mug"),
        (2, "order.events", "o-1"),
        (3, products, "tea"),
        (4, products, "mug"),
        (5, "order.events", "o-1"),
        (6, products, "mug"),
        (7, "inventory.events", "mug"),
    ];
    // Saga events are all published, however many share a key; a state row only when no
    // later row of its key was read with it.
    assert_eq!(superseded(rows), [1, 4]);
    assert!(superseded([(1, products, "mug"), (2, products, "tea")]).is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_state_row_replaced_before_it_was_published_is_not_sent() {
    use crate::state::ProductState;

    let pool = messaging_database("shared_outbox_state").await;
    let prefix = format!("outbox-{}.", &Uuid::new_v4().simple().to_string()[..12]);
    let config = kafka_config(&prefix, 1);
    let (order_topic, state_topic) = (
        Topic::Order.name(&prefix),
        StateTopic::Products.name(&prefix),
    );
    kafka::ensure_topics(&config, &[order_topic.clone(), state_topic.clone()])
        .await
        .expect("creating the topics");

    // Three changes of one product and one of another, between two saga events, all waiting
    // when the relay reads.
    let product = |sku: &str, available: i32, version: i64| ProductState {
        sku: sku.to_owned(),
        name: sku.to_owned(),
        price_cents: 100,
        available,
        reserved: 0,
        sold: 0,
        version,
        updated_at: chrono::Utc::now(),
    };
    let order_id = Uuid::now_v7();
    let mut tx = pool.begin().await.unwrap();
    let first = confirmed(&mut tx, order_id).await;
    for (available, version) in [(10, 1), (9, 2), (8, 3)] {
        emit_state(&mut tx, "mug", Some(&product("mug", available, version)))
            .await
            .unwrap();
    }
    emit_state(&mut tx, "tea", Some(&product("tea", 5, 1)))
        .await
        .unwrap();
    let second = confirmed(&mut tx, order_id).await;
    tx.commit().await.unwrap();

    let shutdown = CancellationToken::new();
    let running = tokio::spawn(relay(&pool, &config).run(shutdown.clone()));
    let deadline = tokio::time::Instant::now() + WAIT;
    while pending(&pool).await.unwrap() > 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the outbox did not drain within {WAIT:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    shutdown.cancel();
    running.await.unwrap();
    let published: i64 = sqlx::query_scalar("select count(*) from outbox_published")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(published, 4, "two saga events and one state per product");

    let consumer = reader(&config, &[&order_topic, &state_topic]);
    let (mut events, mut states) = (Vec::new(), Vec::new());
    while events.len() + states.len() < 4 {
        assert!(
            tokio::time::Instant::now() < deadline + WAIT,
            "reading the topics: {events:?} {states:?}"
        );
        if let Some(message) = consumer.poll(Duration::from_millis(500)) {
            let message = message.expect("reading the topics");
            let payload = rdkafka::Message::payload(&message).unwrap();
            if rdkafka::Message::topic(&message) == order_topic {
                events.push(serde_json::from_slice::<Envelope>(payload).unwrap().id);
            } else {
                let state: ProductState = serde_json::from_slice(payload).unwrap();
                states.push((state.sku, state.version));
            }
        }
    }
    assert_eq!(events, [first.id, second.id], "every saga event, in order");
    states.sort();
    assert_eq!(
        states,
        [("mug".to_owned(), 3), ("tea".to_owned(), 1)],
        "each product's latest state only"
    );
    for topic in [&order_topic, &state_topic] {
        let (low, high) = consumer
            .fetch_watermarks(topic, 0, Duration::from_secs(10))
            .unwrap();
        assert_eq!(high - low, 2, "{topic} holds nothing else");
    }
}
