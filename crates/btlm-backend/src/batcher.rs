//! The engine thread's loop (continuous batching). At every step boundary it
//!
//! 1. takes in new requests (they wait, highest priority first and first come first served
//!    among equals, for a batch slot and room in the key/value cache budget: prompt plus new
//!    tokens are reserved at admission);
//! 2. ends the sequences whose receiver is gone (cancelled) or whose deadline passed;
//! 3. admits waiting requests while a slot and cache room are free;
//! 4. runs one step: every decoding sequence advances by one token, and prompts advance by
//!    one piece each (the oldest first, within the per-step prompt-token budget), either in
//!    the same pass as the decode rows or in passes of their own;
//! 5. retires finished sequences (their slot and cache are free for the next step; the
//!    cache itself goes back to the engine's [pool](crate::kv_pool) for a later sequence,
//!    unless [`EngineConfig::kv_pool`] is off or the sequence failed).
//!
//! **Cache budget.** Admission asks the pool for the sequence's cache: an idle one that fits
//! or room for a new one, counted at its real size, which may exceed prompt plus new tokens
//! (new caches are rounded up to 64 positions, a reused one holds at most twice the rounded
//! need); the running sequences' caches and the idle ones never exceed
//! [`EngineConfig::kv_cache_bytes`] together (idle ones are dropped to make room).
//!
//! A step that fails or panics fails the sequences it ran; the engine keeps serving.
//!
//! **Admission order.** The pipeline hands out the batch slots in priority order (the
//! miner's [capacity](prompting_miner::Miner::capacity) is `max_batch`), but when the cache
//! budget binds before the slots do, requests wait here too; they are admitted by their
//! priority ([`Job::priority`], the pipeline's, carried by the miner), ties by arrival. The
//! best waiting request that does not fit yet holds back every request behind it, even
//! smaller ones that would fit (head-of-line blocking, no skipping): every running sequence
//! ends within its token limit or deadline, so the head is admitted as soon as enough of
//! them end, whereas letting smaller lower-priority requests past it would let a steady
//! stream of them keep the budget busy and starve it. The price is cache room left idle
//! while the head waits for enough of it.

use std::collections::VecDeque;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::sync::mpsc::{Receiver, TryRecvError};
use std::time::{Duration, Instant};

use tokio::sync::mpsc::UnboundedSender;

use crate::error::BtlmError;
use crate::generation::FinishReason;
use crate::kv_pool::{KvPool, KvPoolConfig, KvPoolError, Lease};
use crate::model::Segment;
use crate::sequence::Sequence;
use crate::step::{EngineConfig, EngineStats, Event, StepModel, add_nanos, send};
use crate::tokenizer::BtlmTokenizer;

/// A submitted request.
#[derive(Debug)]
pub(crate) struct Job {
    /// Its generation state (prompt tokenized and fitted to the context).
    pub(crate) sequence: Sequence,
    /// When the caller stops waiting.
    pub(crate) deadline: Option<Instant>,
    /// Where its events go; closed when the caller went away.
    pub(crate) events: UnboundedSender<Event>,
    /// Its rank in the wait queue: higher first (never NaN).
    pub(crate) priority: f64,
    /// When it was submitted.
    pub(crate) submitted: Instant,
}

impl Job {
    /// Why it must end now, if it must.
    fn interruption(&self, now: Instant) -> Option<FinishReason> {
        if self.events.is_closed() {
            Some(FinishReason::Cancelled)
        } else if self.deadline.is_some_and(|d| now >= d) {
            Some(FinishReason::Deadline)
        } else {
            None
        }
    }
}

/// A sequence in the batch.
struct Running<C> {
    job: Job,
    cache: C,
    /// Its share of the cache budget.
    lease: Lease,
    /// Set when a step it ran in failed.
    failed: Option<BtlmError>,
}

/// The engine thread's state.
pub(crate) struct Batcher<M: StepModel> {
    model: M,
    tokenizer: Arc<BtlmTokenizer>,
    config: EngineConfig,
    stats: Arc<EngineStats>,
    waiting: VecDeque<Job>,
    running: Vec<Running<M::Cache>>,
    /// The caches: lent to running sequences, or idle for later ones.
    pool: KvPool<M::Cache>,
    /// Whether prompt pieces run in the decode rows' pass: asked for
    /// ([`EngineConfig::piggyback_prefill`]) and safe for this model
    /// ([`StepModel::rows_independent`]).
    piggyback: bool,
}

