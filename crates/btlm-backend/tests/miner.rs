//! The `Miner` implementation on the tiny checkpoint.

mod support;
use support::fixture;

use std::sync::atomic::Ordering;
use std::time::Duration;

use futures::StreamExt;
use prompting_btlm_backend::{BtlmArgs, BtlmMiner};
use prompting_miner::{Miner, MinerError, PromptRequest, Protocol};

/// The tiny model on the CPU (the default device, the GPU, needs one in a `cuda` build).
fn args() -> BtlmArgs {
    BtlmArgs {
        model_dir: Some(fixture()),
        max_length: 24,
        device: "cpu".into(),
        ..BtlmArgs::default()
    }
}

fn miner(a: &BtlmArgs) -> BtlmMiner {
    BtlmMiner::from_args(a).expect("tiny miner")
}

fn request(roles: &[&str], messages: &[&str], timeout: Duration) -> PromptRequest {
    PromptRequest::new(
        roles.iter().map(|s| s.to_string()).collect(),
        messages.iter().map(|s| s.to_string()).collect(),
        "5Caller",
        Protocol::Legacy,
        timeout,
    )
}

fn reference_case(i: usize) -> (String, String) {
    let text = std::fs::read_to_string(fixture().join("reference_outputs.json")).expect("read");
    let v: serde_json::Value = serde_json::from_str(&text).expect("json");
    let c = &v["cases"][i];
    (
        c["prompt"].as_str().expect("prompt").to_string(),
        c["greedy_24_no_repeat_ngram_2_text"]
            .as_str()
            .expect("text")
            .to_string(),
    )
}

#[tokio::test]
async fn completion_matches_reference_with_python_defaults() {
    let m = miner(&args());
    assert_eq!(m.name(), "btlm-tiny");
    // Reference case 1 is "user: Write one sentence about the sea.\nassistant: ".
    let (prompt, expected) = reference_case(1);
    let req = request(
        &["user"],
        &["Write one sentence about the sea."],
        Duration::from_secs(60),
    );
    assert_eq!(m.prompt_text(&req), prompt);
    // Python defaults: greedy, no_repeat_ngram_size 2 (stop strings do not occur here).
    let out = m.prompt(&req).await.expect("completion");
    assert_eq!(out, expected);
    // Streaming yields the same text, in several pieces.
    let pieces: Vec<String> = m
        .prompt_stream(&req)
        .await
        .expect("stream")
        .map(|r| r.expect("piece"))
        .collect()
        .await;
    assert!(pieces.len() > 1, "{pieces:?}");
    assert_eq!(pieces.concat(), expected);
    assert_eq!(m.engine().stats().completed.load(Ordering::Relaxed), 2);
}

#[tokio::test]
async fn system_prompt_and_injection() {
    let (prompt, expected) = reference_case(0);
    let req = request(
        &["system", "user"],
        &[
            "You are a helpful assistant.",
            "What is the capital of France?",
        ],
        Duration::from_secs(60),
    );
    let m = miner(&args());
    assert_eq!(m.prompt_text(&req), prompt);
    assert_eq!(m.prompt(&req).await.expect("completion"), expected);
    let inj = miner(&BtlmArgs {
        do_prompt_injection: true,
        system_prompt: "SYS ".into(),
        ..args()
    });
    assert_eq!(
        inj.prompt_text(&req),
        "SYS user: What is the capital of France?\nassistant: "
    );
}

#[tokio::test]
async fn overrides_are_applied_and_checked() {
    let m = miner(&args());
    let mut req = request(
        &["user"],
        &["Write one sentence about the sea."],
        Duration::from_secs(60),
    );
    req.sampling.max_tokens = Some(3);
    let (_, expected) = reference_case(1);
    let short = m.prompt(&req).await.expect("short");
    assert!(
        expected.starts_with(&short) && short.len() < expected.len(),
        "{short:?}"
    );

    for (mt, t, p) in [
        (Some(0), None, None),
        (None, Some(-1.0), None),
        (None, None, Some(0.0)),
    ] {
        let mut bad = req.clone();
        bad.sampling.max_tokens = mt;
        bad.sampling.temperature = t;
        bad.sampling.top_p = p;
        assert!(matches!(
            m.prompt(&bad).await,
            Err(MinerError::BadRequest(_))
        ));
    }
    let empty = request(&[], &[], Duration::from_secs(60));
    assert!(matches!(
        m.prompt(&empty).await,
        Err(MinerError::BadRequest(_))
    ));
}

#[tokio::test]
async fn sampling_with_a_seed_is_reproducible() {
    let a = BtlmArgs {
        do_sample: true,
        temperature: 1.0,
        seed: Some(42),
        ..args()
    };
    let m = miner(&a);
    let req = request(&["user"], &["Hello there"], Duration::from_secs(60));
    let x = m.prompt(&req).await.expect("x");
    let y = m.prompt(&req).await.expect("y");
    assert_eq!(x, y);
    let greedy = miner(&args()).prompt(&req).await.expect("greedy");
    assert_ne!(x, greedy, "sampling at temperature 1 differs from greedy");
}

/// A request that generates for a long time: case 0 repeats spaces and never stops by itself.
fn long_request(timeout: Duration) -> PromptRequest {
    let mut r = request(
        &["system", "user"],
        &[
            "You are a helpful assistant.",
            "What is the capital of France?",
        ],
        timeout,
    );
    r.sampling.max_tokens = Some(480);
    r
}

/// One batch slot and one queue place: a second request waits, a third is refused.
fn long_args() -> BtlmArgs {
    BtlmArgs {
        no_repeat_ngram_size: 0,
        stop: Vec::new(),
        queue_size: 1,
        max_batch: 1,
        ..args()
    }
}

