//! Whether the weights got the 2 MiB pages they ask for, checked once after loading.
//!
//! Packed weights live in anonymous memory advised `MADV_HUGEPAGE` (`kernels::storage`),
//! and decoding streams every weight once per token: from 4 KiB pages it runs slower (a TLB
//! miss every 4 KiB, prefetchers stopping at page boundaries). On the AMX Xeon of session 58
//! one q4k row took 57.9–60.5 ms a step with the host's transparent huge pages off
//! (`never`) against 53.0–54.2 with `madvise`, and one validator's 100-token answer 6.1–6.2 s
//! against 5.3–5.4 (docs/benchmarks.md). The advice is silently void on such a host, or
//! when the kernel finds no free 2 MiB pages, so the miner reads what it got
//! (`/proc/self/smaps`) and tells the operator how to fix it.

/// Advised memory below this is not judged (the tiny test checkpoints' weights fit in a
/// few pages, whatever their size).
pub const MIN_JUDGED_BYTES: u64 = 64 << 20;

/// The share of the advised memory in huge pages below which the log warns.
pub const MIN_HUGE_SHARE: f64 = 0.5;

/// This host's transparent huge pages mode (`/sys/kernel/mm/transparent_hugepage/enabled`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ThpMode {
    /// Every anonymous mapping may get huge pages.
    Always,
    /// Mappings advised `MADV_HUGEPAGE` may (the weights and key/value caches are).
    Madvise,
    /// None: the advice is void.
    Never,
}

impl ThpMode {
    /// The bracketed mode in the sysfs file's text (`always [madvise] never`).
    pub fn parse(sysfs: &str) -> Option<ThpMode> {
        let (_, rest) = sysfs.split_once('[')?;
        match rest.split_once(']')?.0 {
            "always" => Some(ThpMode::Always),
            "madvise" => Some(ThpMode::Madvise),
            "never" => Some(ThpMode::Never),
            _ => None,
        }
    }

    /// This host's mode; `None` where it cannot be read (not Linux, no transparent huge
    /// pages in the kernel).
    pub fn of_this_host() -> Option<ThpMode> {
        let text = std::fs::read_to_string("/sys/kernel/mm/transparent_hugepage/enabled").ok()?;
        ThpMode::parse(&text)
    }
}

/// One mapping of `/proc/<pid>/smaps`: the fields the checks read.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Mapping {
    /// Its addresses.
    pub range: std::ops::Range<usize>,
    /// Resident bytes (`Rss`).
    pub resident: u64,
    /// Of which in transparent huge pages (`AnonHugePages`).
    pub huge: u64,
    /// Advised `MADV_HUGEPAGE` (`hg` in its `VmFlags`).
    pub advised: bool,
    /// The kernel may back it with huge pages (`THPeligible: 1`).
    pub eligible: bool,
}

/// The mappings of `smaps` (the text of `/proc/<pid>/smaps`), in order.
pub fn mappings(smaps: &str) -> Vec<Mapping> {
    let mut all = Vec::new();
    let mut current: Option<Mapping> = None;
    for line in smaps.lines() {
        let header = line
            .split_whitespace()
            .next()
            .and_then(|r| r.split_once('-'))
            .and_then(|(a, b)| {
                Some(usize::from_str_radix(a, 16).ok()?..usize::from_str_radix(b, 16).ok()?)
            });
        if let Some(range) = header {
            all.extend(current.replace(Mapping {
                range,
                ..Mapping::default()
            }));
            continue;
        }
        let Some(m) = current.as_mut() else { continue };
        if let Some(kb) = field_kb(line, "Rss:") {
            m.resident = kb * 1024;
        } else if let Some(kb) = field_kb(line, "AnonHugePages:") {
            m.huge = kb * 1024;
        } else if let Some(v) = line.strip_prefix("THPeligible:") {
            m.eligible = v.trim() == "1";
        } else if let Some(flags) = line.strip_prefix("VmFlags:") {
            m.advised = flags.split_whitespace().any(|f| f == "hg");
        }
    }
    all.extend(current);
    all
}

