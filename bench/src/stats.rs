//! Percentiles, rates, time buckets and the flatness check: pure functions over samples.

use serde::Serialize;

/// The nearest-rank percentile `q` (0 to 100) of `sorted` (ascending), None if it is empty.
pub fn percentile(sorted: &[f64], q: f64) -> Option<f64> {
    if sorted.is_empty() {
        return None;
    }
    let rank = (q / 100.0 * sorted.len() as f64).ceil() as usize;
    Some(sorted[rank.clamp(1, sorted.len()) - 1])
}

/// Count, mean and percentiles of a set of samples (latencies in milliseconds).
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Summary {
    pub count: usize,
    pub mean: Option<f64>,
    pub p50: Option<f64>,
    pub p90: Option<f64>,
    pub p99: Option<f64>,
    pub max: Option<f64>,
}

impl Summary {
    pub fn of(samples: &[f64]) -> Self {
        let mut sorted: Vec<f64> = samples.iter().copied().filter(|s| s.is_finite()).collect();
        sorted.sort_by(f64::total_cmp);
        let mean = (!sorted.is_empty()).then(|| sorted.iter().sum::<f64>() / sorted.len() as f64);
        Self {
            count: sorted.len(),
            mean,
            p50: percentile(&sorted, 50.0),
            p90: percentile(&sorted, 90.0),
            p99: percentile(&sorted, 99.0),
            max: sorted.last().copied(),
        }
    }
}

/// Events per second, None when no time passed.
pub fn rate(count: u64, seconds: f64) -> Option<f64> {
    (seconds > 0.0).then(|| count as f64 / seconds)
}

/// `a / b`, None when either is missing or `b` is not positive.
pub fn ratio(a: Option<f64>, b: Option<f64>) -> Option<f64> {
    match (a, b) {
        (Some(a), Some(b)) if b > 0.0 => Some(a / b),
        _ => None,
    }
}

/// `part / whole` for counts, None for an empty whole.
pub fn per(part: i64, whole: u64) -> Option<f64> {
    (whole > 0).then(|| part as f64 / whole as f64)
}

/// The samples that started in one time bucket.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Bucket {
    /// Seconds since the start of the series.
    pub start_s: f64,
    pub count: usize,
    pub p50: Option<f64>,
    pub p99: Option<f64>,
}

/// Groups `(seconds since start, latency)` samples into buckets `width_s` wide by their start
/// time; the buckets run from 0 to the last sample with none left out (empty ones have count 0).
pub fn buckets(samples: &[(f64, f64)], width_s: f64) -> Vec<Bucket> {
    assert!(width_s > 0.0, "bucket width must be positive");
    let Some(last) = samples.iter().map(|(t, _)| *t).reduce(f64::max) else {
        return Vec::new();
    };
    let n = (last.max(0.0) / width_s).floor() as usize + 1;
    let mut groups: Vec<Vec<f64>> = vec![Vec::new(); n];
    for &(t, latency) in samples {
        let index = ((t.max(0.0) / width_s).floor() as usize).min(n - 1);
        groups[index].push(latency);
    }
    groups
        .into_iter()
        .enumerate()
        .map(|(i, group)| {
            let summary = Summary::of(&group);
            Bucket {
                start_s: i as f64 * width_s,
                count: summary.count,
                p50: summary.p50,
                p99: summary.p99,
            }
        })
        .collect()
}

/// Whether latency stayed flat over a soak: p50 of the last window vs the first.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Flatness {
    pub window_s: f64,
    pub first_p50: f64,
    pub last_p50: f64,
    /// last / first.
    pub ratio: f64,
    /// The ratio is within the tolerance of 1.
    pub flat: bool,
    pub tolerance: f64,
}

