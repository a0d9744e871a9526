//! What an engine step costs, learned from the steps it runs: the time of a step by the
//! number of decode rows it holds, and the time each prompt token adds to it. The
//! [deadline guard](crate::deadline_guard) projects from it when running sequences will be
//! done.
//!
//! Both are moving averages (the last few steps weigh most; a step of only a few prompt
//! tokens weighs less in a token's cost), so a change of speed (another process on the
//! cores, a longer context) is followed within a few steps. Nothing is assumed before it is
//! measured: until a step of decode rows and a step with a prompt have run,
//! [`StepCost::finish_in`] knows nothing.
//!
//! It also learns how far a step strays from what it expected of it, [`StepCost::spread`]:
//! the guard's margin for its projections, small on a host whose steps keep their time,
//! large on one whose neighbours slow it down by turns.

use std::time::Duration;

/// Weight of the newest step in the moving averages.
const NEWEST: f64 = 0.25;

/// Prompt tokens a step must hold for its time to weigh fully in a prompt token's cost
/// (fewer weigh in proportion). A step of a few prompt tokens takes about the time the
/// weights take to read, whatever their number: 2 tokens in a step of their own came out
/// at ~7× a token's cost on an AMX host, and the step budgets (`--btlm.prefill_step_ms`)
/// shrank to about a third for the steps after (session 53).
const FULL_PIECE: usize = 64;

/// Weight of the newest step in the average of the steps' strays ([`StepCost::spread`]):
/// slower than [`NEWEST`], the spread being a trait of the host more than of the minute.
/// The first strays are averaged plainly (the n-th weighs 1/n until that is less).
const SPREAD_NEWEST: f64 = 1.0 / 16.0;

/// Strays measured before [`StepCost::spread`] is told: fewer say little of a host.
const SPREAD_SAMPLES: u32 = 8;

/// The learned costs, in seconds.
#[derive(Debug, Clone, Default)]
pub(crate) struct StepCost {
    /// Time of a step of `rows` decode rows and no prompt tokens, by `rows` (index 0 unused).
    decode: Vec<Option<f64>>,
    /// Time a prompt token adds to a step.
    prompt_token: Option<f64>,
    /// Moving average of `|took / expected − 1|` over decode steps of a size measured
    /// before (meaningless while `strays` is 0: the first stray weighs 1).
    spread: f64,
    /// Strays in `spread` so far (saturating).
    strays: u32,
}

fn blend(old: Option<f64>, new: f64) -> f64 {
    blend_by(old, new, NEWEST)
}

/// `old` moved by `weight` towards `new`; `new` when nothing is known yet.
fn blend_by(old: Option<f64>, new: f64, weight: f64) -> f64 {
    match old {
        Some(old) => old + weight * (new - old),
        None => new,
    }
}

impl StepCost {
    /// Learns from a step of `decode_rows` decode rows and `prompt_tokens` prompt tokens
    /// that took `took`.
    pub(crate) fn record(&mut self, decode_rows: usize, prompt_tokens: usize, took: Duration) {
        let took = took.as_secs_f64();
        if prompt_tokens == 0 {
            if decode_rows == 0 {
                return;
            }
            if self.decode.len() <= decode_rows {
                self.decode.resize(decode_rows + 1, None);
            }
            if let Some(expected) = self.decode[decode_rows].filter(|&t| t > 0.0) {
                let stray = (took / expected - 1.0).abs();
                self.strays = self.strays.saturating_add(1);
                let weight = (1.0 / f64::from(self.strays)).max(SPREAD_NEWEST);
                self.spread += weight * (stray - self.spread);
            }
            self.decode[decode_rows] = Some(blend(self.decode[decode_rows], took));
            return;
        }
        // The prompt's share: what the step took beyond its decode rows' usual time.
        let rows_time = match decode_rows {
            0 => 0.0,
            rows => match self.decode_step(rows) {
                Some(t) => t,
                // Not known yet: nothing to attribute the time to.
                None => return,
            },
        };
        let per_token = ((took - rows_time) / prompt_tokens as f64).max(0.0);
        let weight = NEWEST * prompt_tokens.min(FULL_PIECE) as f64 / FULL_PIECE as f64;
        self.prompt_token = Some(blend_by(self.prompt_token, per_token, weight));
    }

