//! The transactional outbox: events are written in the same transaction as the state change
//! that causes them, and a relay publishes them to Kafka.
//!
//! One relay per database leads at a time: it holds a session-level advisory lock on a
//! connection of its own (other replicas stand by and take over when that connection goes),
//! so several replicas never reorder an order's events. The leader is pipelined: it reads
//! unpublished rows in `seq` order, hands them to the idempotent producer without waiting (the
//! producer keeps them in order within each partition), and marks rows published in batches as
//! the broker acknowledges them, so no transaction, lock or pool connection is held while
//! acknowledgements are awaited (those marks commit asynchronously: a mark lost in a crash only
//! publishes its row again). Whoever commits outbox rows tells the relay through an
//! [`OutboxSignal`]: in-process when the relay of the same process leads, else with a `NOTIFY
//! outbox` sent after the commit (a burst of either costs the relay one read). It also polls
//! slowly as a safety net. A
//! delivery that fails leaves its row unpublished; the relay then lets what is in flight land
//! and reads again from the oldest unpublished row (consumers drop the duplicates).

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures::stream::FuturesUnordered;
use futures::{FutureExt, StreamExt};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use sqlx::postgres::PgListener;
use sqlx::{Connection, PgConnection, PgPool};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::envelope::{Envelope, EventPayload};
use crate::topics::Topic;

const RELAY_LOCK_KEY: i64 = 0x5a6a_5002;
/// How long a stopping relay waits for the acknowledgements of what it sent.
const SHUTDOWN_GRACE: Duration = Duration::from_millis(1_500);

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

/// Tells the relay that outbox rows were committed; cheap to clone, one per service process.
///
/// The notification is sent after the commit, never by the writing transaction itself:
/// PostgreSQL serialises the commits of every transaction that sends a `NOTIFY`, cluster-wide,
/// until its commit record is flushed, which would cap a durable server's commit rate at one
/// flush at a time.
#[derive(Clone)]
pub struct OutboxSignal(Arc<SignalInner>);

struct SignalInner {
    pool: PgPool,
    wake: tokio::sync::Notify,
    /// Whether this process's relay leads (so no other process needs telling).
    leads: AtomicBool,
}

impl OutboxSignal {
    pub fn new(pool: PgPool) -> Self {
        Self(Arc::new(SignalInner {
            pool,
            wake: tokio::sync::Notify::new(),
            leads: AtomicBool::new(false),
        }))
    }

    /// Call after committing a transaction that may have written outbox rows.
    pub fn committed(&self) {
        self.0.wake.notify_one();
        if !self.0.leads.load(Ordering::Relaxed) {
            let pool = self.0.pool.clone();
            tokio::spawn(async move {
                if let Err(error) = sqlx::query("select pg_notify('outbox', '')")
                    .execute(&pool)
                    .await
                {
                    tracing::debug!(%error, "could not notify the leading outbox relay");
                }
            });
        }
    }
}

/// Publishes outbox rows to Kafka.
pub struct OutboxRelay {
    pool: PgPool,
    producer: FutureProducer,
    topic_prefix: String,
    settings: RelaySettings,
    signal: OutboxSignal,
}

/// How the relay paces itself.
#[derive(Debug, Clone)]
pub struct RelaySettings {
    /// Safety-net poll (and stand-by replicas' leadership check) interval.
    pub poll_interval: Duration,
    /// Rows read per query.
    pub batch_size: usize,
    /// Most rows sent and not yet acknowledged.
    pub max_in_flight: usize,
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

/// What one delivery came back with: the row's `seq` and whether the broker took it.
type Acknowledgement = (i64, Result<(), String>);

impl OutboxRelay {
    pub fn new(
        signal: OutboxSignal,
        producer: FutureProducer,
        topic_prefix: String,
        settings: RelaySettings,
    ) -> Self {
        Self {
            pool: signal.0.pool.clone(),
            producer,
            topic_prefix,
            settings,
            signal,
        }
    }

