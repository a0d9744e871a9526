//! Autoregressive generation: token selection (greedy or sampled, with repetition penalty and
//! Hugging Face's `no_repeat_ngram_size`), stop conditions, and incremental text output.

use std::collections::{HashMap, HashSet};
use std::ops::ControlFlow;
use std::time::Instant;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::error::{BtlmError, Result};
use crate::model::{Btlm, argmax};
use crate::tokenizer::BtlmTokenizer;

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
    /// Longest prompt piece run in one forward pass (bounds attention memory).
    pub prefill_chunk: usize,
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
            prefill_chunk: 256,
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
            return bad("prefill_chunk", "must be at least 1".into());
        }
        Ok(())
    }

    fn greedy(&self) -> bool {
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
}

/// The outcome of [`generate`].
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

/// Hugging Face's `no_repeat_ngram_size`: the n-grams seen so far, keyed by their first
/// `n - 1` tokens.
#[derive(Debug, Clone)]
pub struct NgramBan {
    n: usize,
    seen: HashMap<Vec<u32>, HashSet<u32>>,
}

impl NgramBan {
    /// Tracks n-grams of size `n` (0 disables the ban) in `tokens`.
    pub fn new(n: usize, tokens: &[u32]) -> Self {
        let mut ban = NgramBan {
            n,
            seen: HashMap::new(),
        };
        if n > 0 {
            for w in tokens.windows(n) {
                ban.insert(w);
            }
        }
        ban
    }

    fn insert(&mut self, ngram: &[u32]) {
        let (last, prefix) = match ngram.split_last() {
            Some(x) => x,
            None => return,
        };
        self.seen.entry(prefix.to_vec()).or_default().insert(*last);
    }

    /// Records that `tokens` (the whole sequence) just grew by its last token.
    pub fn push(&mut self, tokens: &[u32]) {
        if self.n > 0 && tokens.len() >= self.n {
            self.insert(&tokens[tokens.len() - self.n..]);
        }
    }

    /// The tokens that would complete an n-gram already in `tokens`.
    pub fn banned(&self, tokens: &[u32]) -> Vec<u32> {
        if self.n == 0 || tokens.len() + 1 < self.n {
            return Vec::new();
        }
        let prefix = &tokens[tokens.len() + 1 - self.n..];
        self.seen
            .get(prefix)
            .map(|s| s.iter().copied().collect())
            .unwrap_or_default()
    }
}

/// Picks next tokens from logits according to a [`GenerationConfig`].
#[derive(Debug)]
pub struct TokenSelector {
    cfg: GenerationConfig,
    rng: StdRng,
}

impl TokenSelector {
    /// A selector; the random generator is seeded from `cfg.seed` if given.
    pub fn new(cfg: &GenerationConfig) -> Self {
        let rng = match cfg.seed {
            Some(s) => StdRng::seed_from_u64(s),
            None => StdRng::from_entropy(),
        };
        TokenSelector {
            cfg: cfg.clone(),
            rng,
        }
    }

