//! The redelivery check as a pure function, and pruning against the real PostgreSQL
//! (`cargo xtask test` sets `DATABASE_URL`): rows older than the window go, in batches, and
//! younger ones stay.

use sqlx::migrate::Migrator;
use sqlx::PgPool;

use super::*;
use crate::db;

const DAY: Duration = Duration::from_secs(86_400);

#[test]
fn an_inbox_kept_longer_than_topic_plus_offset_retention_passes() {
    assert_eq!(
        check_inbox_outlives_redelivery(Some(15 * DAY), Some(7 * DAY), Some(7 * DAY)),
        Ok(())
    );
}

#[test]
fn an_inbox_not_longer_than_topic_plus_offset_retention_fails_naming_the_numbers() {
    for inbox in [14 * DAY, 8 * DAY, DAY] {
        let error =
            check_inbox_outlives_redelivery(Some(inbox), Some(7 * DAY), Some(7 * DAY)).unwrap_err();
        assert!(error.contains("INBOX_RETENTION_MS"), "{error}");
        assert!(error.contains("1209600000 ms in all"), "{error}");
    }
}

#[test]
fn an_infinite_topic_or_offset_retention_needs_an_inbox_kept_forever() {
    let week = Some(7 * DAY);
    assert!(
        check_inbox_outlives_redelivery(Some(1000 * DAY), None, week)
            .unwrap_err()
            .contains("retention.ms=-1")
    );
    assert!(check_inbox_outlives_redelivery(Some(1000 * DAY), week, None).is_err());
    assert_eq!(check_inbox_outlives_redelivery(None, None, None), Ok(()));
    assert_eq!(check_inbox_outlives_redelivery(None, week, week), Ok(()));
}

#[test]
fn zero_keeps_our_rows_forever_and_a_negative_kafka_retention_is_infinite() {
    assert_eq!(window_from_ms(0), None);
    assert_eq!(window_from_ms(5), Some(Duration::from_millis(5)));
    assert_eq!(kafka_window_from_ms(-1), None);
    assert_eq!(kafka_window_from_ms(7), Some(Duration::from_millis(7)));
}

/// A fresh database with the messaging tables.
async fn messaging_database() -> PgPool {
    let admin = std::env::var("DATABASE_URL")
        .expect("DATABASE_URL is not set: run the tests with `cargo xtask test`");
    let url = db::create_fresh_database(&admin, "shared_retention")
        .await
        .expect("creating a test database");
    let pool = db::connect(&url, 2).await.expect("connecting");
    db::prepare(&pool, &Migrator::DEFAULT)
        .await
        .expect("creating the messaging tables");
    pool
}

/// `count` inbox rows processed `age_s` seconds ago.
async fn inbox_rows(pool: &PgPool, count: i64, age_s: i64) {
    sqlx::query(
        "insert into inbox (event_id, event_type, topic, kafka_partition, kafka_offset, processed_at)
         select gen_random_uuid(), 'order.created.v1', 'order.events', 0, n,
                now() - make_interval(secs => $2)
         from generate_series(1, $1) n",
    )
    .bind(count)
    .bind(age_s as f64)
    .execute(pool)
    .await
    .expect("inserting inbox rows");
}

/// `count` published outbox rows published `age_s` seconds ago.
async fn published_rows(pool: &PgPool, count: i64, age_s: i64) {
    sqlx::query(
        "insert into outbox_published
             (seq, event_id, topic, message_key, event_type, envelope, created_at, published_at)
         select n, gen_random_uuid(), 'order', 'key', 'order.created.v1', '{}',
                now() - make_interval(secs => $2), now() - make_interval(secs => $2)
         from generate_series(1, $1) n",
    )
    .bind(count)
    .bind(age_s as f64)
    .execute(pool)
    .await
    .expect("inserting published outbox rows");
}

async fn count(pool: &PgPool, query: &str) -> i64 {
    sqlx::query_scalar(query)
        .fetch_one(pool)
        .await
        .expect("counting rows")
}