/// Compares the p50 of the samples that started in the first `window_s` seconds with those in
/// the last `window_s` seconds of the series (`(seconds since start, latency)`). The windows
/// overlap when the series is shorter than two windows.
pub fn flatness(samples: &[(f64, f64)], window_s: f64, tolerance: f64) -> Option<Flatness> {
    let end = samples.iter().map(|(t, _)| *t).reduce(f64::max)?;
    let window = |from: f64, to: f64| {
        let values: Vec<f64> = samples
            .iter()
            .filter(|(t, _)| *t >= from && *t <= to)
            .map(|(_, l)| *l)
            .collect();
        Summary::of(&values).p50
    };
    let first_p50 = window(0.0, window_s)?;
    let last_p50 = window(end - window_s, end)?;
    let ratio = ratio(Some(last_p50), Some(first_p50))?;
    Some(Flatness {
        window_s,
        first_p50,
        last_p50,
        ratio,
        flat: (ratio - 1.0).abs() <= tolerance,
        tolerance,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles() {
        let sorted: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&sorted, 50.0), Some(50.0));
        assert_eq!(percentile(&sorted, 90.0), Some(90.0));
        assert_eq!(percentile(&sorted, 99.0), Some(99.0));
        assert_eq!(percentile(&sorted, 100.0), Some(100.0));
        assert_eq!(percentile(&sorted, 0.0), Some(1.0));
        assert_eq!(percentile(&[7.0], 99.0), Some(7.0));
        assert_eq!(percentile(&[], 50.0), None);
        // Ten samples: p99 is the largest, p50 the fifth.
        let ten: Vec<f64> = (1..=10).map(f64::from).collect();
        assert_eq!(percentile(&ten, 99.0), Some(10.0));
        assert_eq!(percentile(&ten, 50.0), Some(5.0));
    }

    #[test]
    fn summary_sorts_and_ignores_non_finite_samples() {
        let summary = Summary::of(&[3.0, 1.0, f64::NAN, 2.0]);
        assert_eq!(summary.count, 3);
        assert_eq!(summary.p50, Some(2.0));
        assert_eq!(summary.max, Some(3.0));
        assert_eq!(summary.mean, Some(2.0));
        assert_eq!(Summary::of(&[]), Summary::default());
    }

    #[test]
    fn rates_and_ratios() {
        assert_eq!(rate(300, 10.0), Some(30.0));
        assert_eq!(rate(5, 0.0), None);
        assert_eq!(ratio(Some(3.0), Some(2.0)), Some(1.5));
        assert_eq!(ratio(Some(3.0), Some(0.0)), None);
        assert_eq!(ratio(None, Some(1.0)), None);
        assert_eq!(per(50, 10), Some(5.0));
        assert_eq!(per(50, 0), None);
    }

    #[test]
    fn buckets_by_start_time_with_empty_gaps() {
        let samples = [(0.0, 1.0), (9.9, 3.0), (10.0, 5.0), (35.0, 7.0)];
        let buckets = buckets(&samples, 10.0);
        assert_eq!(buckets.len(), 4);
        assert_eq!(buckets[0].count, 2);
        assert_eq!(buckets[0].p50, Some(1.0));
        assert_eq!(buckets[0].p99, Some(3.0));
        assert_eq!(buckets[1].start_s, 10.0);
        assert_eq!(buckets[1].count, 1);
        assert_eq!(buckets[2].count, 0);
        assert_eq!(buckets[2].p50, None);
        assert_eq!(buckets[3].p50, Some(7.0));
        assert!(super::buckets(&[], 10.0).is_empty());
    }

    #[test]
    fn flatness_compares_first_and_last_window() {
        let flat: Vec<(f64, f64)> = (0..600).map(|s| (f64::from(s), 100.0)).collect();
        let check = flatness(&flat, 60.0, 0.10).unwrap();
        assert!(check.flat);
        assert_eq!(check.ratio, 1.0);
        let growing: Vec<(f64, f64)> = (0..600).map(|s| (f64::from(s), f64::from(s))).collect();
        let check = flatness(&growing, 60.0, 0.10).unwrap();
        assert!(!check.flat);
        assert_eq!(check.first_p50, 30.0);
        assert_eq!(check.last_p50, 569.0);
        assert_eq!(flatness(&[], 60.0, 0.1), None);
    }
}
