//! The idempotent consumer loop. Messages are taken in batches of whatever the client has
//! already fetched (never waiting to fill one), and each partition's part of a batch is
//! applied in one database transaction (several partitions at a time, each on its own
//! connection): every handled event's inbox row, its effects and the outbox rows it causes
//! commit together, and the Kafka offsets are stored only after that commit. Event types the
//! service does not handle need no transaction at all. Each message is decoded once, here, into
//! the typed [`Event`] (older versions upcast, unknown fields ignored); the handler picks what
//! it acts on with an exhaustive `match`. Each event it acts on is handled in the trace its
//! `traceparent` header carries ([`crate::traces`]), so what the handler writes continues it.
//! Before applying any of a batch, the handler locks the rows its events share with other
//! orders, in one global order ([`EventHandler::lock_shared_rows`]), so that the transactions
//! of concurrent partitions never deadlock.
//!
//! A batch stops at its first message that cannot be applied (not an event of ours, a handler
//! failure, a database error): the transaction is rolled back, the messages before it are
//! applied again as a batch of their own, and the failing message goes through the one-message
//! path, which retries database failures with backoff until they pass, retries other failures
//! a bounded number of times and then gives up explicitly or dead-letters the message, so the
//! partition keeps flowing. Its neighbours are never lost, reordered or half-applied. A dead
//! letter too large for the producer goes out truncated, a missing dead-letter topic is
//! created, and [`Progress`] shows, per partition, how long the loop has been on one message.
//! A database failure holds the loop for about two seconds at most: then the partition is
//! sought back to the message (what follows it in the batch is left unstored) and the loop
//! polls again, serving rebalances and the other partitions; the message is retried, with its
//! backoff, when it is fetched again.

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use opentelemetry::KeyValue;
use rdkafka::consumer::Consumer;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{BorrowedMessage, Header, Headers, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{Message, Offset};
use sqlx::{PgConnection, PgPool};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::config::KafkaConfig;
use crate::envelope::Envelope;
use crate::events::{DecodeError, Event};
use crate::inbox::{self, Origin};
use crate::kafka::GroupConsumer;
use crate::outbox::OutboxSignal;
use crate::progress::Progress;
use crate::traces::{self, ServiceTracer};

/// Applies one event of the saga to the service's state.
pub trait EventHandler: Send + Sync + 'static {
    /// An event the service acts on, in the service's own terms.
    type Input: Send + Sync;

    /// Picks out what the service acts on, with an exhaustive `match` over [`Event`] (no `_`
    /// arm), so a new event is a compile error until it is handled or explicitly ignored.
    /// `None`: ignored; acknowledged without a transaction or an inbox row.
    fn select(&self, event: Event) -> Option<Self::Input>;

    /// Applies `input` (from `envelope`) inside the caller's transaction, which already holds
    /// its inbox row (and may hold other events of the same batch).
    fn handle(
        &self,
        conn: &mut PgConnection,
        envelope: &Envelope,
        input: &Self::Input,
    ) -> impl Future<Output = Result<(), HandlerError>> + Send;

    /// Called once at the start of every transaction that applies events (a batch's, or one
    /// event's on the retry path), before any `handle`, with the inputs of every event it is
    /// about to apply. A handler whose events lock rows that other orders share (a product's
    /// stock, a customer's balance) locks all of them here in one global order (e.g.
    /// `order by sku for update`): batches of different partitions run concurrently, and two
    /// that each locked their events' rows event by event could take them in opposite orders
    /// and deadlock (PostgreSQL breaks it after `deadlock_timeout`, a second, and one batch
    /// starts again). Each `handle` then finds its rows already held. It is also where a lock
    /// held for the whole transaction is taken once rather than per event. Not called by
    /// [`EventHandler::give_up`]'s transaction.
    fn lock_shared_rows(
        &self,
        conn: &mut PgConnection,
        inputs: &[&Self::Input],
    ) -> impl Future<Output = Result<(), sqlx::Error>> + Send {
        let _ = (conn, inputs);
        async { Ok(()) }
    }

    /// Called, in a new transaction holding the event's inbox row, when `handle` kept failing
    /// with [`HandlerError::Failed`] for every attempt. A service records an explicit failure
    /// state here (e.g. a compensation that cannot succeed) and returns `true`; `false` sends
    /// the message to the dead-letter topic instead.
    fn give_up(
        &self,
        conn: &mut PgConnection,
        envelope: &Envelope,
        input: &Self::Input,
        reason: &str,
    ) -> impl Future<Output = Result<bool, sqlx::Error>> + Send {
        let _ = (conn, envelope, input, reason);
        async { Ok(false) }
    }
}

