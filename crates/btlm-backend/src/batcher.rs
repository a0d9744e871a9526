//! The engine thread's loop (continuous batching). At every step boundary it
//!
//! 1. takes in new requests (they wait, highest priority first and first come first served
//!    among equals, for a batch slot and room in the key/value cache budget: prompt plus new
//!    tokens are reserved at admission);
//! 2. ends the sequences whose receiver is gone (cancelled) or whose deadline passed;
//! 3. admits waiting requests while a slot and cache room are free;
//!    With the [deadline guard](crate::deadline_guard) on, a request of lower priority than
//!    a running one waits while admitting it would make that one late, and lower-priority
//!    sequences are preempted while a higher one is projected late;
//! 4. runs one step: every decoding sequence advances by one token, and prompts advance by
//!    one piece each (the highest priority first, then the oldest, within the per-step
//!    prompt-token budget), either in the same pass as the decode rows or in passes of
//!    their own;
//! 5. retires finished sequences (their slot and cache are free for the next step; the
//!    cache itself goes back to the engine's [pool](crate::kv_pool) for a later sequence,
//!    unless [`EngineConfig::kv_pool`] is off or the sequence failed).
//!
//! **Cache budget.** Admission asks the pool for the sequence's cache: an idle one that fits
//! or room for a new one, counted at its real size, which may exceed prompt plus new tokens
//! (new caches are rounded up to 64 positions, a reused one holds at most twice the rounded
//! need); the running sequences' caches and the idle ones never exceed
//! [`EngineConfig::kv_cache_bytes`] together (idle ones are dropped to make room, the
//! least recently used first).
//!
//! **Prefix reuse** ([`EngineConfig::prefix_reuse`]). An idle cache remembers the tokens
//! it holds ([`Sequence::reusable`]): every token its sequence ran, answer included, where
//! a position's keys and values are the same bits however a sequence is split into passes
//! ([`StepModel::splits_alike`]: the CPU kernels whose products compute each row alike);
//! else the prompt's start in whole prefill pieces. Admission prefers, among the idle
//! caches, the one whose tokens the new prompt starts with the most of
//! ([`Sequence::keepable`]; after whole pieces, in whole pieces of its own), keeps those
//! positions and runs only the rest of the prompt: the same answer, bit for bit, without
//! the work. What an idle cache holds is worth keeping for the conversation it belongs
//! to, so the pool ([`KvPool::lease_reusing`]) takes one as it is only when it alone gives
//! the prompt the most and fits, or when new memory would drop an idle cache anyway;
//! otherwise the positions kept are copied into a new cache ([`StepModel::copy_prefix`])
//! and the cache copied from goes back idle unless the new sequence continues all it
//! holds. A copy out of a cache too small (a conversation's next turn is longer) in place
//! of a fitting cache taken as it is happens only when the positions kept beyond it save
//! more prompt time than writing the new memory costs (the [pool's
//! price](crate::kv_pool::KvPool::price_copies), from the first-touch speed measured at
//! start and the learned time of a prompt token).
//!
//! **Blank caches** ([`EngineConfig::spare_caches`]). With nothing to run, the engine
//! writes blank caches into the pool, a block at a time, looking for a request between
//! blocks: one the size each of the latest admissions needed, within the budget beside
//! every cache in use and idle. A request that would get new memory takes one instead
//! (new memory costs its first step the OS backing each page: 15–200 ms a request on a VM,
//! docs/benchmarks.md). A blank cache half made when a request arrives is dropped, so that
//! the budget holds while the engine runs.
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
use std::sync::mpsc::{Receiver, RecvTimeoutError, TryRecvError};
use std::time::{Duration, Instant};

use tokio::sync::mpsc::UnboundedSender;

use crate::deadline_guard::{DeadlineGuard, Load};
use crate::error::BtlmError;
use crate::generation::FinishReason;
use crate::host_memory::MemoryWatch;
use crate::kv_pool::{Handed, KvPool, KvPoolConfig, KvPoolError, Lease, first_touch_bytes_per_sec};
use crate::model::Segment;
use crate::sequence::Sequence;
use crate::step::{
    EngineConfig, EngineStats, Event, Spent, StepModel, add_nanos, send, step_pieces,
};
use crate::step_cost::StepCost;
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
    /// Whether the deadline guard held its admission back already (counted once).
    pub(crate) held_back: bool,
}

