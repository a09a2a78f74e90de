//! What every service runs, built with [`Service::builder`]: the HTTP API with the health
//! endpoints, the outbox relay, the idempotent consumer, the retention worker and any extra
//! workers, side by side under one supervisor. Start-up refuses a finite inbox retention the
//! broker could outlast (see [`retention::check_inbox_outlives_redelivery`]).
//!
//! What an orchestrator sees:
//! - `GET /health/live` answers 200 while the process serves HTTP. `GET /health/ready` answers
//!   200 only while the database and the broker answer, every task is running, the consumer
//!   has been on no message longer than `CONSUMER_STUCK_AFTER_MS` and no outbox row has waited
//!   longer than `OUTBOX_STUCK_AFTER_MS`, else 503 `{"error": {"code": "not_ready", ...},
//!   "checks": {"database", "kafka", "tasks", "consumer", "relay"}}`.
//! - SIGTERM, SIGINT or the shutdown token: the server stops accepting connections and finishes
//!   the requests in flight, the consumer commits its offsets and leaves its group, every task
//!   stops, and [`Service::run_until_stopped`] returns `Ok` (the process exits 0). Each step is
//!   bounded, and after `SHUTDOWN_TIMEOUT_MS` whatever still runs (waiting for a database or a
//!   broker that does not answer) is named in a warning and abandoned: it returns `Ok` anyway.
//! - A task that panics or ends on its own (or the HTTP server failing) while no stop was asked
//!   for: an error log naming the task, then `/health/ready` answers 503 with `checks.tasks`
//!   naming it for `TASK_FAILURE_GRACE_MS` (or until a stop signal), then every other task is
//!   stopped as above and `run_until_stopped` returns the error (the process exits non-zero).

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use anyhow::{anyhow, Context};
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
use tokio::task::{JoinError, JoinSet};
pub use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::config::CommonConfig;
use crate::consumer::{ConsumerLoop, ConsumerPolicy, EventHandler};
use crate::outbox::{OutboxRelay, OutboxSignal};
use crate::progress::Progress;
use crate::retention::{self, Rule};
use crate::topics::{dead_letter_topic, StateTopic, Topic};
use crate::traces::{self, ServiceTracer};
use crate::{consumer_lag, db, http, kafka, log_shipping, topology};

/// The task names in logs, errors and `checks.tasks` (extra workers bring their own).
const HTTP_SERVER: &str = "http-server";
const OUTBOX_RELAY: &str = "outbox-relay";
const EVENT_CONSUMER: &str = "event-consumer";
const RETENTION: &str = "retention";
const CONSUMER_LAG: &str = "consumer-lag";
/// How long a stopping service waits for its last log records to reach the broker.
const LOG_FLUSH_TIMEOUT: Duration = Duration::from_millis(500);
/// Longest a stopping service waits for its last spans to be exported.
const TRACES_FLUSH_TIMEOUT: Duration = Duration::from_secs(2);

/// The connections a service needs, ready to use: its database (migrated) and a producer, with
/// every topic created. Routes and workers are built from it.
pub struct Infrastructure {
    pub pool: PgPool,
    pub producer: FutureProducer,
    /// Call [`OutboxSignal::committed`] after committing outbox rows outside the consumer.
    pub outbox: OutboxSignal,
    /// What the consumer is working on, for `/health/ready` and `/metrics`.
    progress: Progress,
    /// The service's spans (exported when `OTEL_EXPORTER_OTLP_ENDPOINT` is set).
    pub tracer: ServiceTracer,
}

