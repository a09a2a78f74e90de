//! Admission control for `POST /orders`: at most `MAX_IN_FLIGHT_ORDERS` order requests are
//! served at once, and no order is taken while `MAX_PENDING_ORDERS` sagas are still `PENDING`
//! (the saga backlog, counted in the database every `PENDING_ORDERS_REFRESH_MS`, so every
//! instance sees the shared backlog). Past either bound the request is shed with 503
//! `overloaded` and `Retry-After`, instead of queueing work the sagas cannot keep up with.

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use shared::http::ApiError;
use shared::service::CancellationToken;
use sqlx::PgPool;

use crate::SERVICE;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// The bounds, and what the service knows of its backlog.
#[derive(Clone)]
pub struct Admission {
    in_flight: Arc<Semaphore>,
    pending: Arc<AtomicI64>,
    max_pending: i64,
}

impl Admission {
    pub fn new(max_in_flight: usize, max_pending: i64) -> Self {
        Self {
            in_flight: Arc::new(Semaphore::new(max_in_flight.max(1))),
            pending: Arc::new(AtomicI64::new(0)),
            max_pending: max_pending.max(1),
        }
    }

    /// A slot for one order request (held until the response), or 503 `overloaded`.
    pub fn admit(&self) -> Result<OwnedSemaphorePermit, ApiError> {
        if self.pending.load(Ordering::Relaxed) >= self.max_pending {
            metrics::counter!("sagashop_orders_shed_total", "bound" => "pending").increment(1);
            return Err(ApiError::overloaded(format!(
                "{} orders are still being processed; retry later",
                self.max_pending
            )));
        }
        let permit = self.in_flight.clone().try_acquire_owned().map_err(|_| {
            metrics::counter!("sagashop_orders_shed_total", "bound" => "in_flight").increment(1);
            ApiError::overloaded("too many order requests at once; retry later")
        })?;
        Ok(permit)
    }

    /// Counts an order just accepted into the backlog (until the next refresh recounts it).
    pub fn accepted(&self) {
        self.pending.fetch_add(1, Ordering::Relaxed);
    }

    fn set_pending(&self, pending: i64) {
        self.pending.store(pending, Ordering::Relaxed);
        metrics::gauge!("sagashop_orders_pending").set(pending as f64);
    }
}

/// Recounts the `PENDING` orders every `interval` until `shutdown`.
pub async fn watch_backlog(
    pool: PgPool,
    admission: Admission,
    interval: Duration,
    shutdown: CancellationToken,
) {
    loop {
        let counted = sqlx::query_as::<_, (i64, f64)>(
            "select count(*), coalesce(extract(epoch from now() - min(created_at))::float8, 0) \
             from orders where status = 'PENDING'",
        )
        .fetch_one(&pool)
        .await;
        match counted {
            Ok((pending, oldest_seconds)) => {
                admission.set_pending(pending);
                // Past SAGA_DEADLINE_MS (plus a sweep), a saga is stuck: the deadline did not end it.
                metrics::gauge!("sagashop_saga_oldest_pending_seconds", "service" => SERVICE)
                    .set(oldest_seconds);
            }
            Err(error) => tracing::warn!(%error, "counting pending orders failed; retrying"),
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(interval) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sheds_past_either_bound_and_admits_again_below_them() {
        let admission = Admission::new(2, 3);
        let first = admission.admit().expect("a free slot");
        let second = admission.admit().expect("a free slot");
        let shed = admission.admit().expect_err("both slots taken");
        assert_eq!((shed.status.as_u16(), &*shed.code), (503, "overloaded"));
        assert_eq!(shed.retry_after_secs, Some(1));
        drop(first);
        let third = admission.admit().expect("a slot freed");
        drop((second, third));

        admission.set_pending(2);
        admission.accepted();
        let shed = admission.admit().expect_err("the backlog is full");
        assert!(shed.message.contains("still being processed"), "{shed}");
        admission.set_pending(0);
        assert!(admission.admit().is_ok(), "the backlog drained");
    }
}
