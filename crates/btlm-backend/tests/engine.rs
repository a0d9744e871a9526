//! The batching engine: answers in a batch equal answers alone (tiny checkpoint, every
//! weight format), streaming per sequence, cancellation, the cache budget, deadlines, a
//! panicking step, admission in the pipeline's priority order, and caches reused from the
//! engine's pool (same answers as new ones, within the budget). Scripted models (no
//! weights) make the scheduling tests deterministic: they step only when the test lets
//! them.

mod support;
use support::{PATIENCE, every_format, fixture, load, wait_for};

use std::collections::HashMap;
use std::ops::ControlFlow;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use prompting_btlm_backend::engine::{Engine, EngineConfig, Event, StepModel, SubmitError};
use prompting_btlm_backend::error::{BtlmError, Result};
use prompting_btlm_backend::generation::{FinishReason, Generation, GenerationConfig};
use prompting_btlm_backend::loader::LoadOptions;
use prompting_btlm_backend::model::{Btlm, Segment};
use prompting_btlm_backend::sequence::generate;
use prompting_btlm_backend::tokenizer::BtlmTokenizer;
use prompting_btlm_backend::{BtlmArgs, BtlmMiner};
use tokio::sync::mpsc::UnboundedReceiver;

fn tokenizer() -> BtlmTokenizer {
    BtlmTokenizer::from_dir(&fixture()).expect("tiny tokenizer")
}

/// A permit counter the scripted models wait on before each step (at most [`PATIENCE`]).
#[derive(Default)]
struct Gate {
    state: Mutex<GateState>,
    changed: Condvar,
}

#[derive(Default)]
struct GateState {
    open: bool,
    permits: usize,
    /// A step is waiting for a permit.
    blocked: bool,
}

impl Gate {
    fn pass(&self) {
        let mut s = self.state.lock().expect("gate");
        let t0 = Instant::now();
        while !s.open && s.permits == 0 {
            s.blocked = true;
            self.changed.notify_all();
            let (next, _) = self
                .changed
                .wait_timeout(s, Duration::from_millis(50))
                .expect("gate");
            s = next;
            assert!(t0.elapsed() < PATIENCE, "the test never let the step run");
        }
        s.blocked = false;
        if !s.open {
            s.permits -= 1;
        }
        self.changed.notify_all();
    }

    fn allow(&self, steps: usize) {
        self.state.lock().expect("gate").permits += steps;
        self.changed.notify_all();
    }

    fn set_open(&self, open: bool) {
        self.state.lock().expect("gate").open = open;
        self.changed.notify_all();
    }

    /// Waits until a step waits for a permit.
    fn wait_blocked(&self) {
        let mut s = self.state.lock().expect("gate");
        let t0 = Instant::now();
        while !s.blocked {
            let (next, _) = self
                .changed
                .wait_timeout(s, Duration::from_millis(50))
                .expect("gate");
            s = next;
            assert!(t0.elapsed() < PATIENCE, "the engine never stepped");
        }
    }
}

/// A model without weights: the next token is always [`Scripted::NEXT`]; every step waits at
/// the gate, records its segments, and panics when a segment holds the poison token.
#[derive(Clone)]
struct Scripted {
    gate: Arc<Gate>,
    /// Per step: the tokens of each segment.
    steps: Arc<Mutex<Vec<Vec<Vec<u32>>>>>,
    /// Prompts in the order their first piece ran.
    started: Arc<Mutex<Vec<Vec<u32>>>>,
    poison: Option<u32>,
    vocab: usize,
    /// What [`StepModel::rows_independent`] answers.
    rows_independent: bool,
}

impl Scripted {
    const NEXT: u32 = 500;
    const KV_BYTES_PER_TOKEN: usize = 1000;

    fn new() -> Self {
        Scripted {
            gate: Arc::new(Gate::default()),
            steps: Arc::default(),
            started: Arc::default(),
            poison: None,
            vocab: 1001,
            rows_independent: true,
        }
    }

    fn peak_batch(&self) -> usize {
        let steps = self.steps.lock().expect("steps");
        steps.iter().map(Vec::len).max().unwrap_or(0)
    }
}

impl StepModel for Scripted {
    type Cache = usize;

    fn context(&self) -> usize {
        512
    }

    fn kv_bytes_per_token(&self) -> usize {
        Self::KV_BYTES_PER_TOKEN
    }

    fn new_cache(&self, _positions: usize) -> usize {
        0
    }

    fn step(&self, segments: &mut [Segment<'_, usize>]) -> Result<Vec<Vec<f32>>> {
        self.gate.pass();
        let mut rows = Vec::new();
        for s in segments.iter_mut() {
            if let Some(p) = self.poison {
                assert!(!s.tokens.contains(&p), "poisoned segment");
            }
            if *s.cache == 0 {
                self.started
                    .lock()
                    .expect("started")
                    .push(s.tokens.to_vec());
            }
            *s.cache += s.tokens.len();
            if s.logits {
                let mut row = vec![0.0; self.vocab];
                row[Self::NEXT as usize] = 1.0;
                rows.push(row);
            }
        }
        let seen = segments.iter().map(|s| s.tokens.to_vec()).collect();
        self.steps.lock().expect("steps").push(seen);
        Ok(rows)
    }

    fn rows_independent(&self) -> bool {
        self.rows_independent
    }
}

/// Lets the first step of the wrapped model wait until the test releases it, so that every
/// request submitted meanwhile joins the batch at the next step boundary.
struct HeldFirstStep<M> {
    inner: M,
    release: Mutex<Option<std::sync::mpsc::Receiver<()>>>,
}

impl<M: StepModel + Sync> StepModel for HeldFirstStep<M> {
    type Cache = M::Cache;

    fn context(&self) -> usize {
        self.inner.context()
    }

    fn kv_bytes_per_token(&self) -> usize {
        self.inner.kv_bytes_per_token()
    }

    fn new_cache(&self, positions: usize) -> M::Cache {
        self.inner.new_cache(positions)
    }

    fn recycles_caches(&self) -> bool {
        self.inner.recycles_caches()
    }

    fn recycle_cache(&self, cache: M::Cache) -> Option<(M::Cache, usize)> {
        self.inner.recycle_cache(cache)
    }

