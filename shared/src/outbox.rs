//! The transactional outbox: events are written in the same transaction as the state change
//! that causes them, and a relay publishes them to Kafka. Saga events are keyed by their order
//! id ([`emit`]); the records of a compacted state topic by their entity's id, a null value
//! deleting it ([`emit_state`]); rows of one key reach their partition in `seq` order.
//!
//! One relay per database leads at a time: it holds a session-level advisory lock on a
//! connection of its own (other replicas stand by and take over when that connection goes),
//! so several replicas never reorder an order's events. The leader is pipelined: it reads
//! unpublished rows in `seq` order, hands them to the idempotent producer without waiting (the
//! producer keeps them in order within each partition), and moves rows to `outbox_published`
//! in batches as the broker acknowledges them, so no transaction, lock or pool connection is
//! held while acknowledgements are awaited (those moves commit asynchronously: a move lost in a
//! crash only publishes its row again). `outbox` thus holds only what is still to publish;
//! `crate::retention` prunes `outbox_published` by age. Whoever commits outbox rows tells the
//! relay through an [`OutboxSignal`]: in-process when the relay of the same process leads,
//! else with a `NOTIFY outbox` sent after the commit (a burst of either costs the relay one
//! read). It also polls slowly as a safety net. A delivery that fails leaves its row in
//! `outbox`; the relay then lets what is in flight land and reads again from the oldest
//! unpublished row (consumers drop the duplicates). A row the broker refuses for a reason that
//! will not pass (too large, invalid, not authorised) is parked after [`RELAY_MAX_ATTEMPTS`]
//! refusals (`failed_at`, `failure`) and skipped, so the rows after it flow;
//! `update outbox set failed_at = null, failure = null where seq = ..` queues it again.
//! A saga event's row keeps the trace context it was written in (`traceparent`, `tracestate`),
//! which the relay sends on as Kafka headers of the same names ([`crate::traces`]).
//! State records are coalesced: of the rows of one key of a state topic read together, only the
//! latest is published and the earlier ones are deleted unsent ([`superseded`]); a replica
//! keeps only the latest record per key anyway, so a hot entity costs the broker one record per
//! read instead of one per change.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures::stream::FuturesUnordered;
use futures::{FutureExt, StreamExt};
use opentelemetry::KeyValue;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use sqlx::postgres::PgListener;
use sqlx::{Connection, PgConnection, PgPool};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::envelope::{Envelope, EventPayload};
use crate::state::StateRecord;
use crate::topics::{StateTopic, Topic};
use crate::traces::{self, ServiceTracer, StoredContext};

const RELAY_LOCK_KEY: i64 = 0x5a6a_5002;
/// Refusals of a row that will not pass before the relay parks it.
pub const RELAY_MAX_ATTEMPTS: u32 = 3;
/// How long a stopping relay waits for the acknowledgements of what it sent.
const SHUTDOWN_GRACE: Duration = Duration::from_millis(1_500);

/// Kafka header carrying the envelope's type, so tools can filter without parsing the body.
pub const EVENT_TYPE_HEADER: &str = "event_type";
/// Kafka header carrying the envelope's id.
pub const EVENT_ID_HEADER: &str = "event_id";

/// Writes `payload` as a new event of the saga `order_id` to the outbox, inside the caller's
/// transaction, and returns its envelope. The row keeps the trace context it is written in
/// (`crate::traces`), which the relay sends on as the record's `traceparent` / `tracestate`.
pub async fn emit<P: EventPayload>(
    conn: &mut PgConnection,
    source: &str,
    order_id: Uuid,
    causation_id: Option<Uuid>,
    payload: &P,
) -> Result<Envelope, sqlx::Error> {
    let envelope = Envelope::new(source, order_id, causation_id, payload);
    let key = envelope.order_id.to_string();
    let trace = traces::emitting(P::TYPE, P::COMPENSATES, &key);
    enqueue(conn, P::TOPIC, &key, &envelope, trace.as_ref()).await?;
    Ok(envelope)
}

