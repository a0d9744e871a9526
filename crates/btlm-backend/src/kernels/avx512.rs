//! AVX-512 kernels (F, BW, VL, VNNI: Cascade Lake, Ice Lake, Sapphire Rapids, Zen 4 and
//! later; the bf16 kernel also needs AVX512-BF16: Cooper Lake, Sapphire Rapids, Zen 4).
//!
//! One 64-byte weight vector covers 16 output rows; it is loaded once and multiplied with
//! up to [`MAX_ROWS`] activation rows, each broadcast from memory: f32/f16 with FMA, bf16
//! with `vdpbf16ps` (pairs of inputs), q8_0 and q4k with `vpdpbusd` (groups of 4 inputs,
//! unsigned weights × signed 8-bit activations); q8_0's block scales are applied in f32 per
//! 32 inputs, q4k's 6-bit sub-block scales in exact f32 FMAs and its f32 scales once per 256
//! inputs.
//! Every tile kernel prefetches the weight stream [`PREFETCH`] bytes ahead (see there).
//! Only `bf16_rows` enables AVX512-BF16: on CPUs without it ([`has_bf16`] false) the
//! dispatcher (`run_tile` in `kernels/mod.rs`) runs bf16 weights on the AVX2 bf16 kernel,
//! which reads the same packed tiles and bf16 activations.

// Indexed loops over register arrays (rows × halves) read like the arithmetic they do.
#![allow(clippy::needless_range_loop)]

use std::arch::asm;
use std::arch::x86_64::*;

use super::acts::Acts;
use super::format::{Q4K_TILE_BLOCK, Q8_0_TILE_BLOCK, QBLOCK, QK_K, TILE, WeightFormat, q4k_off};
use super::prefetch::PrefetchLevel;
use super::q4k_scaling::Q4kScaling;
use super::simd::{Q8KRows, Q8Rows};

/// Activation rows per kernel call.
pub const MAX_ROWS: usize = 8;

/// Whether this CPU runs these kernels: AVX-512 F/BW/VL/VNNI, and AVX2/FMA/F16C for the
/// AVX2 bf16 kernel that replaces `bf16_rows` without [`has_bf16`].
pub fn supported() -> bool {
    is_x86_feature_detected!("avx512f")
        && is_x86_feature_detected!("avx512bw")
        && is_x86_feature_detected!("avx512vl")
        && is_x86_feature_detected!("avx512vnni")
        && super::avx2::supported()
}

/// Whether this CPU also has AVX512-BF16 (`vdpbf16ps`), which `bf16_rows` needs
/// (`std_detect` caches the answer).
pub fn has_bf16() -> bool {
    is_x86_feature_detected!("avx512bf16")
}

/// Reads 4 bytes at `p` as one i32 lane value.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni")]
unsafe fn bcast4(p: *const u8) -> __m512i {
    // SAFETY: the caller guarantees 4 readable bytes at `p`.
    _mm512_set1_epi32(unsafe { p.cast::<i32>().read_unaligned() })
}

simd_tile!(1, 2, 3, 4, 5, 6, 7, 8);

/// How far ahead of the weights being multiplied the tile kernels prefetch them (into L1
/// or L2, see [`PrefetchLevel`]). Without it the core issues the reads of the stream late once the
/// arithmetic of several rows fills its out-of-order window: measured on Zen 5 (2 threads,
/// one BTLM-3B layer of products from memory, session 9, docs/benchmarks.md), q4k 1 row 1.7
/// → 1.1 ms, 8 rows 4.0 → 1.5–1.9 ms; q8_0 8 rows 4.5–8 → 2.8–3.6 ms, 1 row unchanged
/// (already at the memory bandwidth); 2 KiB helped less, 12–24 KiB, `prefetcht1` (8 or 16
/// KiB) or both hints no more than this there (but `prefetcht1` on Zen 4's 32 KiB L1D:
/// [`PrefetchLevel`]). The dense kernels (f32, f16, bf16) prefetch alike
/// since session 13: bf16 8 rows `c_attn` 1.20–1.39 → 0.80–0.91 ms. Only the first call
/// over a tile prefetches ([`Q8Rows::first`]): the later ones of a product with more than
/// [`MAX_ROWS`] rows (prefill) read the tile from cache. The q4k kernel spreads its
/// prefetches between the arithmetic, one per weight vector: issued five at a time ahead of
/// each 288-byte share of a super-block they stalled the core (full fill buffers) and one
/// core streamed 12 GB/s from memory, 17.7 spread out (Xeon, session 16; the tiles 256-byte
/// aligned, see `pack_cache::ALIGN`). Into L1 the stream is prefetched in two hops
/// instead ([`NEAR`], [`FAR`]) except on Zen 5 ([`PrefetchLevel::L1OneHop`]); this
/// distance is the L2 level's and the one hop's.
pub(super) const PREFETCH: usize = 8192;