    fn step(&self, segments: &mut [Segment<'_, M::Cache>]) -> Result<Vec<Vec<f32>>> {
        let held = self.release.lock().expect("release").take();
        if let Some(rx) = held {
            rx.recv_timeout(PATIENCE)
                .map_err(|_| BtlmError::Engine("never released".into()))?;
        }
        self.inner.step(segments)
    }

    fn rows_independent(&self) -> bool {
        self.inner.rows_independent()
    }
}

/// Everything a request's receiver got.
#[derive(Debug)]
struct Outcome {
    pieces: Vec<String>,
    done: Result<Generation>,
}

fn collect(mut rx: UnboundedReceiver<Event>) -> Outcome {
    let mut pieces = Vec::new();
    let t0 = Instant::now();
    loop {
        assert!(t0.elapsed() < PATIENCE, "no Done event");
        match rx.try_recv() {
            Ok(Event::Text(t, _)) => pieces.push(t),
            Ok(Event::Done(done)) => return Outcome { pieces, done },
            Err(tokio::sync::mpsc::error::TryRecvError::Empty) => {
                std::thread::sleep(Duration::from_millis(1))
            }
            Err(e) => panic!("engine dropped the request: {e}"),
        }
    }
}

fn engine_config(max_batch: usize) -> EngineConfig {
    EngineConfig {
        max_batch,
        kv_cache_bytes: 64 << 20,
        prefill_tokens_per_step: 8,
        queue_size: 16,
        piggyback_prefill: false,
        kv_pool: true,
        // Blank caches made while idle would change the pool's figures between a test's
        // requests; `blank_caches_made_while_idle_give_the_answers_of_new_ones` has them.
        spare_caches: 0,
        prefix_reuse: true,
        // The scripted steps take as long as the test holds them: no step times to
        // project deadlines from (the guard has tests of its own, in the crate).
        deadline_headroom: None,
        ..EngineConfig::default()
    }
}

fn greedy(max_new: usize, ngram: usize) -> GenerationConfig {
    GenerationConfig {
        max_new_tokens: max_new,
        no_repeat_ngram_size: ngram,
        stop: Vec::new(),
        prefill_chunk: 8,
        ..GenerationConfig::default()
    }
}

#[derive(serde::Deserialize)]
struct Reference {
    cases: Vec<Case>,
}

#[derive(serde::Deserialize)]
struct Case {
    prompt: String,
    input_ids: Vec<u32>,
    greedy_24: Vec<u32>,
    greedy_24_no_repeat_ngram_2: Vec<u32>,
}

fn reference() -> Reference {
    let text = std::fs::read_to_string(fixture().join("reference_outputs.json")).expect("read");
    serde_json::from_str(&text).expect("reference")
}

/// How the prompts of [`check_batched_equals_alone`] share the steps.
#[derive(Clone, Copy)]
enum Steps {
    /// Each prompt in passes of its own, one piece of 8 tokens a step.
    Apart,
    /// The pieces in the decode rows' pass, `budget` prompt tokens a step: at 8 one
    /// prompt's piece, the oldest, until it is done; at 24 three prompts' pieces at once,
    /// so that a prompt admitted first is still prefilling while a later one decodes
    /// already, and both want logits in the step of its last piece.
    Piggyback { budget: usize },
}

/// Runs the four reference prompts together in one engine (all four join the batch while
/// the first step is held; prompts of 13–57 tokens are prefilled in pieces of 8 while the
/// others decode) and alone with [`generate`]; the answers must be identical. Each sequence
/// has its own settings: greedy with and without the n-gram ban, and a seeded sample.
fn check_batched_equals_alone(model: Btlm, label: &str, steps: Steps, exact_reference: bool) {
    let (piggyback, budget) = match steps {
        Steps::Apart => (false, 8),
        Steps::Piggyback { budget } => (true, budget),
    };
    let r = reference();
    let tok = tokenizer();
    let settings: Vec<GenerationConfig> = (0..r.cases.len())
        .map(|i| match i {
            3 => GenerationConfig {
                do_sample: true,
                temperature: 0.9,
                top_k: 20,
                seed: Some(11),
                ..greedy(24, 0)
            },
            i => greedy(24, if i % 2 == 0 { 0 } else { 2 }),
        })
        // Every answer runs to the token limit, so the four stay in the batch together
        // whatever the format's rounding makes of the tiny model's end-of-text odds.
        .map(|cfg| GenerationConfig {
            ignore_eos: true,
            ..cfg
        })
        .collect();
    let alone: Vec<Generation> = r
        .cases
        .iter()
        .zip(&settings)
        .map(|(case, cfg)| {
            generate(
                &model,
                &tok,
                &case.input_ids,
                cfg,
                || None,
                |_| ControlFlow::Continue(()),
            )
            .expect("alone")
        })
        .collect();
    let (release, held) = std::sync::mpsc::channel();
    let engine = Engine::start(
        HeldFirstStep {
            inner: model,
            release: Mutex::new(Some(held)),
        },
        tok.clone(),
        EngineConfig {
            piggyback_prefill: piggyback,
            prefill_tokens_per_step: budget,
            ..engine_config(4)
        },
    )
    .expect("engine");
    let receivers: Vec<_> = r
        .cases
        .iter()
        .zip(&settings)
        .map(|(case, cfg)| {
            engine
                .submit(&case.prompt, cfg.clone(), None)
                .expect("submit")
        })
        .collect();
    release.send(()).expect("release");
    for (i, (rx, alone)) in receivers.into_iter().zip(&alone).enumerate() {
        let out = collect(rx);
        let g = out.done.expect("batched generation");
        assert_eq!(g.tokens, alone.tokens, "{label}: case {i}");
        assert_eq!(g.text, alone.text, "{label}: case {i}");
        assert_eq!(g.finish, FinishReason::Length);
        assert_eq!(out.pieces.concat(), g.text, "{label}: streamed pieces");
        assert!(out.pieces.len() > 1, "{label}: case {i} streamed in pieces");
        if exact_reference && i < 3 {
            let expected = if i % 2 == 0 {
                &r.cases[i].greedy_24
            } else {
                &r.cases[i].greedy_24_no_repeat_ngram_2
            };
            assert_eq!(&g.tokens, expected, "{label}: case {i} vs PyTorch");
        }
    }
    let stats = engine.stats();
    assert_eq!(stats.peak_batch.load(Ordering::Relaxed), 4, "{label}");
    assert_eq!(stats.completed.load(Ordering::Relaxed), 4);
    assert_eq!(stats.running.load(Ordering::Relaxed), 0);
    assert_eq!(stats.kv_reserved_bytes.load(Ordering::Relaxed), 0);
}

#[test]
fn batched_answers_equal_answers_alone_f32() {
    let model = load("model.safetensors", &LoadOptions::default());
    check_batched_equals_alone(model.clone(), "f32", Steps::Apart, true);
    for budget in [8, 24] {
        let label = format!("f32 piggyback {budget}");
        check_batched_equals_alone(model.clone(), &label, Steps::Piggyback { budget }, true);
    }
    let bin = load("pytorch_model.bin", &LoadOptions::default());
    check_batched_equals_alone(bin, "f32 .bin", Steps::Apart, true);
}

/// Where a product computes rows differently when more rows share it (the AMX tile unit,
/// from 16 rows for bf16 and 32 for q8_0/q4k), the engine still lets prompt pieces that
/// reach that route alone share a pass: `batched_answers_equal_answers_alone_half_and_quantized`
/// again in a child process with `BTLM_MANY_ROWS=12` (read once per process), so that all
/// four reference prompts (13–57 tokens) share one, in every format.
#[test]
fn batched_answers_equal_answers_alone_when_prompt_pieces_share_a_pass() {
    if std::env::var("BTLM_MANY_ROWS").is_ok() {
        return; // the child: the test below runs there
    }
    support::with_many_rows(
        "batched_answers_equal_answers_alone_half_and_quantized",
        "12",
    );
}

#[test]
fn batched_answers_equal_answers_alone_half_and_quantized() {
    for (label, opts) in every_format().into_iter().filter(|(l, _)| *l != "f32") {
        let model = load("model.safetensors", &opts);
        check_batched_equals_alone(model.clone(), label, Steps::Apart, false);
        for budget in [8, 24] {
            let steps = Steps::Piggyback { budget };
            let label = format!("{label} piggyback {budget}");
            check_batched_equals_alone(model.clone(), &label, steps, false);
        }
    }
}

fn scripted_engine(model: &Scripted, config: EngineConfig) -> Engine {
    Engine::start(model.clone(), tokenizer(), config).expect("engine")
}

#[test]
fn a_dropped_receiver_frees_its_slot_at_the_next_step() {
    let model = Scripted::new();
    let engine = scripted_engine(&model, engine_config(1));
    let mut a = engine
        .submit("hello there", greedy(400, 0), None)
        .expect("a");
    model.gate.allow(1);
    // A's prompt step produced its first token and text.
    let t0 = Instant::now();
    loop {
        match a.try_recv() {
            Ok(Event::Text(..)) => break,
            Ok(Event::Done(d)) => panic!("ended early: {d:?}"),
            Err(_) => {
                assert!(t0.elapsed() < PATIENCE, "no first piece");
                std::thread::sleep(Duration::from_millis(1));
            }
        }
    }
    // The engine waits in A's second step; A's receiver goes away meanwhile.
    model.gate.wait_blocked();
    drop(a);
    let b = engine.submit("bye", greedy(3, 0), None).expect("b");
    model.gate.set_open(true);
    let out = collect(b);
    assert_eq!(out.done.expect("b").finish, FinishReason::Length);
    let stats = engine.stats();
    assert_eq!(stats.cancelled.load(Ordering::Relaxed), 1);
    // A's two tokens, B's three: A ran no step after its receiver went away, and B had
    // its slot at the next step.
    assert_eq!(stats.tokens.load(Ordering::Relaxed), 5);
    assert_eq!(model.peak_batch(), 1);
}

/// With the default limits, prompts that arrive while a step runs are prefilled together
/// at the next step, in the same pass as the decode rows; the step counters add up.
#[test]
fn prompts_arriving_together_are_prefilled_in_one_pass_with_the_decode_rows() {
    let model = Scripted::new();
    let tok = tokenizer();
    let later = ["one", "two more", "and three"];
    let (engine, steps) = prompts_joining_a_running_one(&model, &later);
    let prompt_len = |p: &str| tok.encode(p).expect("encode").len();
    assert_eq!(steps[0].len(), 1, "the first prompt alone");
    let second: Vec<usize> = steps[1].iter().map(Vec::len).collect();
    let mut expected = vec![1];
    expected.extend(later.iter().map(|p| prompt_len(p)));
    assert_eq!(
        second, expected,
        "first's decode row and three prompts, one pass"
    );
    let t = engine.stats().timing();
    assert_eq!(t.passes, steps.len() as u64, "one pass per step");
    assert_eq!(t.steps, steps.len() as u64);
    let prompt_rows: usize =
        prompt_len("hello there") + later.iter().map(|p| prompt_len(p)).sum::<usize>();
    assert_eq!(t.prompt_rows, prompt_rows as u64);
    // Each request's first token comes from its prompt pass, the other two from decode rows.
    assert_eq!(t.decode_rows, 4 * 2);
    assert_eq!(t.admitted, 4);
    assert!(t.step_nanos >= t.model_nanos && t.model_nanos >= t.prompt_pass_nanos);
    assert!(t.prompt_pass_nanos > 0);
    assert_eq!(
        t.since(&t),
        prompting_btlm_backend::engine::StepTiming::default()
    );
}

/// With the default limits, the prompts of a full batch that arrive together each run a
/// piece in every step (eight pieces of the default 64 tokens fit the default 512 a step),
/// so they finish prefilling in the same step and answer together.
#[test]
fn a_full_batchs_prompts_each_run_a_piece_in_every_step() {
    let model = Scripted::new();
    let tok = tokenizer();
    let defaults = EngineConfig::default();
    let text = "word ".repeat(30);
    let later: Vec<String> = (1..defaults.max_batch)
        .map(|i| format!("{i} {text}"))
        .collect();
    let later: Vec<&str> = later.iter().map(String::as_str).collect();
    let lens: Vec<usize> = later
        .iter()
        .map(|p| tok.encode(p).expect("encode").len())
        .collect();
    assert!(
        lens.iter().all(|&n| n > 64 && n <= 128),
        "two pieces each: {lens:?}"
    );
    let (_engine, steps) = prompts_joining_a_running_one(&model, &later);
    let rows = |s: &[Vec<u32>]| -> Vec<usize> { s.iter().map(Vec::len).collect() };
    let mut first_pieces = vec![1];
    first_pieces.extend(lens.iter().map(|_| 64));
    assert_eq!(rows(&steps[1]), first_pieces, "every prompt's first piece");
    let mut second_pieces = vec![1];
    second_pieces.extend(lens.iter().map(|n| n - 64));
    assert_eq!(rows(&steps[2]), second_pieces, "every prompt's last piece");
}

/// With the default engine settings: "hello there" runs its first step (held at the gate)
/// while `later` are submitted, then all run to 3 tokens. Returns the engine and the
/// segments of every step.
fn prompts_joining_a_running_one(model: &Scripted, later: &[&str]) -> (Engine, Vec<Vec<Vec<u32>>>) {
    let engine = scripted_engine(model, EngineConfig::default());
    let cfg = || GenerationConfig {
        prefill_chunk: 64,
        ..greedy(3, 0)
    };
    let first = engine.submit("hello there", cfg(), None).expect("first");
    model.gate.wait_blocked();
    let receivers: Vec<_> = later
        .iter()
        .map(|p| engine.submit(p, cfg(), None).expect("later"))
        .collect();
    model.gate.set_open(true);
    for rx in std::iter::once(first).chain(receivers) {
        assert_eq!(collect(rx).done.expect("done").tokens.len(), 3);
    }
    let steps = model.steps.lock().expect("steps").clone();
    (engine, steps)
}

/// A model whose rows depend on what shares their pass (AMX bf16 tiles for many rows, say)
/// never gets prompt pieces in the decode rows' pass, even with piggybacking asked for.
#[test]
fn prompts_run_alone_when_the_model_computes_rows_differently_in_company() {
    let model = Scripted {
        rows_independent: false,
        ..Scripted::new()
    };
    let tok = tokenizer();
    assert!(EngineConfig::default().piggyback_prefill);
    let (engine, steps) = prompts_joining_a_running_one(&model, &["one", "two more"]);
    let prompt_len = |p: &str| tok.encode(p).expect("encode").len();
    let passes: Vec<Vec<usize>> = steps[..4]
        .iter()
        .map(|s| s.iter().map(Vec::len).collect())
        .collect();
    assert_eq!(
        passes,
        [
            vec![prompt_len("hello there")],
            vec![1],
            vec![prompt_len("one")],
            vec![prompt_len("two more")],
        ],
        "the first's decode row, then each prompt in a pass of its own"
    );
    let t = engine.stats().timing();
    assert_eq!(t.passes, steps.len() as u64);
    assert!(t.steps < t.passes, "some steps ran more than one pass");
}

#[test]
fn the_cache_budget_refuses_what_never_fits_and_queues_what_does_not_fit_yet() {
    let model = Scripted::new();
    let tok = tokenizer();
    let prompt = "hello";
    let n = tok.encode(prompt).expect("encode").len();
    // Room for one request of the prompt plus 10 tokens, not two.
    let budget = (n + 10) * Scripted::KV_BYTES_PER_TOKEN + 10;
    let engine = scripted_engine(
        &model,
        EngineConfig {
            kv_cache_bytes: budget,
            ..engine_config(4)
        },
    );
    let err = engine
        .submit(prompt, greedy(40, 0), None)
        .expect_err("never fits");
    assert!(matches!(err, SubmitError::TooLarge { .. }), "{err}");
    assert!(err.to_string().contains("--btlm.kv_cache_mb"), "{err}");
    let first = engine.submit(prompt, greedy(10, 0), None).expect("first");
    model.gate.wait_blocked();
    let second = engine.submit(prompt, greedy(10, 0), None).expect("second");
    let stats = engine.stats();
    assert_eq!(stats.waiting.load(Ordering::Relaxed), 1);
    model.gate.set_open(true);
    for rx in [first, second] {
        assert_eq!(collect(rx).done.expect("done").tokens.len(), 10);
    }
    assert_eq!(
        model.peak_batch(),
        1,
        "never together: the budget holds one"
    );
    assert_eq!(stats.rejected.load(Ordering::Relaxed), 1);
}

/// The order in which the scripted model saw the prompts' first pieces, by prompt text.
fn start_order<'a>(model: &Scripted, prompts: &[&'a str]) -> Vec<&'a str> {
    let tok = tokenizer();
    let label: HashMap<Vec<u32>, &str> = prompts
        .iter()
        .map(|p| (tok.encode(p).expect("encode"), *p))
        .collect();
    assert_eq!(label.len(), prompts.len(), "prompts encode apart");
    model
        .started
        .lock()
        .expect("started")
        .iter()
        .map(|ids| label.get(ids).copied().unwrap_or("?"))
        .collect()
}

