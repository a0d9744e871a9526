//! Which cache level the AVX-512 tile kernels prefetch the weight stream into, and how.
//!
//! The kernels prefetch the weights ahead of the vector being multiplied: into L1 in two
//! hops (`prefetcht1` 16 KiB ahead, `prefetcht0` 2 KiB ahead, see `avx512::into_l1`; one
//! q8_0 row in one, `avx512::ahead_one`), into L1 in one hop (`prefetcht0`
//! `avx512::PREFETCH` bytes ahead), or into L2 that far ahead (`prefetcht1`).
//!
//! - [`PrefetchLevel::L1`], two hops: what the Xeon's kernels were tuned with (Sapphire
//!   Rapids, sessions 15–17 and 34: one row 24.3–32.3 → 28.4–33.0 GB/s against one hop).
//! - [`PrefetchLevel::L1OneHop`]: on Zen 5 (session 42, docs/benchmarks.md) the second hint
//!   costs more than it brings: one q4k row on one core streamed 1.27× faster in one hop
//!   (`shapes q4k 1 mem`, one thread), bf16 and f32 at eight rows 1.15–1.20×, and 32-layer
//!   q4k decode steps were faster at one and eight rows. q8_0's rows (eight) keep the two
//!   hops there, ~10% faster with them on Zen 5 too.
//! - [`PrefetchLevel::L2`]: on a 32 KiB L1D (Zen 4, session 18) the 8 KiB ahead share L1
//!   with up to eight activation rows (20–54 KiB for BTLM's products) and evict them:
//!   prefetching into L2 made 4- and 8-row decode steps 8–35% faster there (q4k 8 rows
//!   ~10%, q8_0 ~35%).
//!
//! So: L2 when the L1D is smaller than [`L1_FOR_T0`], else L1 in one hop on AMD family
//! 0x1A (Zen 5) and later, in two hops on the others; `BTLM_PREFETCH=l1|l1-one-hop|l2`
//! overrides. The CPU attention of a decode step prefetches its keys and values into the
//! same level (`attention/cpu.rs`: L2, or L1 for either L1 choice).

use std::sync::OnceLock;

use super::cpuid;
use super::env_choice::{env_or, named};

/// The smallest L1 data cache for which the kernels prefetch into L1.
pub const L1_FOR_T0: usize = 48 << 10;

/// Where the tile kernels prefetch the weight stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PrefetchLevel {
    /// Into L1 in two hops: `prefetcht1` far ahead, then `prefetcht0` near.
    L1,
    /// Into L1 in one hop: `prefetcht0` only.
    L1OneHop,
    /// `prefetcht1`: into L2 only.
    L2,
}

impl std::fmt::Display for PrefetchLevel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            PrefetchLevel::L1 => "l1",
            PrefetchLevel::L1OneHop => "l1-one-hop",
            PrefetchLevel::L2 => "l2",
        })
    }
}

impl PrefetchLevel {
    /// The level for an L1 data cache of `l1d` bytes on a CPU of this vendor and family
    /// ([`cpuid::family`]): L2 below [`L1_FOR_T0`], else L1 in one hop on AMD from family
    /// 0x1A (Zen 5) on and in two hops elsewhere (an unknown L1D counts as large enough,
    /// the choice measured on the most machines).
    pub fn for_cpu(l1d: Option<usize>, amd: bool, family: Option<u32>) -> PrefetchLevel {
        match l1d {
            Some(bytes) if bytes < L1_FOR_T0 => PrefetchLevel::L2,
            _ if cpuid::zen5_or_later(amd, family) => PrefetchLevel::L1OneHop,
            _ => PrefetchLevel::L1,
        }
    }

    /// `BTLM_PREFETCH`'s value read as a level (`None`: not one of `l1`, `l1-one-hop`,
    /// `l2`).
    pub fn parse(value: &str) -> Option<PrefetchLevel> {
        use PrefetchLevel::{L1, L1OneHop, L2};
        let names = [
            ("l1", L1),
            ("t0", L1),
            ("l1-one-hop", L1OneHop),
            ("l2", L2),
            ("t1", L2),
        ];
        named(value, &names)
    }

    /// The level of this process: `BTLM_PREFETCH` if it names one (another value is
    /// ignored with a warning), else [`Self::for_cpu`] of this CPU; decided once.
    pub fn active() -> PrefetchLevel {
        static ACTIVE: OnceLock<PrefetchLevel> = OnceLock::new();
        *ACTIVE.get_or_init(|| {
            env_or(
                "BTLM_PREFETCH",
                "l1, l1-one-hop, l2",
                PrefetchLevel::parse,
                || PrefetchLevel::for_cpu(l1d_bytes(), cpuid::vendor_is_amd(), cpuid::family()),
            )
        })
    }
}