    /// Runs until `shutdown` is cancelled: stands by until it leads, then publishes. Once
    /// stopping, it lets what is in flight land for [`SHUTDOWN_GRACE`], and is dropped a moment
    /// later if a database call does not come back (an unreachable server never answers).
    pub async fn run(self, shutdown: CancellationToken) {
        let stopping = async {
            shutdown.cancelled().await;
            tokio::time::sleep(SHUTDOWN_GRACE + Duration::from_millis(250)).await;
        };
        tokio::select! {
            () = self.relay(&shutdown) => {}
            () = stopping => tracing::warn!("outbox relay did not stop in time; abandoned"),
        }
    }

    async fn relay(&self, shutdown: &CancellationToken) {
        let mut backoff = Duration::from_millis(100);
        // A stand-by keeps its connection and asks for the lock again every poll interval.
        let mut connection = None;
        while !shutdown.is_cancelled() {
            let result = match self.lead(&mut connection).await {
                Ok(true) => {
                    let leader = connection.take().expect("a leader holds its connection");
                    self.signal.0.leads.store(true, Ordering::Relaxed);
                    let published = self.publish(leader, shutdown).await;
                    self.signal.0.leads.store(false, Ordering::Relaxed);
                    published
                }
                Ok(false) => {
                    tokio::select! {
                        _ = shutdown.cancelled() => return,
                        _ = tokio::time::sleep(self.settings.poll_interval) => {}
                    }
                    continue;
                }
                Err(error) => {
                    connection = None;
                    Err(error)
                }
            };
            match result {
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
                }
            }
        }
    }

    /// Asks for the relay lock on `connection` (connecting first if there is none); `true`
    /// when this relay now leads, `false` when another one does.
    async fn lead(&self, connection: &mut Option<PgConnection>) -> anyhow::Result<bool> {
        let connection = match connection {
            Some(connection) => connection,
            empty @ None => {
                empty.insert(PgConnection::connect_with(&self.pool.connect_options()).await?)
            }
        };
        let locked: bool = sqlx::query_scalar("select pg_try_advisory_lock($1)")
            .bind(RELAY_LOCK_KEY)
            .fetch_one(&mut *connection)
            .await?;
        if locked {
            // Marking rows published need not wait for the disk: a mark lost in a crash only
            // publishes its row again, which consumers recognise as a duplicate.
            sqlx::query("set synchronous_commit = off")
                .execute(connection)
                .await?;
            tracing::debug!("outbox relay leads");
        }
        Ok(locked)
    }

    /// Publishes while it leads: `Ok` on shutdown, an error when the database or a delivery
    /// failed (after what was in flight landed). Dropping `leader` releases the lock.
    async fn publish(
        &self,
        mut leader: PgConnection,
        shutdown: &CancellationToken,
    ) -> anyhow::Result<()> {
        let mut listener = self.listen().await;
        let mut in_flight = FuturesUnordered::new();
        let mut sent: HashSet<i64> = HashSet::new();
        let mut read_again = true;
        loop {
            if read_again && sent.len() < self.settings.max_in_flight {
                let room = self.settings.max_in_flight - sent.len();
                let limit = self.settings.batch_size.min(room);
                match self
                    .send_unpublished(&mut leader, limit, &mut sent, &mut in_flight)
                    .await
                {
                    Ok(more) => read_again = more,
                    Err(error) => {
                        // Mark what lands, so less is published twice; then back off.
                        let _ = settle(&mut leader, &mut in_flight, &mut sent, None).await;
                        return Err(error);
                    }
                }
            }
            tokio::select! {
                biased;
                _ = shutdown.cancelled() => {
                    let drained = tokio::time::timeout(
                        SHUTDOWN_GRACE,
                        settle(&mut leader, &mut in_flight, &mut sent, None),
                    );
                    if let Ok(result) = drained.await {
                        result?;
                    }
                    return Ok(());
                }
                Some(first) = in_flight.next() => {
                    let failed = settle(&mut leader, &mut in_flight, &mut sent, Some(first)).await?;
                    if let Some(error) = failed {
                        // Let everything in flight land (or fail), then read from the oldest.
                        settle(&mut leader, &mut in_flight, &mut sent, None).await?;
                        anyhow::bail!("publishing to Kafka: {error}");
                    }
                }
                _ = self.signal.0.wake.notified() => read_again = true,
                notification = wait_for_notification(&mut listener) => {
                    match notification {
                        Ok(()) => {
                            // One read answers every notification already here.
                            if let Some(listener) = listener.as_mut() {
                                while listener.next_buffered().is_some() {}
                            }
                        }
                        Err(error) => {
                            tracing::warn!(%error, "outbox listener lost; reconnecting");
                            listener = None;
                        }
                    }
                    read_again = true;
                }
                _ = tokio::time::sleep(self.settings.poll_interval) => {
                    if listener.is_none() {
                        listener = self.listen().await;
                    }
                    read_again = true;
                }
            }
        }
    }