/// Room in the cache for the longest of `prompts` plus `new_tokens`, and `extra` bytes.
fn room_for(prompts: &[&str], new_tokens: usize, extra: usize) -> usize {
    let tok = tokenizer();
    let longest = prompts
        .iter()
        .map(|p| tok.encode(p).expect("encode").len())
        .max()
        .unwrap_or(0);
    (longest + new_tokens) * Scripted::KV_BYTES_PER_TOKEN + extra
}

#[test]
fn waiting_requests_are_admitted_highest_priority_first_ties_oldest_first() {
    let model = Scripted::new();
    let prompts = ["first", "low", "nan", "mid", "low again", "high"];
    // Batch slots to spare, cache room for one request at a time.
    let engine = scripted_engine(
        &model,
        EngineConfig {
            kv_cache_bytes: room_for(&prompts, 3, 0),
            ..engine_config(8)
        },
    );
    let first = engine
        .submit_ranked("first", greedy(3, 0), None, 0.0)
        .expect("first");
    model.gate.wait_blocked();
    let mut queued = Vec::new();
    for (prompt, priority) in [
        ("low", 1.0),
        ("nan", f64::NAN),
        ("mid", 5.0),
        ("low again", 1.0),
        ("high", 10.0),
    ] {
        queued.push(
            engine
                .submit_ranked(prompt, greedy(3, 0), None, priority)
                .expect("queued"),
        );
    }
    model.gate.set_open(true);
    for rx in std::iter::once(first).chain(queued) {
        assert_eq!(collect(rx).done.expect("done").tokens.len(), 3);
    }
    assert_eq!(
        start_order(&model, &prompts),
        ["first", "high", "mid", "low", "low again", "nan"]
    );
    assert_eq!(model.peak_batch(), 1, "the budget holds one at a time");
}

