//! A fixed number of worker slots behind a bounded priority queue that knows how long a
//! request holds a slot.
//!
//! A request takes a free slot at once when nobody is waiting; otherwise it waits in the
//! queue, ordered by priority (higher first). Among equal priorities the oldest is served
//! first, until the queue has been backed up (never empty) for [`Policy::lifo_after`]: then
//! the newest is, the one with the most time left (adaptive LIFO). A full queue sheds its
//! lowest-ranked entry: among equals the newcomer (FIFO), or the oldest waiter (LIFO).
//!
//! Deadlines: the scheduler learns the service time (a high quantile of recent slot-hold
//! times, see [`Slot::finish`]) and never grants a waiter a slot when the time it has left is
//! below that estimate (× [`Policy::margin`]): such a waiter leaves the queue at once with
//! [`Rejection::CannotFinishOnArrival`] when it arrives and the queue ahead of it cannot
//! drain in time, or [`Rejection::CannotFinishWhileWaiting`] as soon as its time left falls
//! below the estimate (or a grown estimate is above it) — instead of taking a slot only to
//! be cancelled at its deadline. A waiter is judged by the estimate for its priority: from
//! the holds of requests of that priority or higher only, the ones served like it (lower
//! priorities wait behind it or are preempted for it); with none of those in the window it
//! is refused on no estimate. A waiter whose deadline passes leaves with
//! [`Rejection::Expired`]. A waiter that is dropped (its caller went away) leaves the queue,
//! or returns the slot it was just granted. A request that finds a free slot and nobody
//! waiting always gets it: nothing else would use the slot, and its hold time keeps the
//! estimate current.
//!
//! Answers cut short near their deadline ([`Policy::answer_margin`]): a granted request is
//! then answered in time when its first chunk comes before the cut, however long its whole
//! answer would take. A waiter is then judged by the time from grant to first chunk (a high
//! quantile of recent ones, see [`Slot::first_chunk_arrived`]) plus that margin, and the
//! hold times (truncated holds included, see [`Slot::truncated`]) only say how fast the
//! slots turn over for the queue ahead of an arrival.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use tokio::sync::oneshot;
use tokio::time::Instant;

use crate::preemption::{RunningSet, Signal};
use crate::rank::Rank;
use crate::service_time::ServiceTimes;

/// Why no slot was given.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rejection {
    /// It arrived at a full queue and ranks lowest.
    QueueFull,
    /// It was waiting and a better-ranked arrival took its place in the full queue.
    Shed,
    /// The deadline passed before a slot was free.
    Expired,
    /// On arrival, the time left is below the time the request would need (the wait for
    /// the queue ahead and the service-time estimate): it could not be answered in time.
    CannotFinishOnArrival {
        /// Time left before the deadline.
        left: Duration,
        /// Time it would need.
        need: Duration,
    },
    /// While it waited, its time left fell to the service-time estimate.
    CannotFinishWhileWaiting {
        /// Time left before the deadline.
        left: Duration,
        /// Time it would need.
        need: Duration,
    },
}

/// How the scheduler treats deadlines and order among equals.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Policy {
    /// Refuse waiters that cannot finish before their deadline.
    pub deadline_aware: bool,
    /// A waiter needs at least the service-time estimate × `margin` left to be granted.
    pub margin: f64,
    /// Serve the newest first among equal priorities once the queue has not been empty for
    /// this long; `None`: always the oldest first.
    pub lifo_after: Option<Duration>,
    /// Recent slot-hold times the estimate is taken from.
    pub service_samples: usize,
    /// The quantile of those samples taken as the service time.
    pub service_quantile: f64,
    /// Priority preemption: `Some(margin)` lets a waiter that finds every slot busy take the
    /// slot of the lowest-priority running request when its priority exceeds that one's by
    /// more than `margin` (see [`crate::preemption`]); `None`: never.
    pub preempt: Option<f64>,
    /// `Some(m)`: answers are cut short `m` before their deadline once their first chunk
    /// went out (`--miner.answer_margin_ms` of a backend that streams as it generates), so
    /// a waiter needs the time to its first chunk × `margin`, plus `m`, left to be granted.
    /// `None`: it needs its whole service time.
    pub answer_margin: Option<Duration>,
}

impl Default for Policy {
    fn default() -> Self {
        Policy {
            deadline_aware: true,
            margin: 1.0,
            lifo_after: Some(Duration::from_secs(1)),
            service_samples: 50,
            service_quantile: 0.9,
            preempt: None,
            answer_margin: None,
        }
    }
}

/// The queue's verdict for one waiter, sent when it leaves the queue.
#[derive(Debug)]
enum Verdict {
    Granted(Grant),
    Shed,
    Expired,
    CannotFinish { left: Duration, need: Duration },
}

/// A slot granted: its id and how it learns it was preempted.
#[derive(Debug)]
struct Grant {
    id: u64,
    signal: Arc<Signal>,
}

#[derive(Debug)]
struct Waiter {
    deadline: Instant,
    priority: f64,
    notify: oneshot::Sender<Verdict>,
}

#[derive(Debug)]
struct State {
    running: RunningSet,
    next_seq: u64,
    /// First entry = best ranked (oldest first among equals).
    waiting: BTreeMap<Rank, Waiter>,
    /// Since when the queue has not been empty.
    backlog_since: Option<Instant>,
    /// Slot-hold times.
    service: ServiceTimes,
    /// Times from grant to first chunk.
    first_chunks: ServiceTimes,
}

impl State {
    /// Keeps `backlog_since` and the preemptions in flight in step with the queue (those
    /// for a waiter that left it are called off); call after every change to it.
    fn note_backlog(&mut self, now: Instant) {
        if self.waiting.is_empty() {
            self.backlog_since = None;
        } else if self.backlog_since.is_none() {
            self.backlog_since = Some(now);
        }
        let waiting = &self.waiting;
        let called_off = self.running.call_off(|rank| waiting.contains_key(rank));
        if called_off > 0 {
            tracing::debug!(
                called_off,
                "preemption called off: its waiter left the queue first"
            );
        }
    }

    /// Removes the waiter at `rank` and tells it `verdict`.
    fn remove(&mut self, rank: &Rank, verdict: Verdict) {
        if let Some(waiter) = self.waiting.remove(rank) {
            let _ = waiter.notify.send(verdict);
        }
    }
}

/// Worker slots and the queue in front of them.
#[derive(Debug)]
pub struct Scheduler {
    workers: usize,
    queue_capacity: usize,
    policy: Policy,
    state: Mutex<State>,
}

/// How busy the scheduler is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Load {
    /// Requests waiting for a slot.
    pub queued: usize,
    /// Slots in use.
    pub in_flight: usize,
}

impl Scheduler {
    /// `workers` slots (at least 1) and room for `queue_capacity` waiters, with the default
    /// [`Policy`].
    #[cfg(test)]
    pub fn new(workers: usize, queue_capacity: usize) -> Arc<Self> {
        Self::with_policy(workers, queue_capacity, Policy::default())
    }

    /// Like [`Scheduler::new`], with `policy`.
    pub fn with_policy(workers: usize, queue_capacity: usize, policy: Policy) -> Arc<Self> {
        Arc::new(Scheduler {
            workers: workers.max(1),
            queue_capacity,
            policy,
            state: Mutex::new(State {
                running: RunningSet::default(),
                next_seq: 0,
                waiting: BTreeMap::new(),
                backlog_since: None,
                service: ServiceTimes::new(policy.service_samples, policy.service_quantile),
                first_chunks: ServiceTimes::new(policy.service_samples, policy.service_quantile),
            }),
        })
    }

    /// Number of slots.
    pub fn workers(&self) -> usize {
        self.workers
    }

    /// Room in the queue.
    pub fn queue_capacity(&self) -> usize {
        self.queue_capacity
    }