impl<M: StepModel> Batcher<M> {
    pub(crate) fn new(
        model: M,
        tokenizer: Arc<BtlmTokenizer>,
        config: EngineConfig,
        stats: Arc<EngineStats>,
    ) -> Result<Self, KvPoolError> {
        let pool = KvPool::new(KvPoolConfig {
            budget_bytes: config.kv_cache_bytes,
            bytes_per_token: model.kv_bytes_per_token().max(1),
            max_positions: model.context(),
            recycle: config.kv_pool && model.recycles_caches(),
        })?;
        let piggyback = config.piggyback_prefill && model.rows_independent();
        if config.piggyback_prefill && !piggyback {
            tracing::info!(
                "btlm engine: prompt pieces run in passes of their own (not with the decode \
                 rows): this model's kernels compute a row differently when more rows share \
                 the product, and batching must not change answers"
            );
        }
        Ok(Batcher {
            piggyback,
            model,
            tokenizer,
            config,
            stats,
            waiting: VecDeque::new(),
            running: Vec::new(),
            pool,
        })
    }

    /// Queues `job` behind every waiting job of the same or a higher priority.
    fn enqueue(&mut self, job: Job) {
        let at = self.waiting.partition_point(|w| w.priority >= job.priority);
        self.waiting.insert(at, job);
    }

    /// Serves jobs until every sender is dropped and the last sequence ended.
    pub(crate) fn run(mut self, jobs: Receiver<Job>) {
        let mut open = true;
        loop {
            if self.running.is_empty() && self.waiting.is_empty() {
                if !open {
                    break;
                }
                match jobs.recv() {
                    Ok(job) => self.enqueue(job),
                    Err(_) => break,
                }
            }
            while open {
                match jobs.try_recv() {
                    Ok(job) => self.enqueue(job),
                    Err(TryRecvError::Empty) => break,
                    Err(TryRecvError::Disconnected) => open = false,
                }
            }
            self.interrupt(Instant::now());
            self.admit();
            if !self.running.is_empty() {
                self.step();
            }
            self.retire();
        }
        tracing::debug!("btlm engine: all handles dropped, stopping");
    }

    /// Ends waiting and running requests whose caller left or whose deadline passed.
    fn interrupt(&mut self, now: Instant) {
        let mut i = 0;
        while i < self.waiting.len() {
            match self.waiting[i].interruption(now) {
                Some(reason) => {
                    if let Some(mut job) = self.waiting.remove(i) {
                        self.stats.waiting.fetch_sub(1, Ordering::AcqRel);
                        job.sequence.stop(reason);
                        self.finish(job, None);
                    }
                }
                None => i += 1,
            }
        }
        for r in &mut self.running {
            if let Some(reason) = r.job.interruption(now) {
                r.job.sequence.stop(reason);
            }
        }
    }

    /// Moves waiting requests into the batch while a slot and cache room are free, best
    /// first (the queue is kept in that order); a request that does not fit yet holds back
    /// those behind it (see the module's "Admission order").
    fn admit(&mut self) {
        while self.running.len() < self.config.max_batch {
            let Some(job) = self.waiting.pop_front() else {
                break;
            };
            let Some((lease, idle)) = self.pool.lease(job.sequence.max_positions()) else {
                // No room yet: it stays first in line.
                self.waiting.push_front(job);
                break;
            };
            self.stats.waiting.fetch_sub(1, Ordering::AcqRel);
            let waited = job.submitted.elapsed();
            self.stats.admitted.fetch_add(1, Ordering::Relaxed);
            add_nanos(&self.stats.queue_nanos, waited);
            tracing::debug!(
                target: "btlm_engine",
                waited_ms = waited.as_secs_f64() * 1e3,
                prompt_tokens = job.sequence.prompt_tokens(),
                priority = job.priority,
                running = self.running.len() + 1,
                "btlm request admitted"
            );
            let cache = match idle {
                Some(cache) => cache,
                None => self.model.new_cache(lease.positions()),
            };
            self.running.push(Running {
                job,
                cache,
                lease,
                failed: None,
            });
        }
        self.publish_gauges();
    }