    /// Applies penalties and bans, then picks a token. `tokens` is prompt + output so far.
    pub fn select(&mut self, logits: &mut [f32], tokens: &[u32], ban: &NgramBan) -> u32 {
        let vocab = logits.len();
        if self.cfg.repetition_penalty != 1.0 {
            let p = self.cfg.repetition_penalty;
            let unique: HashSet<u32> = tokens.iter().copied().collect();
            for t in unique {
                if let Some(l) = logits.get_mut(t as usize) {
                    *l = if *l < 0.0 { *l * p } else { *l / p };
                }
            }
        }
        for t in ban.banned(tokens) {
            if let Some(l) = logits.get_mut(t as usize) {
                *l = f32::NEG_INFINITY;
            }
        }
        let first = argmax(logits).unwrap_or(0);
        if self.cfg.greedy() || !logits.iter().any(|l| l.is_finite()) {
            return first;
        }
        let inv_t = 1.0 / self.cfg.temperature as f32;
        let mut order: Vec<usize> = (0..vocab).filter(|&i| logits[i].is_finite()).collect();
        order.sort_by(|&a, &b| logits[b].total_cmp(&logits[a]));
        if self.cfg.top_k > 0 && self.cfg.top_k < order.len() {
            // Like Hugging Face, tokens tied with the k-th are kept.
            let kth = logits[order[self.cfg.top_k - 1]];
            order.retain(|&i| logits[i] >= kth);
        }
        let max = logits[order[0]] * inv_t;
        let mut probs: Vec<f64> = order
            .iter()
            .map(|&i| f64::from((logits[i] * inv_t - max).exp()))
            .collect();
        let total: f64 = probs.iter().sum();
        probs.iter_mut().for_each(|p| *p /= total);
        if self.cfg.top_p < 1.0 {
            let mut cum = 0.0;
            let mut keep = 0;
            for p in &probs {
                keep += 1;
                cum += p;
                if cum >= self.cfg.top_p {
                    break;
                }
            }
            probs.truncate(keep.max(1));
        }
        let total: f64 = probs.iter().sum();
        let mut r = self.rng.r#gen::<f64>() * total;
        for (p, &i) in probs.iter().zip(&order) {
            if r < *p {
                return i as u32;
            }
            r -= p;
        }
        order[probs.len() - 1] as u32
    }
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

/// An interruption check that ends generation once `deadline` has passed.
pub fn until(deadline: Instant) -> impl FnMut() -> Option<FinishReason> {
    move || (Instant::now() >= deadline).then_some(FinishReason::Deadline)
}

/// An interruption check that never interrupts.
pub fn never() -> Option<FinishReason> {
    None
}

/// Generates a completion of `prompt`.
///
/// `interrupt` is called before each forward pass (the prompt's included); returning
/// `Some(reason)` (e.g. [`FinishReason::Deadline`], see [`until`], or
/// [`FinishReason::Cancelled`]) ends generation. `on_text` receives each final piece of
/// text as soon as it is known (complete UTF-8, never part of a stop string) and may return
/// `Break` to stop. Generation also stops at eos, at a stop string and after
/// `max_new_tokens`.
pub fn generate(
    model: &Btlm,
    tokenizer: &BtlmTokenizer,
    prompt: &[u32],
    cfg: &GenerationConfig,
    mut interrupt: impl FnMut() -> Option<FinishReason>,
    mut on_text: impl FnMut(&str) -> ControlFlow<()>,
) -> Result<Generation> {
    cfg.validate()?;
    if prompt.is_empty() {
        return Err(BtlmError::InvalidArgument {
            name: "prompt",
            reason: "the prompt has no tokens".into(),
        });
    }
    let (prompt, max_new) = fit_context(prompt, cfg.max_new_tokens, model.config().n_positions);
    let eos = tokenizer.eos_token_id();
    let mut seq = prompt.to_vec();
    let mut ban = NgramBan::new(cfg.no_repeat_ngram_size, &seq);
    let mut selector = TokenSelector::new(cfg);
    let mut assembler = TextAssembler::new(&cfg.stop);
    let mut out: Vec<u32> = Vec::new();
    let mut text = String::new();
    let mut cache = model.new_cache();

    let finish = 'run: {
        if let Some(reason) = interrupt() {
            break 'run reason;
        }
        let mut logits = model
            .prefill(prompt, &mut cache, cfg.prefill_chunk)?
            .to_vec1::<f32>()?;
        loop {
            let next = selector.select(&mut logits, &seq, &ban);
            out.push(next);
            seq.push(next);
            ban.push(&seq);
            if next == eos {
                break 'run FinishReason::Eos;
            }
            text = tokenizer.decode(&out)?;
            let last = out.len() >= max_new;
            let (chunk, stopped) = assembler.update(&text, false);
            if let Some(c) = chunk
                && on_text(&c).is_break()
            {
                break 'run FinishReason::Cancelled;
            }
            if stopped {
                break 'run FinishReason::Stop;
            }
            if last {
                break 'run FinishReason::Length;
            }
            if let Some(reason) = interrupt() {
                break 'run reason;
            }
            logits = model.next_token_logits(next, &mut cache)?;
        }
    };
    if matches!(finish, FinishReason::Eos | FinishReason::Length) {
        let (chunk, _) = assembler.update(&text, true);
        if let Some(c) = chunk {
            // The consumer may stop here too; nothing is left to generate anyway.
            let _ = on_text(&c);
        }
    }
    let released = assembler.emitted();
    text.truncate(released);
    Ok(Generation {
        text,
        tokens: out,
        prompt_tokens: prompt.len(),
        finish,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ngram_ban_follows_hugging_face() {
        // n = 2: after "... 5", tokens that followed 5 before are banned.
        let seq = [5, 6, 7, 5];
        let ban = NgramBan::new(2, &seq);
        assert_eq!(ban.banned(&seq), vec![6]);
        // n = 3: prefix (7, 5) never seen.
        let ban3 = NgramBan::new(3, &seq);
        assert!(ban3.banned(&seq).is_empty());
        let seq3 = [1, 2, 3, 1, 2];
        assert_eq!(NgramBan::new(3, &seq3).banned(&seq3), vec![3]);
        // Too short for any n-gram, and disabled.
        assert!(NgramBan::new(3, &[1]).banned(&[1]).is_empty());
        assert!(NgramBan::new(0, &seq).banned(&seq).is_empty());
        // n = 1 bans every token already present.
        let mut b1 = NgramBan::new(1, &seq).banned(&seq);
        b1.sort();
        assert_eq!(b1, vec![5, 6, 7]);
    }

    #[test]
    fn ngram_ban_incremental_equals_batch() {
        let seq = [1, 2, 1, 3, 1, 2, 4, 2, 1];
        let mut inc = NgramBan::new(2, &seq[..3]);
        for i in 4..=seq.len() {
            inc.push(&seq[..i]);
        }
        let batch = NgramBan::new(2, &seq);
        let (mut a, mut b) = (inc.banned(&seq), batch.banned(&seq));
        a.sort();
        b.sort();
        assert_eq!(a, b);
        assert_eq!(a, vec![2, 3]);
    }

    fn cfg() -> GenerationConfig {
        GenerationConfig {
            no_repeat_ngram_size: 0,
            ..GenerationConfig::default()
        }
    }

    #[test]
    fn greedy_selection_and_penalties() {
        let none = NgramBan::new(0, &[]);
        let mut s = TokenSelector::new(&cfg());
        assert_eq!(s.select(&mut [0.0, 2.0, 1.0], &[], &none), 1);
        // Banned tokens are skipped.
        let seq = [1, 1];
        let ban = NgramBan::new(2, &seq);
        assert_eq!(s.select(&mut [0.0, 2.0, 1.0], &seq, &ban), 2);
        // Repetition penalty: 2.0 / 4 < 1.0.
        let mut p = TokenSelector::new(&GenerationConfig {
            repetition_penalty: 4.0,
            ..cfg()
        });
        assert_eq!(p.select(&mut [0.0, 2.0, 1.0], &[1], &none), 2);
        // Negative logits are multiplied: -1 * 4 < -2.
        assert_eq!(p.select(&mut [-1.0, -2.0, -3.0], &[0], &none), 1);
    }

    #[test]
    fn sampling_is_seeded_and_respects_top_k_and_top_p() {
        let none = NgramBan::new(0, &[]);
        let sample = GenerationConfig {
            do_sample: true,
            temperature: 1.0,
            top_k: 0,
            seed: Some(7),
            ..cfg()
        };
        let logits = [0.0f32, 0.5, 1.0, 1.5, 2.0];
        let draw = |c: &GenerationConfig| {
            let mut s = TokenSelector::new(c);
            (0..400)
                .map(|_| s.select(&mut logits.clone(), &[], &none))
                .collect::<Vec<_>>()
        };
        let a = draw(&sample);
        assert_eq!(a, draw(&sample), "same seed, same draws");
        let distinct: HashSet<u32> = a.iter().copied().collect();
        assert_eq!(distinct.len(), 5, "all tokens get drawn at temperature 1");
        let k2: HashSet<u32> = draw(&GenerationConfig {
            top_k: 2,
            ..sample.clone()
        })
        .into_iter()
        .collect();
        assert_eq!(k2, HashSet::from([3, 4]));
        // p(4) ≈ 0.43, p(3) ≈ 0.26: top_p 0.6 keeps {4, 3}.
        let p: HashSet<u32> = draw(&GenerationConfig {
            top_p: 0.6,
            ..sample.clone()
        })
        .into_iter()
        .collect();
        assert_eq!(p, HashSet::from([3, 4]));
        // Temperature 0 is greedy even with sampling on.
        let zero: HashSet<u32> = draw(&GenerationConfig {
            temperature: 0.0,
            ..sample
        })
        .into_iter()
        .collect();
        assert_eq!(zero, HashSet::from([4]));
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
