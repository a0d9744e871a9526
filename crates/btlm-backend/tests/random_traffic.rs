//! Traffic like a miner's under load, seeded: requests sharing system prompts and contexts,
//! conversations going on, arriving while others run, some dropped by their client, in a
//! cache budget too small for all of them. Every answer that completes equals `generate`'s
//! alone on a new cache, bit for bit (greedy decoding), in every cache layout.

mod support;
use support::{PATIENCE, every_format, fixture, load};

use std::ops::ControlFlow;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use prompting_btlm_backend::engine::{Engine, EngineConfig, Event};
use prompting_btlm_backend::generation::GenerationConfig;
use prompting_btlm_backend::model::Btlm;
use prompting_btlm_backend::sequence::generate;
use prompting_btlm_backend::tokenizer::BtlmTokenizer;
use tokio::sync::mpsc::UnboundedReceiver;
use tokio::sync::mpsc::error::TryRecvError;

/// xorshift64*: the test's choices, the same for a seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

const SYSTEMS: [&str; 3] = [
    "system: You are a helpful assistant.\n",
    "system: You are helpful.\n",
    "",
];
const CONTEXTS: [&str; 3] = [
    "The lighthouse stood on the northern cliff for two hundred years. ",
    "Rust is a systems programming language focused on safety and speed. ",
    "",
];
const QUESTIONS: [&str; 5] = [
    "What is the capital of France?",
    "Write one sentence about the sea.",
    "Explain why the sky is blue.",
    "Tell me a story.",
    "Summarize the text above.",
];

/// A request in flight: its prompt, settings, and whether its client drops it after some
/// events.
struct Asked {
    prompt: String,
    config: GenerationConfig,
    drop_after: Option<usize>,
    rx: UnboundedReceiver<Event>,
    events: usize,
}

fn settings(rng: &mut Rng) -> GenerationConfig {
    GenerationConfig {
        max_new_tokens: 4 + rng.below(28),
        no_repeat_ngram_size: rng.below(3),
        stop: Vec::new(),
        prefill_chunk: [8, 16, 64][rng.below(3)],
        ignore_eos: true,
        ..GenerationConfig::default()
    }
}

/// Runs `total` requests of seeded traffic through an engine on `model` and checks every
/// completed answer against the same request alone.
fn random_traffic(model: &Btlm, label: &str, seed: u64, total: usize) {
    let tok = BtlmTokenizer::from_dir(&fixture()).expect("tokenizer");
    let per_token = model.kv_bytes_per_token();
    let engine = Engine::start(
        model.clone(),
        tok.clone(),
        EngineConfig {
            max_batch: 4,
            // Room for about five sequences' caches of 64–128 positions.
            kv_cache_bytes: 500 * per_token,
            prefill_tokens_per_step: 24,
            queue_size: 64,
            piggyback_prefill: true,
            kv_pool: true,
            spare_caches: 4,
            prefix_reuse: true,
            deadline_headroom: None,
            ..EngineConfig::default()
        },
    )
    .expect("engine");
    let mut rng = Rng(seed);
    // Each conversation's text so far (a follow-up continues one).
    let mut conversations: Vec<String> = Vec::new();
    let mut in_flight: Vec<Asked> = Vec::new();
    let mut done: Vec<(String, GenerationConfig, Vec<u32>)> = Vec::new();
    let mut submitted = 0;
    let t0 = Instant::now();
    while submitted < total || !in_flight.is_empty() {
        assert!(t0.elapsed() < PATIENCE * 4, "{label}: traffic did not end");
        if submitted < total && in_flight.len() < 6 && rng.below(3) == 0 {
            let prompt = if !conversations.is_empty() && rng.below(3) == 0 {
                let i = rng.below(conversations.len());
                format!(
                    "{}\nuser: {}\nassistant:",
                    conversations[i],
                    QUESTIONS[rng.below(QUESTIONS.len())]
                )
            } else {
                format!(
                    "{}user: {}{}\nassistant:",
                    SYSTEMS[rng.below(SYSTEMS.len())],
                    CONTEXTS[rng.below(CONTEXTS.len())],
                    QUESTIONS[rng.below(QUESTIONS.len())]
                )
            };
            let config = settings(&mut rng);
            let drop_after = (rng.below(5) == 0).then(|| rng.below(4));
            let rx = engine
                .submit(&prompt, config.clone(), None)
                .unwrap_or_else(|e| panic!("{label}: submit: {e}"));
            in_flight.push(Asked {
                prompt,
                config,
                drop_after,
                rx,
                events: 0,
            });
            submitted += 1;
        }
        let mut i = 0;
        while i < in_flight.len() {
            let a = &mut in_flight[i];
            if a.drop_after.is_some_and(|n| a.events >= n) {
                in_flight.swap_remove(i);
                continue;
            }
            match a.rx.try_recv() {
                Ok(Event::Text(..)) => a.events += 1,
                Ok(Event::Done(result)) => {
                    let a = in_flight.swap_remove(i);
                    let g = result.unwrap_or_else(|e| panic!("{label}: {e}"));
                    if conversations.len() < 8 {
                        conversations.push(format!("{}{}", a.prompt, g.text));
                    }
                    done.push((a.prompt, a.config, g.tokens));
                    continue;
                }
                Err(TryRecvError::Empty) => {}
                Err(TryRecvError::Disconnected) => panic!("{label}: the engine dropped a request"),
            }
            i += 1;
        }
        std::thread::sleep(Duration::from_micros(200 + rng.below(800) as u64));
    }
    assert!(done.len() >= total / 2, "{label}: {} answers", done.len());
    for (prompt, config, tokens) in &done {
        let ids = tok.encode(prompt).expect("encode");
        let alone = generate(
            model,
            &tok,
            &ids,
            config,
            || None,
            |_| ControlFlow::Continue(()),
        )
        .expect("alone");
        assert_eq!(
            tokens, &alone.tokens,
            "{label} (seed {seed}): {prompt:?} {ids:?} {config:?}"
        );
    }
    // Requests whose client left end at the engine's next step.
    let stats = engine.stats();
    let reserved = || stats.kv_reserved_bytes.load(Ordering::Relaxed);
    let start = Instant::now();
    while reserved() != 0 {
        assert!(start.elapsed() < PATIENCE, "{label}: caches still reserved");
        std::thread::sleep(Duration::from_millis(2));
    }
    assert_eq!(stats.running.load(Ordering::Relaxed), 0, "{label}");
}

#[test]
fn random_traffic_answers_equal_answers_alone() {
    // Each cache layout (f32, f16, int8, 4-bit) once.
    let layouts = ["f32", "f16", "q4k, int8 cache", "q4k, 4-bit cache"];
    let formats = every_format()
        .into_iter()
        .filter(|(label, _)| layouts.contains(label));
    for (label, opts) in formats {
        let model = load("model.safetensors", &opts);
        for seed in 1u64..=3 {
            random_traffic(&model, label, seed.wrapping_mul(0x9e37_79b9_7f4a_7c15), 60);
        }
    }
}
