//! Settings every service shares, read once from the environment (or flags) into typed structs.

use std::time::Duration;

use clap::Args;

use crate::outbox::RelaySettings;
use crate::retention::{window_from_ms, RetentionSettings, Rule};

/// Settings common to all four services; each service flattens this into its own `Config`.
#[derive(Debug, Clone, Args)]
pub struct CommonConfig {
    /// PostgreSQL URL of this service's own database, as the role the service runs with.
    #[arg(long, env = "DATABASE_URL")]
    pub database_url: String,

    /// PostgreSQL URL of the same database as the role that owns it. When set, this role
    /// creates the schema and applies the migrations at start-up, then grants the role of
    /// `DATABASE_URL` row access only (no DDL); when unset, `DATABASE_URL` does both (for
    /// development).
    #[arg(long, env = "DATABASE_MIGRATION_URL")]
    pub database_migration_url: Option<String>,

    /// Maximum connections in the database pool.
    #[arg(long, env = "DATABASE_MAX_CONNECTIONS", default_value_t = 10)]
    pub database_max_connections: u32,

    /// `statement_timeout` of every pooled database connection, in milliseconds: a statement
    /// running longer is cancelled (SQLSTATE 57014, retried as transient). 0 disables it.
    #[arg(long, env = "DATABASE_STATEMENT_TIMEOUT_MS", default_value_t = 10_000)]
    pub database_statement_timeout_ms: u64,

    /// `lock_timeout` of every pooled database connection, in milliseconds: a statement that
    /// waits longer for a row or table lock fails (SQLSTATE 55P03, retried as transient), so a
    /// lock held elsewhere never pins a consumer. 0 disables it.
    #[arg(long, env = "DATABASE_LOCK_TIMEOUT_MS", default_value_t = 3_000)]
    pub database_lock_timeout_ms: u64,

    /// How long, in milliseconds, the service may take to stop once SIGTERM (or SIGINT) came:
    /// whatever is still running then (a request or a statement waiting for an unreachable
    /// database, a Kafka client that cannot reach the broker) is abandoned and the process
    /// exits. Keep it below the orchestrator's kill timeout.
    #[arg(long, env = "SHUTDOWN_TIMEOUT_MS", default_value_t = 4_000)]
    pub shutdown_timeout_ms: u64,

    /// Address the HTTP server binds to.
    #[arg(long, env = "HTTP_HOST", default_value = "127.0.0.1")]
    pub http_host: String,

    #[command(flatten)]
    pub kafka: KafkaConfig,

    /// Attempts at a message that fails for a reason other than the database (poison, schema
    /// mismatch, a compensation that cannot be applied) before it is dead-lettered or given up.
    #[arg(long, env = "CONSUMER_MAX_ATTEMPTS", default_value_t = 3)]
    pub consumer_max_attempts: u32,

    /// Most events a consumer applies in one database transaction. A batch is whatever the
    /// Kafka client has already fetched, up to this many; it never waits to fill one.
    #[arg(long, env = "CONSUMER_BATCH_SIZE", default_value_t = 100)]
    pub consumer_batch_size: usize,

    /// Partitions a consumer applies at the same time, each in its own transaction on its own
    /// connection (the events of one partition are always applied in order). Keep it below
    /// `DATABASE_MAX_CONNECTIONS`, which the HTTP API shares.
    #[arg(long, env = "CONSUMER_CONCURRENCY", default_value_t = 4)]
    pub consumer_concurrency: usize,

    /// How long, in milliseconds, the consumer may stay on one message (retrying it, or
    /// waiting for its batch) before `/health/ready` answers 503 naming its partition; 0 never.
    #[arg(long, env = "CONSUMER_STUCK_AFTER_MS", default_value_t = 60_000)]
    pub consumer_stuck_after_ms: u64,

    /// How long, in milliseconds, the oldest outbox row may wait to be published before
    /// `/health/ready` answers 503 naming it; 0 never.
    #[arg(long, env = "OUTBOX_STUCK_AFTER_MS", default_value_t = 60_000)]
    pub outbox_stuck_after_ms: u64,

    /// Safety-net poll interval of the outbox relay, in milliseconds (it is woken by NOTIFY on
    /// every commit; the poll only covers a lost notification).
    #[arg(long, env = "OUTBOX_POLL_INTERVAL_MS", default_value_t = 1000)]
    pub outbox_poll_interval_ms: u64,

    /// Outbox rows the relay reads per query.
    #[arg(long, env = "OUTBOX_BATCH_SIZE", default_value_t = 500)]
    pub outbox_batch_size: usize,

    /// Most outbox rows handed to the producer and not yet acknowledged by the broker.
    #[arg(long, env = "OUTBOX_MAX_IN_FLIGHT", default_value_t = 5000)]
    pub outbox_max_in_flight: usize,

