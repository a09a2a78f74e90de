//! The hold timeout: a reservation that neither `order.confirmed` nor `order.cancelled` reached
//! within `HOLD_TIMEOUT_MS` (its order was lost by the order service, or never existed) is
//! released as for `order.cancelled`, with reason `hold_expired`. One transaction per reservation,
//! locked like the consumer locks it (`for update`; `skip locked` so replicas share the work
//! and a decision being applied wins); [`decide`](crate::domain::decide) checks again that it
//! is still a hold.

use std::time::Duration;

use shared::HandlerError;
use sqlx::PgPool;
use uuid::Uuid;

use crate::domain::SagaEvent;
use crate::handler::{apply, release_failed};

/// At most this many reservations per sweep.
const BATCH: usize = 100;

/// Releases every reservation held longer than `timeout`; returns how many.
pub async fn sweep(pool: &PgPool, timeout: Duration) -> Result<usize, sqlx::Error> {
    let mut expired = 0;
    while expired < BATCH {
        let mut tx = pool.begin().await?;
        let order_id: Option<Uuid> = sqlx::query_scalar(
            "select order_id from reservations
             where status = 'RESERVED' and created_at < now() - make_interval(secs => $1)
             order by created_at limit 1 for update skip locked",
        )
        .bind(timeout.as_secs_f64())
        .fetch_optional(&mut *tx)
        .await?;
        let Some(order_id) = order_id else {
            return Ok(expired);
        };
        let event = SagaEvent::HoldExpired { order_id };
        match apply(&mut tx, order_id, &event, None).await {
            Ok(()) => tx.commit().await?,
            Err(HandlerError::Database(error)) => return Err(error),
            Err(HandlerError::Failed(reason)) => {
                // The release can never be made: recorded as for a cancelled order.
                drop(tx);
                let mut tx = pool.begin().await?;
                release_failed(&mut tx, order_id, None, &reason).await?;
                tx.commit().await?;
            }
        }
        expired += 1;
    }
    Ok(expired)
}
