//! Prometheus metrics: one recorder per process, rendered by every service's `GET /metrics`.
//! Every series carries a `service` label, so services sharing a process stay apart. The
//! histograms below are rendered as Prometheus histograms (`_bucket`, `_sum`, `_count`), so
//! dashboards and alert rules can use `histogram_quantile`; any other histogram is a summary.

use std::sync::OnceLock;

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// HTTP request latency (`shared::http::observed`), in seconds.
pub const HTTP_REQUEST_DURATION: &str = "sagashop_http_request_duration_seconds";
/// From `POST /orders` to the saga's end (`outcome`: CONFIRMED, CANCELLED, FAILED), in seconds.
pub const SAGA_DURATION: &str = "sagashop_saga_duration_seconds";

/// The buckets of each histogram, in seconds.
const BUCKETS: &[(&str, &[f64])] = &[
    (
        HTTP_REQUEST_DURATION,
        &[
            0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
        ],
    ),
    (
        SAGA_DURATION,
        &[
            0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0,
        ],
    ),
];

/// Installs the process-wide recorder on first use and returns its handle.
pub fn handle() -> &'static PrometheusHandle {
    HANDLE.get_or_init(|| {
        let builder = BUCKETS
            .iter()
            .fold(PrometheusBuilder::new(), |builder, (name, buckets)| {
                builder
                    .set_buckets_for_metric(Matcher::Full((*name).to_owned()), buckets)
                    .expect("the buckets are not empty")
            });
        let recorder = builder.build_recorder();
        let handle = recorder.handle();
        if metrics::set_global_recorder(recorder).is_err() {
            tracing::warn!("another metrics recorder is installed; /metrics shows only this one's");
        }
        handle
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Rendered through a recorder of its own (the global one may belong to another test).
    #[test]
    fn the_configured_histograms_render_as_prometheus_histograms() {
        let builder = BUCKETS
            .iter()
            .fold(PrometheusBuilder::new(), |builder, (name, buckets)| {
                builder
                    .set_buckets_for_metric(Matcher::Full((*name).to_owned()), buckets)
                    .unwrap()
            });
        let recorder = builder.build_recorder();
        let handle = recorder.handle();
        metrics::with_local_recorder(&recorder, || {
            metrics::histogram!(SAGA_DURATION, "outcome" => "CONFIRMED").record(0.7);
            metrics::histogram!(HTTP_REQUEST_DURATION).record(0.02);
        });
        let text = handle.render();
        for name in [SAGA_DURATION, HTTP_REQUEST_DURATION] {
            assert!(
                text.contains(&format!("# TYPE {name} histogram")),
                "{name} is not a histogram:\n{text}"
            );
        }
        assert!(text.contains(&format!(
            "{SAGA_DURATION}_bucket{{outcome=\"CONFIRMED\",le=\"1\"}} 1"
        )));
    }
}
