//! The supervisor against the real broker and PostgreSQL (`cargo xtask test` sets
//! `KAFKA_BROKERS` and `DATABASE_URL`): a worker that panics or returns while the service runs
//! makes `/health/ready` answer 503 naming it for the grace, then every other task is stopped
//! and `run_until_stopped` fails; a requested shutdown stops everything and returns `Ok`.
//! Retention: a published event leaves `outbox` for `outbox_published`, the retention worker
//! prunes old rows on its schedule, and a service whose inbox could be pruned while the broker
//! can still deliver its events again refuses to start. A consumer or relay stuck on one message
//! makes it unready (and shows in `/metrics`) until it moves on.

use std::io::{Read, Write};

use serde_json::{json, Value};
use sqlx::PgConnection;
use tokio::sync::oneshot;
use tokio::time::Instant;
use uuid::Uuid;

use super::*;
use crate::config::KafkaConfig;
use crate::events::{Event, OrderConfirmed};
use crate::retention::Rule;
use crate::test_env::required;
use crate::{Envelope, HandlerError};

const WAIT: Duration = Duration::from_secs(60);
/// `TASK_FAILURE_GRACE_MS` of the services under test.
const GRACE: Duration = Duration::from_millis(1500);

/// Settings for a service on a fresh database, with topics and a group of its own.
async fn config() -> CommonConfig {
    let database_url = db::create_fresh_database(&required("DATABASE_URL"), "shared_service")
        .await
        .expect("creating a test database");
    let prefix = format!("service-{}.", &Uuid::new_v4().simple().to_string()[..12]);
    CommonConfig {
        database_url,
        database_migration_url: None,
        database_max_connections: 5,
        http_host: "127.0.0.1".to_owned(),
        kafka: KafkaConfig {
            group_id: Some(format!("{prefix}supervised")),
            ..crate::test_env::kafka_config(&prefix, 1)
        },
        consumer_max_attempts: 3,
        consumer_batch_size: 100,
        consumer_concurrency: 2,
        consumer_stuck_after_ms: 60_000,
        outbox_stuck_after_ms: 60_000,
        outbox_poll_interval_ms: 1000,
        outbox_batch_size: 500,
        outbox_max_in_flight: 5000,
        task_failure_grace_ms: GRACE.as_millis() as u64,
        log_topic_enabled: false,
        retention: crate::config::RetentionConfig::default(),
        database_statement_timeout_ms: 10_000,
        database_lock_timeout_ms: 3_000,
        shutdown_timeout_ms: 4_000,
        traces: Default::default(),
    }
}

/// Acknowledges every event without acting on it.
struct HandlesNothing;

impl EventHandler for HandlesNothing {
    type Input = ();

    fn select(&self, _event: Event) -> Option<()> {
        None
    }

    async fn handle(
        &self,
        _conn: &mut PgConnection,
        _envelope: &Envelope,
        _input: &(),
    ) -> Result<(), HandlerError> {
        Ok(())
    }
}

/// A service with a consumer and a `bystander` worker that reports on the receiver when it
/// was told to stop.
fn service(config: &CommonConfig) -> (ServiceBuilder, oneshot::Receiver<()>) {
    let (stopped, bystander_stopped) = oneshot::channel();
    let builder = Service::builder("supervised", &Migrator::DEFAULT, config, 0)
        .consumes(&[Topic::Order], HandlesNothing)
        .worker("bystander", |_, shutdown| async move {
            shutdown.cancelled().await;
            let _ = stopped.send(());
        });
    (builder, bystander_stopped)
}

/// `GET path` over a socket: the status and the JSON body (`Null` if not JSON), or `None` when
/// nothing answers on `port`.
async fn get(port: u16, path: &str) -> Option<(u16, Value)> {
    let (status, body) = get_text(port, path).await?;
    Some((status, serde_json::from_str(&body).unwrap_or(Value::Null)))
}

