//! The inference engine: one thread owns the model and runs *steps*; every step advances all
//! running sequences together (continuous batching, see the private `batcher` module).
//! Callers [`submit`](Engine::submit) requests from any thread and receive their text as
//! [`Event`]s.
//!
//! Bounds: at most [`EngineConfig::max_batch`] sequences run at once, their key/value caches
//! (prompt plus new tokens, reserved at admission) fit in [`EngineConfig::kv_cache_bytes`],
//! and at most [`EngineConfig::queue_size`] requests wait for a batch slot. A request that
//! can never fit is refused at once ([`SubmitError::TooLarge`]); one that cannot fit yet
//! waits.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::Sender;
use std::time::Instant;

use tokio::sync::mpsc::{UnboundedReceiver, UnboundedSender, unbounded_channel};

use crate::batcher::{Batcher, Job};
use crate::error::{BtlmError, Result};
use crate::generation::{Generation, GenerationConfig};
use crate::kv_cache::Cache;
use crate::model::{Btlm, Segment};
use crate::sequence::Sequence;
use crate::tokenizer::BtlmTokenizer;

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

/// A handle to the engine thread. Cloning shares the same engine; the thread stops once
/// every handle is dropped and the running sequences ended.
#[derive(Clone)]
pub struct Engine {
    jobs: Sender<Job>,
    stats: Arc<EngineStats>,
    tokenizer: Arc<BtlmTokenizer>,
    config: EngineConfig,
    context: usize,
    kv_bytes_per_token: usize,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("config", &self.config)
            .field("context", &self.context)
            .finish_non_exhaustive()
    }
}

impl Engine {
    /// Starts the engine thread.
    pub fn start<M: StepModel>(
        model: M,
        tokenizer: BtlmTokenizer,
        config: EngineConfig,
    ) -> Result<Self> {
        config.validate()?;
        let (tx, rx) = std::sync::mpsc::channel::<Job>();
        let stats = Arc::new(EngineStats::default());
        let tokenizer = Arc::new(tokenizer);
        let context = model.context();
        let kv_bytes_per_token = model.kv_bytes_per_token().max(1);
        let batcher = Batcher::new(model, tokenizer.clone(), config.clone(), stats.clone());
        std::thread::Builder::new()
            .name("btlm-engine".into())
            .spawn(move || batcher.run(rx))
            .map_err(|e| BtlmError::Device(format!("cannot start the engine thread: {e}")))?;
        Ok(Engine {
            jobs: tx,
            stats,
            tokenizer,
            config,
            context,
            kv_bytes_per_token,
        })
    }

    /// Queues a request; its events arrive on the returned receiver. Dropping the receiver
    /// cancels the request (its batch slot is free at the next step).
    pub fn submit(
        &self,
        prompt: &str,
        config: GenerationConfig,
        deadline: Option<Instant>,
    ) -> std::result::Result<UnboundedReceiver<Event>, SubmitError> {
        let invalid = |e: BtlmError| SubmitError::Invalid(e.to_string());
        let ids = self.tokenizer.encode(prompt).map_err(invalid)?;
        let sequence = Sequence::new(&ids, &config, self.context, self.tokenizer.eos_token_id())
            .map_err(invalid)?;
        let kv_bytes = sequence
            .max_positions()
            .saturating_mul(self.kv_bytes_per_token);
        if kv_bytes > self.config.kv_cache_bytes {
            self.stats.rejected.fetch_add(1, Ordering::Relaxed);
            return Err(SubmitError::TooLarge {
                needed_mb: kv_bytes.div_ceil(1 << 20),
                budget_mb: self.config.kv_cache_bytes >> 20,
            });
        }
        // Reserve a place in the queue; the engine gives it back on admission.
        let queued = self.stats.waiting.fetch_add(1, Ordering::AcqRel);
        if queued >= self.config.queue_size {
            self.stats.waiting.fetch_sub(1, Ordering::AcqRel);
            self.stats.rejected.fetch_add(1, Ordering::Relaxed);
            return Err(SubmitError::QueueFull);
        }
        let (events, rx) = unbounded_channel();
        let job = Job {
            sequence,
            kv_bytes,
            deadline,
            events,
        };
        if self.jobs.send(job).is_err() {
            self.stats.waiting.fetch_sub(1, Ordering::AcqRel);
            return Err(SubmitError::WorkerGone);
        }
        Ok(rx)
    }

    /// The engine's counters and gauges.
    pub fn stats(&self) -> &EngineStats {
        &self.stats
    }

    /// The tokenizer requests are encoded with.
    pub fn tokenizer(&self) -> &BtlmTokenizer {
        &self.tokenizer
    }

    /// The model's context length in tokens.
    pub fn context(&self) -> usize {
        self.context
    }

    /// The engine's limits.
    pub fn config(&self) -> &EngineConfig {
        &self.config
    }
}

/// Sends an event; `false` when the receiver is gone.
pub(crate) fn send(events: &UnboundedSender<Event>, event: Event) -> bool {
    events.send(event).is_ok()
}
