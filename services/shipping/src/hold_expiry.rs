//! The hold timeout: a scheduled shipment that neither `order.confirmed` nor `order.cancelled`
//! reached within `HOLD_TIMEOUT_MS` (its order was lost by the order service, or never existed)
//! is cancelled as for `order.cancelled`, with reason `hold_expired`. One transaction per
//! shipment, locked like the consumer locks it (`for update`; `skip locked` so replicas share
//! the work and a decision being applied wins); [`decide`](crate::domain::decide) checks again
//! that it is still a hold.

use std::time::Duration;

use sqlx::PgPool;
use uuid::Uuid;

use crate::domain::{Countries, SagaEvent};
use crate::handler::apply;

/// At most this many shipments per sweep.
const BATCH: usize = 100;

/// Cancels every shipment held longer than `timeout`; returns how many.
pub async fn sweep(
    pool: &PgPool,
    countries: &Countries,
    timeout: Duration,
) -> Result<usize, sqlx::Error> {
    let mut expired = 0;
    while expired < BATCH {
        let mut tx = pool.begin().await?;
        let order_id: Option<Uuid> = sqlx::query_scalar(
            "select order_id from shipments
             where status = 'SCHEDULED' and confirmed_at is null
               and created_at < now() - make_interval(secs => $1)
             order by created_at limit 1 for update skip locked",
        )
        .bind(timeout.as_secs_f64())
        .fetch_optional(&mut *tx)
        .await?;
        let Some(order_id) = order_id else {
            return Ok(expired);
        };
        let event = SagaEvent::HoldExpired { order_id };
        apply(&mut tx, countries, order_id, &event, None).await?;
        tx.commit().await?;
        expired += 1;
    }
    Ok(expired)
}