/// The L1 data cache of this core in bytes, from CPUID's deterministic cache parameters
/// (leaf 4 on Intel, 0x8000_001D on AMD; both list the caches with the same fields), or
/// `None` where CPUID does not say.
// `__cpuid` is a safe function in newer Rust releases, unsafe in older ones.
#[allow(unused_unsafe)]
pub fn l1d_bytes() -> Option<usize> {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::x86_64::{__cpuid, __cpuid_count};
        // SAFETY: CPUID is available on every x86-64 CPU.
        let vendor = unsafe { __cpuid(0) };
        let leaf = if super::cpuid::vendor_is_amd() {
            // SAFETY: as above.
            let max_ext = unsafe { __cpuid(0x8000_0000) }.eax;
            if max_ext < 0x8000_001D {
                return None;
            }
            0x8000_001D
        } else {
            if vendor.eax < 4 {
                return None;
            }
            4
        };
        for sub in 0..16 {
            // SAFETY: the leaf exists (checked above); unknown subleaves read as type 0.
            let r = unsafe { __cpuid_count(leaf, sub) };
            let kind = r.eax & 0x1f;
            if kind == 0 {
                break;
            }
            let level = (r.eax >> 5) & 7;
            if kind == 1 && level == 1 {
                let ways = ((r.ebx >> 22) & 0x3ff) as usize + 1;
                let partitions = ((r.ebx >> 12) & 0x3ff) as usize + 1;
                let line = (r.ebx & 0xfff) as usize + 1;
                let sets = r.ecx as usize + 1;
                return Some(ways * partitions * line * sets);
            }
        }
        None
    }
    #[cfg(not(target_arch = "x86_64"))]
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `(L1D bytes, AMD, family, level)` cases of [`PrefetchLevel::for_cpu`].
    fn check_levels(cases: &[(Option<usize>, bool, Option<u32>, PrefetchLevel)]) {
        for &(l1d, amd, family, want) in cases {
            assert_eq!(
                PrefetchLevel::for_cpu(l1d, amd, family),
                want,
                "L1D {l1d:?}, AMD {amd}, family {family:?}"
            );
        }
    }

    #[test]
    fn the_level_follows_the_l1d_size() {
        let intel = Some(6);
        check_levels(&[
            (Some(32 << 10), false, intel, PrefetchLevel::L2),
            (Some(48 << 10), false, intel, PrefetchLevel::L1),
            (Some(64 << 10), false, intel, PrefetchLevel::L1),
            (None, false, intel, PrefetchLevel::L1),
        ]);
    }

    #[test]
    fn zen5_and_later_prefetch_into_l1_in_one_hop() {
        let l1 = Some(48 << 10);
        check_levels(&[
            (l1, true, Some(0x1a), PrefetchLevel::L1OneHop),
            (l1, true, Some(0x1b), PrefetchLevel::L1OneHop),
            (None, true, Some(0x1a), PrefetchLevel::L1OneHop),
            // Zen 4's 32 KiB L1D prefetches into L2; a Zen 4 with a larger one would keep
            // two hops.
            (Some(32 << 10), true, Some(0x19), PrefetchLevel::L2),
            (l1, true, Some(0x19), PrefetchLevel::L1),
            (l1, true, None, PrefetchLevel::L1),
            // A small L1D decides first, whatever the family.
            (Some(32 << 10), true, Some(0x1a), PrefetchLevel::L2),
            (l1, false, Some(0x1a), PrefetchLevel::L1),
        ]);
    }

    #[test]
    fn the_override_names_a_level() {
        assert_eq!(PrefetchLevel::parse("l2"), Some(PrefetchLevel::L2));
        assert_eq!(PrefetchLevel::parse(" L1 "), Some(PrefetchLevel::L1));
        assert_eq!(
            PrefetchLevel::parse("l1-one-hop"),
            Some(PrefetchLevel::L1OneHop)
        );
        assert_eq!(
            PrefetchLevel::parse(&PrefetchLevel::L1OneHop.to_string()),
            Some(PrefetchLevel::L1OneHop)
        );
        assert_eq!(PrefetchLevel::parse("t1"), Some(PrefetchLevel::L2));
        assert_eq!(PrefetchLevel::parse("l3"), None);
        assert_eq!(PrefetchLevel::parse(""), None);
    }

    /// Every x86-64 CPU this runs on (Intel or AMD since 2011) lists its L1D, and every
    /// one has between 16 and 128 KiB.
    #[cfg(target_arch = "x86_64")]
    #[test]
    fn this_cpu_reports_a_plausible_l1d() {
        let bytes = l1d_bytes().expect("CPUID lists the L1 data cache");
        assert!((16 << 10..=128 << 10).contains(&bytes), "{bytes} bytes");
        assert_eq!(bytes % 4096, 0, "{bytes} bytes");
    }
}
