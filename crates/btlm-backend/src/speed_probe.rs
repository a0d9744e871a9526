//! How fast this host answers one validator, measured once at start-up: a short prompt and
//! a few decode steps of one sequence on the loaded model. An operator running the real
//! model in a format too slow for the validators' timeout (f32 weights on a CPU decode ~3
//! tokens a second on two cores: a 100-token answer takes ~35 s, docs/benchmarks.md) reads
//! it in the start-up log, with what to change, instead of finding out from answers cut
//! short or refused.

use std::time::{Duration, Instant};

use crate::error::{BtlmError, Result};
use crate::model::Btlm;
use crate::options::Quantization;

/// Prompt tokens the probe runs before its decode steps (about a short validator prompt).
pub const PROBE_PROMPT: usize = 16;

/// The most decode steps a probe runs (`--btlm.speed_probe_steps`): each is a token's time
/// at start-up, ~0.4 s with f32 weights on two cores.
pub const MAX_STEPS: usize = 64;

/// The timeout validators query miners with by default (bittensor's dendrite, 12 s).
pub const VALIDATOR_TIMEOUT: Duration = Duration::from_secs(12);

/// Times measured by [`measure`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AnswerSpeed {
    /// The probe's prompt of [`PROBE_PROMPT`] tokens, in one piece.
    pub prompt: Duration,
    /// One decode step of one sequence: the median of the probe's steps.
    pub per_token: Duration,
}

impl AnswerSpeed {
    /// Time to answer a short prompt with `tokens` tokens, alone on the engine. The prompt
    /// counts for at most as long as [`PROBE_PROMPT`] decode steps: it is the process's
    /// first pass, which also pays one-time costs (first touches of memory, a GPU's kernels
    /// loaded), where a prompt of a few tokens takes about one step's time on a CPU whose
    /// decoding reads the weights at the memory's speed.
    pub fn answer_time(&self, tokens: usize) -> Duration {
        let steps = u32::try_from(tokens).unwrap_or(u32::MAX);
        let prompt = self
            .prompt
            .min(self.per_token.saturating_mul(PROBE_PROMPT as u32));
        prompt.saturating_add(self.per_token.saturating_mul(steps))
    }
}

/// Runs [`PROBE_PROMPT`] prompt tokens, then `steps` decode steps of one sequence, in a
/// key/value cache of its own (freed on return), and returns their times. The tokens are
/// arbitrary ids of the vocabulary: the time of a step does not depend on them.
pub fn measure(model: &Btlm, steps: usize) -> Result<AnswerSpeed> {
    if steps == 0 {
        return Err(BtlmError::InvalidArgument {
            name: "--btlm.speed_probe_steps",
            reason: "a probe needs at least one decode step".into(),
        });
    }
    let context = model.config().n_positions;
    if PROBE_PROMPT + steps > context {
        return Err(BtlmError::InvalidArgument {
            name: "--btlm.speed_probe_steps",
            reason: format!(
                "a probe of {PROBE_PROMPT} prompt tokens and {steps} steps does not fit the \
                 model's context of {context} positions"
            ),
        });
    }
    let vocab = u32::try_from(model.config().vocab_size.max(1)).unwrap_or(u32::MAX);
    let prompt: Vec<u32> = (0..PROBE_PROMPT as u32)
        .map(|i| (i * 7919 + 13) % vocab)
        .collect();
    let mut cache = model.new_cache_with_capacity(PROBE_PROMPT + steps);
    let started = Instant::now();
    model.prefill(&prompt, &mut cache, PROBE_PROMPT)?;
    let prompt_time = started.elapsed();
    let mut times = Vec::with_capacity(steps);
    for &token in prompt.iter().cycle().take(steps) {
        let started = Instant::now();
        model.next_token_logits(token, &mut cache)?;
        times.push(started.elapsed());
    }
    times.sort_unstable();
    Ok(AnswerSpeed {
        prompt: prompt_time,
        per_token: times[times.len() / 2],
    })
}

/// What the start-up log says of a measured speed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpeedReport {
    /// Whether a whole answer of `--btlm.max_length` tokens would miss [`VALIDATOR_TIMEOUT`]
    /// (logged as a warning, else as information).
    pub too_slow: bool,
    /// The log line.
    pub message: String,
}

