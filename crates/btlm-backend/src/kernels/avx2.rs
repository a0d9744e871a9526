//! AVX2 + FMA + F16C kernels (x86-64 CPUs since Haswell / Zen 1 without AVX-512).
//!
//! The same tiles as the AVX-512 kernels, each 64-byte vector handled as two halves of 8
//! output rows. Without VNNI the 8-bit products use `vpmaddubsw` (u8 × i8 → i16 pairs) and
//! `vpmaddwd`; q8_0 weights are made signed again and their sign moved onto the
//! activations so that no i16 sum can saturate. bf16 weights are widened to f32.
//!
//! AVX2 has 16 vector registers, so the kernels for many rows (batched decode) are shaped
//! so that their accumulators fit: the dense formats run groups of [`GROUP`] rows over
//! blocks of [`DENSE_KB`] inputs that stay in L1 while every group reads them; from
//! [`WIDE_ROWS`] rows on, q8_0 handles one 8-column half of a block at a time (only that
//! half's integer sums in registers) and q4k runs groups of up to 4 rows over each
//! sub-block; q8_0's f32 sums are updated once per block, q4k's once per super-block (its
//! activations have one scale per 256 inputs, see `acts.rs`). These kernels also prefetch the
//! weight stream ([`PREFETCH`]).

// Indexed loops over register arrays (rows × halves) read like the arithmetic they do.
#![allow(clippy::needless_range_loop)]

use std::arch::x86_64::*;

use super::acts::Acts;
use super::format::{Q4K_TILE_BLOCK, Q8_0_TILE_BLOCK, QBLOCK, QK_K, TILE, WeightFormat, q4k_off};
use super::simd::{Q8KRows, Q8Rows};

/// Activation rows per kernel call: the tile is streamed from memory once for all of them.
pub const MAX_ROWS: usize = 8;

/// Rows the dense kernels keep in registers at once (4 rows × 2 halves = 8 accumulators,
/// plus the weights and a broadcast activation).
const GROUP: usize = 4;

/// Inputs per cache block of the dense kernels for more than [`GROUP`] rows: 16 KiB of f32
/// (8 KiB of f16/bf16) weights, read from L1 by every group of rows.
const DENSE_KB: usize = 256;

/// From this many rows on, q8_0 and q4k run the half-tile kernels (`*_rows_wide`).
const WIDE_ROWS: usize = 3;

/// Whether this CPU runs these kernels.
pub fn supported() -> bool {
    is_x86_feature_detected!("avx2")
        && is_x86_feature_detected!("fma")
        && is_x86_feature_detected!("f16c")
}

simd_tile!(1, 2, 3, 4, 5, 6, 7, 8);

/// Accumulators of `R` rows × two 8-column halves.
type Acc<const R: usize> = [[__m256; 2]; R];

#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn store<const R: usize>(acc: &Acc<R>, out: &mut [[f32; TILE]]) {
    for r in 0..R {
        // SAFETY: `out[r]` is 16 floats; `out` has R rows (checked by the dispatcher).
        unsafe {
            _mm256_storeu_ps(out[r].as_mut_ptr(), acc[r][0]);
            _mm256_storeu_ps(out[r].as_mut_ptr().add(8), acc[r][1]);
        }
    }
}

#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn bcast4(p: *const u8) -> __m256i {
    // SAFETY: the caller guarantees 4 readable bytes at `p`.
    _mm256_set1_epi32(unsafe { p.cast::<i32>().read_unaligned() })
}

/// How far ahead of the weights being multiplied the many-row kernels prefetch: their
/// arithmetic fills the out-of-order window, so the core would otherwise issue the reads of
/// the stream late (the single-row kernels do little else than read and need no help).
const PREFETCH: usize = 4096;

/// Prefetches the cache line [`PREFETCH`] bytes after `p` (possibly past the matrix: a
/// prefetch never faults).
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn ahead(p: *const u8) {
    // A hint: it reads nothing observable and never faults.
    _mm_prefetch::<_MM_HINT_T0>(p.wrapping_add(PREFETCH).cast());
}

