//! A running estimate of how long a request holds its worker slot: a high quantile of the
//! slot-hold times of the most recent finished requests, overall and per priority.
//!
//! A quantile of a sliding window, rather than a mean, so that a backend whose answers vary
//! in length (an upstream API) is judged by its slow answers, and so that a change of speed
//! (a longer batch, a slower upstream) replaces the old samples within one window.
//!
//! Each sample keeps its request's priority. The queue serves a waiter ahead of every lower
//! priority (and may preempt them), so their holds do not describe how fast it is served:
//! [`ServiceTimes::estimate_for`] takes the quantile over the window's samples of that
//! priority or higher only. Priorities compare as in the queue ([`f64::total_cmp`]).

use std::cmp::Reverse;
use std::collections::{BinaryHeap, VecDeque};
use std::time::Duration;

/// One finished request: how long it held its slot, and its priority.
#[derive(Debug, Clone, Copy)]
struct Sample {
    held: Duration,
    priority: f64,
}

/// The last `window` slot-hold times, with their priorities, and their `quantile`s.
#[derive(Debug, Clone)]
pub(crate) struct ServiceTimes {
    window: usize,
    quantile: f64,
    samples: VecDeque<Sample>,
    /// The estimate per priority threshold, highest threshold first: `(p, e)` when `e` is
    /// the quantile of the samples at priority `p` or higher, for each priority in the
    /// window. The last entry covers every sample (the overall estimate).
    stairs: Vec<(f64, Duration)>,
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
            stairs: Vec::new(),
        }
    }

    /// Adds the slot-hold time of one request of `priority`, forgetting the oldest sample
    /// (whatever its priority) beyond the window. Returns whether the estimate for some
    /// priority grew (a first estimate included).
    pub(crate) fn record(&mut self, held: Duration, priority: f64) -> bool {
        if self.samples.len() == self.window {
            self.samples.pop_front();
        }
        self.samples.push_back(Sample { held, priority });
        let after = self.stairs_of_the_window();
        let before = std::mem::replace(&mut self.stairs, after);
        // Both estimates are constant between the thresholds of either: comparing them at
        // every threshold compares them at every priority.
        before
            .iter()
            .chain(&self.stairs)
            .any(|&(p, _)| lookup(&self.stairs, p) > lookup(&before, p))
    }

    /// The estimate for every priority threshold in the window (see `stairs`): the samples
    /// by priority, highest first, are added one by one to a split of the durations seen so
    /// far into the `rank` fastest (a max-heap, whose top is the quantile) and the rest.
    fn stairs_of_the_window(&self) -> Vec<(f64, Duration)> {
        let mut by_priority: Vec<Sample> = self.samples.iter().copied().collect();
        by_priority.sort_unstable_by(|a, b| b.priority.total_cmp(&a.priority));
        let mut fastest: BinaryHeap<Duration> = BinaryHeap::new();
        let mut rest: BinaryHeap<Reverse<Duration>> = BinaryHeap::new();
        let mut stairs: Vec<(f64, Duration)> = Vec::new();
        for (i, sample) in by_priority.iter().enumerate() {
            if fastest.peek().is_some_and(|top| sample.held <= *top) {
                fastest.push(sample.held);
            } else {
                rest.push(Reverse(sample.held));
            }
            let rank = self.rank(i + 1);
            while fastest.len() > rank
                && let Some(held) = fastest.pop()
            {
                rest.push(Reverse(held));
            }
            while fastest.len() < rank
                && let Some(Reverse(held)) = rest.pop()
            {
                fastest.push(held);
            }
            let last_of_its_priority = by_priority
                .get(i + 1)
                .is_none_or(|next| next.priority.total_cmp(&sample.priority).is_ne());
            if last_of_its_priority && let Some(&estimate) = fastest.peek() {
                stairs.push((sample.priority, estimate));
            }
        }
        stairs
    }

    /// Of `n` sorted samples, the 1-based position of the quantile: the smallest sample
    /// with at least `quantile` of the samples at or below it.
    fn rank(&self, n: usize) -> usize {
        ((self.quantile * n as f64).ceil() as usize).clamp(1, n)
    }

    /// How many samples the estimates are taken from (at most the window).
    pub(crate) fn len(&self) -> usize {
        self.samples.len()
    }

    /// The overall estimate, of every sample whatever its priority; `None` before the
    /// first sample.
    pub(crate) fn estimate(&self) -> Option<Duration> {
        self.stairs.last().map(|&(_, estimate)| estimate)
    }

    /// The estimate for a request of `priority`: the quantile of the samples at that
    /// priority or higher; `None` when the window holds none (nothing is known of how fast
    /// such a request is served).
    pub(crate) fn estimate_for(&self, priority: f64) -> Option<Duration> {
        lookup(&self.stairs, priority)
    }
}

