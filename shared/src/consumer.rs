//! The idempotent consumer loop. Messages are taken in batches of whatever the client has
//! already fetched (never waiting to fill one), and each partition's part of a batch is
//! applied in one database transaction (several partitions at a time, each on its own
//! connection): every handled event's inbox row, its effects and the outbox rows it causes
//! commit together, and the Kafka offsets are stored only after that commit. Event types the
//! service does not handle need no transaction at all. Each message is decoded once, here, into
//! the typed [`Event`] (older versions upcast, unknown fields ignored); the handler picks what
//! it acts on with an exhaustive `match`.
//!
//! A batch stops at its first message that cannot be applied (not an event of ours, a handler
//! failure, a database error): the transaction is rolled back, the messages before it are
//! applied again as a batch of their own, and the failing message goes through the one-message
//! path, which retries database failures with backoff until they pass, retries other failures
//! a bounded number of times and then gives up explicitly or dead-letters the message, so the
//! partition keeps flowing. Its neighbours are never lost, reordered or half-applied. A
//! database failure holds the loop for about two seconds at most: then the partition is sought
//! back to the message (what follows it in the batch is left unstored) and the loop polls
//! again, serving rebalances and the other partitions; the message is retried, with its
//! backoff, when it is fetched again.

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use rdkafka::consumer::Consumer;
use rdkafka::message::{BorrowedMessage, Header, Headers, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{Message, Offset};
use sqlx::{PgConnection, PgPool};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::envelope::Envelope;
use crate::events::{DecodeError, Event};
use crate::inbox::{self, Origin};
use crate::kafka::GroupConsumer;
use crate::outbox::OutboxSignal;

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

/// A constraint violation or data exception (SQLSTATE classes 22 and 23) will fail the same
/// way every time: it is `Failed`, not retried forever. Everything else (connections lost,
/// timeouts, deadlocks, serialization failures) is transient.
impl From<sqlx::Error> for HandlerError {
    fn from(error: sqlx::Error) -> Self {
        let code = error
            .as_database_error()
            .and_then(|database| database.code());
        match code {
            Some(code) if code.starts_with("22") || code.starts_with("23") => {
                Self::Failed(format!("the database refused the change: {error}"))
            }
            _ => Self::Database(error),
        }
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

/// How the consumer treats messages it cannot process.
#[derive(Debug, Clone)]
pub(crate) struct ConsumerPolicy {
    /// Attempts for a message that fails for a reason other than the database.
    pub max_attempts: u32,
    /// Larger messages are not events of ours: they are dead-lettered.
    pub max_event_bytes: usize,
    /// Most messages taken at once (applied in one transaction per partition).
    pub batch_size: usize,
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
    pub group_id: String,
    pub dead_letter_topic: String,
    pub policy: ConsumerPolicy,
    /// Messages handed back to the broker while they fail transiently, by (topic, partition).
    pub deferred: Mutex<HashMap<(String, i32), Deferral>>,
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

fn event_span(envelope: &Envelope, origin: &Origin) -> tracing::Span {
    tracing::info_span!(
        "event",
        event_type = %envelope.event_type,
        event_id = %envelope.id,
        order_id = %envelope.order_id,
        partition = origin.partition,
        offset = origin.offset,
    )
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
        loop {
            let batch = tokio::select! {
                _ = shutdown.cancelled() => break,
                batch = batches.next() => batch,
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
        let mut rest = messages;
        let mut take = rest.len();
        // A message handed back earlier goes straight to the one-message path (its backoff).
        let mut handed_back = rest.first().is_some_and(|first| self.is_deferred(first));
        while !rest.is_empty() {
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
        true
    }

    /// Applies every message of `messages` in one transaction and returns each one's outcome,
    /// or, when one of them cannot be applied, rolls everything back and returns its index.
    async fn apply_batch(
        &self,
        messages: &[&BorrowedMessage<'_>],
    ) -> Result<Vec<&'static str>, usize> {
        let mut tx: Option<sqlx::Transaction<'static, sqlx::Postgres>> = None;
        let mut outcomes = Vec::with_capacity(messages.len());
        for (index, message) in messages.iter().enumerate() {
            let stopped = |reason: &dyn std::fmt::Display| {
                tracing::debug!(index, %reason, "batch stopped; applying the messages before it");
                index
            };
            let (envelope, event) = self.check(message).map_err(|reason| stopped(&reason))?;
            let Some(input) = self.handler.select(event) else {
                outcomes.push("ignored");
                continue;
            };
            let conn = match &mut tx {
                Some(tx) => tx,
                None => tx.insert(self.pool.begin().await.map_err(|error| stopped(&error))?),
            };
            let origin = Origin::of(message);
            let span = event_span(&envelope, &origin);
            let outcome = async {
                if !inbox::claim(conn, &envelope, &origin).await? {
                    tracing::debug!("duplicate event ignored");
                    return Ok("duplicate");
                }
                self.handler.handle(conn, &envelope, &input).await?;
                Ok::<_, HandlerError>("applied")
            }
            .instrument(span)
            .await
            .map_err(|error| stopped(&error))?;
            outcomes.push(outcome);
        }
        if let Some(tx) = tx {
            // A failed commit: the first message takes the one-message path, which retries.
            tx.commit().await.map_err(|error| {
                tracing::debug!(%error, "batch commit failed");
                0usize
            })?;
            self.outbox.committed();
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
        match self
            .apply(&envelope, &input, origin)
            .instrument(event_span(&envelope, origin))
            .await
        {
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
        self.handler.handle(&mut tx, envelope, input).await?;
        tx.commit().await?;
        self.outbox.committed();
        tracing::debug!("event applied");
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
            match recorded.await {
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

    fn count(&self, outcome: &'static str) {
        metrics::counter!("sagashop_events_consumed_total", "service" => self.service, "outcome" => outcome)
            .increment(1);
    }

    fn count_retry(&self, kind: &'static str) {
        metrics::counter!("sagashop_consumer_retries_total", "service" => self.service, "kind" => kind).increment(1);
    }

    /// Sends the original bytes and headers, plus the error and origin, to the dead-letter
    /// topic; retries until the broker accepts it. `false` means shutdown interrupted it.
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
        let mut headers = OwnedHeaders::new();
        if let Some(original) = message.headers() {
            for header in original.iter() {
                headers = headers.insert(Header {
                    key: header.key,
                    value: header.value,
                });
            }
        }
        let headers = headers
            .insert(Header {
                key: "dlq.error",
                value: Some(error),
            })
            .insert(Header {
                key: "dlq.topic",
                value: Some(message.topic()),
            })
            .insert(Header {
                key: "dlq.partition",
                value: Some(partition.as_str()),
            })
            .insert(Header {
                key: "dlq.offset",
                value: Some(offset.as_str()),
            })
            .insert(Header {
                key: "dlq.group",
                value: Some(self.group_id.as_str()),
            })
            .insert(Header {
                key: "dlq.attempts",
                value: Some(attempts.as_str()),
            });
        let mut backoff = Duration::from_millis(100);
        loop {
            let mut record =
                FutureRecord::<[u8], [u8]>::to(&self.dead_letter_topic).headers(headers.clone());
            if let Some(key) = message.key() {
                record = record.key(key);
            }
            if let Some(payload) = message.payload() {
                record = record.payload(payload);
            }
            match self.producer.send(record, Duration::from_secs(30)).await {
                Ok(_) => {
                    self.count("dead_lettered");
                    return true;
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

#[cfg(test)]
mod tests;
