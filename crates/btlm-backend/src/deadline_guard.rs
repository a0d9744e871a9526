//! Keeps the batch's higher-priority sequences on time (`--btlm.deadline_guard`).
//!
//! Every sequence in the batch slows every other: each decode row makes the step longer and
//! each prompt token is run inside someone's step. Under a flood of low-priority requests
//! the batch is always full and new prompts arrive all the time, so a high-priority request
//! (a validator) answered in that batch can take longer than its caller waits, even though
//! it got a slot at once. The guard, with the engine's [learned step costs](StepCost),
//! projects when each running sequence will be done, and at every step boundary
//!
//! - **holds back an admission** that would push a running sequence of higher priority past
//!   its deadline less the margin ([`DeadlineGuard::margin`]): the request waits in the
//!   engine's queue (and ends at its own deadline if it never fits);
//! - **preempts lower-priority sequences** (the lowest first, the most recently admitted
//!   among equals: it has done the least work) while a higher one is projected past its
//!   deadline less half the margin; their callers are told at once
//!   ([`FinishReason::Preempted`](crate::generation::FinishReason::Preempted));
//! - **ends the prompts that could not run in time**: taken in the order the steps run
//!   them, a prompt that, in the steps it shares with the prompts ahead of it (one piece of
//!   each a step), would leave its request or one of theirs less than the answer time
//!   (`--btlm.answer_time_ms`) before its deadline
//!   ([`FinishReason::Late`](crate::generation::FinishReason::Late)). Prompts that arrive
//!   together and share the steps all end late when they are long: past their deadlines,
//!   none answered, unless those that cannot make it leave the steps to the others.
//!
//! A sequence that could not finish its token limit in time even alone with its equals and
//! betters is protected for the tokens it could make by its deadline with them (its answer
//! is cut there, and every step a lower sequence slows is tokens off that answer): nothing
//! lower joins or stays while it runs. Only one that could not make a single token in time
//! is not protected. Equal priorities never hold each other back. Projections are
//! conservative (the batch keeps its size until the sequence ends, every pending prompt
//! token runs first) and made only once the costs are measured.
//!
//! The margin covers what the projection cannot know: how much slower the steps will run
//! than those measured. It is [`SPREADS`] times the share by which steps stray from their
//! expected time ([`StepCost::spread`]) of the projected time, at least [`MIN_MARGIN`], at
//! most the headroom (`--btlm.deadline_headroom_ms`, also the margin until the spread is
//! measured). A fixed 3 s held back the lowest of eight validators of different stakes
//! asking at once on a host whose steps keep their time (the seven above them projected at
//! ~9.9 s of their 12): the lowest waited, and its answer was cut short, where all eight
//! were answered whole in 9.4–9.6 s without the guard (docs/benchmarks.md, session 54);
//! on a VM whose steps strayed by a fifth, 2 s lost validator answers under the flood
//! (session 12).

use std::time::{Duration, Instant};

use crate::step::step_pieces;
use crate::step_cost::StepCost;

/// What the guard needs to know of a sequence (running, or asking to be admitted).
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Load {
    /// Its priority (higher first).
    pub(crate) priority: f64,
    /// When its caller stops waiting; `None`: never (then it is not protected).
    pub(crate) deadline: Option<Instant>,
    /// Prompt tokens not run yet.
    pub(crate) prompt_left: usize,
    /// Most prompt tokens of it a step runs (its `prefill_chunk`).
    pub(crate) chunk: usize,
    /// Decode steps it may still need (the token limit less the tokens generated).
    pub(crate) decode_left: usize,
}

/// How many times the steps' stray ([`StepCost::spread`]) of a projected time the margin
/// is. The stray of one step is averaged over a projection's many, but a neighbour that
/// slows a shared host down does so for minutes: the whole projection strays with it.
const SPREADS: f64 = 3.0;

/// The least margin ([`DeadlineGuard::margin`]): for what the steps' spread does not see
/// (requests of equal priority joining later, prompts arriving). Half of it, where lower
/// sequences are preempted, stays before the pipeline's cut of a streamed answer
/// (`--miner.answer_margin_ms`, 500 ms by default).
const MIN_MARGIN: Duration = Duration::from_millis(1500);