impl Job {
    /// What the deadline guard weighs of it.
    fn load(&self) -> Load {
        Load {
            priority: self.priority,
            deadline: self.deadline,
            prompt_left: self.sequence.prompt_left(),
            chunk: self.sequence.prefill_chunk(),
            decode_left: self.sequence.decode_left(),
        }
    }

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

/// A cache in the engine's pool, with the part of it a later sequence may keep.
struct Pooled<C> {
    cache: C,
    /// The tokens it holds that a later sequence may keep ([`Sequence::reusable`]; empty
    /// without [`EngineConfig::prefix_reuse`]).
    held: Vec<u32>,
    /// The size of the pieces they ran in; `None`: any split
    /// ([`StepModel::splits_alike`]).
    piece: Option<usize>,
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
    pool: KvPool<Pooled<M::Cache>>,
    /// Whether prompt pieces run in the decode rows' pass: asked for
    /// ([`EngineConfig::piggyback_prefill`]) and safe for this model
    /// ([`StepModel::rows_independent`]).
    piggyback: bool,
    /// Which prompt pieces share a pass when they cannot join the decode rows'
    /// ([`StepModel::shared_prompt_pass`]).
    shared_prompt_pass: Option<(usize, usize)>,
    /// Whether sequences keep what an idle cache holds of their prompt's start
    /// ([`EngineConfig::prefix_reuse`], where the model allows it).
    prefix_reuse: bool,
    /// Whether positions are kept whatever split they ran in
    /// ([`StepModel::splits_alike`]), else in whole prompt pieces only.
    any_split: bool,
    /// What steps cost, learned from those run (for the deadline guard and the price of a
    /// copy).
    cost: StepCost,
    /// Bytes per second of new memory's first writes ([`first_touch_bytes_per_sec`]),
    /// measured at start when prefix reuse is on: what a copy into new memory costs.
    first_touch: Option<f64>,
    /// The deadline guard, when on ([`EngineConfig::deadline_headroom`]).
    guard: Option<DeadlineGuard>,
    /// Whether blank caches are made while idle ([`EngineConfig::spare_caches`] above 0, a
    /// recycling pool, a model that fills caches ahead); cleared if making one fails.
    spares: bool,
    /// The positions the most recent admissions needed, the newest last (at most
    /// [`EngineConfig::spare_caches`]): the blank caches made while idle fit those.
    recent_needs: VecDeque<usize>,
    /// The blank cache being made, a part at a time, while idle.
    blank: Option<M::Cache>,
    /// The memory left, read every so often ([`EngineConfig::memory_check`]): the pool's
    /// limit.
    memory: Option<MemoryWatch>,
}

impl<M: StepModel> Batcher<M> {
    pub(crate) fn new(
        model: M,
        tokenizer: Arc<BtlmTokenizer>,
        config: EngineConfig,
        stats: Arc<EngineStats>,
    ) -> Result<Self, KvPoolError> {
        let recycle = config.kv_pool && model.recycles_caches();
        let pool = KvPool::new(KvPoolConfig {
            budget_bytes: config.kv_cache_bytes,
            bytes_per_token: model.kv_bytes_per_token().max(1),
            max_positions: model.context(),
            recycle,
        })?;
        let piggyback = config.piggyback_prefill && model.rows_independent();
        let prefix_reuse = config.prefix_reuse && recycle;
        let shared_prompt_pass = if config.piggyback_prefill {
            model.shared_prompt_pass()
        } else {
            None
        };
        if config.piggyback_prefill && !piggyback {
            let why = "this model's kernels compute a row differently when more rows share \
                       the product, and batching must not change answers";
            match shared_prompt_pass {
                Some((min_rows, max_pieces)) => tracing::info!(
                    min_rows,
                    max_pieces,
                    "btlm engine: prompt pieces run apart from the decode rows ({why}); \
                     pieces of at least min_rows tokens share one pass, up to max_pieces"
                ),
                None => {
                    tracing::info!("btlm engine: prompt pieces run in passes of their own ({why})")
                }
            }
        }
        let any_split = model.splits_alike();
        let spares = config.spare_caches > 0 && recycle && model.fills_caches_ahead();
        let per_position = pool.config().bytes_per_token;
        tracing::info!(
            kv_bytes_per_position = per_position,
            kv_budget_positions = config.kv_cache_bytes / per_position,
            max_batch = config.max_batch,
            kv_pool = recycle,
            spare_caches = if spares { config.spare_caches } else { 0 },
            "btlm engine: the key/value cache budget (--btlm.kv_cache_mb) holds \
             kv_budget_positions positions (prompt plus answer) of the running sequences' \
             caches and the idle ones together"
        );
        let first_touch = prefix_reuse.then(first_touch_bytes_per_sec).flatten();
        if prefix_reuse {
            tracing::info!(
                any_split,
                first_touch_mb_per_s = first_touch.map(|r| (r / 1e6).round()),
                "btlm engine: prefix reuse keeps {}; while the cache budget has room, idle \
                 caches stay for their conversations and a prompt start is copied into new \
                 memory; once it is full, a prompt start is copied out of an idle cache too \
                 small for it, rather than a fitting one taken as it is, only when it keeps \
                 enough more tokens to pay for writing new memory",
                if any_split {
                    "every token of an earlier sequence a prompt starts with (this model's \
                     positions are the same bits however a sequence is split into passes)"
                } else {
                    "whole prompt pieces only (this model's kernels compute a position \
                     differently in other splits)"
                }
            );
        }
        let memory = config.memory_check.map(MemoryWatch::of_this_process);
        Ok(Batcher {
            memory,
            piggyback,
            prefix_reuse,
            any_split,
            shared_prompt_pass,
            cost: StepCost::default(),
            first_touch,
            guard: config.deadline_headroom.map(|headroom| DeadlineGuard {
                headroom,
                answer_time: config.answer_time,
            }),
            model,
            tokenizer,
            config,
            stats,
            waiting: VecDeque::new(),
            running: Vec::new(),
            pool,
            spares,
            recent_needs: VecDeque::new(),
            blank: None,
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
        self.publish_gauges();
        loop {
            self.watch_memory(Instant::now());
            if self.running.is_empty() && self.waiting.is_empty() {
                if !open {
                    break;
                }
                // Nothing to run: blank caches for the requests to come, a part at a time,
                // looking for a request between parts.
                let job = if self.spare_wanted() {
                    match jobs.try_recv() {
                        Ok(job) => job,
                        Err(TryRecvError::Empty) => {
                            self.make_spare_part();
                            continue;
                        }
                        Err(TryRecvError::Disconnected) => break,
                    }
                } else {
                    match self.wait_for_job(&jobs) {
                        Some(job) => job,
                        None => break,
                    }
                };
                // A blank cache half made is memory outside the budget: dropped.
                self.blank = None;
                self.enqueue(job);
            }
            while open {
                match jobs.try_recv() {
                    Ok(job) => self.enqueue(job),
                    Err(TryRecvError::Empty) => break,
                    Err(TryRecvError::Disconnected) => open = false,
                }
            }
            self.interrupt(Instant::now());
            // Interrupted sequences leave before admission: their slots are free for it.
            self.retire();
            self.admit();
            self.guard_deadlines();
            self.end_late_prompts(Instant::now());
            if !self.running.is_empty() {
                self.step();
            }
            self.retire();
        }
        tracing::debug!("btlm engine: all handles dropped, stopping");
    }

    /// The next job, waited for (the memory left read meanwhile as often as the watch
    /// says, so that idle caches are dropped when other processes take memory); `None`
    /// once every sender is dropped.
    fn wait_for_job(&mut self, jobs: &Receiver<Job>) -> Option<Job> {
        loop {
            let Some(every) = self.memory.as_ref().map(MemoryWatch::every) else {
                return jobs.recv().ok();
            };
            match jobs.recv_timeout(every) {
                Ok(job) => return Some(job),
                Err(RecvTimeoutError::Timeout) => self.watch_memory(Instant::now()),
                Err(RecvTimeoutError::Disconnected) => return None,
            }
        }
    }

    /// Holds the pool to what the memory left allows when the watch is due
    /// ([`MemoryWatch::check`]). Counted as written: the idle caches and the positions the
    /// running sequences have run so far (prompt tokens kept or run, tokens fed back); the rest of
    /// their leases is memory the OS backs only as they write it, which must fit the room.
    fn watch_memory(&mut self, now: Instant) {
        let Some(watch) = self.memory.as_mut().filter(|w| w.due(now)) else {
            return;
        };
        let per_position = self.pool.config().bytes_per_token;
        let unwritten: usize = self
            .running
            .iter()
            .map(|r| {
                r.lease
                    .positions()
                    .saturating_sub(r.job.sequence.fed())
                    .saturating_mul(per_position)
            })
            .sum();
        let pool = self.pool.stats();
        let written = (pool.in_use_bytes + pool.idle_bytes).saturating_sub(unwritten);
        if let Some(limit) = watch.check(now, written, self.pool.config().budget_bytes)
            && limit != self.pool.limit()
        {
            self.pool.set_limit(limit);
            self.publish_gauges();
        }
    }

    /// Ends waiting and running requests whose caller left or whose deadline passed.
    fn interrupt(&mut self, now: Instant) {
        let mut i = 0;
        while i < self.waiting.len() {
            match self.waiting[i].interruption(now) {
                Some(reason) => {
                    if let Some(job) = self.waiting.remove(i) {
                        self.end_waiting(job, reason);
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

    /// Ends `job`, taken out of the waiting line, for `reason`.
    fn end_waiting(&self, mut job: Job, reason: FinishReason) {
        self.stats.waiting.fetch_sub(1, Ordering::AcqRel);
        job.sequence.stop(reason);
        self.finish(job, None);
    }

    /// Whether a blank cache is to be made (or finished) now.
    fn spare_wanted(&self) -> bool {
        self.spares && (self.blank.is_some() || self.next_blank().is_some())
    }

    /// Positions of the next blank cache to make: see [`KvPool::next_blank`].
    fn next_blank(&self) -> Option<usize> {
        self.pool.next_blank(self.recent_needs.iter().copied())
    }

    /// Makes the next part of a blank cache ([`StepModel::fill_cache_part`]) and hands it to
    /// the pool once whole.
    fn make_spare_part(&mut self) {
        let mut cache = match self.blank.take() {
            Some(cache) => cache,
            None => match self.next_blank() {
                Some(positions) => self.model.new_cache(positions),
                None => return,
            },
        };
        let failed = match self.model.fill_cache_part(&mut cache) {
            Ok(false) => {
                self.blank = Some(cache);
                return;
            }
            Ok(true) => match self.model.recycle_cache(cache) {
                Some((cache, positions)) => {
                    let blank = Pooled {
                        cache,
                        held: Vec::new(),
                        piece: None,
                    };
                    match self.pool.add_blank(blank, positions) {
                        Ok(()) => {
                            self.stats.kv_spares_made.fetch_add(1, Ordering::Relaxed);
                            tracing::debug!(
                                target: "btlm_engine",
                                positions,
                                "btlm blank key/value cache made"
                            );
                            None
                        }
                        Err(_) => Some(format!(
                            "the pool had no room for a blank cache of {positions} positions"
                        )),
                    }
                }
                None => Some("a blank cache held no memory".into()),
            },
            Err(e) => Some(e.to_string()),
        };
        if let Some(why) = failed {
            // Not to be tried again and again while idle.
            tracing::warn!("btlm engine: no more blank key/value caches are made: {why}");
            self.spares = false;
        }
        self.publish_gauges();
    }

    /// Whether the model computes a position alike however its sequence is split
    /// ([`StepModel::splits_alike`]): prefix reuse then keeps any run tokens.
    pub(crate) fn splits_alike(&self) -> bool {
        self.any_split
    }

    /// Moves waiting requests into the batch while a slot and cache room are free, best
    /// first (the queue is kept in that order); a request that does not fit yet holds back
    /// those behind it (see the module's "Admission order").
    fn admit(&mut self) {
        self.price_copies();
        while self.running.len() < self.config.max_batch {
            let Some(mut job) = self.waiting.pop_front() else {
                break;
            };
            let sequence = &job.sequence;
            let keepable = |p: &Pooled<M::Cache>| sequence.keepable(&p.held, p.piece);
            let keep = if self.prefix_reuse {
                self.pool.keep_on_lease(sequence.max_positions(), keepable)
            } else {
                0
            };
            if self.late_on_arrival(&job, keep) {
                // Ended before it takes cache memory: a lease could drop idle caches that
                // later requests (a conversation's next turn) would keep.
                tracing::debug!(
                    target: "btlm_engine",
                    priority = job.priority,
                    prompt_left = job.sequence.prompt_left().saturating_sub(keep),
                    "btlm request ended before admission: its prompt could not run in time \
                     behind the others"
                );
                self.stats.late.fetch_add(1, Ordering::Relaxed);
                self.end_waiting(job, FinishReason::Late);
                continue;
            }
            if !self.guard_admits(&job, keep) {
                if !job.held_back {
                    job.held_back = true;
                    self.stats.held_back.fetch_add(1, Ordering::Relaxed);
                }
                // It stays first in line: those behind it rank no higher.
                self.waiting.push_front(job);
                break;
            }
            let granted = if self.prefix_reuse {
                self.pool.lease_reusing(sequence.max_positions(), keepable)
            } else {
                // Only the memory of an idle cache is worth anything.
                self.pool
                    .lease(sequence.max_positions())
                    .map(|(lease, idle)| (lease, idle.map(Handed::as_it_is)))
            };
            let Some((lease, idle)) = granted else {
                if self.running.is_empty() {
                    // With nothing running the whole budget has room for any request
                    // (`Engine::submit_ranked` refuses larger ones), so the memory left
                    // holds it back, and no running sequence will give memory back.
                    tracing::debug!(
                        target: "btlm_engine",
                        priority = job.priority,
                        positions = job.sequence.max_positions(),
                        limit_mib = self.pool.limit() >> 20,
                        "btlm request ended before admission: the memory left cannot hold its \
                         cache"
                    );
                    self.stats.no_memory.fetch_add(1, Ordering::Relaxed);
                    self.end_waiting(job, FinishReason::NoMemory);
                    continue;
                }
                // No room yet: it stays first in line.
                self.waiting.push_front(job);
                break;
            };
            if self.spares {
                self.recent_needs.push_back(job.sequence.max_positions());
                while self.recent_needs.len() > self.config.spare_caches {
                    self.recent_needs.pop_front();
                }
            }
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
            let how = match &idle {
                None => "new",
                Some(Handed { copy: false, .. }) => "idle as it is",
                Some(Handed { into: Some(_), .. }) => "copy into a blank",
                Some(Handed { .. }) => "copy into new",
            };
            let (mut cache, keep) = match idle {
                Some(Handed {
                    cache: Pooled { cache, .. },
                    keep,
                    copy: false,
                    ..
                }) => (cache, keep),
                Some(Handed {
                    cache: source,
                    keep,
                    copy: true,
                    into,
                }) => {
                    let mut cache = match into {
                        Some(blank) => blank.cache,
                        None => self.model.new_cache(lease.positions()),
                    };
                    let copied = self.model.copy_prefix(&source.cache, &mut cache, keep);
                    // The source goes back idle unless this sequence continues all it holds.
                    if keep < source.held.len() {
                        let Pooled { cache, held, piece } = source;
                        if let Some((cache, positions)) = self.model.recycle_cache(cache) {
                            self.pool.put_back(Pooled { cache, held, piece }, positions);
                        }
                    }
                    match copied {
                        Ok(()) => (cache, keep),
                        Err(e) => {
                            tracing::warn!(
                                "btlm engine: a cached prompt start was not copied: {e}"
                            );
                            (self.model.new_cache(lease.positions()), 0)
                        }
                    }
                }
                None => (self.model.new_cache(lease.positions()), 0),
            };
            // `keepable` keeps less than the prompt: always accepted.
            let keep = match job.sequence.skip_cached(keep) {
                Ok(()) => keep,
                Err(e) => {
                    tracing::error!("btlm engine: {e}");
                    0
                }
            };
            self.model.truncate_cache(&mut cache, keep);
            tracing::debug!(
                target: "btlm_engine",
                prompt_tokens = job.sequence.prompt_tokens(),
                kept = keep,
                cache = how,
                "btlm request's cache"
            );
            self.running.push(Running {
                job,
                cache,
                lease,
                failed: None,
            });
        }
        self.publish_gauges();
    }

    /// Tells the pool what a copy into new memory costs, in prompt tokens per position:
    /// the time to write a position's new memory over the time a prompt token takes (both
    /// measured; nothing until both are known).
    fn price_copies(&mut self) {
        let (Some(rate), Some(token)) = (self.first_touch, self.cost.prompt_token()) else {
            return;
        };
        if token > 0.0 {
            let position = self.pool.config().bytes_per_token as f64 / rate;
            self.pool.price_copies(position / token);
        }
    }

    /// The loads of the running sequences that have not ended, with their positions in
    /// the batch.
    fn loads(&self) -> (Vec<usize>, Vec<Load>) {
        self.running
            .iter()
            .enumerate()
            .filter(|(_, r)| r.job.sequence.finished().is_none())
            .map(|(i, r)| (i, r.job.load()))
            .unzip()
    }

    /// Whether the deadline guard (if on) lets `job` join the batch now, `keep` of its
    /// prompt tokens kept from an idle cache.
    fn guard_admits(&self, job: &Job, keep: usize) -> bool {
        let Some(guard) = &self.guard else {
            return true;
        };
        let (_, batch) = self.loads();
        let mut load = job.load();
        load.prompt_left = load.prompt_left.saturating_sub(keep);
        guard.admits(&self.cost, &batch, &load, Instant::now())
    }

    /// Whether the deadline guard (if on) would end `job`'s prompt as late once admitted
    /// ([`Self::end_late_prompts`]), `keep` of its prompt tokens kept from an idle cache:
    /// behind the running prompts the steps run before it (as high a priority or higher,
    /// all older than it).
    fn late_on_arrival(&self, job: &Job, keep: usize) -> bool {
        let Some(guard) = &self.guard else {
            return false;
        };
        let (_, mut loads, decode_rows) = self.prompt_loads();
        loads.retain(|l| l.priority >= job.priority);
        let mut load = job.load();
        load.prompt_left = load.prompt_left.saturating_sub(keep);
        loads.push(load);
        let budget = self.prompt_budget();
        let late = guard.late_prompts(&self.cost, &loads, decode_rows, budget, Instant::now());
        late.last() == Some(&(loads.len() - 1))
    }

    /// Preempts the lower-priority sequences the deadline guard (if on) picks so that the
    /// higher ones finish in time.
    fn guard_deadlines(&mut self) {
        let Some(guard) = &self.guard else {
            return;
        };
        let (positions, batch) = self.loads();
        for k in guard.preemptions(&self.cost, &batch, Instant::now()) {
            let Some(r) = positions.get(k).and_then(|&i| self.running.get_mut(i)) else {
                continue;
            };
            tracing::debug!(
                target: "btlm_engine",
                priority = r.job.priority,
                "btlm request preempted: a higher-priority one would be late"
            );
            r.job.sequence.stop(FinishReason::Preempted);
            self.stats.preempted.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// The positions of the running sequences that have not ended: those decoding, and
    /// those prefilling in the order the steps run their prompts (the highest priority
    /// first, the oldest first among equals).
    fn decoding_and_prompts(&self) -> (Vec<usize>, Vec<usize>) {
        let (mut decode, mut prompts) = (Vec::new(), Vec::new());
        for (i, r) in self.running.iter().enumerate() {
            let seq = &r.job.sequence;
            if seq.finished().is_some() {
                continue;
            }
            if seq.is_prefilling() {
                prompts.push(i);
            } else {
                decode.push(i);
            }
        }
        // Stable: the oldest first among equal priorities.
        prompts.sort_by(|&a, &b| {
            let p = |i: usize| self.running[i].job.priority;
            p(b).total_cmp(&p(a))
        });
        (decode, prompts)
    }

    /// The running prompts in the order the steps run them (positions in the batch), their
    /// loads, and the decode rows that ride along.
    fn prompt_loads(&self) -> (Vec<usize>, Vec<Load>, usize) {
        let (decode, prompts) = self.decoding_and_prompts();
        let loads = prompts
            .iter()
            .map(|&i| self.running[i].job.load())
            .collect();
        (prompts, loads, decode.len())
    }

    /// Ends the prompts the deadline guard (if on) finds could not run in time
    /// ([`DeadlineGuard::late_prompts`]), taken in the order the steps run them.
    fn end_late_prompts(&mut self, now: Instant) {
        let Some(guard) = &self.guard else {
            return;
        };
        let (prompts, loads, decode_rows) = self.prompt_loads();
        let budget = self.prompt_budget();
        for k in guard.late_prompts(&self.cost, &loads, decode_rows, budget, now) {
            let job = &mut self.running[prompts[k]].job;
            tracing::debug!(
                target: "btlm_engine",
                priority = job.priority,
                prompt_left = job.sequence.prompt_left(),
                "btlm request ended: its prompt could not run in time behind the others"
            );
            job.sequence.stop(FinishReason::Late);
            self.stats.late.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Prompt tokens the next step may run over all prompt pieces
    /// ([`EngineConfig::prefill_tokens_per_step`]), fewer where that many would take longer
    /// than [`EngineConfig::prefill_step_time`] at the measured cost of a prompt token. The
    /// step's first piece runs whatever the budget.
    fn prompt_budget(&self) -> usize {
        let tokens = self.config.prefill_tokens_per_step;
        match (self.config.prefill_step_time, self.cost.prompt_token()) {
            // The cast truncates (a floor here) and saturates.
            (Some(time), Some(per_token)) if per_token > 0.0 => {
                tokens.min((time.as_secs_f64() / per_token) as usize)
            }
            _ => tokens,
        }
    }

    /// One step: decode rows of every decoding sequence and one prompt piece per prefilling
    /// sequence within the prompt budget ([`Self::prompt_budget`]), the highest priority
    /// first.
    fn step(&mut self) {
        let (decode, prompts) = self.decoding_and_prompts();
        let budget = self.prompt_budget();
        let sizes: Vec<usize> = prompts
            .iter()
            .map(|&i| self.running[i].job.sequence.pending().len())
            .collect();
        let taken = step_pieces(&sizes, budget);
        let prompt_tokens: usize = taken.iter().map(|&k| sizes[k]).sum();
        let mut prefill: Vec<usize> = taken.iter().map(|&k| prompts[k]).collect();
        prefill.sort_unstable();
        let batch = decode.len() + prefill.len();
        if batch == 0 {
            return;
        }
        let (decode_rows, prefill_count) = (decode.len(), prefill.len());
        let passes: Vec<Vec<usize>> = if self.piggyback {
            vec![decode.into_iter().chain(prefill).collect()]
        } else {
            // Pieces long enough to take alone the route they take together share a pass
            // (`StepModel::shared_prompt_pass`); the others run alone.
            let (mut shared, mut alone) = (Vec::new(), Vec::new());
            for i in prefill {
                let rows = self.running[i].job.sequence.pending().len();
                match self.shared_prompt_pass {
                    Some((min_rows, max_pieces))
                        if rows >= min_rows && shared.len() < max_pieces =>
                    {
                        shared.push(i)
                    }
                    _ => alone.push(i),
                }
            }
            [decode, shared]
                .into_iter()
                .chain(alone.into_iter().map(|i| vec![i]))
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
            let pass_decode_rows = pass.iter().filter(|&&i| !self.is_prefilling(i)).count();
            let pass_started = Instant::now();
            let took = self.run_pass(pass);
            model += took;
            if prompt_rows > 0 {
                prompt_pass += took;
            }
            if passes.len() > 1 {
                self.cost
                    .record(pass_decode_rows, prompt_rows, pass_started.elapsed());
            }
        }
        let took = started.elapsed();
        if passes.len() == 1 {
            self.cost.record(decode_rows, prompt_tokens, took);
        }
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
            prompt_budget = budget,
            prompts = prefill_count,
            passes = passes.len(),
            ms = took.as_secs_f64() * 1e3,
            model_ms = model.as_secs_f64() * 1e3,
            prompt_pass_ms = prompt_pass.as_secs_f64() * 1e3,
            // How far decode steps stray from their expected time (the guard's margin).
            spread = self.cost.spread().unwrap_or(f64::NAN),
            "btlm step"
        );
    }

    /// Whether the running sequence at `i` still has prompt tokens to run.
    fn is_prefilling(&self, i: usize) -> bool {
        self.running
            .get(i)
            .is_some_and(|r| r.job.sequence.is_prefilling())
    }

    /// Runs the pending tokens of the sequences at `indices` in one model pass and hands
    /// each its logits.
    /// Returns how long the model pass took.
    fn run_pass(&mut self, indices: &[usize]) -> Duration {
        // The segments go to the model in batch order and their logits come back in it, so
        // they are handed out in that order too, whatever order `indices` came in (a step
        // lists its decoding sequences before its prompts: a prompt still prefilling can sit
        // before a sequence decoding already).
        let mut order = indices.to_vec();
        order.sort_unstable();
        order.dedup();
        let indices = order.as_slice();
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
                    let spent = Spent {
                        prompt_tokens: seq.prompt_tokens(),
                        generated_tokens: seq.generated(),
                    };
                    if !send(&r.job.events, Event::Text(text, spent)) {
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
                self.model.recycle_cache(r.cache).map(|(cache, positions)| {
                    let seq = &r.job.sequence;
                    let held = if self.prefix_reuse {
                        seq.reusable(self.any_split).to_vec()
                    } else {
                        Vec::new()
                    };
                    let piece = (!self.any_split).then(|| seq.prefill_chunk());
                    (Pooled { cache, held, piece }, positions)
                })
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
                // Where a request's time went, for an answer the caller did not get in time.
                let now = Instant::now();
                tracing::debug!(
                    target: "btlm_engine",
                    finish = ?g.finish,
                    prompt_tokens = g.prompt_tokens,
                    tokens = g.tokens.len(),
                    ms = now.duration_since(job.submitted).as_secs_f64() * 1e3,
                    deadline_left_ms = job.deadline.map(|d| signed_ms(now, d)),
                    "btlm request done"
                );
                self.stats
                    .tokens
                    .fetch_add(g.tokens.len() as u64, Ordering::Relaxed);
                match g.finish {
                    // Counted when ended (`EngineStats::preempted`, `EngineStats::late`).
                    FinishReason::Preempted | FinishReason::Late | FinishReason::NoMemory => {}
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
        s.kv_limit_bytes.store(self.pool.limit(), Ordering::Release);
        s.kv_reused.store(pool.reused, Ordering::Release);
        s.kv_allocated.store(pool.allocated, Ordering::Release);
        s.kv_spares_used.store(pool.blank_leases, Ordering::Release);
        s.kv_dropped.store(pool.dropped, Ordering::Release);
        s.prefix_hits.store(pool.prefix_hits, Ordering::Release);
        s.prefix_tokens.store(pool.prefix_tokens, Ordering::Release);
    }
}

/// Milliseconds from `now` to `deadline`, negative once it passed.
fn signed_ms(now: Instant, deadline: Instant) -> f64 {
    match deadline.checked_duration_since(now) {
        Some(left) => left.as_secs_f64() * 1e3,
        None => -(now.duration_since(deadline).as_secs_f64() * 1e3),
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

#[cfg(test)]
mod tests {
    //! The deadline guard and the prompt order inside the batcher, driven step by step with
    //! costs set by the test (the engine thread learns them from real steps).
    use std::path::Path;
    use std::sync::Mutex;

    use tokio::sync::mpsc::{UnboundedReceiver, unbounded_channel};

    use super::*;
    use crate::error::Result;
    use crate::generation::{Generation, GenerationConfig};
    use crate::host_memory::Room;
    use crate::model::Segment;

    /// A model without weights: the next token is always 500; it records the first token of
    /// every segment of every step. Its cache is the positions it holds, and it recycles.
    #[derive(Default)]
    struct Echo {
        steps: Mutex<Vec<Vec<u32>>>,
        /// Rows depend on what shares their pass (as on AMX); `shared`: which prompt
        /// pieces may still share one.
        dependent_rows: bool,
        shared: Option<(usize, usize)>,
        /// A position is the same however its sequence is split: prefix reuse keeps any.
        splits_alike: bool,
        /// Parts a cache is made ahead in (0: caches are not made ahead), and the parts made.
        fill_parts: usize,
        parts_made: Mutex<usize>,
    }

    impl StepModel for Echo {
        type Cache = usize;

        fn context(&self) -> usize {
            4096
        }

        fn kv_bytes_per_token(&self) -> usize {
            1
        }

        fn new_cache(&self, positions: usize) -> usize {
            positions
        }

        fn recycles_caches(&self) -> bool {
            true
        }

        fn recycle_cache(&self, cache: usize) -> Option<(usize, usize)> {
            Some((cache, cache))
        }

        fn copy_prefix(&self, _from: &usize, _to: &mut usize, _len: usize) -> Result<()> {
            Ok(())
        }

        fn fills_caches_ahead(&self) -> bool {
            self.fill_parts > 0
        }

        fn fill_cache_part(&self, _cache: &mut usize) -> Result<bool> {
            let mut made = self.parts_made.lock().expect("parts");
            *made += 1;
            Ok(made.is_multiple_of(self.fill_parts))
        }

        fn step(&self, segments: &mut [Segment<'_, usize>]) -> Result<Vec<Vec<f32>>> {
            let firsts = segments.iter().map(|s| s.tokens[0]).collect();
            self.steps.lock().expect("steps").push(firsts);
            Ok(segments
                .iter()
                .filter(|s| s.logits)
                .map(|_| {
                    let mut row = vec![0.0; 1000];
                    row[500] = 1.0;
                    row
                })
                .collect())
        }

        fn rows_independent(&self) -> bool {
            !self.dependent_rows
        }

        fn shared_prompt_pass(&self) -> Option<(usize, usize)> {
            self.shared
        }

        fn splits_alike(&self) -> bool {
            self.splits_alike
        }
    }

    fn batcher(max_batch: usize, prefill_tokens_per_step: usize) -> Batcher<Echo> {
        batcher_of(Echo::default(), max_batch, prefill_tokens_per_step)
    }

    fn batcher_of(model: Echo, max_batch: usize, prefill_tokens_per_step: usize) -> Batcher<Echo> {
        batcher_with(model, max_batch, prefill_tokens_per_step, |_| {})
    }

    /// [`batcher_of`], its settings changed by `change`.
    fn batcher_with(
        model: Echo,
        max_batch: usize,
        prefill_tokens_per_step: usize,
        change: impl FnOnce(&mut EngineConfig),
    ) -> Batcher<Echo> {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/btlm-tiny");
        let tokenizer = Arc::new(BtlmTokenizer::from_dir(&dir).expect("tiny tokenizer"));
        let mut config = EngineConfig {
            max_batch,
            prefill_tokens_per_step,
            // The token budget alone unless a test sets a time.
            prefill_step_time: None,
            deadline_headroom: Some(Duration::from_secs(2)),
            ..EngineConfig::default()
        };
        change(&mut config);
        let mut b = Batcher::new(model, tokenizer, config, Arc::default()).expect("batcher");
        set_costs(&mut b);
        b
    }

    /// Steps until every running sequence has ended and retired.
    fn run_out(b: &mut Batcher<Echo>) {
        while !b.running.is_empty() {
            b.step();
            b.retire();
        }
    }

    /// Decode steps of 50 ms at one row, 85 ms at eight; prompt tokens 10 ms each.
    fn set_costs(b: &mut Batcher<Echo>) {
        b.cost = StepCost::default();
        b.cost.record(1, 0, Duration::from_millis(50));
        b.cost.record(8, 0, Duration::from_millis(85));
        b.cost.record(0, 100, Duration::from_secs(1));
    }

    /// A request whose prompt is `prompt` tokens (all `first`), for `new` tokens, with
    /// `deadline_s` seconds left.
    fn job(
        priority: f64,
        first: u32,
        prompt: usize,
        new: usize,
        deadline_s: f64,
    ) -> (Job, UnboundedReceiver<Event>) {
        let cfg = GenerationConfig {
            max_new_tokens: new,
            no_repeat_ngram_size: 0,
            stop: Vec::new(),
            ignore_eos: true,
            ..GenerationConfig::default()
        };
        let sequence = Sequence::new(&vec![first; prompt], &cfg, 4096, 0).expect("sequence");
        let (events, rx) = unbounded_channel();
        let now = Instant::now();
        let job = Job {
            sequence,
            deadline: Some(now + Duration::from_secs_f64(deadline_s)),
            events,
            priority,
            submitted: now,
            held_back: false,
        };
        (job, rx)
    }

    fn submit(b: &mut Batcher<Echo>, job: Job) {
        b.stats.waiting.fetch_add(1, Ordering::AcqRel);
        b.enqueue(job);
    }

    /// Submits `count` requests of priority 1 (prompts of `prompt` tokens, all of them
    /// `1`, `2`, … in turn) and returns their receivers.
    fn submit_prompts(
        b: &mut Batcher<Echo>,
        count: u32,
        prompt: usize,
        new: usize,
        deadline_s: f64,
    ) -> Vec<UnboundedReceiver<Event>> {
        (1..=count)
            .map(|first| {
                let (j, r) = job(1.0, first, prompt, new, deadline_s);
                submit(b, j);
                r
            })
            .collect()
    }

    /// Which running sequences, in batch order, were ended as late.
    fn late(b: &Batcher<Echo>) -> Vec<bool> {
        b.running
            .iter()
            .map(|r| r.job.sequence.finished() == Some(FinishReason::Late))
            .collect()
    }

    /// The generation `rx` was answered with.
    fn done(rx: &mut UnboundedReceiver<Event>) -> Generation {
        loop {
            match rx.try_recv().expect("an answer") {
                Event::Text(..) => continue,
                Event::Done(result) => return result.expect("no failure"),
            }
        }
    }

    #[test]
    fn prompts_that_could_not_run_in_time_end_before_they_take_the_steps() {
        // Prompt tokens 10 ms each, 256 a step; 2 s left for an answer (the test's guard).
        let mut b = batcher_with(Echo::default(), 8, 256, |c| {
            c.answer_time = Duration::from_secs(2)
        });
        // Four 300-token prompts due in 9 s: the first two end by 3 s and 6 s (+ 2 s fit),
        // the third would end at 9 s. The fourth, behind the second, as well.
        let mut rx = submit_prompts(&mut b, 4, 300, 2, 9.0);
        b.admit();
        // The last two end on arrival, before they take cache memory.
        assert_eq!(b.running.len(), 2);
        assert_eq!(b.pool.stats().allocated + b.pool.stats().reused, 2);
        assert_eq!(b.stats.waiting.load(Ordering::Acquire), 0);
        b.end_late_prompts(Instant::now());
        assert_eq!(late(&b), [false, false]);
        assert_eq!(b.stats.late.load(Ordering::Relaxed), 2);
        run_out(&mut b);
        let steps = b.model.steps.lock().expect("steps").clone();
        assert!(
            steps
                .iter()
                .flatten()
                .all(|&first| first == 1 || first == 2 || first == 500),
            "the late prompts never ran: {steps:?}"
        );
        for (r, want) in rx.iter_mut().zip([true, true, false, false]) {
            let g = done(r);
            assert_eq!(g.finish != FinishReason::Late, want, "{:?}", g.finish);
        }
        // Without the guard, or before a prompt step was measured, nothing is ended.
        for guard in [false, true] {
            let mut b = batcher(8, 256);
            if guard {
                b.cost = StepCost::default();
            } else {
                b.guard = None;
            }
            for first in 1..=4 {
                let (j, _r) = job(1.0, first, 300, 2, 9.0);
                submit(&mut b, j);
            }
            b.admit();
            b.end_late_prompts(Instant::now());
            assert!(late(&b).iter().all(|l| !l), "guard {guard}");
        }
    }

    /// --btlm.prefill_step_ms: a step runs the prompt pieces that fit its time at the
    /// measured cost of a prompt token (the first piece whatever its length); the token
    /// limit alone without a time or before that cost is measured.
    #[test]
    fn a_step_runs_the_prompt_pieces_that_fit_its_time() {
        // Prompt tokens 10 ms each; three 20-token prompts.
        for (ms, measured, pieces) in [
            (None, true, 3),
            (Some(10_000), true, 3),
            (Some(450), true, 2),
            (Some(250), true, 1),
            (Some(100), true, 1),
            (Some(100), false, 3),
        ] {
            let mut b = batcher_with(Echo::default(), 8, 512, |c| {
                c.prefill_step_time = ms.map(Duration::from_millis);
            });
            b.guard = None;
            if !measured {
                b.cost = StepCost::default();
            }
            let _rx = submit_prompts(&mut b, 3, 20, 2, 60.0);
            b.admit();
            b.step();
            let steps = b.model.steps.lock().expect("steps").clone();
            let want: Vec<u32> = (1..=pieces).collect();
            assert_eq!(steps[0], want, "{ms:?} ms, measured {measured}");
        }
    }

    /// The deadline guard projects the prompts in the steps the time limit makes: more of
    /// them, each with the decode rows of the prompts done by then.
    #[test]
    fn late_prompts_are_projected_in_the_steps_the_time_limit_makes() {
        // Prompt tokens 10 ms each, decode steps 1 s; 2 s left for an answer. Two 64-token
        // prompts due in 3.78 s: in one step both are done by 1.28 s (2.5 s left); one a
        // step (700 ms: 70 tokens), the second runs beside the first's decode row and is
        // done by 2.28 s (1.5 s left): it could not answer in time.
        for (ms, late_prompts) in [(None, 0), (Some(700), 1)] {
            let mut b = batcher_with(Echo::default(), 8, 512, |c| {
                c.answer_time = Duration::from_secs(2);
                c.prefill_step_time = ms.map(Duration::from_millis);
            });
            b.cost = StepCost::default();
            b.cost.record(1, 0, Duration::from_secs(1));
            b.cost.record(0, 100, Duration::from_secs(1));
            let _rx = submit_prompts(&mut b, 2, 64, 2, 3.78);
            b.admit();
            b.end_late_prompts(Instant::now());
            assert_eq!(
                b.stats.late.load(Ordering::Relaxed),
                late_prompts,
                "{ms:?} ms"
            );
        }
    }

    #[test]
    fn a_running_prompt_a_higher_one_arrives_ahead_of_ends_once_it_could_not_run_in_time() {
        // Prompt tokens 10 ms each, 256 a step, 2 s left for an answer: two lower 300-token
        // prompts due in 9 s fit (by ~3 s and ~6 s, + 2 s).
        let mut b = batcher_with(Echo::default(), 8, 256, |c| {
            c.answer_time = Duration::from_secs(2)
        });
        let (a, _a) = job(1.0, 1, 300, 2, 9.0);
        let (l, mut l_rx) = job(1.0, 2, 300, 2, 9.0);
        submit(&mut b, a);
        submit(&mut b, l);
        b.admit();
        b.end_late_prompts(Instant::now());
        assert_eq!(b.running.len(), 2);
        assert_eq!(b.stats.late.load(Ordering::Relaxed), 0);
        // A higher one runs its prompt first: it fits, and the second lower one no longer.
        let (h, _h) = job(5.0, 3, 300, 2, 9.0);
        submit(&mut b, h);
        b.admit();
        assert_eq!(b.running.len(), 3);
        b.end_late_prompts(Instant::now());
        assert_eq!(late(&b), [false, true, false]);
        run_out(&mut b);
        assert_eq!(done(&mut l_rx).finish, FinishReason::Late);
    }

    #[test]
    fn the_engine_loop_ends_late_prompts_before_its_first_step() {
        let b = batcher_with(Echo::default(), 8, 256, |c| {
            c.answer_time = Duration::from_secs(2)
        });
        let stats = Arc::clone(&b.stats);
        let (tx, jobs) = std::sync::mpsc::channel();
        let mut rx = Vec::new();
        // As above: of four 300-token prompts due in 9 s, the last two could not run.
        for first in 1..=4 {
            let (j, r) = job(1.0, first, 300, 2, 9.0);
            tx.send(j).expect("send");
            rx.push(r);
        }
        drop(tx);
        b.run(jobs);
        let finish: Vec<FinishReason> = rx.iter_mut().map(|r| done(r).finish).collect();
        assert_eq!(
            finish,
            [
                FinishReason::Length,
                FinishReason::Length,
                FinishReason::Late,
                FinishReason::Late
            ]
        );
        assert_eq!(stats.late.load(Ordering::Relaxed), 2);
    }

    #[test]
    fn a_lower_request_waits_while_it_would_make_a_validator_late() {
        let mut b = batcher(4, 256);
        let (validator, _v) = job(10.0, 1, 4, 100, 9.0);
        submit(&mut b, validator);
        b.admit();
        // 300 prompt tokens (3 s) and 100 steps of two rows (5.5 s) leave the validator
        // less than the 2 s headroom of its 9 s.
        let (low, _l) = job(1.0, 2, 300, 10, 60.0);
        submit(&mut b, low);
        b.admit();
        assert_eq!((b.running.len(), b.waiting.len()), (1, 1), "held back");
        b.admit();
        assert_eq!(b.stats.held_back.load(Ordering::Relaxed), 1, "counted once");
        // A request of the validator's priority is queued ahead of the low one and joins.
        let (peer, _p) = job(10.0, 3, 300, 10, 60.0);
        submit(&mut b, peer);
        b.admit();
        assert_eq!(b.running.len(), 2, "the peer joined");
        assert_eq!(b.waiting.len(), 1, "the low one still waits");
        // Without the guard the low one joins.
        b.guard = None;
        b.admit();
        assert_eq!((b.running.len(), b.waiting.len()), (3, 0));
    }

    #[test]
    fn a_lower_request_whose_prompt_start_is_kept_is_weighed_without_it() {
        let mut b = batcher(4, 256);
        // An earlier low request leaves its 300-token prompt's 256 in whole pieces (of
        // 64) in an idle cache.
        let (earlier, mut e) = job(1.0, 2, 300, 1, 60.0);
        submit(&mut b, earlier);
        b.admit();
        run_out(&mut b);
        assert_eq!(done(&mut e).prompt_tokens, 300);
        // (Its steps taught the guard the scripted model's speed: back to the test's.)
        set_costs(&mut b);
        let (validator, _v) = job(10.0, 1, 4, 100, 9.0);
        submit(&mut b, validator);
        b.admit();
        // The same prompt again: 44 tokens (0.44 s) and 100 steps of two rows (5.5 s)
        // leave the validator its 2 s of headroom; all 300 (3 s) would not (the test
        // above).
        let (low, _l) = job(1.0, 2, 300, 10, 60.0);
        submit(&mut b, low);
        b.admit();
        assert_eq!((b.running.len(), b.waiting.len()), (2, 0), "admitted");
        assert_eq!(b.running[1].job.sequence.prompt_left(), 44);
        assert_eq!(b.stats.held_back.load(Ordering::Relaxed), 0);
    }

    /// Idle caches of a 50-token prompt (64 positions) and of a 20-token prompt with a
    /// 200-token answer (256): a 60-token prompt of the same tokens wanting 100 more fits
    /// the second, which keeps 20, and would keep 50 copied out of the first. With no room
    /// for new memory beside them (a 400-position budget), the copy is taken when new
    /// memory is cheap, not when writing its 160 positions costs more than the 30 prompt
    /// tokens (10 ms each) it saves.
    #[test]
    fn a_prompt_start_is_copied_only_when_it_saves_more_than_new_memory_costs() {
        for (bytes_per_sec, copied) in [(1e6, true), (100.0, false)] {
            let model = Echo {
                splits_alike: true,
                ..Echo::default()
            };
            let mut b = batcher_with(model, 4, 256, |c| c.kv_cache_bytes = 400);
            for (prompt, new) in [(50, 1), (20, 200)] {
                let (earlier, _e) = job(1.0, 2, prompt, new, 60.0);
                submit(&mut b, earlier);
            }
            b.admit();
            run_out(&mut b);
            assert_eq!(b.pool.stats().idle_caches, 2);
            set_costs(&mut b);
            // A position's new memory: 1 byte at this rate, against 10 ms a prompt token.
            b.first_touch = Some(bytes_per_sec);
            let (next, _n) = job(1.0, 2, 60, 100, 60.0);
            submit(&mut b, next);
            b.admit();
            let s = b.pool.stats();
            let left = b.running[0].job.sequence.prompt_left();
            let dropped = b.stats.kv_dropped.load(Ordering::Acquire);
            if copied {
                assert_eq!((left, s.allocated, s.reused), (10, 3, 0), "{bytes_per_sec}");
                // 192 new positions and the idle 256 exceed the 400: the 256 goes.
                assert_eq!(dropped, 1, "{bytes_per_sec}");
            } else {
                assert_eq!((left, s.allocated, s.reused), (40, 2, 1), "{bytes_per_sec}");
                assert_eq!(dropped, 0, "{bytes_per_sec}");
            }
        }
    }

    /// While the budget has room, a prompt start is copied into new memory and the cache
    /// copied from stays idle for the conversation it holds, unless the new sequence
    /// continues all of it.
    #[test]
    fn a_copied_cache_goes_back_idle_unless_the_sequence_continues_all_it_holds() {
        let model = Echo {
            splits_alike: true,
            ..Echo::default()
        };
        let mut b = batcher_of(model, 4, 256);
        // Idle: 50 tokens "2" and 9 answer tokens; 50 tokens "3" (its one answer token is
        // never fed).
        let mut answers = Vec::new();
        for (first, new) in [(2, 10), (3, 1)] {
            let (earlier, rx) = job(1.0, first, 50, new, 60.0);
            submit(&mut b, earlier);
            answers.push(rx);
        }
        b.admit();
        run_out(&mut b);
        assert_eq!(b.pool.stats().idle_caches, 2);
        // 60 tokens "2" keep 50 of the first (too small for 160): it goes back idle.
        let (next, _n) = job(1.0, 2, 60, 100, 60.0);
        submit(&mut b, next);
        b.admit();
        assert_eq!(b.running[0].job.sequence.prompt_left(), 10);
        let s = b.pool.stats();
        assert_eq!((s.allocated, s.reused, s.idle_caches), (3, 0, 2));
        // 60 tokens "3" keep all 50 the second holds: it is dropped.
        let (next, _n) = job(1.0, 3, 60, 100, 60.0);
        submit(&mut b, next);
        b.admit();
        assert_eq!(b.running[1].job.sequence.prompt_left(), 10);
        let s = b.pool.stats();
        assert_eq!((s.allocated, s.reused, s.idle_caches), (4, 0, 1));
    }

    /// An Echo whose caches are made ahead in three parts.
    fn filling() -> Echo {
        Echo {
            fill_parts: 3,
            ..Echo::default()
        }
    }

    /// While idle, the engine makes a blank cache, a part at a time, for each of the
    /// positions the latest admissions needed (the longest first), and the next sequence
    /// that would get new memory takes one.
    #[test]
    fn blank_caches_are_made_while_idle_for_the_latest_needs_and_then_taken() {
        let mut b = batcher_with(filling(), 4, 256, |c| c.spare_caches = 2);
        assert!(!b.spare_wanted(), "no need seen yet");
        // Needs 120, 60 and 220 positions: the latest two are 60 and 220.
        for (first, prompt) in [(1, 100), (2, 40), (3, 200)] {
            let (j, _rx) = job(1.0, first, prompt, 20, 60.0);
            submit(&mut b, j);
        }
        b.admit();
        run_out(&mut b);
        let blanks = |b: &Batcher<Echo>| b.pool.stats().blank_caches;
        for (part, made) in [(1, 0), (2, 0), (3, 1), (4, 1), (5, 1), (6, 2)] {
            assert!(b.spare_wanted(), "part {part}");
            b.make_spare_part();
            assert_eq!(blanks(&b), made, "part {part}");
        }
        assert!(!b.spare_wanted(), "one for each need");
        assert_eq!(b.stats.kv_spares_made.load(Ordering::Relaxed), 2);
        assert_eq!(b.pool.stats().idle_caches, 5);
        // A prompt no idle cache starts like, needing 210: the blank 256 as it is.
        let (next, _n) = job(1.0, 9, 190, 20, 60.0);
        submit(&mut b, next);
        b.admit();
        assert_eq!(b.running[0].cache, 256);
        let s = b.pool.stats();
        assert_eq!((s.allocated, s.reused, s.blank_leases), (3, 1, 1));
        assert_eq!(b.stats.kv_spares_used.load(Ordering::Relaxed), 1);
        // Spares off: none made.
        let mut b = batcher_with(filling(), 4, 256, |c| c.spare_caches = 0);
        let (j, _rx) = job(1.0, 1, 100, 20, 60.0);
        submit(&mut b, j);
        b.admit();
        run_out(&mut b);
        assert!(!b.spare_wanted());
    }

    /// Asks the engine thread fed by `jobs` for 20 tokens after a prompt of 100 `first`
    /// tokens and waits for the answer.
    fn ask_engine(
        stats: &EngineStats,
        jobs: &std::sync::mpsc::Sender<Job>,
        first: u32,
    ) -> Generation {
        let (j, mut rx) = job(1.0, first, 100, 20, 60.0);
        stats.waiting.fetch_add(1, Ordering::AcqRel);
        jobs.send(j).expect("engine");
        loop {
            match rx.blocking_recv().expect("an answer") {
                Event::Text(..) => continue,
                Event::Done(result) => return result.expect("no failure"),
            }
        }
    }

    /// The engine's loop makes blank caches while it has nothing to run; a request that
    /// arrives meanwhile is served at the next part.
    #[test]
    fn the_engine_makes_blank_caches_between_requests() {
        let b = batcher_with(filling(), 4, 256, |c| c.spare_caches = 2);
        let stats = Arc::clone(&b.stats);
        let (jobs, rx) = std::sync::mpsc::channel();
        let engine = std::thread::spawn(move || b.run(rx));
        let ask = |first: u32| ask_engine(&stats, &jobs, first);
        assert_eq!(ask(1).tokens.len(), 20);
        let start = Instant::now();
        while stats.kv_spares_made.load(Ordering::Relaxed) == 0 {
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "no blank cache made"
            );
            std::thread::sleep(Duration::from_millis(1));
        }
        assert_eq!(ask(2).tokens.len(), 20);
        assert_eq!(stats.kv_spares_used.load(Ordering::Relaxed), 1);
        drop(jobs);
        engine.join().expect("engine thread");
    }

    /// A memory watch due at every call whose room is `room`'s value (host memory, bytes),
    /// keeping `reserve` bytes free.
    fn watch(room: &Arc<std::sync::atomic::AtomicU64>, reserve: u64) -> MemoryWatch {
        watch_every(room, reserve, Duration::ZERO)
    }

    /// [`watch`], due every `every`.
    fn watch_every(
        room: &Arc<std::sync::atomic::AtomicU64>,
        reserve: u64,
        every: Duration,
    ) -> MemoryWatch {
        let room = Arc::clone(room);
        MemoryWatch::new(every, reserve, move || Room {
            host: Some(room.load(Ordering::Relaxed)),
            cgroup: None,
        })
    }

    /// The memory left holds the caches back: idle ones are dropped, new memory is not
    /// lent past it (the request waits), and what the running sequences have yet to write
    /// counts against the room; once memory is freed the budget is whole again.
    #[test]
    fn the_memory_left_holds_the_caches_back_until_it_is_freed() {
        use std::sync::atomic::AtomicU64;
        let mut b = batcher_with(Echo::default(), 4, 512, |c| {
            c.prefix_reuse = false;
            c.kv_cache_bytes = 10_000;
        });
        let room = Arc::new(AtomicU64::new(1 << 40));
        b.memory = Some(watch(&room, 64));
        let (first, _f) = job(1.0, 1, 100, 20, 60.0);
        submit(&mut b, first);
        b.watch_memory(Instant::now());
        b.admit();
        run_out(&mut b);
        assert_eq!(
            b.pool.stats().idle_bytes,
            128,
            "120 positions, one byte each"
        );
        assert_eq!(b.stats.kv_limit_bytes.load(Ordering::Relaxed), 10_000);
        // Nothing left beyond the reserve: the limit is what is written less the 64 bytes
        // short, and the idle cache no longer fits it.
        room.store(0, Ordering::Relaxed);
        b.watch_memory(Instant::now());
        assert_eq!(b.pool.limit(), 128 - 64);
        assert_eq!(b.stats.kv_limit_bytes.load(Ordering::Relaxed), 64);
        let s = b.pool.stats();
        assert_eq!((s.idle_caches, s.dropped), (0, 1));
        // 500 bytes left: a request of 300 positions (a lease of 320) fits; a second one
        // does not, because the first has yet to write its 320.
        room.store(500, Ordering::Relaxed);
        b.watch_memory(Instant::now());
        assert_eq!(b.pool.limit(), 500 - 64);
        let (a, _a) = job(1.0, 2, 280, 20, 60.0);
        let (c, _c) = job(1.0, 3, 280, 20, 60.0);
        submit(&mut b, a);
        submit(&mut b, c);
        b.admit();
        assert_eq!((b.running.len(), b.waiting.len()), (1, 1));
        // The first one's prompt run: its 280 positions are written, taken from the room.
        while b.running[0].job.sequence.prompt_left() > 0 {
            b.step();
        }
        assert_eq!(b.running[0].job.sequence.fed(), 280);
        room.store(500 - 280, Ordering::Relaxed);
        b.watch_memory(Instant::now());
        assert_eq!(b.pool.limit(), 280 + 220 - 64, "the same limit as before");
        b.admit();
        assert_eq!(b.waiting.len(), 1, "still no room for a second lease");
        // Memory freed elsewhere: the whole budget again, and the second one runs.
        room.store(1 << 40, Ordering::Relaxed);
        b.watch_memory(Instant::now());
        assert_eq!(b.pool.limit(), 10_000);
        b.admit();
        assert_eq!((b.running.len(), b.waiting.len()), (2, 0));
        run_out(&mut b);
    }

    /// With nothing running, a request the memory left cannot hold is refused at once (no
    /// running sequence will give memory back); a smaller one behind it runs.
    #[test]
    fn a_request_the_memory_left_cannot_hold_alone_is_refused_at_once() {
        use std::sync::atomic::AtomicU64;
        let mut b = batcher_with(Echo::default(), 4, 512, |c| {
            c.prefix_reuse = false;
            c.kv_cache_bytes = 10_000;
        });
        let room = Arc::new(AtomicU64::new(200));
        b.memory = Some(watch(&room, 64));
        b.watch_memory(Instant::now());
        assert_eq!(b.pool.limit(), 136);
        let (big, mut big_rx) = job(2.0, 1, 280, 20, 60.0);
        let (small, _small_rx) = job(1.0, 2, 80, 20, 60.0);
        submit(&mut b, big);
        submit(&mut b, small);
        b.admit();
        assert_eq!((b.running.len(), b.waiting.len()), (1, 0));
        assert_eq!(b.running[0].job.sequence.max_positions(), 100);
        assert_eq!(done(&mut big_rx).finish, FinishReason::NoMemory);
        assert_eq!(b.stats.no_memory.load(Ordering::Relaxed), 1);
        // With one running, a request that does not fit waits for its memory instead.
        let (next, _next_rx) = job(1.0, 3, 280, 20, 60.0);
        submit(&mut b, next);
        b.admit();
        assert_eq!((b.running.len(), b.waiting.len()), (1, 1));
        assert_eq!(b.stats.no_memory.load(Ordering::Relaxed), 1);
    }

    /// While the engine has nothing to run it still reads the memory left, and drops its
    /// idle caches when other processes take that memory.
    #[test]
    fn an_idle_engine_drops_its_idle_caches_when_memory_runs_short() {
        use std::sync::atomic::AtomicU64;
        let mut b = batcher_with(Echo::default(), 4, 256, |c| c.spare_caches = 0);
        let room = Arc::new(AtomicU64::new(1 << 40));
        b.memory = Some(watch_every(&room, 64, Duration::from_millis(5)));
        let budget = b.config.kv_cache_bytes;
        let stats = Arc::clone(&b.stats);
        let (jobs, rx) = std::sync::mpsc::channel();
        let engine = std::thread::spawn(move || b.run(rx));
        let ask = |first: u32| ask_engine(&stats, &jobs, first);
        assert_eq!(ask(1).tokens.len(), 20);
        let wait_for = |what: &str, done: &dyn Fn() -> bool| {
            let start = Instant::now();
            while !done() {
                assert!(start.elapsed() < Duration::from_secs(10), "{what}");
                std::thread::sleep(Duration::from_millis(1));
            }
        };
        wait_for("the idle cache published", &|| {
            stats.kv_idle_bytes.load(Ordering::Relaxed) == 128
        });
        assert_eq!(stats.kv_limit_bytes.load(Ordering::Relaxed), budget);
        // Others take all the memory: the idle cache goes, no request in sight.
        room.store(0, Ordering::Relaxed);
        wait_for("the idle cache dropped", &|| {
            stats.kv_idle_bytes.load(Ordering::Relaxed) == 0
                && stats.kv_dropped.load(Ordering::Relaxed) == 1
        });
        assert!(stats.kv_limit_bytes.load(Ordering::Relaxed) < 128);
        // Freed again: the whole budget, and requests are served.
        room.store(1 << 40, Ordering::Relaxed);
        wait_for("the whole budget again", &|| {
            stats.kv_limit_bytes.load(Ordering::Relaxed) == budget
        });
        assert_eq!(ask(2).tokens.len(), 20);
        drop(jobs);
        engine.join().expect("engine thread");
    }

    /// Without prefix reuse only an idle cache's memory is worth anything: the next
    /// sequence that fits takes it as it is, however much room the budget has.
    #[test]
    fn without_prefix_reuse_an_idle_cache_serves_the_next_sequence_that_fits() {
        let mut b = batcher_with(Echo::default(), 4, 256, |c| c.prefix_reuse = false);
        let (first, _f) = job(1.0, 2, 50, 10, 60.0);
        submit(&mut b, first);
        b.admit();
        run_out(&mut b);
        let (next, _n) = job(1.0, 2, 40, 10, 60.0);
        submit(&mut b, next);
        b.admit();
        assert_eq!(b.running[0].job.sequence.prompt_left(), 40);
        let s = b.pool.stats();
        assert_eq!((s.allocated, s.reused, s.idle_caches), (1, 1, 0));
    }

    #[test]
    fn a_short_lower_request_joins_when_the_validator_has_time() {
        let mut b = batcher(4, 256);
        let (validator, _v) = job(10.0, 1, 4, 100, 11.0);
        submit(&mut b, validator);
        b.admit();
        let (low, _l) = job(1.0, 2, 30, 10, 60.0);
        submit(&mut b, low);
        b.admit();
        assert_eq!(b.running.len(), 2);
        assert_eq!(b.stats.held_back.load(Ordering::Relaxed), 0);
    }

    #[test]
    fn lower_sequences_are_preempted_latest_first_and_told_so() {
        let mut b = batcher(8, 256);
        let mut lows = Vec::new();
        for first in 2..=4 {
            let (low, rx) = job(1.0, first, 4, 200, 60.0);
            submit(&mut b, low);
            lows.push(rx);
        }
        b.admit();
        // The validator, admitted after them (the pipeline gave it a slot), has 100 steps
        // to run in 6.65 s: at four rows (65 ms a step) or three (60 ms) it is projected
        // later than half the 2 s headroom before its deadline, at two rows (55 ms) not.
        let (validator, mut v) = job(10.0, 1, 4, 100, 6.65);
        submit(&mut b, validator);
        b.admit();
        assert_eq!(b.running.len(), 4);
        b.guard_deadlines();
        let preempted: Vec<usize> = (0..b.running.len())
            .filter(|&i| b.running[i].job.sequence.finished() == Some(FinishReason::Preempted))
            .collect();
        assert_eq!(preempted, vec![1, 2], "the two latest lows");
        assert_eq!(b.stats.preempted.load(Ordering::Relaxed), 2);
        b.step();
        b.retire();
        assert_eq!(b.running.len(), 2);
        for rx in &mut lows[1..] {
            assert_eq!(done(rx).finish, FinishReason::Preempted);
        }
        while let Ok(event) = lows[0].try_recv() {
            assert!(matches!(event, Event::Text(..)), "the first low runs on");
        }
        assert!(v.try_recv().is_ok(), "the validator ran a step");
        assert_eq!(b.stats.cancelled.load(Ordering::Relaxed), 0);
    }

    #[test]
    fn the_highest_priority_prompt_runs_first() {
        let mut b = batcher(4, 64);
        b.guard = None;
        let (low, _l) = job(1.0, 2, 64, 4, 60.0);
        let (high, _h) = job(10.0, 1, 64, 4, 60.0);
        submit(&mut b, low);
        b.admit();
        submit(&mut b, high);
        b.admit();
        b.step();
        b.step();
        let steps = b.model.steps.lock().expect("steps").clone();
        // One 64-token piece fits a step: the high one's first, though admitted later.
        assert_eq!(steps[0], vec![1]);
        // Then the low one's, in the pass of the high one's decode row (segments in
        // admission order).
        assert_eq!(steps[1], vec![2, 500]);
    }

    /// Where rows depend on what shares their pass, the step's prompt pieces that the model
    /// allows (at least `min_rows` tokens, at most `max_pieces` of them) share one pass
    /// after the decode rows' own; shorter or surplus pieces run alone; with
    /// --btlm.piggyback_prefill false every piece runs alone.
    #[test]
    fn long_prompt_pieces_share_a_pass_where_rows_are_not_independent() {
        for piggyback_prefill in [true, false] {
            let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/btlm-tiny");
            let tokenizer = Arc::new(BtlmTokenizer::from_dir(&dir).expect("tiny tokenizer"));
            let config = EngineConfig {
                max_batch: 8,
                prefill_tokens_per_step: 1000,
                piggyback_prefill,
                deadline_headroom: None,
                ..EngineConfig::default()
            };
            let model = Echo {
                dependent_rows: true,
                shared: Some((4, 2)),
                ..Echo::default()
            };
            let mut b = Batcher::new(model, tokenizer, config, Arc::default()).expect("batcher");
            // A decoding sequence, then prompts of 10, 3, 6 and 8 tokens: the first two
            // long enough share a pass, the short one and the surplus one run alone.
            let (dec, _d) = job(1.0, 9, 1, 4, 60.0);
            submit(&mut b, dec);
            b.admit();
            b.step();
            let mut rx = Vec::new();
            for (first, len) in [(1, 10), (3, 3), (2, 6), (4, 8)] {
                let (j, r) = job(1.0, first, len, 4, 60.0);
                rx.push(r);
                submit(&mut b, j);
                b.admit();
            }
            b.step();
            let steps = b.model.steps.lock().expect("steps").clone();
            let second: Vec<Vec<u32>> = steps[1..].to_vec();
            let want = if piggyback_prefill {
                vec![vec![500], vec![1, 2], vec![3], vec![4]]
            } else {
                vec![vec![500], vec![1], vec![3], vec![2], vec![4]]
            };
            assert_eq!(second, want, "piggyback_prefill {piggyback_prefill}");
        }
    }
}
