//! The pipeline under sustained overload, in paused (simulated) time: a backend with a
//! service time of 3.4 s ± 30% and 8 slots, flooded by equal-priority callers at 10× its
//! capacity, all with the validator's 12 s timeout.
//!
//! Goodput (answers completed before their deadline, per second) must stay near the
//! backend's capacity, and a high-stake validator must still get every answer in time.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use prompting_miner::{
    Metagraph, Miner, MinerConfig, MinerError, NeuronInfo, Pipeline, PromptRequest, Protocol,
    SharedMetagraph,
};
use tokio::task::JoinHandle;
use tokio::time::Instant;

/// The backend runs `slots` answers at once; each takes `service` × a factor spread evenly
/// over 1 ± `spread` (a fixed pseudo-random sequence), like answers of varying length.
struct VaryingServiceTime {
    service: Duration,
    spread: f64,
    slots: usize,
    calls: AtomicU64,
}

impl VaryingServiceTime {
    fn next_service_time(&self) -> Duration {
        let n = self.calls.fetch_add(1, Ordering::Relaxed);
        // A multiplicative hash of the call number, mapped to [0, 1).
        let u = (n.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 11) as f64 / (1u64 << 53) as f64;
        self.service
            .mul_f64(1.0 - self.spread + 2.0 * self.spread * u)
    }
}

#[async_trait]
impl Miner for VaryingServiceTime {
    fn name(&self) -> &str {
        "varying-service-time"
    }

    fn capacity(&self) -> Option<usize> {
        Some(self.slots)
    }

    async fn prompt(&self, _: &PromptRequest) -> Result<String, MinerError> {
        tokio::time::sleep(self.next_service_time()).await;
        Ok("answer".into())
    }
}

const SLOTS: usize = 8;
/// About the 4-layer BTLM stand-in's full-batch answer time in docs/benchmarks.md's flood.
const SERVICE: Duration = Duration::from_millis(3400);
/// Answers take 3.4 s ± 30%.
const SPREAD: f64 = 0.3;
const TIMEOUT: Duration = Duration::from_secs(12);
const FLOOD_KEYS: usize = 16;
const FLOOD_X: f64 = 10.0;
const RUN: Duration = Duration::from_secs(180);

/// Answers per second the backend can give (on average).
fn capacity() -> f64 {
    SLOTS as f64 / SERVICE.as_secs_f64()
}

fn flood_key(i: usize) -> String {
    format!("flood-{i}")
}

fn pipeline() -> Pipeline {
    pipeline_with(|_| {})
}

fn pipeline_with(edit: impl FnOnce(&mut MinerConfig)) -> Pipeline {
    let mut neurons: Vec<NeuronInfo> = (0..FLOOD_KEYS)
        .map(|i| NeuronInfo {
            uid: i as u16,
            hotkey: flood_key(i),
            stake: 1.0,
            validator_permit: true,
            ..NeuronInfo::default()
        })
        .collect();
    neurons.push(NeuronInfo {
        uid: FLOOD_KEYS as u16,
        hotkey: "validator".into(),
        stake: 10_000.0,
        validator_permit: true,
        ..NeuronInfo::default()
    });
    let mut config = MinerConfig {
        max_concurrent: SLOTS,
        // As the e2e bench runs the miner: no rate limit, so the flood reaches the queue.
        blacklist: prompting_miner::BlacklistConfig {
            min_request_period: 0,
            ..Default::default()
        },
        ..MinerConfig::default()
    };
    edit(&mut config);
    let backend = VaryingServiceTime {
        service: SERVICE,
        spread: SPREAD,
        slots: SLOTS,
        calls: AtomicU64::new(0),
    };
    Pipeline::new(
        config,
        Arc::new(SharedMetagraph::new(Metagraph::new(1, 100, neurons))),
        Arc::new(backend),
    )
    .expect("valid config")
}

fn request(caller: &str) -> PromptRequest {
    PromptRequest::new(
        vec!["user".into()],
        vec!["question".into()],
        caller,
        Protocol::Legacy,
        TIMEOUT,
    )
}

/// A flood request: how it ended, after how long.
type Flooded = JoinHandle<(Result<String, MinerError>, Duration)>;

/// Sends equal-priority requests from [`FLOOD_KEYS`] keys at [`FLOOD_X`] × the capacity for
/// [`RUN`]; returns the spawned requests.
fn spawn_flood(pipeline: &Pipeline) -> JoinHandle<Vec<Flooded>> {
    let pipeline = pipeline.clone();
    tokio::spawn(async move {
        let interval = Duration::from_secs_f64(1.0 / (FLOOD_X * capacity()));
        let end = Instant::now() + RUN;
        let mut requests = Vec::new();
        let mut next = Instant::now();
        let mut i = 0;
        while next < end {
            tokio::time::sleep_until(next).await;
            let pipeline = pipeline.clone();
            let caller = flood_key(i % FLOOD_KEYS);
            requests.push(tokio::spawn(async move {
                let started = Instant::now();
                let result = pipeline.prompt(request(&caller)).await;
                (result, started.elapsed())
            }));
            i += 1;
            next += interval;
        }
        requests
    })
}

