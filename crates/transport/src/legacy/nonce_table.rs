//! Replay protection for the legacy protocol: the nonces seen per endpoint (`hotkey:uuid`).
//!
//! bittensor accepts only nonces strictly greater than the last one of an endpoint. Requests
//! a validator sends concurrently to one axon can arrive out of order, and the strict rule
//! then refuses honest ones; so, within `reorder window` below the highest nonce, a nonce is
//! also accepted if it was never seen. Replays stay refused: the nonces accepted within the
//! window are remembered (a bounded set; below what it can prove unseen, nonces are
//! refused). A window of zero is bittensor's exact rule.
//!
//! # Freshness comes from the signed nonce
//!
//! A nonce at or above [`TIME_NONCE_MIN`] is a wall-clock time in nanoseconds (bittensor ≥ 7
//! dendrites send `time.time_ns()`, about 1.7e18); the first nonce of an endpoint must then
//! be newer than now − 4 s − the request's timeout (capped at `--axon.max_request_timeout`),
//! whatever the unsigned `bt_header_dendrite_version` and `timeout` headers say. So an
//! entry whose highest nonce is older than 4 s + the longest timeout can be forgotten: a
//! replay of any of its requests is stale. Smaller nonces are monotonic-clock readings
//! (bittensor 6.x): nothing tells their age, so their endpoints never expire; they only
//! leave under capacity pressure, behind a floor (below).
//!
//! # Bounds, per class of caller
//!
//! Registered (or whitelisted) hotkeys each get a table of their own, at most
//! `--axon.nonce_capacity_per_key` endpoints; unregistered hotkeys share one table of
//! `--axon.nonce_capacity` endpoints. When a table is full its least recently seen endpoint
//! goes; if that endpoint could still be replayed, the table keeps a *floor*: nonces of new
//! endpoints at or below the highest nonce it forgot early are refused (for wall-clock
//! nonces, until that nonce is stale). A table's floor only refuses new endpoints of its
//! own keys, so an unregistered key's flood never touches a registered validator.
//! At most `--axon.nonce_max_keys` registered keys get a table (more than any subnet has
//! uids); beyond that a key is served from the shared table.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use parking_lot::Mutex;

use crate::caller_class::CallerClass;

/// Nanoseconds the first nonce of an endpoint may lag behind now, besides the timeout
/// (bittensor's `ALLOWED_DELTA`).
pub const ALLOWED_DELTA_NS: u128 = 4_000_000_000;

/// Dendrite version from which bittensor checks that first nonces are fresh (7.2.0).
pub const V_7_2_0: u64 = 7_002_000;

/// The smallest nonce read as a wall-clock time (2001-09-09 in nanoseconds since the Unix
/// epoch; a monotonic clock reaches it after 31 years of uptime).
pub const TIME_NONCE_MIN: u64 = 1_000_000_000_000_000_000;

/// Nonces remembered per endpoint inside the reorder window.
const RECENT_PER_ENDPOINT: usize = 64;

/// How often registered keys' tables are swept for expired endpoints, nanoseconds.
const SWEEP_INTERVAL_NS: u128 = 10_000_000_000;

/// Whether `nonce` is a wall-clock time (see [`TIME_NONCE_MIN`]).
pub fn is_time_nonce(nonce: u64) -> bool {
    nonce >= TIME_NONCE_MIN
}

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
    /// Seen already, or too far below the last nonce of this endpoint, or below what a full
    /// table had to forget.
    #[error("Nonce is too old, a newer one was last processed")]
    NotIncreasing,
}

