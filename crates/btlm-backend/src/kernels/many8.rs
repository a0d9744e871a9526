//! Matrix products of q4k weights with many activation rows (prefill, large batches) on
//! AVX2, in 8-bit integers like the tile kernels ([`super::avx2`]).
//!
//! The tile kernels multiply one whole weight tile with at most [`super::avx2::MAX_ROWS`]
//! rows per call: for a 128-token prompt every tile is re-read from L2 16 times, its
//! nibbles are unpacked 16 times, and the kernel's i16 sums spill from the 16 registers.
//! Here each tile is walked one super-block (256 inputs) at a time: its nibbles are
//! unpacked once into a 4 KiB L1-resident buffer, one byte per weight in the order the
//! `vpmaddubsw` products read them, its scales once as the tile kernel unpacks them, and
//! the super-block is multiplied with *every* activation row, [`Q4K_MR`] rows × 16 outputs
//! at a time by a register-blocked micro-kernel; the f32 sums of the tile live in a small
//! per-task buffer (`rows × 16`). Measured on Zen 3 (2 cores): 1.2× the products of the
//! tile kernels at 128 rows, 5–7% faster at 48–64, slower below (per super-block work
//! shared by fewer rows), hence `super::Q4K_MANY_ROWS` (docs/benchmarks.md, "int8
//! many-rows kernels for prefill").
//!
//! Arithmetic: the tile kernel's, bit for bit: the same 8-bit activations ([`Acts`]), the
//! same exact integer sums per super-block, converted and scaled by the tile kernel's own
//! [`q4k_finish`] in the same order, so a prompt gives the same logits whichever kernels
//! run it (tested in `tests.rs`).
//!
//! q8_0 weights stay on the tile kernels: the same scheme for them (`|q|` and `q` unpacked
//! once per block, the sign moved onto each activation row as the tile kernel does) measured
//! 5–10% slower than the tile kernels, which already run near the bound of their
//! `vpsignb` + `vpmaddubsw` + `vpmaddwd` per 32 products. Weights offset to u8 (`q + 128`)
//! against signed activations cannot use `vpmaddubsw`: a pair of products reaches
//! 2 · 255 · 127 and saturates i16.

// Indexed loops over register arrays (rows × halves) read like the arithmetic they do.
#![allow(clippy::needless_range_loop)]

use std::arch::x86_64::*;

use super::OutPtr;
use super::acts::Acts;
use super::avx2::{Q4kScales, bcast4, q4k_finish, q4k_scales};
use super::format::{Q4K_TILE_BLOCK, QBLOCK, QK_K, TILE, q4k_off};
use super::pack::PackedMatrix;
use super::simd::Q8KRows;

/// Activation rows of the q4k micro-kernel: 4 rows × 2 halves of i16 sums, the four weight
/// vectors of a step and two broadcast activations in registers (14 of 16; 3 rows measured
/// slower).
pub const Q4K_MR: usize = 4;

/// 32-byte vectors of an unpacked q4k super-block: 8 sub-blocks × 4 steps × (low, high
/// nibbles) × 2 halves.
const Q4K_UNPACKED: usize = 8 * 4 * 4;

/// Whether this CPU runs these kernels (the [`super::avx2`] features).
#[cfg(test)]
pub fn supported() -> bool {
    super::avx2::supported()
}

/// `y = x · Wᵀ (+ bias)` for the `rows` rows of `acts`, in tasks of whole tiles on rayon's
/// pool.
///
/// # Safety
/// The CPU must support the features of [`super::avx2::supported`]; `w` must be q4k and
/// `acts` prepared for it with `rows` rows of `w.k_pad()` inputs ([`Acts::fits`]); `y` holds
/// `rows × w.n_out()` values and `bias`, if any, `w.n_out()`.
pub unsafe fn matmul(
    w: &PackedMatrix,
    acts: &Acts<'_>,
    rows: usize,
    bias: Option<&[f32]>,
    y: &mut [f32],
) {
    let Acts::Q8K { q, d, bsum } = acts else {
        unreachable!("the int8 many-rows kernels take q4k weights and their activations");
    };
    debug_assert!(acts.fits(w.format(), rows, w.k_pad()));
    let k_pad = w.k_pad();
    let n_out = w.n_out();
    let out = OutPtr(y.as_mut_ptr());
    super::for_each_tile_run(w.tiles(), &super::on_rayon, |range| {
        // SAFETY: the caller's contract (AVX2).
        let mut wbuf = [unsafe { _mm256_setzero_si256() }; Q4K_UNPACKED];
        let mut acc = vec![0f32; rows * TILE];
        let a = Q8KRows {
            q: q.as_ptr(),
            d: d.as_ptr(),
            bsum: bsum.as_ptr(),
            k_pad,
            ns: k_pad / QK_K,
            nb: k_pad / QBLOCK,
            first: true,
        };
        for t in range {
            // SAFETY: the forwarded contract: `w.tile(t)` is a whole q4k tile of
            // `a.ns` super-blocks, `a` holds `rows` rows; `acc` holds rows·16 floats.
            unsafe { q4k_tile(w.tile(t).as_ptr(), &a, rows, &mut wbuf, &mut acc) };
            let col = t * TILE;
            for (r, vals) in acc.chunks_exact(TILE).enumerate() {
                // SAFETY: `(r + 1) * n_out <= rows * n_out = y.len()`, and
                // columns `col..col + ncols` belong to this task's tile only.
                unsafe { out.store_row(n_out, r, col, vals, bias) };
            }
        }
    });
}

