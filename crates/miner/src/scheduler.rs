//! A fixed number of worker slots behind a bounded priority queue.
//!
//! A request takes a free slot at once when nobody is waiting; otherwise it waits in the
//! queue, ordered by priority (higher first), FIFO among equal priorities. A full queue
//! sheds its lowest-ranked entry (the newcomer when it ranks lowest, as it does among
//! equals). A waiter whose deadline passes leaves the queue with [`Rejection::Expired`] and
//! never gets a slot; a waiter that is dropped (its caller went away) leaves the queue, or
//! returns the slot it was just granted.

use std::cmp::Ordering;
use std::collections::BTreeMap;
use std::sync::Arc;

use parking_lot::Mutex;
use tokio::sync::oneshot;
use tokio::time::Instant;

/// Why no slot was given.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rejection {
    /// The queue is full and this request ranks lowest.
    Overloaded,
    /// The deadline passed before a slot was free.
    Expired,
}

/// The queue's verdict for one waiter, sent when it leaves the queue.
#[derive(Debug)]
enum Admission {
    Granted,
    Shed,
    Expired,
}

/// A queue position: higher priority first, then arrival order.
#[derive(Debug, Clone, Copy)]
struct Rank {
    priority: f64,
    seq: u64,
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

#[derive(Debug)]
struct Waiter {
    deadline: Instant,
    notify: oneshot::Sender<Admission>,
}

#[derive(Debug, Default)]
struct State {
    in_flight: usize,
    next_seq: u64,
    /// First entry = best ranked.
    waiting: BTreeMap<Rank, Waiter>,
}

/// Worker slots and the queue in front of them.
#[derive(Debug)]
pub struct Scheduler {
    workers: usize,
    queue_capacity: usize,
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
    /// `workers` slots (at least 1) and room for `queue_capacity` waiters.
    pub fn new(workers: usize, queue_capacity: usize) -> Arc<Self> {
        Arc::new(Scheduler {
            workers: workers.max(1),
            queue_capacity,
            state: Mutex::new(State::default()),
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
            in_flight: state.in_flight,
        }
    }

    /// Waits for a slot, ranked by `priority`, until `deadline`. Dropping the returned
    /// future gives up the place in the queue.
    pub async fn acquire(
        self: &Arc<Self>,
        priority: f64,
        deadline: Instant,
    ) -> Result<Slot, Rejection> {
        let mut ticket = match self.enqueue(priority, deadline) {
            Enqueued::Granted => return Ok(self.slot()),
            Enqueued::Rejected(rejection) => return Err(rejection),
            Enqueued::Waiting(ticket) => ticket,
        };
        let admission = tokio::time::timeout_at(deadline, &mut ticket.receiver).await;
        match admission {
            Ok(Ok(Admission::Granted)) => {
                ticket.settled = true;
                let slot = self.slot();
                if Instant::now() >= deadline {
                    // Granted at the deadline: too late to run, give the slot back.
                    drop(slot);
                    return Err(Rejection::Expired);
                }
                Ok(slot)
            }
            Ok(Ok(Admission::Shed)) => {
                ticket.settled = true;
                Err(Rejection::Overloaded)
            }
            Ok(Ok(Admission::Expired)) => {
                ticket.settled = true;
                Err(Rejection::Expired)
            }
            // The sender is only dropped after a verdict is sent, so this is unreachable in
            // practice; treat it as shed.
            Ok(Err(_)) => {
                ticket.settled = true;
                Err(Rejection::Overloaded)
            }
            // Timed out in the queue: the ticket's drop removes the entry (or returns a slot
            // granted in the meantime).
            Err(_) => Err(Rejection::Expired),
        }
    }

    fn slot(self: &Arc<Self>) -> Slot {
        Slot {
            scheduler: Arc::clone(self),
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
        if state.in_flight < self.workers && state.waiting.is_empty() {
            state.in_flight += 1;
            return Enqueued::Granted;
        }
        if state.waiting.len() >= self.queue_capacity {
            drop_expired(&mut state, now);
        }
        if state.waiting.len() >= self.queue_capacity {
            let lowest = state.waiting.last_key_value().map(|(rank, _)| *rank);
            match lowest {
                // The newcomer ranks after every queued request of equal priority.
                Some(lowest) if priority > lowest.priority => {
                    if let Some(waiter) = state.waiting.remove(&lowest) {
                        let _ = waiter.notify.send(Admission::Shed);
                    }
                }
                _ => return Enqueued::Rejected(Rejection::Overloaded),
            }
        }
        let rank = Rank {
            priority,
            seq: state.next_seq,
        };
        state.next_seq += 1;
        let (notify, receiver) = oneshot::channel();
        state.waiting.insert(rank, Waiter { deadline, notify });
        Enqueued::Waiting(Ticket {
            scheduler: Arc::clone(self),
            rank,
            receiver,
            settled: false,
        })
    }

    /// Hands free slots to the best-ranked waiters whose deadline has not passed.
    fn dispatch(&self, state: &mut State, now: Instant) {
        while state.in_flight < self.workers {
            let Some((_, waiter)) = state.waiting.pop_first() else {
                break;
            };
            if waiter.deadline <= now {
                let _ = waiter.notify.send(Admission::Expired);
            } else if waiter.notify.send(Admission::Granted).is_ok() {
                state.in_flight += 1;
            }
        }
    }

    fn release(&self) {
        let mut state = self.state.lock();
        self.release_locked(&mut state);
    }

    fn release_locked(&self, state: &mut State) {
        state.in_flight = state.in_flight.saturating_sub(1);
        self.dispatch(state, Instant::now());
    }
}

fn drop_expired(state: &mut State, now: Instant) {
    let expired: Vec<Rank> = state
        .waiting
        .iter()
        .filter(|(_, waiter)| waiter.deadline <= now)
        .map(|(rank, _)| *rank)
        .collect();
    for rank in expired {
        if let Some(waiter) = state.waiting.remove(&rank) {
            let _ = waiter.notify.send(Admission::Expired);
        }
    }
}

enum Enqueued {
    Granted,
    Rejected(Rejection),
    Waiting(Ticket),
}

/// A place in the queue; leaving it unsettled (dropped, timed out) cleans up.
struct Ticket {
    scheduler: Arc<Scheduler>,
    rank: Rank,
    receiver: oneshot::Receiver<Admission>,
    settled: bool,
}

impl Drop for Ticket {
    fn drop(&mut self) {
        if self.settled {
            return;
        }
        let mut state = self.scheduler.state.lock();
        if state.waiting.remove(&self.rank).is_some() {
            return;
        }
        // Already out of the queue: a verdict was sent under the lock we hold.
        if let Ok(Admission::Granted) = self.receiver.try_recv() {
            self.scheduler.release_locked(&mut state);
        }
    }
}

/// A worker slot, given back when dropped.
#[derive(Debug)]
pub struct Slot {
    scheduler: Arc<Scheduler>,
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.scheduler.release();
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
        let s = Scheduler::new(1, 10);
        let busy = s.acquire(0.0, far()).await.expect("slot");
        let mut waiting = Vec::new();
        for (name, priority) in [("low", 1.0), ("eq1", 5.0), ("high", 9.0), ("eq2", 5.0)] {
            waiting.push((name, spawn_acquire(&s, priority, far())));
            settle().await;
        }
        assert_eq!(s.load().queued, 4);
        drop(busy);
        let mut order = Vec::new();
        for _ in 0..4 {
            settle().await;
            let mut granted = None;
            for (name, (_, rx)) in waiting.iter_mut() {
                if let Ok(result) = rx.try_recv() {
                    granted = Some((*name, result.expect("granted")));
                }
            }
            let (name, slot) = granted.expect("one waiter granted per free slot");
            order.push(name);
            drop(slot);
        }
        assert_eq!(order, ["high", "eq1", "eq2", "low"]);
    }

    #[tokio::test(start_paused = true)]
    async fn full_queue_sheds_the_lowest() {
        let s = Scheduler::new(1, 2);
        let _busy = s.acquire(0.0, far()).await.expect("slot");
        let (_h1, mut low) = spawn_acquire(&s, 1.0, far());
        let (_h2, mut mid) = spawn_acquire(&s, 5.0, far());
        settle().await;
        // A newcomer ranking lowest (or equal to the lowest) is refused itself.
        assert_eq!(
            s.acquire(1.0, far()).await.err(),
            Some(Rejection::Overloaded)
        );
        assert_eq!(
            s.acquire(0.5, far()).await.err(),
            Some(Rejection::Overloaded)
        );
        // A better newcomer sheds the lowest queued request.
        let (_h3, mut high) = spawn_acquire(&s, 9.0, far());
        settle().await;
        assert_eq!(
            low.try_recv().expect("shed").err(),
            Some(Rejection::Overloaded)
        );
        assert!(mid.try_recv().is_err() && high.try_recv().is_err());
        assert_eq!(s.load().queued, 2);
    }

    #[tokio::test(start_paused = true)]
    async fn zero_queue_refuses_when_busy() {
        let s = Scheduler::new(1, 0);
        let busy = s.acquire(0.0, far()).await.expect("slot");
        assert_eq!(
            s.acquire(1e9, far()).await.err(),
            Some(Rejection::Overloaded)
        );
        drop(busy);
        assert!(s.acquire(0.0, far()).await.is_ok());
    }

    #[tokio::test(start_paused = true)]
    async fn deadline_in_queue_expires_and_never_runs() {
        let s = Scheduler::new(1, 4);
        let busy = s.acquire(0.0, far()).await.expect("slot");
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
        let s = Scheduler::new(1, 1);
        let busy = s.acquire(0.0, far()).await.expect("slot");
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
        let s = Scheduler::new(1, 2);
        let busy = s.acquire(0.0, far()).await.expect("slot");
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
}