    /// The current load.
    pub fn load(&self) -> Load {
        let state = self.state.lock();
        Load {
            queued: state.waiting.len(),
            in_flight: state.running.len(),
        }
    }

    /// The overall service-time estimate, from the holds of every priority (waiters are
    /// judged by the estimate for their own priority); `None` before the first finished
    /// request.
    pub fn service_time(&self) -> Option<Duration> {
        self.state.lock().service.estimate()
    }

    /// The overall estimate of the time from grant to first chunk, from the requests of
    /// every priority; `None` before the first chunk was measured (or a request was cut off
    /// at its deadline without one).
    pub fn first_chunk_time(&self) -> Option<Duration> {
        self.state.lock().first_chunks.estimate()
    }

    /// How many running requests were preempted so far.
    pub fn preemptions(&self) -> u64 {
        self.state.lock().running.preemptions()
    }

    /// How many preemptions were called off so far.
    pub fn preemptions_called_off(&self) -> u64 {
        self.state.lock().running.called_off()
    }

    /// How many slot holds the service-time estimate is taken from.
    pub fn service_samples(&self) -> usize {
        self.state.lock().service.len()
    }

    /// Waits for a slot, ranked by `priority`, until `deadline`. Dropping the returned
    /// future gives up the place in the queue.
    pub async fn acquire(
        self: &Arc<Self>,
        priority: f64,
        deadline: Instant,
    ) -> Result<Slot, Rejection> {
        let mut ticket = match self.enqueue(priority, deadline) {
            Enqueued::Granted(grant) => return Ok(self.slot(grant)),
            Enqueued::Rejected(rejection) => return Err(rejection),
            Enqueued::Waiting(ticket) => ticket,
        };
        loop {
            let give_up = self.give_up_at(deadline, ticket.rank.priority);
            match tokio::time::timeout_at(give_up, &mut ticket.receiver).await {
                Ok(verdict) => {
                    ticket.settled = true;
                    return self.settle(verdict, deadline);
                }
                Err(_) if Instant::now() >= deadline => {
                    // Timed out in the queue: the ticket's drop removes the entry (or
                    // returns a slot granted in the meantime).
                    return Err(Rejection::Expired);
                }
                Err(_) => {
                    // The time left fell to the estimate: leave now, unless the estimate
                    // shrank meanwhile or a verdict was sent.
                    let now = Instant::now();
                    let left = deadline.saturating_duration_since(now);
                    let gave_up = {
                        let mut state = self.state.lock();
                        match self.need(&state, ticket.rank.priority) {
                            Some(need) if left <= need => {
                                let left_queue = state.waiting.remove(&ticket.rank).is_some();
                                state.note_backlog(now);
                                Some((left_queue, need))
                            }
                            _ => None,
                        }
                    };
                    match gave_up {
                        Some((true, need)) => {
                            ticket.settled = true;
                            return Err(Rejection::CannotFinishWhileWaiting { left, need });
                        }
                        Some((false, _)) => {
                            // Out of the queue: its verdict is in the channel already.
                            let verdict = (&mut ticket.receiver).await;
                            ticket.settled = true;
                            return self.settle(verdict, deadline);
                        }
                        None => continue,
                    }
                }
            }
        }
    }

    /// What a waiter's verdict means for its caller.
    fn settle(
        self: &Arc<Self>,
        verdict: Result<Verdict, oneshot::error::RecvError>,
        deadline: Instant,
    ) -> Result<Slot, Rejection> {
        match verdict {
            Ok(Verdict::Granted(grant)) => {
                let slot = self.slot(grant);
                if Instant::now() >= deadline {
                    // Granted at the deadline: too late to run, give the slot back.
                    drop(slot);
                    return Err(Rejection::Expired);
                }
                Ok(slot)
            }
            Ok(Verdict::Shed) => Err(Rejection::Shed),
            Ok(Verdict::Expired) => Err(Rejection::Expired),
            Ok(Verdict::CannotFinish { left, need }) => {
                Err(Rejection::CannotFinishWhileWaiting { left, need })
            }
            // The sender is only dropped after a verdict is sent, so this is unreachable in
            // practice; treat it as shed.
            Err(_) => Err(Rejection::Shed),
        }
    }

    /// When a waiter of `priority` with `deadline` should give up: once its time left is
    /// below the time it needs, or at the deadline.
    fn give_up_at(&self, deadline: Instant, priority: f64) -> Instant {
        let state = self.state.lock();
        match self.need(&state, priority) {
            Some(need) => deadline.checked_sub(need).unwrap_or(deadline).min(deadline),
            None => deadline,
        }
    }

    /// The time a granted request of `priority` needs left before its deadline: the
    /// service-time estimate for that priority (from the holds at it or higher) × the
    /// margin, or, when answers are cut short, the estimate of its time to first chunk ×
    /// the margin plus the answer margin; `None` when deadlines are not looked at or no
    /// such time was measured.
    fn need(&self, state: &State, priority: f64) -> Option<Duration> {
        if !self.policy.deadline_aware {
            return None;
        }
        match self.policy.answer_margin {
            None => self.turnover(state, priority),
            Some(answer_margin) => {
                let estimate = state.first_chunks.estimate_for(priority)?;
                Some(estimate.mul_f64(self.policy.margin) + answer_margin)
            }
        }
    }

    /// How long a granted request of `priority` holds its slot: the service-time estimate
    /// for that priority × the margin; `None` when no such hold was measured.
    fn turnover(&self, state: &State, priority: f64) -> Option<Duration> {
        let estimate = state.service.estimate_for(priority)?;
        Some(estimate.mul_f64(self.policy.margin))
    }

    /// Whether equal priorities are served newest first now.
    fn lifo(&self, state: &State, now: Instant) -> bool {
        match (self.policy.lifo_after, state.backlog_since) {
            (Some(after), Some(since)) => now.saturating_duration_since(since) >= after,
            _ => false,
        }
    }

    fn slot(self: &Arc<Self>, grant: Grant) -> Slot {
        Slot {
            scheduler: Arc::clone(self),
            granted: Instant::now(),
            sample: Sample::None,
            id: grant.id,
            signal: grant.signal,
            preempted: false,
            first_chunk: None,
        }
    }

    /// A new grant for its holder (recorded in `state.running` with its signal once
    /// delivered).
    fn grant(state: &mut State) -> Grant {
        Grant {
            id: state.running.next_id(),
            signal: Arc::default(),
        }
    }

    /// Whether a waiter of `priority` would get a slot by preemption now.
    fn can_preempt(&self, state: &State, priority: f64) -> bool {
        self.policy
            .preempt
            .is_some_and(|margin| state.running.victim(priority, margin).is_some())
    }

    /// With every slot busy, preempts the lowest-priority running requests for the
    /// best-ranked waiters that outrank them by more than the margin and can still finish
    /// in time, one each. Waiters a signalled preemption is for are skipped, and as many
    /// of the best as there are acknowledged preemptions (those slots come back to them).
    fn preempt(&self, state: &mut State, now: Instant) {
        let Some(margin) = self.policy.preempt else {
            return;
        };
        if state.running.len() < self.workers {
            return;
        }
        let coming_back = state.running.acknowledged();
        let candidates: Vec<Rank> = state
            .waiting
            .iter()
            .filter(|(rank, _)| !state.running.covers(rank))
            .filter(|(rank, w)| {
                let left = w.deadline.saturating_duration_since(now);
                !left.is_zero()
                    && self
                        .need(state, rank.priority)
                        .is_none_or(|need| left > need)
            })
            .map(|(rank, _)| *rank)
            .skip(coming_back)
            .collect();
        for rank in candidates {
            let Some(victim) = state.running.victim(rank.priority, margin) else {
                break;
            };
            if state.running.preempt(victim, rank) {
                tracing::debug!(
                    priority = rank.priority,
                    victim,
                    "preempting a lower-priority request"
                );
            }
        }
    }