    async fn listen(&self) -> Option<PgListener> {
        let mut listener = PgListener::connect_with(&self.pool).await.ok()?;
        listener.listen("outbox").await.ok()?;
        Some(listener)
    }

    /// Hands up to `limit` unpublished rows that are not in flight to the producer, oldest
    /// first; returns whether more may be waiting (the limit was reached, or the producer's
    /// queue was full).
    async fn send_unpublished(
        &self,
        leader: &mut PgConnection,
        limit: usize,
        sent: &mut HashSet<i64>,
        in_flight: &mut FuturesUnordered<futures::future::BoxFuture<'static, Acknowledgement>>,
    ) -> anyhow::Result<bool> {
        let in_flight_seqs: Vec<i64> = sent.iter().copied().collect();
        let rows: Vec<OutboxRow> = sqlx::query_as(
            "select seq, event_id, topic, message_key, event_type, envelope::text as envelope
             from outbox where published_at is null and seq <> all($1) order by seq limit $2",
        )
        .bind(&in_flight_seqs)
        .bind(limit as i64)
        .fetch_all(&mut *leader)
        .await?;
        let read = rows.len();
        for row in rows {
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
            let record = FutureRecord::to(&topic)
                .key(&row.message_key)
                .payload(&row.envelope)
                .headers(headers);
            match self.producer.send_result(record) {
                Ok(delivery) => {
                    let seq = row.seq;
                    sent.insert(seq);
                    in_flight.push(
                        async move {
                            let result = match delivery.await {
                                Ok(Ok(_)) => Ok(()),
                                Ok(Err((error, _))) => Err(error.to_string()),
                                Err(_) => Err("the producer dropped the delivery".to_owned()),
                            };
                            (seq, result)
                        }
                        .boxed(),
                    );
                }
                // The producer's queue is full: the rest waits for acknowledgements. Rows
                // after this one must not overtake it, so stop here.
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), _)) => {
                    tracing::debug!("producer queue full; waiting for acknowledgements");
                    return Ok(true);
                }
                // The producer refused the row outright: let what is in flight land, then
                // back off and read again from the oldest unpublished row.
                Err((error, _)) => {
                    return Err(anyhow::Error::new(error)
                        .context(format!("handing outbox row {} to the producer", row.seq)))
                }
            }
        }
        if read > 0 {
            tracing::debug!(count = read, "outbox events handed to the producer");
        }
        Ok(read == limit)
    }
}

/// Marks acknowledged rows published: `first` and every acknowledgement already there, or,
/// with `first` = `None`, everything in flight. Returns the first delivery error seen.
async fn settle(
    leader: &mut PgConnection,
    in_flight: &mut FuturesUnordered<futures::future::BoxFuture<'static, Acknowledgement>>,
    sent: &mut HashSet<i64>,
    first: Option<Acknowledgement>,
) -> anyhow::Result<Option<String>> {
    let mut acknowledged = Vec::new();
    let mut failure = None;
    let mut take = |(seq, result): Acknowledgement| {
        sent.remove(&seq);
        match result {
            Ok(()) => acknowledged.push(seq),
            Err(error) => {
                failure.get_or_insert(error);
            }
        }
    };
    match first {
        Some(first) => {
            take(first);
            while let Some(Some(next)) = in_flight.next().now_or_never() {
                take(next);
            }
        }
        None => {
            while let Some(next) = in_flight.next().await {
                take(next);
            }
        }
    }
    if !acknowledged.is_empty() {
        sqlx::query("update outbox set published_at = now() where seq = any($1)")
            .bind(&acknowledged)
            .execute(&mut *leader)
            .await?;
    }
    Ok(failure)
}

async fn wait_for_notification(listener: &mut Option<PgListener>) -> Result<(), sqlx::Error> {
    match listener {
        Some(listener) => listener.recv().await.map(|_| ()),
        None => std::future::pending().await,
    }
}
