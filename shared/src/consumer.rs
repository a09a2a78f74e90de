//! The idempotent consumer loop: each event is applied in one database transaction together
//! with its inbox row (and any outbox rows it causes); the Kafka offset is stored only after
//! that transaction commits. Database failures are retried with backoff; messages that can
//! never be processed go to the service's dead-letter topic so the partition keeps flowing.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use rdkafka::message::{BorrowedMessage, Header, Headers, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::Message;
use sqlx::{PgConnection, PgPool};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::envelope::Envelope;
use crate::events;
use crate::inbox::{self, Origin};

/// Applies one event of the saga to the service's state.
pub trait EventHandler: Send + Sync + 'static {
    /// Applies `envelope` inside the caller's transaction, which already holds its inbox row.
    /// Events of types the service does not care about are ignored with `Ok(())`.
    fn handle(
        &self,
        conn: &mut PgConnection,
        envelope: &Envelope,
    ) -> impl Future<Output = Result<(), HandlerError>> + Send;

    /// Called, in a new transaction holding the event's inbox row, when `handle` kept failing
    /// with [`HandlerError::Failed`] for every attempt. A service records an explicit failure
    /// state here (e.g. a compensation that cannot succeed) and returns `true`; `false` sends
    /// the message to the dead-letter topic instead.
    fn give_up(
        &self,
        conn: &mut PgConnection,
        envelope: &Envelope,
        reason: &str,
    ) -> impl Future<Output = Result<bool, sqlx::Error>> + Send {
        let _ = (conn, envelope, reason);
        async { Ok(false) }
    }
}

