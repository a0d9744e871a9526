//! The seen-nonce store: remembers accepted `(hotkey, nonce)` pairs for as long as they could
//! still pass the freshness check, in bounded memory.
//!
//! Like Python's `InMemoryNonceStore`, entries expire by a monotonic clock `retention` after
//! they were stored (retention is at least the freshness window). Unlike it, memory is
//! bounded, per class of caller:
//!
//! * each registered (or whitelisted) hotkey has a store of its own, at most
//!   `per_key_capacity` pairs (`--btauth.replay_capacity_per_key`), for at most `max_keys`
//!   hotkeys (`--btauth.replay_max_keys`, more than a subnet has uids);
//! * all other hotkeys share one store of `shared_capacity` pairs
//!   (`--btauth.replay_capacity`).
//!
//! When a store is full it forgets its oldest pair early and, so that the forgotten request
//! cannot be replayed, refuses every nonce at or below the highest nonce it forgot early,
//! until that pair would have expired anyway. That bar only binds the keys of the store that
//! set it: nothing an unregistered key sends can refuse a registered validator's request.

use std::collections::{HashMap, HashSet, VecDeque};
use std::hash::Hash;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use parking_lot::Mutex;

use crate::caller_class::CallerClass;

/// What the store says about a verified request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Admission {
    /// Never seen: now recorded.
    Fresh,
    /// Already accepted inside the window.
    Replayed,
    /// At or below a nonce the store had to forget early: it cannot tell.
    BelowForgotten,
}

/// The bounds of a [`ReplayStore`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ReplayLimits {
    /// Pairs of unregistered keys, all together.
    pub(crate) shared_capacity: usize,
    /// Pairs of one registered key.
    pub(crate) per_key_capacity: usize,
    /// Registered keys with a store of their own.
    pub(crate) max_keys: usize,
    /// How long a pair is kept after it is stored, monotonic nanoseconds.
    pub(crate) retention_ns: u64,
}

/// Counters of a `ReplayStore`, for `/metrics`.
#[derive(Debug, Default)]
pub struct ReplayCounters {
    /// Pairs of unregistered keys forgotten before they expired.
    pub early_forgets_unregistered: AtomicU64,
    /// Pairs of registered keys forgotten before they expired.
    pub early_forgets_registered: AtomicU64,
}

/// A nonce the store forgot before its time, and until when that matters.
#[derive(Debug, Clone, Copy)]
struct Forgotten {
    nonce: i64,
    until_ns: u64,
}

/// One bounded store of keys `K`, oldest forgotten first.
#[derive(Debug)]
struct Store<K> {
    capacity: usize,
    seen: HashSet<K>,
    /// (expiry, nonce, key), in storing order.
    expiry: VecDeque<(u64, i64, K)>,
    forgotten: Option<Forgotten>,
}

impl<K: Hash + Eq + Clone> Store<K> {
    fn new(capacity: usize) -> Store<K> {
        Store {
            capacity: capacity.max(1),
            seen: HashSet::new(),
            expiry: VecDeque::new(),
            forgotten: None,
        }
    }

    /// Drops expired pairs and an expired bar.
    fn expire(&mut self, now_ns: u64) {
        while let Some((until, _, _)) = self.expiry.front() {
            if *until > now_ns {
                break;
            }
            if let Some((_, _, key)) = self.expiry.pop_front() {
                self.seen.remove(&key);
            }
        }
        if self.forgotten.is_some_and(|f| f.until_ns <= now_ns) {
            self.forgotten = None;
        }
    }

    fn below_bar(&self, nonce: i64) -> bool {
        self.forgotten.is_some_and(|f| nonce <= f.nonce)
    }

    /// Stores `key`; returns how many pairs had to be forgotten early.
    fn insert(&mut self, key: K, nonce: i64, until_ns: u64) -> u64 {
        self.seen.insert(key.clone());
        self.expiry.push_back((until_ns, nonce, key));
        let mut early = 0;
        while self.seen.len() > self.capacity {
            let Some((until_ns, nonce, key)) = self.expiry.pop_front() else {
                break;
            };
            self.seen.remove(&key);
            early += 1;
            self.forgotten = Some(match self.forgotten {
                Some(f) => Forgotten {
                    nonce: f.nonce.max(nonce),
                    until_ns: f.until_ns.max(until_ns),
                },
                None => Forgotten { nonce, until_ns },
            });
        }
        early
    }

    fn is_empty(&self) -> bool {
        self.seen.is_empty() && self.forgotten.is_none()
    }
}

#[derive(Debug)]
struct Stores {
    shared: Store<(Arc<str>, i64)>,
    keyed: HashMap<Arc<str>, Store<i64>>,
    next_sweep_ns: u64,
}

