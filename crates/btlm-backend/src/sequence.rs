//! One generation as a step state machine, driven the same way by [`generate`] (a batch of
//! one) and by the batched [`engine`](crate::engine): ask it for its
//! [pending tokens](Sequence::pending), run them through the model, hand back the logits
//! ([`Sequence::advance`]); it picks the next token, applies the stop conditions and
//! releases final text.

use std::ops::ControlFlow;
use std::time::Instant;

use crate::error::{BtlmError, Result};
use crate::generation::{FinishReason, Generation, GenerationConfig, TextAssembler, fit_context};
use crate::model::{Btlm, Segment};
use crate::sampling::{NgramBan, TokenSelector};
use crate::tokenizer::BtlmTokenizer;

/// The state of one completion: prompt and generated tokens, how many of them the model's
/// cache holds, the sampler, the n-gram ban and the text released so far.
#[derive(Debug)]
pub struct Sequence {
    cfg: GenerationConfig,
    max_new: usize,
    eos: u32,
    /// Prompt (after any left cut) followed by the generated tokens.
    tokens: Vec<u32>,
    prompt_len: usize,
    /// Tokens of `tokens` already run through the model.
    fed: usize,
    ban: NgramBan,
    selector: TokenSelector,
    assembler: TextAssembler,
    /// The generated tokens decoded (eos excluded).
    text: String,
    finish: Option<FinishReason>,
}

impl Sequence {
    /// A sequence completing `prompt` in a model of `context` positions whose end token is
    /// `eos`. The prompt is cut from the left to leave room for the new tokens.
    pub fn new(prompt: &[u32], cfg: &GenerationConfig, context: usize, eos: u32) -> Result<Self> {
        cfg.validate()?;
        if prompt.is_empty() {
            return Err(BtlmError::InvalidArgument {
                name: "prompt",
                reason: "the prompt has no tokens".into(),
            });
        }
        let (prompt, max_new) = fit_context(prompt, cfg.max_new_tokens, context);
        Ok(Sequence {
            cfg: cfg.clone(),
            max_new,
            eos,
            tokens: prompt.to_vec(),
            prompt_len: prompt.len(),
            fed: 0,
            ban: NgramBan::new(cfg.no_repeat_ngram_size, prompt),
            selector: TokenSelector::new(cfg),
            assembler: TextAssembler::new(&cfg.stop),
            text: String::new(),
            finish: None,
        })
    }

    /// Prompt tokens kept (after any left cut).
    pub fn prompt_tokens(&self) -> usize {
        self.prompt_len
    }

    /// The prompt (after any left cut).
    pub fn prompt(&self) -> &[u32] {
        &self.tokens[..self.prompt_len]
    }

    /// The tokens its cache holds that a later sequence may keep ([`keepable`](Self::keepable)):
    /// with `any_split` (the model computes a position's keys and values alike however a
    /// sequence is split into passes, [`crate::step::StepModel::splits_alike`]) every token
    /// it has run, its answer's too; else the start of its prompt in whole pieces of
    /// [`prefill_chunk`](Self::prefill_chunk) tokens from the first, the keys and values a
    /// later prompt starting with these tokens would compute in the same passes.
    pub fn reusable(&self, any_split: bool) -> &[u32] {
        if any_split {
            return &self.tokens[..self.fed];
        }
        let chunk = self.cfg.prefill_chunk.max(1);
        &self.tokens[..self.fed.min(self.prompt_len) / chunk * chunk]
    }

    /// How many positions of a cache holding `held` (another sequence's
    /// [`reusable`](Self::reusable) tokens) this sequence can keep: the tokens its prompt
    /// starts with alike, short of the last prompt token (it must run: its logits pick the
    /// first new token). `held` ran in pieces of `piece` tokens, or in any split (`None`,
    /// where the model allows it). After whole pieces, only as many whole pieces of this
    /// sequence's own [`prefill_chunk`](Self::prefill_chunk) (the same size, else none):
    /// the rest of its prompt then runs in the pieces a new cache would run it in, after
    /// the same keys and values. Either way the answer is the same bits as on a new cache.
    pub fn keepable(&self, held: &[u32], piece: Option<usize>) -> usize {
        let alike = held
            .iter()
            .zip(self.prompt())
            .take_while(|(a, b)| a == b)
            .count()
            .min(self.prompt_len - 1);
        match piece {
            None => alike,
            Some(piece) => {
                let chunk = self.cfg.prefill_chunk;
                if piece != chunk || chunk == 0 {
                    return 0;
                }
                alike / chunk * chunk
            }
        }
    }