    /// Once a task of the service has died (panicked or ended on its own), how long, in
    /// milliseconds, `/health/ready` answers 503 naming it before the service stops and exits
    /// non-zero.
    #[arg(long, env = "TASK_FAILURE_GRACE_MS", default_value_t = 1000)]
    pub task_failure_grace_ms: u64,

    /// Whether the service publishes its log records to the `logs` topic (`sagashop-logs`
    /// reads them), at the level `RUST_LOG` lets through. `false`: stdout only.
    #[arg(long, env = "LOG_TOPIC_ENABLED", default_value_t = true, action = clap::ArgAction::Set)]
    pub log_topic_enabled: bool,

    #[command(flatten)]
    pub retention: RetentionConfig,

    #[command(flatten)]
    pub traces: crate::traces::TracesConfig,
}

/// How long the messaging tables keep their rows, and what the broker is assumed to keep when
/// it does not say (see README.md, Retention). Windows of 0 keep rows forever.
#[derive(Debug, Clone, Args)]
pub struct RetentionConfig {
    /// Time between two pruning passes, in milliseconds.
    #[arg(long, env = "RETENTION_INTERVAL_MS", default_value_t = 60_000)]
    pub interval_ms: u64,

    /// Most rows one pruning statement deletes (each batch is its own transaction).
    #[arg(
        long = "retention-batch-size",
        env = "RETENTION_BATCH_SIZE",
        default_value_t = 1_000
    )]
    pub batch_size: usize,

    /// How long published outbox rows are kept (in `outbox_published`), in milliseconds.
    #[arg(long, env = "OUTBOX_RETENTION_MS", default_value_t = 3_600_000)]
    pub outbox_retention_ms: u64,

    /// How long inbox rows are kept, in milliseconds; must exceed the topic retention plus the
    /// committed-offset retention (checked at start-up). Default: 15 days.
    #[arg(long, env = "INBOX_RETENTION_MS", default_value_t = 1_296_000_000)]
    pub inbox_retention_ms: u64,

    /// `retention.ms` the event topics are created with, and assumed for them when the broker
    /// does not report it; -1 is infinite. Default: 7 days (Apache Kafka's).
    #[arg(
        long,
        env = "KAFKA_TOPIC_RETENTION_MS",
        default_value_t = 604_800_000,
        allow_negative_numbers = true
    )]
    pub kafka_topic_retention_ms: i64,

    /// The broker's committed-offset retention (`offsets.retention.minutes`, in milliseconds
    /// here), assumed when the broker does not report it; -1 is infinite. Default: 7 days
    /// (Apache Kafka's).
    #[arg(
        long,
        env = "KAFKA_OFFSETS_RETENTION_MS",
        default_value_t = 604_800_000,
        allow_negative_numbers = true
    )]
    pub kafka_offsets_retention_ms: i64,
}

impl Default for RetentionConfig {
    /// The defaults of the settings above.
    fn default() -> Self {
        use clap::{Command, FromArgMatches};
        let matches = Self::augment_args(Command::new("defaults"))
            .try_get_matches_from(["defaults"])
            .expect("every retention setting has a default");
        Self::from_arg_matches(&matches).expect("the defaults parse")
    }
}

/// Kafka client settings. The defaults suit both Apache Kafka and tansu (see README.md).
#[derive(Debug, Clone, Args)]
pub struct KafkaConfig {
    /// Bootstrap servers, comma separated.
    #[arg(
        long = "kafka-brokers",
        env = "KAFKA_BROKERS",
        default_value = "127.0.0.1:9092"
    )]
    pub brokers: String,

    /// Prefix for every topic name (lets several independent systems share one broker).
    #[arg(
        long = "kafka-topic-prefix",
        env = "KAFKA_TOPIC_PREFIX",
        default_value = ""
    )]
    pub topic_prefix: String,

    /// Consumer group id; defaults to the service name (e.g. `order-service`).
    #[arg(long = "kafka-group-id", env = "KAFKA_GROUP_ID")]
    pub group_id: Option<String>,

    /// `fetch.wait.max.ms`: how long a fetch waits for data. Apache Kafka answers as soon as
    /// data arrives; tansu always waits this long, so it is the per-hop latency floor there.
    #[arg(
        long = "kafka-fetch-wait-max-ms",
        env = "KAFKA_FETCH_WAIT_MAX_MS",
        default_value_t = 100
    )]
    pub fetch_wait_max_ms: u32,

    /// `linger.ms` of the producer: how long it gathers messages into one request.
    #[arg(long = "kafka-linger-ms", env = "KAFKA_LINGER_MS", default_value_t = 5)]
    pub linger_ms: u32,

    /// `session.timeout.ms` of the consumer group membership.
    #[arg(
        long = "kafka-session-timeout-ms",
        env = "KAFKA_SESSION_TIMEOUT_MS",
        default_value_t = 10_000
    )]
    pub session_timeout_ms: u32,

    /// `max.poll.interval.ms` of the consumer: a member that has not polled for this long
    /// (stuck applying a message) leaves its group, so the others take its partitions.
    #[arg(
        long = "kafka-max-poll-interval-ms",
        env = "KAFKA_MAX_POLL_INTERVAL_MS",
        default_value_t = 30_000
    )]
    pub max_poll_interval_ms: u32,

    /// `auto.offset.reset` for a group with no committed offset: `earliest` or `latest`.
    #[arg(
        long = "kafka-auto-offset-reset",
        env = "KAFKA_AUTO_OFFSET_RESET",
        default_value = "earliest"
    )]
    pub auto_offset_reset: String,

    /// Largest message accepted as an event, in bytes; larger ones are dead-lettered.
    #[arg(
        long = "kafka-max-event-bytes",
        env = "KAFKA_MAX_EVENT_BYTES",
        default_value_t = 262_144
    )]
    pub max_event_bytes: usize,

    /// Partitions for the topics this service creates at start-up.
    #[arg(
        long = "kafka-topic-partitions",
        env = "KAFKA_TOPIC_PARTITIONS",
        default_value_t = 3
    )]
    pub topic_partitions: i32,

    /// Replication factor for the topics this service creates at start-up.
    #[arg(
        long = "kafka-replication-factor",
        env = "KAFKA_REPLICATION_FACTOR",
        default_value_t = 1
    )]
    pub replication_factor: i32,

    #[command(flatten)]
    pub security: KafkaSecurity,
}

