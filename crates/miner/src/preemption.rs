//! Priority preemption: the running requests a scheduler may cancel for a better waiter.
//!
//! With `--miner.priority.preempt` on, a waiter that finds every worker slot busy takes the
//! slot of the lowest-priority running request when its own priority exceeds that one's by
//! more than `--miner.priority.preempt_margin`. The victim is told through its [`Slot`]
//! (crate::scheduler::Slot): the pipeline drops its backend call (or stream) and answers
//! its caller [`MinerError::Preempted`](crate::MinerError::Preempted); its slot, given back,
//! goes to the best waiter. Among running requests of the lowest priority the most recently
//! granted one is taken: it has done the least work.
//!
//! A preemption is *signalled* for one waiter, then *acknowledged* by its victim (the slot's
//! holder saw it and drops its work). In between it can be called off: when the waiter it
//! was for leaves the queue first, e.g. because another slot freed naturally and was granted
//! to it, or because it gave up. The victim then runs on, rather than being dropped for a
//! slot nobody needs any more. Only acknowledged preemptions count.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::Waker;

use futures::task::AtomicWaker;

use crate::rank::Rank;

/// How a slot's holder learns that its slot is wanted: raised (and its task woken) when a
/// preemption is signalled, lowered when it is called off.
#[derive(Debug, Default)]
pub(crate) struct Signal {
    raised: AtomicBool,
    waker: AtomicWaker,
}

impl Signal {
    /// Whether a preemption is signalled now (the scheduler's word is final, see
    /// [`RunningSet::acknowledge`]).
    pub(crate) fn raised(&self) -> bool {
        self.raised.load(Ordering::Acquire)
    }

    /// Wakes `waker` at the next raise.
    pub(crate) fn register(&self, waker: &Waker) {
        self.waker.register(waker);
    }

    fn raise(&self) {
        self.raised.store(true, Ordering::Release);
        self.waker.wake();
    }

    fn lower(&self) {
        self.raised.store(false, Ordering::Release);
    }
}

/// Where a running request stands with preemption.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Preemption {
    /// Not preempted.
    None,
    /// Signalled for the waiter at this rank; not acted on yet, so it can be called off.
    Signalled(Rank),
    /// Its holder acted on it: the slot comes back soon.
    Acknowledged,
}

/// A request holding a worker slot.
#[derive(Debug)]
pub(crate) struct Running {
    /// Its priority.
    pub(crate) priority: f64,
    signal: Arc<Signal>,
    preemption: Preemption,
}

/// The running requests, by slot id (ids grow with each grant).
#[derive(Debug, Default)]
pub(crate) struct RunningSet {
    slots: HashMap<u64, Running>,
    next_id: u64,
    /// Preemptions acknowledged, over the scheduler's life.
    preemptions: u64,
    /// Preemptions called off before their victim acted on them.
    called_off: u64,
}

impl RunningSet {
    /// Slots held (preempted ones included, until they are given back).
    pub(crate) fn len(&self) -> usize {
        self.slots.len()
    }

    /// Preemptions acknowledged so far.
    pub(crate) fn preemptions(&self) -> u64 {
        self.preemptions
    }

    /// Preemptions called off so far.
    pub(crate) fn called_off(&self) -> u64 {
        self.called_off
    }

    /// Reserves the id of the next grant.
    pub(crate) fn next_id(&mut self) -> u64 {
        let id = self.next_id;
        self.next_id += 1;
        id
    }

    /// Records the grant of slot `id` to a request of `priority`, told through `signal`.
    pub(crate) fn insert(&mut self, id: u64, priority: f64, signal: Arc<Signal>) {
        self.slots.insert(
            id,
            Running {
                priority,
                signal,
                preemption: Preemption::None,
            },
        );
    }

    /// The priority of the request holding slot `id`.
    pub(crate) fn priority(&self, id: u64) -> Option<f64> {
        self.slots.get(&id).map(|r| r.priority)
    }

    /// Forgets slot `id` (given back).
    pub(crate) fn remove(&mut self, id: u64) {
        self.slots.remove(&id);
    }

    /// Slots preempted but not given back yet, acknowledged or not.
    #[cfg(test)]
    pub(crate) fn pending(&self) -> usize {
        self.slots
            .values()
            .filter(|r| r.preemption != Preemption::None)
            .count()
    }

    /// Preempted slots whose holder acted on it, not given back yet: they will go to the
    /// best waiters.
    pub(crate) fn acknowledged(&self) -> usize {
        self.slots
            .values()
            .filter(|r| r.preemption == Preemption::Acknowledged)
            .count()
    }

    /// Whether a signalled preemption is for the waiter at `rank`.
    pub(crate) fn covers(&self, rank: &Rank) -> bool {
        self.slots
            .values()
            .any(|r| r.preemption == Preemption::Signalled(*rank))
    }