/// The guard's settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct DeadlineGuard {
    /// The most time a protected sequence must be projected to finish before its deadline
    /// for a lower one to be admitted (half of it before the lower ones are preempted):
    /// see [`DeadlineGuard::margin`].
    pub(crate) headroom: Duration,
    /// Time a request must be projected to have left once its prompt has run, for the
    /// prompt to run.
    pub(crate) answer_time: Duration,
}

impl DeadlineGuard {
    /// The margin before its deadline a sequence projected to be done in `projected`
    /// seconds must keep for a lower one to be admitted (half of it before lower ones are
    /// preempted): [`SPREADS`] × the steps' spread × `projected`, at least [`MIN_MARGIN`]
    /// and at most the headroom; the headroom while the spread is not measured.
    fn margin(&self, cost: &StepCost, projected: f64) -> Duration {
        match cost.spread() {
            Some(spread) => {
                let strayed = Duration::try_from_secs_f64(SPREADS * spread * projected.max(0.0))
                    .unwrap_or(self.headroom);
                strayed.max(MIN_MARGIN).min(self.headroom)
            }
            None => self.headroom,
        }
    }

    /// Whether `candidate` may join `batch` (the running sequences): no sequence of `batch`
    /// with a higher priority is projected past its deadline less the margin with it. True
    /// while the costs are not measured.
    pub(crate) fn admits(
        &self,
        cost: &StepCost,
        batch: &[Load],
        candidate: &Load,
        now: Instant,
    ) -> bool {
        let mut with: Vec<Load> = batch.to_vec();
        with.push(*candidate);
        batch
            .iter()
            .filter(|s| s.priority > candidate.priority)
            .all(|s| self.on_time(cost, &with, s, now, 1.0) != Some(false))
    }

    /// The positions in `batch` of the sequences to preempt so that the higher ones are
    /// projected to finish before their deadlines less half the margin, as far as
    /// preempting lower ones can achieve it. Positions are in admission order (later means
    /// admitted later).
    pub(crate) fn preemptions(&self, cost: &StepCost, batch: &[Load], now: Instant) -> Vec<usize> {
        let mut kept: Vec<usize> = (0..batch.len()).collect();
        let mut preempted = Vec::new();
        // The highest priorities first: what is preempted for them helps the others too.
        let mut protected = kept.clone();
        protected.sort_by(|&a, &b| batch[b].priority.total_cmp(&batch[a].priority));
        for s in protected {
            if preempted.contains(&s) {
                continue;
            }
            loop {
                let loads: Vec<Load> = kept.iter().map(|&i| batch[i]).collect();
                if self.on_time(cost, &loads, &batch[s], now, 0.5) != Some(false) {
                    break;
                }
                // The lowest priority below `s`, the most recently admitted among equals.
                let victim = kept
                    .iter()
                    .copied()
                    .filter(|&i| batch[i].priority < batch[s].priority)
                    .min_by(|&a, &b| {
                        batch[a]
                            .priority
                            .total_cmp(&batch[b].priority)
                            .then(b.cmp(&a))
                    });
                let Some(victim) = victim else { break };
                kept.retain(|&i| i != victim);
                preempted.push(victim);
            }
        }
        preempted.sort_unstable();
        preempted
    }

    /// The positions in `prompts` (the prefilling sequences, in the order the steps run
    /// their prompts) of those that could not run in time: taken in that order, a prompt is
    /// late when, with it, it or a prompt ahead of it that is not late is projected to leave
    /// less than the answer time before its deadline. The projection runs the steps as the
    /// engine composes them ([`prompt_finishes`]): one piece of every prompt a step, within
    /// `budget` tokens, with `decode_rows` decode rows riding along (and the prompts done
    /// by then). So a prompt that would make one ahead of it late by sharing its steps is
    /// late itself, and a late prompt takes no step from the others. Nothing before a
    /// prompt token's cost is measured.
    pub(crate) fn late_prompts(
        &self,
        cost: &StepCost,
        prompts: &[Load],
        decode_rows: usize,
        budget: usize,
        now: Instant,
    ) -> Vec<usize> {
        let Some(per_token) = cost.prompt_token() else {
            return Vec::new();
        };
        let answer = self.answer_time.as_secs_f64();
        let mut kept: Vec<Load> = Vec::new();
        let mut late = Vec::new();
        for (i, p) in prompts.iter().enumerate() {
            kept.push(*p);
            let ends = prompt_finishes(per_token, cost, &kept, decode_rows, budget);
            let on_time = kept.iter().zip(ends).all(|(p, end)| {
                p.deadline
                    .is_none_or(|d| end + answer <= d.saturating_duration_since(now).as_secs_f64())
            });
            if !on_time {
                kept.pop();
                late.push(i);
            }
        }
        late
    }

