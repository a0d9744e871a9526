//! Wall-clock time in nanoseconds, injectable so recorded requests can be replayed.

use std::time::{SystemTime, UNIX_EPOCH};

/// A source of Unix time in nanoseconds (what bittensor nonces are).
pub trait Clock: Send + Sync + 'static {
    /// Nanoseconds since the Unix epoch.
    fn now_ns(&self) -> u128;
}

/// The system clock.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_ns(&self) -> u128 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0)
    }
}

/// A clock stopped at one instant (tests and replays of recorded traffic).
#[derive(Debug, Clone, Copy)]
pub struct FixedClock(pub u128);

impl Clock for FixedClock {
    fn now_ns(&self) -> u128 {
        self.0
    }
}