/// Prefetching into L1, how far ahead the `prefetcht0` of each line goes; a `prefetcht1`
/// [`FAR`] ahead has brought it into L2 by then. One hint 8 KiB ahead into L1 (the
/// [`PREFETCH`] distance) left the Xeon's single row short of the memory it can read:
/// `shapes q4k 1,8 mem`, alternated, one row of each matrix 24.3–32.3 GB/s with one hint
/// against 28.4–33.0 with both (2 KiB and 16 KiB; 1–8 KiB near and 8–32 KiB far all
/// alike), eight rows ~2% faster; without any prefetch 17.4–19.1. At 32 layers f32 decodes
/// ~1.2× faster and q8_0's eight rows 1.17–1.24× (session 34, docs/benchmarks.md). Zen 5
/// had measured both hints no faster than one (session 9), and one q4k row on one of its
/// cores 1.27× faster with one (session 42): there the kernels other than q8_0's rows
/// take one hop ([`PrefetchLevel::L1OneHop`]). The AMX-INT8 kernels prefetch
/// the same way ([`into_l1`], `amx8.rs`); the AMX bf16 kernels' f32 tiles read in place
/// prefetch this far ahead (`amx.rs`).
pub(super) const NEAR: usize = 2048;
/// See [`NEAR`].
const FAR: usize = 16384;

/// `PF` of a kernel call that reads its tile from cache (not the first over it,
/// [`Q8Rows::first`]): no prefetches compiled in.
const NO_PREFETCH: u8 = 0;
/// `PF` of a first call prefetching into L1 (`prefetcht0`).
const TO_L1: u8 = 1;
/// `PF` of a first call prefetching into L2 only (`prefetcht1`; see [`PrefetchLevel`]).
const TO_L2: u8 = 2;
/// `PF` of a first call prefetching into L1 in one hop (`prefetcht0` [`PREFETCH`] bytes
/// ahead; [`PrefetchLevel::L1OneHop`]).
const TO_L1_ONE_HOP: u8 = 3;

/// Prefetches the cache lines ahead of `p` (possibly past the matrix: a prefetch never
/// faults) into the cache level `PF` names: into L1 the line [`NEAR`] bytes after `p` and
/// into L2 the one [`FAR`] after it ([`TO_L1`]), into L1 or L2 the one [`PREFETCH`] after
/// it ([`TO_L1_ONE_HOP`], [`TO_L2`]), or nothing ([`NO_PREFETCH`]).
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni")]
fn ahead<const PF: u8>(p: *const u8) {
    if PF == TO_L1 {
        into_l1(p);
    } else {
        ahead_one::<PF>(p);
    }
}

/// The two hops of the weight stream into L1 for the line at `p`: the line [`NEAR`] bytes
/// after it into L1, the one [`FAR`] after it into L2 (possibly past the matrix: a prefetch
/// never faults).
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni")]
pub(super) fn into_l1(p: *const u8) {
    // Hints: they read nothing observable and never fault.
    _mm_prefetch::<_MM_HINT_T0>(p.wrapping_add(NEAR).cast());
    _mm_prefetch::<_MM_HINT_T1>(p.wrapping_add(FAR).cast());
}

/// [`ahead`] in one hop: the line [`PREFETCH`] bytes after `p` into the level `PF` names
/// (L1 for [`TO_L1`] too).
/// One q8_0 row prefetches so: its 9 lines a block are nearly all of its work, and the
/// second hint cost it ~4% (`shapes q8_0 1,8 mem`, session 34) while it gained its 8 rows
/// 15%.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni")]
fn ahead_one<const PF: u8>(p: *const u8) {
    // Hints: they read nothing observable and never fault.
    if PF == TO_L1 || PF == TO_L1_ONE_HOP {
        _mm_prefetch::<_MM_HINT_T0>(p.wrapping_add(PREFETCH).cast());
    } else if PF == TO_L2 {
        _mm_prefetch::<_MM_HINT_T1>(p.wrapping_add(PREFETCH).cast());
    }
}

