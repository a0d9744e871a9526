//! Priority preemption: the running requests a scheduler may cancel for a better waiter.
//!
//! With `--miner.priority.preempt` on, a waiter that finds every worker slot busy takes the
//! slot of the lowest-priority running request when its own priority exceeds that one's by
//! more than `--miner.priority.preempt_margin`. The victim is told through its [`Slot`]
//! (crate::scheduler::Slot): the pipeline drops its backend call (or stream) and answers
//! its caller [`MinerError::Preempted`](crate::MinerError::Preempted); its slot, given back,
//! goes to the best waiter. Among running requests of the lowest priority the most recently
//! granted one is taken: it has done the least work.

use std::collections::HashMap;

use tokio::sync::oneshot;

/// A request holding a worker slot.
#[derive(Debug)]
pub(crate) struct Running {
    /// Its priority.
    pub(crate) priority: f64,
    /// Tells its slot it was preempted; `None` once it was.
    pub(crate) notify: Option<oneshot::Sender<()>>,
}

/// The running requests, by slot id (ids grow with each grant).
#[derive(Debug, Default)]
pub(crate) struct RunningSet {
    slots: HashMap<u64, Running>,
    next_id: u64,
    /// Preemptions signalled, over the scheduler's life.
    preemptions: u64,
}

impl RunningSet {
    /// Slots held (preempted ones included, until they are given back).
    pub(crate) fn len(&self) -> usize {
        self.slots.len()
    }

    /// Preemptions signalled so far.
    pub(crate) fn preemptions(&self) -> u64 {
        self.preemptions
    }

    /// Reserves the id of the next grant.
    pub(crate) fn next_id(&mut self) -> u64 {
        let id = self.next_id;
        self.next_id += 1;
        id
    }

    /// Records the grant of slot `id` to a request of `priority`.
    pub(crate) fn insert(&mut self, id: u64, priority: f64, notify: oneshot::Sender<()>) {
        self.slots.insert(
            id,
            Running {
                priority,
                notify: Some(notify),
            },
        );
    }

    /// Forgets slot `id` (given back).
    pub(crate) fn remove(&mut self, id: u64) {
        self.slots.remove(&id);
    }

    /// Slots preempted but not given back yet: their waiters are about to be served.
    pub(crate) fn pending(&self) -> usize {
        self.slots.values().filter(|r| r.notify.is_none()).count()
    }

    /// The slot a waiter of `priority` would preempt: the lowest-priority running request
    /// not preempted yet whose priority `margin` does not bring up to `priority` (the most
    /// recently granted among equals). `None`: nothing to preempt.
    pub(crate) fn victim(&self, priority: f64, margin: f64) -> Option<u64> {
        self.slots
            .iter()
            .filter(|(_, r)| r.notify.is_some())
            .min_by(|(a_id, a), (b_id, b)| a.priority.total_cmp(&b.priority).then(b_id.cmp(a_id)))
            .filter(|(_, r)| priority > r.priority + margin)
            .map(|(id, _)| *id)
    }

    /// Tells slot `id` it is preempted. Returns whether it was running and not preempted
    /// already.
    pub(crate) fn preempt(&mut self, id: u64) -> bool {
        let Some(notify) = self.slots.get_mut(&id).and_then(|r| r.notify.take()) else {
            return false;
        };
        self.preemptions += 1;
        // A slot whose holder is gone is about to be given back anyway.
        let _ = notify.send(());
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(priorities: &[f64]) -> RunningSet {
        let mut set = RunningSet::default();
        for &p in priorities {
            let id = set.next_id();
            let (tx, _rx) = oneshot::channel();
            set.insert(id, p, tx);
        }
        set
    }

    #[test]
    fn the_lowest_and_newest_is_the_victim() {
        let s = set(&[1.0, 0.5, 3.0, 0.5]);
        assert_eq!(s.victim(10.0, 0.0), Some(3));
        assert_eq!(s.victim(0.5, 0.0), None, "equal priority never preempts");
        assert_eq!(s.victim(0.4, 0.0), None);
    }

    #[test]
    fn the_margin_is_honoured() {
        let s = set(&[1.0]);
        assert_eq!(s.victim(11.0, 10.0), None);
        assert_eq!(s.victim(11.5, 10.0), Some(0));
    }

    #[test]
    fn a_slot_is_preempted_once() {
        let mut s = set(&[1.0, 2.0]);
        assert!(s.preempt(0));
        assert!(!s.preempt(0));
        assert_eq!((s.pending(), s.preemptions()), (1, 1));
        assert_eq!(s.victim(10.0, 0.0), Some(1));
        s.remove(0);
        assert_eq!((s.len(), s.pending()), (1, 0));
    }
}
