//! Counters of what the pipeline did, for Prometheus `/metrics`.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use parking_lot::Mutex;
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
    /// The backend failed (or panicked).
    BackendError,
    /// The backend found the request unusable.
    BadRequest,
    /// The caller went away (its future or stream was dropped) before the end.
    Cancelled,
    /// A higher-priority request took its worker slot while it ran.
    Preempted,
}

impl Outcome {
    /// Every outcome, in a stable order.
    pub const ALL: [Outcome; 8] = [
        Outcome::Served,
        Outcome::Blacklisted,
        Outcome::Overloaded,
        Outcome::TimedOut,
        Outcome::BackendError,
        Outcome::BadRequest,
        Outcome::Cancelled,
        Outcome::Preempted,
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
            Outcome::Preempted => "preempted",
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
            Err(MinerError::Preempted) => Outcome::Preempted,
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// Why the priority queue gave a request no worker slot (each request refused by the queue
/// counts under one reason; see `docs/pipeline.md`, "Overload").
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum QueueRefusal {
    /// It arrived at a full queue and ranked lowest (503).
    QueueFull,
    /// It was waiting and a better-ranked arrival took its place in the full queue (503).
    Shed,
    /// On arrival, its time left could not cover the wait for the queue ahead and its own
    /// answer (503).
    CannotFinishOnArrival,
    /// While it waited, its time left fell to the expected service time (503).
    CannotFinishWhileWaiting,
    /// Its deadline passed before it got a slot, on arrival or while waiting (408).
    DeadlinePassed,
}

impl QueueRefusal {
    /// Every reason, in a stable order.
    pub const ALL: [QueueRefusal; 5] = [
        QueueRefusal::QueueFull,
        QueueRefusal::Shed,
        QueueRefusal::CannotFinishOnArrival,
        QueueRefusal::CannotFinishWhileWaiting,
        QueueRefusal::DeadlinePassed,
    ];

    /// A snake_case label.
    pub fn as_str(self) -> &'static str {
        match self {
            QueueRefusal::QueueFull => "queue_full",
            QueueRefusal::Shed => "shed",
            QueueRefusal::CannotFinishOnArrival => "cannot_finish_on_arrival",
            QueueRefusal::CannotFinishWhileWaiting => "cannot_finish_while_waiting",
            QueueRefusal::DeadlinePassed => "deadline_passed",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// Upper bounds, in seconds, of the queue-wait histogram's buckets: 1 ms doubling to
/// about 65 s (the first bucket holds the requests that found a free worker at once).
const QUEUE_WAIT_BOUNDS: [f64; 17] = {
    let mut bounds = [0.001; 17];
    let mut i = 1;
    while i < bounds.len() {
        bounds[i] = bounds[i - 1] * 2.0;
        i += 1;
    }
    bounds
};

/// How long the requests granted a worker waited for it (from entering the queue to the
/// grant), as a histogram.
#[derive(Debug, Clone, PartialEq)]
pub struct QueueWait {
    /// `(le, n)`: `n` requests waited at most `le` seconds (cumulative, bounds ascending;
    /// the requests above the last bound count only in [`QueueWait::count`]).
    pub buckets: Vec<(f64, u64)>,
    /// Seconds waited, summed.
    pub sum: f64,
    /// Requests granted a worker.
    pub count: u64,
}

/// The queue-wait histogram being filled.
#[derive(Debug, Default)]
struct WaitHistogram {
    /// Per bucket, not cumulative.
    counts: [u64; QUEUE_WAIT_BOUNDS.len()],
    sum: Duration,
    count: u64,
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
    /// How long a request is expected to hold its worker, overall: the service-time
    /// quantile of the recent holds of every priority (`--miner.admission.*`; the queue
    /// judges each waiter by the same quantile of the holds at its priority or higher);
    /// `None` before the first finished request.
    pub service_time: Option<std::time::Duration>,
    /// How long a granted request is expected to wait for its first chunk, overall: the
    /// same quantile of the recent grant-to-first-chunk times of every priority (a streamed
    /// answer cut short near its deadline needs only this and `--miner.answer_margin_ms`
    /// left); `None` before the first streamed answer.
    pub first_chunk_time: Option<std::time::Duration>,
    /// How many slot holds the service time is taken from (at most
    /// `--miner.admission.service_samples`).
    pub service_time_samples: usize,
    /// Requests the priority queue gave no worker, by reason (every reason is present,
    /// zeros included).
    pub queue_refusals: BTreeMap<QueueRefusal, u64>,
    /// How long the requests granted a worker waited in the queue.
    pub queue_wait: QueueWait,
    /// Running requests preempted by a higher-priority waiter (`--miner.priority.preempt`);
    /// preemptions called off before their victim acted on them do not count.
    pub preemptions: u64,
    /// Preemptions called off before their victim acted on them: the waiter they were for
    /// left the queue first (a slot freed naturally and went to it, or it gave up).
    pub preemptions_called_off: u64,
    /// Answers sent with the text generated so far because their deadline was near
    /// (`--miner.answer_margin_ms`); also counted as [`Outcome::Served`].
    pub truncated: u64,
}

/// The pipeline's counters, shared with in-flight requests.
#[derive(Debug, Default)]
pub(crate) struct Counters {
    outcomes: [AtomicU64; Outcome::ALL.len()],
    refusals: [AtomicU64; RefusalKind::ALL.len()],
    queue_refusals: [AtomicU64; QueueRefusal::ALL.len()],
    queue_wait: Mutex<WaitHistogram>,
    prompt_tokens: AtomicU64,
    completion_tokens: AtomicU64,
    truncated: AtomicU64,
}

impl Counters {
    pub(crate) fn count_outcome(&self, outcome: Outcome) {
        self.outcomes[outcome.index()].fetch_add(1, Ordering::Relaxed);
    }

    /// Answers sent with the text generated so far, `--miner.answer_margin_ms` before
    /// their deadline.
    pub(crate) fn truncated(&self) -> u64 {
        self.truncated.load(Ordering::Relaxed)
    }

    pub(crate) fn count_refusal(&self, kind: RefusalKind) {
        self.refusals[kind.index()].fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn count_queue_refusal(&self, reason: QueueRefusal) {
        self.queue_refusals[reason.index()].fetch_add(1, Ordering::Relaxed);
    }

    /// Records that a request was granted a worker after waiting `waited`.
    pub(crate) fn observe_queue_wait(&self, waited: Duration) {
        let seconds = waited.as_secs_f64();
        let mut histogram = self.queue_wait.lock();
        if let Some(bucket) = QUEUE_WAIT_BOUNDS.iter().position(|le| seconds <= *le) {
            histogram.counts[bucket] += 1;
        }
        histogram.sum += waited;
        histogram.count += 1;
    }

    pub(crate) fn queue_wait(&self) -> QueueWait {
        let histogram = self.queue_wait.lock();
        let mut below = 0;
        let buckets = QUEUE_WAIT_BOUNDS
            .iter()
            .zip(histogram.counts)
            .map(|(le, n)| {
                below += n;
                (*le, below)
            })
            .collect();
        QueueWait {
            buckets,
            sum: histogram.sum.as_secs_f64(),
            count: histogram.count,
        }
    }

    pub(crate) fn queue_refusals(&self) -> BTreeMap<QueueRefusal, u64> {
        QueueRefusal::ALL
            .iter()
            .map(|r| (*r, self.queue_refusals[r.index()].load(Ordering::Relaxed)))
            .collect()
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
/// [`Outcome::Cancelled`] when dropped unfinished (its caller went away), or
/// [`Outcome::BackendError`] when dropped unfinished by a panic; and then the tokens its
/// backend reported.
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

    /// Ends the request as [`Outcome::Served`] with the text generated so far, its deadline
    /// near (`--miner.answer_margin_ms`): also counted in [`PipelineStats::truncated`]. Its
    /// finish reason is `length` (the answer is shorter than the backend would have made it).
    pub(crate) fn finish_truncated(self) {
        self.report.set_finish_reason("length");
        self.counters.truncated.fetch_add(1, Ordering::Relaxed);
        self.finish(Outcome::Served);
    }
}

impl Drop for RequestTracker {
    fn drop(&mut self) {
        if !self.finished {
            // Dropped while unwinding: the request ended in a panic (a backend bug; the
            // runtime drops a panicked task's future while unwinding), not by its caller.
            let outcome = if std::thread::panicking() {
                Outcome::BackendError
            } else {
                Outcome::Cancelled
            };
            self.counters.count_outcome(outcome);
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
    fn queue_refusals_report_every_reason() {
        let c = Counters::default();
        c.count_queue_refusal(QueueRefusal::Shed);
        let refusals = c.queue_refusals();
        assert_eq!(refusals.len(), QueueRefusal::ALL.len());
        assert_eq!(refusals[&QueueRefusal::Shed], 1);
        assert_eq!(refusals.values().sum::<u64>(), 1);
        for (i, r) in QueueRefusal::ALL.iter().enumerate() {
            assert_eq!(r.index(), i);
        }
    }

    #[test]
    fn queue_waits_fill_cumulative_buckets() {
        let c = Counters::default();
        let empty = c.queue_wait();
        assert_eq!(empty.buckets.len(), QUEUE_WAIT_BOUNDS.len());
        assert_eq!((empty.count, empty.sum), (0, 0.0));
        for ms in [0, 1, 3, 1000, 100_000] {
            c.observe_queue_wait(Duration::from_millis(ms));
        }
        let wait = c.queue_wait();
        assert_eq!(wait.count, 5);
        assert!((wait.sum - 101.004).abs() < 1e-9, "{}", wait.sum);
        let at_most = |le: f64| wait.buckets.iter().find(|(b, _)| *b == le).map(|(_, n)| *n);
        assert_eq!(at_most(0.001), Some(2), "a bound is inclusive");
        assert_eq!(at_most(0.002), Some(2));
        assert_eq!(at_most(0.004), Some(3));
        assert_eq!(at_most(1.024), Some(4));
        // 100 s is above the last bound: only in the count (the +Inf bucket).
        assert_eq!(wait.buckets.last().map(|(_, n)| *n), Some(4));
        assert!((QUEUE_WAIT_BOUNDS[16] - 65.536).abs() < 1e-9);
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
