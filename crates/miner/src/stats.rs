//! Counters of what the pipeline did, for Prometheus `/metrics`.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use tokio::time::Instant;

use crate::blacklist::RefusalKind;
use crate::traits::MinerError;

/// How a request ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Outcome {
    /// Answered (a stream that ran to its end).
    Served,
    /// Refused by the blacklist (see [`PipelineStats::refusals`] for why).
    Blacklisted,
    /// Refused or shed by a full queue.
    Overloaded,
    /// Its deadline passed, in the queue or in the backend.
    TimedOut,
    /// The backend failed.
    BackendError,
    /// The backend found the request unusable.
    BadRequest,
    /// The caller went away (its future or stream was dropped) before the end.
    Cancelled,
}

impl Outcome {
    /// Every outcome, in a stable order.
    pub const ALL: [Outcome; 7] = [
        Outcome::Served,
        Outcome::Blacklisted,
        Outcome::Overloaded,
        Outcome::TimedOut,
        Outcome::BackendError,
        Outcome::BadRequest,
        Outcome::Cancelled,
    ];

    /// A snake_case label.
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Served => "served",
            Outcome::Blacklisted => "blacklisted",
            Outcome::Overloaded => "overloaded",
            Outcome::TimedOut => "timed_out",
            Outcome::BackendError => "backend_error",
            Outcome::BadRequest => "bad_request",
            Outcome::Cancelled => "cancelled",
        }
    }

    /// The outcome of a finished request.
    pub fn of<T>(result: &Result<T, MinerError>) -> Outcome {
        match result {
            Ok(_) => Outcome::Served,
            Err(MinerError::Blacklisted(_)) => Outcome::Blacklisted,
            Err(MinerError::Overloaded(_)) => Outcome::Overloaded,
            Err(MinerError::Timeout(_)) => Outcome::TimedOut,
            Err(MinerError::Backend(_)) => Outcome::BackendError,
            Err(MinerError::BadRequest(_)) => Outcome::BadRequest,
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// A snapshot of the pipeline's load and counters.
#[derive(Debug, Clone, PartialEq)]
pub struct PipelineStats {
    /// Requests waiting for a worker.
    pub queue_depth: usize,
    /// Room in the queue (`--miner.max_queue`).
    pub queue_capacity: usize,
    /// Backend calls running (streams count until they end).
    pub in_flight: usize,
    /// Number of workers (`--miner.max_concurrent`).
    pub capacity: usize,
    /// Requests ended, by outcome (every outcome is present, zeros included).
    pub outcomes: BTreeMap<Outcome, u64>,
    /// Blacklist refusals, by kind (every kind is present, zeros included).
    pub refusals: BTreeMap<RefusalKind, u64>,
    /// Hotkeys whose request history is kept.
    pub tracked_hotkeys: usize,
    /// Prompts in the prompt cache.
    pub prompt_cache_entries: usize,
}

/// The pipeline's counters, shared with in-flight requests.
#[derive(Debug, Default)]
pub(crate) struct Counters {
    outcomes: [AtomicU64; Outcome::ALL.len()],
    refusals: [AtomicU64; RefusalKind::ALL.len()],
}

impl Counters {
    pub(crate) fn count_outcome(&self, outcome: Outcome) {
        self.outcomes[outcome.index()].fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn count_refusal(&self, kind: RefusalKind) {
        self.refusals[kind.index()].fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn outcomes(&self) -> BTreeMap<Outcome, u64> {
        Outcome::ALL
            .iter()
            .map(|o| (*o, self.outcomes[o.index()].load(Ordering::Relaxed)))
            .collect()
    }

    pub(crate) fn refusals(&self) -> BTreeMap<RefusalKind, u64> {
        RefusalKind::ALL
            .iter()
            .map(|k| (*k, self.refusals[k.index()].load(Ordering::Relaxed)))
            .collect()
    }
}

/// Counts one request's outcome exactly once: [`RequestTracker::finish`] when it ends,
/// [`Outcome::Cancelled`] when dropped unfinished (its caller went away).
#[derive(Debug)]
pub(crate) struct RequestTracker {
    counters: Arc<Counters>,
    arrived: Instant,
    finished: bool,
}

impl RequestTracker {
    pub(crate) fn new(counters: &Arc<Counters>) -> Self {
        RequestTracker {
            counters: Arc::clone(counters),
            arrived: Instant::now(),
            finished: false,
        }
    }

    /// The error for a request whose deadline passed, with the seconds since it arrived.
    pub(crate) fn timeout(&self) -> MinerError {
        MinerError::Timeout(self.arrived.elapsed().as_secs_f64())
    }

    pub(crate) fn finish(mut self, outcome: Outcome) {
        self.finished = true;
        self.counters.count_outcome(outcome);
    }
}

impl Drop for RequestTracker {
    fn drop(&mut self) {
        if !self.finished {
            self.counters.count_outcome(Outcome::Cancelled);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outcomes_of_results() {
        assert_eq!(Outcome::of(&Ok::<(), MinerError>(())), Outcome::Served);
        assert_eq!(
            Outcome::of::<()>(&Err(MinerError::Timeout(1.0))),
            Outcome::TimedOut
        );
        assert_eq!(
            Outcome::of::<()>(&Err(MinerError::Overloaded("x".into()))),
            Outcome::Overloaded
        );
        for (i, o) in Outcome::ALL.iter().enumerate() {
            assert_eq!(o.index(), i);
        }
    }

    #[test]
    fn counters_report_every_label() {
        let c = Counters::default();
        c.count_outcome(Outcome::Cancelled);
        c.count_outcome(Outcome::Cancelled);
        c.count_refusal(RefusalKind::RateLimited);
        let outcomes = c.outcomes();
        assert_eq!(outcomes.len(), Outcome::ALL.len());
        assert_eq!(outcomes[&Outcome::Cancelled], 2);
        assert_eq!(outcomes[&Outcome::Served], 0);
        let refusals = c.refusals();
        assert_eq!(refusals.len(), RefusalKind::ALL.len());
        assert_eq!(refusals[&RefusalKind::RateLimited], 1);
    }

    #[test]
    fn tracker_counts_once_and_cancelled_when_dropped() {
        let c = Arc::new(Counters::default());
        RequestTracker::new(&c).finish(Outcome::Served);
        drop(RequestTracker::new(&c));
        let outcomes = c.outcomes();
        assert_eq!(outcomes[&Outcome::Served], 1);
        assert_eq!(outcomes[&Outcome::Cancelled], 1);
    }
}