/// How the Kafka clients authenticate (README.md, Security). The default, `plaintext`, suits
/// the local broker of `cargo xtask`; the compose stack uses `sasl_plaintext` with SCRAM.
#[derive(Clone, Args)]
pub struct KafkaSecurity {
    /// `security.protocol`: `plaintext`, `ssl`, `sasl_plaintext` or `sasl_ssl`.
    #[arg(
        long = "kafka-security-protocol",
        env = "KAFKA_SECURITY_PROTOCOL",
        default_value = "plaintext",
        value_parser = ["plaintext", "ssl", "sasl_plaintext", "sasl_ssl"],
        ignore_case = true
    )]
    pub protocol: String,

    /// `sasl.mechanism` for the `sasl_*` protocols: `SCRAM-SHA-512`, `SCRAM-SHA-256` or `PLAIN`.
    #[arg(
        long = "kafka-sasl-mechanism",
        env = "KAFKA_SASL_MECHANISM",
        default_value = "SCRAM-SHA-512",
        value_parser = ["SCRAM-SHA-512", "SCRAM-SHA-256", "PLAIN"],
        ignore_case = true
    )]
    pub sasl_mechanism: String,

    /// The SASL user (required by the `sasl_*` protocols).
    #[arg(long = "kafka-sasl-username", env = "KAFKA_SASL_USERNAME")]
    pub sasl_username: Option<String>,

    /// The SASL user's password (required by the `sasl_*` protocols).
    #[arg(long = "kafka-sasl-password", env = "KAFKA_SASL_PASSWORD")]
    pub sasl_password: Option<String>,

    /// `ssl.ca.location`: a PEM file of the CAs that sign the broker's certificate, for the
    /// `ssl` and `sasl_ssl` protocols (default: the system's CAs).
    #[arg(long = "kafka-ssl-ca-location", env = "KAFKA_SSL_CA_LOCATION")]
    pub ssl_ca_location: Option<String>,
}

impl Default for KafkaSecurity {
    fn default() -> Self {
        Self {
            protocol: "plaintext".to_owned(),
            sasl_mechanism: "SCRAM-SHA-512".to_owned(),
            sasl_username: None,
            sasl_password: None,
            ssl_ca_location: None,
        }
    }
}

/// Never prints the password.
impl std::fmt::Debug for KafkaSecurity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KafkaSecurity")
            .field("protocol", &self.protocol)
            .field("sasl_mechanism", &self.sasl_mechanism)
            .field("sasl_username", &self.sasl_username)
            .field(
                "sasl_password",
                &self.sasl_password.as_ref().map(|_| "<redacted>"),
            )
            .field("ssl_ca_location", &self.ssl_ca_location)
            .finish()
    }
}

impl CommonConfig {
    pub fn relay_settings(&self) -> RelaySettings {
        RelaySettings {
            poll_interval: Duration::from_millis(self.outbox_poll_interval_ms),
            batch_size: self.outbox_batch_size.max(1),
            max_in_flight: self.outbox_max_in_flight.max(1),
        }
    }

    pub fn retention_settings(&self) -> RetentionSettings {
        RetentionSettings {
            interval: Duration::from_millis(self.retention.interval_ms.max(1)),
            batch_size: self.retention.batch_size.max(1),
        }
    }

    /// The rules every service prunes by: published outbox rows and inbox rows.
    pub fn messaging_retention_rules(&self) -> Vec<Rule> {
        vec![
            Rule::published_outbox(window_from_ms(self.retention.outbox_retention_ms)),
            Rule::inbox(window_from_ms(self.retention.inbox_retention_ms)),
        ]
    }
}
