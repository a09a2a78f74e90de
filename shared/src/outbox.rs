//! The transactional outbox: events are written in the same transaction as the state change
//! that causes them, and a relay publishes them to Kafka in commit order.
//!
//! The relay is woken by `NOTIFY outbox` (a trigger fires on every insert) and also polls
//! slowly as a safety net. A transaction-scoped advisory lock makes one relay per database
//! publish at a time, so several replicas never reorder an order's events.

use std::time::Duration;

use futures::future::join_all;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use sqlx::postgres::PgListener;
use sqlx::{PgConnection, PgPool};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::envelope::{Envelope, EventPayload};
use crate::topics::Topic;

const RELAY_LOCK_KEY: i64 = 0x5a6a_5002;
const BATCH_SIZE: i64 = 200;
const DELIVERY_TIMEOUT: Duration = Duration::from_secs(30);

/// Kafka header carrying the envelope's type, so tools can filter without parsing the body.
pub const EVENT_TYPE_HEADER: &str = "event_type";
/// Kafka header carrying the envelope's id.
pub const EVENT_ID_HEADER: &str = "event_id";

/// Writes `payload` as a new event of the saga `order_id` to the outbox, inside the caller's
/// transaction, and returns its envelope.
pub async fn emit<P: EventPayload>(
    conn: &mut PgConnection,
    source: &str,
    order_id: Uuid,
    causation_id: Option<Uuid>,
    payload: &P,
) -> Result<Envelope, sqlx::Error> {
    let envelope = Envelope::new(source, order_id, causation_id, payload);
    enqueue(conn, P::TOPIC, &envelope).await?;
    Ok(envelope)
}

/// Writes an already built envelope to the outbox for `topic`.
async fn enqueue(
    conn: &mut PgConnection,
    topic: Topic,
    envelope: &Envelope,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "insert into outbox (event_id, topic, message_key, event_type, envelope)
         values ($1, $2, $3, $4, $5)",
    )
    .bind(envelope.id)
    .bind(topic.base_name())
    .bind(envelope.order_id.to_string())
    .bind(&envelope.event_type)
    .bind(sqlx::types::Json(envelope))
    .execute(conn)
    .await?;
    Ok(())
}

/// Number of events written but not yet published.
pub async fn pending(pool: &PgPool) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar("select count(*) from outbox where published_at is null")
        .fetch_one(pool)
        .await
}

/// Publishes outbox rows to Kafka.
pub struct OutboxRelay {
    pool: PgPool,
    producer: FutureProducer,
    topic_prefix: String,
    poll_interval: Duration,
}

#[derive(sqlx::FromRow)]
struct OutboxRow {
    seq: i64,
    event_id: Uuid,
    topic: String,
    message_key: String,
    event_type: String,
    envelope: String,
}

impl OutboxRelay {
    pub fn new(
        pool: PgPool,
        producer: FutureProducer,
        topic_prefix: String,
        poll_interval: Duration,
    ) -> Self {
        Self {
            pool,
            producer,
            topic_prefix,
            poll_interval,
        }
    }

    /// Runs until `shutdown` is cancelled.
    pub async fn run(self, shutdown: CancellationToken) {
        let mut listener = None;
        let mut backoff = Duration::from_millis(100);
        loop {
            if listener.is_none() {
                listener = self.listen().await;
            }
            match self.drain().await {
                Ok(()) => backoff = Duration::from_millis(100),
                Err(error) => {
                    tracing::warn!(
                        error = format!("{error:#}"),
                        "outbox relay failed; retrying in {backoff:?}"
                    );
                    tokio::select! {
                        _ = shutdown.cancelled() => return,
                        _ = tokio::time::sleep(backoff) => {}
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                    continue;
                }
            }
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(self.poll_interval) => {}
                notification = wait_for_notification(&mut listener) => {
                    if let Err(error) = notification {
                        tracing::warn!(%error, "outbox listener lost; reconnecting");
                        listener = None;
                    }
                }
            }
        }
    }

    async fn listen(&self) -> Option<PgListener> {
        let mut listener = PgListener::connect_with(&self.pool).await.ok()?;
        listener.listen("outbox").await.ok()?;
        Some(listener)
    }

    /// Publishes batches until the outbox is empty (or another relay holds the lock).
    async fn drain(&self) -> anyhow::Result<()> {
        while self.publish_batch().await? == BATCH_SIZE as usize {}
        Ok(())
    }

    async fn publish_batch(&self) -> anyhow::Result<usize> {
        let mut tx = self.pool.begin().await?;
        let locked: bool = sqlx::query_scalar("select pg_try_advisory_xact_lock($1)")
            .bind(RELAY_LOCK_KEY)
            .fetch_one(&mut *tx)
            .await?;
        if !locked {
            return Ok(0);
        }
        let rows: Vec<OutboxRow> = sqlx::query_as(
            "select seq, event_id, topic, message_key, event_type, envelope::text as envelope
             from outbox where published_at is null order by seq limit $1",
        )
        .bind(BATCH_SIZE)
        .fetch_all(&mut *tx)
        .await?;
        if rows.is_empty() {
            return Ok(0);
        }
        let deliveries = rows.iter().map(|row| {
            let topic = format!("{}{}", self.topic_prefix, row.topic);
            let event_id = row.event_id.to_string();
            let headers = OwnedHeaders::new()
                .insert(Header {
                    key: EVENT_TYPE_HEADER,
                    value: Some(row.event_type.as_str()),
                })
                .insert(Header {
                    key: EVENT_ID_HEADER,
                    value: Some(event_id.as_str()),
                });
            let producer = &self.producer;
            async move {
                let record = FutureRecord::to(&topic)
                    .key(&row.message_key)
                    .payload(&row.envelope)
                    .headers(headers);
                producer.send(record, DELIVERY_TIMEOUT).await
            }
        });
        // Sent together, the idempotent producer keeps them in order within each partition.
        for result in join_all(deliveries).await {
            if let Err((error, _)) = result {
                anyhow::bail!("publishing to Kafka: {error}");
            }
        }
        let seqs: Vec<i64> = rows.iter().map(|row| row.seq).collect();
        sqlx::query("update outbox set published_at = now() where seq = any($1)")
            .bind(&seqs)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        tracing::debug!(count = rows.len(), "published outbox events");
        Ok(rows.len())
    }
}

async fn wait_for_notification(listener: &mut Option<PgListener>) -> Result<(), sqlx::Error> {
    match listener {
        Some(listener) => listener.recv().await.map(|_| ()),
        None => std::future::pending().await,
    }
}
