//! The saga deadline: orders still `PENDING` after `SAGA_DEADLINE_MS` are cancelled with reason
//! `timeout`, which compensates whatever was done. Several replicas share the work safely
//! (`for update skip locked`).

use std::time::Duration;

use shared::outbox::OutboxSignal;
use shared::service::CancellationToken;
use sqlx::PgPool;

use crate::domain::SagaEvent;
use crate::handler::advance;
use crate::repository;

const BATCH: i64 = 100;

/// Cancels overdue sagas every `interval` until `shutdown`.
pub async fn run(
    pool: PgPool,
    outbox: OutboxSignal,
    deadline: Duration,
    interval: Duration,
    shutdown: CancellationToken,
) {
    shared::periodic::run_every("saga-deadline", interval, outbox, shutdown, move || {
        let pool = pool.clone();
        async move { sweep(&pool, deadline).await }
    })
    .await
}

/// Cancels every overdue saga; returns how many.
pub async fn sweep(pool: &PgPool, deadline: Duration) -> Result<usize, sqlx::Error> {
    let mut total = 0;
    loop {
        let mut tx = pool.begin().await?;
        let overdue = repository::lock_overdue(&mut tx, deadline, BATCH).await?;
        for order in &overdue {
            advance(&mut tx, order, SagaEvent::DeadlinePassed, None).await?;
        }
        tx.commit().await?;
        total += overdue.len();
        if (overdue.len() as i64) < BATCH {
            return Ok(total);
        }
    }
}
