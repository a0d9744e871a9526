//! Replay protection for the legacy protocol: the nonces seen per `hotkey:uuid`.
//!
//! bittensor accepts only nonces strictly greater than the last one of an endpoint. Requests
//! a validator sends concurrently to one axon can arrive out of order, and the strict rule
//! then refuses honest ones; so, within `reorder window` below the highest nonce, a nonce is
//! also accepted if it was never seen. Replays stay refused: the nonces accepted within the
//! window are remembered (a bounded set; below what it can prove unseen, nonces are
//! refused). A window of zero is bittensor's exact rule.
//!
//! The table is bounded (oldest endpoints evicted first) and expiring: an entry older than
//! the retention can go, because a replay of it would fail the freshness rule anyway.

use std::collections::{HashMap, VecDeque};
use std::time::Duration;

use parking_lot::Mutex;

/// Nanoseconds the first nonce of an endpoint may lag behind now, besides the timeout
/// (bittensor's `ALLOWED_DELTA`).
pub const ALLOWED_DELTA_NS: u128 = 4_000_000_000;

/// Dendrite version from which first nonces must be fresh (bittensor 7.2.0).
pub const V_7_2_0: u64 = 7_002_000;

/// Nonces remembered per endpoint inside the reorder window.
const RECENT_PER_ENDPOINT: usize = 64;

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
    /// Seen already, or too far below the last nonce of this endpoint.
    #[error("Nonce is too old, a newer one was last processed")]
    NotIncreasing,
}

struct Entry {
    /// Highest nonce accepted.
    max: u64,
    /// Nonces accepted within the reorder window below `max` (and `max` itself).
    recent: VecDeque<u64>,
    /// Nonces at or below this cannot be proven unseen (evicted from `recent`).
    floor: u64,
    /// When the endpoint was last seen.
    seen_at_ns: u128,
    /// Which entry of `Table::order` is this endpoint's latest sighting.
    stamp: u64,
}

impl Entry {
    fn accepts(&self, nonce: u64, window_ns: u64) -> bool {
        if nonce > self.max {
            return true;
        }
        window_ns > 0
            && self.max - nonce <= window_ns
            && nonce > self.floor
            && !self.recent.contains(&nonce)
    }

    fn insert(&mut self, nonce: u64, window_ns: u64) {
        self.max = self.max.max(nonce);
        self.recent.push_back(nonce);
        let lowest_useful = self.max.saturating_sub(window_ns);
        self.recent.retain(|&n| n >= lowest_useful);
        while self.recent.len() > RECENT_PER_ENDPOINT {
            if let Some((at, &smallest)) = self.recent.iter().enumerate().min_by_key(|(_, n)| **n) {
                self.recent.remove(at);
                self.floor = self.floor.max(smallest);
            }
        }
    }
}

struct Table {
    entries: HashMap<String, Entry>,
    /// Sightings, oldest first: (endpoint, stamp, time). Superseded ones are skipped lazily.
    order: VecDeque<(String, u64, u128)>,
    next_stamp: u64,
    /// Endpoints evicted before they expired (capacity pressure) take their replay memory
    /// with them; until `evicted_until_ns`, a new endpoint's nonce must exceed this.
    evicted_floor: u64,
    evicted_until_ns: u128,
}

/// Nonces seen per endpoint key (`hotkey:uuid`).
pub struct NonceTable {
    capacity: usize,
    retention_ns: u128,
    window_ns: u64,
    inner: Mutex<Table>,
}

impl NonceTable {
    /// A table holding at most `capacity` endpoints, each for at least `retention`,
    /// accepting unseen nonces up to `reorder_window` below the highest one.
    pub fn new(capacity: usize, retention: Duration, reorder_window: Duration) -> Self {
        NonceTable {
            capacity: capacity.max(1),
            retention_ns: retention.as_nanos(),
            window_ns: u64::try_from(reorder_window.as_nanos()).unwrap_or(u64::MAX),
            inner: Mutex::new(Table {
                entries: HashMap::new(),
                order: VecDeque::new(),
                next_stamp: 0,
                evicted_floor: 0,
                evicted_until_ns: 0,
            }),
        }
    }

