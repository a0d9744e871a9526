//! Where the time of a model step goes, section by section: opt-in wall-clock timers
//! around the sections of the CPU rows path (the blocks' products, attention, norms and
//! the output head), for the benchmarks (`batch_decode --sections`).
//!
//! The timers belong to the thread that runs the step (the leader of its team: each
//! section's time is its wall time, helpers included) and are off until that thread calls
//! [`record`]; off, a section costs one thread-local read. Steps on the tensor path (GPU,
//! unpacked weights) record nothing.

use std::cell::RefCell;
use std::time::{Duration, Instant};

/// A section of a step on the CPU rows path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Section {
    /// `ln_1`, and `ln_2` with the residual sum before it.
    LayerNorm,
    /// `attn.c_attn`: queries, keys and values.
    QkvProduct,
    /// The new keys and values appended to the caches, and attention over them.
    Attention,
    /// `attn.c_proj`.
    AttnOutProduct,
    /// `mlp.c_fc` and `mlp.c_fc2` (one section).
    MlpUpProducts,
    /// `up ⊙ silu(gate)`.
    SwiGlu,
    /// `mlp.c_proj`.
    MlpDownProduct,
    /// The residual sum after the MLP.
    Residual,
    /// `ln_f` and the output head of the rows that want logits.
    Head,
}

impl Section {
    /// Every section, in the order a step runs them.
    pub const ALL: [Section; 9] = [
        Section::LayerNorm,
        Section::QkvProduct,
        Section::Attention,
        Section::AttnOutProduct,
        Section::MlpUpProducts,
        Section::SwiGlu,
        Section::MlpDownProduct,
        Section::Residual,
        Section::Head,
    ];

    /// A short name for tables.
    pub fn name(self) -> &'static str {
        match self {
            Section::LayerNorm => "layer norms",
            Section::QkvProduct => "c_attn",
            Section::Attention => "attention",
            Section::AttnOutProduct => "attn.c_proj",
            Section::MlpUpProducts => "c_fc + c_fc2",
            Section::SwiGlu => "swiglu",
            Section::MlpDownProduct => "mlp.c_proj",
            Section::Residual => "residual",
            Section::Head => "head",
        }
    }
}

/// Time spent per [`Section`] since recording started or the last [`take`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SectionTimes([Duration; Section::ALL.len()]);

impl SectionTimes {
    /// The time of `section`.
    pub fn get(&self, section: Section) -> Duration {
        self.0[section as usize]
    }

    /// Every section with its time, in step order.
    pub fn iter(&self) -> impl Iterator<Item = (Section, Duration)> + '_ {
        Section::ALL.into_iter().map(|s| (s, self.get(s)))
    }

    /// The sum of every section.
    pub fn total(&self) -> Duration {
        self.0.iter().sum()
    }
}

thread_local! {
    /// This thread's times while it records (`None`: not recording).
    static TIMES: RefCell<Option<SectionTimes>> = const { RefCell::new(None) };
}

/// Starts (from zero) or stops recording the sections of the steps this thread runs.
pub fn record(on: bool) {
    TIMES.with_borrow_mut(|t| *t = on.then(SectionTimes::default));
}

/// The times recorded on this thread since [`record`] or the last `take` (zero when not
/// recording), and starts again from zero.
pub fn take() -> SectionTimes {
    TIMES.with_borrow_mut(|t| t.as_mut().map(std::mem::take).unwrap_or_default())
}

/// Runs `f`, adding its wall time to `section` if this thread records.
pub(crate) fn timed<R>(section: Section, f: impl FnOnce() -> R) -> R {
    if TIMES.with_borrow(Option::is_none) {
        return f();
    }
    let start = Instant::now();
    let r = f();
    let spent = start.elapsed();
    TIMES.with_borrow_mut(|t| {
        if let Some(t) = t {
            t.0[section as usize] += spent;
        }
    });
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sections_add_up_only_while_recording() {
        let nap = Duration::from_millis(3);
        assert_eq!(timed(Section::Head, || 7), 7);
        assert_eq!(take(), SectionTimes::default(), "not recording");
        record(true);
        timed(Section::Head, || std::thread::sleep(nap));
        timed(Section::Head, || std::thread::sleep(nap));
        timed(Section::SwiGlu, || std::thread::sleep(nap));
        let times = take();
        assert!(times.get(Section::Head) >= 2 * nap, "{times:?}");
        assert!(times.get(Section::SwiGlu) >= nap, "{times:?}");
        assert_eq!(times.get(Section::Attention), Duration::ZERO);
        assert_eq!(times.total(), times.iter().map(|(_, d)| d).sum());
        assert_eq!(take(), SectionTimes::default(), "take starts from zero");
        // Another thread records its own sections, not into this one's.
        let theirs = std::thread::spawn(move || {
            record(true);
            timed(Section::Head, || std::thread::sleep(nap));
            take()
        })
        .join()
        .expect("thread");
        assert!(theirs.get(Section::Head) >= nap, "{theirs:?}");
        assert_eq!(take(), SectionTimes::default());
        record(false);
        timed(Section::Head, || std::thread::sleep(nap));
        assert_eq!(take(), SectionTimes::default(), "stopped");
    }

    #[test]
    fn every_section_has_its_own_slot_and_name() {
        for (i, s) in Section::ALL.into_iter().enumerate() {
            assert_eq!(s as usize, i);
        }
        let names: std::collections::HashSet<_> = Section::ALL.map(Section::name).into();
        assert_eq!(names.len(), Section::ALL.len());
    }
}