/// The best waiting request does not fit yet, smaller lower-ranked ones would: they wait
/// behind it rather than take the room it waits for (which a steady stream of them could do
/// forever).
#[test]
fn a_high_priority_request_that_does_not_fit_yet_is_not_overtaken_by_smaller_ones() {
    let model = Scripted::new();
    let prompts = ["small", "big", "low one", "low two"];
    // Room for the big request alone, or for the small ones together, never for the big
    // one beside another.
    let budget = room_for(&["big"], 30, 0);
    assert!(room_for(&prompts, 3, 0) * 3 <= budget);
    let engine = scripted_engine(
        &model,
        EngineConfig {
            kv_cache_bytes: budget,
            ..engine_config(8)
        },
    );
    let running = engine
        .submit_ranked("small", greedy(3, 0), None, 0.0)
        .expect("small");
    model.gate.wait_blocked();
    let big = engine
        .submit_ranked("big", greedy(30, 0), None, 10.0)
        .expect("big");
    let lows: Vec<_> = ["low one", "low two"]
        .into_iter()
        .map(|p| engine.submit_ranked(p, greedy(3, 0), None, 1.0).expect(p))
        .collect();
    // The low ones would fit beside the running one: only the rule holds them back.
    model.gate.set_open(true);
    assert_eq!(collect(running).done.expect("small").tokens.len(), 3);
    assert_eq!(collect(big).done.expect("big").tokens.len(), 30);
    for rx in lows {
        assert_eq!(collect(rx).done.expect("low").tokens.len(), 3);
    }
    assert_eq!(
        start_order(&model, &prompts),
        ["small", "big", "low one", "low two"]
    );
}

#[test]
fn a_deadline_ends_its_sequence_and_the_rest_of_the_batch_goes_on() {
    let model = Scripted::new();
    let engine = scripted_engine(&model, engine_config(4));
    let deadline = Instant::now() + Duration::from_millis(200);
    let short = engine
        .submit("hello", greedy(100, 0), Some(deadline))
        .expect("short");
    let long = engine.submit("bye", greedy(5, 0), None).expect("long");
    model.gate.allow(2);
    std::thread::sleep(Duration::from_millis(300));
    assert!(Instant::now() > deadline);
    model.gate.set_open(true);
    let s = collect(short).done.expect("short");
    assert_eq!(s.finish, FinishReason::Deadline);
    assert!(s.tokens.len() < 100);
    let l = collect(long).done.expect("long");
    assert_eq!((l.finish, l.tokens.len()), (FinishReason::Length, 5));
    assert_eq!(engine.stats().timed_out.load(Ordering::Relaxed), 1);
}