    /// The time of a step of `rows` decode rows (at least 1): measured at that size, else
    /// interpolated between the nearest sizes measured, else extrapolated from the largest
    /// (by the slope of the two largest, or half of its time per row when only one size
    /// was measured) or taken from the smallest. `None` before any decode step.
    pub(crate) fn decode_step(&self, rows: usize) -> Option<f64> {
        let rows = rows.max(1);
        let known: Vec<(usize, f64)> = self
            .decode
            .iter()
            .enumerate()
            .filter_map(|(n, t)| t.map(|t| (n, t)))
            .collect();
        if let Some(&(_, t)) = known.iter().find(|(n, _)| *n == rows) {
            return Some(t);
        }
        let below = known.iter().rev().find(|(n, _)| *n < rows).copied();
        let above = known.iter().find(|(n, _)| *n > rows).copied();
        match (below, above) {
            (Some((n0, t0)), Some((n1, t1))) => {
                let f = (rows - n0) as f64 / (n1 - n0) as f64;
                Some(t0 + f * (t1 - t0))
            }
            (Some((n1, t1)), None) => {
                let slope = match known.len() {
                    0 | 1 => 0.5 * t1 / n1 as f64,
                    len => {
                        let (n0, t0) = known[len - 2];
                        ((t1 - t0) / (n1 - n0) as f64).max(0.0)
                    }
                };
                Some(t1 + slope * (rows - n1) as f64)
            }
            (None, Some((_, t))) => Some(t),
            (None, None) => None,
        }
    }

    /// How far a decode step strays from the time expected of it, as a share of that time
    /// (a moving average of `|took / expected − 1|`, over steps of a size measured before):
    /// 0.02 where steps keep their time within 2%. `None` before [`SPREAD_SAMPLES`] such
    /// steps ran.
    pub(crate) fn spread(&self) -> Option<f64> {
        (self.strays >= SPREAD_SAMPLES).then_some(self.spread)
    }

    /// Sets the spread as if measured (tests of what it steers).
    #[cfg(test)]
    pub(crate) fn set_spread(&mut self, spread: f64) {
        self.spread = spread;
        self.strays = SPREAD_SAMPLES;
    }

    /// The time a prompt token adds to a step; `None` before a step with a prompt ran
    /// (after a step of decode rows).
    pub(crate) fn prompt_token(&self) -> Option<f64> {
        self.prompt_token
    }

