//! `GET /analytics/windows?from=&to=` and `GET /analytics/stream` (server-sent events: a
//! snapshot of the last hour, then every window update).

use std::collections::BTreeMap;
use std::convert::Infallible;

use axum::extract::State;
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::routing::get;
use axum::{Json, Router};
use chrono::{DateTime, Datelike, Duration, TimeZone, Utc};
use futures::{Stream, StreamExt};
use serde::{Deserialize, Serialize};
use shared::http::{ApiError, ValidQuery};
use sqlx::PgPool;
use tokio::sync::broadcast;

use super::store;
use super::window::{DurationSummary, WindowConfig, WindowMetrics};
use super::Analytics;

/// The longest span one request may ask for.
const MAX_SPAN_DAYS: i64 = 7;

#[derive(Clone)]
struct AppState {
    pool: PgPool,
    analytics: Analytics,
}

pub fn router(pool: PgPool, analytics: Analytics) -> Router {
    Router::new()
        .route("/analytics/windows", get(windows))
        .route("/analytics/stream", get(stream))
        .with_state(AppState { pool, analytics })
}

fn rfc3339(ms: i64) -> DateTime<Utc> {
    Utc.timestamp_millis_opt(ms)
        .single()
        .unwrap_or(DateTime::<Utc>::MIN_UTC)
}

/// One window as served.
#[derive(Debug, Serialize)]
pub(crate) struct WindowView {
    start: DateTime<Utc>,
    end: DateTime<Utc>,
    /// `open`, or `closed` once the watermark passed `end` plus the allowed lateness.
    state: &'static str,
    orders_placed: i64,
    orders_confirmed: i64,
    orders_cancelled: BTreeMap<String, i64>,
    orders_failed: i64,
    revenue_cents: i64,
    saga_duration_ms: DurationSummary,
    units_by_sku: BTreeMap<String, i64>,
    events: i64,
    late_events: i64,
    watermark: Option<DateTime<Utc>>,
}