    fn enqueue(self: &Arc<Self>, priority: f64, deadline: Instant) -> Enqueued {
        let now = Instant::now();
        if deadline <= now {
            return Enqueued::Rejected(Rejection::Expired);
        }
        // -0.0 and 0.0 rank equal.
        let priority = if priority == 0.0 { 0.0 } else { priority };
        let mut state = self.state.lock();
        self.dispatch(&mut state, now);
        if state.running.len() < self.workers && state.waiting.is_empty() {
            let grant = Self::grant(&mut state);
            state
                .running
                .insert(grant.id, priority, Arc::clone(&grant.signal));
            return Enqueued::Granted(grant);
        }
        let lifo = self.lifo(&state, now);
        if let Some(need) = self.need(&state, priority) {
            let left = deadline - now;
            // The waiters served before this one, and the wait for a slot for each of them
            // and for this one (`workers` slots free up per hold time).
            let ahead = state
                .waiting
                .keys()
                .take_while(|rank| rank.priority > priority || (!lifo && rank.priority == priority))
                .count();
            // A waiter that can preempt gets a slot at the next step of the backend.
            let wait = if self.can_preempt(&state, priority) {
                Duration::ZERO
            } else {
                self.turnover(&state, priority)
                    .unwrap_or_default()
                    .mul_f64((ahead + 1) as f64 / self.workers as f64)
            };
            let need = need + wait;
            if left < need {
                return Enqueued::Rejected(Rejection::CannotFinishOnArrival { left, need });
            }
        }
        if state.waiting.len() >= self.queue_capacity {
            self.drop_hopeless(&mut state, now);
        }
        if state.waiting.len() >= self.queue_capacity {
            match lowest(&state, lifo) {
                // FIFO: the newcomer ranks after every queued request of equal priority.
                // LIFO: before them, so the oldest of the lowest priority goes.
                Some(lowest)
                    if priority > lowest.priority || (lifo && priority == lowest.priority) =>
                {
                    state.remove(&lowest, Verdict::Shed);
                }
                _ => return Enqueued::Rejected(Rejection::QueueFull),
            }
        }
        let rank = Rank {
            priority,
            seq: state.next_seq,
        };
        state.next_seq += 1;
        let (notify, receiver) = oneshot::channel();
        state.waiting.insert(
            rank,
            Waiter {
                deadline,
                priority,
                notify,
            },
        );
        state.note_backlog(now);
        self.preempt(&mut state, now);
        Enqueued::Waiting(Ticket {
            scheduler: Arc::clone(self),
            rank,
            receiver,
            settled: false,
        })
    }

    /// Hands free slots to the best-ranked waiters that can still finish in time; those that
    /// cannot leave the queue.
    fn dispatch(&self, state: &mut State, now: Instant) {
        while state.running.len() < self.workers {
            let lifo = self.lifo(state, now);
            let Some(rank) = next(state, lifo) else {
                break;
            };
            let Some(waiter) = state.waiting.remove(&rank) else {
                break;
            };
            let left = waiter.deadline.saturating_duration_since(now);
            if left.is_zero() {
                let _ = waiter.notify.send(Verdict::Expired);
            } else if let Some(need) = self
                .need(state, waiter.priority)
                .filter(|need| left <= *need)
            {
                let _ = waiter.notify.send(Verdict::CannotFinish { left, need });
            } else {
                let grant = Self::grant(state);
                let (id, signal) = (grant.id, Arc::clone(&grant.signal));
                if waiter.notify.send(Verdict::Granted(grant)).is_ok() {
                    state.running.insert(id, waiter.priority, signal);
                }
            }
        }
        state.note_backlog(now);
    }

    /// Removes the waiters whose deadline passed or that can no longer finish in time.
    fn drop_hopeless(&self, state: &mut State, now: Instant) {
        let hopeless: Vec<(Rank, Duration, Duration)> = state
            .waiting
            .iter()
            .map(|(rank, waiter)| {
                let left = waiter.deadline.saturating_duration_since(now);
                let need = self.need(state, waiter.priority).unwrap_or_default();
                (*rank, left, need)
            })
            .filter(|(_, left, need)| left.is_zero() || left <= need)
            .collect();
        for (rank, left, need) in hopeless {
            let verdict = if left.is_zero() {
                Verdict::Expired
            } else {
                Verdict::CannotFinish { left, need }
            };
            state.remove(&rank, verdict);
        }
        state.note_backlog(now);
    }

    /// Gives a slot back; `held` and `first_chunk`: how long it was held and how long its
    /// first chunk took, each with whether that is only a lower bound (`None`: no sample).
    fn release(
        &self,
        id: u64,
        held: Option<(Duration, bool)>,
        first_chunk: Option<(Duration, bool)>,
    ) {
        let mut state = self.state.lock();
        let grew = match state.running.priority(id) {
            Some(priority) => {
                let state = &mut *state;
                let held = record(&mut state.service, held, priority);
                let first_chunk = record(&mut state.first_chunks, first_chunk, priority);
                // Only the estimate `need` is taken from judges the waiters.
                if self.policy.answer_margin.is_some() {
                    first_chunk
                } else {
                    held
                }
            }
            None => false,
        };
        if grew && self.policy.deadline_aware {
            // The waiters' give-up times were set by smaller (or no) estimates: those a grown
            // one leaves too little time leave now, not at those times.
            self.drop_hopeless(&mut state, Instant::now());
        }
        self.release_locked(&mut state, id);
    }

    fn release_locked(&self, state: &mut State, id: u64) {
        state.running.remove(id);
        let now = Instant::now();
        self.dispatch(state, now);
        self.preempt(state, now);
    }
}

/// Adds `sample` (a time, and whether it is only a lower bound) of a request of `priority`
/// to `times`; returns whether an estimate grew. A lower bound counts only above the
/// estimate for its own priority: below it, it says nothing new and would pull it down.
fn record(times: &mut ServiceTimes, sample: Option<(Duration, bool)>, priority: f64) -> bool {
    let Some((time, lower_bound)) = sample else {
        return false;
    };
    let counts = !lower_bound
        || times
            .estimate_for(priority)
            .is_none_or(|estimate| time > estimate);
    counts && times.record(time, priority)
}

/// The waiter served next: the best priority, oldest first (FIFO) or newest first (LIFO).
fn next(state: &State, lifo: bool) -> Option<Rank> {
    let first = *state.waiting.keys().next()?;
    if !lifo {
        return Some(first);
    }
    let class_end = Rank {
        priority: first.priority,
        seq: u64::MAX,
    };
    state
        .waiting
        .range(first..=class_end)
        .next_back()
        .map(|(rank, _)| *rank)
}

/// The waiter shed first from a full queue: the lowest priority, newest first (FIFO) or
/// oldest first (LIFO).
fn lowest(state: &State, lifo: bool) -> Option<Rank> {
    let last = *state.waiting.keys().next_back()?;
    if !lifo {
        return Some(last);
    }
    let class_start = Rank {
        priority: last.priority,
        seq: 0,
    };
    state
        .waiting
        .range(class_start..=last)
        .next()
        .map(|(rank, _)| *rank)
}

enum Enqueued {
    Granted(Grant),
    Rejected(Rejection),
    Waiting(Ticket),
}

/// A place in the queue; leaving it unsettled (dropped, timed out) cleans up.
struct Ticket {
    scheduler: Arc<Scheduler>,
    rank: Rank,
    receiver: oneshot::Receiver<Verdict>,
    settled: bool,
}

impl Drop for Ticket {
    fn drop(&mut self) {
        if self.settled {
            return;
        }
        let mut state = self.scheduler.state.lock();
        if state.waiting.remove(&self.rank).is_some() {
            state.note_backlog(Instant::now());
            return;
        }
        // Already out of the queue: a verdict was sent under the lock we hold.
        if let Ok(Verdict::Granted(grant)) = self.receiver.try_recv() {
            self.scheduler.release_locked(&mut state, grant.id);
        }
    }
}