/// Calls `$f::<G>(args…)` for `G = $g` rows (1 to 4).
macro_rules! call_group {
    ($g:expr, $f:ident $args:tt) => {
        match $g {
            4 => $f::<4> $args,
            3 => $f::<3> $args,
            2 => $f::<2> $args,
            _ => $f::<1> $args,
        }
    };
}

/// A q4k tile times all rows into `acc` (`rows × 16`, overwritten), super-block by
/// super-block.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn q4k_tile(
    tile: *const u8,
    a: &Q8KRows,
    rows: usize,
    wbuf: &mut [__m256i; Q4K_UNPACKED],
    acc: &mut [f32],
) {
    let mut sc = Q4kScales {
        sc: [[_mm256_setzero_si256(); 2]; 8],
        m: [[_mm256_setzero_si256(); 2]; 4],
        d: [_mm256_setzero_ps(); 2],
        dmin: [_mm256_setzero_ps(); 2],
    };
    let nib = _mm256_set1_epi8(0x0f);
    acc.fill(0.0);
    // SAFETY (whole body): the tile holds `a.ns` blocks of 2304 bytes; `wbuf` holds
    // Q4K_UNPACKED vectors; every row of `a` its quants, scales and block sums, `acc`
    // rows·16 floats.
    unsafe {
        for s in 0..a.ns {
            let blk = tile.add(s * Q4K_TILE_BLOCK);
            q4k_scales(blk, &mut sc);
            // `wbuf[(j·4 + v)·4 + 2·hi + h]`: nibbles `hi` of step `v` of sub-block `j`,
            // half `h`, one byte per weight.
            for jv in 0..32 {
                for h in 0..2 {
                    let qv = _mm256_loadu_si256(blk.add(q4k_off::QS + jv * 64 + h * 32).cast());
                    wbuf[jv * 4 + h] = _mm256_and_si256(qv, nib);
                    wbuf[jv * 4 + 2 + h] = _mm256_and_si256(_mm256_srli_epi16::<4>(qv), nib);
                }
            }
            let mut r0 = 0;
            while r0 < rows {
                let g = (rows - r0).min(Q4K_MR);
                call_group!(g, q4k_group(wbuf, &sc, a, s, r0, acc));
                r0 += g;
            }
        }
    }
}

/// Super-block `s` (unpacked in `wbuf`, scales `sc`) times rows `r0..r0 + G`, added to
/// their f32 sums in `acc`.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn q4k_group<const G: usize>(
    wbuf: &[__m256i; Q4K_UNPACKED],
    sc: &Q4kScales,
    a: &Q8KRows,
    s: usize,
    r0: usize,
    acc: &mut [f32],
) {
    // SAFETY (whole body): rows r0..r0 + G exist in `a` and `acc` (the caller's loop).
    unsafe {
        let q: [*const u8; G] =
            std::array::from_fn(|r| a.q.add((r0 + r) * a.k_pad + s * QK_K).cast());
        let mut isum = [[_mm256_setzero_si256(); 2]; G];
        for j in 0..8 {
            q4k_micro::<G>(
                wbuf.as_ptr().add(j * 16),
                &q,
                j * QBLOCK,
                &sc.sc[j],
                &mut isum,
            );
        }
        for r in 0..G {
            let p = acc.as_mut_ptr().add((r0 + r) * TILE);
            let mut f = [_mm256_loadu_ps(p), _mm256_loadu_ps(p.add(8))];
            q4k_finish(sc, a, s, r0 + r, &isum[r], &mut f);
            _mm256_storeu_ps(p, f[0]);
            _mm256_storeu_ps(p.add(8), f[1]);
        }
    }
}

/// One sub-block (`w`: its 16 unpacked vectors) times `G` rows whose super-block quants
/// start at `q` (the sub-block at `+off`): the i16 sums of its 32 inputs (at most 30 480,
/// see `avx2::q4k_rows`), times the sub-block's scales `sc`, added to `isum` in i32.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn q4k_micro<const G: usize>(
    w: *const __m256i,
    q: &[*const u8; G],
    off: usize,
    sc: &[__m256i; 2],
    isum: &mut [[__m256i; 2]; G],
) {
    let mut acc16 = [[_mm256_setzero_si256(); 2]; G];
    // SAFETY (whole body): `w` holds 16 vectors; every row its sub-block's 32 quants.
    unsafe {
        for v in 0..4 {
            let wl = [
                _mm256_load_si256(w.add(v * 4)),
                _mm256_load_si256(w.add(v * 4 + 1)),
            ];
            let wh = [
                _mm256_load_si256(w.add(v * 4 + 2)),
                _mm256_load_si256(w.add(v * 4 + 3)),
            ];
            for r in 0..G {
                let ar = q[r].add(off + v * 4);
                let (al, ah) = (bcast4(ar), bcast4(ar.add(16)));
                for h in 0..2 {
                    acc16[r][h] = _mm256_add_epi16(acc16[r][h], _mm256_maddubs_epi16(wl[h], al));
                    acc16[r][h] = _mm256_add_epi16(acc16[r][h], _mm256_maddubs_epi16(wh[h], ah));
                }
            }
        }
    }
    for r in 0..G {
        for h in 0..2 {
            isum[r][h] = _mm256_add_epi32(isum[r][h], _mm256_madd_epi16(acc16[r][h], sc[h]));
        }
    }
}
