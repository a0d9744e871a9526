//! Per-hotkey timestamps of accepted requests: they drive the rate limit (blacklist step 6)
//! and the priority's quiet period.
//!
//! Bounded: at most `len_request_timestamps` timestamps per hotkey and `max_tracked_hotkeys`
//! hotkeys (the least recently seen is forgotten first); a hotkey idle for longer than the
//! retention is forgotten.

use std::collections::{HashMap, VecDeque};
use std::time::Duration;

use tokio::time::Instant;

/// How many requests back the priority's quiet period reaches (Python: `timestamps[-10]`).
pub const PRIORITY_LOOKBACK: usize = 10;

/// Recent accepted requests, by hotkey.
#[derive(Debug)]
pub struct RequestHistory {
    keep: usize,
    max_hotkeys: usize,
    retention: Duration,
    hotkeys: HashMap<String, VecDeque<Instant>>,
}

impl RequestHistory {
    /// Keeps `keep` timestamps for each of at most `max_hotkeys` hotkeys, forgetting a hotkey
    /// `retention` after its last request. `keep` and `max_hotkeys` are at least 1.
    pub fn new(keep: usize, max_hotkeys: usize, retention: Duration) -> Self {
        RequestHistory {
            keep: keep.max(1),
            max_hotkeys: max_hotkeys.max(1),
            retention,
            hotkeys: HashMap::new(),
        }
    }

    /// Number of hotkeys currently tracked.
    pub fn tracked_hotkeys(&self) -> usize {
        self.hotkeys.len()
    }

    fn expired(&self, timestamps: &VecDeque<Instant>, now: Instant) -> bool {
        timestamps
            .back()
            .is_none_or(|last| now.saturating_duration_since(*last) > self.retention)
    }

    fn live(&self, hotkey: &str, now: Instant) -> Option<&VecDeque<Instant>> {
        self.hotkeys
            .get(hotkey)
            .filter(|timestamps| !self.expired(timestamps, now))
    }

    /// Whether `hotkey` already made `keep` accepted requests within the last `window`
    /// (so one more would exceed the limit). A zero window disables the limit.
    pub fn exceeds_rate(&self, hotkey: &str, now: Instant, window: Duration) -> bool {
        if window.is_zero() {
            return false;
        }
        match self.live(hotkey, now) {
            Some(timestamps) if timestamps.len() >= self.keep => timestamps
                .front()
                .is_some_and(|oldest| now.saturating_duration_since(*oldest) < window),
            _ => false,
        }
    }

    /// Time since the hotkey's [`PRIORITY_LOOKBACK`]th most recent request, or since its
    /// oldest known one when fewer are known; `None` when nothing is known of it.
    pub fn quiet_period(&self, hotkey: &str, now: Instant) -> Option<Duration> {
        let timestamps = self.live(hotkey, now)?;
        let index = timestamps.len().saturating_sub(PRIORITY_LOOKBACK);
        timestamps
            .get(index)
            .map(|t| now.saturating_duration_since(*t))
    }

    /// Records an accepted request of `hotkey` at `now`.
    pub fn record(&mut self, hotkey: &str, now: Instant) {
        if !self.hotkeys.contains_key(hotkey) && self.hotkeys.len() >= self.max_hotkeys {
            self.make_room(now);
        }
        let stale = self
            .hotkeys
            .get(hotkey)
            .is_some_and(|timestamps| self.expired(timestamps, now));
        let timestamps = self.hotkeys.entry(hotkey.to_string()).or_default();
        if stale {
            timestamps.clear();
        }
        timestamps.push_back(now);
        while timestamps.len() > self.keep {
            timestamps.pop_front();
        }
    }

