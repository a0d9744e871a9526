//! The path every verified request takes: blacklist → priority queue → backend, under the
//! request's deadline.

use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use tokio::time::Instant;

use crate::blacklist::{IdentityPolicy, IdentityVerdict, Refusal};
use crate::bounded_stream::BoundedStream;
use crate::config::{ConfigError, MinerConfig};
use crate::metagraph::MetagraphView;
use crate::priority::priority;
use crate::prompt_cache::PromptCache;
use crate::request::{PromptRequest, Protocol};
use crate::request_history::RequestHistory;
use crate::scheduler::{Policy, Rejection, Scheduler, Slot};
use crate::stats::{Counters, Outcome, PipelineStats, QueueRefusal, RequestTracker};
use crate::traits::{Miner, MinerError, TextStream};

/// Decides who is served and in which order, and runs the backend under each request's
/// deadline. Cheap to clone: clones share the queue, caches and counters.
///
/// ```
/// # use std::{sync::Arc, time::Duration};
/// # use async_trait::async_trait;
/// # use prompting_miner::*;
/// # struct Echo;
/// # #[async_trait]
/// # impl Miner for Echo {
/// #     fn name(&self) -> &str { "echo" }
/// #     async fn prompt(&self, r: &PromptRequest) -> Result<String, MinerError> {
/// #         Ok(r.messages.concat())
/// #     }
/// # }
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let validator = NeuronInfo {
///     uid: 0,
///     hotkey: "5Validator".into(),
///     coldkey: String::new(),
///     stake: 5000.0,
///     validator_permit: true,
///     axon: None,
///     ..NeuronInfo::default()
/// };
/// let metagraph = Arc::new(SharedMetagraph::new(Metagraph::new(1, 100, vec![validator])));
/// let pipeline = Pipeline::new(MinerConfig::default(), metagraph, Arc::new(Echo))?;
///
/// let ask = |caller: &str| {
///     PromptRequest::new(vec!["user".into()], vec!["hi".into()], caller, Protocol::Legacy,
///                        Duration::from_secs(12))
/// };
/// assert_eq!(pipeline.prompt(ask("5Validator")).await?, "hi");
/// assert_eq!(
///     pipeline.prompt(ask("5Stranger")).await,
///     Err(MinerError::Blacklisted("hotkey not registered".into()))
/// );
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct Pipeline {
    inner: Arc<Inner>,
}

struct Inner {
    config: MinerConfig,
    metagraph: Arc<dyn MetagraphView>,
    miner: Arc<dyn Miner>,
    identity: IdentityPolicy,
    rate_window: Duration,
    history: Mutex<RequestHistory>,
    prompt_cache: Option<Mutex<PromptCache>>,
    scheduler: Arc<Scheduler>,
    counters: Arc<Counters>,
    /// `--miner.answer_margin_ms`, when answers are cut short by it: it is not 0 and the
    /// backend streams as it generates.
    answer_margin: Option<Duration>,
}

impl std::fmt::Debug for Pipeline {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pipeline")
            .field("miner", &self.inner.miner.name())
            .field("config", &self.inner.config)
            .finish_non_exhaustive()
    }
}

const MINUTE: Duration = Duration::from_secs(60);

impl Pipeline {
    /// A pipeline for `miner`, judging callers by `metagraph`. Fails when `config` does not
    /// validate ([`MinerConfig::validate`]).
    pub fn new(
        config: MinerConfig,
        metagraph: Arc<dyn MetagraphView>,
        miner: Arc<dyn Miner>,
    ) -> Result<Pipeline, ConfigError> {
        config.validate()?;
        let b = &config.blacklist;
        if !b.force_validator_permit {
            tracing::warn!(
                "serving callers without a validator permit \
                 (--miner.blacklist.force_validator_permit is off)"
            );
        }
        if b.allow_non_registered {
            tracing::warn!(
                "serving hotkeys not registered on the subnet \
                 (--miner.blacklist.allow_non_registered is on): a security risk"
            );
        }
        let p = &config.priority;
        let history = RequestHistory::new(
            p.len_request_timestamps,
            b.max_tracked_hotkeys,
            MINUTE.saturating_mul(u32::try_from(p.history_retention).unwrap_or(u32::MAX)),
        );
        let rate_window =
            MINUTE.saturating_mul(u32::try_from(b.min_request_period).unwrap_or(u32::MAX));
        let workers = match miner.capacity() {
            Some(capacity) if capacity < config.max_concurrent => {
                tracing::info!(
                    max_concurrent = config.max_concurrent,
                    capacity,
                    backend = miner.name(),
                    "the backend runs {capacity} requests at once: the priority queue grants \
                     {capacity} worker slots"
                );
                capacity.max(1)
            }
            _ => config.max_concurrent,
        };
        let answer_margin = Some(Duration::from_millis(config.answer_margin_ms))
            .filter(|margin| !margin.is_zero() && miner.streams_as_generated());
        let policy = Policy {
            preempt: p.preempt.then_some(p.preempt_margin),
            answer_margin,
            ..config.admission.policy()
        };
        let prompt_cache = b.use_prompt_cache.then(|| {
            Mutex::new(PromptCache::new(
                b.prompt_cache_block_span,
                b.prompt_cache_size,
            ))
        });
        Ok(Pipeline {
            inner: Arc::new(Inner {
                identity: IdentityPolicy::new(b),
                rate_window,
                history: Mutex::new(history),
                prompt_cache,
                scheduler: Scheduler::with_policy(workers, config.max_queue, policy),
                counters: Arc::new(Counters::default()),
                answer_margin,
                config,
                metagraph,
                miner,
            }),
        })
    }

