//! Which cache level the AVX-512 tile kernels prefetch the weight stream into.
//!
//! The kernels prefetch the weights ahead of the vector being multiplied: into L1 in two
//! hops (`prefetcht1` 16 KiB ahead, `prefetcht0` 2 KiB ahead, see `avx512::into_l1`; one
//! q8_0 row in one, `avx512::ahead_one`), into L2 `avx512::PREFETCH` bytes ahead. Into L1
//! (`prefetcht0`) was measured best on Zen 5 (session 9) and is what the Xeon's kernels were
//! tuned with (Sapphire Rapids, sessions 15–17); both have a 48 KiB L1D. On a 32 KiB L1D
//! (Zen 4, session 18) the 8 KiB ahead share L1 with up to eight activation rows (20–54 KiB
//! for BTLM's products) and evict them: prefetching into L2 (`prefetcht1`) made 4- and
//! 8-row decode steps 8–35% faster there (q4k 8 rows ~10%, q8_0 ~35%;
//! docs/benchmarks.md). So: L2 when the L1D is smaller than [`L1_FOR_T0`], else L1;
//! `BTLM_PREFETCH=l1|l2` overrides. The CPU attention of a decode step prefetches its keys
//! and values into the same level (`attention/cpu.rs`).

use std::sync::OnceLock;

/// The smallest L1 data cache for which the kernels prefetch into L1.
pub const L1_FOR_T0: usize = 48 << 10;

/// Where the tile kernels prefetch the weight stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PrefetchLevel {
    /// `prefetcht0`: into L1 (and L2).
    L1,
    /// `prefetcht1`: into L2 only.
    L2,
}

impl std::fmt::Display for PrefetchLevel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            PrefetchLevel::L1 => "l1",
            PrefetchLevel::L2 => "l2",
        })
    }
}

impl PrefetchLevel {
    /// The level for an L1 data cache of `l1d` bytes (unknown: L1, the choice measured on
    /// the most machines).
    pub fn for_l1d(l1d: Option<usize>) -> PrefetchLevel {
        match l1d {
            Some(bytes) if bytes < L1_FOR_T0 => PrefetchLevel::L2,
            _ => PrefetchLevel::L1,
        }
    }

    /// `BTLM_PREFETCH`'s value read as a level (`None`: not `l1` or `l2`).
    pub fn parse(value: &str) -> Option<PrefetchLevel> {
        match value.trim().to_ascii_lowercase().as_str() {
            "l1" | "t0" => Some(PrefetchLevel::L1),
            "l2" | "t1" => Some(PrefetchLevel::L2),
            _ => None,
        }
    }

    /// The level of this process: `BTLM_PREFETCH` if it names one, else [`Self::for_l1d`]
    /// of this CPU's L1D; decided once.
    pub fn active() -> PrefetchLevel {
        static ACTIVE: OnceLock<PrefetchLevel> = OnceLock::new();
        *ACTIVE.get_or_init(|| {
            std::env::var("BTLM_PREFETCH")
                .ok()
                .and_then(|v| PrefetchLevel::parse(&v))
                .unwrap_or_else(|| PrefetchLevel::for_l1d(l1d_bytes()))
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

    #[test]
    fn the_level_follows_the_l1d_size() {
        assert_eq!(PrefetchLevel::for_l1d(Some(32 << 10)), PrefetchLevel::L2);
        assert_eq!(PrefetchLevel::for_l1d(Some(48 << 10)), PrefetchLevel::L1);
        assert_eq!(PrefetchLevel::for_l1d(Some(64 << 10)), PrefetchLevel::L1);
        assert_eq!(PrefetchLevel::for_l1d(None), PrefetchLevel::L1);
    }

    #[test]
    fn the_override_names_a_level() {
        assert_eq!(PrefetchLevel::parse("l2"), Some(PrefetchLevel::L2));
        assert_eq!(PrefetchLevel::parse(" L1 "), Some(PrefetchLevel::L1));
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
