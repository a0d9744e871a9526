//! A backend's text stream held to the request's deadline, keeping its worker slot until it
//! ends or is dropped.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use futures::Stream;
use tokio::time::{Instant, Sleep};

use crate::scheduler::Slot;
use crate::stats::{Outcome, RequestTracker};
use crate::traits::{MinerError, TextStream};

/// Yields the backend's chunks until the backend ends, fails, or the deadline passes (then
/// one [`MinerError::Timeout`] and the end), or a higher-priority request preempts it (then
/// one [`MinerError::Preempted`] and the end). The first error ends the stream.
///
/// With a cutoff (`--miner.answer_margin_ms` before the deadline), the stream ends there
/// without error once it has yielded some text: the caller gets a shorter answer in time.
/// Until the first chunk, the cutoff waits for it (and the deadline still applies). With a
/// cutoff, a preemption after some text ends the stream the same way: the caller keeps
/// the text so far rather than an error.
pub(crate) struct BoundedStream {
    inner: Option<TextStream>,
    deadline: Pin<Box<Sleep>>,
    cutoff: Option<Pin<Box<Sleep>>>,
    /// Whether a non-empty chunk went out.
    answered: bool,
    slot: Option<Slot>,
    tracker: Option<RequestTracker>,
}

impl BoundedStream {
    pub(crate) fn new(
        inner: TextStream,
        deadline: Instant,
        cutoff: Option<Instant>,
        slot: Slot,
        tracker: RequestTracker,
    ) -> Self {
        BoundedStream {
            inner: Some(inner),
            deadline: Box::pin(tokio::time::sleep_until(deadline)),
            cutoff: cutoff.map(|at| Box::pin(tokio::time::sleep_until(at))),
            answered: false,
            slot: Some(slot),
            tracker: Some(tracker),
        }
    }

    /// Drops the backend stream, gives the slot back (a service-time sample when the stream
    /// ran to its end or to the deadline) and counts the outcome.
    fn finish(&mut self, outcome: Outcome) {
        self.inner = None;
        // Otherwise the slot is just dropped: given back without a sample.
        match (self.slot.take(), outcome) {
            (Some(slot), Outcome::Served) => slot.finish(),
            (Some(slot), Outcome::TimedOut) => slot.cut_off(),
            _ => {}
        }
        if let Some(tracker) = self.tracker.take() {
            tracker.finish(outcome);
        }
    }

    /// Ends the stream at the cutoff: the backend's work is dropped, the slot given back
    /// (how long it was held is how long a truncated answer holds its slot) and the
    /// request counted as served, cut short.
    fn finish_truncated(&mut self) {
        self.inner = None;
        if let Some(slot) = self.slot.take() {
            slot.truncated();
        }
        if let Some(tracker) = self.tracker.take() {
            tracker.finish_truncated();
        }
    }
}

impl Stream for BoundedStream {
    type Item = Result<String, MinerError>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        if this.inner.is_none() {
            return Poll::Ready(None);
        }
        if this.deadline.as_mut().poll(cx).is_ready() {
            let error = match &this.tracker {
                Some(tracker) => tracker.timeout(),
                None => MinerError::Timeout(0.0),
            };
            this.finish(Outcome::TimedOut);
            return Poll::Ready(Some(Err(error)));
        }
        if let Some(slot) = this.slot.as_mut()
            && slot.poll_preempted(cx).is_ready()
        {
            if this.answered && this.cutoff.is_some() {
                // An answer that may be cut short keeps its text; the slot is gone already.
                this.finish_truncated();
                return Poll::Ready(None);
            }
            this.finish(Outcome::Preempted);
            return Poll::Ready(Some(Err(MinerError::Preempted)));
        }
        if this.answered
            && let Some(cutoff) = this.cutoff.as_mut()
            && cutoff.as_mut().poll(cx).is_ready()
        {
            this.finish_truncated();
            return Poll::Ready(None);
        }
        let Some(inner) = this.inner.as_mut() else {
            return Poll::Ready(None);
        };
        match inner.as_mut().poll_next(cx) {
            Poll::Ready(Some(Ok(chunk))) => {
                this.answered |= !chunk.is_empty();
                Poll::Ready(Some(Ok(chunk)))
            }
            Poll::Ready(Some(Err(error))) => {
                this.finish(Outcome::of::<()>(&Err(error.clone())));
                Poll::Ready(Some(Err(error)))
            }
            Poll::Ready(None) => {
                this.finish(Outcome::Served);
                Poll::Ready(None)
            }
            Poll::Pending => Poll::Pending,
        }
    }
}