    /// Starts a sequence whose cache already holds its first `n` prompt tokens (taken from
    /// an earlier sequence whose tokens began alike): those are not run again. Only before
    /// the first step, and at least the last prompt token must still run (its logits pick
    /// the first new token).
    pub fn skip_cached(&mut self, n: usize) -> Result<()> {
        if self.fed > 0 || n >= self.prompt_len {
            return Err(BtlmError::InvalidArgument {
                name: "cached prompt tokens",
                reason: format!(
                    "{n} of a {}-token prompt cannot be skipped ({} already run)",
                    self.prompt_len, self.fed
                ),
            });
        }
        self.fed = n;
        Ok(())
    }

    /// Positions this sequence can occupy in the cache: prompt plus new tokens.
    pub fn max_positions(&self) -> usize {
        self.prompt_len + self.max_new
    }

    /// Tokens run through the model so far (those kept from an earlier cache included):
    /// the positions its cache holds.
    pub fn fed(&self) -> usize {
        self.fed
    }

    /// Prompt tokens not run yet.
    pub fn prompt_left(&self) -> usize {
        self.prompt_len.saturating_sub(self.fed)
    }

    /// Tokens it may still generate (the token limit less those generated); 0 once finished.
    pub fn decode_left(&self) -> usize {
        if self.finish.is_some() {
            return 0;
        }
        self.max_new.saturating_sub(self.generated())
    }

    /// Whether prompt tokens are still to be run.
    pub fn is_prefilling(&self) -> bool {
        self.fed < self.prompt_len
    }

    /// Why it ended, once it has.
    pub fn finished(&self) -> Option<FinishReason> {
        self.finish
    }

    /// The prompt piece size for prefill (the configuration's `prefill_chunk`).
    pub fn prefill_chunk(&self) -> usize {
        self.cfg.prefill_chunk
    }

    /// The tokens to run next: the next prompt piece (at most
    /// [`prefill_chunk`](Self::prefill_chunk) tokens) while prefilling, then the last
    /// generated token. Empty once finished.
    pub fn pending(&self) -> &[u32] {
        if self.finish.is_some() {
            return &[];
        }
        let end = (self.fed + self.cfg.prefill_chunk).min(self.tokens.len());
        &self.tokens[self.fed..end]
    }

    /// Whether running [`pending`](Self::pending) yields the logits of the next token (the
    /// last prompt piece, and every decode step).
    pub fn wants_logits(&self) -> bool {
        let n = self.pending().len();
        n > 0 && self.fed + n == self.tokens.len()
    }

    /// Records that the pending tokens went through the model; `logits` (required when
    /// [`wants_logits`](Self::wants_logits) was true) picks the next token. Returns newly
    /// final text: complete UTF-8 that is not part of a stop string, plus everything left
    /// when the sequence ends at eos or at the token limit.
    pub fn advance(
        &mut self,
        logits: Option<&mut [f32]>,
        tokenizer: &BtlmTokenizer,
    ) -> Result<Option<String>> {
        let wanted = self.wants_logits();
        let n = self.pending().len();
        self.fed += n;
        let logits = match (wanted, logits) {
            (false, _) => return Ok(None),
            (true, Some(l)) => l,
            (true, None) => {
                return Err(BtlmError::InvalidArgument {
                    name: "logits",
                    reason: "the last prompt piece and every decode step need logits".into(),
                });
            }
        };
        if self.cfg.ignore_eos
            && let Some(l) = logits.get_mut(self.eos as usize)
        {
            *l = f32::NEG_INFINITY;
        }
        let next = self.selector.select(logits, &self.tokens, &self.ban);
        self.tokens.push(next);
        self.ban.push(&self.tokens);
        if next == self.eos {
            self.finish = Some(FinishReason::Eos);
            return Ok(self.flush(None));
        }
        self.text = tokenizer.decode(&self.tokens[self.prompt_len..])?;
        let (chunk, stopped) = self.assembler.update(&self.text, false);
        if stopped {
            self.finish = Some(FinishReason::Stop);
            return Ok(chunk);
        }
        if self.generated() >= self.max_new {
            self.finish = Some(FinishReason::Length);
            return Ok(self.flush(chunk));
        }
        Ok(chunk)
    }

