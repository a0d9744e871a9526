//! Autoregressive generation: token selection (greedy or sampled, with repetition penalty and
//! Hugging Face's `no_repeat_ngram_size`), stop conditions, and incremental text output.

use crate::error::{BtlmError, Result};

/// The stop strings used unless configured otherwise: the model must not write the next
/// turn of the conversation.
pub const DEFAULT_STOP: [&str; 2] = ["\nuser:", "\nsystem:"];

/// How to generate one completion.
#[derive(Debug, Clone, PartialEq)]
pub struct GenerationConfig {
    /// Maximum number of new tokens.
    pub max_new_tokens: usize,
    /// Sample (with `temperature`, `top_k`, `top_p`) instead of greedy decoding.
    pub do_sample: bool,
    /// Sampling temperature; 0 means greedy.
    pub temperature: f64,
    /// Keep only the `k` most likely tokens when sampling (0: no limit).
    pub top_k: usize,
    /// Keep the smallest set of most likely tokens whose probability reaches `top_p`.
    pub top_p: f64,
    /// Hugging Face repetition penalty (1: off): logits of tokens already in the sequence
    /// are divided by it when positive, multiplied when negative.
    pub repetition_penalty: f32,
    /// Never complete an n-gram of this size already present in prompt + output (0: off).
    pub no_repeat_ngram_size: usize,
    /// Random seed for sampling (`None`: from the OS).
    pub seed: Option<u64>,
    /// Generation stops before any of these strings; they are not part of the completion.
    pub stop: Vec<String>,
    /// Longest prompt piece run in one forward pass (bounds attention memory and how long
    /// a prompt holds up the other sequences of a batch).
    pub prefill_chunk: usize,
    /// Never pick the end-of-text token (benchmarks: every completion runs to the token
    /// limit).
    pub ignore_eos: bool,
}

impl Default for GenerationConfig {
    fn default() -> Self {
        GenerationConfig {
            max_new_tokens: 100,
            do_sample: false,
            temperature: 0.7,
            top_k: 50,
            top_p: 1.0,
            repetition_penalty: 1.0,
            no_repeat_ngram_size: 2,
            seed: None,
            stop: DEFAULT_STOP.iter().map(|s| s.to_string()).collect(),
            prefill_chunk: 64,
            ignore_eos: false,
        }
    }
}

impl GenerationConfig {
    /// Checks the values, naming the offending setting.
    pub fn validate(&self) -> Result<()> {
        let bad =
            |name: &'static str, reason: String| Err(BtlmError::InvalidArgument { name, reason });
        if self.max_new_tokens == 0 {
            return bad("--btlm.max_length", "must be at least 1".into());
        }
        if !self.temperature.is_finite() || self.temperature < 0.0 {
            return bad(
                "--btlm.temperature",
                format!("must be a finite number ≥ 0, got {}", self.temperature),
            );
        }
        if !(self.top_p > 0.0 && self.top_p <= 1.0) {
            return bad(
                "--btlm.top_p",
                format!("must be in (0, 1], got {}", self.top_p),
            );
        }
        if !self.repetition_penalty.is_finite() || self.repetition_penalty <= 0.0 {
            return bad(
                "--btlm.repetition_penalty",
                format!("must be > 0, got {}", self.repetition_penalty),
            );
        }
        if self.prefill_chunk == 0 {
            return bad("--btlm.prefill_chunk", "must be at least 1".into());
        }
        Ok(())
    }

    /// Whether tokens are picked greedily (no sampling, or temperature 0).
    pub fn is_greedy(&self) -> bool {
        !self.do_sample || self.temperature == 0.0
    }
}

/// Why generation ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FinishReason {
    /// The model produced `<|endoftext|>`.
    Eos,
    /// A stop string appeared.
    Stop,
    /// `max_new_tokens` were generated.
    Length,
    /// The deadline passed.
    Deadline,
    /// The consumer asked to stop (e.g. the client went away).
    Cancelled,
    /// A higher-priority request needed the batch to itself to finish in time (the
    /// engine's deadline guard, `--btlm.deadline_guard`); the partial text is dropped.
    Preempted,
    /// Its prompt, after the prompts ahead of it, could not have run before its deadline
    /// less the time an answer needs (the engine's deadline guard, `--btlm.answer_time_ms`):
    /// ended before it took more of the steps the others need.
    Late,
    /// The memory the host has left could not hold its key/value cache with no other
    /// sequence running, whose cache would be given back (the engine's memory watch,
    /// `--btlm.memory_check_ms`): ended at once rather than left waiting for memory other
    /// processes hold.
    NoMemory,
}

/// The outcome of one completion ([`generate`](crate::sequence::generate) or the engine).
#[derive(Debug, Clone, PartialEq)]
pub struct Generation {
    /// The completion (without stop string or eos).
    pub text: String,
    /// The generated tokens (including a final eos, excluding nothing else).
    pub tokens: Vec<u32>,
    /// Number of prompt tokens actually run (after any left truncation).
    pub prompt_tokens: usize,
    /// Why it ended.
    pub finish: FinishReason,
}

/// Turns the growing decoded completion into chunks that are final: complete UTF-8 text
/// that can no longer turn out to be the start of a stop string.
#[derive(Debug, Clone)]
pub struct TextAssembler {
    stop: Vec<String>,
    emitted: usize,
}

