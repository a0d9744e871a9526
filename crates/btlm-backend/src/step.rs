//! What the engine's handle ([`Engine`](crate::engine::Engine)) and its thread's loop (the
//! private `batcher`) share: the model interface, the events a request receives, the limits
//! and the counters.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use tokio::sync::mpsc::UnboundedSender;

use crate::error::{BtlmError, Result};
use crate::generation::Generation;
use crate::heap_keeper::HeapStats;
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

    /// Whether a retired sequence's cache can serve a later one ([`StepModel::recycle_cache`]);
    /// only then does the engine keep caches in its pool ([`EngineConfig::kv_pool`]). The
    /// default: no, every sequence gets a new cache of exactly its positions.
    fn recycles_caches(&self) -> bool {
        false
    }

    /// Takes the cache of a retired sequence for the pool, keeping its memory and its
    /// contents, and returns it with the positions that memory holds; `None` when it holds
    /// none (the default: the cache is dropped). The sequence that takes it keeps some of
    /// its first positions ([`StepModel::truncate_cache`]); a recycled cache must give the
    /// same answers as a new one.
    fn recycle_cache(&self, cache: Self::Cache) -> Option<(Self::Cache, usize)> {
        drop(cache);
        None
    }

    /// Whether the engine may make caches ahead of their sequences while it has nothing to
    /// run ([`StepModel::fill_cache_part`]): caches whose memory the OS backs on its first
    /// write. The default: no.
    fn fills_caches_ahead(&self) -> bool {
        false
    }

    /// Gives the next part of `cache` (new, from [`StepModel::new_cache`]) its memory,
    /// written now; `Ok(true)` once all of it has memory. The engine calls it part by part
    /// and looks for requests in between, so that one arriving meanwhile waits at most for
    /// a part. The default: nothing to write.
    fn fill_cache_part(&self, cache: &mut Self::Cache) -> Result<bool> {
        let _ = cache;
        Ok(true)
    }

    /// Keeps the first `len` positions of a recycled cache and forgets the rest (0:
    /// empties it). Models that recycle caches must implement it; the default does nothing.
    fn truncate_cache(&self, cache: &mut Self::Cache, len: usize) {
        let _ = (cache, len);
    }

    /// Copies the first `len` positions of a recycled cache into `to`, a new one, which then
    /// holds them. The default: it cannot (the sequence runs its whole prompt).
    fn copy_prefix(&self, from: &Self::Cache, to: &mut Self::Cache, len: usize) -> Result<()> {
        let _ = (from, to, len);
        Err(BtlmError::Engine(
            "this model cannot copy cache positions".into(),
        ))
    }

    /// Runs the segments' tokens (one pass for all) and returns, for each segment that asks
    /// for them, the logits of its next token, in segment order.
    fn step(&self, segments: &mut [Segment<'_, Self::Cache>]) -> Result<Vec<Vec<f32>>>;

    /// Whether a segment's logits are the same whatever other segments share its pass
    /// ([`Btlm::rows_independent`]): only then does the engine run prompt pieces in the
    /// decode rows' pass ([`EngineConfig::piggyback_prefill`]), so batching never changes
    /// an answer.
    fn rows_independent(&self) -> bool;

    /// Where rows are not independent: which prompt pieces may still share a pass
    /// ([`Btlm::shared_prompt_pass`]): `(min_rows, max_pieces)`; `None` (the default):
    /// each piece runs alone.
    fn shared_prompt_pass(&self) -> Option<(usize, usize)> {
        None
    }

    /// Whether a position's keys and values are the same bits however its sequence was
    /// split into passes (prefill pieces of any size, one token at a time, beside any other
    /// rows) ([`Btlm::splits_alike`]): prefix reuse then keeps any run tokens a prompt
    /// starts with, an earlier answer's too; else whole prefill pieces of the prompt only.
    /// `false` by default.
    fn splits_alike(&self) -> bool {
        false
    }
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

    fn recycles_caches(&self) -> bool {
        true
    }

    fn recycle_cache(&self, cache: Cache) -> Option<(Cache, usize)> {
        let positions = cache.capacity();
        (positions > 0).then_some((cache, positions))
    }

    fn fills_caches_ahead(&self) -> bool {
        Btlm::fills_caches_ahead(self)
    }

    fn fill_cache_part(&self, cache: &mut Cache) -> Result<bool> {
        Ok(self.fill_cache_block(cache)?)
    }

    fn truncate_cache(&self, cache: &mut Cache, len: usize) {
        cache.truncate(len);
    }

    fn copy_prefix(&self, from: &Cache, to: &mut Cache, len: usize) -> Result<()> {
        Ok(from.copy_prefix_into(to, len)?)
    }

    fn step(&self, segments: &mut [Segment<'_, Cache>]) -> Result<Vec<Vec<f32>>> {
        Ok(self.forward_batch(segments)?.to_vec2::<f32>()?)
    }

    fn rows_independent(&self) -> bool {
        Btlm::rows_independent(self)
    }

    fn shared_prompt_pass(&self) -> Option<(usize, usize)> {
        Btlm::shared_prompt_pass(self)
    }

    fn splits_alike(&self) -> bool {
        Btlm::splits_alike(self)
    }
}

/// Tokens a request has cost when a piece of its text goes out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Spent {
    /// Prompt tokens run (after any left cut).
    pub prompt_tokens: usize,
    /// Tokens generated so far (the text may hold some back, e.g. a possible stop string).
    pub generated_tokens: usize,
}

/// What the engine reports about one request, in order: text pieces, then one `Done`.
#[derive(Debug)]
pub enum Event {
    /// A final piece of the completion, and what the request has cost so far.
    Text(String, Spent),
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

/// The prompt pieces a step runs, as positions in `sizes` (each prompt's next piece in
/// tokens, in the order the steps run the prompts; 0: none): each in turn while the step's
/// pieces stay within `budget` tokens, the first whatever its size. The engine composes its
/// steps by it and the deadline guard projects them by it.
pub(crate) fn step_pieces(sizes: &[usize], budget: usize) -> Vec<usize> {
    let mut tokens = 0;
    let mut taken = Vec::new();
    for (k, &n) in sizes.iter().enumerate() {
        if n > 0 && (taken.is_empty() || tokens + n <= budget) {
            taken.push(k);
            tokens += n;
        }
    }
    taken
}

/// The default [`EngineConfig::prefill_step_time`] in milliseconds
/// (`--btlm.prefill_step_ms`).
pub const DEFAULT_PREFILL_STEP_MS: u64 = 2000;

/// Limits of the engine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EngineConfig {
    /// Sequences run together in one step.
    pub max_batch: usize,
    /// Bytes of key/value cache all running sequences may reserve together.
    pub kv_cache_bytes: usize,
    /// Prompt tokens run per step over all prefilling sequences (one piece each at most;
    /// the first piece always runs, even a longer one).
    pub prefill_tokens_per_step: usize,
    /// Time a step's prompt pieces may take, at the measured cost of a prompt token: a step
    /// runs fewer than [`prefill_tokens_per_step`](Self::prefill_tokens_per_step) prompt
    /// tokens where they would take longer (the first piece always runs), so that on a
    /// slow host the decoding sequences of the batch are not paused for seconds by the
    /// prompts arriving. `None`: no time limit (the token limit alone, also until a prompt
    /// token's cost is measured).
    pub prefill_step_time: Option<Duration>,
    /// Requests that may wait for a batch slot; more are refused.
    pub queue_size: usize,
    /// Run prompt pieces in the same pass as the decode rows (one pass over the weights per
    /// step; the default) rather than in passes of their own (each piece alone). Applies
    /// only to models whose rows are computed alike whatever shares their pass
    /// ([`StepModel::rows_independent`]); other models always run the pieces alone, so
    /// batching never changes an answer.
    pub piggyback_prefill: bool,
    /// Let a sequence keep the keys and values an idle cache holds of its prompt's start
    /// (an earlier sequence's prompt, or prompt and answer, began alike) and run only the
    /// rest of its prompt (the default). Needs [`kv_pool`](Self::kv_pool). Every token the
    /// earlier sequence ran is kept where the model computes a position alike however its
    /// sequence is split ([`StepModel::splits_alike`]), else whole prompt pieces only (see
    /// [`Sequence::keepable`](crate::sequence::Sequence::keepable)): the answer is the same
    /// bits either way.
    pub prefix_reuse: bool,
    /// Keep the caches of sequences that ended for later sequences, within
    /// [`kv_cache_bytes`](Self::kv_cache_bytes) (the default; see [`crate::kv_pool`]: new
    /// caches are rounded up to 64 positions and a reused one may be up to twice the
    /// rounded need, each counted at its real size), rather than free them. Applies to
    /// models that can reuse a cache ([`StepModel::recycles_caches`]).
    pub kv_pool: bool,
    /// Blank caches the engine prepares while it has nothing to run, at most: one for each
    /// of the positions the most recent admissions needed, within
    /// [`kv_cache_bytes`](Self::kv_cache_bytes) beside every cache in use and idle (see
    /// [`crate::kv_pool`]'s "Blank caches"), so that the next requests write memory the OS
    /// backs already. Blank caches that no longer fit the latest needs stay idle until a
    /// new cache needs their room (they are the first dropped). Needs
    /// [`kv_pool`](Self::kv_pool) and a model that fills caches ahead
    /// ([`StepModel::fills_caches_ahead`]). 0: none.
    pub spare_caches: usize,
    /// Give the allocator's free memory back to the OS once its heaps held this many bytes
    /// free through a window of readings, beyond the least since the last time
    /// ([`crate::heap_keeper`]). `None`: never.
    pub heap_slack_bytes: Option<usize>,
    /// The deadline guard's headroom (`--btlm.deadline_guard`): a lower-priority request
    /// joins the batch only while every higher-priority one is projected to finish this
    /// long before its deadline, and lower ones are preempted while a higher one is
    /// projected later than half of it. `None`: no guard.
    pub deadline_headroom: Option<Duration>,
    /// With the deadline guard: the time a request must be projected to have left once its
    /// prompt has run, after the prompts ahead of it (a higher priority, or as high and
    /// older), for the prompt to run; a request that would have less is ended
    /// ([`FinishReason::Late`](crate::generation::FinishReason::Late)) rather than take
    /// the steps of those that can still answer.
    pub answer_time: Duration,
    /// How often the engine reads the memory the host (and its cgroup) has left, holding
    /// its caches to what that allows beside 256 MiB for its other memory
    /// ([`crate::host_memory::MemoryWatch`]; `--btlm.memory_check_ms`). `None`: never
    /// (the caches are then held to [`kv_cache_bytes`](Self::kv_cache_bytes) alone; the
    /// miner turns it off on GPUs, whose caches are not in the host's memory).
    pub memory_check: Option<Duration>,
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            max_batch: 8,
            kv_cache_bytes: 4096 << 20,
            prefill_tokens_per_step: 512,
            prefill_step_time: Some(Duration::from_millis(DEFAULT_PREFILL_STEP_MS)),
            queue_size: 16,
            piggyback_prefill: true,
            kv_pool: true,
            spare_caches: 8,
            heap_slack_bytes: Some(256 << 20),
            prefix_reuse: true,
            deadline_headroom: Some(Duration::from_secs(3)),
            answer_time: Duration::from_secs(2),
            memory_check: Some(Duration::from_millis(crate::host_memory::DEFAULT_CHECK_MS)),
        }
    }
}