/// This process's mappings; `None` where `/proc/self/smaps` cannot be read.
pub fn mappings_of_this_process() -> Option<Vec<Mapping>> {
    std::fs::read_to_string("/proc/self/smaps")
        .ok()
        .map(|s| mappings(&s))
}

/// The process's memory advised `MADV_HUGEPAGE`, resident, and how much of it is in huge
/// pages.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Advised {
    /// Resident bytes of the advised mappings.
    pub resident: u64,
    /// Of which in transparent huge pages.
    pub huge: u64,
}

impl Advised {
    /// The sums over the advised ones of `mappings`.
    pub fn of(mappings: &[Mapping]) -> Advised {
        mappings
            .iter()
            .filter(|m| m.advised)
            .fold(Advised::default(), |sum, m| Advised {
                resident: sum.resident + m.resident,
                huge: sum.huge + m.huge,
            })
    }
}

/// The value of a `Name:   123 kB` line of smaps or `/proc/meminfo`, if `line` is that
/// field.
pub(crate) fn field_kb(line: &str, name: &str) -> Option<u64> {
    line.strip_prefix(name)?
        .trim()
        .strip_suffix("kB")?
        .trim()
        .parse()
        .ok()
}

/// The warning for weights that got too few huge pages (`advised`, read right after
/// loading, is the weights' memory then) on a host in `mode`; `None` when they got enough,
/// or are too small to judge ([`MIN_JUDGED_BYTES`]).
pub fn report(mode: Option<ThpMode>, advised: Advised) -> Option<String> {
    if advised.resident < MIN_JUDGED_BYTES
        || advised.huge as f64 >= MIN_HUGE_SHARE * advised.resident as f64
    {
        return None;
    }
    let mib = |b: u64| b >> 20;
    let got = format!(
        "{} MiB of the weights' {} MiB are in 2 MiB pages",
        mib(advised.huge),
        mib(advised.resident)
    );
    let slower = "decoding, which reads every weight for each token, runs ~10-15% slower \
                  from 4 KiB pages (docs/benchmarks.md, session 58)";
    Some(match mode {
        Some(ThpMode::Never) => format!(
            "only {got}: this host's transparent huge pages are off \
             (/sys/kernel/mm/transparent_hugepage/enabled: never), and {slower}; to turn them \
             on for memory that asks for them: `echo madvise | sudo tee \
             /sys/kernel/mm/transparent_hugepage/enabled`, then restart the miner"
        ),
        _ => format!(
            "only {got}: the kernel found too few free ones (memory fragmented), and \
             {slower}; the kernel's khugepaged may merge them later, or restart the miner \
             after `echo 1 | sudo tee /proc/sys/vm/compact_memory`"
        ),
    })
}

