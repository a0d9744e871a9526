//! Replay protection for the legacy protocol: the last nonce seen per `hotkey:uuid`.
//!
//! Bounded (oldest entries evicted first) and expiring: an entry older than the retention
//! can go, because a replay of it would fail the freshness window anyway.

use std::collections::{HashMap, VecDeque};
use std::time::Duration;

use parking_lot::Mutex;

/// Nanoseconds the first nonce of an endpoint may lag behind now, besides the timeout
/// (bittensor's `ALLOWED_DELTA`).
pub const ALLOWED_DELTA_NS: u128 = 4_000_000_000;

/// Dendrite version from which first nonces must be fresh (bittensor 7.2.0).
pub const V_7_2_0: u64 = 7_002_000;

/// Why a nonce was refused. Messages match bittensor's `default_verify`.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum NonceError {
    /// First nonce of an endpoint, older than the allowed window.
    #[error(
        "Nonce is too old: acceptable delta is {allowed_seconds:.2} seconds but request was {age_seconds:.2} seconds old"
    )]
    Stale {
        /// Allowed age, seconds.
        allowed_seconds: f64,
        /// The request's age, seconds.
        age_seconds: f64,
    },
    /// Not greater than the last nonce of this endpoint.
    #[error("Nonce is too old, a newer one was last processed")]
    NotIncreasing,
}

struct Entry {
    nonce: u64,
    seen_at_ns: u128,
}

struct Table {
    last: HashMap<String, Entry>,
    order: VecDeque<(String, u128)>,
}

/// Last accepted nonce per endpoint key (`hotkey:uuid`).
pub struct NonceTable {
    capacity: usize,
    retention_ns: u128,
    inner: Mutex<Table>,
}

impl NonceTable {
    /// A table holding at most `capacity` endpoints, each for at least `retention`.
    pub fn new(capacity: usize, retention: Duration) -> Self {
        NonceTable {
            capacity: capacity.max(1),
            retention_ns: retention.as_nanos(),
            inner: Mutex::new(Table {
                last: HashMap::new(),
                order: VecDeque::new(),
            }),
        }
    }

    /// Checks `nonce` for `endpoint` without recording it (the signature is checked after).
    pub fn check(
        &self,
        endpoint: &str,
        nonce: u64,
        dendrite_version: Option<u64>,
        timeout_seconds: f64,
        now_ns: u128,
    ) -> Result<(), NonceError> {
        let table = self.inner.lock();
        let previous = table.last.get(endpoint).map(|e| e.nonce);
        if let Some(previous) = previous {
            if nonce <= previous {
                return Err(NonceError::NotIncreasing);
            }
            return Ok(());
        }
        if dendrite_version.is_some_and(|v| v >= V_7_2_0) {
            let timeout_ns = (timeout_seconds.max(0.0) * 1e9) as u128;
            let window = now_ns.saturating_sub(ALLOWED_DELTA_NS + timeout_ns);
            if u128::from(nonce) <= window {
                return Err(NonceError::Stale {
                    allowed_seconds: (ALLOWED_DELTA_NS + timeout_ns) as f64 / 1e9,
                    age_seconds: (now_ns as f64 - nonce as f64) / 1e9,
                });
            }
        }
        Ok(())
    }

    /// Records `nonce` as the last one of `endpoint` (after its signature verified).
    pub fn record(&self, endpoint: &str, nonce: u64, now_ns: u128) {
        let mut table = self.inner.lock();
        // Expire and bound.
        while let Some((key, seen)) = table.order.front() {
            let expired = now_ns.saturating_sub(*seen) > self.retention_ns;
            if !expired && table.last.len() < self.capacity {
                break;
            }
            let (key, seen) = (key.clone(), *seen);
            table.order.pop_front();
            if table.last.get(&key).is_some_and(|e| e.seen_at_ns == seen) {
                table.last.remove(&key);
            }
        }
        // A concurrent request may have recorded a newer nonce meanwhile: keep the max.
        let entry = table.last.entry(endpoint.to_string()).or_insert(Entry {
            nonce,
            seen_at_ns: now_ns,
        });
        entry.nonce = entry.nonce.max(nonce);
        entry.seen_at_ns = now_ns;
        table.order.push_back((endpoint.to_string(), now_ns));
        // Stale order entries (superseded by a newer sighting) are skipped lazily above;
        // keep the queue itself bounded too.
        while table.order.len() > self.capacity * 4 {
            if let Some((key, seen)) = table.order.pop_front()
                && table.last.get(&key).is_some_and(|e| e.seen_at_ns == seen)
            {
                table.last.remove(&key);
            }
        }
    }

    /// Number of endpoints tracked.
    pub fn len(&self) -> usize {
        self.inner.lock().last.len()
    }

    /// Whether no endpoint is tracked.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: u128 = 1_795_303_300_000_000_000;

    #[test]
    fn first_nonce_must_be_fresh_for_new_dendrites() {
        let table = NonceTable::new(10, Duration::from_secs(60));
        let fresh = (NOW - 1_000_000_000) as u64;
        assert!(
            table
                .check("a:u", fresh, Some(10_005_000), 5.0, NOW)
                .is_ok()
        );
        let stale = (NOW - 10_000_000_000) as u64;
        let err = table
            .check("a:u", stale, Some(10_005_000), 5.0, NOW)
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "Nonce is too old: acceptable delta is 9.00 seconds but request was 10.00 seconds old"
        );
        // Old dendrites (< 7.2.0) used monotonic nonces: no freshness rule.
        assert!(table.check("a:u", 12345, Some(644), 5.0, NOW).is_ok());
    }

    #[test]
    fn nonces_must_increase_per_endpoint() {
        let table = NonceTable::new(10, Duration::from_secs(60));
        let n = (NOW - 1_000) as u64;
        table.record("a:u", n, NOW);
        assert_eq!(
            table.check("a:u", n, Some(10_005_000), 5.0, NOW),
            Err(NonceError::NotIncreasing)
        );
        assert!(
            table
                .check("a:u", n + 1, Some(10_005_000), 5.0, NOW)
                .is_ok()
        );
        // Another uuid of the same hotkey is another endpoint.
        assert!(table.check("a:v", n, Some(10_005_000), 5.0, NOW).is_ok());
    }

    #[test]
    fn table_is_bounded_and_expires() {
        let table = NonceTable::new(3, Duration::from_secs(10));
        for i in 0..10u64 {
            table.record(&format!("k{i}:u"), i + 1, NOW + u128::from(i));
        }
        assert!(table.len() <= 3, "len {}", table.len());
        // Everything expires after the retention.
        table.record("late:u", 1, NOW + 20_000_000_000);
        assert_eq!(table.len(), 1);
    }
}