/// The first `N` accumulators of `acc`.
fn head<const N: usize>(acc: &mut [[__m256; 2]]) -> &mut Acc<N> {
    acc.first_chunk_mut::<N>()
        .expect("the caller passes at least N accumulators")
}

/// A dense kernel body for `R` rows: `$block::<G>(k0, k1, first_row, acc, prefetch)` adds
/// inputs `k0..k1` of rows `first_row..first_row + G` to `acc`. Up to [`GROUP`] rows run as
/// one group over all inputs; more run as two groups over blocks of [`DENSE_KB`] inputs, so
/// the second group reads the block's weights from L1, and the first prefetches the weights
/// [`PREFETCH`] bytes ahead (the second group's pass issues no memory reads of its own).
macro_rules! dense_rows {
    ($r:ident, $k_pad:expr, $out:expr, |$k0:ident, $k1:ident, $row:ident, $acc:ident, $pf:ident| $block:ident $args:tt) => {{
        let mut all = [[_mm256_setzero_ps(); 2]; $r];
        if $r <= GROUP {
            let ($k0, $k1, $row, $acc, $pf) = (0, $k_pad, 0usize, head::<$r>(&mut all), false);
            $block::<$r> $args;
        } else {
            let (first, rest) = all.split_at_mut(GROUP);
            let mut k = 0;
            while k < $k_pad {
                let ($k0, $k1) = (k, (k + DENSE_KB).min($k_pad));
                {
                    let ($row, $acc, $pf) = (0usize, head::<GROUP>(first), true);
                    $block::<GROUP> $args;
                }
                let ($row, $pf) = (GROUP, false);
                match $r.saturating_sub(GROUP) {
                    1 => { let $acc = head::<1>(rest); $block::<1> $args; }
                    2 => { let $acc = head::<2>(rest); $block::<2> $args; }
                    3 => { let $acc = head::<3>(rest); $block::<3> $args; }
                    _ => { let $acc = head::<4>(rest); $block::<4> $args; }
                }
                k = $k1;
            }
        }
        store::<$r>(&all, $out);
    }};
}

/// Adds inputs `k0..k1` of `G` f32 rows at `x` (row stride `stride`) times the f32 tile to
/// `acc`.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn f32_block<const G: usize>(
    w: *const f32,
    k0: usize,
    k1: usize,
    x: *const f32,
    stride: usize,
    acc: &mut Acc<G>,
    prefetch: bool,
) {
    let mut a = *acc;
    // SAFETY (whole body): the tile holds 16·k_pad floats and every row k_pad, k1 ≤ k_pad.
    unsafe {
        for k in k0..k1 {
            if prefetch {
                ahead(w.add(k * TILE).cast());
            }
            let w0 = _mm256_loadu_ps(w.add(k * TILE));
            let w1 = _mm256_loadu_ps(w.add(k * TILE + 8));
            for r in 0..G {
                let b = _mm256_set1_ps(*x.add(r * stride + k));
                a[r][0] = _mm256_fmadd_ps(b, w0, a[r][0]);
                a[r][1] = _mm256_fmadd_ps(b, w1, a[r][1]);
            }
        }
    }
    *acc = a;
}

#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn f32_rows<const R: usize>(
    w: *const u8,
    k_pad: usize,
    x: *const f32,
    stride: usize,
    _first: bool,
    out: &mut [[f32; TILE]],
) {
    let w = w.cast::<f32>();
    // SAFETY: the tile holds 16·k_pad floats; every one of the R rows holds k_pad floats.
    unsafe {
        dense_rows!(R, k_pad, out, |k0, k1, row, acc, pf| f32_block(
            w,
            k0,
            k1,
            x.add(row * stride),
            stride,
            acc,
            pf
        ))
    }
}

