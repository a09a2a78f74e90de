//! What every service runs: the HTTP API, the outbox relay and the idempotent consumer, side by
//! side until a shutdown signal; plus the health endpoints.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::{Json, Router};
use futures::future::BoxFuture;
use rdkafka::consumer::Consumer;
use rdkafka::producer::FutureProducer;
use sqlx::migrate::Migrator;
use sqlx::PgPool;
use tokio::net::TcpListener;
pub use tokio_util::sync::CancellationToken;

use crate::config::CommonConfig;
use crate::consumer::{ConsumerLoop, ConsumerPolicy, EventHandler};
use crate::outbox::{OutboxRelay, OutboxSignal};
use crate::topics::{dead_letter_topic, Topic};
use crate::{db, http, kafka};

/// The connections a service needs, ready to use: its database (migrated) and a producer, with
/// every topic created.
pub struct Infrastructure {
    pub pool: PgPool,
    pub producer: FutureProducer,
    /// Call [`OutboxSignal::committed`] after committing outbox rows outside the consumer.
    pub outbox: OutboxSignal,
    config: CommonConfig,
    service: &'static str,
}

impl Infrastructure {
    /// Connects to PostgreSQL and Kafka, applies migrations and creates the topics.
    /// `service` is the short name (`order`, `payment`, ...).
    pub async fn start(
        service: &'static str,
        config: &CommonConfig,
        migrator: &Migrator,
    ) -> anyhow::Result<Self> {
        let pool = db::connect(&config.database_url, config.database_max_connections).await?;
        db::prepare(&pool, migrator).await?;
        let producer = kafka::producer(&config.kafka)?;
        let prefix = &config.kafka.topic_prefix;
        let mut topics: Vec<String> = Topic::ALL.iter().map(|topic| topic.name(prefix)).collect();
        topics.push(dead_letter_topic(prefix, &format!("{service}-service")));
        kafka::ensure_topics(&config.kafka, &topics).await?;
        Ok(Self {
            outbox: OutboxSignal::new(pool.clone()),
            pool,
            producer,
            config: config.clone(),
            service,
        })
    }
}

/// A built service, bound to its port, not yet running.
pub struct ServiceRunner {
    listener: TcpListener,
    router: Router,
    relay: OutboxRelay,
    workers: Vec<Worker>,
    shutdown: CancellationToken,
}

/// A background task that runs until the token is cancelled.
pub type Worker = Box<dyn FnOnce(CancellationToken) -> BoxFuture<'static, ()> + Send>;

impl ServiceRunner {
    /// Binds `http_port` (0 picks a free one) and wires `routes`, the relay and a consumer of
    /// `consumes` that hands each event to `handler`.
    pub async fn build<H: EventHandler>(
        infrastructure: Infrastructure,
        http_port: u16,
        routes: Router,
        consumes: &[Topic],
        handler: H,
    ) -> anyhow::Result<Self> {
        let Infrastructure {
            pool,
            producer,
            outbox,
            config,
            service,
        } = infrastructure;
        let address = format!("{}:{}", config.http_host, http_port);
        let listener = TcpListener::bind(&address)
            .await
            .with_context(|| format!("binding {address}"))?;

        let prefix = &config.kafka.topic_prefix;
        let group_id = config
            .kafka
            .group_id
            .clone()
            .unwrap_or_else(|| format!("{service}-service"));
        let consumer = kafka::consumer(&config.kafka, &group_id)?;
        let names: Vec<String> = consumes.iter().map(|topic| topic.name(prefix)).collect();
        let names: Vec<&str> = names.iter().map(String::as_str).collect();
        consumer
            .subscribe(&names)
            .context("subscribing to topics")?;
        let consumer_loop = ConsumerLoop {
            consumer,
            pool: pool.clone(),
            outbox: outbox.clone(),
            handler: Arc::new(handler),
            producer: producer.clone(),
            service,
            group_id,
            dead_letter_topic: dead_letter_topic(prefix, &format!("{service}-service")),
            policy: ConsumerPolicy {
                max_attempts: config.consumer_max_attempts.max(1),
                max_event_bytes: config.kafka.max_event_bytes,
                batch_size: config.consumer_batch_size.max(1),
                concurrency: config.consumer_concurrency.max(1),
            },
        };

        let relay = OutboxRelay::new(
            outbox,
            producer.clone(),
            config.kafka.topic_prefix.clone(),
            config.relay_settings(),
        );
        crate::metrics::handle();
        let health = Router::new()
            .route("/health/live", get(live))
            .route("/health/ready", get(ready))
            .route("/metrics", get(render_metrics))
            .with_state(Health {
                pool,
                producer,
                service,
            });
        let router = http::with_common_layers(routes.merge(health));
        Ok(Self {
            listener,
            router,
            relay,
            workers: vec![Box::new(move |token| Box::pin(consumer_loop.run(token)))],
            shutdown: CancellationToken::new(),
        })
    }

