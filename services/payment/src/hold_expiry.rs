//! The hold timeout: a charge that neither `order.confirmed` nor `order.cancelled` reached
//! within `HOLD_TIMEOUT_MS` (its order was lost by the order service, or never existed) is
//! refunded as for `order.cancelled`, with reason `hold_expired`. One transaction per charge,
//! which locks what a consumer batch locks, in the same order: the customer's account first,
//! then the payment (`skip locked`, so replicas share the work and a decision being applied
//! wins), so the worker and a batch never deadlock; [`decide`](crate::domain::decide) checks
//! again that it is still a hold. The refund continues the trace the charge was made in
//! (stored with it), so it is part of the order's trace.

use std::time::Duration;

use shared::traces::{self, ServiceTracer, StoredContext};
use shared::HandlerError;
use sqlx::PgPool;
use uuid::Uuid;

use crate::domain::SagaEvent;
use crate::handler::{apply, lock_accounts, refund_failed};

/// At most this many charges per sweep.
const BATCH: usize = 100;

/// Refunds every charge held longer than `timeout`, each in the trace it was made in (`tracer`
/// makes the worker's span there); returns how many.
pub async fn sweep(
    pool: &PgPool,
    tracer: &ServiceTracer,
    timeout: Duration,
    charged_version: u32,
) -> Result<usize, sqlx::Error> {
    let mut expired = 0;
    // Charges another transaction held when their turn came: left to the next sweep.
    let mut skipped: Vec<Uuid> = Vec::new();
    for _ in 0..BATCH {
        let mut tx = pool.begin().await?;
        let candidate: Option<(Uuid, Option<String>, Option<String>)> = sqlx::query_as(
            "select order_id, traceparent, tracestate from payments
             where status = 'CHARGED' and confirmed_at is null
               and created_at < now() - make_interval(secs => $1)
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
        lock_accounts(&mut tx, &[], &[order_id]).await?;
        let still_held: Option<Uuid> = sqlx::query_scalar(
            "select order_id from payments
             where order_id = $1 and status = 'CHARGED' and confirmed_at is null
             for update skip locked",
        )
        .bind(order_id)
        .fetch_optional(&mut *tx)
        .await?;
        if still_held.is_none() {
            // Decided meanwhile, or being decided: nothing to refund.
            skipped.push(order_id);
            continue;
        }
        let refund = async move {
            let event = SagaEvent::HoldExpired { order_id };
            match apply(&mut tx, order_id, &event, None, charged_version).await {
                Ok(()) => tx.commit().await,
                Err(HandlerError::Database(error)) => Err(error),
                Err(HandlerError::Failed(reason)) => {
                    // The refund can never be made: recorded as for a cancelled order.
                    drop(tx);
                    let mut tx = pool.begin().await?;
                    refund_failed(&mut tx, order_id, None, &reason).await?;
                    tx.commit().await
                }
            }
        };
        let stored = StoredContext::from_columns(traceparent, tracestate);
        traces::continue_stored(tracer, stored.as_ref(), "hold expiry", order_id, refund).await?;
        expired += 1;
    }
    Ok(expired)
}