/// Reads this process's advised memory (right after loading: the weights') and this
/// host's mode, logs them at debug level and [`report`]'s warning, if any. Nothing where
/// `/proc/self/smaps` cannot be read (not Linux).
pub fn log_weights() {
    let Some(mappings) = mappings_of_this_process() else {
        return;
    };
    let (mode, advised) = (ThpMode::of_this_host(), Advised::of(&mappings));
    tracing::debug!(
        ?mode,
        huge_mib = advised.huge >> 20,
        resident_mib = advised.resident >> 20,
        "weights' memory in 2 MiB pages"
    );
    if let Some(warning) = report(mode, advised) {
        tracing::warn!("{warning}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_mode_is_the_bracketed_word() {
        assert_eq!(
            ThpMode::parse("always [madvise] never\n"),
            Some(ThpMode::Madvise)
        );
        assert_eq!(
            ThpMode::parse("[always] madvise never"),
            Some(ThpMode::Always)
        );
        assert_eq!(
            ThpMode::parse("always madvise [never]"),
            Some(ThpMode::Never)
        );
        assert_eq!(ThpMode::parse("always madvise never"), None);
        assert_eq!(ThpMode::parse("[often]"), None);
    }

    /// Two mappings of `/proc/self/smaps` as Linux 6.x writes them: advised weights, mostly
    /// in huge pages, and a heap that is not advised.
    const SMAPS: &str = "\
7f0000000000-7f0040000000 rw-p 00000000 00:00 0 
Size:            1048576 kB
KernelPageSize:        4 kB
MMUPageSize:           4 kB
Rss:             1048576 kB
Pss:             1048576 kB
Anonymous:       1048576 kB
AnonHugePages:   1044480 kB
THPeligible:    1
VmFlags: rd wr mr mw me ac sd hg 
55d000000000-55d000400000 rw-p 00000000 00:00 0                          [heap]
Size:               4096 kB
KernelPageSize:        4 kB
Rss:                4096 kB
AnonHugePages:      2048 kB
THPeligible:    1
VmFlags: rd wr mr mw me ac sd 
";

    #[test]
    fn mappings_are_read_field_by_field_and_only_advised_ones_count() {
        let all = mappings(SMAPS);
        assert_eq!(all.len(), 2);
        assert_eq!(all[0].range, 0x7f00_0000_0000..0x7f00_4000_0000);
        assert!(all[0].advised && all[0].eligible && !all[1].advised && all[1].eligible);
        assert_eq!((all[1].resident, all[1].huge), (4096 * 1024, 2048 * 1024));
        assert_eq!(
            Advised::of(&all),
            Advised {
                resident: 1048576 * 1024,
                huge: 1044480 * 1024,
            }
        );
        assert_eq!(Advised::of(&mappings("")), Advised::default());
    }

    #[test]
    fn weights_mostly_in_small_pages_are_reported_with_the_fix_for_the_host() {
        let gib = 1u64 << 30;
        let small = Advised {
            resident: gib,
            huge: gib / 4,
        };
        let never = report(Some(ThpMode::Never), small).expect("reported");
        assert!(
            never.contains("256 MiB of the weights' 1024 MiB"),
            "{never}"
        );
        assert!(never.contains("enabled: never") && never.contains("echo madvise"));
        for mode in [Some(ThpMode::Madvise), Some(ThpMode::Always), None] {
            let said = report(mode, small).expect("reported");
            assert!(said.contains("compact_memory"), "{said}");
        }
        // Enough of them in huge pages, or too little memory to judge: nothing to say.
        let mostly = Advised {
            resident: gib,
            huge: gib / 2,
        };
        assert_eq!(report(Some(ThpMode::Never), mostly), None);
        let tiny = Advised {
            resident: MIN_JUDGED_BYTES - 1,
            huge: 0,
        };
        assert_eq!(report(Some(ThpMode::Never), tiny), None);
    }

    /// The real `/proc/self/smaps` is read as the unit test's sample: memory advised here
    /// is found advised and resident.
    #[cfg(target_os = "linux")]
    #[test]
    fn advised_memory_of_this_process_is_found() {
        use crate::kv_pages::{KvPages, advise, huge_interior};
        if KvPages::active() != KvPages::Huge {
            eprintln!("skipped: BTLM_KV_PAGES=small");
            return;
        }
        let mut memory = bytemuck::allocation::try_zeroed_vec::<u8>(32 << 20).expect("memory");
        assert!(advise(&memory));
        memory.iter_mut().step_by(4096).for_each(|b| *b = 1);
        let inside = huge_interior(memory.as_ptr() as usize, memory.len());
        let all = mappings_of_this_process().expect("smaps");
        let ours: Vec<_> = all
            .iter()
            .filter(|m| m.range.start < inside.end && inside.start < m.range.end)
            .collect();
        // The advice may have split the allocation's mapping at the 2 MiB boundaries.
        assert!(ours.iter().any(|m| m.advised), "{ours:?}");
        let advised: u64 = ours.iter().filter(|m| m.advised).map(|m| m.resident).sum();
        assert!(advised >= (inside.end - inside.start) as u64, "{ours:?}");
        assert!(Advised::of(&all).resident >= advised);
        drop(memory);
    }
}
