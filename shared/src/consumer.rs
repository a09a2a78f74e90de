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
}

/// Why an event could not be applied.
#[derive(Debug, thiserror::Error)]
pub enum HandlerError {
    /// The payload does not match its schema: retrying cannot help, it is dead-lettered.
    #[error("payload does not match the schema of its type: {0}")]
    Malformed(#[from] serde_json::Error),
    /// The database failed: transient, retried with backoff.
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
}

const MAX_BACKOFF: Duration = Duration::from_secs(10);

pub(crate) struct ConsumerLoop<H> {
    pub consumer: StreamConsumer,
    pub pool: PgPool,
    pub handler: Arc<H>,
    pub producer: FutureProducer,
    pub group_id: String,
    pub dead_letter_topic: String,
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

    /// Processes one message; `false` means shutdown interrupted it (offset not stored).
    async fn process(&self, message: &BorrowedMessage<'_>, shutdown: &CancellationToken) -> bool {
        let origin = Origin {
            topic: message.topic().to_owned(),
            partition: message.partition(),
            offset: message.offset(),
        };
        let envelope = match message.payload().map(serde_json::from_slice::<Envelope>) {
            Some(Ok(envelope)) => envelope,
            Some(Err(error)) => {
                return self
                    .dead_letter(
                        message,
                        &format!("not an event envelope: {error}"),
                        shutdown,
                    )
                    .await;
            }
            None => return self.dead_letter(message, "empty message", shutdown).await,
        };
        let span = tracing::info_span!(
            "consume",
            event_type = %envelope.event_type,
            event_id = %envelope.id,
            order_id = %envelope.order_id,
        );
        let mut backoff = Duration::from_millis(100);
        loop {
            match self
                .apply(&envelope, &origin)
                .instrument(span.clone())
                .await
            {
                Ok(()) => return true,
                Err(HandlerError::Malformed(error)) => {
                    let reason = format!("{}: {error}", envelope.event_type);
                    return self.dead_letter(message, &reason, shutdown).await;
                }
                Err(HandlerError::Database(error)) => {
                    span.in_scope(
                        || tracing::warn!(%error, "transient failure; retrying in {backoff:?}"),
                    );
                    tokio::select! {
                        _ = shutdown.cancelled() => return false,
                        _ = tokio::time::sleep(backoff) => {}
                    }
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                }
            }
        }
    }

    async fn apply(&self, envelope: &Envelope, origin: &Origin) -> Result<(), HandlerError> {
        let mut tx = self.pool.begin().await?;
        if !inbox::claim(&mut tx, envelope, origin).await? {
            tracing::debug!("duplicate event ignored");
            return Ok(());
        }
        self.handler.handle(&mut tx, envelope).await?;
        tx.commit().await?;
        tracing::debug!("event applied");
        Ok(())
    }

    /// Sends the original bytes and headers, plus the error and origin, to the dead-letter
    /// topic; retries until the broker accepts it. `false` means shutdown interrupted it.
    async fn dead_letter(
        &self,
        message: &BorrowedMessage<'_>,
        error: &str,
        shutdown: &CancellationToken,
    ) -> bool {
        tracing::error!(
            topic = message.topic(),
            partition = message.partition(),
            offset = message.offset(),
            error,
            "message cannot be processed; sending it to {}",
            self.dead_letter_topic
        );
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
                Ok(_) => return true,
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