/// A bounded, thread-safe `(hotkey, nonce)` store (see the module documentation).
#[derive(Debug)]
pub(crate) struct ReplayStore {
    limits: ReplayLimits,
    counters: Arc<ReplayCounters>,
    stores: Mutex<Stores>,
}

impl ReplayStore {
    /// An empty store with `limits`.
    pub(crate) fn new(limits: ReplayLimits) -> ReplayStore {
        ReplayStore {
            counters: Arc::new(ReplayCounters::default()),
            stores: Mutex::new(Stores {
                shared: Store::new(limits.shared_capacity),
                keyed: HashMap::new(),
                next_sweep_ns: 0,
            }),
            limits,
        }
    }

    /// The counters, shared.
    pub(crate) fn counters(&self) -> Arc<ReplayCounters> {
        Arc::clone(&self.counters)
    }

    /// Records `(hotkey, nonce)` of a caller of `class` unless it was seen or cannot be
    /// checked, at monotonic time `monotonic_ns`.
    pub(crate) fn check_and_store(
        &self,
        hotkey: &str,
        nonce: i64,
        class: CallerClass,
        monotonic_ns: u64,
    ) -> Admission {
        let mut guard = self.stores.lock();
        let stores = &mut *guard;
        if monotonic_ns >= stores.next_sweep_ns {
            // Registered keys that stopped sending: their stores empty out and go.
            stores.next_sweep_ns = monotonic_ns.saturating_add(self.limits.retention_ns);
            stores.keyed.retain(|_, store| {
                store.expire(monotonic_ns);
                !store.is_empty()
            });
        }
        stores.shared.expire(monotonic_ns);
        let keys = stores.keyed.len();
        let mut keyed = stores.keyed.get_mut(hotkey);
        if let Some(store) = keyed.as_deref_mut() {
            store.expire(monotonic_ns);
        }
        // The shared store's bar binds the keys it would hold.
        let in_shared =
            class == CallerClass::Unregistered || (keyed.is_none() && keys >= self.limits.max_keys);
        let keyed_bar = keyed.as_deref().is_some_and(|s| s.below_bar(nonce));
        if keyed_bar || (in_shared && stores.shared.below_bar(nonce)) {
            return Admission::BelowForgotten;
        }
        let shared_key: (Arc<str>, i64) = (Arc::from(hotkey), nonce);
        if keyed.as_deref().is_some_and(|s| s.seen.contains(&nonce))
            || stores.shared.seen.contains(&shared_key)
        {
            return Admission::Replayed;
        }
        let until_ns = monotonic_ns.saturating_add(self.limits.retention_ns);
        let (early, counter) = if in_shared {
            let early = stores.shared.insert(shared_key, nonce, until_ns);
            (early, &self.counters.early_forgets_unregistered)
        } else {
            let capacity = self.limits.per_key_capacity;
            let store = stores
                .keyed
                .entry(shared_key.0)
                .or_insert_with(|| Store::new(capacity));
            (
                store.insert(nonce, nonce, until_ns),
                &self.counters.early_forgets_registered,
            )
        };
        if early > 0 {
            counter.fetch_add(early, Ordering::Relaxed);
        }
        Admission::Fresh
    }

    /// How many pairs are remembered.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        let stores = self.stores.lock();
        stores.shared.seen.len() + stores.keyed.values().map(|s| s.seen.len()).sum::<usize>()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const U: CallerClass = CallerClass::Unregistered;
    const R: CallerClass = CallerClass::Registered;

    fn store(capacity: usize, retention_ns: u64) -> ReplayStore {
        ReplayStore::new(ReplayLimits {
            shared_capacity: capacity,
            per_key_capacity: capacity,
            max_keys: 2,
            retention_ns,
        })
    }

    #[test]
    fn a_pair_is_accepted_once_per_retention() {
        let store = store(10, 100);
        assert_eq!(store.check_and_store("a", 1, U, 0), Admission::Fresh);
        assert_eq!(store.check_and_store("a", 1, U, 99), Admission::Replayed);
        // Another hotkey with the same nonce, or another nonce, is a different request.
        assert_eq!(store.check_and_store("b", 1, U, 99), Admission::Fresh);
        assert_eq!(store.check_and_store("a", 2, U, 99), Admission::Fresh);
        // Expired (retention is counted from when the pair was stored).
        assert_eq!(store.check_and_store("a", 1, U, 100), Admission::Fresh);
        assert_eq!(store.len(), 3);
    }

    #[test]
    fn expired_entries_are_dropped() {
        let store = store(10, 100);
        for nonce in 0..5 {
            assert_eq!(store.check_and_store("a", nonce, U, 0), Admission::Fresh);
            assert_eq!(store.check_and_store("r", nonce, R, 0), Admission::Fresh);
        }
        assert_eq!(store.check_and_store("a", 99, U, 1_000), Admission::Fresh);
        assert_eq!(store.len(), 1);
    }