/// `GET path` over a socket: the status and the body.
async fn get_text(port: u16, path: &str) -> Option<(u16, String)> {
    let request = format!("GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n");
    tokio::task::spawn_blocking(move || {
        let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
        stream.set_read_timeout(Some(WAIT)).ok()?;
        stream.write_all(request.as_bytes()).ok()?;
        let mut response = String::new();
        stream.read_to_string(&mut response).ok()?;
        let (head, body) = response.split_once("\r\n\r\n")?;
        let status = head.split(' ').nth(1)?.parse().ok()?;
        Some((status, body.to_owned()))
    })
    .await
    .expect("the request task")
}

/// Polls `/health/ready` until it answers `status`; returns that body.
async fn ready_answers(port: u16, status: u16) -> Value {
    let deadline = Instant::now() + WAIT;
    loop {
        let answer = get(port, "/health/ready").await;
        match &answer {
            Some((answered, body)) if *answered == status => return body.clone(),
            _ if Instant::now() > deadline => {
                panic!("/health/ready never answered {status}; last answer: {answer:?}")
            }
            _ => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
}

enum Death {
    Panic,
    Return,
}

/// Runs a service whose `doomed` worker dies as `death` says once it is ready, and checks what
/// an orchestrator would see; returns the error `run_until_stopped` ended with.
async fn a_dying_worker(death: Death) -> String {
    let config = config().await;
    let (fire, fired) = oneshot::channel::<()>();
    let (builder, mut bystander_stopped) = service(&config);
    let service = builder
        .worker("doomed", move |_, _| async move {
            let _ = fired.await;
            match death {
                Death::Panic => panic!("the doomed worker gave up"),
                Death::Return => {}
            }
        })
        .build()
        .await
        .expect("building the service");
    let port = service.port();
    let shutdown = service.shutdown_token();
    let running = tokio::spawn(service.run_until_stopped());

    let body = ready_answers(port, 200).await;
    assert_eq!(
        body["checks"],
        json!({"database": "ok", "kafka": "ok", "tasks": "ok", "consumer": "ok", "relay": "ok"}),
        "{body}"
    );
    let fired_at = Instant::now();
    fire.send(()).expect("the doomed worker is waiting");

    let body = ready_answers(port, 503).await;
    assert_eq!(body["error"]["code"], "not_ready", "{body}");
    assert!(
        !body["error"]["message"]
            .as_str()
            .unwrap_or_default()
            .is_empty(),
        "{body}"
    );
    let task = body["checks"]["tasks"].as_str().unwrap_or_default();
    assert!(task.contains("`doomed`"), "{body}");
    assert_eq!(
        (&body["checks"]["database"], &body["checks"]["kafka"]),
        (&json!("ok"), &json!("ok")),
        "{body}"
    );

    let outcome = tokio::time::timeout(WAIT, running)
        .await
        .expect("the service stops after the grace")
        .expect("run_until_stopped does not panic");
    let error = format!(
        "{:#}",
        outcome.expect_err("a dead worker makes the service fail")
    );
    assert!(
        fired_at.elapsed() >= GRACE,
        "stopped {:?} after the worker died, before the {GRACE:?} grace",
        fired_at.elapsed()
    );
    assert!(shutdown.is_cancelled(), "the other tasks were told to stop");
    assert!(
        bystander_stopped.try_recv().is_ok(),
        "the other workers stopped before run_until_stopped returned"
    );
    assert_eq!(
        get(port, "/health/live").await,
        None,
        "the HTTP server stopped"
    );
    assert_eq!(task, error, "readiness and the error say the same");
    error
}

#[tokio::test]
async fn a_worker_that_panics_makes_the_service_unready_then_fail() {
    let error = a_dying_worker(Death::Panic).await;
    assert_eq!(error, "task `doomed` panicked: the doomed worker gave up");
}

#[tokio::test]
async fn a_worker_that_returns_early_makes_the_service_unready_then_fail() {
    let error = a_dying_worker(Death::Return).await;
    assert_eq!(error, "task `doomed` ended while the service was running");
}

#[tokio::test]
async fn a_requested_shutdown_stops_every_task_and_returns_ok() {
    let config = config().await;
    let (builder, mut bystander_stopped) = service(&config);
    let service = builder.build().await.expect("building the service");
    let port = service.port();
    let shutdown = service.shutdown_token();
    let running = tokio::spawn(service.run_until_stopped());

    let body = ready_answers(port, 200).await;
    assert_eq!(body["status"], "ready", "{body}");
    shutdown.cancel();
    let outcome = tokio::time::timeout(WAIT, running)
        .await
        .expect("the service stops")
        .expect("run_until_stopped does not panic");
    outcome.expect("a requested shutdown is not an error");
    assert!(
        bystander_stopped.try_recv().is_ok(),
        "every worker stopped before run_until_stopped returned"
    );
    assert_eq!(
        get(port, "/health/live").await,
        None,
        "the HTTP server stopped"
    );
}

/// Runs `builder`'s service until `check` (given its port) returns `true`, polled for up to
/// [`WAIT`], then stops it; returns whether `check` did.
async fn run_until<F>(builder: ServiceBuilder, mut check: impl FnMut(u16) -> F) -> bool
where
    F: Future<Output = bool>,
{
    let service = builder.build().await.expect("building the service");
    let port = service.port();
    let shutdown = service.shutdown_token();
    let running = tokio::spawn(service.run_until_stopped());
    let deadline = Instant::now() + WAIT;
    let mut held = false;
    while Instant::now() < deadline {
        if check(port).await {
            held = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    shutdown.cancel();
    let _ = tokio::time::timeout(WAIT, running).await;
    held
}

async fn count(pool: &PgPool, query: &str) -> i64 {
    sqlx::query_scalar(query)
        .fetch_one(pool)
        .await
        .expect("counting rows")
}

#[tokio::test]
async fn a_published_event_leaves_the_outbox_and_is_kept_in_outbox_published() {
    let config = config().await;
    let (builder, _) = service(&config);
    let pool = db::connect(&config.database_url, 2).await.unwrap();
    db::prepare(&pool, &Migrator::DEFAULT).await.unwrap();
    let order_id = Uuid::new_v4();
    let mut tx = pool.begin().await.unwrap();
    let envelope = crate::outbox::emit(
        &mut tx,
        "supervised",
        order_id,
        None,
        &crate::events::OrderConfirmed { order_id },
    )
    .await
    .unwrap();
    tx.commit().await.unwrap();

    let moved = run_until(builder, |_| {
        let pool = pool.clone();
        async move {
            count(&pool, "select count(*) from outbox").await == 0
                && count(&pool, "select count(*) from outbox_published").await == 1
        }
    })
    .await;
    assert!(
        moved,
        "the published event is still in `outbox` ({} rows) or not in `outbox_published`",
        count(&pool, "select count(*) from outbox").await
    );
    let (event_id, published): (Uuid, bool) =
        sqlx::query_as("select event_id, published_at <= now() from outbox_published")
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!((event_id, published), (envelope.id, true));
    assert_eq!(crate::outbox::pending(&pool).await.unwrap(), 0);
}

#[tokio::test]
async fn the_retention_worker_prunes_old_rows_on_its_schedule_and_counts_them() {
    let mut config = config().await;
    config.retention.interval_ms = 200;
    config.retention.batch_size = 2;
    let (builder, _) = service(&config);
    let builder = builder.retain(Rule {
        table: "kept_for_a_day",
        timestamp_column: "noted_at",
        window: Some(Duration::from_secs(86_400)),
        only: None,
    });
    let pool = db::connect(&config.database_url, 2).await.unwrap();
    db::prepare(&pool, &Migrator::DEFAULT).await.unwrap();
    sqlx::raw_sql(
        "create table kept_for_a_day (noted_at timestamptz not null);
         insert into kept_for_a_day values (now() - interval '2 days'), (now());
         insert into inbox (event_id, event_type, topic, kafka_partition, kafka_offset, processed_at)
         select gen_random_uuid(), 'order.confirmed.v1', 'order.events', 0, n,
                now() - case when n <= 5 then interval '30 days' else interval '1 hour' end
         from generate_series(1, 7) n;
         insert into outbox_published
             (seq, event_id, topic, message_key, event_type, envelope, created_at, published_at)
         values (1, gen_random_uuid(), 'order', 'k', 'order.confirmed.v1', '{}',
                 now() - interval '2 hours', now() - interval '2 hours');",
    )
    .execute(&pool)
    .await
    .unwrap();

    let expected = [("inbox", 5), ("outbox_published", 1), ("kept_for_a_day", 1)];
    let pruned = run_until(builder, |_| {
        let pool = pool.clone();
        async move {
            count(&pool, "select count(*) from inbox").await == 2
                && count(&pool, "select count(*) from outbox_published").await == 0
                && count(&pool, "select count(*) from kept_for_a_day").await == 1
                && expected
                    .iter()
                    .all(|&(table, rows)| pruned_rows(table) == Some(rows))
        }
    })
    .await;
    assert!(
        pruned,
        "old rows are still there or uncounted: inbox {}, outbox_published {}, \
         kept_for_a_day {}; counted {:?}",
        count(&pool, "select count(*) from inbox").await,
        count(&pool, "select count(*) from outbox_published").await,
        count(&pool, "select count(*) from kept_for_a_day").await,
        expected.map(|(table, _)| (table, pruned_rows(table))),
    );
}

/// `sagashop_retention_pruned_rows_total` of the `supervised` service for `table`.
fn pruned_rows(table: &str) -> Option<u64> {
    let series = format!(
        "sagashop_retention_pruned_rows_total{{service=\"supervised\",table=\"{table}\"}} "
    );
    crate::metrics::handle()
        .render()
        .lines()
        .find_map(|line| line.strip_prefix(&series)?.parse().ok())
}

#[tokio::test]
async fn a_service_refuses_to_start_when_its_inbox_could_be_pruned_while_the_broker_redelivers() {
    let mut config = config().await;
    // The topics are created with 7 days, the offsets assumed kept 7 days: one day is too short.
    config.retention.inbox_retention_ms = 86_400_000;
    let (builder, _) = service(&config);
    let error = match builder.build().await {
        Ok(_) => panic!("a service with INBOX_RETENTION_MS=1 day started"),
        Err(error) => format!("{error:#}"),
    };
    assert!(error.contains("unsafe retention settings"), "{error}");
    assert!(
        error.contains("INBOX_RETENTION_MS (86400000 ms)"),
        "{error}"
    );

    config.retention.inbox_retention_ms = 0;
    let (builder, _) = service(&config);
    assert!(
        builder.build().await.is_ok(),
        "an inbox kept forever is always safe"
    );
}

#[tokio::test]
async fn the_topic_retention_the_broker_reports_wins_over_the_setting() {
    let mut config = config().await;
    // The topics exist already, with 30 days; the settings claim one hour.
    let prefix = &config.kafka.topic_prefix;
    let topics: Vec<(String, Option<i64>)> = Topic::ALL
        .iter()
        .map(|topic| (topic.name(prefix), Some(30 * 86_400_000)))
        .collect();
    kafka::ensure_topics_retained(&config.kafka, &topics)
        .await
        .unwrap();
    config.retention.kafka_topic_retention_ms = 3_600_000;
    config.retention.kafka_offsets_retention_ms = 3_600_000;
    config.retention.inbox_retention_ms = 3 * 3_600_000;
    let (builder, _) = service(&config);
    let error = match builder.build().await {
        Ok(_) => panic!("started though the broker keeps the topics 30 days"),
        Err(error) => format!("{error:#}"),
    };
    assert!(error.contains("2592000000 ms, retention.ms"), "{error}");
}

/// Holds every `order.confirmed` until released: a message the consumer cannot finish.
struct Stalls {
    release: Arc<tokio::sync::Semaphore>,
}

impl EventHandler for Stalls {
    type Input = ();

    fn select(&self, event: Event) -> Option<()> {
        matches!(event, Event::OrderConfirmed(_)).then_some(())
    }

    async fn handle(
        &self,
        _conn: &mut PgConnection,
        _envelope: &Envelope,
        _input: &(),
    ) -> Result<(), HandlerError> {
        let _permit = self.release.acquire().await.expect("never closed");
        Ok(())
    }
}

/// The value of the `metric` series whose labels contain `label`, from `/metrics`.
async fn metric(port: u16, metric: &str, label: &str) -> Option<f64> {
    let (_, text) = get_text(port, "/metrics").await?;
    text.lines()
        .filter(|line| line.starts_with(&format!("{metric}{{")) && line.contains(label))
        .find_map(|line| line.rsplit(' ').next()?.parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consumer_stuck_on_a_message_makes_the_service_unready_until_it_moves_on() {
    let mut config = config().await;
    config.consumer_stuck_after_ms = 1000;
    let release = Arc::new(tokio::sync::Semaphore::new(0));
    let service = Service::builder("stalled", &Migrator::DEFAULT, &config, 0)
        .consumes(
            &[Topic::Order],
            Stalls {
                release: Arc::clone(&release),
            },
        )
        .build()
        .await
        .expect("building the service");
    let port = service.port();
    let shutdown = service.shutdown_token();
    let running = tokio::spawn(service.run_until_stopped());
    ready_answers(port, 200).await;

    let topic = Topic::Order.name(&config.kafka.topic_prefix);
    let order_id = Uuid::now_v7();
    let envelope = Envelope::new("test", order_id, None, &OrderConfirmed { order_id });
    let key = order_id.to_string();
    let payload = serde_json::to_vec(&envelope).unwrap();
    kafka::producer(&config.kafka)
        .unwrap()
        .send(
            rdkafka::producer::FutureRecord::to(&topic)
                .key(&key)
                .payload(&payload),
            Duration::from_secs(30),
        )
        .await
        .expect("producing");

    let body = ready_answers(port, 503).await;
    let consumer = body["checks"]["consumer"].as_str().unwrap_or_default();
    assert!(
        consumer.starts_with("stuck") && consumer.contains(&format!("{topic}[0]@0")),
        "{body}"
    );
    assert_eq!(
        body["error"]["message"], "a message has been in progress too long",
        "{body}"
    );
    let age = metric(port, "sagashop_consumer_oldest_unprocessed_seconds", &topic)
        .await
        .expect("the age of the partition's oldest unfinished message");
    assert!(age >= 1.0, "{age}");

    release.add_permits(1);
    let body = ready_answers(port, 200).await;
    assert_eq!(body["checks"]["consumer"], "ok", "{body}");
    let age = metric(port, "sagashop_consumer_oldest_unprocessed_seconds", &topic).await;
    assert_eq!(age, Some(0.0), "nothing is in progress");
    shutdown.cancel();
    running.await.unwrap().expect("a requested shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relay_stuck_on_a_row_makes_the_service_unready_until_it_is_published() {
    let mut config = config().await;
    config.outbox_stuck_after_ms = 1000;
    // Only the signal below wakes the relay: it cannot publish the row before the test locks it.
    config.outbox_poll_interval_ms = 60_000;
    let service = Service::builder("stalled", &Migrator::DEFAULT, &config, 0)
        .build()
        .await
        .expect("building the service");
    let port = service.port();
    let shutdown = service.shutdown_token();
    let running = tokio::spawn(service.run_until_stopped());
    ready_answers(port, 200).await;

    // A row the relay sends but cannot mark published while the test holds its lock.
    let pool = db::connect(&config.database_url, 2).await.unwrap();
    let mut tx = pool.begin().await.unwrap();
    let order_id = Uuid::now_v7();
    crate::outbox::emit(
        &mut tx,
        "test",
        order_id,
        None,
        &OrderConfirmed { order_id },
    )
    .await
    .unwrap();
    tx.commit().await.unwrap();
    let mut holder = pool.begin().await.unwrap();
    let seq: i64 = sqlx::query_scalar("select seq from outbox for update")
        .fetch_one(&mut *holder)
        .await
        .unwrap();
    crate::outbox::OutboxSignal::new(pool.clone()).committed();

    let body = ready_answers(port, 503).await;
    let relay = body["checks"]["relay"].as_str().unwrap_or_default();
    assert!(
        relay.starts_with(&format!("stuck: outbox row {seq} ")),
        "{body}"
    );
    let age = metric(
        port,
        "sagashop_outbox_oldest_unpublished_seconds",
        "stalled",
    )
    .await
    .expect("the age of the oldest unpublished row");
    assert!(age >= 1.0, "{age}");

    holder.rollback().await.unwrap();
    let body = ready_answers(port, 200).await;
    assert_eq!(body["checks"]["relay"], "ok", "{body}");
    shutdown.cancel();
    running.await.unwrap().expect("a requested shutdown");
}