/// The bounds of a [`NonceTable`].
#[derive(Debug, Clone, PartialEq)]
pub struct NonceLimits {
    /// Endpoints of unregistered keys, all together (`--axon.nonce_capacity`).
    pub shared_capacity: usize,
    /// Endpoints of one registered key (`--axon.nonce_capacity_per_key`).
    pub per_key_capacity: usize,
    /// Registered keys with a table of their own (`--axon.nonce_max_keys`).
    pub max_keys: usize,
    /// Below an endpoint's highest nonce, how far an unseen nonce is still accepted.
    pub reorder_window: Duration,
    /// The longest request timeout honoured (`--axon.max_request_timeout`): with
    /// [`ALLOWED_DELTA_NS`], how old a first nonce may be.
    pub max_request_timeout: Duration,
}

/// One legacy request's claim, as the nonce table judges it.
#[derive(Debug, Clone, Copy)]
pub struct NonceClaim<'a> {
    /// `bt_header_dendrite_hotkey` (signed).
    pub hotkey: &'a str,
    /// `bt_header_dendrite_uuid` (signed; `None` when absent).
    pub uuid: &'a str,
    /// `bt_header_dendrite_nonce` (signed).
    pub nonce: u64,
    /// `bt_header_dendrite_version` (unsigned: it can only make the check stricter).
    pub dendrite_version: Option<u64>,
    /// The request's `timeout`, seconds (unsigned: capped at the longest timeout).
    pub timeout_seconds: f64,
    /// The hotkey's class.
    pub class: CallerClass,
}

/// Counters of a [`NonceTable`], for `/metrics`.
#[derive(Debug, Default)]
pub struct NonceCounters {
    /// Endpoints of unregistered keys forgotten while a replay of them was still possible.
    pub early_evictions_unregistered: AtomicU64,
    /// Endpoints of registered keys forgotten while a replay of them was still possible.
    pub early_evictions_registered: AtomicU64,
}

/// How many endpoints a [`NonceTable`] holds now.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct NonceTableSize {
    /// Endpoints in the shared table of unregistered keys.
    pub unregistered_endpoints: usize,
    /// Endpoints in the tables of registered keys, together.
    pub registered_endpoints: usize,
    /// Registered keys with a table.
    pub registered_keys: usize,
}

struct Entry {
    /// Highest nonce accepted.
    max: u64,
    /// Nonces accepted within the reorder window below `max` (and `max` itself).
    recent: VecDeque<u64>,
    /// Nonces at or below this cannot be proven unseen (evicted from `recent`).
    floor: u64,
    /// Highest monotonic (non-time) nonce accepted, if any: such an entry never expires.
    max_monotonic: Option<u64>,
    /// Which sighting in the table's order is this endpoint's latest.
    stamp: u64,
}

impl Entry {
    fn new(stamp: u64) -> Entry {
        Entry {
            max: 0,
            recent: VecDeque::new(),
            floor: 0,
            max_monotonic: None,
            stamp,
        }
    }

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
        if !is_time_nonce(nonce) {
            self.max_monotonic = Some(self.max_monotonic.map_or(nonce, |m| m.max(nonce)));
        }
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

    /// Whether every request of this endpoint would now fail the freshness rule.
    fn stale(&self, now_ns: u128, freshness_ns: u128) -> bool {
        self.max_monotonic.is_none() && u128::from(self.max) + freshness_ns < now_ns
    }
}

/// What a table forgot early: new endpoints at or below are refused.
#[derive(Debug, Default, Clone, Copy)]
struct Floor {
    /// Highest wall-clock nonce forgotten early (irrelevant once it is stale).
    time: Option<u64>,
    /// Highest monotonic nonce forgotten early (relevant forever).
    monotonic: Option<u64>,
}

impl Floor {
    fn refuses(&self, nonce: u64) -> bool {
        let floor = if is_time_nonce(nonce) {
            self.time
        } else {
            self.monotonic
        };
        floor.is_some_and(|floor| nonce <= floor)
    }

    fn raise(&mut self, entry: &Entry) {
        if is_time_nonce(entry.max) {
            self.time = Some(self.time.map_or(entry.max, |t| t.max(entry.max)));
        }
        if let Some(m) = entry.max_monotonic {
            self.monotonic = Some(self.monotonic.map_or(m, |f| f.max(m)));
        }
    }

