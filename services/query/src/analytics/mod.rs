//! Real-time analytics over the event stream: event-time tumbling windows (orders placed,
//! confirmed, cancelled by reason, failed, revenue, saga duration p50/p95, units per sku) that
//! close on a watermark with an allowed lateness (docs/ANALYTICS.md). The consumer applies
//! each event in its own transaction ([`Analytics::apply`]); a worker folds the pending
//! changes and streams window updates ([`Analytics::run`]); `routes` serves them.

mod routes;
mod store;
pub mod window;

use std::sync::Arc;
use std::time::Duration;

use shared::events::Event;
use shared::service::CancellationToken;
use shared::Envelope;
use sqlx::{PgConnection, PgPool};
use tokio::sync::broadcast;

pub use routes::router;
use window::{Observation, WindowConfig};

/// `ANALYTICS_*` settings.
#[derive(Debug, Clone, clap::Args)]
pub struct AnalyticsConfig {
    /// Length of a tumbling window.
    #[arg(long, env = "ANALYTICS_WINDOW_MS", default_value_t = 60_000,
          value_parser = clap::value_parser!(i64).range(1_000..=86_400_000))]
    pub analytics_window_ms: i64,

    /// How far the watermark stays behind the latest event time seen.
    #[arg(long, env = "ANALYTICS_OUT_OF_ORDERNESS_MS", default_value_t = 5_000,
          value_parser = clap::value_parser!(i64).range(0..=3_600_000))]
    pub analytics_out_of_orderness_ms: i64,

    /// How long past its end (on the watermark) a window stays open.
    #[arg(long, env = "ANALYTICS_ALLOWED_LATENESS_MS", default_value_t = 30_000,
          value_parser = clap::value_parser!(i64).range(0..=86_400_000))]
    pub analytics_allowed_lateness_ms: i64,

    /// How often pending changes are folded and window updates streamed.
    #[arg(long, env = "ANALYTICS_TICK_MS", default_value_t = 250,
          value_parser = clap::value_parser!(u64).range(10..=60_000))]
    pub analytics_tick_ms: u64,
}

impl AnalyticsConfig {
    pub fn windows(&self) -> WindowConfig {
        WindowConfig {
            window_ms: self.analytics_window_ms,
            out_of_orderness_ms: self.analytics_out_of_orderness_ms,
            allowed_lateness_ms: self.analytics_allowed_lateness_ms,
        }
    }
}

/// The analytics of one replica: its settings and the channel its stream subscribers read.
#[derive(Clone)]
pub struct Analytics {
    pub(crate) config: WindowConfig,
    tick: Duration,
    /// Window updates as JSON, one per changed window.
    pub(crate) updates: broadcast::Sender<Arc<str>>,
}

impl Default for Analytics {
    /// The default settings.
    fn default() -> Self {
        Self::with(WindowConfig::default(), Duration::from_millis(250))
    }
}

impl Analytics {
    fn with(config: WindowConfig, tick: Duration) -> Self {
        Self {
            config,
            tick,
            updates: broadcast::channel(1_024).0,
        }
    }

    pub fn new(config: &AnalyticsConfig) -> Self {
        Self::with(
            config.windows(),
            Duration::from_millis(config.analytics_tick_ms),
        )
    }

    /// Refuses a window length other than the one the stored windows were built with (stored
    /// on first start): their starts are multiples of it.
    pub async fn check_window(&self, pool: &PgPool) -> anyhow::Result<()> {
        let configured = self.config.window_ms;
        let stored = store::stored_window_ms(pool, configured).await?;
        anyhow::ensure!(
            stored == configured,
            "ANALYTICS_WINDOW_MS is {configured} but the analytics in this database were built \
             with windows of {stored} ms: set it back to {stored} (windows of another length cannot \
             be derived from the stored ones; docs/ANALYTICS.md)"
        );
        Ok(())
    }

    /// Applies `event` to the windows in the consumer's transaction (the one holding its inbox
    /// row and its partition's recorded offset).
    pub async fn apply(
        &self,
        conn: &mut PgConnection,
        envelope: &Envelope,
        event: &Event,
    ) -> Result<(), sqlx::Error> {
        let Some(observation) = observation(event) else {
            return Ok(());
        };
        let late = store::apply(
            conn,
            &self.config,
            envelope.order_id,
            window::event_time(envelope.occurred_at),
            &observation,
        )
        .await?;
        if late {
            tracing::debug!(event_id = %envelope.id, "a late event: its window had closed");
        }
        Ok(())
    }

    /// Folds pending changes every tick and streams the windows that changed or closed, until
    /// `shutdown`.
    pub async fn run(self, pool: PgPool, shutdown: CancellationToken) {
        let mut last_revision = None;
        let mut last_watermark = None;
        loop {
            if let Err(error) = self
                .tick(&pool, &mut last_revision, &mut last_watermark)
                .await
            {
                tracing::warn!(%error, "analytics fold failed; retrying");
            }
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(self.tick) => {}
            }
        }
    }

    async fn tick(
        &self,
        pool: &PgPool,
        last_revision: &mut Option<i64>,
        last_watermark: &mut Option<Option<i64>>,
    ) -> Result<(), sqlx::Error> {
        store::fold(pool).await?;
        let watermark = self.config.watermark(store::watermark_source(pool).await?);
        let (Some(after), Some(previous)) = (*last_revision, *last_watermark) else {
            // Start from now: history is what the snapshot and the windows API are for.
            *last_revision = Some(store::revision(pool).await?);
            *last_watermark = Some(watermark);
            return Ok(());
        };
        let (starts, revision) = store::changed_since(pool, after).await?;
        *last_revision = Some(revision);
        *last_watermark = Some(watermark);
        if self.updates.receiver_count() == 0 {
            return Ok(());
        }
        // Windows that closed since the last tick, changed or not: those with
        // before < start + window + lateness <= now.
        let mut windows = store::windows_at(pool, &starts).await?;
        if let (Some(before), Some(now)) = (previous, watermark) {
            let span = self.config.window_ms + self.config.allowed_lateness_ms;
            if now > before {
                windows
                    .extend(store::windows_between(pool, before - span + 1, now - span + 1).await?);
            }
        }
        for (start, metrics) in windows {
            let view = routes::WindowView::new(&self.config, start, &metrics, watermark);
            if let Ok(json) = serde_json::to_string(&view) {
                let _ = self.updates.send(json.into());
            }
        }
        Ok(())
    }
}

/// What analytics reads from an event; `None` for an event that is no order's.
fn observation(event: &Event) -> Option<Observation> {
    Some(match event {
        Event::OrderCreated(created) => Observation::Created {
            lines: created
                .items
                .iter()
                .map(|line| (line.sku.clone(), i64::from(line.quantity)))
                .collect(),
        },
        Event::StockReserved(reserved) => Observation::Reserved {
            total_cents: reserved.total_cents,
        },
        Event::PaymentCharged(charged) => Observation::Charged {
            amount_cents: charged.amount_cents,
        },
        Event::OrderConfirmed(_) => Observation::Confirmed,
        Event::OrderCancelled(cancelled) => Observation::Cancelled {
            reason: cancelled.reason.as_str().to_owned(),
        },
        Event::StockReleased(_) | Event::PaymentRefunded(_) | Event::ShipmentCancelled(_) => {
            Observation::Compensated
        }
        Event::StockReleaseFailed(_) | Event::RefundFailed(_) => Observation::CompensationFailed,
        Event::StockRejected(_)
        | Event::PaymentDeclined(_)
        | Event::ShipmentScheduled(_)
        | Event::ShipmentRejected(_) => Observation::Other,
    })
}