/// The report on `speed` for answers of `max_length` tokens, with what would answer faster
/// when they miss [`VALIDATOR_TIMEOUT`]: quantized weights on a CPU (`on_cpu`, weights
/// `quantization`), else shorter answers or a faster machine.
pub fn report(
    speed: &AnswerSpeed,
    max_length: usize,
    on_cpu: bool,
    quantization: Quantization,
) -> SpeedReport {
    let answer = speed.answer_time(max_length);
    let measured = format!(
        "one validator alone: a prompt of {PROBE_PROMPT} tokens in {} ms, then {:.1} ms a \
         token ({:.1} tokens/s): an answer of {max_length} tokens (--btlm.max_length) in \
         ~{:.1} s",
        speed.prompt.as_millis(),
        speed.per_token.as_secs_f64() * 1e3,
        1.0 / speed.per_token.as_secs_f64().max(1e-9),
        answer.as_secs_f64()
    );
    if answer <= VALIDATOR_TIMEOUT {
        return SpeedReport {
            too_slow: false,
            message: measured,
        };
    }
    let advice = match (on_cpu, quantization) {
        (true, Quantization::None) => {
            "quantized weights decode 3-6x faster on a CPU (--btlm.quantize q8_0, or q4k the \
             fastest; README, \"BTLM on a CPU\")"
        }
        (true, Quantization::Q8_0) => {
            "--btlm.quantize q4k decodes ~1.7x faster than q8_0 on a CPU (README, \"BTLM on a CPU\")"
        }
        _ => "a lower --btlm.max_length or a faster machine would answer in time",
    };
    SpeedReport {
        too_slow: true,
        message: format!(
            "{measured}, more than the {} s validators wait by default: their answers will be \
             cut short (--miner.answer_margin_ms) or refused; {advice}",
            VALIDATOR_TIMEOUT.as_secs()
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn speed(prompt_ms: u64, token_ms: u64) -> AnswerSpeed {
        AnswerSpeed {
            prompt: Duration::from_millis(prompt_ms),
            per_token: Duration::from_millis(token_ms),
        }
    }

    fn tiny_model() -> Btlm {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/btlm-tiny");
        let files = crate::hub::files_in_dir(&dir).expect("the tiny checkpoint's files");
        let (model, _) = crate::miner::load_model(&files, &crate::loader::LoadOptions::default())
            .expect("the tiny checkpoint");
        model
    }

    /// The probe times real steps in a cache of its own: the model's answers after it are
    /// what they were before.
    #[test]
    fn the_probe_times_steps_and_leaves_the_model_as_it_was() {
        let model = tiny_model();
        let prompt = [5u32, 17, 42, 7];
        let logits = |model: &Btlm| {
            let mut cache = model.new_cache();
            model
                .prefill(&prompt, &mut cache, 64)
                .and_then(|l| l.to_vec1::<f32>())
                .expect("logits")
        };
        let before = logits(&model);
        let speed = measure(&model, 3).expect("probe");
        assert!(speed.prompt > Duration::ZERO && speed.per_token > Duration::ZERO);
        assert_eq!(logits(&model), before);
        let context = model.config().n_positions;
        for steps in [0, context - PROBE_PROMPT + 1] {
            match measure(&model, steps) {
                Err(BtlmError::InvalidArgument { name, .. }) => {
                    assert_eq!(name, "--btlm.speed_probe_steps")
                }
                other => panic!("a probe of {steps} steps: {other:?}"),
            }
        }
    }

    #[test]
    fn an_answer_takes_the_prompt_then_a_step_a_token() {
        assert_eq!(
            speed(200, 55).answer_time(100),
            Duration::from_millis(5_700)
        );
        assert_eq!(speed(200, 55).answer_time(0), Duration::from_millis(200));
        // A first pass slowed by one-time costs counts as 16 steps at most.
        assert_eq!(
            speed(5_000, 20).answer_time(100),
            Duration::from_millis(320 + 2_000)
        );
        // Absurd lengths saturate instead of overflowing.
        let huge = AnswerSpeed {
            prompt: Duration::MAX,
            per_token: Duration::MAX,
        };
        assert_eq!(huge.answer_time(usize::MAX), Duration::MAX);
    }

    #[test]
    fn answers_within_the_timeout_are_information() {
        let r = report(&speed(200, 55), 100, true, Quantization::Q4k);
        assert!(!r.too_slow);
        assert!(
            r.message.contains("an answer of 100 tokens"),
            "{}",
            r.message
        );
        assert!(r.message.contains("~5.7 s"), "{}", r.message);
        assert!(r.message.contains("18.2 tokens/s"), "{}", r.message);
        // Exactly the timeout still fits.
        assert!(!report(&speed(0, 120), 100, true, Quantization::None).too_slow);
    }

    #[test]
    fn slow_answers_name_what_would_be_faster() {
        let f32_cpu = report(&speed(500, 330), 100, true, Quantization::None);
        assert!(f32_cpu.too_slow);
        assert!(f32_cpu.message.contains("~33.5 s"), "{}", f32_cpu.message);
        assert!(f32_cpu.message.contains("--btlm.quantize q8_0"));
        let q8 = report(&speed(300, 120), 100, true, Quantization::Q8_0);
        assert!(q8.too_slow);
        assert!(q8.message.contains("--btlm.quantize q4k"), "{}", q8.message);
        // Already the fastest format, or on a GPU: only the answers' length or the machine.
        for (on_cpu, q) in [(true, Quantization::Q4k), (false, Quantization::None)] {
            let r = report(&speed(300, 200), 100, on_cpu, q);
            assert!(r.too_slow);
            assert!(!r.message.contains("--btlm.quantize"), "{}", r.message);
            assert!(r.message.contains("--btlm.max_length"), "{}", r.message);
        }
    }
}
