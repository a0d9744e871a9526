//! The inference engine: one thread owns the model and runs *steps*; every step advances all
//! running sequences together (continuous batching, see the private `batcher` module).
//! Callers [`submit`](Engine::submit) requests from any thread and receive their text as
//! [`Event`]s.
//!
//! Bounds: at most [`EngineConfig::max_batch`] sequences run at once, their key/value caches
//! (prompt plus new tokens, reserved at admission) and the idle caches kept for later
//! sequences ([`EngineConfig::kv_pool`], [`crate::kv_pool`]) fit in
//! [`EngineConfig::kv_cache_bytes`],
//! and at most [`EngineConfig::queue_size`] requests wait for a batch slot. A request that
//! can never fit is refused at once ([`SubmitError::TooLarge`]); one that cannot fit yet
//! waits. Waiting requests are admitted highest [priority](Engine::submit_ranked) first,
//! first come first served among equals; the best one that does not fit yet holds back the
//! rest, so that smaller, lower-ranked requests cannot starve it.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::sync::mpsc::Sender;
use std::time::Instant;

use tokio::sync::mpsc::{UnboundedReceiver, unbounded_channel};

use crate::batcher::{Batcher, Job};
use crate::error::{BtlmError, Result};
use crate::generation::GenerationConfig;
use crate::heap_keeper::HeapKeeper;
use crate::sequence::Sequence;
use crate::tokenizer::BtlmTokenizer;

pub use crate::step::{
    DEFAULT_PREFILL_STEP_MS, EngineConfig, EngineStats, Event, Spent, StepModel, StepTiming,
    SubmitError,
};

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
    splits_alike: bool,
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
        let batcher = Batcher::new(model, tokenizer.clone(), config.clone(), stats.clone())
            .map_err(|e| BtlmError::InvalidArgument {
                name: "--btlm.kv_cache_mb",
                reason: e.to_string(),
            })?;
        let splits_alike = batcher.splits_alike();
        let (heap_slack, heap) = (config.heap_slack_bytes, stats.heap.clone());
        std::thread::Builder::new()
            .name("btlm-engine".into())
            .spawn(move || {
                // Stops with the engine.
                let _keeper = heap_slack.and_then(|slack| HeapKeeper::start(slack, heap));
                batcher.run(rx)
            })
            .map_err(|e| BtlmError::Device(format!("cannot start the engine thread: {e}")))?;
        Ok(Engine {
            jobs: tx,
            stats,
            tokenizer,
            config,
            context,
            kv_bytes_per_token,
            splits_alike,
        })
    }

    /// Queues a request at priority 0 ([`Engine::submit_ranked`]); its events arrive on the
    /// returned receiver. Dropping the receiver cancels the request (its batch slot is free
    /// at the next step).
    pub fn submit(
        &self,
        prompt: &str,
        config: GenerationConfig,
        deadline: Option<Instant>,
    ) -> std::result::Result<UnboundedReceiver<Event>, SubmitError> {
        self.submit_ranked(prompt, config, deadline, 0.0)
    }

    /// Queues a request with a `priority` (e.g. the pipeline's, from the caller's stake):
    /// while requests wait for a batch slot or cache room, the highest is admitted first,
    /// the first submitted among equals. NaN ranks lowest. Otherwise as [`Engine::submit`].
    pub fn submit_ranked(
        &self,
        prompt: &str,
        config: GenerationConfig,
        deadline: Option<Instant>,
        priority: f64,
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
            deadline,
            events,
            submitted: Instant::now(),
            held_back: false,
            priority: if priority.is_nan() {
                f64::NEG_INFINITY
            } else {
                priority
            },
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

    /// Whether prefix reuse ([`EngineConfig::prefix_reuse`]) keeps every token of an earlier
    /// sequence that a prompt starts with, its answer's too: the model computes a
    /// position's keys and values alike however a sequence is split into passes
    /// ([`StepModel::splits_alike`]). Otherwise it keeps whole prompt pieces only.
    pub fn keeps_any_prefix(&self) -> bool {
        self.splits_alike
    }
}
