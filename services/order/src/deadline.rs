//! The saga deadline: orders still `PENDING` after `SAGA_DEADLINE_MS` are cancelled with reason
//! `timeout`, which compensates whatever was done. Several replicas share the work safely
//! (`for update skip locked`).

use std::time::Duration;

use shared::outbox::OutboxSignal;
use shared::service::CancellationToken;
use shared::traces::{self, ServiceTracer};
use sqlx::PgPool;

use crate::domain::SagaEvent;
use crate::handler::advance;
use crate::repository;

const BATCH: i64 = 100;

/// Cancels overdue sagas every `interval` until `shutdown`.
pub async fn run(
    pool: PgPool,
    outbox: OutboxSignal,
    tracer: ServiceTracer,
    deadline: Duration,
    interval: Duration,
    shutdown: CancellationToken,
) {
    shared::periodic::run_every("saga-deadline", interval, outbox, shutdown, move || {
        let (pool, tracer) = (pool.clone(), tracer.clone());
        async move { sweep(&pool, &tracer, deadline).await }
    })
    .await
}

/// Cancels every overdue saga; returns how many.
pub async fn sweep(
    pool: &PgPool,
    tracer: &ServiceTracer,
    deadline: Duration,
) -> Result<usize, sqlx::Error> {
    let mut total = 0;
    loop {
        let mut tx = pool.begin().await?;
        let overdue = repository::lock_overdue(&mut tx, deadline, BATCH).await?;
        // Each cancellation continues the trace its order was placed in (when traced).
        let traces = if tracer.is_exporting() && !overdue.is_empty() {
            let ids: Vec<_> = overdue.iter().map(|order| order.order_id).collect();
            repository::trace_contexts(&mut tx, &ids).await?
        } else {
            Default::default()
        };
        for order in &overdue {
            let stored = traces.get(&order.order_id);
            let passed = advance(&mut tx, order, SagaEvent::DeadlinePassed, None);
            traces::continue_stored(tracer, stored, "saga deadline", &order.order_id, passed)
                .await?;
        }
        tx.commit().await?;
        total += overdue.len();
        if (overdue.len() as i64) < BATCH {
            return Ok(total);
        }
    }
}
