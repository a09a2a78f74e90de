//! The inbox: one row per processed event id, written in the same transaction as the effect,
//! so a re-delivered event is recognised and changes nothing.

use sqlx::PgConnection;

use crate::envelope::Envelope;

/// Where a message was read from.
#[derive(Debug, Clone)]
pub(crate) struct Origin {
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
}

impl Origin {
    pub fn of(message: &rdkafka::message::BorrowedMessage<'_>) -> Self {
        use rdkafka::Message;
        Self {
            topic: message.topic().to_owned(),
            partition: message.partition(),
            offset: message.offset(),
        }
    }
}

/// Records `envelope` as processed; `false` means it was processed before.
pub(crate) async fn claim(
    conn: &mut PgConnection,
    envelope: &Envelope,
    origin: &Origin,
) -> Result<bool, sqlx::Error> {
    let inserted = sqlx::query(
        "insert into inbox (event_id, event_type, topic, kafka_partition, kafka_offset)
         values ($1, $2, $3, $4, $5)
         on conflict (event_id) do nothing",
    )
    .bind(envelope.id)
    .bind(&envelope.event_type)
    .bind(&origin.topic)
    .bind(origin.partition)
    .bind(origin.offset)
    .execute(conn)
    .await?
    .rows_affected();
    Ok(inserted == 1)
}
