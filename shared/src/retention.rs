//! Retention: a worker that deletes, in small batches and on a schedule, the rows each
//! [`Rule`] names once they are older than its window (published outbox rows and inbox rows for
//! every service, plus whatever a service adds), and the start-up check that keeps pruning the
//! inbox safe: an inbox row must outlive every chance the broker has to deliver its event again.

use std::time::Duration;

use rdkafka::producer::FutureProducer;
use tokio_util::sync::CancellationToken;

use crate::config::CommonConfig;
use crate::kafka;

/// How long rows are kept; `None` keeps them forever.
pub type Window = Option<Duration>;

/// A window from one of our `*_RETENTION_MS` settings: 0 keeps forever.
pub fn window_from_ms(ms: u64) -> Window {
    (ms > 0).then(|| Duration::from_millis(ms))
}

/// A window from a Kafka setting in milliseconds: negative (`-1`) is forever, as Kafka reads it.
pub fn kafka_window_from_ms(ms: i64) -> Window {
    u64::try_from(ms).ok().map(Duration::from_millis)
}

/// Rows of `table` whose `timestamp_column` is older than `window` (and that meet `only`, when
/// given) are deleted. Plumbing only: what a table means is its owner's business.
#[derive(Debug, Clone)]
pub struct Rule {
    pub table: &'static str,
    pub timestamp_column: &'static str,
    pub window: Window,
    /// An SQL condition the rows must also meet (e.g. `status = 'VOIDED'`); `None`: every row.
    pub only: Option<&'static str>,
}

impl Rule {
    /// Acknowledged events, moved there by the outbox relay (`OUTBOX_RETENTION_MS`).
    pub fn published_outbox(window: Window) -> Self {
        Self {
            table: "outbox_published",
            timestamp_column: "published_at",
            window,
            only: None,
        }
    }

    /// The ids of the events applied (`INBOX_RETENTION_MS`).
    pub fn inbox(window: Window) -> Self {
        Self {
            table: "inbox",
            timestamp_column: "processed_at",
            window,
            only: None,
        }
    }
}

/// How the retention worker paces itself.
#[derive(Debug, Clone)]
pub struct RetentionSettings {
    /// Time between two passes over every rule.
    pub interval: Duration,
    /// Most rows one delete statement removes (each batch commits on its own).
    pub batch_size: usize,
}

/// What pruning one rule did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Pruned {
    pub rows: u64,
    /// Delete statements run (the last one removes fewer than a batch, often none).
    pub batches: u64,
}

/// Deletes the rows of `rule` older than its window, `batch_size` at a time, until none is left
/// or `shutdown` is cancelled. The age is measured by the database's clock.
pub async fn prune(
    pool: &sqlx::PgPool,
    rule: &Rule,
    batch_size: usize,
    shutdown: &CancellationToken,
) -> Result<Pruned, sqlx::Error> {
    let mut pruned = Pruned::default();
    let Some(window) = rule.window else {
        return Ok(pruned);
    };
    let batch_size = batch_size.max(1);
    // The inner select finds a batch through the table's index on the timestamp (a BRIN index
    // suits these append-only tables); the delete then goes by physical row address.
    let statement = format!(
        "delete from {table} where ctid = any(array(
             select ctid from {table}
             where {column} < now() - $1 * interval '1 millisecond'{only}
             limit $2))",
        table = rule.table,
        column = rule.timestamp_column,
        only = rule
            .only
            .map(|condition| format!(" and ({condition})"))
            .unwrap_or_default(),
    );
    let window_ms = i64::try_from(window.as_millis()).unwrap_or(i64::MAX);
    while !shutdown.is_cancelled() {
        let deleted = sqlx::query(&statement)
            .bind(window_ms as f64)
            .bind(batch_size as i64)
            .execute(pool)
            .await?
            .rows_affected();
        pruned.rows += deleted;
        pruned.batches += 1;
        if deleted < batch_size as u64 {
            break;
        }
    }
    Ok(pruned)
}

