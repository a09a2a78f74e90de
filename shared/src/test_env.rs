//! What this crate's tests against the real broker and PostgreSQL share (`cargo xtask test`
//! sets `KAFKA_BROKERS` and `DATABASE_URL`).

use sqlx::PgPool;

use crate::config::KafkaConfig;
use crate::db;

/// The environment variable `name`; panics with how to run the tests when it is not set.
pub(crate) fn required(name: &str) -> String {
    std::env::var(name)
        .unwrap_or_else(|_| panic!("{name} is not set: run the tests with `cargo xtask test`"))
}

/// A fresh database named after `name_prefix`, with the messaging tables.
pub(crate) async fn messaging_database(name_prefix: &str) -> PgPool {
    let url = db::create_fresh_database(&required("DATABASE_URL"), name_prefix)
        .await
        .expect("creating a test database");
    let pool = db::connect(&url, 5).await.expect("connecting");
    db::prepare(&pool, &sqlx::migrate::Migrator::DEFAULT)
        .await
        .expect("creating the messaging tables");
    pool
}

/// The services' client settings against the test broker, for topics named with `prefix`.
pub(crate) fn kafka_config(prefix: &str, topic_partitions: i32) -> KafkaConfig {
    KafkaConfig {
        brokers: required("KAFKA_BROKERS"),
        topic_prefix: prefix.to_owned(),
        group_id: None,
        fetch_wait_max_ms: 10,
        linger_ms: 5,
        session_timeout_ms: 6_000,
        max_poll_interval_ms: 30_000,
        auto_offset_reset: "earliest".to_owned(),
        max_event_bytes: 262_144,
        topic_partitions,
        replication_factor: 1,
        security: Default::default(),
    }
}
