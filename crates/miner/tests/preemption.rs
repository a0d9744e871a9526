//! Priority preemption (`--miner.priority.preempt`): a high-priority request arriving while
//! every worker slot is held by lower-priority ones takes the slot of the lowest of them,
//! whose caller is answered `MinerError::Preempted`. In paused (simulated) time; the backend
//! sleeps as long as each request asks and counts the calls dropped before their end.

mod support;
use support::request;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use futures::StreamExt;
use prompting_miner::{
    Miner, MinerConfig, MinerError, Outcome, Pipeline, PromptRequest, TextStream,
};
use tokio::task::JoinHandle;
use tokio::time::Instant;

const SECOND: Duration = Duration::from_secs(1);

/// Sleeps the milliseconds in the request's first message, then answers; streams that many
/// milliseconds per chunk, five chunks. Counts the calls dropped before their end.
#[derive(Default)]
struct Sleeper {
    dropped: Arc<AtomicUsize>,
}

/// Counts a drop unless disarmed.
struct Witness(Arc<AtomicUsize>, bool);

impl Drop for Witness {
    fn drop(&mut self) {
        if self.1 {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }
}

fn work_of(request: &PromptRequest) -> Result<Duration, MinerError> {
    let ms: u64 = request
        .messages
        .first()
        .and_then(|m| m.parse().ok())
        .ok_or_else(|| MinerError::BadRequest("milliseconds expected".into()))?;
    Ok(Duration::from_millis(ms))
}

#[async_trait]
impl Miner for Sleeper {
    fn name(&self) -> &str {
        "sleeper"
    }

    async fn prompt(&self, request: &PromptRequest) -> Result<String, MinerError> {
        let mut witness = Witness(Arc::clone(&self.dropped), true);
        tokio::time::sleep(work_of(request)?).await;
        witness.1 = false;
        Ok("answer".into())
    }

    async fn prompt_stream(&self, request: &PromptRequest) -> Result<TextStream, MinerError> {
        let work = work_of(request)?;
        let witness = Witness(Arc::clone(&self.dropped), true);
        Ok(Box::pin(futures::stream::unfold(
            (0, witness),
            move |(i, witness)| async move {
                if i == 5 {
                    // Ran to its end: not a drop.
                    std::mem::forget(witness);
                    return None;
                }
                tokio::time::sleep(work).await;
                Some((Ok(format!("chunk{i}")), (i + 1, witness)))
            },
        )))
    }
}

/// Answers a request whose message names a gate once that gate lets it through (one
/// permit per answer); any other message at once. Counts the calls dropped before their end.
#[derive(Default)]
struct Gated {
    gates: std::collections::HashMap<&'static str, Arc<tokio::sync::Semaphore>>,
    dropped: Arc<AtomicUsize>,
}

impl Gated {
    fn with_gates(names: &[&'static str]) -> Self {
        Gated {
            gates: names
                .iter()
                .map(|&name| (name, Arc::new(tokio::sync::Semaphore::new(0))))
                .collect(),
            dropped: Arc::default(),
        }
    }

    fn open(&self, name: &str) {
        self.gates[name].add_permits(1);
    }
}

#[async_trait]
impl Miner for Gated {
    fn name(&self) -> &str {
        "gated"
    }