impl Infrastructure {
    /// Connects to PostgreSQL and Kafka, applies migrations and creates the topics.
    async fn start(
        service: &'static str,
        config: &CommonConfig,
        migrator: &Migrator,
    ) -> anyhow::Result<Self> {
        let limits = db::Limits {
            statement_timeout: Duration::from_millis(config.database_statement_timeout_ms),
            lock_timeout: Duration::from_millis(config.database_lock_timeout_ms),
        };
        if let Some(migration_url) = &config.database_migration_url {
            db::prepare_as_owner(migration_url, &config.database_url, migrator).await?;
        }
        let pool = db::connect_with_limits(
            &config.database_url,
            config.database_max_connections,
            limits,
        )
        .await?;
        if config.database_migration_url.is_none() {
            db::prepare(&pool, migrator).await?;
        }
        let producer = kafka::producer(&config.kafka)?;
        let prefix = &config.kafka.topic_prefix;
        // A declared service creates only the topics it uses: under ACLs it may create no other
        // (docker/kafka/set-acls.sh).
        let used: Vec<Topic> = match topology::by_name(service) {
            Some(declared) => declared
                .owns
                .into_iter()
                .chain(declared.consumes.iter().copied())
                .collect(),
            None => Topic::ALL.to_vec(),
        };
        let events: Vec<String> = used.iter().map(|topic| topic.name(prefix)).collect();
        let mut topics: Vec<(String, Option<i64>)> = events
            .iter()
            .map(|name| {
                (
                    name.clone(),
                    Some(config.retention.kafka_topic_retention_ms),
                )
            })
            .collect();
        let dead_letters = dead_letter_topic(prefix, &format!("{service}-service"));
        topics.push((dead_letters, Some(kafka::DEAD_LETTER_RETENTION_MS)));
        if config.log_topic_enabled {
            topics.push((
                log_shipping::topic(prefix),
                Some(log_shipping::LOG_RETENTION_MS),
            ));
        }
        kafka::ensure_topics_retained(&config.kafka, &topics).await?;
        // The compacted state topics it publishes or replicates (an undeclared service: all).
        let states: Vec<StateTopic> = match topology::by_name(service) {
            Some(declared) => declared.state_topics().collect(),
            None => StateTopic::ALL.to_vec(),
        };
        let states: Vec<(String, Vec<(String, String)>)> = states
            .into_iter()
            .map(|topic| {
                let settings = topic
                    .config()
                    .iter()
                    .map(|(key, value)| ((*key).to_owned(), (*value).to_owned()))
                    .collect();
                (topic.name(prefix), settings)
            })
            .collect();
        kafka::ensure_topics_configured(&config.kafka, &states).await?;
        retention::check_at_start_up(config, &producer, &events).await?;
        let service_name = topology::by_name(service).map_or_else(
            || format!("{service}-service"),
            |declared| declared.package.to_owned(),
        );
        let tracer = ServiceTracer::from_config(&service_name, &config.traces)?;
        Ok(Self {
            tracer,
            outbox: OutboxSignal::new(pool.clone()),
            pool,
            producer,
            progress: Progress::default(),
        })
    }
}

type BuildRoutes = Box<dyn FnOnce(&Infrastructure) -> Router + Send>;
type BuildConsumer = Box<
    dyn FnOnce(&Infrastructure, &CommonConfig, CancellationToken, bool) -> anyhow::Result<Task>
        + Send,
>;
type BuildWorker = Box<dyn FnOnce(&Infrastructure, CancellationToken) -> Task + Send>;
/// A background task, not started yet; it returns once its token is cancelled.
type Task = BoxFuture<'static, ()>;

/// What a service is made of; [`ServiceBuilder::build`] connects and binds it.
pub struct ServiceBuilder {
    service: &'static str,
    migrator: &'static Migrator,
    config: CommonConfig,
    http_port: u16,
    routes: Option<BuildRoutes>,
    consumer: Option<BuildConsumer>,
    workers: Vec<(&'static str, BuildWorker)>,
    /// The service's own retention rules, pruned beside the outbox's and the inbox's.
    retention_rules: Vec<Rule>,
    /// Whether the consumer records its offsets in `consumer_offsets`.
    records_offsets: bool,
    /// The topics the consumer reads (their lag is sampled beside it).
    consumed: Vec<Topic>,
}

impl ServiceBuilder {
    /// Prunes the rows of `rule` too (e.g. idempotency keys), on the retention schedule.
    pub fn retain(mut self, rule: Rule) -> Self {
        self.retention_rules.push(rule);
        self
    }

    /// The service's HTTP API (the health endpoints and `/metrics` are added to it).
    pub fn routes(
        mut self,
        routes: impl FnOnce(&Infrastructure) -> Router + Send + 'static,
    ) -> Self {
        self.routes = Some(Box::new(routes));
        self
    }