/// `$pass::<R, TO_L1, TO_L1_ONE_HOP or TO_L2>(args…)` (prefetching as this process's
/// [`PrefetchLevel`] says) for the first call over a tile, else `$pass::<R, NO_PREFETCH>(args…)`:
/// each row kernel's entry point. A kernel's further const arguments follow `R`'s
/// (`$pass::<R, true>(…)` calls `$pass::<R, PF, true>`).
macro_rules! first_pass {
    ($first:expr, $pass:ident::<$r:ident $(, $more:tt)*>($($arg:expr),*)) => {
        if !$first {
            $pass::<$r, NO_PREFETCH $(, $more)*>($($arg),*)
        } else {
            match PrefetchLevel::active() {
                PrefetchLevel::L1 => $pass::<$r, TO_L1 $(, $more)*>($($arg),*),
                PrefetchLevel::L1OneHop => $pass::<$r, TO_L1_ONE_HOP $(, $more)*>($($arg),*),
                PrefetchLevel::L2 => $pass::<$r, TO_L2 $(, $more)*>($($arg),*),
            }
        }
    };
}

#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni")]
unsafe fn store<const R: usize>(acc: &[__m512; R], out: &mut [[f32; TILE]]) {
    for r in 0..R {
        // SAFETY: `out[r]` is 16 floats; `out` has R rows (checked by the dispatcher).
        unsafe { _mm512_storeu_ps(out[r].as_mut_ptr(), acc[r]) };
    }
}

#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni")]
unsafe fn f32_rows<const R: usize>(
    w: *const u8,
    k_pad: usize,
    x: *const f32,
    stride: usize,
    first: bool,
    out: &mut [[f32; TILE]],
) {
    // SAFETY: the forwarded contract.
    unsafe { first_pass!(first, f32_pass::<R>(w, k_pad, x, stride, out)) }
}

/// [`f32_rows`], prefetching the weight stream as `PF` says (the first call over the tile).
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni")]
unsafe fn f32_pass<const R: usize, const PF: u8>(
    w: *const u8,
    k_pad: usize,
    x: *const f32,
    stride: usize,
    out: &mut [[f32; TILE]],
) {
    let w = w.cast::<f32>();
    let mut acc0 = [_mm512_setzero_ps(); R];
    let mut acc1 = [_mm512_setzero_ps(); R];
    let mut k = 0;
    // SAFETY (whole body): the tile holds 16·k_pad floats; every row holds k_pad floats.
    unsafe {
        while k + 2 <= k_pad {
            // The two 64-byte vectors of this step (see `ahead`).
            ahead::<PF>(w.add(k * TILE).cast());
            ahead::<PF>(w.add((k + 1) * TILE).cast());
            let w0 = _mm512_loadu_ps(w.add(k * TILE));
            let w1 = _mm512_loadu_ps(w.add((k + 1) * TILE));
            for r in 0..R {
                let xr = x.add(r * stride + k);
                acc0[r] = _mm512_fmadd_ps(_mm512_set1_ps(*xr), w0, acc0[r]);
                acc1[r] = _mm512_fmadd_ps(_mm512_set1_ps(*xr.add(1)), w1, acc1[r]);
            }
            k += 2;
        }
        if k < k_pad {
            let w0 = _mm512_loadu_ps(w.add(k * TILE));
            for r in 0..R {
                acc0[r] = _mm512_fmadd_ps(_mm512_set1_ps(*x.add(r * stride + k)), w0, acc0[r]);
            }
        }
        for r in 0..R {
            acc0[r] = _mm512_add_ps(acc0[r], acc1[r]);
        }
        store::<R>(&acc0, out);
    }
}

#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni")]
unsafe fn f16_rows<const R: usize>(
    w: *const u8,
    k_pad: usize,
    x: *const f32,
    stride: usize,
    first: bool,
    out: &mut [[f32; TILE]],
) {
    // SAFETY: the forwarded contract.
    unsafe { first_pass!(first, f16_pass::<R>(w, k_pad, x, stride, out)) }
}

/// [`f16_rows`], prefetching the weight stream as `PF` says (the first call over the tile).
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni")]
unsafe fn f16_pass<const R: usize, const PF: u8>(
    w: *const u8,
    k_pad: usize,
    x: *const f32,
    stride: usize,
    out: &mut [[f32; TILE]],
) {
    let mut acc0 = [_mm512_setzero_ps(); R];
    let mut acc1 = [_mm512_setzero_ps(); R];
    let mut k = 0;
    // SAFETY (whole body): the tile holds 16·k_pad halves; every row holds k_pad floats.
    unsafe {
        while k + 2 <= k_pad {
            // This step's 64 bytes (see `ahead`).
            ahead::<PF>(w.add(k * 32));
            let w0 = _mm512_cvtph_ps(_mm256_loadu_si256(w.add(k * 32).cast()));
            let w1 = _mm512_cvtph_ps(_mm256_loadu_si256(w.add(k * 32 + 32).cast()));
            for r in 0..R {
                let xr = x.add(r * stride + k);
                acc0[r] = _mm512_fmadd_ps(_mm512_set1_ps(*xr), w0, acc0[r]);
                acc1[r] = _mm512_fmadd_ps(_mm512_set1_ps(*xr.add(1)), w1, acc1[r]);
            }
            k += 2;
        }
        if k < k_pad {
            let w0 = _mm512_cvtph_ps(_mm256_loadu_si256(w.add(k * 32).cast()));
            for r in 0..R {
                acc0[r] = _mm512_fmadd_ps(_mm512_set1_ps(*x.add(r * stride + k)), w0, acc0[r]);
            }
        }
        for r in 0..R {
            acc0[r] = _mm512_add_ps(acc0[r], acc1[r]);
        }
        store::<R>(&acc0, out);
    }
}

