//! Counters of what the pipeline did, for Prometheus `/metrics`.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use tokio::time::Instant;

use crate::blacklist::RefusalKind;
use crate::report::{CompletionReport, TokenUsage};
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
    /// Tokens of the answered requests whose backend reported them (see
    /// [`CompletionReport`]), summed.
    pub usage: TokenUsage,
    /// How long a request is expected to hold its worker: the service-time estimate the
    /// queue refuses hopeless waiters by (`--miner.admission.*`); `None` before the first
    /// finished request.
    pub service_time: Option<std::time::Duration>,
}

/// The pipeline's counters, shared with in-flight requests.
#[derive(Debug, Default)]
pub(crate) struct Counters {
    outcomes: [AtomicU64; Outcome::ALL.len()],
    refusals: [AtomicU64; RefusalKind::ALL.len()],
    prompt_tokens: AtomicU64,
    completion_tokens: AtomicU64,
}

impl Counters {
    pub(crate) fn count_outcome(&self, outcome: Outcome) {
        self.outcomes[outcome.index()].fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn count_refusal(&self, kind: RefusalKind) {
        self.refusals[kind.index()].fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn count_usage(&self, usage: TokenUsage) {
        self.prompt_tokens
            .fetch_add(usage.prompt_tokens, Ordering::Relaxed);
        self.completion_tokens
            .fetch_add(usage.completion_tokens, Ordering::Relaxed);
    }

    pub(crate) fn usage(&self) -> TokenUsage {
        TokenUsage {
            prompt_tokens: self.prompt_tokens.load(Ordering::Relaxed),
            completion_tokens: self.completion_tokens.load(Ordering::Relaxed),
        }
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
/// [`Outcome::Cancelled`] when dropped unfinished (its caller went away); and then the
/// tokens its backend reported.
#[derive(Debug)]
pub(crate) struct RequestTracker {
    counters: Arc<Counters>,
    report: CompletionReport,
    arrived: Instant,
    finished: bool,
}

impl RequestTracker {
    pub(crate) fn new(counters: &Arc<Counters>, report: &CompletionReport) -> Self {
        RequestTracker {
            counters: Arc::clone(counters),
            report: report.clone(),
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
        if let Some(usage) = self.report.usage() {
            self.counters.count_usage(usage);
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
        let report = CompletionReport::default();
        RequestTracker::new(&c, &report).finish(Outcome::Served);
        drop(RequestTracker::new(&c, &report));
        let outcomes = c.outcomes();
        assert_eq!(outcomes[&Outcome::Served], 1);
        assert_eq!(outcomes[&Outcome::Cancelled], 1);
        assert_eq!(c.usage(), TokenUsage::default());
    }

    #[test]
    fn reported_tokens_are_summed_when_requests_end() {
        let c = Arc::new(Counters::default());
        let report = CompletionReport::default();
        let tracker = RequestTracker::new(&c, &report);
        report.set_usage(TokenUsage {
            prompt_tokens: 30,
            completion_tokens: 8,
        });
        assert_eq!(c.usage(), TokenUsage::default(), "counted at the end");
        tracker.finish(Outcome::Served);
        // A cancelled request's tokens were spent too.
        let other = CompletionReport::default();
        other.set_usage(TokenUsage {
            prompt_tokens: 2,
            completion_tokens: 1,
        });
        drop(RequestTracker::new(&c, &other));
        drop(RequestTracker::new(&c, &CompletionReport::default()));
        assert_eq!(
            c.usage(),
            TokenUsage {
                prompt_tokens: 32,
                completion_tokens: 9
            }
        );
    }
}