    fn drop_stale(&mut self, now_ns: u128, freshness_ns: u128) {
        if self
            .time
            .is_some_and(|t| u128::from(t) + freshness_ns < now_ns)
        {
            self.time = None;
        }
    }

    fn is_empty(&self) -> bool {
        self.time.is_none() && self.monotonic.is_none()
    }
}

/// One bounded table of endpoints, least recently seen evicted first.
struct Group {
    capacity: usize,
    entries: HashMap<Arc<str>, Entry>,
    /// Sightings, oldest first: (endpoint, stamp). Superseded ones are skipped lazily.
    order: VecDeque<(Arc<str>, u64)>,
    floor: Floor,
}

impl Group {
    fn new(capacity: usize) -> Group {
        Group {
            capacity: capacity.max(1),
            entries: HashMap::new(),
            order: VecDeque::new(),
            floor: Floor::default(),
        }
    }

    /// Records `nonce` for `key` (already judged acceptable).
    fn record(&mut self, key: &str, nonce: u64, stamp: u64, window_ns: u64) {
        let key: Arc<str> = match self.entries.get_key_value(key) {
            Some((existing, _)) => Arc::clone(existing),
            None => Arc::from(key),
        };
        let entry = self
            .entries
            .entry(Arc::clone(&key))
            .or_insert_with(|| Entry::new(stamp));
        entry.insert(nonce, window_ns);
        entry.stamp = stamp;
        self.order.push_back((key, stamp));
        if self.order.len() > 2 * self.capacity + 16 {
            let entries = &self.entries;
            self.order
                .retain(|(key, stamp)| entries.get(key).is_some_and(|e| e.stamp == *stamp));
        }
    }

    /// Drops stale endpoints from the front, and the least recently seen ones while
    /// `room` more would not fit. Returns how many were forgotten while still replayable.
    fn make_room(&mut self, room: usize, now_ns: u128, freshness_ns: u128) -> u64 {
        self.floor.drop_stale(now_ns, freshness_ns);
        let mut early = 0;
        while let Some((key, stamp)) = self.order.front() {
            let Some(entry) = self.entries.get(key).filter(|e| e.stamp == *stamp) else {
                self.order.pop_front();
                continue;
            };
            let stale = entry.stale(now_ns, freshness_ns);
            if !stale && self.entries.len() + room <= self.capacity {
                break;
            }
            if let Some((key, _)) = self.order.pop_front()
                && let Some(entry) = self.entries.remove(&key)
                && !stale
            {
                self.floor.raise(&entry);
                early += 1;
            }
        }
        early
    }

    fn is_empty(&self) -> bool {
        self.entries.is_empty() && self.floor.is_empty()
    }
}

/// Where a claim's endpoint lives.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Place {
    /// Known, in the registered key's own table.
    Keyed,
    /// Known, in the shared table.
    Shared,
    /// New: recorded in the table of its class.
    New,
}

struct Tables {
    /// Unregistered keys' endpoints, keyed `hotkey:uuid`.
    shared: Group,
    /// Registered keys' tables, keyed by hotkey, their endpoints by uuid.
    keyed: HashMap<Arc<str>, Group>,
    next_stamp: u64,
    next_sweep_ns: u128,
}

/// Nonces seen per endpoint, bounded per class of caller (see the module documentation).
pub struct NonceTable {
    limits: NonceLimits,
    window_ns: u64,
    freshness_ns: u128,
    max_timeout_ns: u128,
    counters: Arc<NonceCounters>,
    inner: Mutex<Tables>,
}