#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx512bf16")]
unsafe fn bf16_rows<const R: usize>(
    w: *const u8,
    k_pad: usize,
    x: *const u16,
    stride: usize,
    first: bool,
    out: &mut [[f32; TILE]],
) {
    // SAFETY: the forwarded contract.
    unsafe { first_pass!(first, bf16_pass::<R>(w, k_pad, x, stride, out)) }
}

/// [`bf16_rows`], prefetching the weight stream as `PF` says (the first call over the tile).
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx512bf16")]
unsafe fn bf16_pass<const R: usize, const PF: u8>(
    w: *const u8,
    k_pad: usize,
    x: *const u16,
    stride: usize,
    out: &mut [[f32; TILE]],
) {
    let mut acc0 = [_mm512_setzero_ps(); R];
    let mut acc1 = [_mm512_setzero_ps(); R];
    let pairs = k_pad / 2;
    let mut p = 0;
    let bh = |v: __m512i| -> __m512bh {
        // SAFETY: both are 512 bits of plain data.
        unsafe { std::mem::transmute::<__m512i, __m512bh>(v) }
    };
    // SAFETY (whole body): the tile holds k_pad/2 vectors of 64 bytes; every row holds
    // k_pad bf16 values (k_pad is even).
    unsafe {
        while p + 2 <= pairs {
            // The two 64-byte vectors of this step (see `ahead`).
            ahead::<PF>(w.add(p * 64));
            ahead::<PF>(w.add(p * 64 + 64));
            let w0 = bh(_mm512_loadu_si512(w.add(p * 64).cast()));
            let w1 = bh(_mm512_loadu_si512(w.add(p * 64 + 64).cast()));
            for r in 0..R {
                let xr = x.add(r * stride + 2 * p).cast::<u8>();
                acc0[r] = _mm512_dpbf16_ps(acc0[r], bh(bcast4(xr)), w0);
                acc1[r] = _mm512_dpbf16_ps(acc1[r], bh(bcast4(xr.add(4))), w1);
            }
            p += 2;
        }
        if p < pairs {
            let w0 = bh(_mm512_loadu_si512(w.add(p * 64).cast()));
            for r in 0..R {
                let xr = x.add(r * stride + 2 * p).cast::<u8>();
                acc0[r] = _mm512_dpbf16_ps(acc0[r], bh(bcast4(xr)), w0);
            }
        }
        for r in 0..R {
            acc0[r] = _mm512_add_ps(acc0[r], acc1[r]);
        }
        store::<R>(&acc0, out);
    }
}

/// One q8_0 tile for `R` activation rows: [`q8_0_pass`], prefetching the weights in the
/// first call over the tile.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni")]
unsafe fn q8_0_rows<const R: usize>(
    w: *const u8,
    nblocks: usize,
    a: &Q8Rows,
    out: &mut [[f32; TILE]],
) {
    // SAFETY: the forwarded contract.
    unsafe { first_pass!(a.first, q8_0_pass::<R>(w, nblocks, a, out)) }
}