/// [`f32_block`] for an f16 tile.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn f16_block<const G: usize>(
    w: *const u8,
    k0: usize,
    k1: usize,
    x: *const f32,
    stride: usize,
    acc: &mut Acc<G>,
    prefetch: bool,
) {
    let mut a = *acc;
    // SAFETY (whole body): the tile holds 16·k_pad halves and every row k_pad floats.
    unsafe {
        for k in k0..k1 {
            if prefetch && k % 2 == 0 {
                ahead(w.add(k * 32));
            }
            let w0 = _mm256_cvtph_ps(_mm_loadu_si128(w.add(k * 32).cast()));
            let w1 = _mm256_cvtph_ps(_mm_loadu_si128(w.add(k * 32 + 16).cast()));
            for r in 0..G {
                let b = _mm256_set1_ps(*x.add(r * stride + k));
                a[r][0] = _mm256_fmadd_ps(b, w0, a[r][0]);
                a[r][1] = _mm256_fmadd_ps(b, w1, a[r][1]);
            }
        }
    }
    *acc = a;
}

#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn f16_rows<const R: usize>(
    w: *const u8,
    k_pad: usize,
    x: *const f32,
    stride: usize,
    _first: bool,
    out: &mut [[f32; TILE]],
) {
    // SAFETY: the tile holds 16·k_pad halves; every one of the R rows holds k_pad floats.
    unsafe {
        dense_rows!(R, k_pad, out, |k0, k1, row, acc, pf| f16_block(
            w,
            k0,
            k1,
            x.add(row * stride),
            stride,
            acc,
            pf
        ))
    }
}

/// [`f32_block`] for a bf16 tile and bf16 activations (`k0`, `k1` even): the weights of an
/// input pair are widened once, an activation pair is broadcast as one 32-bit lane and
/// split with a shift and a mask.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn bf16_block<const G: usize>(
    w: *const u8,
    k0: usize,
    k1: usize,
    x: *const u16,
    stride: usize,
    acc: &mut Acc<G>,
    prefetch: bool,
) {
    let mut a = *acc;
    let high = _mm256_set1_epi32(0xffff_0000_u32 as i32);
    // SAFETY (whole body): the tile holds k_pad/2 vectors of 64 bytes; every row holds
    // k_pad bf16 values (k_pad, k0 and k1 are even).
    unsafe {
        for p in k0 / 2..k1 / 2 {
            if prefetch {
                ahead(w.add(p * 64));
            }
            let v0 = _mm256_loadu_si256(w.add(p * 64).cast());
            let v1 = _mm256_loadu_si256(w.add(p * 64 + 32).cast());
            let even = [
                _mm256_castsi256_ps(_mm256_slli_epi32::<16>(v0)),
                _mm256_castsi256_ps(_mm256_slli_epi32::<16>(v1)),
            ];
            let odd = [
                _mm256_castsi256_ps(_mm256_and_si256(v0, high)),
                _mm256_castsi256_ps(_mm256_and_si256(v1, high)),
            ];
            for r in 0..G {
                let pair = bcast4(x.add(r * stride + 2 * p).cast());
                let a0 = _mm256_castsi256_ps(_mm256_slli_epi32::<16>(pair));
                let a1 = _mm256_castsi256_ps(_mm256_and_si256(pair, high));
                for h in 0..2 {
                    a[r][h] = _mm256_fmadd_ps(a0, even[h], a[r][h]);
                    a[r][h] = _mm256_fmadd_ps(a1, odd[h], a[r][h]);
                }
            }
        }
    }
    *acc = a;
}

#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn bf16_rows<const R: usize>(
    w: *const u8,
    k_pad: usize,
    x: *const u16,
    stride: usize,
    _first: bool,
    out: &mut [[f32; TILE]],
) {
    // SAFETY: the tile holds k_pad/2 vectors of 64 bytes; every one of the R rows holds
    // k_pad bf16 values; DENSE_KB is even, so every block starts and ends on a pair.
    unsafe {
        dense_rows!(R, k_pad, out, |k0, k1, row, acc, pf| bf16_block(
            w,
            k0,
            k1,
            x.add(row * stride),
            stride,
            acc,
            pf
        ))
    }
}