/// Answers given in time, their mean time to the answer in seconds, and how the requests
/// ended.
async fn tally(requests: Vec<Flooded>) -> (usize, f64, String) {
    let (mut ok, mut overloaded, mut timed_out, mut other) = (0, 0, 0, 0);
    let mut answer_time = Duration::ZERO;
    for request in requests {
        match request.await.expect("joined") {
            (Ok(_), took) => {
                ok += 1;
                answer_time += took;
            }
            (Err(MinerError::Overloaded(_)), _) => overloaded += 1,
            (Err(MinerError::Timeout(_)), _) => timed_out += 1,
            (Err(_), _) => other += 1,
        }
    }
    let mean = answer_time.as_secs_f64() / ok.max(1) as f64;
    let summary = format!(
        "{ok} answered (mean {mean:.1} s), {overloaded} overloaded, {timed_out} timed out, \
         {other} other"
    );
    (ok, mean, summary)
}

/// What a flood did to a pipeline: goodput in answers/s, mean time to an answer in seconds.
struct Flood {
    goodput: f64,
    mean_answer_s: f64,
    summary: String,
}

/// Floods a pipeline with the settings `edit` makes.
async fn flood(edit: impl FnOnce(&mut MinerConfig)) -> Flood {
    let pipeline = pipeline_with(edit);
    let requests = spawn_flood(&pipeline).await.expect("flood ran");
    let sent = requests.len();
    let (answered, mean_answer_s, summary) = tally(requests).await;
    let goodput = answered as f64 / RUN.as_secs_f64();
    let summary = format!(
        "{sent} requests: {summary}; goodput {goodput:.2}/s, capacity {:.2}/s",
        capacity()
    );
    Flood {
        goodput,
        mean_answer_s,
        summary,
    }
}

#[tokio::test(start_paused = true)]
async fn goodput_stays_near_capacity_under_a_tenfold_flood() {
    let f = flood(|_| {}).await;
    eprintln!("default settings: {}", f.summary);
    assert!(
        f.goodput >= 0.8 * capacity(),
        "goodput below 80% of the capacity: {}",
        f.summary
    );
}

#[tokio::test(start_paused = true)]
async fn a_high_stake_validator_is_served_in_time_under_the_flood() {
    let pipeline = pipeline();
    // A hotkey's first request has the default priority; rank the validator by its stake.
    assert!(pipeline.prompt(request("validator")).await.is_ok());
    let flood = spawn_flood(&pipeline);
    let end = Instant::now() + RUN;
    let mut asked = 0;
    while Instant::now() < end {
        let started = Instant::now();
        let answer = pipeline.prompt(request("validator")).await;
        asked += 1;
        assert!(
            answer.is_ok(),
            "validator request {asked} failed after {:?}: {answer:?}",
            started.elapsed()
        );
        assert!(started.elapsed() <= TIMEOUT);
    }
    // One question at a time, each answered within one service time plus the wait for the
    // next free slot.
    assert!(
        asked as f64 >= RUN.as_secs_f64() / (2.0 * SERVICE.as_secs_f64()),
        "{asked} answers"
    );
    let (_, _, summary) = tally(flood.await.expect("flood ran")).await;
    eprintln!("validator: {asked} answers, all in time; flood: {summary}");
}

/// Why a backed-up queue serves the newest first among equals: with the deadline checks
/// alone (oldest first), the waiter granted is the one with the least time left — it waited
/// longest — so answers come late in their budget, and a slower-than-estimated one misses
/// its deadline; newest first grants the one with the most time left.
#[tokio::test(start_paused = true)]
async fn newest_first_when_backed_up_answers_sooner_than_oldest_first() {
    let newest = flood(|_| {}).await;
    let oldest = flood(|c| c.admission.fifo = true).await;
    let plain = flood(|c| {
        c.admission.fifo = true;
        c.admission.ignore_deadlines = true;
    })
    .await;
    eprintln!("newest first: {}", newest.summary);
    eprintln!("oldest first: {}", oldest.summary);
    eprintln!("oldest first, deadlines ignored: {}", plain.summary);
    assert!(newest.goodput >= oldest.goodput);
    assert!(
        newest.mean_answer_s < 0.5 * oldest.mean_answer_s,
        "{} / {}",
        newest.summary,
        oldest.summary
    );
    assert!(oldest.goodput > 2.0 * plain.goodput);
}