/// Prompt pieces run in passes of their own (the default): a panic fails the sequence of
/// that pass only; with piggybacking the whole batch shares one pass and fails together.
#[test]
fn a_panicking_step_fails_its_sequences_and_the_engine_keeps_serving() {
    for piggyback in [false, true] {
        panicking_step(piggyback);
    }
}

fn panicking_step(piggyback: bool) {
    let tok = tokenizer();
    let poison = *tok
        .encode("poison")
        .expect("encode")
        .first()
        .expect("a token");
    let model = Scripted {
        poison: Some(poison),
        ..Scripted::new()
    };
    let engine = scripted_engine(
        &model,
        EngineConfig {
            piggyback_prefill: piggyback,
            ..engine_config(4)
        },
    );
    // Hold a first request in its step while the next two arrive: they share the next step.
    let first = engine.submit("hello", greedy(1, 0), None).expect("first");
    model.gate.wait_blocked();
    let bad = engine.submit("poison", greedy(5, 0), None).expect("bad");
    let good = engine.submit("bye", greedy(5, 0), None).expect("good");
    model.gate.set_open(true);
    assert!(collect(first).done.is_ok());
    let err = collect(bad).done.expect_err("failed with its step");
    assert!(err.to_string().contains("panicked"), "{err}");
    let good = collect(good).done;
    if piggyback {
        let err = good.expect_err("same pass as the poison");
        assert!(err.to_string().contains("panicked"), "{err}");
    } else {
        assert_eq!(good.expect("own pass").tokens.len(), 5);
    }
    let after = engine.submit("bye", greedy(3, 0), None).expect("after");
    assert_eq!(collect(after).done.expect("served").tokens.len(), 3);
    let stats = engine.stats();
    let failed = if piggyback { 2 } else { 1 };
    assert_eq!(stats.failed.load(Ordering::Relaxed), failed);
    assert_eq!(stats.running.load(Ordering::Relaxed), 0);
}

#[test]
fn the_queue_bound_and_bad_prompts_are_refused_at_submission() {
    let model = Scripted::new();
    let engine = scripted_engine(
        &model,
        EngineConfig {
            queue_size: 1,
            ..engine_config(1)
        },
    );
    let _running = engine.submit("hello", greedy(5, 0), None).expect("runs");
    model.gate.wait_blocked();
    let _waiting = engine.submit("hello", greedy(5, 0), None).expect("waits");
    assert_eq!(
        engine.submit("hello", greedy(5, 0), None).err(),
        Some(SubmitError::QueueFull)
    );
    assert!(matches!(
        engine.submit("", greedy(5, 0), None),
        Err(SubmitError::Invalid(_))
    ));
    assert!(matches!(
        engine.submit("hello", greedy(0, 0), None),
        Err(SubmitError::Invalid(_))
    ));
    model.gate.set_open(true);
}

mod priority {
    //! The miner's batch slots are what the pipeline's priority queue hands out.

    use super::*;
    use prompting_miner::{
        Metagraph, MetagraphView, Miner, MinerConfig, NeuronInfo, Pipeline, PromptRequest,
        Protocol, SharedMetagraph, TokenUsage,
    };

    fn neuron(uid: u16, hotkey: &str, stake: f64) -> NeuronInfo {
        NeuronInfo {
            uid,
            hotkey: hotkey.into(),
            coldkey: String::new(),
            stake,
            validator_permit: true,
            axon: None,
            ..NeuronInfo::default()
        }
    }

    fn request(caller: &str) -> PromptRequest {
        let mut r = PromptRequest::new(
            vec!["user".into()],
            vec![format!("question from {caller}")],
            caller,
            Protocol::Legacy,
            PATIENCE,
        );
        r.sampling.max_tokens = Some(4);
        r
    }

    /// Gives "low", "mid" and "high" a history (so their stake is their priority), then
    /// starts a "filler" request and returns once the model is blocked on it.
    async fn warm_up_then_fill(
        pipeline: &Pipeline,
        model: &Scripted,
    ) -> tokio::task::JoinHandle<Result<String, prompting_miner::MinerError>> {
        model.gate.set_open(true);
        for caller in ["low", "mid", "high"] {
            pipeline.prompt(request(caller)).await.expect("warm-up");
        }
        model.gate.set_open(false);
        model.started.lock().expect("started").clear();
        let filler = tokio::spawn({
            let p = pipeline.clone();
            async move { p.prompt(request("filler")).await }
        });
        let gate = Arc::clone(&model.gate);
        tokio::task::spawn_blocking(move || gate.wait_blocked())
            .await
            .expect("blocked");
        filler
    }

    /// A BTLM miner on `model` with `max_batch` slots, generating without n-gram bans or
    /// stop strings (the scripted model repeats one token).
    fn scripted_miner(model: &Scripted, max_batch: usize) -> Arc<BtlmMiner> {
        let args = BtlmArgs {
            no_repeat_ngram_size: 0,
            stop: Vec::new(),
            device: "cpu".into(),
            ..BtlmArgs::default()
        };
        let engine =
            Engine::start(model.clone(), tokenizer(), engine_config(max_batch)).expect("engine");
        Arc::new(BtlmMiner::with_engine(engine, &args, "scripted").expect("miner"))
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_best_waiting_request_gets_the_next_batch_slot() {
        let model = Scripted::new();
        let miner = scripted_miner(&model, 1);
        assert_eq!(miner.capacity(), Some(1));
        let metagraph = Arc::new(SharedMetagraph::new(Metagraph::new(
            1,
            100,
            vec![
                neuron(0, "low", 1.0),
                neuron(1, "mid", 50.0),
                neuron(2, "high", 1000.0),
                neuron(3, "filler", 10.0),
            ],
        )));
        // The queue order; with preemption (on by default) "high" would take the filler's
        // slot instead of waiting for it.
        let pipeline = Pipeline::new(
            MinerConfig {
                priority: prompting_miner::PriorityConfig {
                    preempt: false,
                    ..Default::default()
                },
                ..MinerConfig::default()
            },
            metagraph as Arc<dyn MetagraphView>,
            Arc::clone(&miner) as Arc<dyn Miner>,
        )
        .expect("pipeline");
        assert_eq!(
            pipeline.stats().capacity,
            1,
            "max_concurrent 8, one batch slot"
        );
        // A first request gives each caller a history (and so its stake as priority).
        let filler = warm_up_then_fill(&pipeline, &model).await;
        let mut queued = Vec::new();
        for (i, caller) in ["low", "mid", "high"].into_iter().enumerate() {
            let p = pipeline.clone();
            queued.push(tokio::spawn(async move { p.prompt(request(caller)).await }));
            wait_for("the request to queue", || {
                pipeline.stats().queue_depth == i + 1
            })
            .await;
        }
        model.gate.set_open(true);
        assert!(filler.await.expect("joined").is_ok());
        for handle in queued {
            assert!(handle.await.expect("joined").is_ok());
        }
        let tok = tokenizer();
        let label: HashMap<Vec<u32>, &str> = ["filler", "low", "mid", "high"]
            .into_iter()
            .map(|c| {
                let text = miner.prompt_text(&request(c));
                (tok.encode(&text).expect("encode"), c)
            })
            .collect();
        let order: Vec<&str> = model
            .started
            .lock()
            .expect("started")
            .iter()
            .map(|p| label.get(p).copied().unwrap_or("?"))
            .collect();
        assert_eq!(order, ["filler", "high", "mid", "low"]);
    }

    /// A whole answer reports its finish reason in OpenAI's words and its tokens: `length`
    /// at the token limit, the prompt's tokens and every generated one.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn answers_report_their_finish_reason_and_tokens() {
        let model = Scripted::new();
        let miner = scripted_miner(&model, 2);
        model.gate.set_open(true);
        let asked = request("validator");
        let report = asked.report.clone();
        let prompt_tokens = tokenizer()
            .encode(&miner.prompt_text(&asked))
            .expect("encode")
            .len() as u64;
        let answer = miner.prompt(&asked).await.expect("answered");
        assert_eq!(
            answer,
            tokenizer().decode(&[Scripted::NEXT; 4]).expect("decode")
        );
        assert_eq!(report.finish_reason().as_deref(), Some("length"));
        assert_eq!(
            report.usage(),
            Some(TokenUsage {
                prompt_tokens,
                completion_tokens: 4
            })
        );
    }

