//! What the engine's handle ([`Engine`](crate::engine::Engine)) and its thread's loop (the
//! private `batcher`) share: the model interface, the events a request receives, the limits
//! and the counters.

use std::sync::atomic::{AtomicU64, AtomicUsize};

use tokio::sync::mpsc::UnboundedSender;

use crate::error::{BtlmError, Result};
use crate::generation::Generation;
use crate::kv_cache::Cache;
use crate::model::{Btlm, Segment};

/// The model interface the engine drives: per-sequence caches and a batched step. [`Btlm`]
/// implements it; tests use scripted models.
pub trait StepModel: Send + 'static {
    /// A sequence's cache.
    type Cache: Send;

    /// The context length in tokens.
    fn context(&self) -> usize;

    /// Bytes of cache one token takes.
    fn kv_bytes_per_token(&self) -> usize;

    /// An empty cache allocating room for `positions` tokens.
    fn new_cache(&self, positions: usize) -> Self::Cache;

    /// Runs the segments' tokens (one pass for all) and returns, for each segment that asks
    /// for them, the logits of its next token, in segment order.
    fn step(&self, segments: &mut [Segment<'_, Self::Cache>]) -> Result<Vec<Vec<f32>>>;
}

impl StepModel for Btlm {
    type Cache = Cache;

    fn context(&self) -> usize {
        self.config().n_positions
    }

    fn kv_bytes_per_token(&self) -> usize {
        Btlm::kv_bytes_per_token(self)
    }

    fn new_cache(&self, positions: usize) -> Cache {
        self.new_cache_with_capacity(positions)
    }

    fn step(&self, segments: &mut [Segment<'_, Cache>]) -> Result<Vec<Vec<f32>>> {
        Ok(self.forward_batch(segments)?.to_vec2::<f32>()?)
    }
}

/// What the engine reports about one request, in order: text pieces, then one `Done`.
#[derive(Debug)]
pub enum Event {
    /// A final piece of the completion.
    Text(String),
    /// The request ended (see [`Generation::finish`]) or failed.
    Done(Result<Generation>),
}

/// Why a request was not queued.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SubmitError {
    /// Too many requests already wait for a batch slot.
    #[error("the model queue is full")]
    QueueFull,
    /// The request's cache (prompt plus new tokens) exceeds the whole cache budget.
    #[error(
        "the request needs {needed_mb} MiB of key/value cache, more than the budget of \
         {budget_mb} MiB (--btlm.kv_cache_mb)"
    )]
    TooLarge {
        /// What the request needs, MiB (rounded up).
        needed_mb: usize,
        /// The budget, MiB.
        budget_mb: usize,
    },
    /// The prompt or the settings are unusable.
    #[error("{0}")]
    Invalid(String),
    /// The worker thread is gone.
    #[error("the model worker has stopped")]
    WorkerGone,
}

/// Limits of the engine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EngineConfig {
    /// Sequences run together in one step.
    pub max_batch: usize,
    /// Bytes of key/value cache all running sequences may reserve together.
    pub kv_cache_bytes: usize,
    /// Prompt tokens run per step (beyond the first prompt piece, which always runs).
    pub prefill_tokens_per_step: usize,
    /// Requests that may wait for a batch slot; more are refused.
    pub queue_size: usize,
    /// Run prompt pieces in the same pass as the decode rows (one pass over the weights per
    /// step) rather than in passes of their own (each piece alone, so results never depend
    /// on what else runs).
    pub piggyback_prefill: bool,
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            max_batch: 8,
            kv_cache_bytes: 4096 << 20,
            prefill_tokens_per_step: 64,
            queue_size: 16,
            piggyback_prefill: false,
        }
    }
}

impl EngineConfig {
    /// Checks the limits, naming the flag of a bad one.
    pub fn validate(&self) -> Result<()> {
        for (name, v) in [
            ("--btlm.max_batch", self.max_batch),
            ("--btlm.kv_cache_mb", self.kv_cache_bytes),
            ("--btlm.prefill_chunk", self.prefill_tokens_per_step),
            ("--btlm.queue_size", self.queue_size),
        ] {
            if v == 0 {
                return Err(BtlmError::InvalidArgument {
                    name,
                    reason: "must be at least 1".into(),
                });
            }
        }
        Ok(())
    }
}

/// Counters and gauges of the engine (for logs, metrics and tests).
#[derive(Debug, Default)]
pub struct EngineStats {
    /// Requests that ran to eos, a stop string or the token limit.
    pub completed: AtomicU64,
    /// Requests abandoned because the receiver went away.
    pub cancelled: AtomicU64,
    /// Requests stopped by their deadline (waiting or running).
    pub timed_out: AtomicU64,
    /// Requests that failed (including those of a step that panicked).
    pub failed: AtomicU64,
    /// Requests refused because the queue was full or they could never fit.
    pub rejected: AtomicU64,
    /// Tokens generated.
    pub tokens: AtomicU64,
    /// Steps run.
    pub steps: AtomicU64,
    /// Sequences running now.
    pub running: AtomicUsize,
    /// Requests waiting for a batch slot now.
    pub waiting: AtomicUsize,
    /// Bytes of key/value cache reserved now.
    pub kv_reserved_bytes: AtomicUsize,
    /// The most sequences that ran in one step.
    pub peak_batch: AtomicUsize,
}

/// Sends an event; `false` when the receiver is gone.
pub(crate) fn send(events: &UnboundedSender<Event>, event: Event) -> bool {
    events.send(event).is_ok()
}