impl TextAssembler {
    /// An assembler for the given stop strings (empty strings are ignored).
    pub fn new(stop: &[String]) -> Self {
        TextAssembler {
            stop: stop.iter().filter(|s| !s.is_empty()).cloned().collect(),
            emitted: 0,
        }
    }

    /// The earliest occurrence of a stop string.
    fn find_stop(&self, text: &str) -> Option<usize> {
        self.stop.iter().filter_map(|s| text.find(s.as_str())).min()
    }

    /// Given the whole completion decoded so far, returns the new final text (if any) and
    /// whether a stop string was reached. With `finished`, everything left is released.
    pub fn update(&mut self, text: &str, finished: bool) -> (Option<String>, bool) {
        let (end, stopped) = match self.find_stop(text) {
            Some(p) => (p.max(self.emitted), true),
            None if finished => (text.len(), false),
            None => {
                // Trailing U+FFFD may be an incomplete UTF-8 sequence completed by later tokens.
                let base = text.trim_end_matches('\u{FFFD}').len();
                // Hold back the longest suffix that could begin a stop string.
                let mut end = base;
                for s in &self.stop {
                    let longest = s
                        .char_indices()
                        .map(|(l, _)| l)
                        .filter(|&l| l > 0)
                        .rev()
                        .find(|&l| text[..base].ends_with(&s[..l]));
                    if let Some(l) = longest {
                        end = end.min(base - l);
                    }
                }
                (end.max(self.emitted), false)
            }
        };
        let chunk = (end > self.emitted).then(|| text[self.emitted..end].to_string());
        self.emitted = end;
        (chunk, stopped)
    }

    /// Bytes of the completion released so far.
    pub fn emitted(&self) -> usize {
        self.emitted
    }
}

/// Cuts a prompt from the left so that it leaves room for `max_new_tokens` in a context of
/// `context` tokens; returns the kept tokens and the possibly reduced `max_new_tokens`.
pub fn fit_context(tokens: &[u32], max_new_tokens: usize, context: usize) -> (&[u32], usize) {
    let max_new = max_new_tokens.min(context.saturating_sub(1)).max(1);
    let budget = context.saturating_sub(max_new).max(1);
    if tokens.len() > budget {
        tracing::warn!(
            prompt_tokens = tokens.len(),
            kept = budget,
            "prompt longer than the context: cutting it from the left"
        );
        (&tokens[tokens.len() - budget..], max_new)
    } else {
        (tokens, max_new)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> GenerationConfig {
        GenerationConfig {
            no_repeat_ngram_size: 0,
            ..GenerationConfig::default()
        }
    }

    fn stops() -> Vec<String> {
        DEFAULT_STOP.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn assembler_holds_back_possible_stop_prefixes() {
        let mut a = TextAssembler::new(&stops());
        assert_eq!(a.update("Paris", false), (Some("Paris".into()), false));
        assert_eq!(a.update("Paris.\n", false), (Some(".".into()), false));
        assert_eq!(a.update("Paris.\nus", false), (None, false));
        assert_eq!(a.update("Paris.\nuser: hi", false), (None, true));
        assert_eq!(a.emitted(), "Paris.".len());

        // A false alarm is released once it can no longer be a stop string.
        let mut b = TextAssembler::new(&stops());
        assert_eq!(b.update("a\nsy", false), (Some("a".into()), false));
        assert_eq!(
            b.update("a\nsyntax", false),
            (Some("\nsyntax".into()), false)
        );
    }

    #[test]
    fn assembler_waits_for_complete_utf8() {
        let mut a = TextAssembler::new(&stops());
        assert_eq!(a.update("é\u{FFFD}", false), (Some("é".into()), false));
        assert_eq!(a.update("é🙂", false), (Some("🙂".into()), false));
        // At the end everything is released, replacement characters included.
        assert_eq!(
            a.update("é🙂\u{FFFD}", true),
            (Some("\u{FFFD}".into()), false)
        );
    }

    #[test]
    fn context_is_cut_from_the_left() {
        let toks: Vec<u32> = (0..10).collect();
        assert_eq!(fit_context(&toks, 4, 20), (&toks[..], 4));
        assert_eq!(fit_context(&toks, 4, 8), (&toks[6..], 4));
        // max_new_tokens is capped so that one prompt token fits.
        assert_eq!(fit_context(&toks, 50, 8), (&toks[9..], 7));
    }

    #[test]
    fn invalid_settings_are_named() {
        let cases = [
            (
                GenerationConfig {
                    max_new_tokens: 0,
                    ..cfg()
                },
                "max_length",
            ),
            (
                GenerationConfig {
                    temperature: -1.0,
                    ..cfg()
                },
                "temperature",
            ),
            (
                GenerationConfig {
                    temperature: f64::NAN,
                    ..cfg()
                },
                "temperature",
            ),
            (
                GenerationConfig {
                    top_p: 0.0,
                    ..cfg()
                },
                "top_p",
            ),
            (
                GenerationConfig {
                    top_p: 1.5,
                    ..cfg()
                },
                "top_p",
            ),
            (
                GenerationConfig {
                    repetition_penalty: 0.0,
                    ..cfg()
                },
                "repetition_penalty",
            ),
        ];
        for (c, name) in cases {
            let err = c.validate().expect_err(name).to_string();
            assert!(err.contains(name), "{err}");
        }
        assert!(cfg().validate().is_ok());
    }
}