#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn q8_0_rows<const R: usize>(
    w: *const u8,
    nblocks: usize,
    a: &Q8Rows,
    out: &mut [[f32; TILE]],
) {
    if R >= WIDE_ROWS {
        // SAFETY: the forwarded contract.
        return unsafe { q8_0_rows_wide::<R>(w, nblocks, a, out) };
    }
    let mut accf = [[_mm256_setzero_ps(); 2]; R];
    let flip = _mm256_set1_epi8(-128);
    let ones = _mm256_set1_epi16(1);
    // SAFETY (whole body): the tile holds `nblocks` blocks of 544 bytes; every activation
    // row holds nblocks·32 quants and nblocks scales.
    unsafe {
        for b in 0..nblocks {
            let blk = w.add(b * Q8_0_TILE_BLOCK);
            let dw = [
                _mm256_cvtph_ps(_mm_loadu_si128(blk.cast())),
                _mm256_cvtph_ps(_mm_loadu_si128(blk.add(16).cast())),
            ];
            let mut acci = [[_mm256_setzero_si256(); 2]; R];
            for g in 0..8 {
                for h in 0..2 {
                    let v = _mm256_loadu_si256(blk.add(2 * TILE + g * 64 + h * 32).cast());
                    // Stored q + 128: flipping the top bit gives q as i8 (|q| ≤ 127).
                    let ws = _mm256_xor_si256(v, flip);
                    let wa = _mm256_abs_epi8(ws);
                    for r in 0..R {
                        let ar = bcast4(a.q.add(r * a.k_pad + b * QBLOCK + g * 4).cast());
                        let p = _mm256_maddubs_epi16(wa, _mm256_sign_epi8(ar, ws));
                        acci[r][h] = _mm256_add_epi32(acci[r][h], _mm256_madd_epi16(p, ones));
                    }
                }
            }
            for r in 0..R {
                let da = _mm256_set1_ps(*a.d.add(r * a.nb + b));
                for h in 0..2 {
                    let t = _mm256_cvtepi32_ps(acci[r][h]);
                    accf[r][h] = _mm256_fmadd_ps(t, _mm256_mul_ps(dw[h], da), accf[r][h]);
                }
            }
        }
        store::<R>(&accf, out);
    }
}

/// [`q8_0_rows`] for [`WIDE_ROWS`] rows and more: each block is done one 8-column half at
/// a time, so only the R integer sums of that half live in registers (with the weight
/// vector and its sign); the f32 sums are updated once per block and half.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn q8_0_rows_wide<const R: usize>(
    w: *const u8,
    nblocks: usize,
    a: &Q8Rows,
    out: &mut [[f32; TILE]],
) {
    let mut accf = [[_mm256_setzero_ps(); 2]; R];
    let flip = _mm256_set1_epi8(-128);
    let ones = _mm256_set1_epi16(1);
    // SAFETY (whole body): as in `q8_0_rows`.
    unsafe {
        for b in 0..nblocks {
            let blk = w.add(b * Q8_0_TILE_BLOCK);
            for h in 0..2 {
                let mut acci = [_mm256_setzero_si256(); R];
                for g in 0..8 {
                    // The block's 544 bytes, 64 at a time over its first half (see `ahead`).
                    if h == 0 {
                        ahead(blk.add(g * 64));
                    } else if g == 0 {
                        ahead(blk.add(512));
                    }
                    let v = _mm256_loadu_si256(blk.add(2 * TILE + g * 64 + h * 32).cast());
                    let ws = _mm256_xor_si256(v, flip);
                    let wa = _mm256_abs_epi8(ws);
                    for r in 0..R {
                        let ar = bcast4(a.q.add(r * a.k_pad + b * QBLOCK + g * 4).cast());
                        let p = _mm256_maddubs_epi16(wa, _mm256_sign_epi8(ar, ws));
                        acci[r] = _mm256_add_epi32(acci[r], _mm256_madd_epi16(p, ones));
                    }
                }
                let dw = _mm256_cvtph_ps(_mm_loadu_si128(blk.add(16 * h).cast()));
                for r in 0..R {
                    let da = _mm256_set1_ps(*a.d.add(r * a.nb + b));
                    let t = _mm256_cvtepi32_ps(acci[r]);
                    accf[r][h] = _mm256_fmadd_ps(t, _mm256_mul_ps(dw, da), accf[r][h]);
                }
            }
        }
        store::<R>(&accf, out);
    }
}

