//! The engine's figures on the axon's `/metrics`: a BTLM miner on the tiny checkpoint
//! answers a request through the pipeline, and the text the axon serves
//! (`Metrics::render`) shows its passes, rows, tokens and gauges.

mod support;
use support::{fixture, wait_for};

use std::sync::Arc;
use std::time::Duration;

use prompting_btlm_backend::host_memory::Room;
use prompting_btlm_backend::{BtlmArgs, BtlmMiner};
use prompting_miner::{DevMetagraph, Miner, MinerConfig, Pipeline, PromptRequest, Protocol};
use prompting_transport::edge::Metrics;

/// The value of the sample named exactly `name` (labels included); `None` when absent.
fn sample(text: &str, name: &str) -> Option<f64> {
    text.lines().find_map(|line| {
        let value = line.strip_prefix(name)?.strip_prefix(' ')?;
        value.parse().ok()
    })
}

/// The sample's value, which must be there.
fn value(text: &str, name: &str) -> f64 {
    sample(text, name).unwrap_or_else(|| panic!("{name} missing from:\n{text}"))
}

#[tokio::test]
async fn the_engines_figures_move_on_metrics_after_an_answer() {
    let args = BtlmArgs {
        model_dir: Some(fixture()),
        max_length: 8,
        max_batch: 2,
        // Pieces of 8 (the 18-token prompt: two whole ones, kept when it comes again).
        prefill_chunk: 8,
        device: "cpu".into(),
        ..BtlmArgs::default()
    };
    let miner = Arc::new(BtlmMiner::from_args(&args).expect("tiny miner"));
    let pipeline = Pipeline::new(
        MinerConfig::default(),
        Arc::new(DevMetagraph::new()),
        Arc::clone(&miner) as Arc<dyn Miner>,
    )
    .expect("pipeline");
    let metrics = Metrics::new();

    let before = metrics.render(&pipeline);
    for (name, kind) in [
        ("prompting_btlm_passes", "counter"),
        ("prompting_btlm_rows", "counter"),
        ("prompting_btlm_step_seconds", "counter"),
        ("prompting_btlm_requests", "counter"),
        ("prompting_btlm_running_sequences", "gauge"),
        ("prompting_btlm_kv_reserved_bytes", "gauge"),
        ("prompting_btlm_deadline_guard_held_back", "counter"),
        ("prompting_btlm_deadline_guard_preempted", "counter"),
        ("prompting_btlm_deadline_guard_late", "counter"),
    ] {
        assert!(
            before.contains(&format!("# TYPE {name} {kind}\n")),
            "{name} {kind} in:\n{before}"
        );
    }
    assert_eq!(value(&before, "prompting_btlm_passes_total"), 0.0);
    assert_eq!(
        value(&before, "prompting_btlm_rows_total{kind=\"decode\"}"),
        0.0
    );
    assert_eq!(
        value(&before, "prompting_btlm_rows_total{kind=\"prompt\"}"),
        0.0
    );
    assert_eq!(value(&before, "prompting_btlm_max_batch"), 2.0);
    // The budget in force, published from the start: the whole budget where the memory
    // left has room for it and 1 GiB more (any test host with a few GiB free), never more.
    let plenty = Room::of_this_process()
        .bytes()
        .is_some_and(|left| left > (args.kv_cache_mb as u64 + 1024) << 20);
    let limit_right = |text: &str| {
        let (limit, budget) = (
            value(text, "prompting_btlm_kv_limit_bytes"),
            value(text, "prompting_btlm_kv_budget_bytes"),
        );
        limit == budget || (!plenty && limit > 0.0 && limit < budget)
    };
    wait_for("the budget in force published", || {
        limit_right(&metrics.render(&pipeline))
    })
    .await;

    let request = PromptRequest::new(
        vec!["user".into()],
        vec!["Write one sentence about the sea.".into()],
        "5Caller",
        Protocol::Legacy,
        Duration::from_secs(60),
    );
    let prompt_tokens = miner
        .engine()
        .tokenizer()
        .encode(&miner.prompt_text(&request))
        .expect("encode")
        .len() as f64;
    let answer = pipeline.prompt(request).await;
    assert!(answer.is_ok(), "{answer:?}");

    let after = metrics.render(&pipeline);
    let passes = value(&after, "prompting_btlm_passes_total");
    let steps = value(&after, "prompting_btlm_steps_total");
    let decode = value(&after, "prompting_btlm_rows_total{kind=\"decode\"}");
    let tokens = value(&after, "prompting_btlm_generated_tokens_total");
    assert!(
        passes >= steps && steps > 0.0,
        "passes {passes}, steps {steps}"
    );
    assert_eq!(
        value(&after, "prompting_btlm_rows_total{kind=\"prompt\"}"),
        prompt_tokens,
        "every prompt token ran once"
    );
    // The first new token comes from the prompt's pass, each later one from a decode row.
    assert!((1.0..=8.0).contains(&tokens), "{tokens} tokens");
    assert!(
        decode >= tokens - 1.0,
        "decode rows {decode}, tokens {tokens}"
    );
    assert_eq!(
        value(
            &after,
            "prompting_btlm_requests_total{outcome=\"completed\"}"
        ),
        1.0
    );
    assert_eq!(value(&after, "prompting_btlm_admitted_total"), 1.0);
    // Alone in the batch: nothing for the deadline guard to hold back, preempt or end.
    for guard in ["held_back", "preempted", "late"] {
        let name = format!("prompting_btlm_deadline_guard_{guard}_total");
        assert_eq!(value(&after, &name), 0.0, "{name}");
    }
    assert!(value(&after, "prompting_btlm_step_seconds_total") > 0.0);
    assert!(
        value(&after, "prompting_btlm_model_seconds_total")
            <= value(&after, "prompting_btlm_step_seconds_total")
    );
    // The answer is out: its batch slot and cache room are free again.
    assert_eq!(value(&after, "prompting_btlm_running_sequences"), 0.0);
    assert_eq!(value(&after, "prompting_btlm_kv_reserved_bytes"), 0.0);
    assert_eq!(value(&after, "prompting_btlm_peak_running_sequences"), 1.0);
    // Its cache went back to the pool (on by default), the only one made so far.
    assert_eq!(
        value(
            &after,
            "prompting_btlm_kv_caches_total{source=\"allocated\"}"
        ),
        1.0
    );
    assert_eq!(
        value(&after, "prompting_btlm_kv_caches_total{source=\"reused\"}"),
        0.0
    );
    let idle = value(&after, "prompting_btlm_kv_idle_bytes");
    assert!(idle > 0.0, "the finished sequence's cache is kept");
    assert_eq!(value(&after, "prompting_btlm_kv_idle_dropped_total"), 0.0);
    assert!(value(&after, "prompting_btlm_kv_peak_bytes") >= idle);
    assert!(limit_right(&after), "{after}");
    // Idle now: a blank cache for the next request of that size (--btlm.kv_spare_caches,
    // 8 by default), once.
    let spares = |name: &str| value(&metrics.render(&pipeline), name);
    wait_for("a blank cache", || {
        spares("prompting_btlm_kv_spare_caches_made_total") == 1.0
    })
    .await;
    assert_eq!(spares("prompting_btlm_kv_spare_caches_used_total"), 0.0);
    // The heap keeper (--btlm.heap_slack_mb, on by default) reads the heaps' free bytes
    // every second.
    let now = metrics.render(&pipeline);
    for name in [
        "prompting_btlm_heap_trims_total",
        "prompting_btlm_heap_released_bytes_total",
        "prompting_btlm_heap_trim_seconds_total",
    ] {
        assert!(sample(&now, name).is_some(), "{name} missing from:\n{now}");
    }
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    wait_for("a reading of the heaps' free bytes", || {
        spares("prompting_btlm_heap_free_bytes") > 0.0
    })
    .await;
    // The pipeline's own figures are still there, and the exposition still ends right.
    assert_eq!(
        value(
            &after,
            "prompting_pipeline_outcomes_total{outcome=\"served\"}"
        ),
        1.0
    );
    assert!(after.ends_with("# EOF\n"), "{after}");
    assert_eq!(value(&after, "prompting_btlm_prefix_hits_total"), 0.0);

    // The same question again keeps the prompt's start from the idle cache
    // (--btlm.prefix_reuse, on by default).
    let again = PromptRequest::new(
        vec!["user".into()],
        vec!["Write one sentence about the sea.".into()],
        "5Caller",
        Protocol::Legacy,
        Duration::from_secs(60),
    );
    assert_eq!(pipeline.prompt(again).await.ok(), answer.ok());
    let last = metrics.render(&pipeline);
    // All but the last prompt token where positions split alike, else whole pieces.
    let kept = if miner.engine().keeps_any_prefix() {
        prompt_tokens - 1.0
    } else {
        ((prompt_tokens - 1.0) / 8.0).floor() * 8.0
    };
    assert!(kept >= 8.0, "{prompt_tokens} prompt tokens");
    assert_eq!(value(&last, "prompting_btlm_prefix_hits_total"), 1.0);
    // Its own idle cache fits it and gives the most: taken rather than the blank one.
    assert_eq!(
        value(&last, "prompting_btlm_kv_spare_caches_used_total"),
        0.0
    );
    assert_eq!(
        value(&last, "prompting_btlm_kv_caches_total{source=\"reused\"}"),
        1.0
    );
    assert_eq!(
        value(&last, "prompting_btlm_prefix_reused_tokens_total"),
        kept
    );
    assert_eq!(
        value(&last, "prompting_btlm_rows_total{kind=\"prompt\"}"),
        2.0 * prompt_tokens - kept,
        "the kept tokens did not run the second time"
    );
}
