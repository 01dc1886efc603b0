//! Spike detection, as pure arithmetic over bucket counts.
//!
//! A key set's baseline is an exponentially weighted mean of its failures per bucket over the [`BASELINE_HOURS`]
//! before the window (half-life [`HALF_LIFE_SECS`]; empty buckets count as zero). A spike is the window's failures
//! reaching both `min_errors` and `spike_factor` × the baseline's expectation for a window that long.

use super::input::Thresholds;

pub const BASELINE_HOURS: i64 = 6;
pub const HALF_LIFE_SECS: f64 = 3600.0;

/// Attempt results that count as failures. Caller faults and content filters are the request's doing and a context
/// upgrade is routine. Breaker skips count: once a breaker is open the upstream sees one probe per open period, so
/// without them a provider that is still down would look healthy and its alert would resolve.
pub const FAILURE_CLASSES: [&str; 6] =
    ["transient", "rate_limited", "credential", "timeout", "model_not_found", "breaker_open"];

/// Request outcomes of the overload class (a 503 `overloaded`): counted as failures of their own class.
pub const OVERLOAD_OUTCOME: &str = "shed";
pub const OVERLOAD_CLASS: &str = "overload";

/// Requests that failed with nothing served.
pub const TOTAL_FAILURE_OUTCOME: &str = "failed";

/// Why an alert opened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trigger {
    ErrorSpike,
    TotalFailure,
}

impl Trigger {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::ErrorSpike => "error_spike",
            Self::TotalFailure => "total_failure",
        }
    }
}

/// Failures per bucket expected from history. `history` holds `(age in buckets, failures)`, age 1 being the bucket
/// just before the window; buckets older than `horizon` are ignored.
pub fn baseline_per_bucket(history: &[(i64, u64)], bucket_secs: f64, horizon: i64) -> f64 {
    if horizon <= 0 {
        return 0.0;
    }
    let r = 0.5f64.powf(bucket_secs / HALF_LIFE_SECS);
    let weight = |age: i64| r.powf(age as f64);
    let numerator: f64 =
        history.iter().filter(|(age, _)| (1..=horizon).contains(age)).map(|(age, n)| weight(*age) * *n as f64).sum();
    // Σ_{k=1..horizon} r^k, empty buckets included.
    let denominator =
        if (1.0 - r).abs() < f64::EPSILON { horizon as f64 } else { r * (1.0 - weight(horizon)) / (1.0 - r) };
    if denominator <= 0.0 { 0.0 } else { numerator / denominator }
}

/// What the window shows.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct WindowFacts {
    pub failures: u64,
    pub failed_requests: u64,
    /// Buckets the window spans.
    pub buckets: u64,
    pub baseline_per_bucket: f64,
}

/// The trigger the window meets, if any (a total failure first: it is the more urgent news).
pub fn judge(t: &Thresholds, w: &WindowFacts) -> Option<Trigger> {
    if t.alert_on_total_failure && w.failed_requests > 0 {
        return Some(Trigger::TotalFailure);
    }
    let expected = w.baseline_per_bucket * w.buckets as f64;
    (w.failures >= u64::from(t.min_errors) && w.failures as f64 >= t.spike_factor * expected)
        .then_some(Trigger::ErrorSpike)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn facts(failures: u64, baseline: f64) -> WindowFacts {
        WindowFacts { failures, failed_requests: 0, buckets: 5, baseline_per_bucket: baseline }
    }

    #[test]
    fn min_errors_alone_decides_without_history() {
        let t = Thresholds::default();
        assert_eq!(judge(&t, &facts(4, 0.0)), None);
        assert_eq!(judge(&t, &facts(5, 0.0)), Some(Trigger::ErrorSpike));
    }

    #[test]
    fn a_noisy_key_set_needs_factor_times_its_baseline() {
        let t = Thresholds::default();
        // Baseline 2 per minute over a 5-minute window: 10 expected, 30 needed at factor 3.
        assert_eq!(judge(&t, &facts(29, 2.0)), None);
        assert_eq!(judge(&t, &facts(30, 2.0)), Some(Trigger::ErrorSpike));
    }

    #[test]
    fn total_failure_alerts_only_when_asked() {
        let mut t = Thresholds::default();
        let w = WindowFacts { failed_requests: 1, ..facts(0, 0.0) };
        assert_eq!(judge(&t, &w), Some(Trigger::TotalFailure));
        t.alert_on_total_failure = false;
        assert_eq!(judge(&t, &w), None);
    }

    #[test]
    fn baseline_is_the_weighted_mean_with_empty_buckets_as_zero() {
        let horizon = BASELINE_HOURS * 60;
        let steady: Vec<(i64, u64)> = (1..=horizon).map(|age| (age, 3)).collect();
        assert!((baseline_per_bucket(&steady, 60.0, horizon) - 3.0).abs() < 1e-9);
        assert_eq!(baseline_per_bucket(&[], 60.0, horizon), 0.0);
        // Recent failures weigh more than old ones.
        let recent = baseline_per_bucket(&[(1, 60)], 60.0, horizon);
        let old = baseline_per_bucket(&[(300, 60)], 60.0, horizon);
        assert!(recent > old && old > 0.0, "{recent} {old}");
        // Outside the horizon: ignored.
        assert_eq!(baseline_per_bucket(&[(horizon + 1, 60)], 60.0, horizon), 0.0);
    }
}
