//! Priority preemption end to end on the BTLM engine (tiny checkpoint, one batch slot): a
//! high-priority request arriving while a long low-priority generation holds the only slot
//! takes it; the low one's sequence leaves the engine (cancelled, its slot and cache room
//! free) and the high one is answered. The low one, which streamed text already, is answered
//! with that text, cut short (answers are cut short by default, `--miner.answer_margin_ms`),
//! or `Preempted` when the answer margin is 0.

mod support;
use support::{PATIENCE, fixture, wait_for};

use std::sync::Arc;
use std::sync::atomic::Ordering;

use futures::StreamExt;
use prompting_btlm_backend::{BtlmArgs, BtlmMiner};
use prompting_miner::{
    Metagraph, MetagraphView, Miner, MinerConfig, MinerError, NeuronInfo, Outcome, Pipeline,
    PromptRequest, Protocol, SharedMetagraph,
};

fn validator(uid: u16, hotkey: &str, stake: f64) -> NeuronInfo {
    NeuronInfo {
        uid,
        hotkey: hotkey.into(),
        stake,
        validator_permit: true,
        ..NeuronInfo::default()
    }
}

/// A request by `caller` for at most `max_tokens` new tokens.
fn request(caller: &str, max_tokens: u32) -> PromptRequest {
    let mut r = PromptRequest::new(
        vec!["system".into(), "user".into()],
        vec![
            "You are a helpful assistant.".into(),
            format!("A question from {caller}."),
        ],
        caller,
        Protocol::Legacy,
        PATIENCE,
    );
    r.sampling.max_tokens = Some(max_tokens);
    r
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_preempted_generation_frees_its_engine_slot_for_the_high_priority_request() {
    for answer_margin_ms in [MinerConfig::default().answer_margin_ms, 0] {
        preempt_a_long_generation(answer_margin_ms).await;
    }
}

async fn preempt_a_long_generation(answer_margin_ms: u64) {
    assert!(MinerConfig::default().answer_margin_ms > 0);
    // One batch slot; no stop strings or n-gram ban, so a generation runs its token limit.
    let args = BtlmArgs {
        model_dir: Some(fixture()),
        device: "cpu".into(),
        max_batch: 1,
        no_repeat_ngram_size: 0,
        stop: Vec::new(),
        ..BtlmArgs::default()
    };
    let miner = Arc::new(BtlmMiner::from_args(&args).expect("tiny miner"));
    let metagraph = Arc::new(SharedMetagraph::new(Metagraph::new(
        1,
        100,
        vec![validator(0, "low", 1.0), validator(1, "high", 1000.0)],
    )));
    let pipeline = Pipeline::new(
        MinerConfig {
            answer_margin_ms,
            ..MinerConfig::default()
        },
        metagraph as Arc<dyn MetagraphView>,
        Arc::clone(&miner) as Arc<dyn Miner>,
    )
    .expect("pipeline");
    assert!(pipeline.config().priority.preempt, "on by default");
    assert_eq!(pipeline.stats().capacity, 1, "one batch slot");
    // A first request gives each caller a history, so its stake is its priority.
    for caller in ["low", "high"] {
        pipeline.prompt(request(caller, 2)).await.expect("warm-up");
    }
    let stats = miner.engine().stats();
    let completed = stats.completed.load(Ordering::Relaxed);
    assert_eq!(completed, 2);

    // "low" asks for far more tokens than it gets to generate; its stream is drained as a
    // transport would.
    let long = 480;
    let mut low = pipeline
        .prompt_stream(request("low", long))
        .await
        .expect("low starts");
    let first = low.next().await;
    assert!(matches!(first, Some(Ok(_))), "{first:?}");
    let low = tokio::spawn(async move { low.collect::<Vec<_>>().await });
    assert_eq!(
        stats.running.load(Ordering::Acquire),
        1,
        "low holds the slot"
    );

    let high = pipeline.prompt(request("high", 4)).await;
    assert!(high.is_ok(), "{high:?}");

    let rest = low.await.expect("joined");
    let cut_short = answer_margin_ms > 0;
    let text = if cut_short {
        &rest[..]
    } else {
        assert_eq!(
            rest.last(),
            Some(&Err(MinerError::Preempted)),
            "low's stream ends preempted"
        );
        &rest[..rest.len() - 1]
    };
    assert!(text.iter().all(Result::is_ok), "{rest:?}");
    // The preempted sequence left the engine: cancelled, not run to its limit.
    wait_for("the engine to drop the preempted sequence", || {
        stats.cancelled.load(Ordering::Relaxed) == 1
    })
    .await;
    assert_eq!(stats.completed.load(Ordering::Relaxed), completed + 1);
    assert_eq!(stats.running.load(Ordering::Acquire), 0, "no sequence left");
    assert_eq!(stats.kv_reserved_bytes.load(Ordering::Acquire), 0);
    assert_eq!(stats.waiting.load(Ordering::Acquire), 0);
    assert!(
        stats.tokens.load(Ordering::Relaxed) < 2 * 2 + u64::from(long),
        "low stopped early"
    );
    let p = pipeline.stats();
    assert_eq!(p.preemptions, 1);
    assert_eq!(
        (p.outcomes[&Outcome::Preempted], p.truncated),
        if cut_short { (0, 1) } else { (1, 0) }
    );
    assert_eq!(p.in_flight, 0);
    // The slot serves the next request as usual.
    let next = pipeline.prompt(request("low", 2)).await;
    assert!(next.is_ok(), "{next:?}");
}