impl EngineConfig {
    /// Checks the limits, naming the flag of a bad one.
    pub fn validate(&self) -> Result<()> {
        for (name, v) in [
            ("--btlm.max_batch", self.max_batch),
            ("--btlm.kv_cache_mb", self.kv_cache_bytes),
            ("--btlm.prefill_step_tokens", self.prefill_tokens_per_step),
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
    /// Bytes of key/value cache reserved now by the running sequences (the real size of
    /// their caches, see [`crate::kv_pool`]).
    pub kv_reserved_bytes: AtomicUsize,
    /// Bytes of the idle caches kept for later sequences now ([`EngineConfig::kv_pool`]).
    pub kv_idle_bytes: AtomicUsize,
    /// The most bytes of cache reserved and idle together, ever (never above
    /// [`EngineConfig::kv_cache_bytes`]).
    pub kv_peak_bytes: AtomicUsize,
    /// The cache budget in force now: [`EngineConfig::kv_cache_bytes`], or less while the
    /// memory left says so ([`EngineConfig::memory_check`]).
    pub kv_limit_bytes: AtomicUsize,
    /// Sequences that got an idle cache from the pool.
    pub kv_reused: AtomicU64,
    /// Sequences that got a new cache.
    pub kv_allocated: AtomicU64,
    /// Blank caches made while the engine had nothing to run
    /// ([`EngineConfig::spare_caches`]).
    pub kv_spares_made: AtomicU64,
    /// Sequences that got a blank cache (among [`kv_reused`](Self::kv_reused)).
    pub kv_spares_used: AtomicU64,
    /// Idle caches dropped for room in the budget, the least recently used first
    /// ([`EngineConfig::kv_cache_bytes`]): what they held is lost to later sequences.
    pub kv_dropped: AtomicU64,
    /// Sequences that kept positions of their prompt's start from an idle cache
    /// ([`EngineConfig::prefix_reuse`]).
    pub prefix_hits: AtomicU64,
    /// Prompt tokens those sequences did not run again, summed.
    pub prefix_tokens: AtomicU64,
    /// Free heap memory given back to the OS ([`EngineConfig::heap_slack_bytes`]).
    pub heap: Arc<HeapStats>,
    /// The most sequences that ran in one step.
    pub peak_batch: AtomicUsize,
    /// Model passes run (one per step with `piggyback_prefill`, else one for the decode rows
    /// plus one per prompt piece).
    pub passes: AtomicU64,
    /// Decode rows run: one per decoding sequence and step.
    pub decode_rows: AtomicU64,
    /// Prompt tokens run.
    pub prompt_rows: AtomicU64,
    /// Nanoseconds spent in steps (passes, sampling, detokenizing, sending text).
    pub step_nanos: AtomicU64,
    /// Nanoseconds of [`step_nanos`](Self::step_nanos) spent in model passes.
    pub model_nanos: AtomicU64,
    /// Nanoseconds of the model passes that held prompt rows (piggybacked ones included).
    pub prompt_pass_nanos: AtomicU64,
    /// How long the last step took, microseconds.
    pub last_step_micros: AtomicU64,
    /// Requests admitted into the batch.
    pub admitted: AtomicU64,
    /// Nanoseconds the admitted requests waited between submission and admission, summed.
    pub queue_nanos: AtomicU64,
    /// Requests whose admission the deadline guard held back at least once.
    pub held_back: AtomicU64,
    /// Running requests the deadline guard preempted for a higher-priority one.
    pub preempted: AtomicU64,
    /// Requests the deadline guard ended, running or on admission (before they took cache
    /// memory), because their prompt could not have run in time
    /// ([`EngineConfig::answer_time`]).
    pub late: AtomicU64,
    /// Requests ended on admission because the memory the host had left could not hold
    /// their cache with nothing else running ([`EngineConfig::memory_check`]).
    pub no_memory: AtomicU64,
}

impl EngineStats {
    /// The counters of the step timing, read now (for logs and tests).
    pub fn timing(&self) -> StepTiming {
        let load = |c: &AtomicU64| c.load(Ordering::Relaxed);
        StepTiming {
            steps: load(&self.steps),
            passes: load(&self.passes),
            decode_rows: load(&self.decode_rows),
            prompt_rows: load(&self.prompt_rows),
            step_nanos: load(&self.step_nanos),
            model_nanos: load(&self.model_nanos),
            prompt_pass_nanos: load(&self.prompt_pass_nanos),
            admitted: load(&self.admitted),
            queue_nanos: load(&self.queue_nanos),
        }
    }
}

/// A snapshot of the step-timing counters of [`EngineStats`]; subtract two snapshots
/// ([`StepTiming::since`]) for the figures of an interval.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StepTiming {
    /// Steps run.
    pub steps: u64,
    /// Model passes run.
    pub passes: u64,
    /// Decode rows run.
    pub decode_rows: u64,
    /// Prompt tokens run.
    pub prompt_rows: u64,
    /// Nanoseconds in steps.
    pub step_nanos: u64,
    /// Nanoseconds in model passes.
    pub model_nanos: u64,
    /// Nanoseconds in model passes that held prompt rows.
    pub prompt_pass_nanos: u64,
    /// Requests admitted.
    pub admitted: u64,
    /// Nanoseconds the admitted requests waited for admission, summed.
    pub queue_nanos: u64,
}

impl StepTiming {
    /// The figures between `earlier` and `self`.
    pub fn since(&self, earlier: &StepTiming) -> StepTiming {
        StepTiming {
            steps: self.steps.saturating_sub(earlier.steps),
            passes: self.passes.saturating_sub(earlier.passes),
            decode_rows: self.decode_rows.saturating_sub(earlier.decode_rows),
            prompt_rows: self.prompt_rows.saturating_sub(earlier.prompt_rows),
            step_nanos: self.step_nanos.saturating_sub(earlier.step_nanos),
            model_nanos: self.model_nanos.saturating_sub(earlier.model_nanos),
            prompt_pass_nanos: self
                .prompt_pass_nanos
                .saturating_sub(earlier.prompt_pass_nanos),
            admitted: self.admitted.saturating_sub(earlier.admitted),
            queue_nanos: self.queue_nanos.saturating_sub(earlier.queue_nanos),
        }
    }
}

/// Adds the nanoseconds of `d` to `counter`.
pub(crate) fn add_nanos(counter: &AtomicU64, d: std::time::Duration) {
    counter.fetch_add(
        u64::try_from(d.as_nanos()).unwrap_or(u64::MAX),
        Ordering::Relaxed,
    );
}

/// Sends an event; `false` when the receiver is gone.
pub(crate) fn send(events: &UnboundedSender<Event>, event: Event) -> bool {
    events.send(event).is_ok()
}