/// Writes an already built envelope to the outbox for `topic`, keyed `key`, with the trace
/// context it was written in.
async fn enqueue(
    conn: &mut PgConnection,
    topic: Topic,
    key: &str,
    envelope: &Envelope,
    trace: Option<&StoredContext>,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "insert into outbox
             (event_id, topic, message_key, event_type, envelope, traceparent, tracestate)
         values ($1, $2, $3, $4, $5, $6, $7)",
    )
    .bind(envelope.id)
    .bind(topic.base_name())
    .bind(key)
    .bind(&envelope.event_type)
    .bind(sqlx::types::Json(envelope))
    .bind(trace.map(|trace| trace.traceparent.as_str()))
    .bind(trace.and_then(|trace| trace.tracestate.as_deref()))
    .execute(conn)
    .await?;
    Ok(())
}

/// Writes the current state of the entity `key` to the outbox for its state topic, inside the
/// caller's transaction: `Some(state)` as the record, `None` as a tombstone (a null value: the
/// entity was deleted). Returns the row's `event_id` (also its `event_id` header). Write at
/// most one per key per transaction: the last one is all a replica keeps.
pub async fn emit_state<R: StateRecord>(
    conn: &mut PgConnection,
    key: &str,
    state: Option<&R>,
) -> Result<Uuid, sqlx::Error> {
    let id = Uuid::now_v7();
    sqlx::query(
        "insert into outbox (event_id, topic, message_key, event_type, envelope)
         values ($1, $2, $3, $4, $5)",
    )
    .bind(id)
    .bind(R::TOPIC.base_name())
    .bind(key)
    .bind(R::TYPE)
    .bind(state.map(sqlx::types::Json))
    .execute(conn)
    .await?;
    Ok(id)
}

/// Number of events written but not yet published (parked rows are not waiting).
pub async fn pending(pool: &PgPool) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar("select count(*) from outbox where failed_at is null")
        .fetch_one(pool)
        .await
}

/// The oldest row waiting to be published (not parked): its `seq` and how long it has waited.
pub async fn oldest_unpublished(pool: &PgPool) -> Result<Option<(i64, Duration)>, sqlx::Error> {
    let oldest: Option<(i64, f64)> = sqlx::query_as(
        "select seq, extract(epoch from clock_timestamp() - created_at)::float8 from outbox
         where failed_at is null order by seq limit 1",
    )
    .fetch_optional(pool)
    .await?;
    Ok(oldest.map(|(seq, age)| (seq, Duration::from_secs_f64(age.max(0.0)))))
}

/// Number of rows parked because the broker refused them (see [`RELAY_MAX_ATTEMPTS`]).
pub async fn failed(pool: &PgPool) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar("select count(*) from outbox where failed_at is not null")
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
    service: &'static str,
    tracer: ServiceTracer,
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
    /// The record's value; `None`: a tombstone.
    envelope: Option<String>,
    /// The trace context the row was written in, if any.
    traceparent: Option<String>,
    tracestate: Option<String>,
}

impl OutboxRow {
    /// The trace context stored with the row (moved out of it).
    fn take_trace(&mut self) -> Option<StoredContext> {
        Some(StoredContext {
            traceparent: self.traceparent.take()?,
            tracestate: self.tracestate.take(),
        })
    }
}

/// What one delivery came back with: the row's `seq` and whether the broker took it.
type Acknowledgement = (i64, Result<(), KafkaError>);

/// Rows the broker refused for a reason that will not pass, with how many times; a row leaves
/// when it is parked (one that passed after all stays until the relay restarts: they are rare).
type Refusals = HashMap<i64, u32>;

/// The broker (or the producer) will refuse the record the same way every time.
fn refused_for_good(error: &KafkaError) -> bool {
    matches!(
        error.rdkafka_error_code(),
        Some(
            RDKafkaErrorCode::MessageSizeTooLarge
                | RDKafkaErrorCode::MessageBatchTooLarge
                | RDKafkaErrorCode::InvalidMessageSize
                | RDKafkaErrorCode::InvalidRecord
                | RDKafkaErrorCode::InvalidTopic
                | RDKafkaErrorCode::TopicAuthorizationFailed
                | RDKafkaErrorCode::PolicyViolation
        )
    )
}

