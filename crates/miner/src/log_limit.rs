//! Rate limits for log lines that callers can cause: at most one line per interval for each
//! kind, carrying how many events of that kind went unlogged since the line before. Every
//! event is still counted where metrics count it; the log only samples them, so a flood of
//! refused requests cannot flood the log.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// The default interval between two lines of one kind.
pub const DEFAULT_LOG_INTERVAL: Duration = Duration::from_secs(10);

/// One kind of log line, limited to one line per interval.
///
/// ```
/// use std::time::Duration;
/// use prompting_miner::log_limit::LogLimiter;
///
/// let limiter = LogLimiter::new(Duration::from_secs(3600));
/// assert_eq!(limiter.admit(), Some(0)); // the first event is logged
/// assert_eq!(limiter.admit(), None); // the next ones within the hour are counted
/// assert_eq!(limiter.admit(), None);
/// assert_eq!(limiter.suppressed(), 2);
/// ```
#[derive(Debug)]
pub struct LogLimiter {
    interval_ns: u64,
    /// When the next line may be written, nanoseconds since [`epoch`].
    next_ns: AtomicU64,
    /// Events not logged since the last line.
    suppressed: AtomicU64,
    /// Events counted since the limiter was made.
    total: AtomicU64,
}

/// The instant limiters count from.
fn epoch() -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

impl LogLimiter {
    /// A limiter allowing one line per `interval` (zero: every line).
    pub fn new(interval: Duration) -> LogLimiter {
        epoch();
        LogLimiter {
            interval_ns: u64::try_from(interval.as_nanos()).unwrap_or(u64::MAX),
            next_ns: AtomicU64::new(0),
            suppressed: AtomicU64::new(0),
            total: AtomicU64::new(0),
        }
    }

    /// Counts one event. `Some(n)` when it may be logged now, `n` being the events left
    /// unlogged since the previous line (put it in the line); `None` when it is only counted.
    pub fn admit(&self) -> Option<u64> {
        self.total.fetch_add(1, Ordering::Relaxed);
        let now = u64::try_from(epoch().elapsed().as_nanos()).unwrap_or(u64::MAX);
        let next = self.next_ns.load(Ordering::Relaxed);
        if now >= next
            && self
                .next_ns
                .compare_exchange(
                    next,
                    now.saturating_add(self.interval_ns),
                    Ordering::AcqRel,
                    Ordering::Relaxed,
                )
                .is_ok()
        {
            return Some(self.suppressed.swap(0, Ordering::AcqRel));
        }
        self.suppressed.fetch_add(1, Ordering::Relaxed);
        None
    }

    /// Events counted since the limiter was made, logged or not (for `/metrics`).
    pub fn total(&self) -> u64 {
        self.total.load(Ordering::Relaxed)
    }

    /// Events counted but not logged since the last line.
    pub fn suppressed(&self) -> u64 {
        self.suppressed.load(Ordering::Relaxed)
    }
}

impl Default for LogLimiter {
    fn default() -> Self {
        LogLimiter::new(DEFAULT_LOG_INTERVAL)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_line_per_interval_with_the_count_of_the_others() {
        let limiter = LogLimiter::new(Duration::from_millis(50));
        assert_eq!(limiter.admit(), Some(0));
        for _ in 0..100 {
            assert_eq!(limiter.admit(), None);
        }
        std::thread::sleep(Duration::from_millis(60));
        assert_eq!(limiter.admit(), Some(100));
        assert_eq!(limiter.admit(), None);
        assert_eq!(limiter.total(), 103);
    }

    #[test]
    fn a_zero_interval_logs_everything() {
        let limiter = LogLimiter::new(Duration::ZERO);
        for _ in 0..10 {
            assert_eq!(limiter.admit(), Some(0));
        }
    }
}
