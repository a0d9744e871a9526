//! Answers cut short in time (`--miner.answer_margin_ms`): a request whose backend streams as
//! it generates and is still running the margin before its deadline is answered with the
//! text so far, streaming or not, instead of timing out. In paused (simulated) time; the
//! backend yields a chunk per tick and counts the streams dropped before their end.

// `support::request` is not used here: these requests carry a chunk plan instead.
#[allow(dead_code)]
mod support;
use support::validators;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use futures::StreamExt;
use prompting_miner::{
    Miner, MinerConfig, MinerError, Outcome, Pipeline, PromptRequest, Protocol, TextStream,
};
use tokio::time::Instant;

const MS: Duration = Duration::from_millis(1);
const TIMEOUT: Duration = Duration::from_secs(1);

/// Streams `t0 `, `t1 `, … : the first chunk after `first` ms, then one every `tick` ms,
/// `chunks` in all (the request's message: `first,tick,chunks`). Says it streams as it
/// generates when `incremental`.
struct Ticker {
    incremental: bool,
    dropped: Arc<AtomicUsize>,
}

/// Counts a drop unless disarmed (the stream ran to its end).
struct Witness(Arc<AtomicUsize>, bool);

impl Witness {
    fn disarm(&mut self) {
        self.1 = false;
    }
}

impl Drop for Witness {
    fn drop(&mut self) {
        if self.1 {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }
}

fn plan(request: &PromptRequest) -> Result<(Duration, Duration, usize), MinerError> {
    let bad = || MinerError::BadRequest("first,tick,chunks expected".into());
    let message = request.messages.first().ok_or_else(bad)?;
    let numbers: Vec<u64> = message
        .split(',')
        .map(|n| n.parse().map_err(|_| bad()))
        .collect::<Result<_, _>>()?;
    match numbers[..] {
        [first, tick, chunks] => Ok((
            Duration::from_millis(first),
            Duration::from_millis(tick),
            chunks as usize,
        )),
        _ => Err(bad()),
    }
}

#[async_trait]
impl Miner for Ticker {
    fn name(&self) -> &str {
        "ticker"
    }

    fn streams_as_generated(&self) -> bool {
        self.incremental
    }

    async fn prompt(&self, request: &PromptRequest) -> Result<String, MinerError> {
        let mut stream = self.prompt_stream(request).await?;
        let mut text = String::new();
        while let Some(chunk) = stream.next().await {
            text.push_str(&chunk?);
        }
        Ok(text)
    }