impl NonceTable {
    /// An empty table with `limits`.
    pub fn new(limits: NonceLimits) -> Self {
        let max_timeout_ns = limits.max_request_timeout.as_nanos();
        NonceTable {
            window_ns: u64::try_from(limits.reorder_window.as_nanos()).unwrap_or(u64::MAX),
            freshness_ns: ALLOWED_DELTA_NS + max_timeout_ns,
            max_timeout_ns,
            counters: Arc::new(NonceCounters::default()),
            inner: Mutex::new(Tables {
                shared: Group::new(limits.shared_capacity),
                keyed: HashMap::new(),
                next_stamp: 0,
                next_sweep_ns: 0,
            }),
            limits,
        }
    }

    /// The counters, shared (for `/metrics`).
    pub fn counters(&self) -> Arc<NonceCounters> {
        Arc::clone(&self.counters)
    }

    /// Checks `claim` before its signature is verified (cheap refusals); changes nothing.
    pub fn check(&self, claim: &NonceClaim<'_>, now_ns: u128) -> Result<(), NonceError> {
        let tables = self.inner.lock();
        self.judge(&tables, claim, now_ns).map(|_| ())
    }

    /// Records `claim` once its signature verified. Judges it again under the same lock, so
    /// two concurrent copies of one request cannot both pass.
    pub fn record(&self, claim: &NonceClaim<'_>, now_ns: u128) -> Result<(), NonceError> {
        let mut guard = self.inner.lock();
        let tables = &mut *guard;
        let place = self.judge(tables, claim, now_ns)?;
        let stamp = tables.next_stamp;
        tables.next_stamp += 1;
        let shared_key = || format!("{}:{}", claim.hotkey, claim.uuid);
        match place {
            Place::Keyed => {
                if let Some(group) = tables.keyed.get_mut(claim.hotkey) {
                    group.record(claim.uuid, claim.nonce, stamp, self.window_ns);
                }
            }
            Place::Shared => {
                tables
                    .shared
                    .record(&shared_key(), claim.nonce, stamp, self.window_ns)
            }
            Place::New => {
                let keyed = claim.class == CallerClass::Registered
                    && (tables.keyed.contains_key(claim.hotkey)
                        || tables.keyed.len() < self.limits.max_keys);
                if keyed {
                    let capacity = self.limits.per_key_capacity;
                    let group = tables
                        .keyed
                        .entry(Arc::from(claim.hotkey))
                        .or_insert_with(|| Group::new(capacity));
                    let early = group.make_room(1, now_ns, self.freshness_ns);
                    self.evicted_early(CallerClass::Registered, early);
                    group.record(claim.uuid, claim.nonce, stamp, self.window_ns);
                } else {
                    let early = tables.shared.make_room(1, now_ns, self.freshness_ns);
                    self.evicted_early(CallerClass::Unregistered, early);
                    tables
                        .shared
                        .record(&shared_key(), claim.nonce, stamp, self.window_ns);
                }
            }
        }
        if now_ns >= tables.next_sweep_ns {
            tables.next_sweep_ns = now_ns + SWEEP_INTERVAL_NS;
            self.sweep(tables, now_ns);
        }
        Ok(())
    }