    /// Adds a background task (e.g. a deadline sweeper) that runs beside the others.
    pub fn with_worker(mut self, worker: Worker) -> Self {
        self.workers.push(worker);
        self
    }

    pub fn port(&self) -> u16 {
        self.listener
            .local_addr()
            .map(|address| address.port())
            .unwrap_or(0)
    }

    /// Cancelling this token stops the service as a signal would.
    pub fn shutdown_token(&self) -> CancellationToken {
        self.shutdown.clone()
    }

    /// Serves until SIGINT/SIGTERM (or the shutdown token), then stops every task cleanly.
    pub async fn run_until_stopped(self) -> anyhow::Result<()> {
        let token = self.shutdown.clone();
        tokio::spawn(cancel_on_signal(token.clone()));
        let mut tasks = vec![tokio::spawn(self.relay.run(token.clone()))];
        tasks.extend(
            self.workers
                .into_iter()
                .map(|worker| tokio::spawn(worker(token.clone()))),
        );
        let served = axum::serve(self.listener, self.router)
            .with_graceful_shutdown(token.clone().cancelled_owned())
            .await;
        token.cancel();
        futures::future::join_all(tasks).await;
        served.context("serving HTTP")
    }
}

async fn cancel_on_signal(token: CancellationToken) {
    let interrupt = tokio::signal::ctrl_c();
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        _ = interrupt => tracing::info!("interrupt received; shutting down"),
        _ = terminate => tracing::info!("SIGTERM received; shutting down"),
        _ = token.cancelled() => return,
    }
    token.cancel();
}

#[derive(Clone)]
struct Health {
    pool: PgPool,
    producer: FutureProducer,
    service: &'static str,
}

/// Prometheus text; the outbox backlog is measured at scrape time.
async fn render_metrics(State(health): State<Health>) -> impl IntoResponse {
    if let Ok(pending) = crate::outbox::pending(&health.pool).await {
        metrics::gauge!("sagashop_outbox_pending", "service" => health.service).set(pending as f64);
    }
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4",
        )],
        crate::metrics::handle().render(),
    )
}

async fn live() -> impl IntoResponse {
    Json(serde_json::json!({"status": "live"}))
}

/// Ready only when the database and the broker both answer.
async fn ready(State(health): State<Health>) -> impl IntoResponse {
    const TIMEOUT: Duration = Duration::from_secs(2);
    let database =
        match tokio::time::timeout(TIMEOUT, sqlx::query("select 1").execute(&health.pool)).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(error)) => Err(error.to_string()),
            Err(_) => Err("timed out".to_owned()),
        };
    let broker = kafka::check_reachable(&health.producer, TIMEOUT)
        .await
        .map_err(|error| format!("{error:#}"));
    let describe = |check: &Result<(), String>| match check {
        Ok(()) => "ok".to_owned(),
        Err(error) => error.clone(),
    };
    let checks = serde_json::json!({"database": describe(&database), "kafka": describe(&broker)});
    if database.is_ok() && broker.is_ok() {
        (
            StatusCode::OK,
            Json(serde_json::json!({"status": "ready", "checks": checks})),
        )
    } else {
        let body = serde_json::json!({
            "error": {"code": "not_ready", "message": "a dependency is unreachable"},
            "checks": checks,
        });
        (StatusCode::SERVICE_UNAVAILABLE, Json(body))
    }
}
