//! The seen-nonce store: remembers accepted `(hotkey, nonce)` pairs for as long as they could
//! still pass the freshness check, in bounded memory.
//!
//! Like Python's `InMemoryNonceStore`, entries expire by a monotonic clock `retention` after
//! they were stored (retention is at least the freshness window). Unlike it, the store holds
//! at most `capacity` entries: when full, it forgets the oldest one early and, so that the
//! forgotten request cannot be replayed, refuses every nonce at or below the highest nonce it
//! forgot early, until that entry would have expired anyway.

use std::collections::{HashSet, VecDeque};
use std::sync::Arc;

use parking_lot::Mutex;

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

type Key = (Arc<str>, i64);

/// A nonce the store forgot before its time, and until when that matters.
#[derive(Debug, Clone, Copy)]
struct Forgotten {
    nonce: i64,
    until_ns: u64,
}

#[derive(Debug, Default)]
struct Entries {
    seen: HashSet<Key>,
    expiry: VecDeque<(u64, Key)>,
    forgotten: Option<Forgotten>,
}

/// A bounded, thread-safe `(hotkey, nonce)` store.
#[derive(Debug)]
pub(crate) struct ReplayStore {
    capacity: usize,
    retention_ns: u64,
    entries: Mutex<Entries>,
}

impl ReplayStore {
    /// A store of at most `capacity` (≥ 1) entries, each kept `retention_ns` after it is stored.
    pub(crate) fn new(capacity: usize, retention_ns: u64) -> ReplayStore {
        ReplayStore {
            capacity: capacity.max(1),
            retention_ns,
            entries: Mutex::new(Entries::default()),
        }
    }

    /// Records `(hotkey, nonce)` unless it was seen or cannot be checked, at monotonic time
    /// `monotonic_ns`.
    pub(crate) fn check_and_store(&self, hotkey: &str, nonce: i64, monotonic_ns: u64) -> Admission {
        let mut entries = self.entries.lock();
        let Entries {
            seen,
            expiry,
            forgotten,
        } = &mut *entries;
        while let Some((until, _)) = expiry.front() {
            if *until > monotonic_ns {
                break;
            }
            if let Some((_, key)) = expiry.pop_front() {
                seen.remove(&key);
            }
        }
        if forgotten.is_some_and(|f| f.until_ns <= monotonic_ns) {
            *forgotten = None;
        }
        if forgotten.is_some_and(|f| nonce <= f.nonce) {
            return Admission::BelowForgotten;
        }
        let key: Key = (Arc::from(hotkey), nonce);
        if seen.contains(&key) {
            return Admission::Replayed;
        }
        seen.insert(key.clone());
        expiry.push_back((monotonic_ns.saturating_add(self.retention_ns), key));
        while seen.len() > self.capacity {
            let Some((until_ns, (hotkey, nonce))) = expiry.pop_front() else {
                break;
            };
            seen.remove(&(Arc::clone(&hotkey), nonce));
            *forgotten = Some(match *forgotten {
                Some(f) => Forgotten {
                    nonce: f.nonce.max(nonce),
                    until_ns: f.until_ns.max(until_ns),
                },
                None => Forgotten { nonce, until_ns },
            });
        }
        Admission::Fresh
    }

    /// How many pairs are remembered.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.entries.lock().seen.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pair_is_accepted_once_per_retention() {
        let store = ReplayStore::new(10, 100);
        assert_eq!(store.check_and_store("a", 1, 0), Admission::Fresh);
        assert_eq!(store.check_and_store("a", 1, 99), Admission::Replayed);
        // Another hotkey with the same nonce, or another nonce, is a different request.
        assert_eq!(store.check_and_store("b", 1, 99), Admission::Fresh);
        assert_eq!(store.check_and_store("a", 2, 99), Admission::Fresh);
        // Expired (retention is counted from when the pair was stored).
        assert_eq!(store.check_and_store("a", 1, 100), Admission::Fresh);
        assert_eq!(store.len(), 3);
    }

    #[test]
    fn expired_entries_are_dropped() {
        let store = ReplayStore::new(10, 100);
        for nonce in 0..5 {
            assert_eq!(store.check_and_store("a", nonce, 0), Admission::Fresh);
        }
        assert_eq!(store.check_and_store("a", 99, 1_000), Admission::Fresh);
        assert_eq!(store.len(), 1);
    }

    #[test]
    fn a_full_store_forgets_the_oldest_and_refuses_at_or_below_it() {
        let store = ReplayStore::new(2, 100);
        assert_eq!(store.check_and_store("a", 10, 0), Admission::Fresh);
        assert_eq!(store.check_and_store("b", 20, 1), Admission::Fresh);
        assert_eq!(store.check_and_store("c", 30, 2), Admission::Fresh);
        assert_eq!(store.len(), 2);
        // ("a", 10) was forgotten early: its replay, and anything at or below 10, is refused.
        assert_eq!(store.check_and_store("a", 10, 3), Admission::BelowForgotten);
        assert_eq!(store.check_and_store("z", 9, 3), Admission::BelowForgotten);
        assert_eq!(store.check_and_store("b", 20, 3), Admission::Replayed);
        // Storing ("d", 11) forgets ("b", 20), stored at 1: the bar rises to 20 until 101.
        assert_eq!(store.check_and_store("d", 11, 3), Admission::Fresh);
        assert_eq!(
            store.check_and_store("z", 19, 100),
            Admission::BelowForgotten
        );
        // Once the forgotten entries would have expired, the bar is lifted.
        assert_eq!(store.check_and_store("z", 9, 101), Admission::Fresh);
    }

    #[test]
    fn the_bar_is_the_highest_nonce_forgotten() {
        let store = ReplayStore::new(1, 100);
        assert_eq!(store.check_and_store("a", 50, 0), Admission::Fresh);
        assert_eq!(store.check_and_store("b", 40, 1), Admission::Fresh);
        assert_eq!(store.check_and_store("c", 60, 2), Admission::Fresh);
        // Forgotten: 50 then 40; the bar stays at 50.
        assert_eq!(store.check_and_store("d", 45, 3), Admission::BelowForgotten);
        assert_eq!(store.check_and_store("d", 51, 3), Admission::Fresh);
    }
}
