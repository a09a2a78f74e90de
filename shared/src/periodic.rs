//! A background sweep run every `interval` until shutdown (the services' deadline and hold
//! expiry workers): each pass returns how many rows it changed; when any, the outbox relay is
//! woken for what the pass wrote.

use std::future::Future;
use std::time::Duration;

use crate::outbox::OutboxSignal;
use crate::service::CancellationToken;

/// Runs `sweep` now and then every `interval` until `shutdown`; `what` names it in logs.
pub async fn run_every<F, Fut>(
    what: &'static str,
    interval: Duration,
    outbox: OutboxSignal,
    shutdown: CancellationToken,
    mut sweep: F,
) where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<usize, sqlx::Error>>,
{
    loop {
        match sweep().await {
            Ok(0) => {}
            Ok(count) => {
                outbox.committed();
                tracing::warn!(count, what, "sweep changed rows");
            }
            Err(error) => tracing::warn!(%error, what, "sweep failed; retrying"),
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(interval) => {}
        }
    }
}