    /// Checks `nonce` for `endpoint` before its signature is verified (cheap refusals).
    pub fn check(
        &self,
        endpoint: &str,
        nonce: u64,
        dendrite_version: Option<u64>,
        timeout_seconds: f64,
        now_ns: u128,
    ) -> Result<(), NonceError> {
        let table = self.inner.lock();
        if let Some(entry) = table.entries.get(endpoint) {
            return if entry.accepts(nonce, self.window_ns) {
                Ok(())
            } else {
                Err(NonceError::NotIncreasing)
            };
        }
        if now_ns < table.evicted_until_ns && nonce <= table.evicted_floor {
            return Err(NonceError::NotIncreasing);
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

    /// Records `nonce` for `endpoint` once its signature verified. Checks again under the
    /// same lock, so two concurrent copies of one request cannot both pass.
    pub fn record(&self, endpoint: &str, nonce: u64, now_ns: u128) -> Result<(), NonceError> {
        let mut table = self.inner.lock();
        let stamp = table.next_stamp;
        table.next_stamp += 1;
        if let Some(entry) = table.entries.get_mut(endpoint) {
            if !entry.accepts(nonce, self.window_ns) {
                return Err(NonceError::NotIncreasing);
            }
            entry.insert(nonce, self.window_ns);
            entry.seen_at_ns = now_ns;
            entry.stamp = stamp;
        } else {
            if now_ns < table.evicted_until_ns && nonce <= table.evicted_floor {
                return Err(NonceError::NotIncreasing);
            }
            self.evict(&mut table, now_ns);
            let mut entry = Entry {
                max: nonce,
                recent: VecDeque::new(),
                floor: 0,
                seen_at_ns: now_ns,
                stamp,
            };
            entry.insert(nonce, self.window_ns);
            table.entries.insert(endpoint.to_string(), entry);
        }
        table.order.push_back((endpoint.to_string(), stamp, now_ns));
        // Superseded sightings are skipped lazily; keep the queue itself bounded too.
        while table.order.len() > self.capacity * 4 {
            self.pop_oldest(&mut table, now_ns);
        }
        Ok(())
    }

    /// Drops the oldest sighting; when it is its endpoint's latest, the endpoint goes too.
    fn pop_oldest(&self, table: &mut Table, now_ns: u128) {
        let Some((key, stamp, seen)) = table.order.pop_front() else {
            return;
        };
        let latest = table.entries.get(&key).is_some_and(|e| e.stamp == stamp);
        if latest
            && let Some(entry) = table.entries.remove(&key)
            && now_ns.saturating_sub(seen) <= self.retention_ns
        {
            // Evicted before it expired: keep refusing what it could have proven seen.
            table.evicted_floor = table.evicted_floor.max(entry.max);
            table.evicted_until_ns = table.evicted_until_ns.max(seen + self.retention_ns);
            tracing::warn!(
                capacity = self.capacity,
                "legacy nonce table full: evicting a live endpoint (raise --axon.nonce_capacity)"
            );
        }
    }

    /// Drops expired endpoints, and the oldest ones while at capacity.
    fn evict(&self, table: &mut Table, now_ns: u128) {
        while let Some((_, _, seen)) = table.order.front() {
            let expired = now_ns.saturating_sub(*seen) > self.retention_ns;
            if !expired && table.entries.len() < self.capacity {
                break;
            }
            self.pop_oldest(table, now_ns);
        }
    }

    /// Number of endpoints tracked.
    pub fn len(&self) -> usize {
        self.inner.lock().entries.len()
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
    const MS: u64 = 1_000_000;

    fn strict() -> NonceTable {
        NonceTable::new(10, Duration::from_secs(60), Duration::ZERO)
    }

    fn windowed() -> NonceTable {
        NonceTable::new(10, Duration::from_secs(60), Duration::from_secs(1))
    }

    #[test]
    fn first_nonce_must_be_fresh_for_new_dendrites() {
        let table = strict();
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
    fn strict_window_is_bittensors_rule() {
        let table = strict();
        let n = (NOW - 1_000) as u64;
        table.record("a:u", n, NOW).expect("first");
        assert_eq!(
            table.check("a:u", n, Some(10_005_000), 5.0, NOW),
            Err(NonceError::NotIncreasing)
        );
        assert_eq!(
            table.check("a:u", n - 1, Some(10_005_000), 5.0, NOW),
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
    fn out_of_order_nonces_inside_the_window_are_accepted_once() {
        let table = windowed();
        let n = (NOW - 1_000) as u64;
        table.record("a:u", n, NOW).expect("first");
        // Sent earlier, arrived later: accepted once, then a replay.
        assert!(
            table
                .check("a:u", n - 5 * MS, Some(10_005_000), 5.0, NOW)
                .is_ok()
        );
        table.record("a:u", n - 5 * MS, NOW).expect("late arrival");
        assert_eq!(
            table.record("a:u", n - 5 * MS, NOW),
            Err(NonceError::NotIncreasing)
        );
        // The highest one is still a replay.
        assert_eq!(table.record("a:u", n, NOW), Err(NonceError::NotIncreasing));
        // Beyond the window: refused.
        assert_eq!(
            table.check("a:u", n - 2_000 * MS, Some(10_005_000), 5.0, NOW),
            Err(NonceError::NotIncreasing)
        );
    }

    #[test]
    fn evicted_nonces_are_never_accepted_again() {
        let table = windowed();
        let base = (NOW - 900 * u128::from(MS)) as u64;
        for i in 0..(RECENT_PER_ENDPOINT as u64 + 10) {
            table.record("a:u", base + i * MS, NOW).expect("increasing");
        }
        // The oldest ones fell out of the remembered set: they are refused, not re-accepted.
        assert_eq!(
            table.record("a:u", base, NOW),
            Err(NonceError::NotIncreasing)
        );
        assert_eq!(
            table.record("a:u", base + 3 * MS, NOW),
            Err(NonceError::NotIncreasing)
        );
        // An unseen nonce between remembered ones is still accepted.
        assert!(table.record("a:u", base + 70 * MS + 1, NOW).is_ok());
    }

    #[test]
    fn table_is_bounded_and_expires() {
        let table = NonceTable::new(3, Duration::from_secs(10), Duration::from_secs(1));
        for i in 0..10u64 {
            table
                .record(&format!("k{i}:u"), i + 1, NOW + u128::from(i))
                .expect("new endpoint");
        }
        assert!(table.len() <= 3, "len {}", table.len());
        // Endpoints evicted while live leave a floor: their nonces stay refused...
        assert_eq!(
            table.record("k0:u", 1, NOW + 20),
            Err(NonceError::NotIncreasing)
        );
        // ...until they would have expired; then everything old is gone.
        table
            .record("late:u", 100, NOW + 20_000_000_000)
            .expect("new");
        assert_eq!(table.len(), 1);
    }

    #[test]
    fn sightings_at_the_same_instant_never_evict_a_live_endpoint() {
        let table = NonceTable::new(2, Duration::from_secs(60), Duration::from_secs(1));
        let n = (NOW - 1_000) as u64;
        for i in 0..50 {
            table.record("a:u", n + i, NOW).expect("increasing");
        }
        assert_eq!(table.record("a:u", n, NOW), Err(NonceError::NotIncreasing));
        assert_eq!(table.len(), 1);
    }
}
