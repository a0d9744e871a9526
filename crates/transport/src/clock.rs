//! The one clock of the transports: the wall clock nonces are made from and compared with
//! (Python's `time.time_ns()`), and a monotonic clock that expiring tables count by (so a
//! wall-clock step cannot expire an entry early). The axon, the dendrite, btauth/1 and gRPC
//! all read the time through [`Clock`], so tests and replays of recorded traffic can stop it.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

/// Where the transports read the time.
pub trait Clock: Send + Sync + 'static {
    /// Nanoseconds since the Unix epoch (negative before 1970).
    fn now_ns(&self) -> i64;
    /// Nanoseconds on a clock that never goes back (Python's `time.monotonic()`).
    fn monotonic_ns(&self) -> u64;
}

/// The operating system's clocks.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_ns(&self) -> i64 {
        match SystemTime::now().duration_since(UNIX_EPOCH) {
            Ok(since) => i64::try_from(since.as_nanos()).unwrap_or(i64::MAX),
            Err(before) => i64::try_from(before.duration().as_nanos()).map_or(i64::MIN, |ns| -ns),
        }
    }

    fn monotonic_ns(&self) -> u64 {
        static START: OnceLock<Instant> = OnceLock::new();
        let elapsed = START.get_or_init(Instant::now).elapsed().as_nanos();
        u64::try_from(elapsed).unwrap_or(u64::MAX)
    }
}

/// A clock that moves only when told to: for tests and for checking recorded requests at the
/// time they were made. [`ManualClock::advance_ns`] moves both clocks together.
#[derive(Debug, Default)]
pub struct ManualClock {
    now_ns: AtomicI64,
    monotonic_ns: AtomicU64,
}

impl ManualClock {
    /// A clock reading `now_ns` on the wall clock and 0 on the monotonic one.
    pub fn new(now_ns: i64) -> ManualClock {
        ManualClock {
            now_ns: AtomicI64::new(now_ns),
            monotonic_ns: AtomicU64::new(0),
        }
    }

    /// Sets the wall clock (which may go back); the monotonic clock does not move.
    pub fn set_now_ns(&self, now_ns: i64) {
        self.now_ns.store(now_ns, Ordering::SeqCst);
    }

    /// Moves both clocks forward by `delta_ns`.
    pub fn advance_ns(&self, delta_ns: u64) {
        let wall = i64::try_from(delta_ns).unwrap_or(i64::MAX);
        let _ = self
            .now_ns
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |now| {
                Some(now.saturating_add(wall))
            });
        let _ = self
            .monotonic_ns
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |now| {
                Some(now.saturating_add(delta_ns))
            });
    }
}

impl Clock for ManualClock {
    fn now_ns(&self) -> i64 {
        self.now_ns.load(Ordering::SeqCst)
    }

    fn monotonic_ns(&self) -> u64 {
        self.monotonic_ns.load(Ordering::SeqCst)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn system_clock_reads_the_current_time() {
        let clock = SystemClock;
        // 2024-01-01 and 2100-01-01 in nanoseconds.
        assert!((1_704_067_200_000_000_000..4_102_444_800_000_000_000).contains(&clock.now_ns()));
        let first = clock.monotonic_ns();
        assert!(clock.monotonic_ns() >= first);
    }

    #[test]
    fn manual_clock_moves_only_when_told() {
        let clock = ManualClock::new(100);
        assert_eq!((clock.now_ns(), clock.monotonic_ns()), (100, 0));
        clock.advance_ns(5);
        assert_eq!((clock.now_ns(), clock.monotonic_ns()), (105, 5));
        clock.set_now_ns(-7);
        assert_eq!((clock.now_ns(), clock.monotonic_ns()), (-7, 5));
    }
}
