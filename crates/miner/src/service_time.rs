//! A running estimate of how long a request holds its worker slot: a high quantile of the
//! slot-hold times of the most recent finished requests.
//!
//! A quantile of a sliding window, rather than a mean, so that a backend whose answers vary
//! in length (an upstream API) is judged by its slow answers, and so that a change of speed
//! (a longer batch, a slower upstream) replaces the old samples within one window.

use std::collections::VecDeque;
use std::time::Duration;

/// The last `window` slot-hold times and their `quantile`.
#[derive(Debug, Clone)]
pub(crate) struct ServiceTimes {
    window: usize,
    quantile: f64,
    samples: VecDeque<Duration>,
    estimate: Option<Duration>,
}

impl ServiceTimes {
    /// Keeps the last `window` samples (at least 1) and estimates their `quantile`
    /// (clamped to 0..=1; 1 is the slowest sample).
    pub(crate) fn new(window: usize, quantile: f64) -> Self {
        let window = window.max(1);
        ServiceTimes {
            window,
            quantile: if quantile.is_finite() {
                quantile.clamp(0.0, 1.0)
            } else {
                1.0
            },
            samples: VecDeque::with_capacity(window),
            estimate: None,
        }
    }

    /// Adds one request's slot-hold time, forgetting the oldest beyond the window.
    pub(crate) fn record(&mut self, held: Duration) {
        if self.samples.len() == self.window {
            self.samples.pop_front();
        }
        self.samples.push_back(held);
        let mut sorted: Vec<Duration> = self.samples.iter().copied().collect();
        sorted.sort_unstable();
        // The smallest sample with at least `quantile` of the samples at or below it.
        let rank = (self.quantile * sorted.len() as f64).ceil() as usize;
        self.estimate = sorted.get(rank.clamp(1, sorted.len()) - 1).copied();
    }

    /// How many samples the estimate is taken from (at most the window).
    pub(crate) fn len(&self) -> usize {
        self.samples.len()
    }

    /// The estimate; `None` before the first sample.
    pub(crate) fn estimate(&self) -> Option<Duration> {
        self.estimate
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn no_estimate_without_samples() {
        let s = ServiceTimes::new(10, 0.9);
        assert_eq!((s.estimate(), s.len()), (None, 0));
    }

    #[test]
    fn estimates_the_quantile_of_the_window() {
        let mut s = ServiceTimes::new(10, 0.9);
        s.record(ms(500));
        assert_eq!(
            s.estimate(),
            Some(ms(500)),
            "one sample is its own quantile"
        );
        for n in 1..=9 {
            s.record(ms(n * 100));
        }
        // 100..900 and 500: the 9th of 10 sorted samples.
        assert_eq!(s.estimate(), Some(ms(800)));
        let mut median = ServiceTimes::new(4, 0.5);
        for n in [4, 1, 3, 2] {
            median.record(ms(n));
        }
        assert_eq!(median.estimate(), Some(ms(2)));
    }

    #[test]
    fn old_samples_leave_the_window() {
        let mut s = ServiceTimes::new(3, 1.0);
        s.record(ms(9000));
        for _ in 0..3 {
            s.record(ms(100));
        }
        assert_eq!(
            s.estimate(),
            Some(ms(100)),
            "the slow outlier was forgotten"
        );
        assert_eq!(s.len(), 3, "at most the window");
        s.record(ms(300));
        assert_eq!(s.estimate(), Some(ms(300)));
    }

    #[test]
    fn a_slow_minority_sets_a_high_quantile() {
        // An upstream whose answers vary: 1 in 5 takes 4 s.
        let mut s = ServiceTimes::new(50, 0.9);
        for i in 0..50 {
            s.record(if i % 5 == 0 { ms(4000) } else { ms(800) });
        }
        assert_eq!(s.estimate(), Some(ms(4000)));
        let mut low = ServiceTimes::new(50, 0.5);
        for i in 0..50 {
            low.record(if i % 5 == 0 { ms(4000) } else { ms(800) });
        }
        assert_eq!(low.estimate(), Some(ms(800)));
    }

    #[test]
    fn degenerate_settings_are_clamped() {
        let mut s = ServiceTimes::new(0, f64::NAN);
        s.record(ms(5));
        s.record(ms(7));
        assert_eq!(s.estimate(), Some(ms(7)), "a window of one, the maximum");
        let mut zero = ServiceTimes::new(4, 0.0);
        zero.record(ms(3));
        zero.record(ms(2));
        assert_eq!(
            zero.estimate(),
            Some(ms(2)),
            "quantile 0 is the fastest sample"
        );
    }
}
