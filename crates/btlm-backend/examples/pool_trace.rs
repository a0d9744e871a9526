//! The key/value cache pool ([`KvPool`]) replayed on a synthetic trace of validators'
//! conversations, without a model: how many prompt tokens its idle caches let the engine
//! keep (prefix reuse), and how much new memory it writes, for a budget and a traffic shape.
//!
//! ```text
//! cargo run --release -p prompting-btlm-backend --example pool_trace -- \
//!     --validators 32 --budget-mb 4096 --follow 0.7
//! ```
//!
//! The trace: `--validators` validators each hold a conversation, begun by the system
//! prompt (shared by all) and a context of its own; a request sends the conversation so far
//! and a new question. Up to `--batch` requests are in flight (the engine's batch); when the
//! batch is full the oldest one ends, writes its answer and gives its cache back (holding
//! its prompt and answer), and a validator with nothing in flight asks next. Its next
//! request continues the conversation with probability `--follow` (the validator asked this
//! miner again), carrying this miner's answer with probability `--ours` (else another
//! miner's), up to `--turns` turns; otherwise it starts a new conversation. Lengths are
//! tokens, drawn uniformly from their ranges. Leases ask the pool for prompt plus answer
//! positions and keep what [`KvPool::lease_reusing`] hands out, as the batcher does.

use std::collections::VecDeque;

use clap::Parser;
use prompting_btlm_backend::kv_pool::{KvPool, KvPoolConfig, Lease};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

#[derive(Parser, Debug)]
struct Cli {
    /// Validators asking this miner.
    #[arg(long, default_value_t = 32)]
    validators: usize,
    /// Requests replayed.
    #[arg(long, default_value_t = 20_000)]
    requests: usize,
    /// Requests in flight at most (`--btlm.max_batch`).
    #[arg(long, default_value_t = 8)]
    batch: usize,
    /// The pool's budget (`--btlm.kv_cache_mb`).
    #[arg(long, default_value_t = 4096)]
    budget_mb: usize,
    /// Bytes of one cached position (BTLM-3B, f16 cache: 32 blocks × 2 × 2560 × 2).
    #[arg(long, default_value_t = 327_680)]
    bytes_per_token: usize,
    /// Positions a request may reach (the model's context).
    #[arg(long, default_value_t = 8192)]
    max_positions: usize,
    /// The pool's copy price, kept positions per position (the engine measures ~0.013).
    #[arg(long, default_value_t = 0.013)]
    price: f64,
    /// System prompt tokens, shared by every request.
    #[arg(long, default_value_t = 40)]
    system: usize,
    /// A new conversation's context, tokens (min,max).
    #[arg(long, value_delimiter = ',', default_values_t = [150, 600])]
    context: Vec<usize>,
    /// A question, tokens (min,max).
    #[arg(long, value_delimiter = ',', default_values_t = [10, 40])]
    question: Vec<usize>,
    /// An answer, tokens.
    #[arg(long, default_value_t = 100)]
    answer: usize,
    /// Probability that a validator's next request continues its conversation.
    #[arg(long, default_value_t = 0.7)]
    follow: f64,
    /// Probability that a continued conversation carries this miner's answer.
    #[arg(long, default_value_t = 0.5)]
    ours: f64,
    /// Turns of a conversation at most.
    #[arg(long, default_value_t = 4)]
    turns: usize,
    #[arg(long, default_value_t = 7)]
    seed: u64,
}

/// One request in flight.
struct Flight {
    validator: usize,
    prompt: Vec<u32>,
    lease: Lease,
}

/// An idle cache: the tokens it holds and the positions of its memory.
struct Held {
    tokens: Vec<u32>,
    positions: usize,
}

/// A validator's conversation so far (the tokens of its next prompt before the question).
struct Talk {
    tokens: Vec<u32>,
    turns: usize,
    busy: bool,
}

/// Draws tokens: fresh ids, so that unrelated text never matches.
struct Tokens {
    next: u32,
}

impl Tokens {
    fn take(&mut self, n: usize) -> std::ops::Range<u32> {
        let start = self.next;
        self.next += n as u32;
        start..self.next
    }
}

#[derive(Default, Debug)]
struct Tally {
    prompt_tokens: u64,
    kept_tokens: u64,
    new_positions: u64,
    waited: u64,
}