    /// How long `prompt_tokens` prompt tokens and `steps` decode steps of `rows` rows take;
    /// `None` while a cost it needs is unknown.
    pub(crate) fn finish_in(&self, prompt_tokens: usize, steps: usize, rows: usize) -> Option<f64> {
        let prompt = match prompt_tokens {
            0 => 0.0,
            n => n as f64 * self.prompt_token()?,
        };
        let decode = match steps {
            0 => 0.0,
            n => n as f64 * self.decode_step(rows)?,
        };
        Some(prompt + decode)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn close(a: Option<f64>, b: f64) -> bool {
        a.is_some_and(|a| (a - b).abs() < 1e-9)
    }

    #[test]
    fn nothing_is_known_before_it_is_measured() {
        let mut c = StepCost::default();
        assert_eq!(c.decode_step(1), None);
        assert_eq!(c.finish_in(0, 3, 1), None);
        // A prompt step before any decode step teaches nothing about its decode rows…
        c.record(2, 100, ms(500));
        assert_eq!(c.prompt_token(), None);
        // …but a prompt alone is all prompt.
        c.record(0, 100, ms(500));
        assert!(close(c.prompt_token(), 0.005));
        assert!(close(c.finish_in(10, 0, 4), 0.05), "no decode step needed");
        assert_eq!(c.finish_in(10, 1, 4), None, "decode cost unknown");
    }

    #[test]
    fn averages_follow_the_newest_steps() {
        let mut c = StepCost::default();
        c.record(1, 0, ms(100));
        assert!(close(c.decode_step(1), 0.1));
        c.record(1, 0, ms(200));
        assert!(close(c.decode_step(1), 0.125));
        for _ in 0..60 {
            c.record(1, 0, ms(200));
        }
        assert!((c.decode_step(1).expect("known") - 0.2).abs() < 1e-6);
    }

    #[test]
    fn a_prompt_is_charged_what_the_step_took_beyond_its_rows() {
        let mut c = StepCost::default();
        c.record(4, 0, ms(80));
        c.record(4, 128, ms(80 + 1280));
        assert!(close(c.prompt_token(), 0.01));
        // A step faster than its rows' usual time charges the prompt nothing.
        let mut d = StepCost::default();
        d.record(4, 0, ms(80));
        d.record(4, 10, ms(50));
        assert!(close(d.prompt_token(), 0.0));
        assert!(close(c.finish_in(100, 10, 4), 1.0 + 0.8));
    }

    #[test]
    fn a_step_of_a_few_prompt_tokens_barely_moves_their_cost() {
        let mut c = StepCost::default();
        c.record(1, 0, ms(55));
        c.record(0, 128, ms(640));
        assert!(close(c.prompt_token(), 0.005));
        // Two prompt tokens in a step of their own take about a step's weight read (67 ms):
        // 33.5 ms a token says little of a token's cost, and moves it by its share of a
        // full piece of tokens.
        c.record(0, 2, ms(67));
        let moved = c.prompt_token().expect("known") - 0.005;
        assert!(
            (moved - NEWEST * 2.0 / FULL_PIECE as f64 * 0.0285).abs() < 1e-9,
            "{moved}"
        );
        // A step of a full piece or more moves it by the whole newest weight.
        let before = c.prompt_token().expect("known");
        c.record(0, 64, ms(640));
        assert!(close(c.prompt_token(), before + NEWEST * (0.01 - before)));
    }

    #[test]
    fn the_spread_is_how_far_steps_stray_from_their_expected_time() {
        let mut c = StepCost::default();
        c.record(8, 0, ms(100));
        c.record(4, 0, ms(70));
        assert_eq!(
            c.spread(),
            None,
            "one step of each size: nothing expected yet"
        );
        // Steps that keep their time: no spread, told once there are enough of them.
        for _ in 1..SPREAD_SAMPLES {
            c.record(8, 0, ms(100));
        }
        assert_eq!(c.spread(), None, "too few strays");
        c.record(4, 0, ms(70));
        assert!(close(c.spread(), 0.0));
        // One 20% slower is one of nine; prompts and unmeasured sizes (interpolated, not
        // expected) do not count.
        c.record(8, 0, ms(120));
        assert!(close(c.spread(), 0.2 / 9.0));
        c.record(8, 300, ms(2000));
        c.record(6, 0, ms(300));
        assert!(close(c.spread(), 0.2 / 9.0));
        // Steps straying 10% either way by turns settle at 0.1.
        let mut d = StepCost::default();
        d.record(2, 0, ms(100));
        for i in 0..400 {
            let expected = d.decode_step(2).expect("known");
            let took = expected * if i % 2 == 0 { 1.1 } else { 0.9 };
            d.record(2, 0, Duration::from_secs_f64(took));
        }
        assert!((d.spread().expect("known") - 0.1).abs() < 1e-9);
    }

    #[test]
    fn unmeasured_sizes_are_interpolated_and_extrapolated() {
        let mut c = StepCost::default();
        c.record(2, 0, ms(40));
        assert!(
            close(c.decode_step(1), 0.04),
            "below the smallest: its time"
        );
        assert!(
            close(c.decode_step(4), 0.04 + 0.5 * 0.02 * 2.0),
            "half its time per row"
        );
        c.record(6, 0, ms(80));
        assert!(close(c.decode_step(4), 0.06), "between two sizes");
        assert!(
            close(c.decode_step(8), 0.08 + 0.01 * 2.0),
            "their slope beyond"
        );
        assert!(close(c.decode_step(0), 0.04), "rows count at least 1");
    }
}