#[tokio::test]
async fn deadline_gives_timeout() {
    let m = miner(&long_args());
    // Already past.
    let past = request(&["user"], &["hi"], Duration::ZERO);
    assert!(matches!(m.prompt(&past).await, Err(MinerError::Timeout(_))));
    // Passing while generating.
    let started = std::time::Instant::now();
    let r = m.prompt(&long_request(Duration::from_millis(30))).await;
    assert!(matches!(r, Err(MinerError::Timeout(_))), "{r:?}");
    assert!(started.elapsed() < Duration::from_secs(5));
    // The worker notices and moves on.
    let free = m
        .prompt(&request(&["user"], &["hi"], Duration::from_secs(60)))
        .await;
    assert!(free.is_ok(), "{free:?}");
}

#[tokio::test]
async fn dropped_stream_cancels_and_full_queue_is_overloaded() {
    let m = miner(&long_args());
    let mut running = m
        .prompt_stream(&long_request(Duration::from_secs(120)))
        .await
        .expect("stream");
    // The worker is busy with it once the first piece arrives.
    running.next().await.expect("first piece").expect("text");
    let queued = m
        .prompt_stream(&long_request(Duration::from_secs(120)))
        .await
        .expect("fits in the queue");
    let third = m
        .prompt_stream(&long_request(Duration::from_secs(120)))
        .await;
    assert!(matches!(third, Err(MinerError::Overloaded(_))));
    assert_eq!(m.engine().stats().rejected.load(Ordering::Relaxed), 1);
    // Dropping both streams cancels the running request and skips the queued one.
    drop(running);
    drop(queued);
    let stats = m.engine().stats();
    let t0 = std::time::Instant::now();
    while stats.cancelled.load(Ordering::Relaxed) < 2 {
        assert!(t0.elapsed() < Duration::from_secs(30), "not cancelled");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(stats.tokens.load(Ordering::Relaxed) < 480);
    let ok = m
        .prompt(&request(&["user"], &["hi"], Duration::from_secs(60)))
        .await;
    assert!(ok.is_ok(), "{ok:?}");
}

#[tokio::test]
async fn stop_strings_end_the_completion() {
    // Case 2's completion contains " that": make it a stop string.
    let m = miner(&BtlmArgs {
        stop: vec![" that".into()],
        ..args()
    });
    let req = request(
        &["user"],
        &["Write one sentence about the sea."],
        Duration::from_secs(60),
    );
    let (_, full) = reference_case(1);
    let cut = &full[..full.find(" that").expect("' that' in reference")];
    assert_eq!(m.prompt(&req).await.expect("completion"), cut);
    let streamed: Vec<String> = m
        .prompt_stream(&req)
        .await
        .expect("stream")
        .map(|r| r.expect("piece"))
        .collect()
        .await;
    assert_eq!(streamed.concat(), cut);
}

#[test]
fn bad_settings_fail_before_loading() {
    let cases = [
        (
            BtlmArgs {
                device: "tpu".into(),
                ..args()
            },
            "--btlm.device",
        ),
        (
            BtlmArgs {
                model_dir: Some("/nonexistent".into()),
                ..args()
            },
            "--btlm.model_dir",
        ),
        (
            BtlmArgs {
                temperature: f64::INFINITY,
                ..args()
            },
            "--btlm.temperature",
        ),
    ];
    for (a, needle) in cases {
        let err = BtlmMiner::from_args(&a).expect_err(needle).to_string();
        assert!(err.contains(needle), "{err}");
    }
}

#[tokio::test]
async fn quantized_and_half_miners_answer() {
    use prompting_btlm_backend::options::{ModelDType, Quantization};
    for a in [
        BtlmArgs {
            quantize: Quantization::Q8_0,
            ..args()
        },
        BtlmArgs {
            quantize: Quantization::Q4k,
            ..args()
        },
        BtlmArgs {
            dtype: ModelDType::Bf16,
            ..args()
        },
    ] {
        let m = miner(&a);
        let out = m
            .prompt(&request(&["user"], &["Hello"], Duration::from_secs(60)))
            .await
            .expect("completion");
        assert!(!out.is_empty());
    }
}

/// A request whose key/value cache can never fit the budget is refused as overloaded (a
/// typed error the wire maps to 503), not run into an allocation failure; one that fits is
/// served by the same miner.
#[tokio::test]
async fn a_request_beyond_the_cache_budget_is_overloaded() {
    use prompting_btlm_backend::engine::{Engine, EngineConfig};
    use prompting_btlm_backend::hub::files_in_dir;
    use prompting_btlm_backend::loader::LoadOptions;
    use prompting_btlm_backend::miner::load_model;

    let files = files_in_dir(&fixture()).expect("files");
    let (model, tokenizer) = load_model(&files, &LoadOptions::default()).expect("model");
    let per_token = model.kv_bytes_per_token();
    // Room for 200 tokens of cache: a short answer fits, 480 new tokens never do.
    let engine = Engine::start(
        model,
        tokenizer,
        EngineConfig {
            kv_cache_bytes: 200 * per_token,
            ..long_args().engine()
        },
    )
    .expect("engine");
    let m = BtlmMiner::with_engine(engine, &long_args(), "btlm-tiny").expect("miner");
    let refused = m.prompt(&long_request(Duration::from_secs(60))).await;
    match refused {
        Err(MinerError::Overloaded(message)) => {
            assert!(message.contains("--btlm.kv_cache_mb"), "{message}")
        }
        other => panic!("expected overloaded, got {other:?}"),
    }
    assert_eq!(m.engine().stats().rejected.load(Ordering::Relaxed), 1);
    let ok = m
        .prompt(&request(&["user"], &["hi"], Duration::from_secs(60)))
        .await;
    assert!(ok.is_ok(), "{ok:?}");
}