    /// A generation still running `--miner.answer_margin_ms` before its request's deadline
    /// is answered with the tokens generated so far, and its batch slot freed.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_request_near_its_deadline_is_answered_with_the_text_so_far() {
        let model = Scripted::new();
        let miner = scripted_miner(&model, 2);
        assert!(miner.streams_as_generated());
        let metagraph = Arc::new(SharedMetagraph::new(Metagraph::new(
            1,
            100,
            vec![neuron(0, "validator", 1000.0)],
        )));
        let pipeline = Pipeline::new(
            MinerConfig {
                answer_margin_ms: 1500,
                ..MinerConfig::default()
            },
            metagraph as Arc<dyn MetagraphView>,
            Arc::clone(&miner) as Arc<dyn Miner>,
        )
        .expect("pipeline");
        let mut asked = PromptRequest::new(
            vec!["user".into()],
            vec!["a question".into()],
            "validator",
            Protocol::Legacy,
            Duration::from_secs(4),
        );
        asked.sampling.max_tokens = Some(50);
        let report = asked.report.clone();
        let prompt_tokens = tokenizer()
            .encode(&miner.prompt_text(&asked))
            .expect("encode")
            .len() as u64;
        // The prompt's step gives the first token, five decode steps five more; then the
        // model waits at the gate.
        model.gate.allow(6);
        let started = Instant::now();
        let answer = pipeline.prompt(asked).await.expect("answered in time");
        let waited = started.elapsed();
        let six = tokenizer().decode(&[Scripted::NEXT; 6]).expect("decode");
        assert!(!six.is_empty());
        assert_eq!(answer, six);
        assert!(
            waited >= Duration::from_millis(2400) && waited < Duration::from_secs(4),
            "answered after {waited:?}: 4 s timeout less a 1.5 s margin"
        );
        let stats = pipeline.stats();
        assert_eq!((stats.truncated, stats.in_flight), (1, 0));
        // The cut answer still reports what it cost, and ended on "length".
        let spent = TokenUsage {
            prompt_tokens,
            completion_tokens: 6,
        };
        assert_eq!(report.usage(), Some(spent));
        assert_eq!(report.finish_reason().as_deref(), Some("length"));
        assert_eq!(stats.usage, spent, "counted in the pipeline's token totals");
        // The engine drops the sequence at its next step.
        model.gate.set_open(true);
        wait_for("the batch to empty", || {
            miner
                .engine()
                .stats()
                .running
                .load(std::sync::atomic::Ordering::Acquire)
                == 0
        })
        .await;
    }

    /// When the key/value cache budget, not the batch slots, is what binds, the requests
    /// already inside the engine are admitted in the pipeline's priority order too.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_cache_budget_admits_in_the_pipelines_priority_order() {
        let model = Scripted::new();
        let args = BtlmArgs {
            no_repeat_ngram_size: 0,
            stop: Vec::new(),
            device: "cpu".into(),
            ..BtlmArgs::default()
        };
        let tok = tokenizer();
        let label: Vec<(Vec<u32>, &str)> = ["filler", "low", "mid", "high"]
            .into_iter()
            .map(|c| {
                let text = args
                    .prompt_format()
                    .format(&request(c).roles, &request(c).messages);
                (tok.encode(&text).expect("encode"), c)
            })
            .collect();
        let longest = label.iter().map(|(ids, _)| ids.len()).max().unwrap_or(0);
        // Room for one request (its prompt and 4 new tokens) at a time, in 4 batch slots.
        let budget = (longest + 4) * Scripted::KV_BYTES_PER_TOKEN;
        let shortest = label.iter().map(|(ids, _)| ids.len()).min().unwrap_or(0);
        assert!(budget < 2 * (shortest + 4) * Scripted::KV_BYTES_PER_TOKEN);
        let config = EngineConfig {
            kv_cache_bytes: budget,
            ..engine_config(4)
        };
        let engine = Engine::start(model.clone(), tokenizer(), config).expect("engine");
        let miner = Arc::new(BtlmMiner::with_engine(engine, &args, "scripted").expect("miner"));
        let metagraph = Arc::new(SharedMetagraph::new(Metagraph::new(
            1,
            100,
            vec![
                neuron(0, "low", 1.0),
                neuron(1, "mid", 50.0),
                neuron(2, "high", 1000.0),
                neuron(3, "filler", 10.0),
            ],
        )));
        let pipeline = Pipeline::new(
            MinerConfig::default(),
            metagraph as Arc<dyn MetagraphView>,
            Arc::clone(&miner) as Arc<dyn Miner>,
        )
        .expect("pipeline");
        assert_eq!(pipeline.stats().capacity, 4, "four batch slots");
        let filler = warm_up_then_fill(&pipeline, &model).await;
        // Each takes a batch slot of the pipeline at once and waits inside the engine for
        // cache room, in the worst order of arrival.
        let mut queued = Vec::new();
        for (i, caller) in ["low", "mid", "high"].into_iter().enumerate() {
            let p = pipeline.clone();
            queued.push(tokio::spawn(async move { p.prompt(request(caller)).await }));
            wait_for("the request to wait in the engine", || {
                miner.engine().stats().waiting.load(Ordering::Acquire) == i + 1
            })
            .await;
        }
        assert_eq!(
            pipeline.stats().queue_depth,
            0,
            "none waits in the pipeline"
        );
        model.gate.set_open(true);
        assert!(filler.await.expect("joined").is_ok());
        for handle in queued {
            assert!(handle.await.expect("joined").is_ok());
        }
        let label: HashMap<Vec<u32>, &str> = label.into_iter().collect();
        let order: Vec<&str> = model
            .started
            .lock()
            .expect("started")
            .iter()
            .map(|p| label.get(p).copied().unwrap_or("?"))
            .collect();
        assert_eq!(order, ["filler", "high", "mid", "low"]);
        assert_eq!(model.peak_batch(), 1, "the budget holds one at a time");
    }
}