    /// Whether `s` makes its goal `share` of its [margin](Self::margin) before its deadline
    /// in `batch` (`s` among them). Its goal: its whole token limit when it could finish by
    /// its deadline with only its equals and betters in the batch, else the tokens it could
    /// make by then with them. `None` when that cannot be told (no deadline, costs unknown)
    /// or when `s` is not protected (not one token in time even with only its equals and
    /// betters).
    fn on_time(
        &self,
        cost: &StepCost,
        batch: &[Load],
        s: &Load,
        now: Instant,
        share: f64,
    ) -> Option<bool> {
        let left = s.deadline?.saturating_duration_since(now).as_secs_f64();
        let (rows, prompt) = rows_and_prompt(batch.iter().filter(|l| l.priority >= s.priority));
        let goal = if cost.finish_in(prompt, s.decode_left, rows)? <= left {
            s.decode_left
        } else {
            let after_prompts = left - cost.finish_in(prompt, 0, rows)?;
            let fits = (after_prompts / cost.decode_step(rows)?).floor();
            if fits < 1.0 {
                return None;
            }
            // Below the token limit, which did not fit.
            fits as usize
        };
        let (rows, prompt) = rows_and_prompt(batch);
        let shared = cost.finish_in(prompt, goal, rows)?;
        let margin = share * self.margin(cost, shared).as_secs_f64();
        Some(shared <= left - margin)
    }
}

/// The rows of `loads` and their prompt tokens not run yet.
fn rows_and_prompt<'a>(loads: impl IntoIterator<Item = &'a Load>) -> (usize, usize) {
    loads.into_iter().fold((0, 0), |(rows, prompt), l| {
        (rows + 1, prompt + l.prompt_left)
    })
}

