//! How the AVX-512 q4k tile kernel (`avx512::q4k_rows`) applies the 6-bit scales of its
//! sub-blocks. Both ways give the same bits: the exact integer `Σ_j sc_j · Σ q·a` of a
//! super-block rounded once to f32 (what the AMX-INT8 kernels compute).
//!
//! - [`Q4kScaling::F32`]: each sub-block's integer sum converted to f32 and scaled in an FMA,
//!   added up in two halves of four sub-blocks (each half exact in f32). Chosen on the
//!   Xeon of session 21 (2–5% faster at eight rows than `vpmulld`, which is two uops there
//!   on the port the `vpdpbusd` need); on Zen 4 (session 18) a `vpmulld` zmm takes a
//!   `vpdpbusd` slot and cost 12–18% of the eight-row kernel (docs/benchmarks.md).
//! - [`Q4kScaling::I32`]: each sub-block's sum times its scale in a `vpmulld`, added up in
//!   i32 (at most 8 · 63 · 60 960 < 2³¹) and converted once. It spares the 16 half-sums
//!   that spill from the registers at eight rows (a load, an FMA and a store per row and
//!   sub-block). On Zen 5 (`shapes q4k 8,256 core`, alternated, session 41): 5.0–5.3 →
//!   5.6–6.1 G `vpdpbusd`/s a core.
//!
//! So: [`Q4kScaling::I32`] on AMD family 0x1A (Zen 5) and later, [`Q4kScaling::F32`] on the
//! others; `BTLM_Q4K_SCALES=f32|i32` overrides.

use std::sync::OnceLock;

use super::cpuid;
use super::env_choice::{env_or, named};

/// Where the q4k tile kernel multiplies its sub-block sums by their 6-bit scales.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Q4kScaling {
    /// Converted to f32 and scaled in FMAs, summed in two exact halves.
    F32,
    /// Scaled in i32 (`vpmulld`), summed in i32 and converted once.
    I32,
}

impl std::fmt::Display for Q4kScaling {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Q4kScaling::F32 => "f32",
            Q4kScaling::I32 => "i32",
        })
    }
}

impl Q4kScaling {
    /// The choice for a CPU of this vendor and family ([`cpuid::family`]):
    /// [`Q4kScaling::I32`] on AMD from family 0x1A (Zen 5) on, else [`Q4kScaling::F32`].
    pub fn for_cpu(amd: bool, family: Option<u32>) -> Q4kScaling {
        if cpuid::zen5_or_later(amd, family) {
            Q4kScaling::I32
        } else {
            Q4kScaling::F32
        }
    }

    /// `BTLM_Q4K_SCALES`'s value read as a choice (`None`: not `f32` or `i32`).
    pub fn parse(value: &str) -> Option<Q4kScaling> {
        named(value, &[("f32", Q4kScaling::F32), ("i32", Q4kScaling::I32)])
    }

    /// The choice of this process: `BTLM_Q4K_SCALES` if it names one (another value is
    /// ignored with a warning), else [`Self::for_cpu`] of this CPU; decided once.
    pub fn active() -> Q4kScaling {
        static ACTIVE: OnceLock<Q4kScaling> = OnceLock::new();
        *ACTIVE.get_or_init(|| {
            env_or("BTLM_Q4K_SCALES", "f32, i32", Q4kScaling::parse, || {
                Q4kScaling::for_cpu(cpuid::vendor_is_amd(), cpuid::family())
            })
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zen5_and_later_scale_in_i32_others_in_f32() {
        assert_eq!(Q4kScaling::for_cpu(true, Some(0x1a)), Q4kScaling::I32);
        assert_eq!(Q4kScaling::for_cpu(true, Some(0x1b)), Q4kScaling::I32);
        assert_eq!(Q4kScaling::for_cpu(true, Some(0x19)), Q4kScaling::F32);
        assert_eq!(Q4kScaling::for_cpu(true, None), Q4kScaling::F32);
        assert_eq!(Q4kScaling::for_cpu(false, Some(6)), Q4kScaling::F32);
        assert_eq!(Q4kScaling::for_cpu(false, Some(0x1a)), Q4kScaling::F32);
    }

    #[test]
    fn the_override_names_a_choice() {
        assert_eq!(Q4kScaling::parse("i32"), Some(Q4kScaling::I32));
        assert_eq!(Q4kScaling::parse(" F32 "), Some(Q4kScaling::F32));
        assert_eq!(Q4kScaling::parse("int"), None);
        assert_eq!(Q4kScaling::parse(""), None);
    }
}