    /// The backend.
    pub fn miner(&self) -> &Arc<dyn Miner> {
        &self.inner.miner
    }

    /// What the metagraph knows of `hotkey` now; `None` when it is not registered.
    pub fn caller(&self, hotkey: &str) -> Option<crate::metagraph::CallerInfo> {
        self.inner.metagraph.caller(hotkey)
    }

    /// Whether `hotkey` is in `--miner.blacklist.whitelist`.
    pub fn is_whitelisted(&self, hotkey: &str) -> bool {
        self.inner.identity.is_whitelisted(hotkey)
    }

    /// Blacklist steps 1–5 alone (whitelist, blacklist, registration, validator permit,
    /// minimum stake): whether `hotkey` is refused whatever it signs. They read only the
    /// metagraph and the flags, so a transport asks before it verifies the caller's
    /// signature: a key refused anyway then costs no verification and takes no room in the
    /// replay tables. A refusal is counted like one from [`Pipeline::prompt`] (outcome
    /// [`MinerError::Blacklisted`], its [`RefusalKind`](crate::RefusalKind)); a key that
    /// passes is judged again, with the rate limit and the prompt cache, once verified.
    pub fn check_identity(&self, hotkey: &str, protocol: Protocol) -> Result<(), MinerError> {
        let inner = &*self.inner;
        let caller = inner.metagraph.caller(hotkey);
        match inner.identity.check(hotkey, caller.as_ref()) {
            IdentityVerdict::Refused(refusal) => {
                inner.counters.count_outcome(Outcome::Blacklisted);
                Err(self.refused(hotkey, protocol, &refusal))
            }
            IdentityVerdict::Whitelisted | IdentityVerdict::Passed => Ok(()),
        }
    }

    /// Logs and counts a blacklist refusal; the error the caller gets.
    fn refused(&self, hotkey: &str, protocol: Protocol, refusal: &Refusal) -> MinerError {
        tracing::debug!(
            caller = %hotkey,
            protocol = %protocol,
            reason = %refusal,
            "request blacklisted"
        );
        self.inner.counters.count_refusal(refusal.kind());
        MinerError::Blacklisted(refusal.to_string())
    }

    /// The settings in force.
    pub fn config(&self) -> &MinerConfig {
        &self.inner.config
    }

    /// Runs `request` through the blacklist and the priority queue, then the backend; past
    /// the request's deadline the work is cancelled and the answer is
    /// [`MinerError::Timeout`].
    ///
    /// A backend that streams as it generates ([`Miner::streams_as_generated`]) runs
    /// through its stream here too, so that a request still running
    /// `--miner.answer_margin_ms` before its deadline is answered with the text so far
    /// (see [`Pipeline::prompt_stream`]).
    pub async fn prompt(&self, mut request: PromptRequest) -> Result<String, MinerError> {
        if self.cutoff(request.deadline).is_some() {
            use futures::StreamExt;
            let mut stream = self.prompt_stream(request).await?;
            let mut completion = String::new();
            while let Some(chunk) = stream.next().await {
                completion.push_str(&chunk?);
            }
            return Ok(completion);
        }
        let tracker = RequestTracker::new(&self.inner.counters, &request.report);
        let result = self.run_prompt(&mut request, &tracker).await;
        tracker.finish(Outcome::of(&result));
        result
    }

    async fn run_prompt(
        &self,
        request: &mut PromptRequest,
        tracker: &RequestTracker,
    ) -> Result<String, MinerError> {
        let mut slot = self.enter(request, tracker).await?;
        let call = tokio::time::timeout_at(request.deadline, self.inner.miner.prompt(request));
        let result = tokio::select! {
            biased;
            result = call => result,
            // The backend call is dropped here, before the slot is given back.
            () = slot.preempted() => return Err(MinerError::Preempted),
        };
        match &result {
            // Answered, or cut off at the deadline: a service-time sample.
            Ok(Ok(_)) => slot.finish(),
            Err(_) => slot.cut_off(),
            Ok(Err(_)) => drop(slot),
        }
        result.map_err(|_| tracker.timeout())?
    }

    /// Like [`Pipeline::prompt`], streaming. The worker slot is held until the stream ends
    /// or is dropped; the deadline bounds the whole stream (past it, the stream yields one
    /// [`MinerError::Timeout`] and ends).
    ///
    /// The stream is returned only once the backend produced its first non-empty chunk (or
    /// ended without text): a failure before that is this call's error, so every transport
    /// can still answer it with an error status instead of a success that breaks off.
    ///
    /// From `--miner.answer_margin_ms` before the deadline, a backend that streams as it
    /// generates ([`Miner::streams_as_generated`]) is stopped once it has yielded some
    /// text, and the stream ends there without error: the caller gets a shorter answer in
    /// time rather than none ([`PipelineStats::truncated`] counts them). Such a stream
    /// preempted after some text ends the same way.
    pub async fn prompt_stream(
        &self,
        mut request: PromptRequest,
    ) -> Result<TextStream, MinerError> {
        let tracker = RequestTracker::new(&self.inner.counters, &request.report);
        let started = match self.enter(&mut request, &tracker).await {
            Ok(mut slot) => {
                let call = first_chunk(self.inner.miner.prompt_stream(&request));
                let call = tokio::time::timeout_at(request.deadline, call);
                let result = tokio::select! {
                    biased;
                    result = call => Some(result),
                    () = slot.preempted() => None,
                };
                match result {
                    None => Err(MinerError::Preempted),
                    Some(Ok(Ok(stream))) => {
                        slot.first_chunk_arrived();
                        Ok((stream, slot))
                    }
                    Some(Ok(Err(error))) => Err(error),
                    Some(Err(_)) => {
                        slot.cut_off();
                        Err(tracker.timeout())
                    }
                }
            }
            Err(error) => Err(error),
        };
        match started {
            Ok((stream, slot)) => Ok(Box::pin(BoundedStream::new(
                stream,
                request.deadline,
                self.cutoff(request.deadline),
                slot,
                tracker,
            ))),
            Err(error) => {
                tracker.finish(Outcome::of::<()>(&Err(error.clone())));
                Err(error)
            }
        }
    }