/// The estimate `stairs` give `priority`: that of the lowest threshold at or above it.
fn lookup(stairs: &[(f64, Duration)], priority: f64) -> Option<Duration> {
    let above = stairs.partition_point(|(threshold, _)| threshold.total_cmp(&priority).is_ge());
    above.checked_sub(1).map(|i| stairs[i].1)
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
        s.record(ms(500), 0.0);
        assert_eq!(
            s.estimate(),
            Some(ms(500)),
            "one sample is its own quantile"
        );
        for n in 1..=9 {
            s.record(ms(n * 100), 0.0);
        }
        // 100..900 and 500: the 9th of 10 sorted samples.
        assert_eq!(s.estimate(), Some(ms(800)));
        let mut median = ServiceTimes::new(4, 0.5);
        for n in [4, 1, 3, 2] {
            median.record(ms(n), 0.0);
        }
        assert_eq!(median.estimate(), Some(ms(2)));
    }

    #[test]
    fn old_samples_leave_the_window() {
        let mut s = ServiceTimes::new(3, 1.0);
        s.record(ms(9000), 0.0);
        for _ in 0..3 {
            s.record(ms(100), 0.0);
        }
        assert_eq!(
            s.estimate(),
            Some(ms(100)),
            "the slow outlier was forgotten"
        );
        assert_eq!(s.len(), 3, "at most the window");
        s.record(ms(300), 0.0);
        assert_eq!(s.estimate(), Some(ms(300)));
    }

    #[test]
    fn a_slow_minority_sets_a_high_quantile() {
        // An upstream whose answers vary: 1 in 5 takes 4 s.
        let mut s = ServiceTimes::new(50, 0.9);
        for i in 0..50 {
            s.record(if i % 5 == 0 { ms(4000) } else { ms(800) }, 0.0);
        }
        assert_eq!(s.estimate(), Some(ms(4000)));
        let mut low = ServiceTimes::new(50, 0.5);
        for i in 0..50 {
            low.record(if i % 5 == 0 { ms(4000) } else { ms(800) }, 0.0);
        }
        assert_eq!(low.estimate(), Some(ms(800)));
    }

    #[test]
    fn a_priority_is_estimated_from_its_own_and_higher_samples() {
        let mut s = ServiceTimes::new(10, 1.0);
        s.record(ms(9000), 1.0);
        s.record(ms(400), 10.0);
        s.record(ms(700), 100.0);
        s.record(ms(200), 10.0);
        assert_eq!(s.estimate(), Some(ms(9000)), "overall: every sample");
        assert_eq!(s.estimate_for(1.0), Some(ms(9000)));
        assert_eq!(
            s.estimate_for(10.0),
            Some(ms(700)),
            "the slow priority-1 hold is ignored"
        );
        assert_eq!(
            s.estimate_for(5.0),
            Some(ms(700)),
            "between priorities: those above"
        );
        assert_eq!(s.estimate_for(100.0), Some(ms(700)));
        assert_eq!(s.estimate_for(0.5), Some(ms(9000)));
        assert_eq!(s.estimate_for(101.0), None, "no sample at or above it");
        let mut median = ServiceTimes::new(10, 0.5);
        for (held, priority) in [(1, 5.0), (9, 1.0), (3, 5.0), (9, 1.0), (2, 5.0), (4, 5.0)] {
            median.record(ms(held), priority);
        }
        // 1, 2, 3, 4 at priority 5: the 2nd; all six: the 3rd.
        assert_eq!(median.estimate_for(5.0), Some(ms(2)));
        assert_eq!(median.estimate_for(1.0), Some(ms(3)));
        assert_eq!(median.estimate(), Some(ms(3)));
        assert_eq!(ServiceTimes::new(4, 0.9).estimate_for(0.0), None);
    }

    #[test]
    fn the_window_forgets_the_oldest_sample_whatever_its_priority() {
        let mut s = ServiceTimes::new(3, 1.0);
        s.record(ms(100), 10.0);
        s.record(ms(5000), 1.0);
        s.record(ms(6000), 1.0);
        assert_eq!(s.estimate_for(10.0), Some(ms(100)));
        // The priority-10 sample is the oldest overall: it goes.
        s.record(ms(4000), 1.0);
        assert_eq!(s.estimate_for(10.0), None);
        assert_eq!((s.estimate_for(1.0), s.len()), (Some(ms(6000)), 3));
        s.record(ms(300), 10.0);
        assert_eq!(s.estimate_for(10.0), Some(ms(300)));
        assert_eq!(s.estimate(), Some(ms(6000)));
    }

    #[test]
    fn record_tells_whether_some_estimate_grew() {
        let mut s = ServiceTimes::new(3, 1.0);
        assert!(s.record(ms(500), 10.0), "a first estimate");
        assert!(!s.record(ms(200), 10.0));
        assert!(
            !s.record(ms(100), 1.0),
            "priority 1 was judged by the higher samples already"
        );
        // Pushes the 500 ms sample out: every estimate shrinks or stays.
        assert!(!s.record(ms(50), 10.0));
        assert_eq!(s.estimate_for(10.0), Some(ms(200)));
        // Only priority 1's grows.
        assert!(s.record(ms(900), 1.0));
        assert_eq!(s.estimate_for(10.0), Some(ms(50)));
        assert_eq!(s.estimate_for(1.0), Some(ms(900)));
        // A fast first sample at a new priority: an estimate where there was none.
        assert!(s.record(ms(10), 20.0));
    }

    #[test]
    fn degenerate_settings_are_clamped() {
        let mut s = ServiceTimes::new(0, f64::NAN);
        s.record(ms(5), 0.0);
        s.record(ms(7), 0.0);
        assert_eq!(s.estimate(), Some(ms(7)), "a window of one, the maximum");
        let mut zero = ServiceTimes::new(4, 0.0);
        zero.record(ms(3), 0.0);
        zero.record(ms(2), 0.0);
        assert_eq!(
            zero.estimate(),
            Some(ms(2)),
            "quantile 0 is the fastest sample"
        );
    }
}