/// One q8_0 tile for `R` activation rows, prefetching the weight stream as `PF` says: per block
/// of 32 inputs, `vpdpbusd` sums in i32, corrected for the +128 of the stored weights,
/// converted and scaled in f32.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni")]
unsafe fn q8_0_pass<const R: usize, const PF: u8>(
    w: *const u8,
    nblocks: usize,
    a: &Q8Rows,
    out: &mut [[f32; TILE]],
) {
    let mut accf = [_mm512_setzero_ps(); R];
    // SAFETY (whole body): the tile holds `nblocks` blocks of 544 bytes; every activation
    // row holds nblocks·32 quants and nblocks scales and sums.
    unsafe {
        for b in 0..nblocks {
            let blk = w.add(b * Q8_0_TILE_BLOCK);
            let dw = _mm512_cvtph_ps(_mm256_loadu_si256(blk.cast()));
            let mut acci = [_mm512_setzero_si512(); R];
            // The block's 544 bytes, 64 at a time (see `ahead`, `ahead_one`). Several rows
            // take the two hops into L1 where the others take one: ~10% faster on Zen 5
            // (`shapes q8_0 8 mem`, one thread, session 42).
            let prefetch = |p: *const u8| {
                if R == 1 {
                    ahead_one::<PF>(p)
                } else if PF == TO_L1_ONE_HOP {
                    into_l1(p)
                } else {
                    ahead::<PF>(p)
                }
            };
            prefetch(blk.add(512));
            for g in 0..8 {
                prefetch(blk.add(g * 64));
                let wv = _mm512_loadu_si512(blk.add(2 * TILE + g * 64).cast());
                for r in 0..R {
                    let ar = a.q.add(r * a.k_pad + b * QBLOCK + g * 4).cast::<u8>();
                    acci[r] = _mm512_dpbusd_epi32(acci[r], wv, bcast4(ar));
                }
            }
            for r in 0..R {
                let i = r * a.nb + b;
                // Weights are stored as q + 128: remove 128 · Σ a.
                let corr = _mm512_set1_epi32(128 * *a.sum.add(i));
                let t = _mm512_cvtepi32_ps(_mm512_sub_epi32(acci[r], corr));
                let scale = _mm512_mul_ps(dw, _mm512_set1_ps(*a.d.add(i)));
                accf[r] = _mm512_fmadd_ps(t, scale, accf[r]);
            }
        }
        store::<R>(&accf, out);
    }
}

/// The 6-bit scales and mins of sub-block `j` of the q4k super-block at `blk`, one i32 lane
/// per output: `hi` is the super-block's high bits (`q4k_off::HI`) shifted right by `2·j`.
///
/// # Safety
/// AVX-512 F/BW; `blk` a whole q4k super-block of a tile, `j < 8`.
#[inline]
#[target_feature(enable = "avx512f,avx512bw")]
pub(super) unsafe fn q4k_scales_mins(blk: *const u8, j: usize, hi: __m512i) -> (__m512i, __m512i) {
    let three = _mm512_set1_epi32(3);
    // SAFETY: the sub-block's 16 low bytes lie in the super-block (caller).
    let lo =
        _mm512_cvtepu8_epi32(unsafe { _mm_loadu_si128(blk.add(q4k_off::LO + j * TILE).cast()) });
    let sc = _mm512_or_si512(
        _mm512_and_si512(lo, _mm512_set1_epi32(15)),
        _mm512_slli_epi32::<4>(_mm512_and_si512(hi, three)),
    );
    let m = _mm512_or_si512(
        _mm512_srli_epi32::<4>(lo),
        _mm512_slli_epi32::<4>(_mm512_and_si512(_mm512_srli_epi32::<16>(hi), three)),
    );
    (sc, m)
}

/// Puts sub-block `j`'s mins `m` (one i32 lane per output, at most 63) into `mpair`, the
/// layout [`q4k_row`] multiplies with the block sums: lane c of `mpair[p]` holds the mins of
/// sub-blocks 2p (low i16) and 2p + 1 (high i16). Call in order of `j`.
#[inline]
#[target_feature(enable = "avx512f,avx512bw")]
pub(super) fn pair_mins(mpair: &mut [__m512i; 4], j: usize, m: __m512i) {
    mpair[j / 2] = if j.is_multiple_of(2) {
        m
    } else {
        _mm512_or_si512(mpair[j / 2], _mm512_slli_epi32::<16>(m))
    };
}

/// One q4k tile for `R` activation rows (activations with one scale per super-block): per
/// sub-block `vpdpbusd` sums the products in i32 (at most 32·15·127 = 60 960), each sum is
/// multiplied by its 6-bit scale as this CPU does it best ([`Q4kScaling::active`]), and the
/// super-block's `Σ_j sc_j · Σ q·a` comes out as the exact integer rounded once to f32,
/// which is what the AMX-INT8 route computes. In f32 ([`Q4kScaling::F32`]) the sums are
/// converted and scaled in FMAs, added up over each half of the super-block (at most
/// 63 · 60 960 · 4 = 15 361 920 < 2²⁴, so every step is exact) and the halves added once:
/// one rounding, as in i32 ([`Q4kScaling::I32`]: `vpmulld`, summed in i32, converted
/// once). The min term is `vpmaddwd` of two sub-blocks' mins with their activation sums as
/// i16 pairs (|sum| ≤ 32·127); both are scaled once per super-block, as in the AVX2
/// kernel.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni")]
unsafe fn q4k_rows<const R: usize>(
    w: *const u8,
    nsuper: usize,
    a: &Q8KRows,
    out: &mut [[f32; TILE]],
) {
    // SAFETY: the forwarded contract.
    unsafe { q4k_rows_scaled::<R>(Q4kScaling::active(), w, nsuper, a, out) }
}