    /// Consumes `topics` in the service's group, handing each event to `handler`.
    pub fn consumes<H: EventHandler>(mut self, topics: &[Topic], handler: H) -> Self {
        let topics = topics.to_vec();
        self.consumed.clone_from(&topics);
        let service = self.service;
        self.consumer = Some(Box::new(
            move |infrastructure, config, shutdown, records| {
                let mut consumer =
                    consumer_loop(infrastructure, config, service, &topics, handler)?;
                consumer.records_offsets = records;
                Ok(Box::pin(consumer.run(shutdown)))
            },
        ));
        self
    }

    /// Makes the consumer upsert `consumer_offsets (topic, kafka_partition, next_offset,
    /// updated_at)` (a table the service creates) in the transaction that applies each batch,
    /// so the service's state says which offsets it reflects (a read model reports them and
    /// rebuilds up to them). Off by default: it costs a write per batch.
    pub fn records_offsets(mut self) -> Self {
        self.records_offsets = true;
        self
    }

    /// Adds a background task (e.g. a deadline sweeper) that runs beside the others until the
    /// token it is given is cancelled; `name` names it in logs and in `/health/ready`.
    pub fn worker<F, W>(mut self, name: &'static str, worker: W) -> Self
    where
        W: FnOnce(&Infrastructure, CancellationToken) -> F + Send + 'static,
        F: Future<Output = ()> + Send + 'static,
    {
        self.workers.push((
            name,
            Box::new(move |infrastructure, shutdown| Box::pin(worker(infrastructure, shutdown))),
        ));
        self
    }

    /// Connects to PostgreSQL and Kafka (applying the migrations and creating the topics),
    /// binds the HTTP port (0 picks a free one) and wires every task; nothing runs yet.
    pub async fn build(self) -> anyhow::Result<Service> {
        let Self {
            service,
            migrator,
            config,
            http_port,
            routes,
            consumer,
            workers,
            retention_rules,
            records_offsets,
            consumed,
        } = self;
        // The recorder first: what is set from here on (series at 0 included) is exported.
        crate::metrics::handle();
        let infrastructure = Infrastructure::start(service, &config, migrator).await?;
        log_shipping::start(service, &config.kafka, config.log_topic_enabled)?;
        let address = format!("{}:{}", config.http_host, http_port);
        let listener = TcpListener::bind(&address)
            .await
            .with_context(|| format!("binding {address}"))?;

        let shutdown = CancellationToken::new();
        let relay = OutboxRelay::new(
            service,
            infrastructure.tracer.clone(),
            infrastructure.outbox.clone(),
            infrastructure.producer.clone(),
            config.kafka.topic_prefix.clone(),
            config.relay_settings(),
        );
        let mut tasks: Vec<(&'static str, Task)> =
            vec![(OUTBOX_RELAY, Box::pin(relay.run(shutdown.clone())))];
        if let Some(consumer) = consumer {
            tasks.push((
                EVENT_CONSUMER,
                consumer(&infrastructure, &config, shutdown.clone(), records_offsets)?,
            ));
        }
        if !consumed.is_empty() {
            let prefix = &config.kafka.topic_prefix;
            let topics: Vec<String> = consumed.iter().map(|topic| topic.name(prefix)).collect();
            // The rare events' series exist from the start, so `increase()` sees the first one.
            for topic in &topics {
                metrics::counter!("sagashop_dead_letters_total", "service" => service, "topic" => topic.clone())
                    .increment(0);
            }
            tasks.push((
                CONSUMER_LAG,
                Box::pin(consumer_lag::run(
                    service,
                    config.kafka.clone(),
                    group_id(&config, service),
                    topics,
                    shutdown.clone(),
                )),
            ));
        }
        for (name, worker) in workers {
            tasks.push((name, worker(&infrastructure, shutdown.clone())));
        }
        let mut rules = config.messaging_retention_rules();
        rules.extend(retention_rules);
        tasks.push((
            RETENTION,
            Box::pin(retention::run(
                infrastructure.pool.clone(),
                service,
                rules,
                config.retention_settings(),
                shutdown.clone(),
            )),
        ));

        let routes = routes.map_or_else(Router::new, |routes| routes(&infrastructure));
        let tracer = infrastructure.tracer.clone();
        let failure = Arc::new(OnceLock::new());
        let health = Router::new()
            .route("/health/live", get(live))
            .route("/health/ready", get(ready))
            .route("/metrics", get(render_metrics))
            .with_state(Health {
                pool: infrastructure.pool,
                producer: infrastructure.producer,
                service,
                failure: Arc::clone(&failure),
                progress: infrastructure.progress,
                consumer_stuck_after: Duration::from_millis(config.consumer_stuck_after_ms),
                outbox_stuck_after: Duration::from_millis(config.outbox_stuck_after_ms),
            });
        let router = http::observed(http::with_common_layers(routes.merge(health)), service).layer(
            axum::middleware::from_fn_with_state(tracer.clone(), traces::http_layer),
        );
        Ok(Service {
            name: service,
            listener,
            router,
            tracer,
            tasks,
            shutdown,
            failure,
            failure_grace: Duration::from_millis(config.task_failure_grace_ms),
            shutdown_timeout: Duration::from_millis(config.shutdown_timeout_ms),
        })
    }
}

/// The consumer of `topics`, subscribed, in the configured group (default `<service>-service`).
fn consumer_loop<H: EventHandler>(
    infrastructure: &Infrastructure,
    config: &CommonConfig,
    service: &'static str,
    topics: &[Topic],
    handler: H,
) -> anyhow::Result<ConsumerLoop<H>> {
    let prefix = &config.kafka.topic_prefix;
    let group_id = group_id(config, service);
    let consumer = kafka::consumer(&config.kafka, &group_id)?;
    let names: Vec<String> = topics.iter().map(|topic| topic.name(prefix)).collect();
    let names: Vec<&str> = names.iter().map(String::as_str).collect();
    consumer
        .subscribe(&names)
        .context("subscribing to topics")?;
    Ok(ConsumerLoop {
        consumer,
        pool: infrastructure.pool.clone(),
        outbox: infrastructure.outbox.clone(),
        handler: Arc::new(handler),
        producer: infrastructure.producer.clone(),
        service,
        tracer: infrastructure.tracer.clone(),
        topic_prefix: prefix.to_owned(),
        group_id,
        dead_letter_topic: dead_letter_topic(prefix, &format!("{service}-service")),
        kafka: config.kafka.clone(),
        progress: infrastructure.progress.clone(),
        policy: ConsumerPolicy {
            max_attempts: config.consumer_max_attempts.max(1),
            max_event_bytes: config.kafka.max_event_bytes,
            dead_letter_max_bytes: kafka::PRODUCER_MAX_MESSAGE_BYTES,
            batch_size: config.consumer_batch_size.max(1),
            concurrency: config.consumer_concurrency.max(1),
        },
        deferred: Default::default(),
        records_offsets: false,
    })
}

/// The consumer group: the configured one, by default `<service>-service`.
fn group_id(config: &CommonConfig, service: &str) -> String {
    config
        .kafka
        .group_id
        .clone()
        .unwrap_or_else(|| format!("{service}-service"))
}

/// A built service, bound to its port, not yet running.
pub struct Service {
    /// The short name (`order`, ...).
    name: &'static str,
    listener: TcpListener,
    router: Router,
    tasks: Vec<(&'static str, Task)>,
    shutdown: CancellationToken,
    /// The first task that died, as `/health/ready` reports it.
    failure: Arc<OnceLock<String>>,
    failure_grace: Duration,
    shutdown_timeout: Duration,
    tracer: ServiceTracer,
}

impl Service {
    /// Starts describing the service `service` (the short name: `order`, `payment`, ...) with
    /// its migrations, settings and HTTP port.
    pub fn builder(
        service: &'static str,
        migrator: &'static Migrator,
        config: &CommonConfig,
        http_port: u16,
    ) -> ServiceBuilder {
        ServiceBuilder {
            service,
            migrator,
            config: config.clone(),
            http_port,
            routes: None,
            consumer: None,
            workers: Vec::new(),
            retention_rules: Vec::new(),
            records_offsets: false,
            consumed: Vec::new(),
        }
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

    /// Serves until SIGINT/SIGTERM (or the shutdown token), then stops every task and returns
    /// `Ok`; or, once a task died, reports it unready, stops the others and returns why.
    pub async fn run_until_stopped(self) -> anyhow::Result<()> {
        tokio::spawn(cancel_on_signal(self.shutdown.clone()));
        let mut supervisor = Supervisor {
            service: self.name,
            tasks: JoinSet::new(),
            names: HashMap::new(),
            shutdown: self.shutdown.clone(),
            failure: self.failure,
            failure_grace: self.failure_grace,
            shutdown_timeout: self.shutdown_timeout,
        };
        let server = axum::serve(self.listener, self.router)
            .with_graceful_shutdown(self.shutdown.cancelled_owned());
        supervisor.spawn(
            HTTP_SERVER,
            async move { server.await.context("serving HTTP") },
        );
        for (name, task) in self.tasks {
            supervisor.spawn(name, async move {
                task.await;
                Ok(())
            });
        }
        let stopped = supervisor.wait().await;
        // The last log records (why it stopped) and the spans of the last requests and events,
        // before the process exits.
        tokio::join!(
            log_shipping::flush(LOG_FLUSH_TIMEOUT),
            self.tracer.shutdown(TRACES_FLUSH_TIMEOUT),
        );
        stopped
    }
}

/// Runs the tasks of one service; the first one to die stops all of them.
struct Supervisor {
    /// The service's short name, a field of every task's span (so of every log record).
    service: &'static str,
    tasks: JoinSet<anyhow::Result<()>>,
    names: HashMap<tokio::task::Id, &'static str>,
    shutdown: CancellationToken,
    failure: Arc<OnceLock<String>>,
    failure_grace: Duration,
    /// Once the stop is asked, tasks still running after this long are abandoned.
    shutdown_timeout: Duration,
}

impl Supervisor {
    fn spawn(
        &mut self,
        name: &'static str,
        task: impl Future<Output = anyhow::Result<()>> + Send + 'static,
    ) {
        let span = tracing::info_span!("task", service = self.service, task = name);
        let handle = self.tasks.spawn(task.instrument(span));
        self.names.insert(handle.id(), name);
    }

    /// Waits for every task, or, once the stop is asked, for `shutdown_timeout` at most (what
    /// still runs then is aborted and named in a warning); the first failure is returned.
    async fn wait(mut self) -> anyhow::Result<()> {
        let mut first_failure = None;
        let (shutdown, budget) = (self.shutdown.clone(), self.shutdown_timeout);
        let out_of_time = async move {
            shutdown.cancelled().await;
            tokio::time::sleep(budget).await;
        };
        tokio::pin!(out_of_time);
        loop {
            let joined = tokio::select! {
                joined = self.tasks.join_next_with_id() => match joined {
                    Some(joined) => joined,
                    None => break,
                },
                () = &mut out_of_time => {
                    let mut running: Vec<&str> = self.names.values().copied().collect();
                    running.sort_unstable();
                    tracing::warn!(
                        tasks = running.join(", "),
                        "still running {budget:?} after the stop was asked; abandoning them"
                    );
                    // Aborted, not awaited: whatever they wait for may never answer.
                    self.tasks.abort_all();
                    break;
                }
            };
            let id = match &joined {
                Ok((id, _)) => *id,
                Err(error) => error.id(),
            };
            let name = self.names.remove(&id).unwrap_or("unnamed");
            let failure = match joined {
                Ok((_, Ok(()))) if self.shutdown.is_cancelled() => {
                    tracing::debug!(task = name, "task stopped");
                    continue;
                }
                Ok((_, Ok(()))) => anyhow!("task `{name}` ended while the service was running"),
                Ok((_, Err(error))) => error.context(format!("task `{name}` failed")),
                Err(error) => anyhow!("task `{name}` {}", how_it_stopped(error)),
            };
            tracing::error!(
                task = name,
                error = format!("{failure:#}"),
                "a task of the service stopped; stopping the service"
            );
            if first_failure.is_none() {
                let _ = self.failure.set(format!("{failure:#}"));
                // Unready for a moment before the server goes (unless it is what died).
                if name != HTTP_SERVER {
                    tokio::select! {
                        _ = tokio::time::sleep(self.failure_grace) => {}
                        _ = self.shutdown.cancelled() => {}
                    }
                }
                first_failure = Some(failure);
            }
            self.shutdown.cancel();
        }
        first_failure.map_or(Ok(()), Err)
    }
}

/// `panicked: <message>`, or how else the task stopped.
fn how_it_stopped(error: JoinError) -> String {
    if !error.is_panic() {
        return format!("stopped: {error}");
    }
    let payload = error.into_panic();
    let message = payload
        .downcast_ref::<&str>()
        .map(|message| (*message).to_owned())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "(no message)".to_owned());
    format!("panicked: {message}")
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
    failure: Arc<OnceLock<String>>,
    progress: Progress,
    /// Zero: never unready for it.
    consumer_stuck_after: Duration,
    outbox_stuck_after: Duration,
}

/// Prometheus text; the outbox backlog and what the consumer and relay are on are measured at
/// scrape time.
async fn render_metrics(State(health): State<Health>) -> impl IntoResponse {
    let service = health.service;
    if let Ok(pending) = crate::outbox::pending(&health.pool).await {
        metrics::gauge!("sagashop_outbox_pending", "service" => service).set(pending as f64);
    }
    if let Ok(oldest) = crate::outbox::oldest_unpublished(&health.pool).await {
        let age = oldest.map_or(0.0, |(_, age)| age.as_secs_f64());
        metrics::gauge!("sagashop_outbox_oldest_unpublished_seconds", "service" => service)
            .set(age);
    }
    if let Ok(failed) = crate::outbox::failed(&health.pool).await {
        metrics::gauge!("sagashop_outbox_failed", "service" => service).set(failed as f64);
    }
    for (topic, partition, age) in health.progress.ages() {
        metrics::gauge!(
            "sagashop_consumer_oldest_unprocessed_seconds",
            "service" => service,
            "topic" => topic,
            "partition" => partition.to_string()
        )
        .set(age.as_secs_f64());
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

/// Ready only when the database and the broker both answer, no task has died and neither the
/// consumer nor the relay is stuck.
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
    let tasks = health
        .failure
        .get()
        .map_or(Ok(()), |failure| Err(failure.clone()));
    let consumer = match health.progress.oldest() {
        Some(oldest)
            if !health.consumer_stuck_after.is_zero()
                && oldest.age > health.consumer_stuck_after =>
        {
            Err(format!("stuck: {oldest}"))
        }
        _ => Ok(()),
    };
    let relay = if health.outbox_stuck_after.is_zero() || database.is_err() {
        Ok(())
    } else {
        match crate::outbox::oldest_unpublished(&health.pool).await {
            Ok(Some((seq, age))) if age > health.outbox_stuck_after => Err(format!(
                "stuck: outbox row {seq} has waited {:.1} s to be published",
                age.as_secs_f64()
            )),
            Ok(_) => Ok(()),
            Err(error) => Err(error.to_string()),
        }
    };
    let describe = |check: &Result<(), String>| match check {
        Ok(()) => "ok".to_owned(),
        Err(error) => error.clone(),
    };
    let checks = serde_json::json!({
        "database": describe(&database),
        "kafka": describe(&broker),
        "tasks": describe(&tasks),
        "consumer": describe(&consumer),
        "relay": describe(&relay),
    });
    if database.is_ok() && broker.is_ok() && tasks.is_ok() && consumer.is_ok() && relay.is_ok() {
        return (
            StatusCode::OK,
            Json(serde_json::json!({"status": "ready", "checks": checks})),
        );
    }
    let message = if tasks.is_err() {
        "a task of the service stopped; it is shutting down"
    } else if database.is_err() || broker.is_err() {
        "a dependency is unreachable"
    } else {
        "a message has been in progress too long"
    };
    let body = serde_json::json!({
        "error": {"code": "not_ready", "message": message},
        "checks": checks,
    });
    (StatusCode::SERVICE_UNAVAILABLE, Json(body))
}

#[cfg(test)]
mod tests;