    /// One step: decode rows of every decoding sequence and one prompt piece per prefilling
    /// sequence within the prompt-token budget.
    fn step(&mut self) {
        let mut decode = Vec::new();
        let mut prefill = Vec::new();
        let mut prompt_tokens = 0;
        for (i, r) in self.running.iter().enumerate() {
            let seq = &r.job.sequence;
            if seq.finished().is_some() {
                continue;
            }
            if !seq.is_prefilling() {
                decode.push(i);
                continue;
            }
            let n = seq.pending().len();
            if prefill.is_empty() || prompt_tokens + n <= self.config.prefill_tokens_per_step {
                prefill.push(i);
                prompt_tokens += n;
            }
        }
        let batch = decode.len() + prefill.len();
        if batch == 0 {
            return;
        }
        let (decode_rows, prefill_count) = (decode.len(), prefill.len());
        let passes: Vec<Vec<usize>> = if self.piggyback {
            vec![decode.into_iter().chain(prefill).collect()]
        } else {
            std::iter::once(decode)
                .chain(prefill.into_iter().map(|i| vec![i]))
                .filter(|p| !p.is_empty())
                .collect()
        };
        let started = Instant::now();
        let mut model = Duration::ZERO;
        let mut prompt_pass = Duration::ZERO;
        for pass in &passes {
            let prompt_rows: usize = pass
                .iter()
                .filter(|&&i| self.is_prefilling(i))
                .map(|&i| self.running[i].job.sequence.pending().len())
                .sum();
            let took = self.run_pass(pass);
            model += took;
            if prompt_rows > 0 {
                prompt_pass += took;
            }
        }
        let took = started.elapsed();
        let s = &self.stats;
        s.steps.fetch_add(1, Ordering::Relaxed);
        s.peak_batch.fetch_max(batch, Ordering::Relaxed);
        s.passes.fetch_add(passes.len() as u64, Ordering::Relaxed);
        s.decode_rows
            .fetch_add(decode_rows as u64, Ordering::Relaxed);
        s.prompt_rows
            .fetch_add(prompt_tokens as u64, Ordering::Relaxed);
        add_nanos(&s.step_nanos, took);
        add_nanos(&s.model_nanos, model);
        add_nanos(&s.prompt_pass_nanos, prompt_pass);
        s.last_step_micros.store(
            u64::try_from(took.as_micros()).unwrap_or(u64::MAX),
            Ordering::Relaxed,
        );
        tracing::debug!(
            target: "btlm_engine",
            decode_rows,
            prompt_rows = prompt_tokens,
            prompts = prefill_count,
            passes = passes.len(),
            ms = took.as_secs_f64() * 1e3,
            model_ms = model.as_secs_f64() * 1e3,
            prompt_pass_ms = prompt_pass.as_secs_f64() * 1e3,
            "btlm step"
        );
    }

    /// Whether the running sequence at `i` still has prompt tokens to run.
    fn is_prefilling(&self, i: usize) -> bool {
        self.running
            .get(i)
            .is_some_and(|r| r.job.sequence.is_prefilling())
    }