/// [`q4k_rows`] with the sub-block scales applied as `scaling` says.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni")]
unsafe fn q4k_rows_scaled<const R: usize>(
    scaling: Q4kScaling,
    w: *const u8,
    nsuper: usize,
    a: &Q8KRows,
    out: &mut [[f32; TILE]],
) {
    // SAFETY (both): the forwarded contract.
    match scaling {
        Q4kScaling::I32 => unsafe { first_pass!(a.first, q4k_pass::<R, true>(w, nsuper, a, out)) },
        Q4kScaling::F32 => unsafe { first_pass!(a.first, q4k_pass::<R, false>(w, nsuper, a, out)) },
    }
}

/// [`q4k_rows`], prefetching the weight stream as `PF` says (the first call over the tile)
/// and scaling the sub-block sums in i32 if `I32`, else in f32 (see [`Q4kScaling`]).
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni")]
unsafe fn q4k_pass<const R: usize, const PF: u8, const I32: bool>(
    w: *const u8,
    nsuper: usize,
    a: &Q8KRows,
    out: &mut [[f32; TILE]],
) {
    let mut accf = [_mm512_setzero_ps(); R];
    let nib = _mm512_set1_epi8(0x0f);
    // SAFETY (whole body): the tile holds `nsuper` blocks of 2304 bytes; every activation
    // row holds nsuper·256 quants, nsuper scales and nsuper·8 block sums.
    unsafe {
        for s in 0..nsuper {
            let blk = w.add(s * Q4K_TILE_BLOCK);
            let d = _mm512_cvtph_ps(_mm256_loadu_si256(blk.add(q4k_off::D).cast()));
            let dmin = _mm512_cvtph_ps(_mm256_loadu_si256(blk.add(q4k_off::DMIN).cast()));
            let mut hi = _mm512_loadu_si512(blk.add(q4k_off::HI).cast());
            // The scaled sums of sub-blocks 0–3 and 4–7, each exact in f32 (`!I32`).
            let mut halves = [[_mm512_setzero_ps(); R]; 2];
            // The exact integer sum of all eight (`I32`).
            let mut total = [_mm512_setzero_si512(); R];
            // Sub-blocks' mins in pairs ([`pair_mins`]).
            let mut mpair = [_mm512_setzero_si512(); 4];
            for j in 0..8 {
                let (sc, m) = q4k_scales_mins(blk, j, hi);
                hi = _mm512_srli_epi32::<2>(hi);
                pair_mins(&mut mpair, j, m);
                // The super-block's 256 header bytes, a line in each of the first four
                // sub-blocks (see `ahead`).
                if j < 4 {
                    ahead::<PF>(blk.add(j * 64));
                }
                let mut acci = [_mm512_setzero_si512(); R];
                let qs = blk.add(q4k_off::QS + j * 256);
                for v in 0..4 {
                    // One prefetch per weight vector, between the arithmetic (see `ahead`).
                    ahead::<PF>(qs.add(v * 64));
                    let qv = _mm512_loadu_si512(qs.add(v * 64).cast());
                    let ql = _mm512_and_si512(qv, nib);
                    let qh = _mm512_and_si512(_mm512_srli_epi16::<4>(qv), nib);
                    for r in 0..R {
                        let ar = a.q.add(r * a.k_pad + s * QK_K + j * QBLOCK).cast::<u8>();
                        acci[r] = _mm512_dpbusd_epi32(acci[r], ql, bcast4(ar.add(v * 4)));
                        acci[r] = _mm512_dpbusd_epi32(acci[r], qh, bcast4(ar.add(v * 4 + 16)));
                    }
                }
                if I32 {
                    for r in 0..R {
                        total[r] = _mm512_add_epi32(total[r], _mm512_mullo_epi32(acci[r], sc));
                    }
                } else {
                    let sc = _mm512_cvtepi32_ps(sc);
                    let half = &mut halves[j / 4];
                    for r in 0..R {
                        half[r] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(acci[r]), sc, half[r]);
                    }
                }
            }
            for r in 0..R {
                let bs = a.bsum.add(r * a.nb + s * (QK_K / QBLOCK)).cast::<u8>();
                let ad = *a.d.add(r * a.ns + s);
                let sum = if I32 {
                    _mm512_cvtepi32_ps(total[r])
                } else {
                    _mm512_add_ps(halves[0][r], halves[1][r])
                };
                accf[r] = q4k_row(sum, &mpair, bs, (d, dmin), ad, accf[r]);
            }
        }
        store::<R>(&accf, out);
    }
}