    /// When a request with `deadline` is answered with the text so far
    /// (`--miner.answer_margin_ms` before it), if it is: the margin is not 0 and the backend
    /// streams as it generates.
    fn cutoff(&self, deadline: Instant) -> Option<Instant> {
        let margin = self.inner.answer_margin?;
        Some(deadline.checked_sub(margin).unwrap_or_else(Instant::now))
    }

    /// The current load and counters.
    pub fn stats(&self) -> PipelineStats {
        let load = self.inner.scheduler.load();
        PipelineStats {
            queue_depth: load.queued,
            queue_capacity: self.inner.scheduler.queue_capacity(),
            in_flight: load.in_flight,
            capacity: self.inner.scheduler.workers(),
            outcomes: self.inner.counters.outcomes(),
            refusals: self.inner.counters.refusals(),
            tracked_hotkeys: self.inner.history.lock().tracked_hotkeys(),
            prompt_cache_entries: self
                .inner
                .prompt_cache
                .as_ref()
                .map_or(0, |cache| cache.lock().len()),
            usage: self.inner.counters.usage(),
            service_time: self.inner.scheduler.service_time(),
            first_chunk_time: self.inner.scheduler.first_chunk_time(),
            service_time_samples: self.inner.scheduler.service_samples(),
            queue_refusals: self.inner.counters.queue_refusals(),
            queue_wait: self.inner.counters.queue_wait(),
            preemptions: self.inner.scheduler.preemptions(),
            preemptions_called_off: self.inner.scheduler.preemptions_called_off(),
            truncated: self.inner.counters.truncated(),
        }
    }

    /// Admits the request, sets its [`priority`](PromptRequest::priority) and waits for a
    /// worker slot.
    async fn enter(
        &self,
        request: &mut PromptRequest,
        tracker: &RequestTracker,
    ) -> Result<Slot, MinerError> {
        let priority = self
            .admit(request)
            .map_err(|refusal| self.refused(&request.caller, request.protocol, &refusal))?;
        tracing::trace!(caller = %request.caller, priority, "request admitted");
        request.priority = Some(priority);
        let queued = Instant::now();
        let rejection = match self
            .inner
            .scheduler
            .acquire(priority, request.deadline)
            .await
        {
            Ok(slot) => {
                self.inner.counters.observe_queue_wait(queued.elapsed());
                return Ok(slot);
            }
            Err(rejection) => rejection,
        };
        let (reason, error) = match rejection {
            Rejection::QueueFull => (
                QueueRefusal::QueueFull,
                MinerError::Overloaded("request queue full, lower priority".into()),
            ),
            Rejection::Shed => (
                QueueRefusal::Shed,
                MinerError::Overloaded(
                    "request queue full, shed for a better-ranked request".into(),
                ),
            ),
            Rejection::CannotFinishOnArrival { left, need } => (
                QueueRefusal::CannotFinishOnArrival,
                cannot_finish(left, need),
            ),
            Rejection::CannotFinishWhileWaiting { left, need } => (
                QueueRefusal::CannotFinishWhileWaiting,
                cannot_finish(left, need),
            ),
            Rejection::Expired => (QueueRefusal::DeadlinePassed, tracker.timeout()),
        };
        self.inner.counters.count_queue_refusal(reason);
        Err(error)
    }

    /// Blacklist steps 1–7, in order; on success, the request's priority.
    fn admit(&self, request: &PromptRequest) -> Result<f64, Refusal> {
        let inner = &*self.inner;
        let hotkey = request.caller.as_str();
        let caller = inner.metagraph.caller(hotkey);
        let whitelisted = match inner.identity.check(hotkey, caller.as_ref()) {
            IdentityVerdict::Refused(refusal) => return Err(refusal),
            IdentityVerdict::Whitelisted => true,
            IdentityVerdict::Passed => false,
        };
        let now = Instant::now();
        let priority = {
            let mut history = inner.history.lock();
            if !whitelisted && history.exceeds_rate(hotkey, now, inner.rate_window) {
                return Err(Refusal::RateLimited {
                    hotkey: hotkey.to_string(),
                    requests: inner.config.priority.len_request_timestamps,
                    minutes: inner.config.blacklist.min_request_period,
                });
            }
            let quiet_period = history.quiet_period(hotkey, now);
            history.record(hotkey, now);
            priority(&inner.config.priority, caller.as_ref(), quiet_period)
        };
        if let Some(cache) = &inner.prompt_cache {
            let block = inner.metagraph.block();
            if cache.lock().seen_recently(&request.messages, block) {
                return Err(Refusal::PromptSentRecently {
                    block_span: inner.config.blacklist.prompt_cache_block_span,
                });
            }
        }
        Ok(priority)
    }
}

/// The error for a request that could not be answered before its deadline.
fn cannot_finish(left: Duration, need: Duration) -> MinerError {
    MinerError::Overloaded(format!(
        "cannot answer before the deadline: {:.1} s left, about {:.1} s needed",
        left.as_secs_f64(),
        need.as_secs_f64()
    ))
}