/// Runs `requests` (reference case, settings) through `engine`, all submitted at once, and
/// checks each answer against `generate` alone on a new cache.
fn answers_equal_fresh_ones(
    engine: &Engine,
    model: &Btlm,
    requests: &[(usize, GenerationConfig)],
    label: &str,
) {
    let r = reference();
    let tok = tokenizer();
    let receivers: Vec<_> = requests
        .iter()
        .map(|(case, cfg)| {
            engine
                .submit(&r.cases[*case].prompt, cfg.clone(), None)
                .expect("submit")
        })
        .collect();
    for (rx, (case, cfg)) in receivers.into_iter().zip(requests) {
        let g = collect(rx).done.expect("generation");
        let label = format!("{label}: case {case}");
        assert_answer_alone(&g, model, &tok, &r.cases[*case].input_ids, cfg, &label);
    }
}

/// Checks `g` against `generate` alone on a new cache for the prompt `ids`.
fn assert_answer_alone(
    g: &Generation,
    model: &Btlm,
    tok: &BtlmTokenizer,
    ids: &[u32],
    cfg: &GenerationConfig,
    label: &str,
) {
    let alone =
        generate(model, tok, ids, cfg, || None, |_| ControlFlow::Continue(())).expect("alone");
    assert_eq!(g.tokens, alone.tokens, "{label}");
    assert_eq!(g.text, alone.text, "{label}");
}

fn running_to(max_new: usize, ngram: usize) -> GenerationConfig {
    GenerationConfig {
        ignore_eos: true,
        ..greedy(max_new, ngram)
    }
}

/// A second round of requests runs on the caches the first left in the pool, each holding
/// another, longer sequence's keys and values past the new one's positions (prompts of 28,
/// 18, 13 and 57 tokens: 40 new tokens in the first round, caches of 128, 64, 64 and 128
/// positions; 24 in the second, needing 81, 52, 42 and 37): the answers are those of new
/// caches, bit for bit, in every format.
#[test]
fn answers_on_reused_caches_equal_answers_on_new_ones() {
    for (label, opts) in every_format() {
        let model = load("model.safetensors", &opts);
        let engine = Engine::start(model.clone(), tokenizer(), engine_config(4)).expect("engine");
        let first: Vec<_> = (0..4).map(|c| (c, running_to(40, c % 2))).collect();
        answers_equal_fresh_ones(&engine, &model, &first, &format!("{label} first round"));
        let stats = engine.stats();
        assert_eq!(stats.kv_allocated.load(Ordering::Relaxed), 4, "{label}");
        assert_eq!(stats.kv_reused.load(Ordering::Relaxed), 0, "{label}");
        let per_token = model.kv_bytes_per_token();
        assert_eq!(
            stats.kv_idle_bytes.load(Ordering::Relaxed),
            (128 + 64 + 64 + 128) * per_token,
            "{label}: the caches stay, rounded up to 64 positions"
        );
        let second: Vec<_> = [3, 0, 1, 2]
            .into_iter()
            .map(|c| (c, running_to(24, 1 - c % 2)))
            .collect();
        answers_equal_fresh_ones(&engine, &model, &second, &format!("{label} reused"));
        assert_eq!(stats.kv_reused.load(Ordering::Relaxed), 4, "{label}");
        assert_eq!(stats.kv_allocated.load(Ordering::Relaxed), 4, "{label}");
        assert_eq!(stats.kv_reserved_bytes.load(Ordering::Relaxed), 0);
        // Each prompt took its own first-round cache and kept its whole pieces of 8, or
        // all but its last token where positions split alike.
        let hits = stats.prefix_hits.load(Ordering::Relaxed);
        let kept = stats.prefix_tokens.load(Ordering::Relaxed);
        let want = if model.splits_alike() {
            27 + 17 + 12 + 56
        } else {
            24 + 16 + 8 + 56
        };
        assert_eq!((hits, kept), (4, want), "{label}");
    }
}

/// The answer to `prompt` from `engine`, which must equal `generate`'s alone on a new cache.
fn answer_equal_to_a_fresh_one(
    engine: &Engine,
    model: &Btlm,
    prompt: &str,
    cfg: &GenerationConfig,
    label: &str,
) -> Generation {
    let tok = tokenizer();
    let rx = engine.submit(prompt, cfg.clone(), None).expect("submit");
    let g = collect(rx).done.expect("generation");
    let ids = tok.encode(prompt).expect("encode");
    assert_answer_alone(&g, model, &tok, &ids, cfg, label);
    g
}

/// Positions a prompt of `ids` keeps of a cache whose sequence ran `prompt` and then
/// `answer`: the tokens it starts with alike, short of its last: of everything run but the
/// answer's last token where positions split alike; else of the prompt's whole pieces (of
/// 8), in whole pieces.
fn kept_of(ids: &[u32], prompt: &[u32], answer: &[u32], any_split: bool) -> usize {
    let held: Vec<u32> = if any_split {
        let run = answer.len().saturating_sub(1);
        prompt.iter().chain(&answer[..run]).copied().collect()
    } else {
        prompt[..prompt.len() / 8 * 8].to_vec()
    };
    let alike = ids.iter().zip(&held).take_while(|(a, b)| a == b).count();
    let alike = alike.min(ids.len() - 1);
    if any_split { alike } else { alike / 8 * 8 }
}