    fn judge(
        &self,
        tables: &Tables,
        claim: &NonceClaim<'_>,
        now_ns: u128,
    ) -> Result<Place, NonceError> {
        let keyed = tables.keyed.get(claim.hotkey);
        let known = match keyed.and_then(|group| group.entries.get(claim.uuid)) {
            Some(entry) => Some((entry, Place::Keyed)),
            None => tables
                .shared
                .entries
                .get(format!("{}:{}", claim.hotkey, claim.uuid).as_str())
                .map(|entry| (entry, Place::Shared)),
        };
        if let Some((entry, place)) = known {
            return if entry.accepts(claim.nonce, self.window_ns) {
                Ok(place)
            } else {
                Err(NonceError::NotIncreasing)
            };
        }
        // A new endpoint: fresh if its nonce is a time (or the dendrite claims ≥ 7.2)...
        let nonce = claim.nonce;
        if is_time_nonce(nonce) || claim.dendrite_version.is_some_and(|v| v >= V_7_2_0) {
            let timeout_ns = if claim.timeout_seconds.is_finite() && claim.timeout_seconds > 0.0 {
                ((claim.timeout_seconds * 1e9) as u128).min(self.max_timeout_ns)
            } else if claim.timeout_seconds == f64::INFINITY {
                self.max_timeout_ns
            } else {
                0
            };
            let allowed_ns = ALLOWED_DELTA_NS + timeout_ns;
            if u128::from(nonce) <= now_ns.saturating_sub(allowed_ns) {
                return Err(NonceError::Stale {
                    allowed_seconds: allowed_ns as f64 / 1e9,
                    age_seconds: (now_ns as f64 - nonce as f64) / 1e9,
                });
            }
        }
        // ...and above what its key's tables had to forget early.
        let below_floor = |group: &Group| {
            let mut floor = group.floor;
            floor.drop_stale(now_ns, self.freshness_ns);
            floor.refuses(nonce)
        };
        // The shared table's floor binds the keys it would hold: unregistered ones, and
        // registered ones beyond `max_keys`.
        let shared = claim.class == CallerClass::Unregistered
            || (keyed.is_none() && tables.keyed.len() >= self.limits.max_keys);
        if keyed.is_some_and(below_floor) || (shared && below_floor(&tables.shared)) {
            return Err(NonceError::NotIncreasing);
        }
        Ok(Place::New)
    }

    fn evicted_early(&self, class: CallerClass, count: u64) {
        if count == 0 {
            return;
        }
        let counter = match class {
            CallerClass::Unregistered => &self.counters.early_evictions_unregistered,
            CallerClass::Registered => &self.counters.early_evictions_registered,
        };
        counter.fetch_add(count, Ordering::Relaxed);
        tracing::warn!(
            class = class.as_str(),
            "legacy nonce table full: evicting a live endpoint (raise --axon.nonce_capacity)"
        );
    }

    /// Drops stale endpoints everywhere, and registered keys' tables left empty.
    fn sweep(&self, tables: &mut Tables, now_ns: u128) {
        tables.shared.make_room(0, now_ns, self.freshness_ns);
        tables.keyed.retain(|_, group| {
            group.make_room(0, now_ns, self.freshness_ns);
            !group.is_empty()
        });
    }

    /// How many endpoints are tracked, by class.
    pub fn size(&self) -> NonceTableSize {
        let tables = self.inner.lock();
        NonceTableSize {
            unregistered_endpoints: tables.shared.entries.len(),
            registered_endpoints: tables.keyed.values().map(|g| g.entries.len()).sum(),
            registered_keys: tables.keyed.len(),
        }
    }