/// `accf` plus one row's part of a q4k super-block, from `acc` (the integer `Σ_j sc_j · Σ q·a`
/// of its 8 sub-blocks, rounded to f32), the mins `mpair` (lane c: sub-blocks 2p and 2p + 1 as i16 pairs),
/// the row's 8 block sums at `bs` (i16) and activation scale `ad`, and the super-block's
/// `(d, dmin)`: `(acc·d − Σ m·bsum·dmin) · ad + accf`. Shared by the AVX-512 kernel and the
/// AMX-INT8 one (`amx8.rs`), which must give the same bits.
///
/// # Safety
/// AVX-512 F/BW; `bs` readable for 16 bytes.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni")]
pub(super) unsafe fn q4k_row(
    acc: __m512,
    mpair: &[__m512i; 4],
    bs: *const u8,
    (d, dmin): (__m512, __m512),
    ad: f32,
    accf: __m512,
) -> __m512 {
    // `vpdpwssd` with the block sums broadcast from memory: one instruction per pair of
    // sub-blocks where LLVM emits `vpmaddwd` + `vpaddd` + `vpbroadcastd` for the intrinsic
    // (its tuning splits the dot product), the min term being half of the AMX-INT8
    // kernel's rescale. The same exact integer sums (no saturation, |sum| < 2²¹).
    let mut msum = _mm512_setzero_si512();
    // SAFETY: 16 bytes of the row's block sums at `bs` (the caller's contract); AVX-512
    // VNNI (the target features).
    unsafe {
        asm!(
            "vpdpwssd {m}, {p0}, dword ptr [{bs}]{{1to16}}",
            "vpdpwssd {m}, {p1}, dword ptr [{bs} + 4]{{1to16}}",
            "vpdpwssd {m}, {p2}, dword ptr [{bs} + 8]{{1to16}}",
            "vpdpwssd {m}, {p3}, dword ptr [{bs} + 12]{{1to16}}",
            m = inout(zmm_reg) msum,
            p0 = in(zmm_reg) mpair[0],
            p1 = in(zmm_reg) mpair[1],
            p2 = in(zmm_reg) mpair[2],
            p3 = in(zmm_reg) mpair[3],
            bs = in(reg) bs,
            options(pure, readonly, nostack, preserves_flags),
        );
    }
    let t = _mm512_fmsub_ps(acc, d, _mm512_mul_ps(_mm512_cvtepi32_ps(msum), dmin));
    _mm512_fmadd_ps(t, _mm512_set1_ps(ad), accf)
}

#[cfg(test)]
mod tests {
    use rand::{Rng, SeedableRng};

    use super::*;

    /// One row's q4k result as the integer kernels define it (and the AMX-INT8 route
    /// computes it): per super-block the exact integer `Σ_j sc_j · Σ q·a` rounded once to
    /// f32, then [`q4k_row`]'s f32 arithmetic, operation for operation.
    fn integer_reference(
        tile: &[u8],
        nsuper: usize,
        q: &[i8],
        d: &[f32],
        bsum: &[i16],
    ) -> [f32; TILE] {
        std::array::from_fn(|c| {
            let mut accf = 0f32;
            for s in 0..nsuper {
                let blk = &tile[s * Q4K_TILE_BLOCK..];
                let f16 = |off: usize| {
                    half::f16::from_le_bytes([blk[off + 2 * c], blk[off + 2 * c + 1]]).to_f32()
                };
                let hi = u32::from_le_bytes(blk[q4k_off::HI + 4 * c..][..4].try_into().unwrap());
                let (mut isum, mut msum) = (0i64, 0i32);
                for j in 0..8 {
                    let lo = blk[q4k_off::LO + j * TILE + c] as u32;
                    let sc = (lo & 15) | (((hi >> (2 * j)) & 3) << 4);
                    let m = (lo >> 4) | (((hi >> (16 + 2 * j)) & 3) << 4);
                    let mut sub = 0i64;
                    for v in 0..4 {
                        for b in 0..4 {
                            let byte = blk[q4k_off::QS + j * 256 + v * 64 + 4 * c + b];
                            let at = |i: usize| q[s * QK_K + j * QBLOCK + i] as i64;
                            sub += (byte & 15) as i64 * at(v * 4 + b);
                            sub += (byte >> 4) as i64 * at(16 + v * 4 + b);
                        }
                    }
                    isum += sc as i64 * sub;
                    msum += m as i32 * bsum[s * 8 + j] as i32;
                }
                let t =
                    (isum as f32).mul_add(f16(q4k_off::D), -((msum as f32) * f16(q4k_off::DMIN)));
                accf = t.mul_add(d[s], accf);
            }
            accf
        })
    }

