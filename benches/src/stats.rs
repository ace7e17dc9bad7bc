//! Percentiles and rates over measured samples.

use std::time::Duration;

use serde::Serialize;

/// p50, p99 and max of a set of samples, in milliseconds.
#[derive(Debug, Clone, Copy, Default, Serialize, PartialEq)]
pub struct Summary {
    pub n: usize,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
    pub mean_ms: f64,
}

impl Summary {
    /// Nearest-rank percentiles; an empty set gives zeros with `n == 0`.
    pub fn of_ms(mut samples: Vec<f64>) -> Self {
        if samples.is_empty() {
            return Self::default();
        }
        samples.sort_by(|a, b| a.total_cmp(b));
        let n = samples.len();
        let rank = |p: f64| samples[((p * n as f64).ceil() as usize).clamp(1, n) - 1];
        Self {
            n,
            p50_ms: rank(0.50),
            p99_ms: rank(0.99),
            max_ms: samples[n - 1],
            mean_ms: samples.iter().sum::<f64>() / n as f64,
        }
    }

    pub fn of_durations(samples: &[Duration]) -> Self {
        Self::of_ms(samples.iter().map(|d| d.as_secs_f64() * 1e3).collect())
    }
}

/// Items per second; 0 when no time passed.
pub fn rate(items: u64, took: Duration) -> f64 {
    let s = took.as_secs_f64();
    if s > 0.0 {
        items as f64 / s
    } else {
        0.0
    }
}

/// Rounds to three decimals for reports (JSON stays readable).
pub fn r3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles() {
        let s = Summary::of_ms((1..=100).map(f64::from).collect());
        assert_eq!(s.n, 100);
        assert_eq!(s.p50_ms, 50.0);
        assert_eq!(s.p99_ms, 99.0);
        assert_eq!(s.max_ms, 100.0);
        assert_eq!(s.mean_ms, 50.5);
        let one = Summary::of_ms(vec![7.0]);
        assert_eq!((one.p50_ms, one.p99_ms, one.max_ms), (7.0, 7.0, 7.0));
        assert_eq!(Summary::of_ms(vec![]).n, 0);
    }

    #[test]
    fn rate_of_nothing_is_zero() {
        assert_eq!(rate(10, Duration::ZERO), 0.0);
        assert_eq!(rate(10, Duration::from_secs(2)), 5.0);
    }
}