fn between(rng: &mut StdRng, range: &[usize]) -> anyhow::Result<usize> {
    match range {
        [lo, hi] if lo <= hi => Ok(rng.gen_range(*lo..=*hi)),
        _ => anyhow::bail!("a range is two numbers, min,max: {range:?}"),
    }
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    anyhow::ensure!(
        cli.validators > cli.batch,
        "more validators than the batch, please"
    );
    let mut rng = StdRng::seed_from_u64(cli.seed);
    let mut ids = Tokens { next: 0 };
    let system: Vec<u32> = ids.take(cli.system).collect();
    let mut pool = KvPool::<Held>::new(KvPoolConfig {
        budget_bytes: cli.budget_mb << 20,
        bytes_per_token: cli.bytes_per_token,
        max_positions: cli.max_positions,
        recycle: true,
    })?;
    pool.price_copies(cli.price);
    let fresh = |rng: &mut StdRng, ids: &mut Tokens| -> anyhow::Result<Vec<u32>> {
        let mut t = system.clone();
        t.extend(ids.take(between(rng, &cli.context)?));
        Ok(t)
    };
    let mut talks = Vec::with_capacity(cli.validators);
    for _ in 0..cli.validators {
        talks.push(Talk {
            tokens: fresh(&mut rng, &mut ids)?,
            turns: 0,
            busy: false,
        });
    }
    let mut flying: VecDeque<Flight> = VecDeque::new();
    let mut tally = Tally::default();
    let end = |f: Flight,
               pool: &mut KvPool<Held>,
               talks: &mut [Talk],
               rng: &mut StdRng,
               ids: &mut Tokens|
     -> anyhow::Result<()> {
        let mut held = f.prompt;
        let answer: Vec<u32> = ids.take(cli.answer).collect();
        held.extend(&answer);
        let talk = &mut talks[f.validator];
        talk.busy = false;
        talk.turns += 1;
        if talk.turns < cli.turns && rng.gen_bool(cli.follow) {
            talk.tokens = held[..held.len() - answer.len()].to_vec();
            if rng.gen_bool(cli.ours) {
                talk.tokens.extend(&answer);
            } else {
                talk.tokens.extend(ids.take(cli.answer));
            }
        } else {
            talk.tokens = fresh(rng, ids)?;
            talk.turns = 0;
        }
        let positions = f.lease.positions();
        let cache = Held {
            tokens: held,
            positions,
        };
        pool.give_back(f.lease, Some((cache, positions)))?;
        Ok(())
    };
    for _ in 0..cli.requests {
        if flying.len() == cli.batch
            && let Some(f) = flying.pop_front()
        {
            end(f, &mut pool, &mut talks, &mut rng, &mut ids)?;
        }
        let idle: Vec<usize> = (0..talks.len()).filter(|&v| !talks[v].busy).collect();
        let validator = idle[rng.gen_range(0..idle.len())];
        let mut prompt = talks[validator].tokens.clone();
        prompt.extend(ids.take(between(&mut rng, &cli.question)?));
        let needed = prompt.len() + cli.answer;
        let keepable = |held: &Held| {
            held.tokens
                .iter()
                .zip(&prompt)
                .take_while(|(a, b)| a == b)
                .count()
                .min(prompt.len() - 1)
        };
        let (lease, handed) = loop {
            if let Some(granted) = pool.lease_reusing(needed, keepable) {
                break granted;
            }
            let f = flying
                .pop_front()
                .ok_or_else(|| anyhow::anyhow!("{needed} positions never fit the budget"))?;
            tally.waited += 1;
            end(f, &mut pool, &mut talks, &mut rng, &mut ids)?;
        };
        let kept = handed.as_ref().map_or(0, |h| h.keep);
        if handed.as_ref().is_none_or(|h| h.copy) {
            tally.new_positions += lease.positions() as u64;
        }
        // A copy's source goes back idle unless this sequence continues all it holds.
        if let Some(h) = handed
            && h.copy
            && h.keep < h.cache.tokens.len()
        {
            let positions = h.cache.positions;
            pool.put_back(h.cache, positions);
        }
        tally.prompt_tokens += prompt.len() as u64;
        tally.kept_tokens += kept as u64;
        talks[validator].busy = true;
        flying.push_back(Flight {
            validator,
            prompt,
            lease,
        });
    }
    let s = pool.stats();
    let pct = |a: u64, b: u64| 100.0 * a as f64 / b.max(1) as f64;
    println!(
        "prompt tokens kept {:.1}% ({} of {}); new memory {:.1} GB in {} caches; reused {}, \
         prefix hits {}, dropped {}; waited for room {}",
        pct(tally.kept_tokens, tally.prompt_tokens),
        tally.kept_tokens,
        tally.prompt_tokens,
        tally.new_positions as f64 * cli.bytes_per_token as f64 / 1e9,
        s.allocated,
        s.reused,
        s.prefix_hits,
        s.dropped,
        tally.waited,
    );
    Ok(())
}