    async fn prompt_stream(&self, request: &PromptRequest) -> Result<TextStream, MinerError> {
        let (first, tick, chunks) = plan(request)?;
        let witness = Witness(Arc::clone(&self.dropped), true);
        Ok(Box::pin(futures::stream::unfold(
            (0, witness),
            move |(i, mut witness)| async move {
                if i == chunks {
                    witness.disarm();
                    return None;
                }
                tokio::time::sleep(if i == 0 { first } else { tick }).await;
                Some((Ok(format!("t{i} ")), (i + 1, witness)))
            },
        )))
    }
}

struct Fixture {
    pipeline: Pipeline,
    dropped: Arc<AtomicUsize>,
}

fn fixture(incremental: bool, margin_ms: u64) -> Fixture {
    let dropped = Arc::new(AtomicUsize::new(0));
    let config = MinerConfig {
        answer_margin_ms: margin_ms,
        ..MinerConfig::default()
    };
    let miner = Ticker {
        incremental,
        dropped: Arc::clone(&dropped),
    };
    let pipeline =
        Pipeline::new(config, validators(&[("v", 1000.0)]), Arc::new(miner)).expect("valid config");
    Fixture { pipeline, dropped }
}

fn ask(first_ms: u64, tick_ms: u64, chunks: usize) -> PromptRequest {
    PromptRequest::new(
        vec!["user".into()],
        vec![format!("{first_ms},{tick_ms},{chunks}")],
        "v",
        Protocol::Legacy,
        TIMEOUT,
    )
}

/// The chunks `t0 ` … `t{n-1} ` together.
fn chunks(n: usize) -> String {
    (0..n).map(|i| format!("t{i} ")).collect()
}

/// Runs `request` streaming: the text, and the error that ended the stream if one did.
async fn streamed(
    pipeline: &Pipeline,
    request: PromptRequest,
) -> Result<(String, Option<MinerError>), MinerError> {
    let mut stream = pipeline.prompt_stream(request).await?;
    let mut text = String::new();
    while let Some(chunk) = stream.next().await {
        match chunk {
            Ok(chunk) => text.push_str(&chunk),
            Err(error) => return Ok((text, Some(error))),
        }
    }
    Ok((text, None))
}

fn served(pipeline: &Pipeline) -> u64 {
    pipeline.stats().outcomes[&Outcome::Served]
}

#[tokio::test(start_paused = true)]
async fn a_request_still_running_at_the_margin_gets_the_text_so_far() {
    // Chunks at 50, 150, …, 650 ms; the cutoff at 1000 − 300 = 700 ms.
    let f = fixture(true, 300);
    let start = Instant::now();
    let asked = ask(50, 100, 50);
    let report = asked.report.clone();
    let answer = f.pipeline.prompt(asked).await;
    assert_eq!(answer, Ok(chunks(7)));
    assert_eq!(
        report.finish_reason().as_deref(),
        Some("length"),
        "a cut answer ends on length"
    );
    assert_eq!(start.elapsed(), 700 * MS);
    assert_eq!(
        f.dropped.load(Ordering::SeqCst),
        1,
        "the backend's work stops"
    );

    let start = Instant::now();
    let answer = streamed(&f.pipeline, ask(50, 100, 50)).await;
    assert_eq!(
        answer,
        Ok((chunks(7), None)),
        "the stream ends without error"
    );
    assert_eq!(start.elapsed(), 700 * MS);
    assert_eq!(f.dropped.load(Ordering::SeqCst), 2);

    let stats = f.pipeline.stats();
    assert_eq!(stats.truncated, 2);
    assert_eq!(served(&f.pipeline), 2);
    assert_eq!(stats.outcomes[&Outcome::TimedOut], 0);
    assert_eq!(stats.in_flight, 0, "the worker slots are back");
}

#[tokio::test(start_paused = true)]
async fn an_answer_done_before_the_margin_is_whole() {
    let f = fixture(true, 300);
    assert_eq!(f.pipeline.prompt(ask(50, 100, 3)).await, Ok(chunks(3)));
    assert_eq!(
        streamed(&f.pipeline, ask(50, 100, 3)).await,
        Ok((chunks(3), None))
    );
    assert_eq!(f.pipeline.stats().truncated, 0);
    assert_eq!(served(&f.pipeline), 2);
    assert_eq!(f.dropped.load(Ordering::SeqCst), 0);
}

#[tokio::test(start_paused = true)]
async fn nothing_by_the_margin_answers_with_the_first_text() {
    // The first chunk at 800 ms: past the cutoff (700), before the deadline (1000).
    let f = fixture(true, 300);
    let start = Instant::now();
    assert_eq!(f.pipeline.prompt(ask(800, 100, 50)).await, Ok(chunks(1)));
    assert_eq!(start.elapsed(), 800 * MS);
    let start = Instant::now();
    assert_eq!(
        streamed(&f.pipeline, ask(800, 100, 50)).await,
        Ok((chunks(1), None))
    );
    assert_eq!(start.elapsed(), 800 * MS);
    assert_eq!(f.pipeline.stats().truncated, 2);
}

#[tokio::test(start_paused = true)]
async fn nothing_by_the_deadline_times_out() {
    let f = fixture(true, 300);
    let start = Instant::now();
    let answer = f.pipeline.prompt(ask(1500, 100, 50)).await;
    assert!(matches!(answer, Err(MinerError::Timeout(_))), "{answer:?}");
    assert_eq!(start.elapsed(), TIMEOUT);
    let stats = f.pipeline.stats();
    assert_eq!(
        (stats.truncated, stats.outcomes[&Outcome::TimedOut]),
        (0, 1)
    );
}

#[tokio::test(start_paused = true)]
async fn no_margin_or_a_backend_that_answers_at_once_times_out_as_before() {
    for (incremental, margin_ms) in [(true, 0), (false, 300)] {
        let f = fixture(incremental, margin_ms);
        let start = Instant::now();
        let answer = f.pipeline.prompt(ask(50, 100, 50)).await;
        assert!(
            matches!(answer, Err(MinerError::Timeout(_))),
            "incremental {incremental}, margin {margin_ms}: {answer:?}"
        );
        assert_eq!(start.elapsed(), TIMEOUT);
        let (text, error) = streamed(&f.pipeline, ask(50, 100, 50))
            .await
            .expect("the first chunk comes in time");
        assert!(matches!(error, Some(MinerError::Timeout(_))), "{error:?}");
        // Streamed, the chunks before the deadline went out (50, 150, …, 950 ms), then
        // the timeout.
        assert_eq!(text, chunks(10));
        assert_eq!(f.pipeline.stats().truncated, 0);
        assert_eq!(f.pipeline.stats().outcomes[&Outcome::TimedOut], 2);
    }
}

#[tokio::test(start_paused = true)]
async fn a_waiter_is_judged_by_its_first_chunk_not_by_the_truncated_holds() {
    // Two workers. A truncated answer held its worker 700 ms, its first chunk after 50 ms.
    let dropped = Arc::new(AtomicUsize::new(0));
    let config = MinerConfig {
        answer_margin_ms: 300,
        max_concurrent: 2,
        ..MinerConfig::default()
    };
    let miner = Ticker {
        incremental: true,
        dropped,
    };
    let pipeline =
        Pipeline::new(config, validators(&[("v", 1000.0)]), Arc::new(miner)).expect("valid config");
    assert_eq!(pipeline.prompt(ask(50, 100, 50)).await, Ok(chunks(7)));
    let stats = pipeline.stats();
    assert_eq!(
        (stats.service_time, stats.first_chunk_time),
        (Some(700 * MS), Some(50 * MS))
    );
    // Both workers busy until 700 ms; a request arriving at 100 ms waits for one (350 ms
    // expected: two free up per 700 ms) and needs 50 + 300 ms once granted. Judged by the
    // whole 700 ms hold it would be refused at once (1050 ms needed, 1000 left).
    let busy: Vec<_> = (0..2)
        .map(|_| {
            let pipeline = pipeline.clone();
            tokio::spawn(async move { pipeline.prompt(ask(50, 100, 50)).await })
        })
        .collect();
    tokio::time::sleep(100 * MS).await;
    let start = Instant::now();
    let answer = pipeline.prompt(ask(50, 100, 50)).await;
    // Granted at 600 ms of its 1000, its first chunk at 650, cut at 700.
    assert_eq!(answer, Ok(chunks(1)));
    assert_eq!(start.elapsed(), 700 * MS);
    for answer in busy {
        assert_eq!(answer.await.expect("joined"), Ok(chunks(7)));
    }
    let stats = pipeline.stats();
    assert_eq!(stats.truncated, 4);
    assert_eq!(stats.outcomes[&Outcome::Overloaded], 0);
}

#[tokio::test(start_paused = true)]
async fn a_preempted_answer_with_text_keeps_it_one_without_is_refused() {
    // One worker; `low` (1 α) and `v` (1000 α), each warmed up so that it ranks by stake.
    let config = MinerConfig {
        answer_margin_ms: 300,
        max_concurrent: 1,
        blacklist: prompting_miner::BlacklistConfig {
            min_request_period: 0,
            ..Default::default()
        },
        ..MinerConfig::default()
    };
    let dropped = Arc::new(AtomicUsize::new(0));
    let miner = Ticker {
        incremental: true,
        dropped: Arc::clone(&dropped),
    };
    let pipeline = Pipeline::new(
        config,
        validators(&[("v", 1000.0), ("low", 1.0)]),
        Arc::new(miner),
    )
    .expect("valid config");
    let asked_by = |caller: &str, first_ms: u64| {
        PromptRequest::new(
            vec!["user".into()],
            vec![format!("{first_ms},100,5")],
            caller,
            Protocol::Legacy,
            TIMEOUT,
        )
    };
    for caller in ["v", "low"] {
        assert_eq!(pipeline.prompt(asked_by(caller, 10)).await, Ok(chunks(5)));
    }
    let run = |caller: &'static str, first_ms: u64| {
        let pipeline = pipeline.clone();
        tokio::spawn(async move { pipeline.prompt(asked_by(caller, first_ms)).await })
    };

    // Two chunks (at 10 and 110 ms) out when the validator arrives at 150 ms.
    let low = run("low", 10);
    tokio::time::sleep(150 * MS).await;
    let validator = run("v", 10);
    assert_eq!(low.await.expect("joined"), Ok(chunks(2)));
    assert_eq!(validator.await.expect("joined"), Ok(chunks(5)));
    let stats = pipeline.stats();
    assert_eq!((stats.preemptions, stats.truncated), (1, 1));

    // No text yet at 150 ms (the first chunk would come at 500): refused as preempted.
    let low = run("low", 500);
    tokio::time::sleep(150 * MS).await;
    let validator = run("v", 10);
    assert_eq!(low.await.expect("joined"), Err(MinerError::Preempted));
    assert_eq!(validator.await.expect("joined"), Ok(chunks(5)));
    let stats = pipeline.stats();
    assert_eq!((stats.preemptions, stats.truncated), (2, 1));
    assert_eq!(stats.outcomes[&Outcome::Preempted], 1);
    assert_eq!(
        dropped.load(Ordering::SeqCst),
        2,
        "both preempted calls stopped"
    );
}