/// Prunes every rule each `settings.interval` (the first pass at once) until `shutdown`; counts
/// the rows deleted in `sagashop_retention_pruned_rows_total{service, table}`. A failed pass is
/// logged and tried again at the next interval. Replicas of a service each run one: the work is
/// idempotent, a row two of them pick is deleted once.
pub async fn run(
    pool: sqlx::PgPool,
    service: &'static str,
    rules: Vec<Rule>,
    settings: RetentionSettings,
    shutdown: CancellationToken,
) {
    for rule in &rules {
        match rule.window {
            Some(window) => tracing::info!(table = rule.table, ?window, "retention window"),
            None => tracing::info!(table = rule.table, "retention: kept forever"),
        }
    }
    loop {
        for rule in &rules {
            match prune(&pool, rule, settings.batch_size, &shutdown).await {
                Ok(pruned) => {
                    metrics::counter!(
                        "sagashop_retention_pruned_rows_total",
                        "service" => service,
                        "table" => rule.table,
                    )
                    .increment(pruned.rows);
                    if pruned.rows > 0 {
                        tracing::debug!(table = rule.table, rows = pruned.rows, "pruned");
                    }
                }
                Err(error) => {
                    tracing::warn!(%error, table = rule.table, "pruning failed; retrying later")
                }
            }
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(settings.interval) => {}
        }
    }
}

/// Checks that inbox rows outlive every redelivery the broker can make. An event can come back
/// while its topic still holds it (`retention.ms`), and a group whose committed offsets expired
/// (`offsets.retention.minutes` after it last had members) reads its topics again from the
/// earliest record kept: the inbox window must exceed the sum, or a redelivered event whose
/// inbox row was pruned would be applied twice. An infinite topic or offset retention needs an
/// inbox kept forever (`INBOX_RETENTION_MS=0`).
pub fn check_inbox_outlives_redelivery(
    inbox: Window,
    topic_retention: Window,
    offsets_retention: Window,
) -> Result<(), String> {
    let Some(inbox) = inbox else {
        return Ok(());
    };
    let (Some(topic), Some(offsets)) = (topic_retention, offsets_retention) else {
        return Err(format!(
            "INBOX_RETENTION_MS ({} ms) is finite but the broker keeps {} forever, so an event \
             could be delivered again after its inbox row was pruned and be applied twice; set \
             INBOX_RETENTION_MS=0 (keep forever) or give the topics a finite retention.ms",
            inbox.as_millis(),
            if topic_retention.is_none() {
                "the topics' records (retention.ms=-1)"
            } else {
                "committed offsets"
            },
        ));
    };
    let redelivery = topic + offsets;
    if inbox > redelivery {
        return Ok(());
    }
    Err(format!(
        "INBOX_RETENTION_MS ({} ms) must be longer than the topic retention ({} ms, retention.ms) \
         plus the committed-offset retention ({} ms, offsets.retention.minutes), {} ms in all: \
         otherwise an event delivered again after its inbox row was pruned is applied twice",
        inbox.as_millis(),
        topic.as_millis(),
        offsets.as_millis(),
        redelivery.as_millis(),
    ))
}

/// [`check_inbox_outlives_redelivery`] with what the broker reports for the event `topics`
/// (else the `KAFKA_*_RETENTION_MS` settings): an error, so the service does not start, when
/// the inbox could be pruned before the broker stops delivering.
pub async fn check_at_start_up(
    config: &CommonConfig,
    producer: &FutureProducer,
    topics: &[String],
) -> anyhow::Result<()> {
    let settings = &config.retention;
    let (topic_ms, offsets_ms) = kafka::redelivery_retention(
        &config.kafka,
        producer,
        topics,
        settings.kafka_topic_retention_ms,
        settings.kafka_offsets_retention_ms,
    )
    .await?;
    check_inbox_outlives_redelivery(
        window_from_ms(settings.inbox_retention_ms),
        kafka_window_from_ms(topic_ms),
        kafka_window_from_ms(offsets_ms),
    )
    .map_err(|problem| anyhow::anyhow!("unsafe retention settings: {problem}"))
}

#[cfg(test)]
mod tests;