impl OutboxRelay {
    pub fn new(
        service: &'static str,
        tracer: ServiceTracer,
        signal: OutboxSignal,
        producer: FutureProducer,
        topic_prefix: String,
        settings: RelaySettings,
    ) -> Self {
        Self {
            service,
            tracer,
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
        let mut refusals = Refusals::new();
        while !shutdown.is_cancelled() {
            let result = match self.lead(&mut connection).await {
                Ok(true) => {
                    let leader = connection.take().expect("a leader holds its connection");
                    self.signal.0.leads.store(true, Ordering::Relaxed);
                    let published = self.publish(leader, shutdown, &mut refusals).await;
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
        refusals: &mut Refusals,
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
                    .send_unpublished(&mut leader, limit, &mut sent, &mut in_flight, refusals)
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
                    if let Some((seq, error)) = failed {
                        // Let everything in flight land (or fail), then read from the oldest.
                        settle(&mut leader, &mut in_flight, &mut sent, None).await?;
                        self.refused(&mut leader, refusals, seq, &error).await?;
                        anyhow::bail!("publishing outbox row {seq} to Kafka: {error}");
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
        refusals: &mut Refusals,
    ) -> anyhow::Result<bool> {
        let in_flight_seqs: Vec<i64> = sent.iter().copied().collect();
        let rows: Vec<OutboxRow> = sqlx::query_as(
            "select seq, event_id, topic, message_key, event_type, envelope::text as envelope,
                    traceparent, tracestate
             from outbox where failed_at is null and seq <> all($1) order by seq limit $2",
        )
        .bind(&in_flight_seqs)
        .bind(limit as i64)
        .fetch_all(&mut *leader)
        .await?;
        let read = rows.len();
        let superseded = superseded(
            rows.iter()
                .map(|row| (row.seq, row.topic.as_str(), row.message_key.as_str())),
        );
        if !superseded.is_empty() {
            // The later row of the same key stays in `outbox` until it is acknowledged, so the
            // entity's latest state is published even if this relay stops now.
            sqlx::query("delete from outbox where seq = any($1)")
                .bind(&superseded)
                .execute(&mut *leader)
                .await?;
            metrics::counter!("sagashop_outbox_superseded_total", "service" => self.service)
                .increment(superseded.len() as u64);
        }
        for mut row in rows {
            if superseded.contains(&row.seq) {
                continue;
            }
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
            let (headers, span) = self.tracer.publish(
                headers,
                row.take_trace().as_ref(),
                || {
                    vec![
                        KeyValue::new(traces::ORDER_ID, row.message_key.clone()),
                        KeyValue::new(traces::EVENT_TYPE, row.event_type.clone()),
                        KeyValue::new("messaging.system", "kafka"),
                        KeyValue::new("messaging.destination.name", topic.clone()),
                        KeyValue::new("messaging.message.id", event_id.clone()),
                    ]
                },
                &row.event_type,
            );
            let record = FutureRecord::<str, str>::to(&topic)
                .key(&row.message_key)
                .headers(headers);
            let record = match &row.envelope {
                Some(value) => record.payload(value),
                None => record,
            };
            match self.producer.send_result(record) {
                Ok(delivery) => {
                    let seq = row.seq;
                    sent.insert(seq);
                    in_flight.push(
                        async move {
                            let result = match delivery.await {
                                Ok(Ok(_)) => Ok(()),
                                Ok(Err((error, _))) => Err(error),
                                Err(_) => Err(KafkaError::Canceled),
                            };
                            match &result {
                                Ok(()) => traces::finish(span.as_ref(), Ok("acknowledged")),
                                Err(error) => traces::finish(span.as_ref(), Err(error)),
                            }
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
                    self.refused(leader, refusals, row.seq, &error).await?;
                    return Err(anyhow::Error::new(error)
                        .context(format!("handing outbox row {} to the producer", row.seq)));
                }
            }
        }
        if read > 0 {
            tracing::debug!(count = read, "outbox events handed to the producer");
        }
        Ok(read == limit)
    }

    /// Counts a failed delivery of row `seq`; once the broker has refused it
    /// [`RELAY_MAX_ATTEMPTS`] times for a reason that will not pass, parks it (`failed_at`,
    /// `failure`) so that the relay goes on with the rows after it.
    async fn refused(
        &self,
        leader: &mut PgConnection,
        refusals: &mut Refusals,
        seq: i64,
        error: &KafkaError,
    ) -> anyhow::Result<()> {
        if !refused_for_good(error) {
            return Ok(());
        }
        let refused = refusals.entry(seq).or_default();
        *refused += 1;
        if *refused < RELAY_MAX_ATTEMPTS {
            return Ok(());
        }
        refusals.remove(&seq);
        sqlx::query("update outbox set failed_at = now(), failure = $2 where seq = $1")
            .bind(seq)
            .bind(error.to_string())
            .execute(&mut *leader)
            .await?;
        metrics::counter!("sagashop_outbox_failed_total", "service" => self.service).increment(1);
        tracing::error!(
            seq,
            %error,
            attempts = RELAY_MAX_ATTEMPTS,
            "the broker refuses this outbox row every time; parked it (outbox.failed_at), \
             publishing the rows after it"
        );
        Ok(())
    }
}

/// The `seq`s of the state-topic rows among `rows` (`seq`, topic, key; in `seq` order) that a
/// later row of the same topic and key replaces: a compacted topic keeps only the latest record
/// of a key, and a replica applies only the latest, so the earlier ones need not be sent.
/// Saga events are never superseded: every one of them is published.
fn superseded<'a>(rows: impl IntoIterator<Item = (i64, &'a str, &'a str)>) -> Vec<i64> {
    let mut latest: HashMap<(&str, &str), i64> = HashMap::new();
    let mut superseded = Vec::new();
    for (seq, topic, key) in rows {
        let is_state = StateTopic::ALL
            .iter()
            .any(|state| state.base_name() == topic);
        if is_state {
            if let Some(earlier) = latest.insert((topic, key), seq) {
                superseded.push(earlier);
            }
        }
    }
    superseded
}

/// Moves acknowledged rows to `outbox_published`: `first` and every acknowledgement already
/// there, or, with `first` = `None`, everything in flight. Returns the first delivery error
/// seen, with its row.
async fn settle(
    leader: &mut PgConnection,
    in_flight: &mut FuturesUnordered<futures::future::BoxFuture<'static, Acknowledgement>>,
    sent: &mut HashSet<i64>,
    first: Option<Acknowledgement>,
) -> anyhow::Result<Option<(i64, KafkaError)>> {
    let mut acknowledged = Vec::new();
    let mut failure = None;
    let mut take = |(seq, result): Acknowledgement| {
        sent.remove(&seq);
        match result {
            Ok(()) => acknowledged.push(seq),
            Err(error) => {
                failure.get_or_insert((seq, error));
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
        sqlx::query(MOVE_PUBLISHED)
            .bind(&acknowledged)
            .execute(&mut *leader)
            .await?;
    }
    Ok(failure)
}

/// Moves the rows `$1` (their `seq`s) from `outbox` to `outbox_published`. A delete and an
/// insert, where marking the row in place could never be a HOT update and left `outbox`
/// growing: `outbox` holds only what is still to publish.
const MOVE_PUBLISHED: &str = "
    with done as (
        delete from outbox where seq = any($1)
        returning seq, event_id, topic, message_key, event_type, envelope, created_at,
                  traceparent, tracestate
    )
    insert into outbox_published
        (seq, event_id, topic, message_key, event_type, envelope, created_at,
         traceparent, tracestate)
    select seq, event_id, topic, message_key, event_type, envelope, created_at,
           traceparent, tracestate
    from done";

async fn wait_for_notification(listener: &mut Option<PgListener>) -> Result<(), sqlx::Error> {
    match listener {
        Some(listener) => listener.recv().await.map(|_| ()),
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests;