/// When each of `prompts` (in the order the steps run them) is done with its prompt, in
/// seconds from now, running the steps as the engine composes them: every step runs the
/// next piece (at most its `chunk` tokens) of each prompt in order while the step's pieces
/// stay within `budget` tokens (the first always runs), at `per_token` seconds a prompt
/// token, plus a decode row for each of the `decode_rows` decoding sequences and each
/// prompt already done (none counted while a decode step's cost is unknown).
fn prompt_finishes(
    per_token: f64,
    cost: &StepCost,
    prompts: &[Load],
    decode_rows: usize,
    budget: usize,
) -> Vec<f64> {
    let mut left: Vec<usize> = prompts.iter().map(|p| p.prompt_left).collect();
    let mut ends = vec![0.0; prompts.len()];
    // Prompt tokens run and the decode rows' time so far (kept apart so that a prompt run
    // alone costs exactly its tokens × the token's cost).
    let (mut tokens_run, mut rows_time) = (0usize, 0.0);
    while left.iter().any(|&l| l > 0) {
        let sizes: Vec<usize> = prompts
            .iter()
            .zip(&left)
            .map(|(p, &l)| l.min(p.chunk.max(1)))
            .collect();
        let pieces = step_pieces(&sizes, budget);
        let done = left.iter().filter(|&&l| l == 0).count();
        tokens_run += pieces.iter().map(|&k| sizes[k]).sum::<usize>();
        rows_time += match decode_rows + done {
            0 => 0.0,
            rows => cost.decode_step(rows).unwrap_or(0.0),
        };
        for k in pieces {
            left[k] -= sizes[k];
            if left[k] == 0 {
                ends[k] = tokens_run as f64 * per_token + rows_time;
            }
        }
    }
    ends
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Decode steps of 50 ms (+5 ms per row beyond the first), prompt tokens 10 ms each.
    fn cost() -> StepCost {
        let mut c = StepCost::default();
        c.record(1, 0, Duration::from_millis(50));
        c.record(8, 0, Duration::from_millis(85));
        c.record(0, 100, Duration::from_millis(1000));
        c
    }

    fn load(
        priority: f64,
        now: Instant,
        deadline_s: Option<f64>,
        prompt: usize,
        decode: usize,
    ) -> Load {
        Load {
            priority,
            deadline: deadline_s.map(|s| now + Duration::from_secs_f64(s)),
            prompt_left: prompt,
            chunk: 256,
            decode_left: decode,
        }
    }

    fn guard() -> DeadlineGuard {
        DeadlineGuard {
            headroom: Duration::from_secs(2),
            answer_time: Duration::from_secs(2),
        }
    }

    #[test]
    fn the_margin_is_the_steps_spread_of_the_projected_time_within_bounds() {
        let g = DeadlineGuard {
            headroom: Duration::from_secs(3),
            ..guard()
        };
        let mut c = cost();
        assert_eq!(
            g.margin(&c, 10.0),
            g.headroom,
            "spread not measured: the headroom"
        );
        c.set_spread(0.0);
        assert_eq!(g.margin(&c, 10.0), MIN_MARGIN);
        c.set_spread(0.06);
        let m = g.margin(&c, 10.0).as_secs_f64();
        assert!((m - SPREADS * 0.06 * 10.0).abs() < 1e-6, "{m}");
        assert_eq!(g.margin(&c, 30.0), g.headroom, "at most the headroom");
        let small = DeadlineGuard {
            headroom: Duration::from_millis(500),
            ..guard()
        };
        assert_eq!(
            small.margin(&c, 10.0),
            small.headroom,
            "a headroom under the least"
        );
    }

    #[test]
    fn validators_of_different_stakes_share_the_steps_where_steps_keep_their_time() {
        let now = Instant::now();
        let g = DeadlineGuard {
            headroom: Duration::from_secs(3),
            ..guard()
        };
        // Seven validators of stakes 8 down to 2 running, 100 tokens each, due in 10.5 s;
        // the eighth (stake 1) asks with a 30-token prompt. With it the highest is projected
        // done in 0.3 s + 100 × 85 ms = 8.8 s, 1.7 s before its deadline.
        let batch: Vec<Load> = (2..=8)
            .rev()
            .map(|p| load(f64::from(p), now, Some(10.5), 0, 100))
            .collect();
        let lowest = load(1.0, now, Some(10.5), 30, 100);
        let mut c = cost();
        assert!(
            !g.admits(&c, &batch, &lowest, now),
            "the headroom: held back"
        );
        // Steps that keep their time: the least margin, 1.5 s, and all eight share the
        // steps.
        c.set_spread(0.01);
        assert!(g.admits(&c, &batch, &lowest, now));
        // Steps that stray by a tenth: 2.64 s of margin, held back.
        c.set_spread(0.1);
        assert!(!g.admits(&c, &batch, &lowest, now));
        // Preemption keeps half the margin: at 0.05 (1.32 s, so the least, 1.5 s: admitted)
        // the lowest stays while the highest is projected 0.75 s before its deadline, not
        // later; without the lowest, 8.0 s is.
        c.set_spread(0.05);
        assert!(g.admits(&c, &batch, &lowest, now));
        let mut all = batch.clone();
        all.push(lowest);
        assert!(g.preemptions(&c, &all, now).is_empty());
        for l in &mut all[..7] {
            l.deadline = Some(now + Duration::from_secs_f64(9.3));
        }
        assert_eq!(g.preemptions(&c, &all, now), vec![7]);
    }

    #[test]
    fn a_low_prompt_is_held_back_while_it_would_make_a_validator_late() {
        let now = Instant::now();
        let c = cost();
        // A validator with 100 steps left (5.0 s alone) and 9 s before its deadline.
        let batch = [load(10.0, now, Some(9.0), 0, 100)];
        // A low one with a 128-token prompt: 1.28 s + 100 × 55 ms = 6.78 s ≤ 7 s.
        let low = load(1.0, now, Some(12.0), 128, 100);
        assert!(guard().admits(&c, &batch, &low, now));
        // With 300 tokens of prompt: 3 s + 5.5 s > 7 s.
        let long = load(1.0, now, Some(12.0), 300, 100);
        assert!(!guard().admits(&c, &batch, &long, now));
        // An equal priority is never held back for it, nor is a higher one.
        assert!(guard().admits(&c, &batch, &load(10.0, now, Some(12.0), 300, 100), now));
        assert!(guard().admits(&c, &batch, &load(20.0, now, Some(12.0), 300, 100), now));
    }

    #[test]
    fn nothing_is_held_back_for_the_hopeless_the_unknown_or_the_timeless() {
        let now = Instant::now();
        let long = load(1.0, now, Some(12.0), 1000, 100);
        // A 500-token prompt (5 s) leaves no time for a token before a 4 s deadline.
        let hopeless = [load(10.0, now, Some(4.0), 500, 100)];
        assert!(guard().admits(&cost(), &hopeless, &long, now));
        let timeless = [load(10.0, now, None, 0, 100)];
        assert!(guard().admits(&cost(), &timeless, &long, now));
        let tight = [load(10.0, now, Some(6.0), 0, 100)];
        assert!(!guard().admits(&cost(), &tight, &long, now));
        assert!(
            guard().admits(&StepCost::default(), &tight, &long, now),
            "costs not measured yet"
        );
    }

    #[test]
    fn the_lowest_latest_are_preempted_until_the_validator_is_on_time() {
        let now = Instant::now();
        let c = cost();
        // Seven low sequences (two of priority 2, five of priority 1, one still prefilling)
        // and a validator with 8.05 s left: 100 steps at 8 rows (8.5 s) plus the prompt do
        // not fit in 8.05 − 1 s.
        let mut batch = vec![
            load(2.0, now, Some(12.0), 0, 50),
            load(1.0, now, Some(12.0), 0, 50),
        ];
        batch.push(load(10.0, now, Some(8.05), 0, 100));
        batch.extend([
            load(1.0, now, Some(12.0), 0, 50),
            load(2.0, now, Some(12.0), 0, 50),
            load(1.0, now, Some(12.0), 0, 50),
            load(1.0, now, Some(12.0), 0, 50),
            load(1.0, now, Some(12.0), 128, 100),
        ]);
        let out = guard().preemptions(&c, &batch, now);
        // Without the prefilling one (the latest of priority 1): 100 × 80 ms = 8 s, still
        // late; then the next latest of priority 1 (position 6): 100 × 75 ms = 7.5 s; then
        // position 5: 7.0 s ≤ 7.05 s.
        assert_eq!(out, vec![5, 6, 7]);
        // With more time, nothing is preempted.
        batch[2].deadline = Some(now + Duration::from_secs(12));
        assert!(guard().preemptions(&c, &batch, now).is_empty());
        // Without lower ones to preempt, nothing is.
        let equals = [
            load(10.0, now, Some(6.0), 0, 100),
            load(10.0, now, Some(6.0), 500, 100),
        ];
        assert!(guard().preemptions(&c, &equals, now).is_empty());
    }

    #[test]
    fn a_validator_that_cannot_finish_even_alone_is_protected_for_the_tokens_it_can_make() {
        let now = Instant::now();
        let c = cost();
        // 100 steps of 50 ms do not fit in 4 s even alone; 80 do, and it is cut there.
        let validator = load(10.0, now, Some(4.0), 0, 100);
        // A low one with one token to make would add 5 ms to each of its steps: held back.
        let short = load(1.0, now, Some(12.0), 1, 1);
        assert!(!guard().admits(&c, &[validator], &short, now));
        assert!(guard().admits(
            &c,
            &[validator],
            &load(10.0, now, Some(12.0), 300, 100),
            now
        ));
        // The low ones in the batch are preempted, the latest first; equals are kept.
        let batch = [
            load(1.0, now, Some(12.0), 0, 50),
            validator,
            load(10.0, now, Some(12.0), 0, 50),
            load(2.0, now, Some(12.0), 0, 50),
        ];
        assert_eq!(guard().preemptions(&c, &batch, now), vec![0, 3]);
        // Not one token in time (its 500-token prompt takes 5 s): it preempts nothing.
        let hopeless = [
            load(1.0, now, Some(12.0), 0, 50),
            load(10.0, now, Some(4.0), 500, 100),
        ];
        assert!(guard().preemptions(&c, &hopeless, now).is_empty());
        // One that finishes in time alone is protected for its whole token limit: 100 ×
        // 55 ms fits in 7 − 1 s beside a low one.
        let on_time = [
            load(1.0, now, Some(12.0), 0, 50),
            load(10.0, now, Some(7.0), 0, 100),
        ];
        assert!(guard().preemptions(&c, &on_time, now).is_empty());
    }

    #[test]
    fn prompts_that_would_leave_no_time_to_answer_are_late_and_not_ahead() {
        let now = Instant::now();
        let c = cost();
        // 10 ms a prompt token, 256 a step (pieces of up to 256), 2 s to answer: four
        // 300-token prompts due in 9 s end by 3, 6 (and 0.1 s of the first's decode
        // rows), 9 and (the third ended) 9 s.
        let p = |prompt: usize, due: Option<f64>| load(1.0, now, due, prompt, 10);
        let four = [p(300, Some(9.0)); 4];
        assert_eq!(guard().late_prompts(&c, &four, 0, 256, now), vec![2, 3]);
        // A shorter fourth fits: it runs beside the first's last piece, and with 650
        // tokens and the two done decoding in the second's last two steps (55 ms each),
        // the second ends by 6.61 s.
        let mut shorter = four;
        shorter[3].prompt_left = 50;
        assert_eq!(guard().late_prompts(&c, &shorter, 0, 256, now), vec![2]);
        // Without a deadline it is never late, but it is ahead of the others.
        let timeless = [p(300, None), p(300, Some(9.0)), p(300, Some(9.0))];
        assert_eq!(guard().late_prompts(&c, &timeless, 0, 256, now), vec![2]);
        // Eight decode rows (85 ms a step) ride along: 590 tokens in 3 steps (pieces of at
        // most 256) take 6.155 s,
        // past the 6 s an 8 s deadline leaves; alone they fit.
        let one = [p(590, Some(8.0))];
        assert_eq!(guard().late_prompts(&c, &one, 8, 256, now), vec![0]);
        assert!(guard().late_prompts(&c, &one, 0, 256, now).is_empty());
        // Nothing before a prompt token's cost is measured.
        let mut unknown = StepCost::default();
        unknown.record(8, 0, Duration::from_millis(85));
        assert!(
            guard()
                .late_prompts(&unknown, &four, 0, 256, now)
                .is_empty()
        );
    }

    #[test]
    fn prompts_that_share_every_step_are_projected_as_they_run() {
        let now = Instant::now();
        let c = cost();
        // Pieces of at most 64 tokens, 512 a step: two prompts run side by side, 64 tokens
        // each a step. A 300-token prompt due in 6 s ends by 3 s alone (+ 2 s fits), but
        // with a second 300-token prompt in its steps only by 6 s: the second is late.
        let p = |prompt: usize, due: f64| Load {
            chunk: 64,
            ..load(1.0, now, Some(due), prompt, 10)
        };
        assert!(
            guard()
                .late_prompts(&c, &[p(300, 6.0)], 0, 512, now)
                .is_empty()
        );
        assert_eq!(
            guard().late_prompts(&c, &[p(300, 6.0), p(300, 12.0)], 0, 512, now),
            vec![1]
        );
        // A short second prompt shares only the first step: 340 tokens, 3.4 s.
        assert!(
            guard()
                .late_prompts(&c, &[p(300, 6.0), p(40, 12.0)], 0, 512, now)
                .is_empty()
        );
        // Run one after the other (pieces as large as the budget), both fit.
        let whole = |prompt: usize, due: f64| Load {
            chunk: 512,
            ..load(1.0, now, Some(due), prompt, 10)
        };
        assert!(
            guard()
                .late_prompts(&c, &[whole(300, 6.0), whole(300, 12.0)], 0, 300, now)
                .is_empty()
        );
        // The prompts done by a step decode in the next ones: after the 40-token prompt
        // (one step), each of the 300-token one's four remaining steps carries a decode row
        // (50 ms): 3.4 s + 0.2 s.
        let per_token = c.prompt_token().expect("costs");
        let ends = prompt_finishes(per_token, &c, &[p(300, 6.0), p(40, 12.0)], 0, 512);
        assert!(
            (ends[0] - 3.6).abs() < 1e-9 && (ends[1] - 1.04).abs() < 1e-9,
            "{ends:?}"
        );
    }
}
