//! The hold timeout: a reservation that neither `order.confirmed` nor `order.cancelled` reached
//! within `HOLD_TIMEOUT_MS` (its order was lost by the order service, or never existed) is
//! released as for `order.cancelled`, with reason `hold_expired`. One transaction per
//! reservation, which locks what a consumer batch locks, in the same order: the reservation's
//! products first, then the reservation (`skip locked`, so replicas share the work and a
//! decision being applied wins), so the worker and a batch never deadlock;
//! [`decide`](crate::domain::decide) checks again that it is still a hold. The release
//! continues the trace the reservation was made in (stored with it), so it is part of the
//! order's trace.

use std::time::Duration;

use shared::traces::{self, ServiceTracer, StoredContext};
use shared::HandlerError;
use sqlx::PgPool;
use uuid::Uuid;

use crate::domain::SagaEvent;
use crate::handler::{apply, lock_products, release_failed};

/// At most this many reservations per sweep.
const BATCH: usize = 100;

/// Releases every reservation held longer than `timeout`, each in the trace it was made in
/// (`tracer` makes the worker's span there); returns how many.
pub async fn sweep(
    pool: &PgPool,
    tracer: &ServiceTracer,
    timeout: Duration,
) -> Result<usize, sqlx::Error> {
    let mut expired = 0;
    // Reservations another transaction held when their turn came: left to the next sweep.
    let mut skipped: Vec<Uuid> = Vec::new();
    for _ in 0..BATCH {
        let mut tx = pool.begin().await?;
        let candidate: Option<(Uuid, Option<String>, Option<String>)> = sqlx::query_as(
            "select order_id, traceparent, tracestate from reservations
             where status = 'RESERVED' and created_at < now() - make_interval(secs => $1)
               and order_id <> all($2::uuid[])
             order by created_at limit 1",
        )
        .bind(timeout.as_secs_f64())
        .bind(&skipped)
        .fetch_optional(&mut *tx)
        .await?;
        let Some((order_id, traceparent, tracestate)) = candidate else {
            return Ok(expired);
        };
        lock_products(&mut tx, &[], &[order_id]).await?;
        let still_held: Option<Uuid> = sqlx::query_scalar(
            "select order_id from reservations where order_id = $1 and status = 'RESERVED'
             for update skip locked",
        )
        .bind(order_id)
        .fetch_optional(&mut *tx)
        .await?;
        if still_held.is_none() {
            // Decided meanwhile, or being decided: nothing to release.
            skipped.push(order_id);
            continue;
        }
        let release = async move {
            let event = SagaEvent::HoldExpired { order_id };
            match apply(&mut tx, order_id, &event, None).await {
                Ok(()) => tx.commit().await,
                Err(HandlerError::Database(error)) => Err(error),
                Err(HandlerError::Failed(reason)) => {
                    // The release can never be made: recorded as for a cancelled order.
                    drop(tx);
                    let mut tx = pool.begin().await?;
                    release_failed(&mut tx, order_id, None, &reason).await?;
                    tx.commit().await
                }
            }
        };
        let stored = StoredContext::from_columns(traceparent, tracestate);
        traces::continue_stored(tracer, stored.as_ref(), "hold expiry", order_id, release).await?;
        expired += 1;
    }
    Ok(expired)
}