    /// The slot a waiter of `priority` would preempt: the lowest-priority running request
    /// not preempted yet whose priority `margin` does not bring up to `priority` (the most
    /// recently granted among equals). `None`: nothing to preempt.
    pub(crate) fn victim(&self, priority: f64, margin: f64) -> Option<u64> {
        self.slots
            .iter()
            .filter(|(_, r)| r.preemption == Preemption::None)
            .min_by(|(a_id, a), (b_id, b)| a.priority.total_cmp(&b.priority).then(b_id.cmp(a_id)))
            .filter(|(_, r)| priority > r.priority + margin)
            .map(|(id, _)| *id)
    }

    /// Signals slot `id` that the waiter at `waiter` takes it. Returns whether it was
    /// running and not preempted already.
    pub(crate) fn preempt(&mut self, id: u64, waiter: Rank) -> bool {
        let Some(running) = self.slots.get_mut(&id) else {
            return false;
        };
        if running.preemption != Preemption::None {
            return false;
        }
        running.preemption = Preemption::Signalled(waiter);
        running.signal.raise();
        true
    }

    /// Slot `id`'s holder acts on its preemption: from now on it stands. Returns whether
    /// slot `id` is preempted (`false`: it was never, or the preemption was called off).
    pub(crate) fn acknowledge(&mut self, id: u64) -> bool {
        let Some(running) = self.slots.get_mut(&id) else {
            return false;
        };
        match running.preemption {
            Preemption::None => false,
            Preemption::Acknowledged => true,
            Preemption::Signalled(_) => {
                running.preemption = Preemption::Acknowledged;
                self.preemptions += 1;
                true
            }
        }
    }

    /// Calls off the signalled preemptions whose waiter is no longer `waiting` (served by
    /// a slot that freed otherwise, or gone): their victims run on. Returns how many.
    pub(crate) fn call_off(&mut self, waiting: impl Fn(&Rank) -> bool) -> usize {
        let mut count = 0;
        for running in self.slots.values_mut() {
            if let Preemption::Signalled(rank) = running.preemption
                && !waiting(&rank)
            {
                running.preemption = Preemption::None;
                running.signal.lower();
                count += 1;
            }
        }
        self.called_off += count as u64;
        count
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rank(seq: u64) -> Rank {
        Rank {
            priority: 10.0,
            seq,
        }
    }

    fn set(priorities: &[f64]) -> (RunningSet, Vec<Arc<Signal>>) {
        let mut set = RunningSet::default();
        let mut signals = Vec::new();
        for &p in priorities {
            let id = set.next_id();
            let signal = Arc::new(Signal::default());
            set.insert(id, p, Arc::clone(&signal));
            signals.push(signal);
        }
        (set, signals)
    }

    #[test]
    fn the_lowest_and_newest_is_the_victim() {
        let (s, _) = set(&[1.0, 0.5, 3.0, 0.5]);
        assert_eq!(s.victim(10.0, 0.0), Some(3));
        assert_eq!(s.victim(0.5, 0.0), None, "equal priority never preempts");
        assert_eq!(s.victim(0.4, 0.0), None);
    }

    #[test]
    fn the_margin_is_honoured() {
        let (s, _) = set(&[1.0]);
        assert_eq!(s.victim(11.0, 10.0), None);
        assert_eq!(s.victim(11.5, 10.0), Some(0));
    }

    #[test]
    fn a_slot_is_preempted_once() {
        let (mut s, signals) = set(&[1.0, 2.0]);
        assert!(s.preempt(0, rank(7)));
        assert!(!s.preempt(0, rank(8)));
        assert!(signals[0].raised() && !signals[1].raised());
        assert!(s.covers(&rank(7)) && !s.covers(&rank(8)));
        assert_eq!((s.pending(), s.preemptions()), (1, 0), "not acted on yet");
        assert_eq!(s.victim(10.0, 0.0), Some(1));
        assert!(s.acknowledge(0));
        assert!(s.acknowledge(0));
        assert_eq!((s.pending(), s.acknowledged(), s.preemptions()), (1, 1, 1));
        assert!(!s.acknowledge(1), "never preempted");
        s.remove(0);
        assert_eq!((s.len(), s.pending()), (1, 0));
    }

    #[test]
    fn a_preemption_whose_waiter_left_is_called_off_until_acted_on() {
        let (mut s, signals) = set(&[1.0, 2.0]);
        assert!(s.preempt(0, rank(7)));
        assert_eq!(s.call_off(|r| r.seq == 7), 0, "its waiter still waits");
        assert_eq!(s.call_off(|_| false), 1);
        assert!(!signals[0].raised());
        assert_eq!((s.pending(), s.called_off()), (0, 1));
        assert!(!s.acknowledge(0), "called off: nothing to act on");
        assert_eq!(s.preemptions(), 0);
        // Preempted again, acted on: it stands.
        assert!(s.preempt(0, rank(9)));
        assert!(s.acknowledge(0));
        assert_eq!(s.call_off(|_| false), 0);
        assert_eq!((s.pending(), s.preemptions()), (1, 1));
    }
}
