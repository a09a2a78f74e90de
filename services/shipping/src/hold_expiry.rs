//! The hold timeout: a scheduled shipment that neither `order.confirmed` nor `order.cancelled`
//! reached within `HOLD_TIMEOUT_MS` (its order was lost by the order service, or never existed)
//! is cancelled as for `order.cancelled`, with reason `hold_expired`. One transaction per
//! shipment, locked like the consumer locks it (`for update`; `skip locked` so replicas share
//! the work and a decision being applied wins); [`decide`](crate::domain::decide) checks again
//! that it is still a hold. The cancellation continues the trace the shipment was scheduled in
//! (stored with it), so it is part of the order's trace.

use std::time::Duration;

use shared::traces::{self, ServiceTracer, StoredContext};
use sqlx::PgPool;
use uuid::Uuid;

use crate::domain::{Countries, SagaEvent};
use crate::handler::apply;

/// At most this many shipments per sweep.
const BATCH: usize = 100;

/// Cancels every shipment held longer than `timeout`, each in the trace it was scheduled in
/// (`tracer` makes the worker's span there); returns how many.
pub async fn sweep(
    pool: &PgPool,
    tracer: &ServiceTracer,
    countries: &Countries,
    timeout: Duration,
) -> Result<usize, sqlx::Error> {
    let mut expired = 0;
    while expired < BATCH {
        let mut tx = pool.begin().await?;
        let held: Option<(Uuid, Option<String>, Option<String>)> = sqlx::query_as(
            "select order_id, traceparent, tracestate from shipments
             where status = 'SCHEDULED' and confirmed_at is null
               and created_at < now() - make_interval(secs => $1)
             order by created_at limit 1 for update skip locked",
        )
        .bind(timeout.as_secs_f64())
        .fetch_optional(&mut *tx)
        .await?;
        let Some((order_id, traceparent, tracestate)) = held else {
            return Ok(expired);
        };
        let cancel = async move {
            let event = SagaEvent::HoldExpired { order_id };
            apply(&mut tx, countries, order_id, &event, None).await?;
            tx.commit().await
        };
        let stored = StoredContext::from_columns(traceparent, tracestate);
        traces::continue_stored(tracer, stored.as_ref(), "hold expiry", order_id, cancel).await?;
        expired += 1;
    }
    Ok(expired)
}