/// The scales of one q4k tile block, unpacked once per super-block (for all rows and
/// sub-blocks) into the operands the kernels multiply with; `[h]` is the 8-column half.
pub(super) struct Q4kScales {
    /// `sc[j][h]`: i32 lane `c` holds the 6-bit scale of sub-block `j`, column `8h + c`, in
    /// both of its i16 halves, so that `vpmaddwd` with a lane's two i16 sums of products
    /// scales and adds them (and widens to i32) in one instruction.
    pub(super) sc: [[__m256i; 2]; 8],
    /// `m[p][h]`: lane `c` holds the mins of sub-blocks `2p` (low i16) and `2p + 1` (high
    /// i16) of column `8h + c`; `vpmaddwd` with the two blocks' activation sums broadcast
    /// as one i16 pair gives both min terms.
    pub(super) m: [[__m256i; 2]; 4],
    /// `d` in f32.
    pub(super) d: [__m256; 2],
    /// `dmin` in f32.
    pub(super) dmin: [__m256; 2],
}

/// Unpacks the scales of the q4k tile block at `blk` into `out` (see [`Q4kScales`]; the bit
/// layout is in `format.rs`). (Filled in place: returned by value, the 28 vectors were
/// copied once more.)
///
/// The 16 columns' scales and mins are built as i16 in the column order
/// `[0..4, 8..12 | 4..8, 12..16]` (128-bit lanes): the order `vpackusdw` gives the two
/// halves' `hi` words in, and the one from which `vpunpck{l,h}wd` of a vector with itself
/// (or with the next sub-block's) spreads half 0 and half 1 into the i32 lanes.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn q4k_scales(blk: *const u8, out: &mut Q4kScales) {
    // SAFETY (whole body): the caller passes a whole q4k tile block.
    unsafe {
        let hi = [
            _mm256_loadu_si256(blk.add(q4k_off::HI).cast()),
            _mm256_loadu_si256(blk.add(q4k_off::HI + 32).cast()),
        ];
        let low = _mm256_set1_epi32(0xffff);
        // Bits 2j, 2j + 1: bits 4 and 5 of sub-block j's scale (of its min in `hm`).
        let mut hsc =
            _mm256_packus_epi32(_mm256_and_si256(hi[0], low), _mm256_and_si256(hi[1], low));
        let mut hm = _mm256_packus_epi32(
            _mm256_srli_epi32::<16>(hi[0]),
            _mm256_srli_epi32::<16>(hi[1]),
        );
        // Byte c of a sub-block's 16 `lo` bytes (broadcast to both lanes) to the i16 of
        // column c in the order above; -128 (top bit set) writes zero.
        let z = -128i8;
        #[rustfmt::skip]
        let spread = _mm256_setr_epi8(
            0, z, 1, z, 2, z, 3, z, 8, z, 9, z, 10, z, 11, z,
            4, z, 5, z, 6, z, 7, z, 12, z, 13, z, 14, z, 15, z,
        );
        let fifteen = _mm256_set1_epi16(15);
        let three = _mm256_set1_epi16(3);
        out.d = [
            _mm256_cvtph_ps(_mm_loadu_si128(blk.add(q4k_off::D).cast())),
            _mm256_cvtph_ps(_mm_loadu_si128(blk.add(q4k_off::D + 16).cast())),
        ];
        out.dmin = [
            _mm256_cvtph_ps(_mm_loadu_si128(blk.add(q4k_off::DMIN).cast())),
            _mm256_cvtph_ps(_mm_loadu_si128(blk.add(q4k_off::DMIN + 16).cast())),
        ];
        let mut m_even = _mm256_setzero_si256();
        for j in 0..8 {
            let lo = _mm256_shuffle_epi8(
                _mm256_broadcastsi128_si256(_mm_loadu_si128(
                    blk.add(q4k_off::LO + j * TILE).cast(),
                )),
                spread,
            );
            let sc = _mm256_or_si256(
                _mm256_and_si256(lo, fifteen),
                _mm256_slli_epi16::<4>(_mm256_and_si256(hsc, three)),
            );
            let m = _mm256_or_si256(
                _mm256_srli_epi16::<4>(lo),
                _mm256_slli_epi16::<4>(_mm256_and_si256(hm, three)),
            );
            hsc = _mm256_srli_epi16::<2>(hsc);
            hm = _mm256_srli_epi16::<2>(hm);
            out.sc[j] = [_mm256_unpacklo_epi16(sc, sc), _mm256_unpackhi_epi16(sc, sc)];
            if j % 2 == 0 {
                m_even = m;
            } else {
                out.m[j / 2] = [
                    _mm256_unpacklo_epi16(m_even, m),
                    _mm256_unpackhi_epi16(m_even, m),
                ];
            }
        }
    }
}