/// Why an event could not be applied.
#[derive(Debug, thiserror::Error)]
pub enum HandlerError {
    /// The payload does not match its schema: retried a bounded number of times, then
    /// dead-lettered.
    #[error("payload does not match the schema of its type: {0}")]
    Malformed(#[from] serde_json::Error),
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

/// How the consumer treats messages it cannot process.
#[derive(Debug, Clone)]
pub(crate) struct ConsumerPolicy {
    /// Attempts for a message that fails for a reason other than the database.
    pub max_attempts: u32,
    /// Larger messages are not events of ours: they are dead-lettered.
    pub max_event_bytes: usize,
}

pub(crate) struct ConsumerLoop<H> {
    pub consumer: StreamConsumer,
    pub pool: PgPool,
    pub handler: Arc<H>,
    pub producer: FutureProducer,
    pub service: &'static str,
    pub group_id: String,
    pub dead_letter_topic: String,
    pub policy: ConsumerPolicy,
}

/// Why one attempt at a message failed.
enum Failure {
    /// Retried until it works (database unreachable, deadlock, ...).
    Transient(String),
    /// Cannot be an event of ours, or does not match its schema: bounded retries, then DLQ.
    Poison(String),
    /// A valid event its handler cannot apply: bounded retries, then `give_up`, else DLQ.
    Rejected(Envelope, String),
}

impl<H: EventHandler> ConsumerLoop<H> {
    pub async fn run(self, shutdown: CancellationToken) {
        loop {
            let message = tokio::select! {
                _ = shutdown.cancelled() => break,
                message = self.consumer.recv() => message,
            };
            let message = match message {
                Ok(message) => message,
                Err(error) => {
                    tracing::warn!(%error, "kafka consumer error");
                    tokio::time::sleep(Duration::from_millis(500)).await;
                    continue;
                }
            };
            if !self.process(&message, &shutdown).await {
                break;
            }
            if let Err(error) = self.consumer.store_offset_from_message(&message) {
                tracing::warn!(%error, "could not store offset");
            }
        }
        if let Err(error) = self.consumer.commit_consumer_state(CommitMode::Sync) {
            tracing::debug!(%error, "final offset commit");
        }
    }

    /// Processes one message until it is applied, recognised as a duplicate, given up on or
    /// dead-lettered; `false` means shutdown interrupted it (its offset must not be stored).
    async fn process(&self, message: &BorrowedMessage<'_>, shutdown: &CancellationToken) -> bool {
        let origin = Origin {
            topic: message.topic().to_owned(),
            partition: message.partition(),
            offset: message.offset(),
        };
        let span = tracing::info_span!(
            "consume",
            topic = %origin.topic,
            partition = origin.partition,
            offset = origin.offset,
        );
        let mut attempts = 0;
        let mut backoff = FIRST_BACKOFF;
        loop {
            let failure = match self
                .attempt(message, &origin)
                .instrument(span.clone())
                .await
            {
                Ok(outcome) => {
                    self.count(outcome);
                    return true;
                }
                Err(failure) => failure,
            };
            match failure {
                Failure::Transient(reason) => {
                    self.count_retry("transient");
                    span.in_scope(|| {
                        tracing::warn!(reason, "transient failure; retrying in {backoff:?}")
                    });
                }
                Failure::Poison(reason) | Failure::Rejected(_, reason)
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
                    return self
                        .dead_letter(message, &reason, attempts + 1, shutdown)
                        .await
                }
                Failure::Rejected(envelope, reason) => {
                    return self
                        .give_up(message, &envelope, &origin, &reason, attempts + 1, shutdown)
                        .await
                }
            }
            tokio::select! {
                _ = shutdown.cancelled() => return false,
                _ = tokio::time::sleep(backoff) => {}
            }
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
    }

    /// One attempt: checks the message is an event of ours, then applies it.
    async fn attempt(
        &self,
        message: &BorrowedMessage<'_>,
        origin: &Origin,
    ) -> Result<&'static str, Failure> {
        let bytes = message.payload().unwrap_or_default();
        if bytes.len() > self.policy.max_event_bytes {
            return Err(Failure::Poison(format!(
                "message of {} bytes is larger than the {} bytes an event may have",
                bytes.len(),
                self.policy.max_event_bytes
            )));
        }
        let envelope: Envelope = serde_json::from_slice(bytes)
            .map_err(|error| Failure::Poison(format!("not an event envelope: {error}")))?;
        match events::check_schema(&envelope.event_type, &envelope.payload) {
            None => {
                return Err(Failure::Poison(format!(
                    "unknown event type {:?}",
                    envelope.event_type
                )))
            }
            Some(Err(error)) => {
                return Err(Failure::Poison(format!(
                    "{} payload does not match its schema: {error}",
                    envelope.event_type
                )))
            }
            Some(Ok(())) => {}
        }
        let span = tracing::info_span!(
            "event",
            event_type = %envelope.event_type,
            event_id = %envelope.id,
            order_id = %envelope.order_id,
        );
        match self.apply(&envelope, origin).instrument(span).await {
            Ok(outcome) => Ok(outcome),
            Err(HandlerError::Database(error)) => Err(Failure::Transient(error.to_string())),
            Err(HandlerError::Malformed(error)) => Err(Failure::Poison(format!(
                "{} payload does not match its schema: {error}",
                envelope.event_type
            ))),
            Err(HandlerError::Failed(reason)) => Err(Failure::Rejected(envelope, reason)),
        }
    }

    async fn apply(
        &self,
        envelope: &Envelope,
        origin: &Origin,
    ) -> Result<&'static str, HandlerError> {
        let mut tx = self.pool.begin().await?;
        if !inbox::claim(&mut tx, envelope, origin).await? {
            tracing::debug!("duplicate event ignored");
            return Ok("duplicate");
        }
        self.handler.handle(&mut tx, envelope).await?;
        tx.commit().await?;
        tracing::debug!("event applied");
        Ok("applied")
    }

    /// Lets the handler record an explicit failure state; dead-letters if it declines.
    async fn give_up(
        &self,
        message: &BorrowedMessage<'_>,
        envelope: &Envelope,
        origin: &Origin,
        reason: &str,
        attempts: u32,
        shutdown: &CancellationToken,
    ) -> bool {
        let mut backoff = FIRST_BACKOFF;
        loop {
            let recorded = async {
                let mut tx = self.pool.begin().await?;
                if !inbox::claim(&mut tx, envelope, origin).await? {
                    return Ok(true);
                }
                let recorded = self.handler.give_up(&mut tx, envelope, reason).await?;
                if recorded {
                    tx.commit().await?;
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