/// A conversation going on: the second prompt is the first one, its answer and a new
/// question; a third shares only part of the second. Each keeps the keys and values of
/// what the prompt before began with alike (its answer's too where positions split alike,
/// else its prompt's whole pieces), and runs only the rest:
/// the second copies them out of the first's cache (too small for it) into new memory, the
/// third takes the second's cache. The answers are those of new caches, bit for bit, in
/// every format (prefix reuse is on by default).
#[test]
fn a_prompt_starting_like_an_earlier_one_keeps_its_cache_and_its_answer() {
    let r = reference();
    let tok = tokenizer();
    let first = &r.cases[1];
    for (label, opts) in every_format() {
        let model = load("model.safetensors", &opts);
        let engine = Engine::start(model.clone(), tokenizer(), engine_config(1)).expect("engine");
        let stats = engine.stats();
        let kept = || stats.prefix_tokens.load(Ordering::Relaxed) as usize;
        // 18 + 40 positions: a cache of 64, too small for the follow-up's ~75.
        let answer =
            answer_equal_to_a_fresh_one(&engine, &model, &first.prompt, &running_to(40, 2), label);
        assert_eq!(kept(), 0, "{label}: a new cache");

        let follow_up = format!(
            "{}{}\nuser: And then?\nassistant:",
            first.prompt, answer.text
        );
        let ids = tok.encode(&follow_up).expect("encode");
        let any_split = model.splits_alike();
        let want = kept_of(&ids, &first.input_ids, &answer.tokens, any_split);
        if any_split {
            assert!(
                want > 18,
                "{label}: the first prompt and part of its answer: {want}"
            );
        } else {
            assert_eq!(want, 16, "{label}: the first prompt's two whole pieces");
        }
        let first_kept = want;
        let second =
            answer_equal_to_a_fresh_one(&engine, &model, &follow_up, &running_to(4, 0), label);
        assert_eq!(kept(), want, "{label}: follow-up");
        let count = |c: &std::sync::atomic::AtomicU64| c.load(Ordering::Relaxed);
        assert_eq!(
            (count(&stats.kv_allocated), count(&stats.kv_reused)),
            (2, 0),
            "{label}: copied into new memory"
        );

        let cut = follow_up.len() / 2;
        let cut = (0..=cut)
            .rev()
            .find(|&i| follow_up.is_char_boundary(i))
            .unwrap_or(0);
        let partly = format!("{} Something else entirely.", &follow_up[..cut]);
        let partly_ids = tok.encode(&partly).expect("encode");
        let want = kept_of(&partly_ids, &ids, &second.tokens, any_split);
        assert!(want >= 24, "{label}: {want} kept of the follow-up");
        answer_equal_to_a_fresh_one(&engine, &model, &partly, &running_to(12, 2), label);
        assert_eq!(kept(), first_kept + want, "{label}: part of the follow-up");
        assert_eq!(count(&stats.prefix_hits), 2, "{label}");
        assert_eq!(
            (count(&stats.kv_allocated), count(&stats.kv_reused)),
            (2, 1),
            "{label}: the follow-up's cache taken as it is"
        );
    }
}

/// Blank caches made while the engine is idle serve the next requests, as the memory a
/// prompt start is copied into and as they are; the answers are those of new caches, bit
/// for bit, in every format (each cache layout: f32, f16, int8, 4-bit). One blank cache at most for the latest request's need (`spare_caches` 1), one
/// request at a time:
///
/// 1. "The quick brown fox" (13 tokens) to 40: a new cache of 64; then a blank 64;
/// 2. case 0 (28 tokens) to 80, needing 108: the blank is too small, a new 128; then a
///    blank 128;
/// 3. the first's follow-up (~61 tokens) to 4, ~65 positions: its own cache is too small,
///    so its start is copied into the blank 128; then a blank 128 again;
/// 4. case 3 (57 tokens) to 8, 65 positions, starting like no idle cache: the blank 128.
#[test]
fn blank_caches_made_while_idle_give_the_answers_of_new_ones() {
    let r = reference();
    let tok = tokenizer();
    for (label, opts) in every_format() {
        let model = load("model.safetensors", &opts);
        let config = EngineConfig {
            spare_caches: 1,
            ..engine_config(1)
        };
        let engine = Engine::start(model.clone(), tokenizer(), config).expect("engine");
        let stats = engine.stats();
        let count = |c: &std::sync::atomic::AtomicU64| c.load(Ordering::Relaxed);
        assert!(
            model.fills_caches_ahead(),
            "{label}: on the CPU attention path"
        );
        let made = |n: u64| {
            let start = Instant::now();
            while count(&stats.kv_spares_made) < n {
                assert!(
                    start.elapsed() < PATIENCE,
                    "{label}: blank cache {n} not made"
                );
                std::thread::sleep(Duration::from_millis(2));
            }
        };
        let ask = |prompt: &str, cfg: GenerationConfig| {
            answer_equal_to_a_fresh_one(&engine, &model, prompt, &cfg, label)
        };
        let fox = &r.cases[2].prompt;
        let answer = ask(fox, running_to(40, 2));
        made(1);
        ask(&r.cases[0].prompt, running_to(80, 0));
        made(2);
        let follow_up = format!("{fox}{}\nuser: And then?\nassistant:", answer.text);
        let positions = tok.encode(&follow_up).expect("encode").len() + 4;
        assert!((65..=128).contains(&positions), "{label}: {positions}");
        ask(&follow_up, running_to(4, 0));
        let hits = count(&stats.prefix_hits);
        made(3);
        ask(&r.cases[3].prompt, running_to(8, 2));
        let (allocated, reused) = (count(&stats.kv_allocated), count(&stats.kv_reused));
        assert_eq!(hits, 1, "{label}: the follow-up kept its start");
        assert_eq!((allocated, reused), (2, 2), "{label}");
        assert_eq!(count(&stats.kv_spares_used), 2, "{label}");
        assert!(
            stats.kv_peak_bytes.load(Ordering::Relaxed) <= 64 << 20,
            "{label}"
        );
    }
}

/// A budget of 200 positions (two or three sequences' caches at once, fewer idle ones
/// beside them): requests of different lengths, many more than fit together, take, keep
/// and drop caches; the caches in use and idle never exceed the budget, the answers are
/// those of new caches, and with the pool off nothing is kept.
#[test]
fn the_pool_stays_within_the_cache_budget() {
    let model = load("model.safetensors", &LoadOptions::default());
    let per_token = model.kv_bytes_per_token();
    let budget = 200 * per_token;
    let requests: Vec<_> = (0..10)
        .map(|i| (i % 4, running_to(4 + 7 * i, i % 2)))
        .collect();
    for pool in [true, false] {
        let engine = Engine::start(
            model.clone(),
            tokenizer(),
            EngineConfig {
                kv_cache_bytes: budget,
                kv_pool: pool,
                ..engine_config(4)
            },
        )
        .expect("engine");
        answers_equal_fresh_ones(&engine, &model, &requests, &format!("pool {pool}"));
        let stats = engine.stats();
        let peak = stats.kv_peak_bytes.load(Ordering::Relaxed);
        assert!(peak <= budget, "pool {pool}: peak {peak} of {budget}");
        assert!(
            peak > budget / 2,
            "pool {pool}: the budget was used: {peak}"
        );
        let idle = stats.kv_idle_bytes.load(Ordering::Relaxed);
        let reused = stats.kv_reused.load(Ordering::Relaxed);
        let allocated = stats.kv_allocated.load(Ordering::Relaxed);
        assert_eq!(reused + allocated, 10, "pool {pool}");
        if pool {
            assert!(reused > 0 && idle > 0, "pool: {reused} reused, {idle} idle");
        } else {
            assert_eq!((reused, idle), (0, 0), "no pool");
        }
        assert_eq!(stats.kv_reserved_bytes.load(Ordering::Relaxed), 0);
    }
}