#[tokio::test]
async fn pruning_deletes_the_rows_older_than_the_window_in_batches_and_keeps_the_younger() {
    let pool = messaging_database().await;
    inbox_rows(&pool, 5, 7200).await;
    inbox_rows(&pool, 3, 60).await;
    published_rows(&pool, 4, 7200).await;
    published_rows(&pool, 2, 60).await;
    let hour = Some(Duration::from_secs(3600));
    let shutdown = CancellationToken::new();

    let inbox = prune(&pool, &Rule::inbox(hour), 2, &shutdown)
        .await
        .unwrap();
    assert_eq!(
        inbox,
        Pruned {
            rows: 5,
            batches: 3
        }
    );
    let outbox = prune(&pool, &Rule::published_outbox(hour), 2, &shutdown)
        .await
        .unwrap();
    assert_eq!(
        outbox,
        Pruned {
            rows: 4,
            batches: 3
        }
    );

    let stay = |table: &str, column: &str| {
        format!("select count(*) from {table} where {column} > now() - interval '2 minutes'")
    };
    assert_eq!(count(&pool, "select count(*) from inbox").await, 3);
    assert_eq!(count(&pool, &stay("inbox", "processed_at")).await, 3);
    assert_eq!(
        count(&pool, "select count(*) from outbox_published").await,
        2
    );
    assert_eq!(
        count(&pool, &stay("outbox_published", "published_at")).await,
        2
    );
}

#[tokio::test]
async fn a_window_of_none_keeps_every_row() {
    let pool = messaging_database().await;
    inbox_rows(&pool, 3, 86_400 * 365).await;
    let pruned = prune(&pool, &Rule::inbox(None), 2, &CancellationToken::new())
        .await
        .unwrap();
    assert_eq!(pruned, Pruned::default());
    assert_eq!(count(&pool, "select count(*) from inbox").await, 3);
}

/// A database of an earlier version, whose relay marked rows published in place, is moved to
/// the new layout at start-up: published rows go to `outbox_published`, unpublished ones stay,
/// and starting again changes nothing.
#[tokio::test]
async fn an_outbox_of_the_earlier_layout_is_moved_to_outbox_published_at_start_up() {
    let admin = std::env::var("DATABASE_URL")
        .expect("DATABASE_URL is not set: run the tests with `cargo xtask test`");
    let url = db::create_fresh_database(&admin, "shared_retention")
        .await
        .expect("creating a test database");
    let pool = db::connect(&url, 2).await.expect("connecting");
    sqlx::raw_sql(
        "create table outbox (
             seq bigserial primary key, event_id uuid not null unique, topic text not null,
             message_key text not null, event_type text not null, envelope jsonb not null,
             created_at timestamptz not null default now(), published_at timestamptz);
         create index outbox_unpublished on outbox (seq) where published_at is null;
         insert into outbox (event_id, topic, message_key, event_type, envelope, published_at)
         select gen_random_uuid(), 'order', 'key', 'order.created.v1', '{}',
                case when n <= 3 then now() end
         from generate_series(1, 5) n;",
    )
    .execute(&pool)
    .await
    .expect("creating the earlier layout");

    for _ in 0..2 {
        db::prepare(&pool, &Migrator::DEFAULT)
            .await
            .expect("preparing the database");
        let unpublished: Vec<i64> = sqlx::query_scalar("select seq from outbox order by seq")
            .fetch_all(&pool)
            .await
            .unwrap();
        assert_eq!(unpublished, [4, 5]);
        let published: Vec<i64> =
            sqlx::query_scalar("select seq from outbox_published order by seq")
                .fetch_all(&pool)
                .await
                .unwrap();
        assert_eq!(published, [1, 2, 3]);
    }
}

/// A rule with a condition prunes only the old rows that meet it.
#[tokio::test]
async fn a_rule_with_a_condition_prunes_only_the_old_rows_that_meet_it() {
    let pool = messaging_database().await;
    sqlx::raw_sql(
        "create table holds (status text not null, updated_at timestamptz not null);
         insert into holds values
             ('VOIDED', now() - interval '2 days'), ('VOIDED', now() - interval '2 days'),
             ('CHARGED', now() - interval '2 days'), ('VOIDED', now());",
    )
    .execute(&pool)
    .await
    .unwrap();
    let rule = Rule {
        table: "holds",
        timestamp_column: "updated_at",
        window: Some(DAY),
        only: Some("status = 'VOIDED'"),
    };
    let pruned = prune(&pool, &rule, 10, &CancellationToken::new())
        .await
        .expect("pruning");
    assert_eq!(pruned.rows, 2);
    let left: Vec<(String, bool)> = sqlx::query_as(
        "select status, updated_at > now() - interval '1 hour' from holds order by status",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    assert_eq!(
        left,
        [("CHARGED".to_owned(), false), ("VOIDED".to_owned(), true)],
        "the old CHARGED row and the young VOIDED row stay"
    );
}
