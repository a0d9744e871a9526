//! Request nonces: nanosecond wall-clock timestamps (Python's `time.time_ns()`), strictly
//! increasing for one dendrite.
//!
//! An axon (bittensor ≥ 7.2 rules, which apply because the dendrite version is ≥ 7002000)
//! keeps the last nonce per `hotkey:uuid` and refuses a request whose nonce is not greater
//! (`Nonce is too old, a newer one was last processed`), and refuses a first nonce older
//! than its window (about `timeout` + 4 s). Two requests made in the same nanosecond, or
//! after the system clock stepped back, would collide; this source never repeats or goes
//! back: each nonce is `max(now, previous + 1)`.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

/// A wall clock in nanoseconds since the Unix epoch.
pub type NanoClock = Arc<dyn Fn() -> u64 + Send + Sync>;

/// The system clock as [`NanoClock`] (0 before 1970, saturating after year 2554).
pub fn system_clock() -> NanoClock {
    Arc::new(|| {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|elapsed| u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX))
            .unwrap_or(0)
    })
}

/// Strictly increasing nanosecond nonces, shareable between tasks.
///
/// ```
/// use std::sync::Arc;
/// use prompting_transport::dendrite::nonce::NonceSource;
///
/// let stopped = NonceSource::with_clock(Arc::new(|| 1_795_303_292_740_406_005));
/// assert_eq!(stopped.next(), 1_795_303_292_740_406_005);
/// assert_eq!(stopped.next(), 1_795_303_292_740_406_006);
/// ```
pub struct NonceSource {
    clock: NanoClock,
    last: AtomicU64,
}

impl NonceSource {
    /// Nonces from the system clock.
    pub fn new() -> NonceSource {
        NonceSource::with_clock(system_clock())
    }

    /// Nonces from `clock` (tests and replays).
    pub fn with_clock(clock: NanoClock) -> NonceSource {
        NonceSource {
            clock,
            last: AtomicU64::new(0),
        }
    }

    /// The next nonce: the clock's time, or one more than the previous nonce if the clock
    /// has not moved past it.
    pub fn next(&self) -> u64 {
        let now = (self.clock)();
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

impl std::fmt::Debug for NonceSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NonceSource")
            .field("last", &self.last.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;
    use std::sync::atomic::AtomicU64;

    #[test]
    fn system_nonces_are_nanosecond_timestamps() {
        let nonce = NonceSource::new().next();
        // After 2023-11 and before 2100, in nanoseconds: what an axon's window expects.
        assert!(nonce > 1_700_000_000_000_000_000, "{nonce}");
        assert!(nonce < 4_102_444_800_000_000_000, "{nonce}");
    }

    #[test]
    fn nonces_increase_when_the_clock_stalls_or_steps_back() {
        let time = Arc::new(AtomicU64::new(1_000));
        let clock_time = Arc::clone(&time);
        let source = NonceSource::with_clock(Arc::new(move || clock_time.load(Ordering::SeqCst)));
        assert_eq!(source.next(), 1_000);
        assert_eq!(source.next(), 1_001);
        time.store(500, Ordering::SeqCst);
        assert_eq!(source.next(), 1_002);
        time.store(5_000, Ordering::SeqCst);
        assert_eq!(source.next(), 5_000);
    }

    #[test]
    fn concurrent_nonces_are_unique() {
        let source = Arc::new(NonceSource::with_clock(Arc::new(|| 7)));
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