/// Waits for the first non-empty chunk of the stream `started` resolves to; returns the
/// stream again, starting with that chunk (or empty when the backend ended without text).
/// An error before the first chunk is returned as the error.
async fn first_chunk(
    started: impl std::future::Future<Output = Result<TextStream, MinerError>>,
) -> Result<TextStream, MinerError> {
    use futures::StreamExt;
    let mut stream = started.await?;
    loop {
        match stream.next().await {
            Some(Ok(chunk)) if chunk.is_empty() => continue,
            Some(Ok(chunk)) => {
                let first = futures::stream::once(async move { Ok(chunk) });
                return Ok(Box::pin(first.chain(stream)));
            }
            Some(Err(error)) => return Err(error),
            None => return Ok(Box::pin(futures::stream::empty())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metagraph::{Metagraph, NeuronInfo, SharedMetagraph};
    use crate::request::Protocol;
    use async_trait::async_trait;
    use futures::StreamExt;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use tokio::sync::Semaphore;

    const TIMEOUT: Duration = Duration::from_secs(60);

    /// A backend whose calls wait for a permit of `gate` (one per answer or chunk) and that
    /// records which calls started, finished, or were cancelled mid-way.
    struct GatedMiner {
        gate: Arc<Semaphore>,
        capacity: Option<usize>,
        started: parking_lot::Mutex<Vec<String>>,
        /// The priority of each call, in call order.
        priorities: parking_lot::Mutex<Vec<Option<f64>>>,
        finished: AtomicUsize,
        cancelled: Arc<AtomicUsize>,
    }

    impl Default for GatedMiner {
        fn default() -> Self {
            GatedMiner {
                gate: Arc::new(Semaphore::new(0)),
                capacity: None,
                started: parking_lot::Mutex::new(Vec::new()),
                priorities: parking_lot::Mutex::new(Vec::new()),
                finished: AtomicUsize::new(0),
                cancelled: Arc::new(AtomicUsize::new(0)),
            }
        }
    }

    /// Counts a cancellation when dropped armed.
    struct CancelWitness(Arc<AtomicUsize>, bool);

    impl Drop for CancelWitness {
        fn drop(&mut self) {
            if self.1 {
                self.0.fetch_add(1, Ordering::SeqCst);
            }
        }
    }

    #[async_trait]
    impl Miner for GatedMiner {
        fn name(&self) -> &str {
            "gated"
        }

        fn capacity(&self) -> Option<usize> {
            self.capacity
        }

        async fn prompt(&self, request: &PromptRequest) -> Result<String, MinerError> {
            let label = request.messages.join(" ");
            self.started.lock().push(label.clone());
            self.priorities.lock().push(request.priority);
            let mut witness = CancelWitness(Arc::clone(&self.cancelled), true);
            let permit = self
                .gate
                .acquire()
                .await
                .map_err(|_| MinerError::Backend("gate closed".into()))?;
            permit.forget();
            witness.1 = false;
            self.finished.fetch_add(1, Ordering::SeqCst);
            Ok(format!("answer to {label}"))
        }

        async fn prompt_stream(&self, request: &PromptRequest) -> Result<TextStream, MinerError> {
            self.started.lock().push(request.messages.join(" "));
            self.priorities.lock().push(request.priority);
            let gate = Arc::clone(&self.gate);
            Ok(Box::pin(futures::stream::unfold(0, move |i| {
                let gate = Arc::clone(&gate);
                async move {
                    if i == 3 {
                        return None;
                    }
                    gate.acquire().await.ok()?.forget();
                    Some((Ok(format!("chunk{i}")), i + 1))
                }
            })))
        }
    }

    fn neuron(uid: u16, hotkey: &str, stake: f64, validator_permit: bool) -> NeuronInfo {
        NeuronInfo {
            uid,
            hotkey: hotkey.into(),
            coldkey: String::new(),
            stake,
            validator_permit,
            axon: None,
            ..NeuronInfo::default()
        }
    }

    fn subnet(block: u64) -> Metagraph {
        Metagraph::new(
            1,
            block,
            vec![
                neuron(0, "low", 1.0, true),
                neuron(1, "mid", 50.0, true),
                neuron(2, "high", 1000.0, true),
                neuron(3, "filler", 10.0, true),
                neuron(4, "miner", 0.5, false),
            ],
        )
    }

    struct Fixture {
        pipeline: Pipeline,
        miner: Arc<GatedMiner>,
        metagraph: Arc<SharedMetagraph>,
    }

    fn fixture(edit: impl FnOnce(&mut MinerConfig)) -> Fixture {
        fixture_with(GatedMiner::default(), edit)
    }

    fn fixture_with(miner: GatedMiner, edit: impl FnOnce(&mut MinerConfig)) -> Fixture {
        let mut config = MinerConfig::default();
        edit(&mut config);
        let miner = Arc::new(miner);
        let metagraph = Arc::new(SharedMetagraph::new(subnet(100)));
        let pipeline = Pipeline::new(
            config,
            Arc::clone(&metagraph) as Arc<dyn MetagraphView>,
            Arc::clone(&miner) as Arc<dyn Miner>,
        )
        .expect("valid config");
        Fixture {
            pipeline,
            miner,
            metagraph,
        }
    }

    fn request(caller: &str, message: &str) -> PromptRequest {
        PromptRequest::new(
            vec!["user".into()],
            vec![message.into()],
            caller,
            Protocol::Legacy,
            TIMEOUT,
        )
    }

    /// Lets spawned tasks run without letting the paused clock advance.
    async fn settle() {
        for _ in 0..20 {
            tokio::task::yield_now().await;
        }
    }

    fn spawn_prompt(
        pipeline: &Pipeline,
        request: PromptRequest,
    ) -> tokio::task::JoinHandle<Result<String, MinerError>> {
        let pipeline = pipeline.clone();
        tokio::spawn(async move { pipeline.prompt(request).await })
    }

    fn blacklisted(reason: &str) -> Result<String, MinerError> {
        Err(MinerError::Blacklisted(reason.into()))
    }

    #[tokio::test(start_paused = true)]
    async fn serves_registered_callers_and_refuses_strangers() {
        let f = fixture(|_| {});
        f.miner.gate.add_permits(1);
        assert_eq!(
            f.pipeline.prompt(request("low", "hi")).await,
            Ok("answer to hi".into())
        );
        assert_eq!(
            f.pipeline.prompt(request("stranger", "hi")).await,
            blacklisted("hotkey not registered")
        );
        let stats = f.pipeline.stats();
        assert_eq!(stats.outcomes[&Outcome::Served], 1);
        assert_eq!(stats.outcomes[&Outcome::Blacklisted], 1);
        assert_eq!(stats.refusals[&crate::RefusalKind::NotRegistered], 1);
        assert_eq!(
            (stats.in_flight, stats.queue_depth, stats.capacity),
            (0, 0, 8)
        );
        assert_eq!(
            f.miner.started.lock().len(),
            1,
            "refused requests never run"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn minimum_stake_is_enforced() {
        let f = fixture(|c| c.blacklist.minimum_stake_requirement = 10.0);
        assert_eq!(
            f.pipeline.prompt(request("low", "hi")).await,
            blacklisted("stake 1 α below minimum 10 α")
        );
        f.miner.gate.add_permits(1);
        assert!(f.pipeline.prompt(request("filler", "hi")).await.is_ok());
    }

    #[tokio::test(start_paused = true)]
    async fn validator_permit_when_forced() {
        let f = fixture(|c| c.blacklist.force_validator_permit = true);
        assert_eq!(
            f.pipeline.prompt(request("miner", "hi")).await,
            blacklisted("validator permit required")
        );
        let f = fixture(|c| {
            c.blacklist.force_validator_permit = true;
            c.blacklist.allow_non_registered = true;
        });
        assert_eq!(
            f.pipeline.prompt(request("stranger", "hi")).await,
            blacklisted("validator permit required, but hotkey not registered")
        );
    }

    #[tokio::test(start_paused = true)]
    async fn identity_alone_refuses_strangers_and_spends_nothing() {
        let f = fixture(|c| {
            c.priority.len_request_timestamps = 1;
            c.blacklist.min_request_period = 1;
            c.blacklist.whitelist = vec!["wl".into()];
            c.blacklist.minimum_stake_requirement = 0.5;
        });
        assert_eq!(
            f.pipeline.check_identity("stranger", Protocol::Legacy),
            Err(MinerError::Blacklisted("hotkey not registered".into()))
        );
        // Whitelisted (unregistered) and registered keys pass, as often as they are asked:
        // the rate limit is not spent, the one request the window allows still runs.
        for _ in 0..3 {
            assert_eq!(f.pipeline.check_identity("wl", Protocol::BtAuth), Ok(()));
            assert_eq!(f.pipeline.check_identity("low", Protocol::Grpc), Ok(()));
        }
        f.miner.gate.add_permits(1);
        assert!(f.pipeline.prompt(request("low", "hi")).await.is_ok());
        let stats = f.pipeline.stats();
        assert_eq!(stats.outcomes[&Outcome::Blacklisted], 1);
        assert_eq!(stats.outcomes[&Outcome::Served], 1);
        assert_eq!(stats.refusals[&crate::RefusalKind::NotRegistered], 1);
        assert_eq!(stats.refusals[&crate::RefusalKind::RateLimited], 0);
        assert_eq!(f.miner.started.lock().len(), 1, "only the one prompt ran");
    }

    #[tokio::test(start_paused = true)]
    async fn rate_limit_counts_accepted_requests_per_window() {
        let f = fixture(|c| {
            c.priority.len_request_timestamps = 3;
            c.blacklist.min_request_period = 1;
            c.blacklist.whitelist = vec!["wl".into()];
        });
        f.miner.gate.add_permits(100);
        for i in 0..3 {
            assert!(
                f.pipeline
                    .prompt(request("low", &format!("{i}")))
                    .await
                    .is_ok()
            );
        }
        assert_eq!(
            f.pipeline.prompt(request("low", "3")).await,
            blacklisted("low request frequency exceeded 3 requests in 1 minutes.")
        );
        // Refused requests do not count: once the window has passed, the caller is back.
        tokio::time::advance(Duration::from_secs(60)).await;
        assert!(f.pipeline.prompt(request("low", "4")).await.is_ok());
        // Whitelisted hotkeys (even unregistered) skip the limit.
        for i in 0..10 {
            assert!(
                f.pipeline
                    .prompt(request("wl", &format!("{i}")))
                    .await
                    .is_ok()
            );
        }
        assert_eq!(
            f.pipeline.stats().refusals[&crate::RefusalKind::RateLimited],
            1
        );
    }

    #[tokio::test(start_paused = true)]
    async fn prompt_cache_refuses_repeats_within_the_span_only() {
        let f = fixture(|c| {
            c.blacklist.use_prompt_cache = true;
            c.blacklist.prompt_cache_block_span = 10;
            c.blacklist.whitelist = vec!["wl".into()];
        });
        f.miner.gate.add_permits(100);
        // Unlike the Python miner, a fresh prompt is served when the cache is on.
        assert!(f.pipeline.prompt(request("low", "same")).await.is_ok());
        assert!(f.pipeline.prompt(request("low", "other")).await.is_ok());
        let repeat = blacklisted("Blacklisted: Prompt sent recently in last 10 blocks.");
        assert_eq!(f.pipeline.prompt(request("high", "same")).await, repeat);
        // The cache applies to whitelisted callers too.
        assert_eq!(f.pipeline.prompt(request("wl", "same")).await, repeat);
        f.metagraph.store(subnet(110));
        assert_eq!(f.pipeline.prompt(request("low", "same")).await, repeat);
        // The refreshed metagraph's block expires the entry.
        f.metagraph.store(subnet(111));
        assert!(f.pipeline.prompt(request("low", "same")).await.is_ok());
        // "other" expired with it; only the fresh sighting remains.
        assert_eq!(f.pipeline.stats().prompt_cache_entries, 1);
    }

    #[tokio::test(start_paused = true)]
    async fn prompt_cache_is_bounded() {
        let f = fixture(|c| {
            c.blacklist.use_prompt_cache = true;
            c.blacklist.prompt_cache_size = 2;
        });
        f.miner.gate.add_permits(100);
        for message in ["a", "b", "c"] {
            assert!(f.pipeline.prompt(request("high", message)).await.is_ok());
        }
        assert_eq!(f.pipeline.stats().prompt_cache_entries, 2);
        assert!(
            f.pipeline.prompt(request("high", "a")).await.is_ok(),
            "the oldest prompt was evicted"
        );
    }

    /// Gives each of `callers` one served request, so their next ones are ranked by stake
    /// (a hotkey's first request gets the default priority, as in the Python miner).
    async fn warm_up(f: &Fixture, callers: &[&str]) {
        f.miner.gate.add_permits(callers.len());
        for caller in callers {
            assert!(f.pipeline.prompt(request(caller, "warm-up")).await.is_ok());
        }
        f.miner.started.lock().clear();
    }

    #[tokio::test(start_paused = true)]
    async fn high_stake_requests_overtake_queued_ones() {
        // Queue order without preemption (with it, "high-1" would take the filler's slot).
        let f = fixture(|c| {
            c.max_concurrent = 1;
            c.priority.preempt = false;
        });
        warm_up(&f, &["low", "mid", "high"]).await;
        // Saturate the only worker, then queue in the worst order.
        let filler = spawn_prompt(&f.pipeline, request("filler", "filler"));
        settle().await;
        let mut queued = Vec::new();
        for (caller, message) in [
            ("low", "low-1"),
            ("mid", "mid-1"),
            ("low", "low-2"),
            ("high", "high-1"),
        ] {
            queued.push(spawn_prompt(&f.pipeline, request(caller, message)));
            settle().await;
        }
        let stats = f.pipeline.stats();
        assert_eq!((stats.in_flight, stats.queue_depth), (1, 4));
        // Release the answers one by one.
        for _ in 0..5 {
            f.miner.gate.add_permits(1);
            settle().await;
        }
        assert!(filler.await.expect("joined").is_ok());
        for handle in queued {
            assert!(handle.await.expect("joined").is_ok());
        }
        assert_eq!(
            *f.miner.started.lock(),
            ["filler", "high-1", "mid-1", "low-1", "low-2"]
        );
    }

    #[tokio::test(start_paused = true)]
    async fn the_backend_is_told_each_requests_priority() {
        let f = fixture(|_| {});
        warm_up(&f, &["high"]).await;
        f.miner.priorities.lock().clear();
        f.miner.gate.add_permits(3);
        assert!(f.pipeline.prompt(request("high", "ranked")).await.is_ok());
        // A hotkey's first request: the default priority (--miner.priority.default).
        assert!(f.pipeline.prompt(request("low", "first")).await.is_ok());
        let stream = f
            .pipeline
            .prompt_stream(request("high", "streamed"))
            .await
            .expect("stream");
        drop(stream);
        assert_eq!(
            *f.miner.priorities.lock(),
            [Some(1000.0), Some(0.0), Some(1000.0)]
        );
        assert_eq!(request("high", "unranked").priority, None);
    }

    #[tokio::test(start_paused = true)]
    async fn backend_capacity_bounds_the_workers_and_keeps_priority_order() {
        let miner = GatedMiner {
            capacity: Some(2),
            ..GatedMiner::default()
        };
        // --miner.max_concurrent 8, but the backend runs 2 at once: the third request waits
        // in the priority queue, not in the backend.
        let f = fixture_with(miner, |c| {
            c.max_concurrent = 8;
            c.priority.preempt = false;
        });
        assert_eq!(f.pipeline.stats().capacity, 2);
        warm_up(&f, &["low", "mid", "high"]).await;
        let mut fillers = Vec::new();
        for message in ["filler-1", "filler-2"] {
            fillers.push(spawn_prompt(&f.pipeline, request("filler", message)));
            settle().await;
        }
        let mut queued = Vec::new();
        for (caller, message) in [("low", "low"), ("mid", "mid"), ("high", "high")] {
            queued.push(spawn_prompt(&f.pipeline, request(caller, message)));
            settle().await;
        }
        let stats = f.pipeline.stats();
        assert_eq!((stats.in_flight, stats.queue_depth), (2, 3));
        assert_eq!(f.miner.started.lock().len(), 2, "the backend saw only two");
        // Each answer frees one slot, which goes to the best waiting request.
        for _ in 0..5 {
            f.miner.gate.add_permits(1);
            settle().await;
        }
        for handle in fillers.into_iter().chain(queued) {
            assert!(handle.await.expect("joined").is_ok());
        }
        assert_eq!(
            *f.miner.started.lock(),
            ["filler-1", "filler-2", "high", "mid", "low"]
        );
        // A capacity above --miner.max_concurrent does not raise it.
        let roomy = GatedMiner {
            capacity: Some(64),
            ..GatedMiner::default()
        };
        let f = fixture_with(roomy, |c| c.max_concurrent = 3);
        assert_eq!(f.pipeline.stats().capacity, 3);
    }

    #[tokio::test(start_paused = true)]
    async fn full_queue_sheds_the_lowest_priority() {
        let f = fixture(|c| {
            c.max_concurrent = 1;
            c.max_queue = 2;
            c.priority.preempt = false;
        });
        warm_up(&f, &["low", "mid", "high"]).await;
        let filler = spawn_prompt(&f.pipeline, request("filler", "filler"));
        settle().await;
        let low = spawn_prompt(&f.pipeline, request("low", "low"));
        let mid = spawn_prompt(&f.pipeline, request("mid", "mid"));
        settle().await;
        // A newcomer ranking below every queued request is refused itself.
        let unknown = f
            .pipeline
            .prompt(request("miner", "first request, default priority"));
        assert!(matches!(unknown.await, Err(MinerError::Overloaded(_))));
        // A better one takes the place of the lowest.
        let high = spawn_prompt(&f.pipeline, request("high", "high"));
        settle().await;
        assert!(matches!(
            low.await.expect("joined"),
            Err(MinerError::Overloaded(_))
        ));
        f.miner.gate.add_permits(3);
        for handle in [filler, mid, high] {
            assert!(handle.await.expect("joined").is_ok());
        }
        assert_eq!(*f.miner.started.lock(), ["filler", "high", "mid"]);
        assert_eq!(f.pipeline.stats().outcomes[&Outcome::Overloaded], 2);
    }

    #[tokio::test(start_paused = true)]
    async fn deadline_passing_in_the_queue_times_out_and_never_runs() {
        let f = fixture(|c| c.max_concurrent = 1);
        let filler = spawn_prompt(&f.pipeline, request("filler", "filler"));
        settle().await;
        let mut short = request("high", "short");
        short.deadline = Instant::now() + Duration::from_secs(5);
        let result = f.pipeline.prompt(short).await;
        assert!(
            matches!(result, Err(MinerError::Timeout(s)) if s >= 5.0),
            "{result:?}"
        );
        f.miner.gate.add_permits(1);
        assert!(filler.await.expect("joined").is_ok());
        settle().await;
        assert_eq!(*f.miner.started.lock(), ["filler"]);
        assert_eq!(f.pipeline.stats().outcomes[&Outcome::TimedOut], 1);
    }

    #[tokio::test(start_paused = true)]
    async fn backend_past_the_deadline_is_cancelled() {
        let f = fixture(|c| c.max_concurrent = 1);
        let result = f.pipeline.prompt(request("high", "slow")).await;
        assert!(
            matches!(result, Err(MinerError::Timeout(s)) if s >= 60.0),
            "{result:?}"
        );
        assert_eq!(f.miner.cancelled.load(Ordering::SeqCst), 1);
        assert_eq!(f.miner.finished.load(Ordering::SeqCst), 0);
        // Its worker slot is free again.
        assert_eq!(f.pipeline.stats().in_flight, 0);
        f.miner.gate.add_permits(1);
        assert!(f.pipeline.prompt(request("high", "next")).await.is_ok());
    }

    #[tokio::test(start_paused = true)]
    async fn dropped_callers_free_their_queue_place_and_slot() {
        let f = fixture(|c| {
            c.max_concurrent = 1;
            c.max_queue = 1;
        });
        let running = spawn_prompt(&f.pipeline, request("filler", "running"));
        settle().await;
        let waiting = spawn_prompt(&f.pipeline, request("low", "waiting"));
        settle().await;
        assert_eq!(f.pipeline.stats().queue_depth, 1);
        waiting.abort();
        settle().await;
        assert_eq!(f.pipeline.stats().queue_depth, 0);
        running.abort();
        settle().await;
        let stats = f.pipeline.stats();
        assert_eq!((stats.in_flight, stats.queue_depth), (0, 0));
        assert_eq!(stats.outcomes[&Outcome::Cancelled], 2);
        assert_eq!(f.miner.cancelled.load(Ordering::SeqCst), 1);
        f.miner.gate.add_permits(1);
        assert!(f.pipeline.prompt(request("mid", "next")).await.is_ok());
        assert_eq!(*f.miner.started.lock(), ["running", "next"]);
    }

    #[tokio::test(start_paused = true)]
    async fn streaming_holds_the_slot_until_the_end() {
        let f = fixture(|c| c.max_concurrent = 1);
        // The stream is handed out once its first chunk is there.
        f.miner.gate.add_permits(1);
        let mut stream = f
            .pipeline
            .prompt_stream(request("high", "stream"))
            .await
            .expect("stream");
        let next = spawn_prompt(&f.pipeline, request("mid", "next"));
        settle().await;
        assert_eq!(
            f.pipeline.stats().queue_depth,
            1,
            "waits while the stream runs"
        );
        f.miner.gate.add_permits(1);
        assert_eq!(stream.next().await, Some(Ok("chunk0".into())));
        assert_eq!(stream.next().await, Some(Ok("chunk1".into())));
        settle().await;
        assert_eq!(*f.miner.started.lock(), ["stream"]);
        f.miner.gate.add_permits(1);
        assert_eq!(stream.next().await, Some(Ok("chunk2".into())));
        assert_eq!(stream.next().await, None);
        f.miner.gate.add_permits(1);
        assert!(next.await.expect("joined").is_ok());
        assert_eq!(f.pipeline.stats().outcomes[&Outcome::Served], 2);
    }

    #[tokio::test(start_paused = true)]
    async fn dropping_a_stream_frees_its_slot() {
        let f = fixture(|c| c.max_concurrent = 1);
        f.miner.gate.add_permits(1);
        let mut stream = f
            .pipeline
            .prompt_stream(request("high", "stream"))
            .await
            .expect("stream");
        assert_eq!(stream.next().await, Some(Ok("chunk0".into())));
        let next = spawn_prompt(&f.pipeline, request("mid", "next"));
        settle().await;
        assert_eq!(f.pipeline.stats().queue_depth, 1);
        drop(stream);
        f.miner.gate.add_permits(1);
        assert!(next.await.expect("joined").is_ok());
        assert_eq!(f.pipeline.stats().outcomes[&Outcome::Cancelled], 1);
    }

    #[tokio::test(start_paused = true)]
    async fn the_deadline_bounds_the_whole_stream() {
        let f = fixture(|c| c.max_concurrent = 1);
        f.miner.gate.add_permits(1);
        let mut stream = f
            .pipeline
            .prompt_stream(request("high", "stream"))
            .await
            .expect("stream");
        assert_eq!(stream.next().await, Some(Ok("chunk0".into())));
        // No more permits: the next chunk never comes, the deadline ends the stream.
        let timed_out = stream.next().await;
        assert!(matches!(timed_out, Some(Err(MinerError::Timeout(s))) if s >= 60.0));
        assert_eq!(stream.next().await, None);
        let stats = f.pipeline.stats();
        assert_eq!(stats.in_flight, 0);
        assert_eq!(stats.outcomes[&Outcome::TimedOut], 1);
    }

    /// A backend whose streams yield `items` (one stream per call).
    struct ScriptedStream(Vec<Result<String, MinerError>>);

    #[async_trait]
    impl Miner for ScriptedStream {
        fn name(&self) -> &str {
            "scripted"
        }

        async fn prompt(&self, _: &PromptRequest) -> Result<String, MinerError> {
            Err(MinerError::Backend("only streams".into()))
        }

        async fn prompt_stream(&self, _: &PromptRequest) -> Result<TextStream, MinerError> {
            Ok(Box::pin(futures::stream::iter(self.0.clone())))
        }
    }

    fn scripted(items: Vec<Result<String, MinerError>>) -> Pipeline {
        Pipeline::new(
            MinerConfig::default(),
            Arc::new(SharedMetagraph::new(subnet(100))),
            Arc::new(ScriptedStream(items)),
        )
        .expect("valid config")
    }

    #[tokio::test(start_paused = true)]
    async fn a_stream_failing_before_its_first_chunk_is_an_error_not_a_stream() {
        let broken = MinerError::Backend("the upstream stream broke off".into());
        let pipeline = scripted(vec![Ok(String::new()), Err(broken.clone())]);
        let result = pipeline.prompt_stream(request("high", "s")).await;
        assert_eq!(result.err(), Some(broken));
        let stats = pipeline.stats();
        assert_eq!(stats.outcomes[&Outcome::BackendError], 1);
        assert_eq!(stats.in_flight, 0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_stream_starts_with_its_first_non_empty_chunk() {
        let later = MinerError::Backend("midway".into());
        let pipeline = scripted(vec![
            Ok(String::new()),
            Ok("first".into()),
            Ok(String::new()),
            Err(later.clone()),
        ]);
        let stream = pipeline
            .prompt_stream(request("high", "s"))
            .await
            .expect("started");
        let items: Vec<_> = stream.collect().await;
        assert_eq!(
            items,
            vec![Ok("first".into()), Ok(String::new()), Err(later)]
        );
        // An answer without any text is an empty stream, not an error.
        let empty = scripted(vec![Ok(String::new())]);
        let stream = empty
            .prompt_stream(request("high", "s"))
            .await
            .expect("started");
        assert_eq!(stream.collect::<Vec<_>>().await, vec![]);
        assert_eq!(empty.stats().outcomes[&Outcome::Served], 1);
    }

    #[tokio::test(start_paused = true)]
    async fn a_stream_is_returned_only_once_its_first_chunk_arrived() {
        let f = fixture(|c| c.max_concurrent = 1);
        let pipeline = f.pipeline.clone();
        let started =
            tokio::spawn(async move { pipeline.prompt_stream(request("high", "stream")).await });
        settle().await;
        assert!(!started.is_finished(), "no chunk yet, no stream");
        f.miner.gate.add_permits(1);
        let mut stream = started.await.expect("joined").expect("stream");
        assert_eq!(stream.next().await, Some(Ok("chunk0".into())));
    }

    #[tokio::test(start_paused = true)]
    async fn invalid_config_is_refused() {
        let config = MinerConfig {
            max_concurrent: 0,
            ..MinerConfig::default()
        };
        let result = Pipeline::new(
            config,
            Arc::new(SharedMetagraph::new(subnet(0))),
            Arc::new(GatedMiner::default()),
        );
        assert!(matches!(
            result,
            Err(ConfigError::Invalid {
                flag: "miner.max_concurrent",
                ..
            })
        ));
    }
}