    /// Runs the pending tokens of the sequences at `indices` (ascending) in one model pass
    /// and hands each its logits.
    /// Returns how long the model pass took.
    fn run_pass(&mut self, indices: &[usize]) -> Duration {
        let model = &self.model;
        let started = Instant::now();
        let running = &mut self.running;
        let outcome = std::panic::catch_unwind(AssertUnwindSafe(|| {
            let mut segments: Vec<Segment<'_, M::Cache>> = running
                .iter_mut()
                .enumerate()
                .filter(|(i, _)| indices.contains(i))
                .map(|(_, r)| Segment {
                    tokens: r.job.sequence.pending(),
                    logits: r.job.sequence.wants_logits(),
                    cache: &mut r.cache,
                })
                .collect();
            model.step(&mut segments)
        }));
        let took = started.elapsed();
        let logits = match outcome {
            Ok(Ok(logits)) => logits,
            Ok(Err(e)) => {
                tracing::warn!("btlm engine: step failed: {e}");
                self.fail(indices, &format!("the model step failed: {e}"));
                return took;
            }
            Err(panic) => {
                let msg = panic_message(panic.as_ref());
                tracing::error!("btlm engine: step panicked: {msg}");
                self.fail(indices, &format!("the model step panicked: {msg}"));
                return took;
            }
        };
        let mut rows = logits.into_iter();
        for &i in indices {
            let Some(r) = self.running.get_mut(i) else {
                continue;
            };
            let seq = &mut r.job.sequence;
            let mut row = if seq.wants_logits() {
                match rows.next() {
                    Some(row) => Some(row),
                    None => {
                        r.failed = Some(BtlmError::Engine(
                            "the model returned fewer logits than asked".into(),
                        ));
                        continue;
                    }
                }
            } else {
                None
            };
            match seq.advance(row.as_deref_mut(), &self.tokenizer) {
                Ok(Some(text)) => {
                    if !send(&r.job.events, Event::Text(text)) {
                        seq.stop(FinishReason::Cancelled);
                    }
                }
                Ok(None) => {}
                Err(e) => r.failed = Some(e),
            }
        }
        took
    }

    /// Marks the sequences at `indices` failed.
    fn fail(&mut self, indices: &[usize], reason: &str) {
        for &i in indices {
            if let Some(r) = self.running.get_mut(i) {
                r.failed = Some(BtlmError::Engine(reason.to_string()));
            }
        }
    }

    /// Removes finished and failed sequences from the batch and reports them. The gauges
    /// are published before the reports go out, so a caller that got its answer already
    /// sees its slot and cache room free in the statistics.
    fn retire(&mut self) {
        let mut retired = Vec::new();
        let mut i = 0;
        while i < self.running.len() {
            let r = &self.running[i];
            if r.failed.is_none() && r.job.sequence.finished().is_none() {
                i += 1;
                continue;
            }
            let r = self.running.remove(i);
            // A failed step may have left the cache half written (or its memory poisoned by a
            // panic): only caches of sequences that ended normally are kept.
            let kept = if r.failed.is_none() && self.pool.config().recycle {
                self.model.recycle_cache(r.cache)
            } else {
                drop(r.cache);
                None
            };
            if let Err(e) = self.pool.give_back(r.lease, kept) {
                tracing::error!("btlm engine: {e}");
            }
            retired.push((r.job, r.failed));
        }
        self.publish_gauges();
        for (job, failed) in retired {
            self.finish(job, failed);
        }
    }

    /// Counts and reports the end of a request.
    fn finish(&self, job: Job, failed: Option<BtlmError>) {
        let count = |c: &std::sync::atomic::AtomicU64| {
            c.fetch_add(1, Ordering::Relaxed);
        };
        let result = match failed {
            Some(e) => {
                count(&self.stats.failed);
                Err(e)
            }
            None => {
                let g = job.sequence.into_generation();
                self.stats
                    .tokens
                    .fetch_add(g.tokens.len() as u64, Ordering::Relaxed);
                match g.finish {
                    FinishReason::Cancelled => count(&self.stats.cancelled),
                    FinishReason::Deadline => count(&self.stats.timed_out),
                    FinishReason::Eos | FinishReason::Stop | FinishReason::Length => {
                        count(&self.stats.completed)
                    }
                }
                Ok(g)
            }
        };
        // The receiver may be gone; nothing to do then.
        send(&job.events, Event::Done(result));
    }

    fn publish_gauges(&self) {
        let s = &self.stats;
        let pool = self.pool.stats();
        s.running.store(self.running.len(), Ordering::Release);
        s.kv_reserved_bytes
            .store(pool.in_use_bytes, Ordering::Release);
        s.kv_idle_bytes.store(pool.idle_bytes, Ordering::Release);
        s.kv_peak_bytes.store(pool.peak_bytes, Ordering::Release);
        s.kv_reused.store(pool.reused, Ordering::Release);
        s.kv_allocated.store(pool.allocated, Ordering::Release);
    }
}

/// The text of a panic payload.
fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown panic".into())
}