/// One q4k tile for `R` activation rows (activations with one scale per super-block).
///
/// Per super-block, every column's result is
/// `d_a · (d · Σ_j sc_j · Σ_{k∈j} q_k a_k − dmin · Σ_j m_j · Σ_{k∈j} a_k)`, both sums exact
/// integers, converted and scaled once per super-block:
/// - `vpmaddubsw` of 4-bit weights and 8-bit activations (|a| ≤ 127) gives i16 pairs of at
///   most 2·15·127 = 3810; the eight of one sub-block (32 inputs) sum in i16 to at most
///   30 480 < 2¹⁵ (in any order: every partial sum is smaller), so no sum saturates.
/// - `vpmaddwd` of those i16 pairs with the sub-block's scale (both halves of the lane)
///   widens them: at most 63 · 32·15·127 = 3 840 480 per sub-block, 30 723 840 < 2³¹ over
///   the 8 of a super-block in i32.
/// - The min term: the activation block sums are at most 32·127 = 4064 in magnitude (i16);
///   `vpmaddwd` of two mins and two sums gives at most 2·63·4064, four of them 2 048 256.
///
/// Up to [`WIDE_ROWS`] − 1 rows keep their i32 sums in registers; more rows run in groups
/// of up to 4 over each sub-block (a group's i16 sums, 4 rows × 2 halves, one group of
/// unpacked weights for both halves and the broadcast activations fill the 16 registers)
/// and keep their i32 sums in memory, and prefetch the weights. (Measured against one
/// 8-column half at a time with all rows, which broadcasts every activation twice: 5-20%
/// slower at 8 rows, session 5.)
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn q4k_rows<const R: usize>(
    w: *const u8,
    nsuper: usize,
    a: &Q8KRows,
    out: &mut [[f32; TILE]],
) {
    let mut accf = [[_mm256_setzero_ps(); 2]; R];
    let mut sc = Q4kScales {
        sc: [[_mm256_setzero_si256(); 2]; 8],
        m: [[_mm256_setzero_si256(); 2]; 4],
        d: [_mm256_setzero_ps(); 2],
        dmin: [_mm256_setzero_ps(); 2],
    };
    // SAFETY (whole body): the tile holds `nsuper` blocks of 2304 bytes; every activation
    // row holds nsuper·256 quants, nsuper scales and nsuper·8 block sums.
    unsafe {
        // The rows' quants (computed once: per group and sub-block, the multiplications
        // by the row stride took 4 instructions per row).
        let rows: [*const u8; R] = std::array::from_fn(|r| a.q.add(r * a.k_pad).cast());
        for s in 0..nsuper {
            let blk = w.add(s * Q4K_TILE_BLOCK);
            q4k_scales(blk, &mut sc);
            let mut acc = [[_mm256_setzero_si256(); 2]; R];
            for j in 0..8 {
                if R >= WIDE_ROWS {
                    // The sub-block's 288 bytes (see `ahead`).
                    for l in 0..5 {
                        ahead(blk.add(j * 288 + l * 64));
                    }
                }
                let sub = Q4kSub {
                    qs: blk.add(q4k_off::QS + j * 256),
                    off: s * QK_K + j * QBLOCK,
                    sc: &sc.sc[j],
                };
                let mut row = 0;
                while row < R {
                    let (q, g) = (&rows[row..], &mut acc[row..]);
                    match R - row {
                        1 => q4k_group::<1>(&sub, q, g),
                        2 => q4k_group::<2>(&sub, q, g),
                        3 => q4k_group::<3>(&sub, q, g),
                        _ => q4k_group::<4>(&sub, q, g),
                    }
                    row += 4;
                }
            }
            for r in 0..R {
                q4k_finish(&sc, a, s, r, &acc[r], &mut accf[r]);
            }
        }
        store::<R>(&accf, out);
    }
}