    /// Number of endpoints tracked.
    pub fn len(&self) -> usize {
        let size = self.size();
        size.unregistered_endpoints + size.registered_endpoints
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
    const SECOND: u128 = 1_000_000_000;

    fn limits(capacity: usize, window: Duration) -> NonceLimits {
        NonceLimits {
            shared_capacity: capacity,
            per_key_capacity: capacity,
            max_keys: 4,
            reorder_window: window,
            max_request_timeout: Duration::from_secs(60),
        }
    }

    fn strict() -> NonceTable {
        NonceTable::new(limits(10, Duration::ZERO))
    }

    fn windowed() -> NonceTable {
        NonceTable::new(limits(10, Duration::from_secs(1)))
    }

    fn claim<'a>(hotkey: &'a str, uuid: &'a str, nonce: u64) -> NonceClaim<'a> {
        NonceClaim {
            hotkey,
            uuid,
            nonce,
            dendrite_version: Some(10_005_000),
            timeout_seconds: 5.0,
            class: CallerClass::Unregistered,
        }
    }

    fn registered<'a>(hotkey: &'a str, uuid: &'a str, nonce: u64) -> NonceClaim<'a> {
        NonceClaim {
            class: CallerClass::Registered,
            ..claim(hotkey, uuid, nonce)
        }
    }

    #[test]
    fn first_nonce_must_be_fresh() {
        let table = strict();
        let fresh = (NOW - SECOND) as u64;
        assert!(table.check(&claim("a", "u", fresh), NOW).is_ok());
        let stale = (NOW - 10 * SECOND) as u64;
        let err = table.check(&claim("a", "u", stale), NOW).unwrap_err();
        assert_eq!(
            err.to_string(),
            "Nonce is too old: acceptable delta is 9.00 seconds but request was 10.00 seconds old"
        );
        // Old dendrites (< 7.2.0) used monotonic nonces: no freshness rule...
        let old = NonceClaim {
            dendrite_version: Some(644),
            ..claim("a", "u", 12345)
        };
        assert!(table.check(&old, NOW).is_ok());
        // ...but a time nonce is checked whatever the (unsigned) version header says.
        for version in [Some(644), None] {
            let stale = NonceClaim {
                dendrite_version: version,
                ..claim("a", "u", stale)
            };
            assert!(matches!(
                table.check(&stale, NOW),
                Err(NonceError::Stale { .. })
            ));
        }
    }

    #[test]
    fn the_unsigned_timeout_is_capped() {
        let table = strict();
        // 60 s is the longest timeout: 64 s is the oldest first nonce, however long the
        // request's timeout claims to be.
        let old = (NOW - 70 * SECOND) as u64;
        for timeout in [1e9, f64::INFINITY, f64::MAX] {
            let claim = NonceClaim {
                timeout_seconds: timeout,
                ..claim("a", "u", old)
            };
            assert_eq!(
                table.check(&claim, NOW).unwrap_err().to_string(),
                "Nonce is too old: acceptable delta is 64.00 seconds but request was 70.00 seconds old"
            );
        }
        for timeout in [f64::NAN, -1.0, f64::NEG_INFINITY] {
            let claim = NonceClaim {
                timeout_seconds: timeout,
                ..claim("a", "u", (NOW - 5 * SECOND) as u64)
            };
            assert!(matches!(
                table.check(&claim, NOW),
                Err(NonceError::Stale { .. })
            ));
        }
    }

    #[test]
    fn strict_window_is_bittensors_rule() {
        let table = strict();
        let n = (NOW - 1_000) as u64;
        table.record(&claim("a", "u", n), NOW).expect("first");
        for refused in [n, n - 1] {
            assert_eq!(
                table.check(&claim("a", "u", refused), NOW),
                Err(NonceError::NotIncreasing)
            );
        }
        assert!(table.check(&claim("a", "u", n + 1), NOW).is_ok());
        // Another uuid of the same hotkey is another endpoint.
        assert!(table.check(&claim("a", "v", n), NOW).is_ok());
    }

    #[test]
    fn out_of_order_nonces_inside_the_window_are_accepted_once() {
        let table = windowed();
        let n = (NOW - 1_000) as u64;
        table.record(&claim("a", "u", n), NOW).expect("first");
        // Sent earlier, arrived later: accepted once, then a replay.
        assert!(table.check(&claim("a", "u", n - 5 * MS), NOW).is_ok());
        table
            .record(&claim("a", "u", n - 5 * MS), NOW)
            .expect("late arrival");
        assert_eq!(
            table.record(&claim("a", "u", n - 5 * MS), NOW),
            Err(NonceError::NotIncreasing)
        );
        // The highest one is still a replay.
        assert_eq!(
            table.record(&claim("a", "u", n), NOW),
            Err(NonceError::NotIncreasing)
        );
        // Beyond the window: refused.
        assert_eq!(
            table.check(&claim("a", "u", n - 2_000 * MS), NOW),
            Err(NonceError::NotIncreasing)
        );
    }

    #[test]
    fn nonces_evicted_from_the_window_are_never_accepted_again() {
        let table = windowed();
        let base = (NOW - 900 * u128::from(MS)) as u64;
        for i in 0..(RECENT_PER_ENDPOINT as u64 + 10) {
            table
                .record(&claim("a", "u", base + i * MS), NOW)
                .expect("increasing");
        }
        // The oldest ones fell out of the remembered set: they are refused, not re-accepted.
        for refused in [base, base + 3 * MS] {
            assert_eq!(
                table.record(&claim("a", "u", refused), NOW),
                Err(NonceError::NotIncreasing)
            );
        }
        // An unseen nonce between remembered ones is still accepted.
        assert!(
            table
                .record(&claim("a", "u", base + 70 * MS + 1), NOW)
                .is_ok()
        );
    }

    #[test]
    fn the_shared_table_is_bounded_and_its_floor_expires() {
        let table = NonceTable::new(limits(3, Duration::from_secs(1)));
        let n = (NOW - SECOND) as u64;
        for i in 0..10u64 {
            table
                .record(&claim(&format!("k{i}"), "u", n + i), NOW + u128::from(i))
                .expect("new endpoint");
        }
        assert_eq!(table.len(), 3);
        // Endpoints evicted while live leave a floor: their nonces stay refused...
        assert_eq!(
            table.record(&claim("k0", "u", n), NOW + 20),
            Err(NonceError::NotIncreasing)
        );
        assert_eq!(
            table.record(&claim("other", "u", n + 5), NOW + 20),
            Err(NonceError::NotIncreasing)
        );
        // ...until they are stale; then everything old is gone.
        let later = NOW + 70 * SECOND;
        table
            .record(&claim("late", "u", later as u64), later)
            .expect("new");
        assert_eq!(table.len(), 1);
        assert_eq!(
            table
                .counters()
                .early_evictions_unregistered
                .load(Ordering::Relaxed),
            7
        );
    }

    #[test]
    fn unregistered_floods_never_touch_registered_keys() {
        let table = NonceTable::new(limits(3, Duration::from_secs(1)));
        let n = (NOW - SECOND) as u64;
        table
            .record(&registered("v", "u", n), NOW)
            .expect("validator");
        for i in 0..20u64 {
            table
                .record(&claim(&format!("x{i}"), "u", u64::MAX - 100 + i), NOW)
                .expect("flood");
        }
        // The validator's endpoint is still known, and its new endpoints are not below any
        // floor the flood raised.
        assert_eq!(
            table.record(&registered("v", "u", n), NOW),
            Err(NonceError::NotIncreasing)
        );
        table
            .record(&registered("v", "u", n + 1), NOW)
            .expect("next");
        table
            .record(&registered("v", "w", n), NOW)
            .expect("new uuid");
        // The flood's floor applies to unregistered keys only.
        assert_eq!(
            table.record(&claim("y", "u", n + 2), NOW),
            Err(NonceError::NotIncreasing)
        );
    }

    #[test]
    fn a_registered_key_fills_only_its_own_table() {
        let table = NonceTable::new(limits(3, Duration::from_secs(1)));
        let n = (NOW - SECOND) as u64;
        table
            .record(&registered("v", "u", n), NOW)
            .expect("validator");
        for i in 0..10u64 {
            table
                .record(
                    &registered("low", &format!("u{i}"), u64::MAX - 100 + i),
                    NOW,
                )
                .expect("flood of a low-stake key");
        }
        table
            .record(&registered("v", "w", n + 1), NOW)
            .expect("new uuid");
        table
            .record(&registered("v", "u", n + 2), NOW)
            .expect("known");
        // The low-stake key's own floor refuses its own evicted endpoints.
        assert_eq!(
            table.record(&registered("low", "u0", u64::MAX - 100), NOW),
            Err(NonceError::NotIncreasing)
        );
        assert_eq!(
            table.size(),
            NonceTableSize {
                unregistered_endpoints: 0,
                registered_endpoints: 5,
                registered_keys: 2,
            }
        );
    }

    #[test]
    fn registered_keys_beyond_the_limit_share_the_unregistered_table() {
        let table = NonceTable::new(limits(3, Duration::from_secs(1)));
        let n = (NOW - SECOND) as u64;
        for i in 0..6 {
            table
                .record(&registered(&format!("r{i}"), "u", n), NOW)
                .expect("new key");
        }
        let size = table.size();
        assert_eq!((size.registered_keys, size.unregistered_endpoints), (4, 2));
        // Known endpoints stay known wherever they are.
        assert_eq!(
            table.record(&registered("r5", "u", n), NOW),
            Err(NonceError::NotIncreasing)
        );
    }

    #[test]
    fn an_endpoint_of_a_key_that_registered_later_stays_known() {
        let table = strict();
        let n = (NOW - SECOND) as u64;
        table
            .record(&claim("k", "u", n), NOW)
            .expect("unregistered");
        assert_eq!(
            table.record(&registered("k", "u", n), NOW),
            Err(NonceError::NotIncreasing)
        );
        table
            .record(&registered("k", "v", n), NOW)
            .expect("registered");
        assert_eq!(
            table.record(&claim("k", "v", n), NOW),
            Err(NonceError::NotIncreasing)
        );
    }

    #[test]
    fn monotonic_endpoints_never_expire() {
        let table = NonceTable::new(limits(3, Duration::ZERO));
        let old = NonceClaim {
            dendrite_version: Some(644),
            ..registered("v", "u", 757_512_466_505)
        };
        table.record(&old, NOW).expect("first");
        let much_later = NOW + 1_000_000 * SECOND;
        for version in [Some(644), None, Some(10_005_000)] {
            let replay = NonceClaim {
                dendrite_version: version,
                ..old
            };
            assert!(table.record(&replay, much_later).is_err(), "{version:?}");
        }
        // Evicted early by its own key's traffic: refused below the floor, forever.
        for i in 0..3 {
            let next = NonceClaim {
                uuid: ["a", "b", "c"][i],
                nonce: 757_512_466_506 + i as u64,
                ..old
            };
            table.record(&next, much_later).expect("more endpoints");
        }
        assert_eq!(
            table.record(&old, much_later * 2),
            Err(NonceError::NotIncreasing)
        );
    }

    #[test]
    fn time_endpoints_expire_once_stale() {
        let table = strict();
        let n = (NOW - SECOND) as u64;
        table.record(&registered("v", "u", n), NOW).expect("first");
        // 4 s + 60 s after the nonce, a replay is stale: the sweep forgets the endpoint.
        let later = NOW + 70 * SECOND;
        table
            .record(&registered("w", "u", later as u64), later)
            .expect("another key");
        assert_eq!(table.len(), 1);
        assert!(matches!(
            table.record(&registered("v", "u", n), later),
            Err(NonceError::Stale { .. })
        ));
    }

    #[test]
    fn a_far_future_nonce_is_remembered_until_it_is_stale() {
        let table = strict();
        let future = (NOW + 3600 * SECOND) as u64;
        table
            .record(&registered("v", "u", future), NOW)
            .expect("first");
        let later = NOW + 600 * SECOND;
        table
            .record(&registered("w", "u", later as u64), later)
            .expect("sweep");
        assert_eq!(
            table.record(&registered("v", "u", future), later),
            Err(NonceError::NotIncreasing)
        );
    }

    #[test]
    fn sightings_at_the_same_instant_never_evict_a_live_endpoint() {
        let table = NonceTable::new(limits(2, Duration::from_secs(1)));
        let n = (NOW - 1_000) as u64;
        for i in 0..50 {
            table
                .record(&claim("a", "u", n + i), NOW)
                .expect("increasing");
        }
        assert_eq!(
            table.record(&claim("a", "u", n), NOW),
            Err(NonceError::NotIncreasing)
        );
        assert_eq!(table.len(), 1);
    }
}