    async fn prompt(&self, request: &PromptRequest) -> Result<String, MinerError> {
        let gate = request
            .messages
            .first()
            .and_then(|m| self.gates.get(m.as_str()));
        if let Some(gate) = gate {
            let mut witness = Witness(Arc::clone(&self.dropped), true);
            gate.acquire()
                .await
                .map_err(|_| MinerError::Backend("gate closed".into()))?
                .forget();
            witness.1 = false;
        }
        Ok("answer".into())
    }
}

/// A request by `caller` that waits for the gate `gate` of a [`Gated`] backend.
fn gated(caller: &str, gate: &str) -> PromptRequest {
    PromptRequest::new(
        vec!["user".into()],
        vec![gate.into()],
        caller,
        prompting_miner::Protocol::Legacy,
        60 * SECOND,
    )
}

/// `workers` slots; callers `low` (1 α), `mid` (40 α), `high` (100 α), each warmed up so
/// that its requests rank by its stake.
async fn pipeline(workers: usize, edit: impl FnOnce(&mut MinerConfig)) -> (Pipeline, Arc<Sleeper>) {
    let miner = Arc::new(Sleeper::default());
    let pipeline = pipeline_of(Arc::clone(&miner) as Arc<dyn Miner>, workers, edit).await;
    (pipeline, miner)
}

/// Like [`pipeline`], on `miner`.
async fn pipeline_of(
    miner: Arc<dyn Miner>,
    workers: usize,
    edit: impl FnOnce(&mut MinerConfig),
) -> Pipeline {
    let mut config = MinerConfig {
        max_concurrent: workers,
        blacklist: prompting_miner::BlacklistConfig {
            min_request_period: 0,
            ..Default::default()
        },
        ..MinerConfig::default()
    };
    edit(&mut config);
    let pipeline = Pipeline::new(
        config,
        support::validators(&[("low", 1.0), ("mid", 40.0), ("high", 100.0)]),
        miner,
    )
    .expect("valid config");
    for caller in ["low", "mid", "high"] {
        let answer = pipeline
            .prompt(request(caller, Duration::ZERO, SECOND))
            .await;
        assert!(answer.is_ok(), "warm-up: {answer:?}");
    }
    pipeline
}

type Answer = JoinHandle<(Result<String, MinerError>, Duration)>;

/// Sends the request in the background (answer and how long it took) and lets it reach
/// the queue or a worker.
async fn send(pipeline: &Pipeline, caller: &str, work: Duration, timeout: Duration) -> Answer {
    let pipeline = pipeline.clone();
    let request = request(caller, work, timeout);
    let answer = tokio::spawn(async move {
        let sent = Instant::now();
        let answer = pipeline.prompt(request).await;
        (answer, sent.elapsed())
    });
    settle().await;
    answer
}

async fn settle() {
    for _ in 0..20 {
        tokio::task::yield_now().await;
    }
}

async fn answer(handle: Answer) -> (Result<String, MinerError>, Duration) {
    handle.await.expect("joined")
}

#[tokio::test(start_paused = true)]
async fn a_high_priority_request_takes_the_slot_of_a_low_one() {
    let (p, miner) = pipeline(2, |_| {}).await;
    let first = send(&p, "low", 10 * SECOND, 60 * SECOND).await;
    let second = send(&p, "low", 10 * SECOND, 60 * SECOND).await;
    tokio::time::sleep(SECOND).await;
    let high = send(&p, "high", SECOND, 12 * SECOND).await;
    let (result, took) = answer(high).await;
    assert_eq!(result, Ok("answer".into()));
    assert!(took < SECOND + SECOND / 10, "served at once, took {took:?}");
    // The most recently granted of the lowest priority lost its slot.
    assert_eq!(answer(second).await.0, Err(MinerError::Preempted));
    assert_eq!(answer(first).await.0, Ok("answer".into()));
    assert_eq!(
        miner.dropped.load(Ordering::SeqCst),
        1,
        "its call was dropped"
    );
    let stats = p.stats();
    assert_eq!(stats.preemptions, 1);
    assert_eq!(stats.outcomes[&Outcome::Preempted], 1);
    assert_eq!(stats.in_flight, 0);
    assert_eq!(MinerError::Preempted.status_code(), 503);
}

#[tokio::test(start_paused = true)]
async fn equal_or_higher_priorities_are_never_preempted() {
    let (p, miner) = pipeline(1, |_| {}).await;
    let running = send(&p, "high", 2 * SECOND, 60 * SECOND).await;
    let equal = send(&p, "high", SECOND, 60 * SECOND).await;
    let lower = send(&p, "mid", SECOND, 60 * SECOND).await;
    for handle in [running, equal, lower] {
        assert_eq!(answer(handle).await.0, Ok("answer".into()));
    }
    assert_eq!(p.stats().preemptions, 0);
    assert_eq!(miner.dropped.load(Ordering::SeqCst), 0);
}

#[tokio::test(start_paused = true)]
async fn only_a_priority_above_the_margin_preempts() {
    // low 1, mid 40, high 100: with a margin of 50 only high outranks low enough.
    let (p, _) = pipeline(1, |c| c.priority.preempt_margin = 50.0).await;
    let low = send(&p, "low", 10 * SECOND, 60 * SECOND).await;
    let mid = send(&p, "mid", SECOND, 60 * SECOND).await;
    assert_eq!(p.stats().preemptions, 0, "40 - 1 is within the margin");
    let high = send(&p, "high", SECOND, 60 * SECOND).await;
    assert_eq!(answer(low).await.0, Err(MinerError::Preempted));
    let (high, high_took) = answer(high).await;
    let (mid, mid_took) = answer(mid).await;
    assert_eq!((high, mid), (Ok("answer".into()), Ok("answer".into())));
    assert!(
        high_took < mid_took,
        "high first: {high_took:?}, {mid_took:?}"
    );
    assert_eq!(p.stats().preemptions, 1);
}

#[tokio::test(start_paused = true)]
async fn a_preempted_stream_yields_the_error_and_ends() {
    let (p, miner) = pipeline(1, |_| {}).await;
    let mut stream = p
        .prompt_stream(request("low", SECOND, 60 * SECOND))
        .await
        .expect("stream");
    assert_eq!(stream.next().await, Some(Ok("chunk0".into())));
    let high = send(&p, "high", SECOND, 12 * SECOND).await;
    let mut rest = Vec::new();
    while let Some(item) = stream.next().await {
        rest.push(item);
    }
    assert_eq!(rest, [Err(MinerError::Preempted)]);
    assert_eq!(answer(high).await.0, Ok("answer".into()));
    assert_eq!(miner.dropped.load(Ordering::SeqCst), 1);
    assert_eq!(p.stats().outcomes[&Outcome::Preempted], 1);
}

#[tokio::test(start_paused = true)]
async fn a_stream_waiting_for_its_first_chunk_is_preempted_too() {
    let (p, _) = pipeline(1, |_| {}).await;
    let low = {
        let p = p.clone();
        tokio::spawn(async move {
            p.prompt_stream(request("low", 10 * SECOND, 60 * SECOND))
                .await
                .map(|_| ())
        })
    };
    settle().await;
    let high = send(&p, "high", SECOND, 12 * SECOND).await;
    assert_eq!(low.await.expect("joined"), Err(MinerError::Preempted));
    assert_eq!(answer(high).await.0, Ok("answer".into()));
}

#[tokio::test(start_paused = true)]
async fn with_preemption_off_the_high_priority_request_waits() {
    let (p, miner) = pipeline(1, |c| c.priority.preempt = false).await;
    let low = send(&p, "low", 5 * SECOND, 60 * SECOND).await;
    let high = send(&p, "high", SECOND, 60 * SECOND).await;
    assert_eq!(answer(low).await.0, Ok("answer".into()));
    let (result, took) = answer(high).await;
    assert_eq!(result, Ok("answer".into()));
    assert!(took >= 5 * SECOND, "waited for the slot: {took:?}");
    assert_eq!(p.stats().preemptions, 0);
    assert_eq!(miner.dropped.load(Ordering::SeqCst), 0);
}

/// Sends `request` in the background, without waiting for it to reach the queue.
fn spawn(pipeline: &Pipeline, request: PromptRequest) -> JoinHandle<Result<String, MinerError>> {
    let pipeline = pipeline.clone();
    tokio::spawn(async move { pipeline.prompt(request).await })
}

/// A slot that frees naturally while a preemption is in flight (signalled, not yet acted on
/// by its victim) serves the waiter the preemption was for: the preemption is called off
/// and its victim runs on, instead of being dropped for a slot nobody needs any more.
#[tokio::test(start_paused = true)]
async fn a_slot_freed_while_a_preemption_is_in_flight_calls_it_off() {
    let miner = Arc::new(Gated::with_gates(&["a", "b"]));
    let p = pipeline_of(Arc::clone(&miner) as Arc<dyn Miner>, 2, |_| {}).await;
    let low = spawn(&p, gated("low", "a"));
    settle().await;
    let mid = spawn(&p, gated("mid", "b"));
    settle().await;
    assert_eq!(p.stats().in_flight, 2);
    // In one go, before any task runs: "high" arrives (and preempts "low", the lowest), and
    // "mid"'s answer is ready. "mid" gives its slot back (to "high") before "low" sees the
    // preemption.
    let high = spawn(&p, gated("high", "none"));
    miner.open("b");
    settle().await;
    assert_eq!(mid.await.expect("joined"), Ok("answer".into()));
    assert_eq!(high.await.expect("joined"), Ok("answer".into()));
    assert_eq!(p.stats().in_flight, 1, "low still runs");
    miner.open("a");
    assert_eq!(low.await.expect("joined"), Ok("answer".into()));
    assert_eq!(p.stats().preemptions, 0);
    assert_eq!(p.stats().preemptions_called_off, 1);
    assert_eq!(p.stats().outcomes[&Outcome::Preempted], 0);
    assert_eq!(miner.dropped.load(Ordering::SeqCst), 0);
}

/// The race above the other way round: the victim acts on the preemption first; the slot
/// that frees naturally afterwards goes to the next waiter as usual.
#[tokio::test(start_paused = true)]
async fn a_preemption_acted_on_stands() {
    let miner = Arc::new(Gated::with_gates(&["a", "b"]));
    let p = pipeline_of(Arc::clone(&miner) as Arc<dyn Miner>, 2, |_| {}).await;
    let low = spawn(&p, gated("low", "a"));
    settle().await;
    let mid = spawn(&p, gated("mid", "b"));
    settle().await;
    let high = spawn(&p, gated("high", "none"));
    settle().await;
    assert_eq!(low.await.expect("joined"), Err(MinerError::Preempted));
    assert_eq!(high.await.expect("joined"), Ok("answer".into()));
    miner.open("b");
    assert_eq!(mid.await.expect("joined"), Ok("answer".into()));
    assert_eq!(p.stats().preemptions, 1);
    assert_eq!(p.stats().preemptions_called_off, 0);
    assert_eq!(miner.dropped.load(Ordering::SeqCst), 1);
}