/// Why an event could not be applied.
#[derive(Debug, thiserror::Error)]
pub enum HandlerError {
    /// The event is valid but cannot be applied (e.g. what a compensation must undo is gone):
    /// retried a bounded number of times, then handed to [`EventHandler::give_up`].
    #[error("{0}")]
    Failed(String),
    /// The database failed: transient, retried with backoff until it works.
    #[error("database error: {0}")]
    Database(sqlx::Error),
}

/// Errors that will fail the same way every time are `Failed` (bounded attempts, then
/// [`EventHandler::give_up`] or the dead-letter topic), not retried forever: a row that does
/// not decode (e.g. a status a newer release wrote), a missing column or type, an expected row
/// that is not there, and SQLSTATE classes 0A (unsupported feature), 22 (data exception), 23
/// (constraint violation) and 42 (syntax error, undefined object, insufficient privilege).
/// Everything else (connections lost, pool and statement timeouts, deadlocks, serialization
/// failures, lock not available, query cancelled) is transient.
impl From<sqlx::Error> for HandlerError {
    fn from(error: sqlx::Error) -> Self {
        if fails_every_time(&error) {
            Self::Failed(format!("the database refused the change: {error}"))
        } else {
            Self::Database(error)
        }
    }
}

fn fails_every_time(error: &sqlx::Error) -> bool {
    match error {
        sqlx::Error::Decode(_)
        | sqlx::Error::ColumnDecode { .. }
        | sqlx::Error::ColumnNotFound(_)
        | sqlx::Error::ColumnIndexOutOfBounds { .. }
        | sqlx::Error::TypeNotFound { .. }
        | sqlx::Error::Encode(_)
        | sqlx::Error::RowNotFound => true,
        sqlx::Error::Database(database) => database
            .code()
            .is_some_and(|code| matches!(code.get(..2), Some("0A" | "22" | "23" | "42"))),
        _ => false,
    }
}

const FIRST_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(10);
/// Longest the one-message path retries a transient failure before it hands the message back
/// to the broker (a seek to its offset) and returns to polling, which serves rebalances.
const MOST_HELD: Duration = Duration::from_secs(2);
/// Most a message handed back and fetched again before it is due holds the loop.
const DEFERRED_WAIT: Duration = Duration::from_millis(250);
/// Once stopping, how long the batch being applied may take to finish before it is dropped
/// (rolled back; its offsets are not stored, so it is delivered again).
const STOP_DRAIN: Duration = Duration::from_millis(1_000);
/// How long a stopping consumer waits for its last offset commit and for leaving its group.
const CLOSE_TIMEOUT: Duration = Duration::from_millis(2_000);
/// How often the loop forgets the partitions a rebalance took from it.
const FORGET_UNASSIGNED_EVERY: Duration = Duration::from_secs(5);

/// How the consumer treats messages it cannot process.
#[derive(Debug, Clone)]
pub(crate) struct ConsumerPolicy {
    /// Attempts for a message that fails for a reason other than the database.
    pub max_attempts: u32,
    /// Larger messages are not events of ours: they are dead-lettered.
    pub max_event_bytes: usize,
    /// Most messages taken at once (applied in one transaction per partition).
    pub batch_size: usize,
    /// Largest dead letter the producer sends (key, payload and headers); the payload of a
    /// larger one is cut to fit.
    pub dead_letter_max_bytes: usize,
    /// Partitions of a batch applied at the same time, each on its own connection.
    pub concurrency: usize,
}

pub(crate) struct ConsumerLoop<H> {
    pub consumer: GroupConsumer,
    pub pool: PgPool,
    /// Told after every commit (the relay publishes what it caused).
    pub outbox: OutboxSignal,
    pub handler: Arc<H>,
    pub producer: FutureProducer,
    pub service: &'static str,
    /// Continues the trace of each message it handles (`crate::traces`).
    pub tracer: ServiceTracer,
    /// The deployment's topic prefix: an event is accepted only from its owner's topic.
    pub topic_prefix: String,
    pub group_id: String,
    pub dead_letter_topic: String,
    /// To create the dead-letter topic when the broker says it does not exist.
    pub kafka: KafkaConfig,
    pub policy: ConsumerPolicy,
    /// The oldest unfinished message per partition, for `/health/ready` and `/metrics`.
    pub progress: Progress,
    /// Messages handed back to the broker while they fail transiently, by (topic, partition).
    pub deferred: Mutex<HashMap<(String, i32), Deferral>>,
    /// Upsert `consumer_offsets` (shared/sql/messaging.sql) in each transaction that applies
    /// messages (`ServiceBuilder::records_offsets`).
    pub records_offsets: bool,
}

/// A message handed back to the broker: when it comes again it is not tried before
/// `not_before`, and its retries go on with `backoff`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Deferral {
    offset: i64,
    not_before: Instant,
    backoff: Duration,
}