/// A worker slot, given back when dropped.
#[derive(Debug)]
pub struct Slot {
    scheduler: Arc<Scheduler>,
    granted: Instant,
    sample: Sample,
    id: u64,
    /// Raised when a better waiter preempts this slot.
    signal: Arc<Signal>,
    /// Whether this holder acted on a preemption (final).
    preempted: bool,
    /// How long after the grant the first chunk arrived.
    first_chunk: Option<Duration>,
}

/// What a slot's hold time says about the service time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Sample {
    /// Nothing (the backend failed, the caller went away).
    None,
    /// It is a service time (an answer).
    Exact,
    /// The service time is at least this long (cut off at the deadline).
    LowerBound,
}

impl Slot {
    /// Gives the slot back after an answer, counting how long it was held as a service-time
    /// sample. Just drop the slot when the backend failed or the caller went away.
    pub fn finish(mut self) {
        self.sample = Sample::Exact;
    }

    /// Gives the slot back after the request was cut off at its deadline: how long it was
    /// held is a lower bound of its service time, a sample only when it is above the
    /// current estimate for its priority (or there is none yet), which it then raises. A
    /// lower bound below the estimate says nothing new, and as a sample it would pull the
    /// estimate down.
    pub fn cut_off(mut self) {
        self.sample = Sample::LowerBound;
    }

    /// Gives the slot back after the answer was cut short near its deadline
    /// ([`Policy::answer_margin`]): how long it was held is how long such a request holds
    /// its slot, a sample of the hold time the queue ahead of an arrival is judged by.
    pub fn truncated(mut self) {
        self.sample = Sample::Exact;
    }

    /// Notes that the answer's first chunk arrived now: a sample of the time to first
    /// chunk when the slot is given back (whatever happens after). A slot cut off at its
    /// deadline before its first chunk counts its hold as a lower bound of that time.
    pub fn first_chunk_arrived(&mut self) {
        self.first_chunk
            .get_or_insert_with(|| self.granted.elapsed());
    }
}

impl Slot {
    /// Ready once a higher-priority waiter preempted this slot (see
    /// [`crate::preemption`]); pending otherwise, for as long as the slot is held. Ready
    /// means the preemption stands (it can no longer be called off): the holder must then
    /// stop its work and drop the slot.
    pub fn poll_preempted(&mut self, cx: &mut std::task::Context<'_>) -> std::task::Poll<()> {
        use std::task::Poll;
        if self.preempted {
            return Poll::Ready(());
        }
        self.signal.register(cx.waker());
        if !self.signal.raised() {
            return Poll::Pending;
        }
        // Raised: act on it, unless the scheduler called it off meanwhile (then the signal
        // is lowered and the waker stays registered for a later preemption).
        if self.scheduler.state.lock().running.acknowledge(self.id) {
            self.preempted = true;
            Poll::Ready(())
        } else {
            Poll::Pending
        }
    }