impl WindowView {
    pub(crate) fn new(
        config: &WindowConfig,
        start: i64,
        metrics: &WindowMetrics,
        watermark: Option<i64>,
    ) -> Self {
        Self {
            start: rfc3339(start),
            end: rfc3339(start + config.window_ms),
            state: if config.is_closed(start, watermark) {
                "closed"
            } else {
                "open"
            },
            orders_placed: metrics.placed,
            orders_confirmed: metrics.confirmed,
            orders_cancelled: metrics.cancelled.clone(),
            orders_failed: metrics.failed,
            revenue_cents: metrics.revenue_cents,
            saga_duration_ms: metrics.saga_duration(),
            units_by_sku: metrics.units_by_sku.clone(),
            events: metrics.events,
            late_events: metrics.late_events,
            watermark: watermark.map(rfc3339),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct WindowsQuery {
    from: Option<DateTime<Utc>>,
    to: Option<DateTime<Utc>>,
}

#[derive(Debug, Serialize)]
struct WindowsBody {
    from: DateTime<Utc>,
    to: DateTime<Utc>,
    window_ms: i64,
    out_of_orderness_ms: i64,
    allowed_lateness_ms: i64,
    /// The latest event time applied minus the out-of-orderness; `null` before any event.
    watermark: Option<DateTime<Utc>>,
    /// The windows that overlap `[from, to)` and hold any event, by start.
    windows: Vec<WindowView>,
}

/// Checks a requested span; defaults to the last hour.
fn span(
    query: &WindowsQuery,
    now: DateTime<Utc>,
) -> Result<(DateTime<Utc>, DateTime<Utc>), ApiError> {
    let to = query.to.unwrap_or(now);
    let from = query.from.unwrap_or(to - Duration::hours(1));
    for (name, at) in [("from", from), ("to", to)] {
        if !(1970..=9999).contains(&at.year()) {
            return Err(ApiError::bad_request(
                "invalid_query",
                format!("{name} must be between the years 1970 and 9999"),
            ));
        }
    }
    if from >= to {
        return Err(ApiError::bad_request(
            "invalid_query",
            "from must be before to",
        ));
    }
    if to - from > Duration::days(MAX_SPAN_DAYS) {
        return Err(ApiError::bad_request(
            "invalid_query",
            format!("from and to may be at most {MAX_SPAN_DAYS} days apart"),
        ));
    }
    Ok((from, to))
}

async fn body(
    state: &AppState,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
) -> Result<WindowsBody, sqlx::Error> {
    let config = &state.analytics.config;
    // Every window overlapping [from, to).
    let first = config.window_of(from);
    let windows = store::windows_between(&state.pool, first, to.timestamp_millis()).await?;
    let watermark = config.watermark(store::watermark_source(&state.pool).await?);
    Ok(WindowsBody {
        from,
        to,
        window_ms: config.window_ms,
        out_of_orderness_ms: config.out_of_orderness_ms,
        allowed_lateness_ms: config.allowed_lateness_ms,
        watermark: watermark.map(rfc3339),
        windows: windows
            .iter()
            .map(|(start, metrics)| WindowView::new(config, *start, metrics, watermark))
            .collect(),
    })
}

async fn windows(
    State(state): State<AppState>,
    ValidQuery(query): ValidQuery<WindowsQuery>,
) -> Result<Json<WindowsBody>, ApiError> {
    let (from, to) = span(&query, Utc::now())?;
    Ok(Json(body(&state, from, to).await?))
}

/// A `snapshot` event (the body of `/analytics/windows` for the last hour), then a `window`
/// event for every window that changes or closes, on every replica; keep-alive comments
/// between.
async fn stream(
    State(state): State<AppState>,
) -> Result<Sse<impl Stream<Item = Result<SseEvent, Infallible>>>, ApiError> {
    // Subscribed before the snapshot is read: no update falls between the two.
    let updates = state.analytics.updates.subscribe();
    let now = Utc::now();
    let snapshot = body(&state, now - Duration::hours(1), now).await?;
    let snapshot = serde_json::to_string(&snapshot).unwrap_or_default();
    let first =
        futures::stream::once(
            async move { Ok(SseEvent::default().event("snapshot").data(snapshot)) },
        );
    let updates = futures::stream::unfold(updates, |mut updates| async move {
        loop {
            match updates.recv().await {
                Ok(update) => {
                    let event = SseEvent::default().event("window").data(&*update);
                    return Some((Ok(event), updates));
                }
                // A slow reader misses updates, not the stream: later ones carry whole windows.
                Err(broadcast::error::RecvError::Lagged(_)) => continue,
                Err(broadcast::error::RecvError::Closed) => return None,
            }
        }
    });
    Ok(Sse::new(first.chain(updates)).keep_alive(KeepAlive::default()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn query(from: Option<&str>, to: Option<&str>) -> WindowsQuery {
        WindowsQuery {
            from: from.map(|f| f.parse().unwrap()),
            to: to.map(|t| t.parse().unwrap()),
        }
    }

    #[test]
    fn the_span_defaults_to_the_last_hour_and_is_checked() {
        let now: DateTime<Utc> = "2026-12-06T12:00:00Z".parse().unwrap();
        let (from, to) = span(&query(None, None), now).unwrap();
        assert_eq!((to - from, to), (Duration::hours(1), now));
        assert!(span(
            &query(Some("2026-12-06T12:00:00Z"), Some("2026-12-06T12:00:00Z")),
            now
        )
        .is_err());
        assert!(span(
            &query(Some("2026-12-01T00:00:00Z"), Some("2026-12-09T00:00:00Z")),
            now
        )
        .is_err());
        assert!(span(
            &query(Some("1900-01-01T00:00:00Z"), Some("1900-01-01T01:00:00Z")),
            now
        )
        .is_err());
        assert!(span(&query(Some("2026-12-06T13:00:00+00:00"), None), now).is_err());
        assert!(span(&query(Some("2026-12-06T11:30:00+00:00"), None), now).is_ok());
    }
}