    /// Ends the sequence early (deadline, cancellation); text not yet released is dropped.
    pub fn stop(&mut self, reason: FinishReason) {
        self.finish.get_or_insert(reason);
    }

    /// The outcome. A sequence that has not finished counts as cancelled.
    pub fn into_generation(self) -> Generation {
        let mut text = self.text;
        text.truncate(self.assembler.emitted());
        Generation {
            text,
            tokens: self.tokens[self.prompt_len..].to_vec(),
            prompt_tokens: self.prompt_len,
            finish: self.finish.unwrap_or(FinishReason::Cancelled),
        }
    }

    /// Tokens generated so far (a final eos included).
    pub fn generated(&self) -> usize {
        self.tokens.len() - self.prompt_len
    }

    /// `pending` text followed by everything not yet released.
    fn flush(&mut self, pending: Option<String>) -> Option<String> {
        let (rest, _) = self.assembler.update(&self.text, true);
        match (pending, rest) {
            (Some(a), Some(b)) => Some(a + &b),
            (a, b) => a.or(b),
        }
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

/// Generates a completion of `prompt`, alone: the [`Sequence`] state machine driven with a
/// batch of one.
///
/// `interrupt` is called before each forward pass (each prompt piece's included); returning
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
    let mut seq = Sequence::new(
        prompt,
        cfg,
        model.config().n_positions,
        tokenizer.eos_token_id(),
    )?;
    let mut cache = model.new_cache_with_capacity(seq.max_positions());
    while seq.finished().is_none() {
        if let Some(reason) = interrupt() {
            seq.stop(reason);
            break;
        }
        let logits = seq.wants_logits();
        let out = model.forward_batch(&mut [Segment {
            tokens: seq.pending(),
            cache: &mut cache,
            logits,
        }])?;
        let mut row = if logits {
            Some(out.squeeze(0)?.to_vec1::<f32>()?)
        } else {
            None
        };
        let text = seq.advance(row.as_deref_mut(), tokenizer)?;
        if let Some(t) = text
            && on_text(&t).is_break()
            && seq.finished().is_none()
        {
            seq.stop(FinishReason::Cancelled);
        }
    }
    Ok(seq.into_generation())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn tokenizer() -> BtlmTokenizer {
        BtlmTokenizer::from_dir(
            &Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/btlm-tiny"),
        )
        .expect("tiny tokenizer")
    }

    /// Logits that make `token` the greedy choice.
    fn pick(token: u32, vocab: usize) -> Vec<f32> {
        let mut l = vec![0.0; vocab];
        l[token as usize] = 10.0;
        l
    }

    fn cfg(max_new: usize, chunk: usize) -> GenerationConfig {
        GenerationConfig {
            max_new_tokens: max_new,
            no_repeat_ngram_size: 0,
            prefill_chunk: chunk,
            stop: Vec::new(),
            ..GenerationConfig::default()
        }
    }

    #[test]
    fn prefill_in_pieces_then_one_token_per_step() {
        let tok = tokenizer();
        let prompt: Vec<u32> = (10..17).collect();
        let mut s = Sequence::new(&prompt, &cfg(3, 3), 512, 1000).expect("sequence");
        assert_eq!(s.max_positions(), 10);
        let mut pieces = Vec::new();
        while s.is_prefilling() {
            pieces.push(s.pending().to_vec());
            let want = s.wants_logits();
            let mut l = pick(40, 1001);
            s.advance(want.then_some(&mut l[..]), &tok)
                .expect("advance");
        }
        assert_eq!(pieces, vec![vec![10, 11, 12], vec![13, 14, 15], vec![16]]);
        // The last piece produced token 40, which is now pending.
        assert_eq!(s.pending(), &[40]);
        assert!(s.wants_logits());
        let mut l = pick(41, 1001);
        s.advance(Some(&mut l), &tok).expect("step");
        let mut l = pick(42, 1001);
        let last = s.advance(Some(&mut l), &tok).expect("last step");
        assert_eq!(s.finished(), Some(FinishReason::Length));
        assert!(s.pending().is_empty() && !s.wants_logits());
        let g = s.into_generation();
        assert_eq!(g.tokens, vec![40, 41, 42]);
        assert_eq!(g.prompt_tokens, 7);
        assert_eq!(last.is_some(), !g.text.is_empty());
        assert_eq!(g.text, tok.decode(&[40, 41, 42]).expect("decode"));
    }

    #[test]
    fn a_cached_prompt_start_is_skipped_in_whole_pieces_or_any_split() {
        let tok = tokenizer();
        let prompt: Vec<u32> = (10..20).collect();
        let first = Sequence::new(&prompt, &cfg(2, 3), 512, 1000).expect("sequence");
        assert!(
            first.reusable(false).is_empty() && first.reusable(true).is_empty(),
            "nothing run yet"
        );
        let mut s = Sequence::new(&prompt, &cfg(2, 3), 512, 1000).expect("sequence");
        // Held: 9 of the prompt's tokens alike, then another: 9 kept of 10 (three pieces).
        let held: Vec<u32> = (10..19).chain([7]).collect();
        assert_eq!(s.keepable(&held, Some(3)), 9);
        assert_eq!(s.keepable(&held[..8], Some(3)), 6, "whole pieces only");
        assert_eq!(s.keepable(&prompt, Some(3)), 9, "the last token runs");
        assert_eq!(s.keepable(&held, Some(4)), 0, "pieces of another size");
        assert_eq!(s.keepable(&[11, 12, 13], Some(3)), 0);
        // Held in any split: every token alike, short of the last.
        assert_eq!(s.keepable(&held[..8], None), 8);
        assert_eq!(s.keepable(&prompt, None), 9);
        assert_eq!(s.keepable(&held[..5], None), 5);
        assert_eq!(s.keepable(&[11, 12, 13], None), 0);
        assert!(s.skip_cached(10).is_err(), "the last prompt token must run");
        s.skip_cached(6).expect("skip");
        assert!(s.skip_cached(1).is_err(), "only before the first step");
        assert_eq!(s.prompt_left(), 4);
        assert_eq!(s.reusable(false), &prompt[..6]);
        assert_eq!(s.reusable(true), &prompt[..6]);
        let mut pieces = Vec::new();
        while s.is_prefilling() {
            pieces.push(s.pending().to_vec());
            let want = s.wants_logits();
            let mut l = pick(40, 1001);
            s.advance(want.then_some(&mut l[..]), &tok).expect("piece");
        }
        assert_eq!(
            pieces,
            vec![vec![16, 17, 18], vec![19]],
            "the pieces of a new cache"
        );
        let mut l = pick(41, 1001);
        s.advance(Some(&mut l), &tok).expect("step");
        // The prompt's last piece is not whole: whole pieces keep neither it nor the answer;
        // any split keeps every token run (40 ran in the step that picked 41).
        assert_eq!(s.reusable(false), &prompt[..9]);
        let run: Vec<u32> = (10..20).chain([40]).collect();
        assert_eq!(s.reusable(true), &run[..]);
        assert_eq!(s.prompt(), &prompt[..]);
        let g = s.into_generation();
        assert_eq!((g.tokens, g.prompt_tokens), (vec![40, 41], 10));
    }

    #[test]
    fn eos_and_early_stops() {
        let tok = tokenizer();
        let mut s = Sequence::new(&[5, 6], &cfg(10, 8), 512, 1000).expect("sequence");
        let mut l = pick(1000, 1001);
        s.advance(Some(&mut l), &tok).expect("eos");
        assert_eq!(s.finished(), Some(FinishReason::Eos));
        assert_eq!(s.into_generation().tokens, vec![1000]);

        let mut s = Sequence::new(&[5, 6], &cfg(10, 8), 512, 1000).expect("sequence");
        s.stop(FinishReason::Deadline);
        s.stop(FinishReason::Cancelled);
        assert_eq!(
            s.finished(),
            Some(FinishReason::Deadline),
            "first reason kept"
        );
        assert!(s.pending().is_empty());

        // A decode step without logits is a caller bug, reported as an error.
        let mut s = Sequence::new(&[5], &cfg(10, 8), 512, 1000).expect("sequence");
        assert!(s.advance(None, &tok).is_err());
        // So are empty prompts and bad settings.
        assert!(Sequence::new(&[], &cfg(10, 8), 512, 1000).is_err());
        assert!(Sequence::new(&[1], &cfg(0, 8), 512, 1000).is_err());
    }
}