/// How the one-message path ended.
enum Processed {
    /// Applied, a duplicate, given up on or dead-lettered: its offset may be stored.
    Done,
    /// Still failing: the partition was sought back to it; the rest of the partition's batch
    /// must be left (their offsets unstored) and fetched again.
    Deferred,
    /// Shutdown interrupted it.
    Stopped,
}

/// Counts a message sent to the dead-letter topic, by the topic it came from; `increment(0)`
/// at start-up makes the series exist before the first one (so `increase()` sees it arrive).
pub(crate) fn count_dead_letter(service: &'static str, topic: &str) {
    metrics::counter!(
        "sagashop_dead_letters_total",
        "service" => service,
        "topic" => topic.to_owned(),
    )
    .increment(1);
}

/// The log span of handling one event; `trace_id` when it is traced.
fn event_span(envelope: &Envelope, origin: &Origin, trace: Option<&Trace>) -> tracing::Span {
    let span = tracing::info_span!(
        "event",
        event_type = %envelope.event_type,
        event_id = %envelope.id,
        order_id = %envelope.order_id,
        partition = origin.partition,
        offset = origin.offset,
        trace_id = tracing::field::Empty,
    );
    if let Some(trace) = trace {
        use opentelemetry::trace::TraceContextExt;
        span.record(
            "trace_id",
            tracing::field::display(trace.span().span_context().trace_id()),
        );
    }
    span
}

/// The trace context one message is handled in.
type Trace = opentelemetry::Context;

/// Ends the span of `trace` with the outcome of handling its message.
fn finish_trace<T: AsRef<str>, E: std::fmt::Display>(trace: Option<&Trace>, result: &Result<T, E>) {
    match result {
        Ok(outcome) => traces::finish(trace, Ok(outcome.as_ref())),
        Err(error) => traces::finish(trace, Err(error)),
    }
}

/// Why one attempt at a message failed.
enum Failure<I> {
    /// Retried until it works (database unreachable, deadlock, ...).
    Transient(String),
    /// Cannot be an event of ours, or does not match its schema: bounded retries, then DLQ.
    Poison(String),
    /// A valid event its handler cannot apply: bounded retries, then `give_up`, else DLQ.
    Rejected(Envelope, I, String),
}