/// One sub-block of a q4k tile block.
struct Q4kSub<'a> {
    /// Its 4-bit weights (`qs[j]` of the tile block).
    qs: *const u8,
    /// Offset of its first input in an activation row.
    off: usize,
    /// Its scales ([`Q4kScales::sc`]).
    sc: &'a [__m256i; 2],
}

/// Adds sub-block `sub` times the `G` activation rows whose quants start at `q`, scaled by
/// the sub-block's scales, to the first `G` i32 sums of `acc` (bounds: [`q4k_rows`]).
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn q4k_group<const G: usize>(sub: &Q4kSub<'_>, q: &[*const u8], acc: &mut [[__m256i; 2]]) {
    let acc = acc
        .first_chunk_mut::<G>()
        .expect("the caller passes at least G sums");
    let q = q.first_chunk::<G>().expect("and G rows");
    let nib = _mm256_set1_epi8(0x0f);
    let mut acc16 = [[_mm256_setzero_si256(); 2]; G];
    // SAFETY (whole body): `sub.qs` holds the sub-block's 4 × 64 bytes, every row `q[r]`
    // its quants up to `sub.off + 32` (the caller's contract).
    unsafe {
        for v in 0..4 {
            let mut ql = [_mm256_setzero_si256(); 2];
            let mut qh = [_mm256_setzero_si256(); 2];
            for h in 0..2 {
                let qv = _mm256_loadu_si256(sub.qs.add(v * 64 + h * 32).cast());
                ql[h] = _mm256_and_si256(qv, nib);
                qh[h] = _mm256_and_si256(_mm256_srli_epi16::<4>(qv), nib);
            }
            for r in 0..G {
                let ar = q[r].add(sub.off + v * 4);
                let (al, ah) = (bcast4(ar), bcast4(ar.add(16)));
                for h in 0..2 {
                    let p = _mm256_add_epi16(
                        _mm256_maddubs_epi16(ql[h], al),
                        _mm256_maddubs_epi16(qh[h], ah),
                    );
                    acc16[r][h] = _mm256_add_epi16(acc16[r][h], p);
                }
            }
        }
    }
    for r in 0..G {
        for h in 0..2 {
            acc[r][h] = _mm256_add_epi32(acc[r][h], _mm256_madd_epi16(acc16[r][h], sub.sc[h]));
        }
    }
}

/// Adds row `r`'s super-block `s` to its f32 sums `accf`: `acc` holds the row's
/// `Σ_j sc_j · Σ q·a` per column; the min term and the scales are applied here.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn q4k_finish(
    sc: &Q4kScales,
    a: &Q8KRows,
    s: usize,
    r: usize,
    acc: &[__m256i; 2],
    accf: &mut [__m256; 2],
) {
    // SAFETY (whole body): row `r` holds nsuper·8 block sums and nsuper scales.
    unsafe {
        let bs = a.bsum.add(r * a.nb + s * (QK_K / QBLOCK)).cast::<u8>();
        let mut msum = [_mm256_setzero_si256(); 2];
        for p in 0..4 {
            // The sums of blocks 2p and 2p + 1 as one i16 pair.
            let pair = bcast4(bs.add(4 * p));
            for h in 0..2 {
                msum[h] = _mm256_add_epi32(msum[h], _mm256_madd_epi16(sc.m[p][h], pair));
            }
        }
        let da = _mm256_set1_ps(*a.d.add(r * a.ns + s));
        for h in 0..2 {
            let t = _mm256_fmsub_ps(
                _mm256_cvtepi32_ps(acc[h]),
                sc.d[h],
                _mm256_mul_ps(_mm256_cvtepi32_ps(msum[h]), sc.dmin[h]),
            );
            accf[h] = _mm256_fmadd_ps(t, da, accf[h]);
        }
    }
}