    #[test]
    fn a_full_store_forgets_the_oldest_and_refuses_at_or_below_it() {
        let store = store(2, 100);
        assert_eq!(store.check_and_store("a", 10, U, 0), Admission::Fresh);
        assert_eq!(store.check_and_store("b", 20, U, 1), Admission::Fresh);
        assert_eq!(store.check_and_store("c", 30, U, 2), Admission::Fresh);
        assert_eq!(store.len(), 2);
        // ("a", 10) was forgotten early: its replay, and anything at or below 10, is refused.
        assert_eq!(
            store.check_and_store("a", 10, U, 3),
            Admission::BelowForgotten
        );
        assert_eq!(
            store.check_and_store("z", 9, U, 3),
            Admission::BelowForgotten
        );
        assert_eq!(store.check_and_store("b", 20, U, 3), Admission::Replayed);
        // Storing ("d", 11) forgets ("b", 20), stored at 1: the bar rises to 20 until 101.
        assert_eq!(store.check_and_store("d", 11, U, 3), Admission::Fresh);
        assert_eq!(
            store.check_and_store("z", 19, U, 100),
            Admission::BelowForgotten
        );
        // Once the forgotten entries would have expired, the bar is lifted.
        assert_eq!(store.check_and_store("z", 9, U, 101), Admission::Fresh);
        assert_eq!(
            store
                .counters()
                .early_forgets_unregistered
                .load(Ordering::Relaxed),
            3,
            "a, b, then c (to make room for z)"
        );
    }

    #[test]
    fn the_bar_is_the_highest_nonce_forgotten() {
        let store = store(1, 100);
        assert_eq!(store.check_and_store("a", 50, U, 0), Admission::Fresh);
        assert_eq!(store.check_and_store("b", 40, U, 1), Admission::Fresh);
        assert_eq!(store.check_and_store("c", 60, U, 2), Admission::Fresh);
        // Forgotten: 50 then 40; the bar stays at 50.
        assert_eq!(
            store.check_and_store("d", 45, U, 3),
            Admission::BelowForgotten
        );
        assert_eq!(store.check_and_store("d", 51, U, 3), Admission::Fresh);
    }

    #[test]
    fn unregistered_floods_never_refuse_a_registered_key() {
        let store = store(3, 100);
        assert_eq!(store.check_and_store("v", 10, R, 0), Admission::Fresh);
        for i in 0..20 {
            assert_eq!(
                store.check_and_store(&format!("x{i}"), 1_000 + i, U, 1),
                Admission::Fresh
            );
        }
        // The bar of the shared store binds unregistered keys only.
        assert_eq!(
            store.check_and_store("y", 500, U, 2),
            Admission::BelowForgotten
        );
        assert_eq!(store.check_and_store("v", 11, R, 2), Admission::Fresh);
        assert_eq!(store.check_and_store("v", 10, R, 2), Admission::Replayed);
    }

    #[test]
    fn a_registered_key_fills_only_its_own_store() {
        let store = store(3, 100);
        assert_eq!(store.check_and_store("v", 10, R, 0), Admission::Fresh);
        for i in 0..20 {
            assert_eq!(
                store.check_and_store("low", 1_000 + i, R, 1),
                Admission::Fresh
            );
        }
        assert_eq!(
            store.check_and_store("low", 1_000, R, 2),
            Admission::BelowForgotten
        );
        assert_eq!(store.check_and_store("v", 5, R, 2), Admission::Fresh);
        assert_eq!(
            store
                .counters()
                .early_forgets_registered
                .load(Ordering::Relaxed),
            17
        );
    }

    #[test]
    fn registered_keys_beyond_the_limit_share_the_unregistered_store() {
        let store = store(1, 100);
        assert_eq!(store.check_and_store("r0", 1, R, 0), Admission::Fresh);
        assert_eq!(store.check_and_store("r1", 1, R, 0), Admission::Fresh);
        // No room for a third key's store: r2 and r3 share the store of unregistered keys,
        // and its bar.
        assert_eq!(store.check_and_store("r2", 5, R, 0), Admission::Fresh);
        assert_eq!(store.check_and_store("r3", 6, R, 0), Admission::Fresh);
        assert_eq!(
            store.check_and_store("r2", 5, R, 0),
            Admission::BelowForgotten
        );
        // A pair stored when the key was unregistered is still a replay once it registered.
        assert_eq!(store.check_and_store("r0", 7, U, 0), Admission::Fresh);
        assert_eq!(store.check_and_store("r0", 7, R, 0), Admission::Replayed);
    }
}
