//! The one nonce source of the transports: nanosecond wall-clock timestamps (Python's
//! `time.time_ns()`), strictly increasing for one source.
//!
//! Both protocols that sign requests use it: the legacy dendrite (an axon keeps the last nonce
//! per `hotkey:uuid` and refuses one that is not greater, and a first nonce older than about
//! `timeout` + 4 s), btauth/1 (a verifier refuses a `(hotkey, nonce)` pair it has seen, and
//! nonces outside its freshness window), and the axon's own response nonces. Two nonces taken
//! in the same nanosecond, or after the system clock stepped back, would collide; this source
//! never repeats or goes back: each nonce is `max(now, previous + 1)`.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::clock::{Clock, SystemClock};

/// Strictly increasing nanosecond nonces, shareable between tasks.
///
/// ```
/// use std::sync::Arc;
/// use prompting_transport::clock::ManualClock;
/// use prompting_transport::nonce::NonceSource;
///
/// let stopped = NonceSource::with_clock(Arc::new(ManualClock::new(1_795_303_292_740_406_005)));
/// assert_eq!(stopped.next(), 1_795_303_292_740_406_005);
/// assert_eq!(stopped.next(), 1_795_303_292_740_406_006);
/// ```
pub struct NonceSource {
    clock: Arc<dyn Clock>,
    last: AtomicU64,
}

impl NonceSource {
    /// Nonces from the system clock.
    pub fn new() -> NonceSource {
        NonceSource::with_clock(Arc::new(SystemClock))
    }

    /// Nonces from `clock` (tests and replays). A wall clock before 1970 reads as 0.
    pub fn with_clock(clock: Arc<dyn Clock>) -> NonceSource {
        NonceSource {
            clock,
            last: AtomicU64::new(0),
        }
    }

    /// The next nonce: the clock's time, or one more than the previous nonce if the clock
    /// has not moved past it.
    pub fn next(&self) -> u64 {
        let now = u64::try_from(self.clock.now_ns()).unwrap_or(0);
        let mut previous = self.last.load(Ordering::Relaxed);
        loop {
            let candidate = now.max(previous.saturating_add(1));
            match self.last.compare_exchange_weak(
                previous,
                candidate,
                Ordering::AcqRel,
                Ordering::Relaxed,
            ) {
                Ok(_) => return candidate,
                Err(actual) => previous = actual,
            }
        }
    }
}

impl Default for NonceSource {
    fn default() -> Self {
        NonceSource::new()
    }
}

impl fmt::Debug for NonceSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NonceSource")
            .field("last", &self.last.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::ManualClock;
    use std::collections::HashSet;

    #[test]
    fn system_nonces_are_nanosecond_timestamps() {
        let nonce = NonceSource::new().next();
        // After 2023-11 and before 2100, in nanoseconds: what an axon's window expects.
        assert!(nonce > 1_700_000_000_000_000_000, "{nonce}");
        assert!(nonce < 4_102_444_800_000_000_000, "{nonce}");
    }

    #[test]
    fn nonces_increase_when_the_clock_stalls_or_steps_back() {
        let clock = Arc::new(ManualClock::new(1_000));
        let source = NonceSource::with_clock(clock.clone());
        assert_eq!(source.next(), 1_000);
        assert_eq!(source.next(), 1_001);
        clock.set_now_ns(500);
        assert_eq!(source.next(), 1_002);
        clock.set_now_ns(5_000);
        assert_eq!(source.next(), 5_000);
        clock.set_now_ns(-5);
        assert_eq!(source.next(), 5_001);
    }

    #[test]
    fn concurrent_nonces_are_unique() {
        let source = Arc::new(NonceSource::with_clock(Arc::new(ManualClock::new(7))));
        let handles: Vec<_> = (0..4)
            .map(|_| {
                let source = Arc::clone(&source);
                std::thread::spawn(move || (0..1_000).map(|_| source.next()).collect::<Vec<_>>())
            })
            .collect();
        let mut all = HashSet::new();
        for handle in handles {
            for nonce in handle.join().expect("thread") {
                assert!(all.insert(nonce), "duplicate nonce {nonce}");
            }
        }
        assert_eq!(all.len(), 4_000);
        assert!(all.contains(&7));
    }

    #[test]
    fn system_nonces_strictly_increase() {
        let source = NonceSource::new();
        let mut previous = source.next();
        for _ in 0..10_000 {
            let nonce = source.next();
            assert!(nonce > previous);
            previous = nonce;
        }
    }
}
