//! The supervisor against the real broker and PostgreSQL (`cargo xtask test` sets
//! `KAFKA_BROKERS` and `DATABASE_URL`): a worker that panics or returns while the service runs
//! makes `/health/ready` answer 503 naming it for the grace, then every other task is stopped
//! and `run_until_stopped` fails; a requested shutdown stops everything and returns `Ok`.

use std::io::{Read, Write};

use serde_json::{json, Value};
use sqlx::PgConnection;
use tokio::sync::oneshot;
use tokio::time::Instant;
use uuid::Uuid;

use super::*;
use crate::config::KafkaConfig;
use crate::events::Event;
use crate::{Envelope, HandlerError};

const WAIT: Duration = Duration::from_secs(60);
/// `TASK_FAILURE_GRACE_MS` of the services under test.
const GRACE: Duration = Duration::from_millis(1500);

fn required(name: &str) -> String {
    std::env::var(name)
        .unwrap_or_else(|_| panic!("{name} is not set: run the tests with `cargo xtask test`"))
}

/// Settings for a service on a fresh database, with topics and a group of its own.
async fn config() -> CommonConfig {
    let database_url = db::create_fresh_database(&required("DATABASE_URL"), "shared_service")
        .await
        .expect("creating a test database");
    let prefix = format!("service-{}.", &Uuid::new_v4().simple().to_string()[..12]);
    CommonConfig {
        database_url,
        database_max_connections: 5,
        http_host: "127.0.0.1".to_owned(),
        kafka: KafkaConfig {
            brokers: required("KAFKA_BROKERS"),
            group_id: Some(format!("{prefix}supervised")),
            topic_prefix: prefix,
            fetch_wait_max_ms: 10,
            linger_ms: 5,
            session_timeout_ms: 6_000,
            max_poll_interval_ms: 30_000,
            auto_offset_reset: "earliest".to_owned(),
            max_event_bytes: 262_144,
            topic_partitions: 1,
            replication_factor: 1,
        },
        consumer_max_attempts: 3,
        consumer_batch_size: 100,
        consumer_concurrency: 2,
        outbox_poll_interval_ms: 1000,
        outbox_batch_size: 500,
        outbox_max_in_flight: 5000,
        task_failure_grace_ms: GRACE.as_millis() as u64,
        database_statement_timeout_ms: 10_000,
        database_lock_timeout_ms: 3_000,
        shutdown_timeout_ms: 4_000,
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
    let request = format!("GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n");
    tokio::task::spawn_blocking(move || {
        let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
        stream.set_read_timeout(Some(WAIT)).ok()?;
        stream.write_all(request.as_bytes()).ok()?;
        let mut response = String::new();
        stream.read_to_string(&mut response).ok()?;
        let (head, body) = response.split_once("\r\n\r\n")?;
        let status = head.split(' ').nth(1)?.parse().ok()?;
        Some((status, serde_json::from_str(body).unwrap_or(Value::Null)))
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
        json!({"database": "ok", "kafka": "ok", "tasks": "ok"}),
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
