//! [`Rank`]: a place in the pipeline's priority queue, shared by the scheduler (which orders
//! its waiters by it) and preemption (which signals a preemption for one waiter's rank).

use std::cmp::Ordering;

/// A queue position: higher priority first, then arrival order.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Rank {
    pub(crate) priority: f64,
    pub(crate) seq: u64,
}

impl Ord for Rank {
    fn cmp(&self, other: &Self) -> Ordering {
        other
            .priority
            .total_cmp(&self.priority)
            .then(self.seq.cmp(&other.seq))
    }
}

impl PartialOrd for Rank {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl PartialEq for Rank {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}

impl Eq for Rank {}