impl<H: EventHandler> ConsumerLoop<H> {
    pub async fn run(self, shutdown: CancellationToken) {
        // Up to `batch_size` messages the client has already fetched: no wait to fill a batch.
        let mut batches = self
            .consumer
            .stream()
            .ready_chunks(self.policy.batch_size.max(1));
        let mut forget = tokio::time::interval(FORGET_UNASSIGNED_EVERY);
        forget.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let batch = tokio::select! {
                _ = shutdown.cancelled() => break,
                batch = batches.next() => batch,
                _ = forget.tick() => {
                    self.forget_unassigned();
                    continue;
                }
            };
            let Some(batch) = batch else { break };
            let mut messages = Vec::with_capacity(batch.len());
            for message in batch {
                match message {
                    Ok(message) => messages.push(message),
                    Err(error) => tracing::warn!(%error, "kafka consumer error"),
                }
            }
            if messages.is_empty() {
                tokio::time::sleep(Duration::from_millis(500)).await;
                continue;
            }
            // Once stopping, what is being applied gets a moment to finish, then is dropped.
            let stopping = async {
                shutdown.cancelled().await;
                tokio::time::sleep(STOP_DRAIN).await;
            };
            let completed = tokio::select! {
                completed = self.process_partitions(&messages, &shutdown) => completed,
                () = stopping => false,
            };
            if !completed {
                break;
            }
        }
        drop(batches);
        if !self.consumer.close(CLOSE_TIMEOUT).await {
            tracing::warn!(
                "the Kafka consumer did not commit and leave its group within {CLOSE_TIMEOUT:?}; \
                 going on without"
            );
        }
    }

    /// Applies the messages of each partition in `messages` in their order, up to
    /// `concurrency` partitions at a time, each in transactions of its own; `false` means
    /// shutdown interrupted it.
    async fn process_partitions(
        &self,
        messages: &[BorrowedMessage<'_>],
        shutdown: &CancellationToken,
    ) -> bool {
        let mut partitions: Vec<Vec<&BorrowedMessage<'_>>> = Vec::new();
        for message in messages {
            let same = |first: &&BorrowedMessage<'_>| {
                first.partition() == message.partition() && first.topic() == message.topic()
            };
            match partitions
                .iter_mut()
                .find(|group| group.first().is_some_and(same))
            {
                Some(group) => group.push(message),
                None => partitions.push(vec![message]),
            }
        }
        let mut waiting = partitions.into_iter();
        let mut running = futures::stream::FuturesUnordered::new();
        for group in waiting.by_ref().take(self.policy.concurrency.max(1)) {
            running.push(self.process_group(group, shutdown));
        }
        let mut completed = true;
        while let Some(done) = running.next().await {
            completed &= done;
            if let Some(group) = waiting.next() {
                running.push(self.process_group(group, shutdown));
            }
        }
        completed
    }

    async fn process_group(
        &self,
        messages: Vec<&BorrowedMessage<'_>>,
        shutdown: &CancellationToken,
    ) -> bool {
        self.process_batch(&messages, shutdown).await
    }

    /// Applies `messages` (in order) and stores their offsets; `false` means shutdown
    /// interrupted it (the offsets of what was not applied are not stored).
    async fn process_batch(
        &self,
        messages: &[&BorrowedMessage<'_>],
        shutdown: &CancellationToken,
    ) -> bool {
        let Some(first) = messages.first() else {
            return true;
        };
        let (topic, partition) = (first.topic(), first.partition());
        let mut rest = messages;
        let mut take = rest.len();
        // A message handed back earlier goes straight to the one-message path (its backoff).
        let mut handed_back = rest.first().is_some_and(|first| self.is_deferred(first));
        while !rest.is_empty() {
            self.progress.working_on(topic, partition, rest[0].offset());
            let applied = if std::mem::take(&mut handed_back) {
                Err(0)
            } else {
                self.apply_batch(&rest[..take]).await
            };
            match applied {
                Ok(outcomes) => {
                    for (message, outcome) in rest[..take].iter().zip(outcomes) {
                        self.count(outcome);
                        self.store_offset(message);
                    }
                    rest = &rest[take..];
                }
                Err(0) => match self.process(rest[0], shutdown).await {
                    Processed::Done => {
                        self.store_offset(rest[0]);
                        rest = &rest[1..];
                    }
                    // The partition was sought back: the rest of it comes again.
                    Processed::Deferred => return true,
                    Processed::Stopped => return false,
                },
                // Everything was rolled back: apply the messages before the failing one first.
                Err(failed_at) => {
                    take = failed_at;
                    continue;
                }
            }
            take = rest.len();
        }
        self.progress.idle(topic, partition);
        true
    }

    /// Applies every message of `messages` in one transaction and returns each one's outcome,
    /// or, when one of them cannot be applied, rolls everything back and returns its index.
    async fn apply_batch(
        &self,
        messages: &[&BorrowedMessage<'_>],
    ) -> Result<Vec<&'static str>, usize> {
        let stopped = |index: usize, reason: &dyn std::fmt::Display| {
            tracing::debug!(index, %reason, "batch stopped; applying the messages before it");
            index
        };
        // Every message decoded and selected first, so that the handler can lock what the
        // whole batch touches before applying any of it.
        let mut selected = Vec::with_capacity(messages.len());
        for (index, message) in messages.iter().enumerate() {
            let (envelope, event) = self
                .check(message)
                .map_err(|reason| stopped(index, &reason))?;
            selected.push((envelope, self.handler.select(event)));
        }
        let inputs: Vec<&H::Input> = selected
            .iter()
            .filter_map(|(_, input)| input.as_ref())
            .collect();
        let mut tx: Option<sqlx::Transaction<'static, sqlx::Postgres>> = None;
        if !inputs.is_empty() {
            let conn = tx.insert(
                self.pool
                    .begin()
                    .await
                    .map_err(|error| stopped(0, &error))?,
            );
            self.handler
                .lock_shared_rows(conn, &inputs)
                .await
                .map_err(|error| stopped(0, &error))?;
        }
        let mut outcomes = Vec::with_capacity(messages.len());
        // The spans of the events applied, to log them once the transaction committed.
        let mut applied = Vec::new();
        for (index, (message, (envelope, input))) in messages.iter().zip(&selected).enumerate() {
            let Some(input) = input else {
                outcomes.push("ignored");
                continue;
            };
            let conn = tx.as_mut().expect("begun: the batch has an input");
            let origin = Origin::of(message);
            let trace = self.trace("process", message, envelope, &origin);
            let span = event_span(envelope, &origin, trace.as_ref());
            let outcome = traces::run_in(
                trace.as_ref(),
                async {
                    if !inbox::claim(conn, envelope, &origin).await? {
                        tracing::debug!("duplicate event ignored");
                        return Ok("duplicate");
                    }
                    self.handler.handle(conn, envelope, input).await?;
                    Ok::<_, HandlerError>("applied")
                }
                .instrument(span.clone()),
            )
            .await;
            finish_trace(trace.as_ref(), &outcome);
            let outcome = outcome.map_err(|error| stopped(index, &error))?;
            if outcome == "applied" {
                applied.push(span);
            }
            outcomes.push(outcome);
        }
        if let Some(mut tx) = tx {
            if let Some(last) = messages.last().filter(|_| self.records_offsets) {
                record_offset(&mut tx, &Origin::of(last))
                    .await
                    .map_err(|error| {
                        tracing::debug!(%error, "recording the offset failed");
                        0usize
                    })?;
            }
            // A failed commit: the first message takes the one-message path, which retries.
            tx.commit().await.map_err(|error| {
                tracing::debug!(%error, "batch commit failed");
                0usize
            })?;
            self.outbox.committed();
            for span in applied {
                span.in_scope(|| tracing::info!("event applied"));
            }
        }
        Ok(outcomes)
    }

    fn store_offset(&self, message: &BorrowedMessage<'_>) {
        if let Err(error) = self.consumer.store_offset_from_message(message) {
            tracing::warn!(%error, "could not store offset");
        }
    }

    /// Processes one message until it is applied, recognised as a duplicate, given up on or
    /// dead-lettered. A transient failure is retried with backoff for at most [`MOST_HELD`]
    /// (plus one attempt); then the partition is sought back to the message, which is fetched
    /// again, and the loop goes back to polling (a rebalance never waits for a stuck message).
    async fn process(
        &self,
        message: &BorrowedMessage<'_>,
        shutdown: &CancellationToken,
    ) -> Processed {
        let origin = Origin::of(message);
        let span = tracing::info_span!(
            "consume",
            topic = %origin.topic,
            partition = origin.partition,
            offset = origin.offset,
        );
        let held_until = Instant::now() + MOST_HELD;
        let mut attempts = 0;
        let mut backoff = FIRST_BACKOFF;
        if let Some(deferral) = self.deferral_of(message) {
            backoff = deferral.backoff;
            // Not due yet: wait a little (the loop is held meanwhile), then hand it back again.
            let wait_until = deferral.not_before.min(Instant::now() + DEFERRED_WAIT);
            tokio::select! {
                _ = shutdown.cancelled() => return Processed::Stopped,
                _ = tokio::time::sleep_until(wait_until) => {}
            }
            if deferral.not_before > Instant::now()
                && self.defer(message, deferral.not_before, backoff)
            {
                return Processed::Deferred;
            }
            tokio::select! {
                _ = shutdown.cancelled() => return Processed::Stopped,
                _ = tokio::time::sleep_until(deferral.not_before) => {}
            }
        }
        loop {
            let failure = match self
                .attempt(message, &origin)
                .instrument(span.clone())
                .await
            {
                Ok(outcome) => {
                    self.count(outcome);
                    return Processed::Done;
                }
                Err(failure) => failure,
            };
            match failure {
                Failure::Transient(reason) => {
                    self.count_retry("transient");
                    span.in_scope(|| {
                        tracing::warn!(reason, "transient failure; retrying in {backoff:?}")
                    });
                    let retry_at = Instant::now() + backoff;
                    let next = (backoff * 2).min(MAX_BACKOFF);
                    if retry_at > held_until && self.defer(message, retry_at, next) {
                        return Processed::Deferred;
                    }
                }
                Failure::Poison(reason) | Failure::Rejected(_, _, reason)
                    if attempts + 1 < self.policy.max_attempts =>
                {
                    attempts += 1;
                    self.count_retry("permanent");
                    span.in_scope(|| {
                        tracing::warn!(
                            reason,
                            attempts,
                            "cannot process the message; retrying in {backoff:?}"
                        )
                    });
                }
                Failure::Poison(reason) => {
                    return Self::finished(
                        self.dead_letter(message, &reason, attempts + 1, shutdown)
                            .await,
                    )
                }
                Failure::Rejected(envelope, input, reason) => {
                    let attempts = attempts + 1;
                    return Self::finished(
                        self.give_up(message, &envelope, &input, &reason, attempts, shutdown)
                            .await,
                    );
                }
            }
            tokio::select! {
                _ = shutdown.cancelled() => return Processed::Stopped,
                _ = tokio::time::sleep(backoff) => {}
            }
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
    }

    fn finished(done: bool) -> Processed {
        if done {
            Processed::Done
        } else {
            Processed::Stopped
        }
    }

    /// Forgets what the loop remembers of partitions no longer assigned to it (a rebalance took
    /// them): their unfinished message is another member's now, so it must not keep this one
    /// unready, and its deferral must not apply if the partition comes back.
    fn forget_unassigned(&self) {
        let Ok(assignment) = self.consumer.assignment() else {
            return;
        };
        let assigned = |topic: &str, partition: i32| {
            assignment
                .elements()
                .iter()
                .any(|element| element.partition() == partition && element.topic() == topic)
        };
        self.progress.retain(assigned);
        self.deferred
            .lock()
            .expect("deferred lock")
            .retain(|(topic, partition), _| assigned(topic, *partition));
    }

    /// Whether `message` is one its partition handed back.
    fn is_deferred(&self, message: &BorrowedMessage<'_>) -> bool {
        let deferred = self.deferred.lock().expect("deferred lock");
        !deferred.is_empty()
            && deferred
                .get(&(message.topic().to_owned(), message.partition()))
                .is_some_and(|deferral| deferral.offset == message.offset())
    }

    /// The deferral of `message` if it is the one its partition handed back (taken out).
    fn deferral_of(&self, message: &BorrowedMessage<'_>) -> Option<Deferral> {
        let mut deferred = self.deferred.lock().expect("deferred lock");
        if deferred.is_empty() {
            return None;
        }
        let key = (message.topic().to_owned(), message.partition());
        deferred
            .remove(&key)
            .filter(|deferral| deferral.offset == message.offset())
    }

    /// Seeks the partition of `message` back to it (dropping what was fetched after it) and
    /// remembers when to try it again. `false`: the seek failed, so the message must be kept
    /// and retried here (the messages after it would otherwise be applied and stored).
    fn defer(&self, message: &BorrowedMessage<'_>, not_before: Instant, backoff: Duration) -> bool {
        let (topic, partition, offset) = (message.topic(), message.partition(), message.offset());
        // Local to the client (no broker round trip); with a timeout, nothing fetched from
        // the old position is handed out afterwards.
        if let Err(error) = self.consumer.seek(
            topic,
            partition,
            Offset::Offset(offset),
            Duration::from_secs(1),
        ) {
            tracing::warn!(%error, topic, partition, offset, "could not hand a failing message back");
            return false;
        }
        tracing::debug!(
            topic,
            partition,
            offset,
            "failing message handed back to the broker"
        );
        self.deferred.lock().expect("deferred lock").insert(
            (topic.to_owned(), partition),
            Deferral {
                offset,
                not_before,
                backoff,
            },
        );
        true
    }

    /// One attempt: checks the message is an event of ours, then applies it.
    async fn attempt(
        &self,
        message: &BorrowedMessage<'_>,
        origin: &Origin,
    ) -> Result<&'static str, Failure<H::Input>> {
        let (envelope, event) = self.check(message).map_err(Failure::Poison)?;
        let Some(input) = self.handler.select(event) else {
            return Ok("ignored");
        };
        let trace = self.trace("process", message, &envelope, origin);
        let applied = traces::run_in(
            trace.as_ref(),
            self.apply(&envelope, &input, origin).instrument(event_span(
                &envelope,
                origin,
                trace.as_ref(),
            )),
        )
        .await;
        finish_trace(trace.as_ref(), &applied);
        match applied {
            Ok(outcome) => Ok(outcome),
            Err(HandlerError::Database(error)) => Err(Failure::Transient(error.to_string())),
            Err(HandlerError::Failed(reason)) => Err(Failure::Rejected(envelope, input, reason)),
        }
    }

    /// Checks that `message` is an event of ours (size, envelope, known type, schema) and
    /// decodes it; the error says why it is poison.
    fn check(&self, message: &BorrowedMessage<'_>) -> Result<(Envelope, Event), String> {
        let bytes = message.payload().unwrap_or_default();
        if bytes.len() > self.policy.max_event_bytes {
            return Err(format!(
                "message of {} bytes is larger than the {} bytes an event may have",
                bytes.len(),
                self.policy.max_event_bytes
            ));
        }
        let envelope: Envelope = serde_json::from_slice(bytes)
            .map_err(|error| format!("not an event envelope: {error}"))?;
        let event = envelope
            .event()
            .map_err(|error: DecodeError| error.to_string())?;
        // Only the service that owns an event publishes it, on its own topic: the same type on
        // another topic was produced by someone else and is not believed.
        let owner = event.topic().base_name();
        if message.topic().strip_prefix(self.topic_prefix.as_str()) != Some(owner) {
            return Err(format!(
                "{} belongs on {}{owner}, not on {}: refused",
                envelope.event_type,
                self.topic_prefix,
                message.topic()
            ));
        }
        Ok((envelope, event))
    }

    async fn apply(
        &self,
        envelope: &Envelope,
        input: &H::Input,
        origin: &Origin,
    ) -> Result<&'static str, HandlerError> {
        let mut tx = self.pool.begin().await?;
        if !inbox::claim(&mut tx, envelope, origin).await? {
            tracing::debug!("duplicate event ignored");
            return Ok("duplicate");
        }
        self.handler.lock_shared_rows(&mut tx, &[input]).await?;
        self.handler.handle(&mut tx, envelope, input).await?;
        if self.records_offsets {
            record_offset(&mut tx, origin).await?;
        }
        tx.commit().await?;
        self.outbox.committed();
        tracing::info!("event applied");
        Ok("applied")
    }

    /// Lets the handler record an explicit failure state; dead-letters if it declines.
    async fn give_up(
        &self,
        message: &BorrowedMessage<'_>,
        envelope: &Envelope,
        input: &H::Input,
        reason: &str,
        attempts: u32,
        shutdown: &CancellationToken,
    ) -> bool {
        let origin = &Origin::of(message);
        let mut backoff = FIRST_BACKOFF;
        loop {
            let trace = self.trace("give up", message, envelope, origin);
            let recorded = async {
                let mut tx = self.pool.begin().await?;
                if !inbox::claim(&mut tx, envelope, origin).await? {
                    return Ok(true);
                }
                let recorded = self
                    .handler
                    .give_up(&mut tx, envelope, input, reason)
                    .await?;
                if recorded {
                    tx.commit().await?;
                    self.outbox.committed();
                }
                Ok::<bool, sqlx::Error>(recorded)
            };
            let recorded = traces::run_in(trace.as_ref(), recorded).await;
            finish_trace(
                trace.as_ref(),
                &recorded.as_ref().map(|recorded| {
                    if *recorded {
                        "failure recorded"
                    } else {
                        "dead-lettered"
                    }
                }),
            );
            match recorded {
                Ok(true) => {
                    tracing::error!(
                        event_type = %envelope.event_type,
                        order_id = %envelope.order_id,
                        reason,
                        attempts,
                        "gave up on the event; its failure is recorded"
                    );
                    self.count("gave_up");
                    return true;
                }
                Ok(false) => return self.dead_letter(message, reason, attempts, shutdown).await,
                Err(error) => {
                    tracing::warn!(%error, "recording the failure failed; retrying in {backoff:?}")
                }
            }
            tokio::select! {
                _ = shutdown.cancelled() => return false,
                _ = tokio::time::sleep(backoff) => {}
            }
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
    }

    /// The trace context to handle `message` in (see [`ServiceTracer::consume`]): a span
    /// `<name> <event type>` when exporting.
    fn trace(
        &self,
        name: &str,
        message: &BorrowedMessage<'_>,
        envelope: &Envelope,
        origin: &Origin,
    ) -> Option<Trace> {
        self.tracer.consume(
            name,
            message.headers(),
            &envelope.event_type,
            &envelope.order_id,
            || {
                vec![
                    KeyValue::new("messaging.system", "kafka"),
                    KeyValue::new("messaging.operation.type", "process"),
                    KeyValue::new("messaging.destination.name", origin.topic.clone()),
                    KeyValue::new(
                        "messaging.destination.partition.id",
                        origin.partition.to_string(),
                    ),
                    KeyValue::new("messaging.kafka.offset", origin.offset),
                    KeyValue::new("messaging.consumer.group.name", self.group_id.clone()),
                    KeyValue::new("messaging.message.id", envelope.id.to_string()),
                ]
            },
        )
    }

    fn count(&self, outcome: &'static str) {
        metrics::counter!("sagashop_events_consumed_total", "service" => self.service, "outcome" => outcome)
            .increment(1);
    }

    fn count_retry(&self, kind: &'static str) {
        metrics::counter!("sagashop_consumer_retries_total", "service" => self.service, "kind" => kind).increment(1);
    }

    /// Sends the original key, bytes and headers, plus the error and origin (`dlq.*`), to the
    /// dead-letter topic until the broker accepts it; `false` means shutdown interrupted it.
    ///
    /// A letter larger than the producer sends keeps only the start of the payload that fits
    /// (none, if the broker still refuses it; then not the original headers either), marked
    /// `dlq.truncated=true` and `dlq.original_bytes`: `dlq.topic`, `dlq.partition` and
    /// `dlq.offset` say where the original is. A dead-letter topic the broker does not know is
    /// created, then the letter is sent again.
    async fn dead_letter(
        &self,
        message: &BorrowedMessage<'_>,
        error: &str,
        attempts: u32,
        shutdown: &CancellationToken,
    ) -> bool {
        tracing::error!(
            topic = message.topic(),
            partition = message.partition(),
            offset = message.offset(),
            error,
            attempts,
            "message cannot be processed; sending it to {}",
            self.dead_letter_topic
        );
        let attempts = attempts.to_string();
        let partition = message.partition().to_string();
        let offset = message.offset().to_string();
        let origin = [
            ("dlq.error", error),
            ("dlq.topic", message.topic()),
            ("dlq.partition", partition.as_str()),
            ("dlq.offset", offset.as_str()),
            ("dlq.group", self.group_id.as_str()),
            ("dlq.attempts", attempts.as_str()),
        ];
        let payload = message.payload().unwrap_or_default();
        let key = message.key().unwrap_or_default();
        let original_headers = message.headers();
        let original_header_bytes: usize = original_headers.map_or(0, |headers| {
            headers
                .iter()
                .map(|header| header.key.len() + header.value.map_or(0, <[u8]>::len))
                .sum()
        });
        let origin_bytes: usize = origin
            .iter()
            .map(|(key, value)| key.len() + value.len())
            .sum();
        let original_bytes = payload.len().to_string();
        // The room a record needs besides its payload: key, headers, record framing.
        let overhead = |with_original_headers: bool| {
            key.len()
                + origin_bytes
                + DEAD_LETTER_FRAMING_BYTES
                + if with_original_headers {
                    original_header_bytes
                } else {
                    0
                }
        };
        let limit = self.policy.dead_letter_max_bytes;
        let mut with_original_headers = overhead(true) <= limit;
        let mut kept = if payload.len() + overhead(with_original_headers) <= limit {
            payload.len()
        } else {
            limit.saturating_sub(overhead(with_original_headers))
        };
        let mut backoff = FIRST_BACKOFF;
        loop {
            let mut headers = OwnedHeaders::new();
            if let Some(original) = original_headers.filter(|_| with_original_headers) {
                for header in original.iter() {
                    headers = headers.insert(Header {
                        key: header.key,
                        value: header.value,
                    });
                }
            }
            for (key, value) in origin {
                headers = headers.insert(Header {
                    key,
                    value: Some(value),
                });
            }
            let truncated = kept < payload.len() || !with_original_headers;
            if truncated {
                headers = headers
                    .insert(Header {
                        key: "dlq.truncated",
                        value: Some("true"),
                    })
                    .insert(Header {
                        key: "dlq.original_bytes",
                        value: Some(original_bytes.as_str()),
                    });
            }
            let mut record = FutureRecord::<[u8], [u8]>::to(&self.dead_letter_topic)
                .headers(headers)
                .payload(&payload[..kept]);
            if message.key().is_some() {
                record = record.key(key);
            }
            match self.producer.send(record, Duration::from_secs(30)).await {
                Ok(_) => {
                    if truncated {
                        tracing::error!(
                            original_bytes = payload.len(),
                            kept,
                            "the dead letter was too large; sent it truncated (the original \
                             stays at its topic, partition and offset while retained)"
                        );
                    }
                    self.count("dead_lettered");
                    count_dead_letter(self.service, message.topic());
                    return true;
                }
                Err((KafkaError::MessageProduction(code), _))
                    if too_large(code) && (kept > 0 || with_original_headers) =>
                {
                    tracing::warn!(%code, kept, "the dead letter is too large; sending less");
                    if kept > 0 {
                        kept = 0;
                    } else {
                        with_original_headers = false;
                    }
                    continue;
                }
                Err((KafkaError::MessageProduction(code), _)) if topic_missing(code) => {
                    tracing::warn!(%code, "the dead-letter topic does not exist; creating it");
                    let topic = [self.dead_letter_topic.clone()];
                    tokio::select! {
                        _ = shutdown.cancelled() => return false,
                        created = crate::kafka::ensure_topics(&self.kafka, &topic) => {
                            match created {
                                Ok(()) => continue,
                                Err(error) => tracing::warn!(
                                    error = format!("{error:#}"),
                                    "could not create the dead-letter topic; retrying"
                                ),
                            }
                        }
                    }
                }
                Err((error, _)) => tracing::warn!(%error, "dead-letter publish failed; retrying"),
            }
            tokio::select! {
                _ = shutdown.cancelled() => return false,
                _ = tokio::time::sleep(backoff) => {}
            }
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
    }
}

/// Records that the consumer reads `origin`'s partition from the offset after it on (never
/// moving back: a message sought back and applied again leaves it where it is).
async fn record_offset(conn: &mut PgConnection, origin: &Origin) -> Result<(), sqlx::Error> {
    sqlx::query(
        "insert into consumer_offsets (topic, kafka_partition, next_offset) values ($1, $2, $3)
         on conflict (topic, kafka_partition) do update
         set next_offset = greatest(consumer_offsets.next_offset, excluded.next_offset),
             updated_at = now()",
    )
    .bind(&origin.topic)
    .bind(origin.partition)
    .bind(origin.offset + 1)
    .execute(conn)
    .await?;
    Ok(())
}

/// Room left for a record's framing and header lengths when fitting a dead letter.
const DEAD_LETTER_FRAMING_BYTES: usize = 1024;

/// The producer or the broker refused a record for its size.
fn too_large(code: RDKafkaErrorCode) -> bool {
    matches!(
        code,
        RDKafkaErrorCode::MessageSizeTooLarge
            | RDKafkaErrorCode::MessageBatchTooLarge
            | RDKafkaErrorCode::InvalidMessageSize
    )
}

/// The broker does not know the topic.
fn topic_missing(code: RDKafkaErrorCode) -> bool {
    matches!(
        code,
        RDKafkaErrorCode::UnknownTopic | RDKafkaErrorCode::UnknownTopicOrPartition
    )
}

#[cfg(test)]
mod tests;