    /// The AVX-512 q4k kernel sums its sub-blocks' scaled products in f32 or in i32
    /// ([`Q4kScaling`]); this holds both to the integer definition bit for bit, for every
    /// row count, on random tiles and on the largest sums (every nibble 15, every scale 63,
    /// activations ±127: 30 723 840 per super-block, past f32's exact integers), which is
    /// what lets the AMX-INT8 route and this kernel share the rows of one pass.
    #[test]
    fn q4k_scaled_sums_are_the_exact_integer_sums_rounded_once() {
        if !supported() {
            eprintln!("skipped: no AVX-512 VNNI on this CPU");
            return;
        }
        let nsuper = 3;
        let mut rng = rand::rngs::StdRng::seed_from_u64(16);
        // Cases 0–3 random; 4 and 5 every sum at its largest (+, −); 6 and 7 sums near it
        // with odd parts (nibbles 12–15, activations ±(120–127)), where an f32 running
        // sum over a whole super-block would round.
        for case in 0..8 {
            let extreme = case >= 4;
            let sign: i8 = if case % 2 == 1 { -1 } else { 1 };
            let near = case >= 6;
            let mut tile = vec![0u8; nsuper * Q4K_TILE_BLOCK];
            rng.fill(&mut tile[..]);
            for s in 0..nsuper {
                let blk = &mut tile[s * Q4K_TILE_BLOCK..][..Q4K_TILE_BLOCK];
                for c in 0..TILE {
                    // Finite scales (a random f16 may be NaN): ~0.001–2.
                    let scale =
                        |r: &mut rand::rngs::StdRng| half::f16::from_f32(r.gen_range(1e-3..2.0));
                    blk[q4k_off::D + 2 * c..][..2].copy_from_slice(&scale(&mut rng).to_le_bytes());
                    blk[q4k_off::DMIN + 2 * c..][..2]
                        .copy_from_slice(&scale(&mut rng).to_le_bytes());
                }
                if extreme {
                    blk[q4k_off::HI..q4k_off::QS].fill(0xff);
                    for byte in &mut blk[q4k_off::QS..] {
                        *byte = if near { *byte | 0xcc } else { 0xff };
                    }
                }
            }
            let (rows, k) = (MAX_ROWS, nsuper * QK_K);
            let q: Vec<i8> = (0..rows * k)
                .map(|_| {
                    if extreme {
                        sign * if near { rng.gen_range(120..=127) } else { 127 }
                    } else {
                        rng.gen_range(-127..=127)
                    }
                })
                .collect();
            let d: Vec<f32> = (0..rows * nsuper)
                .map(|_| rng.gen_range(1e-3..0.1))
                .collect();
            let bsum: Vec<i16> = q
                .chunks(QBLOCK)
                .map(|b| b.iter().map(|&x| x as i16).sum())
                .collect();
            for (r, scaling) in
                (1..=MAX_ROWS).flat_map(|r| [(r, Q4kScaling::F32), (r, Q4kScaling::I32)])
            {
                let a = Q8KRows {
                    q: q.as_ptr(),
                    d: d.as_ptr(),
                    bsum: bsum.as_ptr(),
                    k_pad: k,
                    ns: nsuper,
                    nb: k / QBLOCK,
                    first: true,
                };
                let mut out = vec![[0f32; TILE]; r];
                // SAFETY: AVX-512 VNNI checked above; `tile` holds `nsuper` super-blocks and
                // the rows hold `k` quants, `nsuper` scales and `k / 32` block sums each.
                unsafe {
                    call_rows!(
                        r,
                        q4k_rows_scaled,
                        (scaling, tile.as_ptr(), nsuper, &a, &mut out),
                        [1, 2, 3, 4, 5, 6, 7, 8]
                    )
                };
                for (row, got) in out.iter().enumerate() {
                    let want = integer_reference(
                        &tile,
                        nsuper,
                        &q[row * k..][..k],
                        &d[row * nsuper..][..nsuper],
                        &bsum[row * k / QBLOCK..][..k / QBLOCK],
                    );
                    for c in 0..TILE {
                        assert_eq!(
                            got[c].to_bits(),
                            want[c].to_bits(),
                            "case {case}, {r} rows, scales in {scaling}, row {row}, output {c}: {} vs {}",
                            got[c],
                            want[c]
                        );
                    }
                }
            }
        }
    }
}