    /// Resolves once a higher-priority waiter preempted this slot; never otherwise.
    pub async fn preempted(&mut self) {
        std::future::poll_fn(|cx| self.poll_preempted(cx)).await
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let elapsed = self.granted.elapsed();
        let counted = self.sample != Sample::None && !self.preempted;
        let lower_bound = self.sample == Sample::LowerBound;
        let held = counted.then_some((elapsed, lower_bound));
        let first_chunk = match self.first_chunk {
            Some(first_chunk) => Some((first_chunk, false)),
            None => (counted && lower_bound).then_some((elapsed, true)),
        };
        self.scheduler.release(self.id, held, first_chunk);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    const LONG: Duration = Duration::from_secs(3600);

    fn far() -> Instant {
        Instant::now() + LONG
    }

    /// Starts an acquire in the background; its result arrives on the returned channel.
    fn spawn_acquire(
        scheduler: &Arc<Scheduler>,
        priority: f64,
        deadline: Instant,
    ) -> (
        tokio::task::JoinHandle<()>,
        tokio::sync::mpsc::UnboundedReceiver<Result<Slot, Rejection>>,
    ) {
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        let scheduler = Arc::clone(scheduler);
        let handle = tokio::spawn(async move {
            let result = scheduler.acquire(priority, deadline).await;
            let _ = tx.send(result);
        });
        (handle, rx)
    }

    async fn settle() {
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
    }

    /// One worker, held by the returned slot, and room for `queue` waiters: the waiters a
    /// test sends queue behind it.
    async fn busy_worker(queue: usize) -> (Arc<Scheduler>, Slot) {
        busy_worker_with(queue, Policy::default(), None).await
    }

    /// Like [`busy_worker`], under `policy`, with the service time measured at `service`
    /// (one slot held that long) first when given.
    async fn busy_worker_with(
        queue: usize,
        policy: Policy,
        service: Option<Duration>,
    ) -> (Arc<Scheduler>, Slot) {
        let s = Scheduler::with_policy(1, queue, policy);
        if let Some(held) = service {
            measure(&s, held).await;
        }
        let busy = s.acquire(0.0, far()).await.expect("the free worker");
        (s, busy)
    }

    /// A waiter's name and the channel its result arrives on.
    type Queued = (
        &'static str,
        tokio::sync::mpsc::UnboundedReceiver<Result<Slot, Rejection>>,
    );

    /// Queues one waiter per `(name, priority)`, in order, each settled in the queue before
    /// the next arrives.
    async fn queue_up(s: &Arc<Scheduler>, waiters: &[(&'static str, f64)]) -> Vec<Queued> {
        let mut queued = Vec::new();
        for (name, priority) in waiters {
            let (_, rx) = spawn_acquire(s, *priority, far());
            queued.push((*name, rx));
            settle().await;
        }
        queued
    }

    /// Grants to `waiting` one by one (each releasing its slot) and returns their names in
    /// the order served.
    async fn served_order(busy: Slot, mut waiting: Vec<Queued>) -> Vec<&'static str> {
        drop(busy);
        let mut order = Vec::new();
        for _ in 0..waiting.len() {
            settle().await;
            let mut granted = None;
            for (name, rx) in waiting.iter_mut() {
                if let Ok(result) = rx.try_recv() {
                    granted = Some((*name, result.expect("granted")));
                }
            }
            let (name, slot) = granted.expect("one waiter granted per free slot");
            order.push(name);
            drop(slot);
        }
        order
    }

    #[tokio::test(start_paused = true)]
    async fn free_slots_are_taken_at_once_and_returned_on_drop() {
        let s = Scheduler::new(2, 4);
        let a = s.acquire(0.0, far()).await.expect("slot");
        let b = s.acquire(0.0, far()).await.expect("slot");
        assert_eq!(
            s.load(),
            Load {
                queued: 0,
                in_flight: 2
            }
        );
        drop(a);
        drop(b);
        assert_eq!(
            s.load(),
            Load {
                queued: 0,
                in_flight: 0
            }
        );
    }

    #[tokio::test(start_paused = true)]
    async fn higher_priority_served_first_fifo_among_equals() {
        let (s, busy) = busy_worker(10).await;
        let waiting = queue_up(
            &s,
            &[("low", 1.0), ("eq1", 5.0), ("high", 9.0), ("eq2", 5.0)],
        )
        .await;
        assert_eq!(s.load().queued, 4);
        let order = served_order(busy, waiting).await;
        assert_eq!(order, ["high", "eq1", "eq2", "low"]);
    }

    #[tokio::test(start_paused = true)]
    async fn full_queue_sheds_the_lowest() {
        let (s, _busy) = busy_worker(2).await;
        let (_h1, mut low) = spawn_acquire(&s, 1.0, far());
        let (_h2, mut mid) = spawn_acquire(&s, 5.0, far());
        settle().await;
        // A newcomer ranking lowest (or equal to the lowest) is refused itself.
        assert_eq!(
            s.acquire(1.0, far()).await.err(),
            Some(Rejection::QueueFull)
        );
        assert_eq!(
            s.acquire(0.5, far()).await.err(),
            Some(Rejection::QueueFull)
        );
        // A better newcomer sheds the lowest queued request.
        let (_h3, mut high) = spawn_acquire(&s, 9.0, far());
        settle().await;
        assert_eq!(low.try_recv().expect("shed").err(), Some(Rejection::Shed));
        assert!(mid.try_recv().is_err() && high.try_recv().is_err());
        assert_eq!(s.load().queued, 2);
    }

    #[tokio::test(start_paused = true)]
    async fn zero_queue_refuses_when_busy() {
        let (s, busy) = busy_worker(0).await;
        assert_eq!(
            s.acquire(1e9, far()).await.err(),
            Some(Rejection::QueueFull)
        );
        drop(busy);
        assert!(s.acquire(0.0, far()).await.is_ok());
    }

    #[tokio::test(start_paused = true)]
    async fn deadline_in_queue_expires_and_never_runs() {
        let (s, busy) = busy_worker(4).await;
        let deadline = Instant::now() + Duration::from_secs(5);
        let (_h, mut rx) = spawn_acquire(&s, 100.0, deadline);
        settle().await;
        assert_eq!(s.load().queued, 1);
        tokio::time::sleep(Duration::from_secs(6)).await;
        settle().await;
        assert_eq!(rx.try_recv().expect("done").err(), Some(Rejection::Expired));
        assert_eq!(
            s.load(),
            Load {
                queued: 0,
                in_flight: 1
            }
        );
        drop(busy);
        assert_eq!(
            s.load(),
            Load {
                queued: 0,
                in_flight: 0
            }
        );
        // Already past its deadline on arrival.
        assert_eq!(
            s.acquire(1.0, Instant::now()).await.err(),
            Some(Rejection::Expired)
        );
    }

    #[tokio::test(start_paused = true)]
    async fn dropped_waiter_frees_its_place() {
        let (s, busy) = busy_worker(1).await;
        let (handle, _rx) = spawn_acquire(&s, 1.0, far());
        settle().await;
        assert_eq!(s.load().queued, 1);
        handle.abort();
        settle().await;
        assert_eq!(s.load().queued, 0);
        // The place is free for an equal-priority newcomer.
        let (_h, mut rx) = spawn_acquire(&s, 1.0, far());
        settle().await;
        assert!(rx.try_recv().is_err(), "queued, not refused");
        drop(busy);
        settle().await;
        assert!(rx.try_recv().expect("granted").is_ok());
    }

    #[tokio::test(start_paused = true)]
    async fn granted_but_dropped_waiter_returns_the_slot() {
        let (s, busy) = busy_worker(2).await;
        let mut first = Box::pin(s.acquire(5.0, far()));
        // Poll once so it queues.
        assert!(futures::poll!(first.as_mut()).is_pending());
        let (_h, mut second) = spawn_acquire(&s, 1.0, far());
        settle().await;
        drop(busy); // grants `first`, which never looks at it
        assert_eq!(
            s.load(),
            Load {
                queued: 1,
                in_flight: 1
            }
        );
        drop(first);
        settle().await;
        assert!(second.try_recv().expect("granted").is_ok());
    }

    /// A priority above every waiter's in these tests: its holds describe them all.
    const TOP: f64 = f64::MAX;

    /// Holds a slot for `held` at priority [`TOP`] and finishes it: one service-time sample
    /// that every waiter is judged by.
    async fn measure(s: &Arc<Scheduler>, held: Duration) {
        measure_at(s, TOP, held).await;
    }

    /// Holds a slot for `held` at `priority` and finishes it: one service-time sample, for
    /// the waiters of that priority or lower.
    async fn measure_at(s: &Arc<Scheduler>, priority: f64, held: Duration) {
        let slot = s.acquire(priority, far()).await.expect("slot");
        tokio::time::advance(held).await;
        slot.finish();
    }

    /// The service-time estimate a waiter of `priority` is judged by.
    fn estimate_for(s: &Scheduler, priority: f64) -> Option<Duration> {
        s.state.lock().service.estimate_for(priority)
    }

    const SECOND: Duration = Duration::from_secs(1);

    #[tokio::test(start_paused = true)]
    async fn finished_slots_set_the_service_time_dropped_ones_do_not() {
        let s = Scheduler::new(1, 4);
        assert_eq!(s.service_time(), None);
        measure(&s, 2 * SECOND).await;
        assert_eq!(s.service_time(), Some(2 * SECOND));
        let failed = s.acquire(0.0, far()).await.expect("slot");
        tokio::time::advance(5 * SECOND).await;
        drop(failed);
        assert_eq!(s.service_time(), Some(2 * SECOND));
        assert_eq!(s.load().in_flight, 0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_cut_off_hold_only_ever_raises_the_service_time() {
        let policy = Policy {
            service_samples: 2,
            service_quantile: 1.0,
            ..Policy::default()
        };
        let s = Scheduler::with_policy(1, 4, policy);
        let slot = s.acquire(0.0, far()).await.expect("slot");
        tokio::time::advance(2 * SECOND).await;
        slot.cut_off();
        assert_eq!(
            s.service_time(),
            Some(2 * SECOND),
            "better than no estimate"
        );
        measure(&s, 3 * SECOND).await;
        assert_eq!(s.service_time(), Some(3 * SECOND));
        // Cut off after 1 s: it would have taken more than 1 s, which says nothing new. As
        // a sample it would push the 3 s answer out of the window and the estimate down.
        let slot = s.acquire(0.0, far()).await.expect("slot");
        tokio::time::advance(SECOND).await;
        slot.cut_off();
        measure(&s, 2 * SECOND).await;
        assert_eq!(s.service_time(), Some(3 * SECOND));
        assert_eq!(s.service_samples(), 2);
        // Cut off after 5 s: slower than the estimate, which it raises.
        let slot = s.acquire(0.0, far()).await.expect("slot");
        tokio::time::advance(5 * SECOND).await;
        slot.cut_off();
        assert_eq!(s.service_time(), Some(5 * SECOND));
    }

    /// Answers cut short 0.5 s before their deadline.
    const ANSWER_MARGIN: Duration = Duration::from_millis(500);

    /// Holds a slot at [`TOP`], its first chunk `first` after the grant, and gives it back
    /// truncated after `held`.
    async fn measure_truncated(s: &Arc<Scheduler>, first: Duration, held: Duration) {
        let mut slot = s.acquire(TOP, far()).await.expect("slot");
        tokio::time::advance(first).await;
        slot.first_chunk_arrived();
        tokio::time::advance(held - first).await;
        slot.truncated();
    }

    /// Four workers, all busy, that learned a truncated hold of 10 s whose first chunk came
    /// after 1 s.
    async fn four_busy_after_a_truncated_answer(
        answer_margin: Option<Duration>,
    ) -> (Arc<Scheduler>, Vec<Slot>) {
        let policy = Policy {
            answer_margin,
            ..Policy::default()
        };
        let s = Scheduler::with_policy(4, 8, policy);
        measure_truncated(&s, SECOND, 10 * SECOND).await;
        assert_eq!(
            (s.service_time(), s.first_chunk_time()),
            (Some(10 * SECOND), Some(SECOND))
        );
        let mut busy = Vec::new();
        for _ in 0..4 {
            busy.push(s.acquire(0.0, far()).await.expect("a free worker"));
        }
        (s, busy)
    }

    #[tokio::test(start_paused = true)]
    async fn answers_cut_short_need_their_first_chunk_in_time_not_their_whole_hold() {
        // Whole answers: 10 s for its answer and 2.5 s for a worker (four free up per
        // 10 s); 8 s left is not enough.
        let (s, _busy) = four_busy_after_a_truncated_answer(None).await;
        let (_h, mut rx) = spawn_acquire(&s, 1.0, Instant::now() + 8 * SECOND);
        settle().await;
        let rejection = rx.try_recv().expect("refused").err();
        assert!(
            matches!(rejection, Some(Rejection::CannotFinishOnArrival { left, need })
                if left == 8 * SECOND && need == Duration::from_millis(12_500)),
            "{rejection:?}"
        );

        // Cut short: 1 s to its first chunk and the 0.5 s margin once granted, and the
        // same 2.5 s for a worker.
        let (s, mut busy) = four_busy_after_a_truncated_answer(Some(ANSWER_MARGIN)).await;
        let (_h, mut rx) = spawn_acquire(&s, 1.0, Instant::now() + 8 * SECOND);
        settle().await;
        assert_eq!(s.load().queued, 1);
        tokio::time::advance(6 * SECOND).await;
        settle().await;
        assert!(rx.try_recv().is_err(), "2 s left, 1.5 s needed: waiting");
        drop(busy.pop());
        settle().await;
        assert!(rx.try_recv().expect("granted").is_ok());
    }

    #[tokio::test(start_paused = true)]
    async fn a_waiter_leaves_when_its_first_chunk_could_not_come_before_the_margin() {
        let (s, _busy) = four_busy_after_a_truncated_answer(Some(ANSWER_MARGIN)).await;
        let (_h, mut rx) = spawn_acquire(&s, 1.0, Instant::now() + 8 * SECOND);
        settle().await;
        tokio::time::advance(Duration::from_millis(6400)).await;
        settle().await;
        assert!(rx.try_recv().is_err(), "1.6 s left: still waiting");
        tokio::time::advance(Duration::from_millis(200)).await;
        settle().await;
        let rejection = rx.try_recv().expect("left").err();
        assert!(
            matches!(rejection, Some(Rejection::CannotFinishWhileWaiting { left, need })
                if need == Duration::from_millis(1500) && left <= need),
            "{rejection:?}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn first_chunk_times_are_measured_and_bounded_by_cut_offs() {
        let policy = Policy {
            answer_margin: Some(ANSWER_MARGIN),
            ..Policy::default()
        };
        let s = Scheduler::with_policy(1, 4, policy);
        let first_chunks = |s: &Scheduler| s.state.lock().first_chunks.len();
        // Cut off at its deadline after 3 s without a first chunk: it would have come
        // after 3 s or later.
        let slot = s.acquire(TOP, far()).await.expect("slot");
        tokio::time::advance(3 * SECOND).await;
        slot.cut_off();
        assert_eq!(s.first_chunk_time(), Some(3 * SECOND));
        // Cut off after 2 s: says nothing new (and would pull the estimate down).
        let slot = s.acquire(TOP, far()).await.expect("slot");
        tokio::time::advance(2 * SECOND).await;
        slot.cut_off();
        assert_eq!(first_chunks(&s), 1);
        // A first chunk after 4 s counts, however the request ends: here its caller went
        // away (no hold sample).
        let mut slot = s.acquire(TOP, far()).await.expect("slot");
        tokio::time::advance(4 * SECOND).await;
        slot.first_chunk_arrived();
        tokio::time::advance(SECOND).await;
        slot.first_chunk_arrived();
        drop(slot);
        assert_eq!(first_chunks(&s), 2);
        assert_eq!(
            s.first_chunk_time(),
            Some(4 * SECOND),
            "the first call counts"
        );
        assert_eq!(
            s.service_samples(),
            1,
            "the 3 s cut-off hold (the 2 s one was below it)"
        );
        // Preempted or failed before its first chunk: nothing.
        let slot = s.acquire(TOP, far()).await.expect("slot");
        tokio::time::advance(9 * SECOND).await;
        drop(slot);
        assert_eq!(first_chunks(&s), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn a_waiter_leaves_as_soon_as_it_cannot_finish_in_time() {
        let (s, _busy) = busy_worker_with(4, Policy::default(), Some(3 * SECOND)).await;
        let (_h, mut rx) = spawn_acquire(&s, 1.0, Instant::now() + 12 * SECOND);
        settle().await;
        assert_eq!(s.load().queued, 1);
        tokio::time::advance(Duration::from_millis(8900)).await;
        settle().await;
        assert!(rx.try_recv().is_err(), "3.1 s left: still waiting");
        tokio::time::advance(Duration::from_millis(200)).await;
        settle().await;
        let rejection = rx.try_recv().expect("left").err();
        assert!(
            matches!(rejection, Some(Rejection::CannotFinishWhileWaiting { left, need })
                if need == 3 * SECOND && left <= need && left > Duration::from_millis(2800)),
            "{rejection:?}"
        );
        assert_eq!(s.load().queued, 0, "left 3 s before its deadline");
    }

    #[tokio::test(start_paused = true)]
    async fn a_waiter_leaves_at_once_when_the_service_time_grows_past_its_time_left() {
        let s = Scheduler::new(2, 4);
        measure(&s, Duration::from_millis(100)).await;
        // At the low waiter's priority: its hold judges that waiter.
        let slow = s.acquire(1.0, far()).await.expect("slot");
        let _busy = s.acquire(0.0, far()).await.expect("slot");
        let (_h1, mut high) = spawn_acquire(&s, 9.0, far());
        let (_h2, mut low) = spawn_acquire(&s, 1.0, Instant::now() + 8 * SECOND);
        settle().await;
        assert_eq!(s.load().queued, 2);
        tokio::time::advance(5 * SECOND).await;
        // A 5 s hold: the estimate (the 0.9 quantile of 0.1 and 5 s) becomes 5 s.
        slow.finish();
        settle().await;
        assert_eq!(s.service_time(), Some(5 * SECOND));
        assert!(high.try_recv().expect("granted").is_ok());
        // 3 s left, 5 s needed: it leaves now, not 0.1 s before its deadline (when the
        // estimate it started waiting with would have it give up).
        let rejection = low.try_recv().expect("left").err();
        assert!(
            matches!(rejection, Some(Rejection::CannotFinishWhileWaiting { left, need })
                if left == 3 * SECOND && need == 5 * SECOND),
            "{rejection:?}"
        );
        assert_eq!(s.load().queued, 0);
    }

    #[tokio::test(start_paused = true)]
    async fn waiters_queued_before_the_first_sample_are_judged_by_it() {
        let s = Scheduler::new(1, 4);
        let first = s.acquire(1.0, far()).await.expect("slot");
        // No estimate yet: queued whatever its time left.
        let (_h1, mut hopeless) = spawn_acquire(&s, 1.0, Instant::now() + 6 * SECOND);
        let (_h2, mut patient) = spawn_acquire(&s, 1.0, far());
        settle().await;
        tokio::time::advance(4 * SECOND).await;
        first.finish();
        settle().await;
        // The first answer took 4 s; 2 s are left: refused now, not at its deadline (the
        // queue is backed up, so the newest, `patient`, is the one granted).
        assert!(matches!(
            hopeless.try_recv().expect("left").err(),
            Some(Rejection::CannotFinishWhileWaiting { .. })
        ));
        assert!(patient.try_recv().expect("granted").is_ok());
    }

    #[tokio::test(start_paused = true)]
    async fn an_arrival_is_refused_when_the_queue_ahead_cannot_drain_in_time() {
        let (s, _busy) = busy_worker_with(8, Policy::default(), Some(3 * SECOND)).await;
        let mut queued = Vec::new();
        for _ in 0..3 {
            queued.push(spawn_acquire(&s, 5.0, far()));
        }
        settle().await;
        // Three equal waiters ahead, one slot: 3 s each, then 3 s for itself.
        let twelve = Instant::now() + 12 * SECOND;
        assert_eq!(
            s.acquire(5.0, twelve).await.err(),
            Some(Rejection::CannotFinishOnArrival {
                left: 12 * SECOND,
                need: 15 * SECOND
            })
        );
        // Less time than one answer takes.
        assert!(matches!(
            s.acquire(9.0, Instant::now() + 2 * SECOND).await.err(),
            Some(Rejection::CannotFinishOnArrival { .. })
        ));
        // A higher priority goes ahead of them: it waits.
        let (_h, mut high) = spawn_acquire(&s, 9.0, twelve);
        settle().await;
        assert!(high.try_recv().is_err());
        assert_eq!(s.load().queued, 4);
    }

    /// A low-stake caller's priority and a validator's.
    const LOW: f64 = 1.0;
    const HIGH: f64 = 10_000.0;

    /// One worker, held at [`LOW`] by the returned slot, and room for 8 waiters, after three
    /// 10 s holds at [`LOW`] and one 1 s hold at [`HIGH`]: the estimate is 10 s overall and
    /// for [`LOW`], 1 s for [`HIGH`] (the 0.9 quantile of its one sample).
    async fn slow_lows_fast_highs(policy: Policy) -> (Arc<Scheduler>, Slot) {
        let s = Scheduler::with_policy(1, 8, policy);
        for _ in 0..3 {
            measure_at(&s, LOW, 10 * SECOND).await;
        }
        measure_at(&s, HIGH, SECOND).await;
        assert_eq!(s.service_time(), Some(10 * SECOND), "overall");
        assert_eq!(
            (estimate_for(&s, LOW), estimate_for(&s, HIGH)),
            (Some(10 * SECOND), Some(SECOND))
        );
        let busy = s.acquire(LOW, far()).await.expect("the free worker");
        (s, busy)
    }

    #[tokio::test(start_paused = true)]
    async fn slow_low_priority_holds_do_not_get_a_high_priority_arrival_refused() {
        let policy = Policy {
            lifo_after: None,
            ..Policy::default()
        };
        let (s, busy) = slow_lows_fast_highs(policy).await;
        // 5 s left: 1 s to wait for the worker and 1 s to answer, by the holds at HIGH.
        let five = Instant::now() + 5 * SECOND;
        let (_h1, mut high) = spawn_acquire(&s, HIGH, five);
        settle().await;
        assert!(high.try_recv().is_err(), "queued, not refused");
        // One more behind it: 2 s to wait.
        let (_h2, mut next) = spawn_acquire(&s, HIGH, five);
        settle().await;
        assert_eq!(s.load().queued, 2);
        assert_eq!(s.give_up_at(five, HIGH), five - SECOND);
        // 2 s left: below the overall estimate, above their own. They wait on, and the
        // first is granted.
        tokio::time::advance(3 * SECOND).await;
        settle().await;
        assert!(high.try_recv().is_err() && next.try_recv().is_err());
        drop(busy);
        settle().await;
        let _served = high.try_recv().expect("granted").expect("a slot");
        // The other leaves once its time left falls to its own 1 s.
        tokio::time::advance(Duration::from_millis(900)).await;
        settle().await;
        assert!(next.try_recv().is_err(), "1.1 s left: still waiting");
        tokio::time::advance(Duration::from_millis(200)).await;
        settle().await;
        let rejection = next.try_recv().expect("left").err();
        assert!(
            matches!(rejection, Some(Rejection::CannotFinishWhileWaiting { need, .. })
                if need == SECOND),
            "{rejection:?}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_low_priority_arrival_is_still_judged_by_the_slow_low_holds() {
        let (s, _busy) = slow_lows_fast_highs(Policy::default()).await;
        // 10 s to wait for the worker, 10 s to answer.
        assert_eq!(
            s.acquire(LOW, Instant::now() + 12 * SECOND).await.err(),
            Some(Rejection::CannotFinishOnArrival {
                left: 12 * SECOND,
                need: 20 * SECOND
            })
        );
        // A waiter leaves once its time left falls to 10 s.
        let (_h, mut low) = spawn_acquire(&s, LOW, Instant::now() + 25 * SECOND);
        settle().await;
        tokio::time::advance(Duration::from_millis(14900)).await;
        settle().await;
        assert!(low.try_recv().is_err(), "10.1 s left: still waiting");
        tokio::time::advance(Duration::from_millis(200)).await;
        settle().await;
        let rejection = low.try_recv().expect("left").err();
        assert!(
            matches!(rejection, Some(Rejection::CannotFinishWhileWaiting { need, .. })
                if need == 10 * SECOND),
            "{rejection:?}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_priority_never_seen_is_not_refused_on_an_estimate() {
        let (s, _busy) = slow_lows_fast_highs(Policy::default()).await;
        // Between LOW and HIGH: judged by the holds at HIGH (1 s to wait, 1 s to answer).
        assert!(matches!(
            s.acquire(5000.0, Instant::now() + Duration::from_millis(1500))
                .await
                .err(),
            Some(Rejection::CannotFinishOnArrival { need, .. }) if need == 2 * SECOND
        ));
        // Above HIGH: no hold tells how fast it is served. It waits, until its deadline.
        let deadline = Instant::now() + SECOND;
        assert_eq!(s.give_up_at(deadline, 2.0 * HIGH), deadline);
        let (_h, mut top) = spawn_acquire(&s, 2.0 * HIGH, deadline);
        settle().await;
        assert!(top.try_recv().is_err(), "queued");
        tokio::time::advance(Duration::from_millis(990)).await;
        settle().await;
        assert!(
            top.try_recv().is_err(),
            "still waiting just before its deadline"
        );
        tokio::time::advance(Duration::from_millis(20)).await;
        settle().await;
        assert_eq!(
            top.try_recv().expect("left").err(),
            Some(Rejection::Expired)
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_high_priority_waiter_preempts_when_its_own_estimate_leaves_it_time() {
        let policy = Policy {
            preempt: Some(0.0),
            ..Policy::default()
        };
        let (s, mut busy) = slow_lows_fast_highs(policy).await;
        // 5 s left: not enough for the overall 10 s, plenty for its own 1 s.
        let (_h, _high) = spawn_acquire(&s, HIGH, Instant::now() + 5 * SECOND);
        settle().await;
        assert_eq!(s.load().queued, 1);
        assert!(is_preempted(&mut busy), "the low request gives its slot up");
    }

    #[tokio::test(start_paused = true)]
    async fn a_grown_estimate_drops_only_the_waiters_it_judges() {
        let s = Scheduler::new(2, 8);
        measure_at(&s, LOW, SECOND).await;
        measure_at(&s, HIGH, SECOND).await;
        let slow = s.acquire(LOW, far()).await.expect("slot");
        let _busy = s.acquire(LOW, far()).await.expect("slot");
        let eight = Instant::now() + 8 * SECOND;
        let (_h1, mut high1) = spawn_acquire(&s, HIGH, eight);
        let (_h2, mut high2) = spawn_acquire(&s, HIGH, eight);
        let (_h3, mut low) = spawn_acquire(&s, LOW, eight);
        settle().await;
        assert_eq!(s.load().queued, 3);
        tokio::time::advance(5 * SECOND).await;
        // A 5 s hold at LOW: LOW's estimate (the 0.9 quantile of 1, 1 and 5 s) becomes
        // 5 s; HIGH's stays 1 s.
        slow.finish();
        settle().await;
        assert_eq!(
            (estimate_for(&s, LOW), estimate_for(&s, HIGH)),
            (Some(5 * SECOND), Some(SECOND))
        );
        // 3 s left, 5 s needed: the low waiter leaves now.
        let rejection = low.try_recv().expect("left").err();
        assert!(
            matches!(rejection, Some(Rejection::CannotFinishWhileWaiting { left, need })
                if left == 3 * SECOND && need == 5 * SECOND),
            "{rejection:?}"
        );
        // The high ones need 1 s: one takes the slot, the other waits on.
        let granted = [high1.try_recv(), high2.try_recv()];
        assert_eq!(
            granted.iter().filter(|r| matches!(r, Ok(Ok(_)))).count(),
            1,
            "{granted:?}"
        );
        assert_eq!(s.load().queued, 1);
    }

    #[tokio::test(start_paused = true)]
    async fn a_cut_off_hold_is_judged_by_the_estimate_for_its_priority() {
        let policy = Policy {
            service_samples: 8,
            service_quantile: 1.0,
            ..Policy::default()
        };
        let s = Scheduler::with_policy(1, 4, policy);
        measure_at(&s, LOW, 10 * SECOND).await;
        measure_at(&s, HIGH, SECOND).await;
        // Cut off after 3 s at HIGH: below the overall 10 s, above HIGH's 1 s, which it
        // raises.
        let slot = s.acquire(HIGH, far()).await.expect("slot");
        tokio::time::advance(3 * SECOND).await;
        slot.cut_off();
        assert_eq!(estimate_for(&s, HIGH), Some(3 * SECOND));
        assert_eq!(s.service_samples(), 3);
        // Cut off after 3 s at LOW: below LOW's 10 s, nothing new.
        let slot = s.acquire(LOW, far()).await.expect("slot");
        tokio::time::advance(3 * SECOND).await;
        slot.cut_off();
        assert_eq!(s.service_samples(), 3);
        assert_eq!(s.service_time(), Some(10 * SECOND));
    }

    #[tokio::test(start_paused = true)]
    async fn a_free_slot_goes_to_an_arrival_whatever_its_time_left() {
        let s = Scheduler::new(2, 4);
        measure(&s, 10 * SECOND).await;
        let _busy = s.acquire(0.0, far()).await.expect("slot");
        // Nobody waits and a slot is free: nothing else would use it.
        assert!(s.acquire(0.0, Instant::now() + SECOND).await.is_ok());
    }

    #[tokio::test(start_paused = true)]
    async fn a_backed_up_queue_serves_the_newest_first_among_equals() {
        let (s, busy) = busy_worker(10).await;
        let waiting = queue_up(
            &s,
            &[("eq1", 5.0), ("low", 1.0), ("eq2", 5.0), ("high", 9.0)],
        )
        .await;
        // Backed up for longer than `lifo_after` (1 s).
        tokio::time::advance(2 * SECOND).await;
        let order = served_order(busy, waiting).await;
        assert_eq!(order, ["high", "eq2", "eq1", "low"]);
    }

    #[tokio::test(start_paused = true)]
    async fn fifo_policy_keeps_the_oldest_first_however_backed_up() {
        let policy = Policy {
            lifo_after: None,
            ..Policy::default()
        };
        let (s, busy) = busy_worker_with(10, policy, None).await;
        let waiting = queue_up(&s, &[("eq1", 5.0), ("eq2", 5.0), ("eq3", 5.0)]).await;
        tokio::time::advance(60 * SECOND).await;
        assert_eq!(served_order(busy, waiting).await, ["eq1", "eq2", "eq3"]);
    }

    #[tokio::test(start_paused = true)]
    async fn a_full_backed_up_queue_sheds_its_oldest_among_equals() {
        let (s, _busy) = busy_worker(2).await;
        let (_h1, mut old) = spawn_acquire(&s, 1.0, far());
        settle().await;
        let (_h2, mut young) = spawn_acquire(&s, 1.0, far());
        settle().await;
        tokio::time::advance(2 * SECOND).await;
        let (_h3, mut newcomer) = spawn_acquire(&s, 1.0, far());
        settle().await;
        assert_eq!(old.try_recv().expect("shed").err(), Some(Rejection::Shed));
        assert!(young.try_recv().is_err() && newcomer.try_recv().is_err());
        // A lower priority is still refused itself.
        assert_eq!(
            s.acquire(0.5, far()).await.err(),
            Some(Rejection::QueueFull)
        );
        assert_eq!(s.load().queued, 2);
    }

    #[tokio::test(start_paused = true)]
    async fn ignoring_deadlines_grants_whatever_the_time_left() {
        let policy = Policy {
            deadline_aware: false,
            ..Policy::default()
        };
        let (s, busy) = busy_worker_with(4, policy, Some(10 * SECOND)).await;
        let (_h, mut rx) = spawn_acquire(&s, 1.0, Instant::now() + 3 * SECOND);
        settle().await;
        tokio::time::advance(2 * SECOND).await;
        drop(busy);
        settle().await;
        assert!(rx.try_recv().expect("granted").is_ok());
    }

    #[tokio::test(start_paused = true)]
    async fn the_margin_scales_the_time_a_waiter_needs() {
        let policy = Policy {
            margin: 2.0,
            ..Policy::default()
        };
        let (s, _busy) = busy_worker_with(4, policy, Some(3 * SECOND)).await;
        let (_h, mut rx) = spawn_acquire(&s, 1.0, Instant::now() + 12 * SECOND);
        settle().await;
        // 6 s needed: it leaves 6 s before its deadline.
        tokio::time::advance(Duration::from_millis(6100)).await;
        settle().await;
        assert!(matches!(
            rx.try_recv().expect("left").err(),
            Some(Rejection::CannotFinishWhileWaiting { need, .. }) if need == 6 * SECOND
        ));
    }

    /// Whether `slot` acts on a preemption now (polled once, outside any task).
    fn is_preempted(slot: &mut Slot) -> bool {
        let waker = futures::task::noop_waker();
        let mut cx = std::task::Context::from_waker(&waker);
        slot.poll_preempted(&mut cx).is_ready()
    }

    /// Two slots held, at priorities 1 (`low`) and 10 (`mid`), preemption on.
    async fn two_busy_slots() -> (Arc<Scheduler>, Slot, Slot) {
        let policy = Policy {
            preempt: Some(0.0),
            ..Policy::default()
        };
        let s = Scheduler::with_policy(2, 4, policy);
        let low = s.acquire(1.0, far()).await.expect("a free slot");
        let mid = s.acquire(10.0, far()).await.expect("a free slot");
        (s, low, mid)
    }

    #[tokio::test(start_paused = true)]
    async fn a_slot_freed_before_the_victim_acts_calls_its_preemption_off() {
        let (s, mut low, mid) = two_busy_slots().await;
        let (_h, mut high) = spawn_acquire(&s, 100.0, far());
        settle().await;
        assert!(low.signal.raised(), "signalled for the waiter");
        // "mid" ends first: its slot goes to the waiter, whose preemption is called off.
        drop(mid);
        settle().await;
        let _served = high.try_recv().expect("granted").expect("a slot");
        assert!(!low.signal.raised());
        assert!(!is_preempted(&mut low), "low runs on");
        let state = s.state.lock();
        assert_eq!(
            (state.running.preemptions(), state.running.called_off()),
            (0, 1)
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_preemption_acted_on_stands_and_its_slot_goes_to_the_waiter() {
        let (s, mut low, mid) = two_busy_slots().await;
        let (_h, mut high) = spawn_acquire(&s, 100.0, far());
        settle().await;
        assert!(is_preempted(&mut low));
        // Too late to call it off: the waiter takes the slot that frees first, and "low"'s
        // goes to nobody (given back, free).
        drop(mid);
        settle().await;
        let _served = high.try_recv().expect("granted").expect("a slot");
        assert!(is_preempted(&mut low), "it stands");
        drop(low);
        assert_eq!(s.load().in_flight, 1);
        assert_eq!(s.preemptions(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn a_waiter_that_leaves_calls_its_preemption_off() {
        let (s, mut low, _mid) = two_busy_slots().await;
        let (waiter, _high) = spawn_acquire(&s, 100.0, far());
        settle().await;
        assert!(low.signal.raised());
        waiter.abort();
        settle().await;
        assert_eq!(s.load().queued, 0);
        assert!(!is_preempted(&mut low), "nobody to take its slot");
        assert_eq!(s.preemptions(), 0);
    }
}
