//! Choosing the next token from logits: greedy ([`argmax`]) or sampled (temperature,
//! top-k, top-p, seed), after Hugging Face's repetition penalty and `no_repeat_ngram_size`.

use std::collections::{HashMap, HashSet};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::generation::GenerationConfig;

/// Index of the largest value (first on ties), as Hugging Face's greedy search picks.
pub fn argmax(logits: &[f32]) -> Option<u32> {
    let mut best: Option<(usize, f32)> = None;
    for (i, &v) in logits.iter().enumerate() {
        match best {
            Some((_, b)) if v <= b => {}
            _ => best = Some((i, v)),
        }
    }
    best.map(|(i, _)| i as u32)
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
        if self.cfg.is_greedy() || !logits.iter().any(|l| l.is_finite()) {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn argmax_takes_first_maximum() {
        assert_eq!(argmax(&[1.0, 3.0, 3.0, -1.0]), Some(1));
        assert_eq!(argmax(&[]), None);
    }

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
}