    /// Forgets expired hotkeys, then the least recently seen one if still full. O(tracked
    /// hotkeys), only when a new hotkey arrives at a full table.
    fn make_room(&mut self, now: Instant) {
        let retention = self.retention;
        self.hotkeys.retain(|_, timestamps| {
            timestamps
                .back()
                .is_some_and(|last| now.saturating_duration_since(*last) <= retention)
        });
        if self.hotkeys.len() < self.max_hotkeys {
            return;
        }
        let least_recent = self
            .hotkeys
            .iter()
            .min_by_key(|(_, timestamps)| timestamps.back().copied())
            .map(|(hotkey, _)| hotkey.clone());
        if let Some(hotkey) = least_recent {
            self.hotkeys.remove(&hotkey);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINUTE: Duration = Duration::from_secs(60);

    #[test]
    fn rate_limit_allows_keep_requests_per_window() {
        let mut h = RequestHistory::new(3, 10, 60 * MINUTE);
        let t0 = Instant::now();
        let window = 5 * MINUTE;
        for i in 0..3 {
            assert!(!h.exceeds_rate("a", t0 + i * MINUTE, window));
            h.record("a", t0 + i * MINUTE);
        }
        // Three requests at 0, 1, 2 minutes: a fourth before minute 5 exceeds the limit.
        assert!(h.exceeds_rate("a", t0 + 3 * MINUTE, window));
        assert!(h.exceeds_rate("a", t0 + window - Duration::from_millis(1), window));
        assert!(!h.exceeds_rate("b", t0 + 3 * MINUTE, window));
        // Once the oldest leaves the window, one more is allowed.
        assert!(!h.exceeds_rate("a", t0 + window, window));
        h.record("a", t0 + window);
        assert!(h.exceeds_rate("a", t0 + window + MINUTE / 2, window));
        // A zero window disables the limit.
        assert!(!h.exceeds_rate("a", t0 + window, Duration::ZERO));
    }

    #[test]
    fn quiet_period_reaches_back_ten_requests() {
        let mut h = RequestHistory::new(50, 10, 600 * MINUTE);
        let t0 = Instant::now();
        assert_eq!(h.quiet_period("a", t0), None);
        for i in 0..12 {
            h.record("a", t0 + i * MINUTE);
        }
        // Requests at minutes 0..=11: the 10th most recent is at minute 2.
        assert_eq!(h.quiet_period("a", t0 + 20 * MINUTE), Some(18 * MINUTE));
        let mut h = RequestHistory::new(50, 10, 600 * MINUTE);
        h.record("b", t0);
        h.record("b", t0 + MINUTE);
        // Fewer than ten known: measured from the oldest known.
        assert_eq!(h.quiet_period("b", t0 + 4 * MINUTE), Some(4 * MINUTE));
    }

    #[test]
    fn timestamps_per_hotkey_are_bounded() {
        let mut h = RequestHistory::new(2, 10, 600 * MINUTE);
        let t0 = Instant::now();
        for i in 0..5 {
            h.record("a", t0 + i * MINUTE);
        }
        // Only minutes 3 and 4 are kept.
        assert_eq!(h.quiet_period("a", t0 + 10 * MINUTE), Some(7 * MINUTE));
    }

    #[test]
    fn hotkeys_are_bounded_least_recent_evicted() {
        let mut h = RequestHistory::new(5, 2, 600 * MINUTE);
        let t0 = Instant::now();
        h.record("a", t0);
        h.record("b", t0 + MINUTE);
        h.record("a", t0 + 2 * MINUTE);
        h.record("c", t0 + 3 * MINUTE);
        assert_eq!(h.tracked_hotkeys(), 2);
        assert!(h.quiet_period("b", t0 + 4 * MINUTE).is_none());
        assert!(h.quiet_period("a", t0 + 4 * MINUTE).is_some());
        assert!(h.quiet_period("c", t0 + 4 * MINUTE).is_some());
    }

    #[test]
    fn idle_hotkeys_expire() {
        let mut h = RequestHistory::new(1, 2, 10 * MINUTE);
        let t0 = Instant::now();
        h.record("a", t0);
        h.record("b", t0 + 5 * MINUTE);
        let later = t0 + 11 * MINUTE;
        assert!(h.quiet_period("a", later).is_none());
        assert!(!h.exceeds_rate("a", later, 60 * MINUTE));
        assert!(h.exceeds_rate("b", later, 60 * MINUTE));
        // A new hotkey at a full table drops the expired one, not the live one.
        h.record("c", later);
        assert_eq!(h.tracked_hotkeys(), 2);
        assert!(h.quiet_period("b", later).is_some());
        // An expired hotkey that comes back starts afresh.
        h.record("b", t0 + 30 * MINUTE);
        assert_eq!(
            h.quiet_period("b", t0 + 31 * MINUTE),
            Some(MINUTE),
            "old timestamps were dropped"
        );
    }
}
