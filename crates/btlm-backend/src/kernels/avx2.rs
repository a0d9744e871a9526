//! AVX2 + FMA + F16C kernels (x86-64 CPUs since Haswell / Zen 1 without AVX-512).
//!
//! The same tiles as the AVX-512 kernels, each 64-byte vector handled as two halves of 8
//! output rows. Without VNNI the 8-bit products use `vpmaddubsw` (u8 × i8 → i16 pairs) and
//! `vpmaddwd`; q8_0 weights are made signed again and their sign moved onto the
//! activations so that no i16 sum can saturate. bf16 weights are widened to f32.

// Indexed loops over register arrays (rows × halves) read like the arithmetic they do.
#![allow(clippy::needless_range_loop)]

use std::arch::x86_64::*;

use super::acts::Acts;
use super::format::{Q4K_TILE_BLOCK, Q8_0_TILE_BLOCK, QBLOCK, QK_K, TILE, WeightFormat, q4k_off};
use super::simd::Q8Rows;

/// Activation rows per kernel call (16 ymm registers hold 4 rows' accumulators).
pub const MAX_ROWS: usize = 4;

/// Whether this CPU runs these kernels.
pub fn supported() -> bool {
    is_x86_feature_detected!("avx2")
        && is_x86_feature_detected!("fma")
        && is_x86_feature_detected!("f16c")
}

simd_tile!(1, 2, 3, 4);

#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn store<const R: usize>(acc: &[[__m256; 2]; R], out: &mut [[f32; TILE]]) {
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
unsafe fn bcast4(p: *const u8) -> __m256i {
    // SAFETY: the caller guarantees 4 readable bytes at `p`.
    _mm256_set1_epi32(unsafe { p.cast::<i32>().read_unaligned() })
}

#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn f32_rows<const R: usize>(
    w: *const u8,
    k_pad: usize,
    x: *const f32,
    stride: usize,
    out: &mut [[f32; TILE]],
) {
    let w = w.cast::<f32>();
    let mut acc = [[_mm256_setzero_ps(); 2]; R];
    // SAFETY (whole body): the tile holds 16·k_pad floats; every row holds k_pad floats.
    unsafe {
        for k in 0..k_pad {
            let w0 = _mm256_loadu_ps(w.add(k * TILE));
            let w1 = _mm256_loadu_ps(w.add(k * TILE + 8));
            for r in 0..R {
                let a = _mm256_set1_ps(*x.add(r * stride + k));
                acc[r][0] = _mm256_fmadd_ps(a, w0, acc[r][0]);
                acc[r][1] = _mm256_fmadd_ps(a, w1, acc[r][1]);
            }
        }
        store::<R>(&acc, out);
    }
}

#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn f16_rows<const R: usize>(
    w: *const u8,
    k_pad: usize,
    x: *const f32,
    stride: usize,
    out: &mut [[f32; TILE]],
) {
    let mut acc = [[_mm256_setzero_ps(); 2]; R];
    // SAFETY (whole body): the tile holds 16·k_pad halves; every row holds k_pad floats.
    unsafe {
        for k in 0..k_pad {
            let w0 = _mm256_cvtph_ps(_mm_loadu_si128(w.add(k * 32).cast()));
            let w1 = _mm256_cvtph_ps(_mm_loadu_si128(w.add(k * 32 + 16).cast()));
            for r in 0..R {
                let a = _mm256_set1_ps(*x.add(r * stride + k));
                acc[r][0] = _mm256_fmadd_ps(a, w0, acc[r][0]);
                acc[r][1] = _mm256_fmadd_ps(a, w1, acc[r][1]);
            }
        }
        store::<R>(&acc, out);
    }
}

#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn bf16_rows<const R: usize>(
    w: *const u8,
    k_pad: usize,
    x: *const u16,
    stride: usize,
    out: &mut [[f32; TILE]],
) {
    let mut acc = [[_mm256_setzero_ps(); 2]; R];
    let high = _mm256_set1_epi32(0xffff_0000_u32 as i32);
    // SAFETY (whole body): the tile holds k_pad/2 vectors of 64 bytes; every row holds
    // k_pad bf16 values (k_pad is even).
    unsafe {
        for p in 0..k_pad / 2 {
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
            for r in 0..R {
                let pair = x.add(r * stride + 2 * p).cast::<u32>().read_unaligned();
                let a0 = _mm256_set1_ps(f32::from_bits(pair << 16));
                let a1 = _mm256_set1_ps(f32::from_bits(pair & 0xffff_0000));
                for h in 0..2 {
                    acc[r][h] = _mm256_fmadd_ps(a0, even[h], acc[r][h]);
                    acc[r][h] = _mm256_fmadd_ps(a1, odd[h], acc[r][h]);
                }
            }
        }
        store::<R>(&acc, out);
    }
}

#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn q8_0_rows<const R: usize>(
    w: *const u8,
    nblocks: usize,
    a: &Q8Rows,
    out: &mut [[f32; TILE]],
) {
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

/// One q4k tile for `R` activation rows.
///
/// The products of one sub-block are summed in i16 before widening (one `madd` per
/// sub-block instead of one per 4 inputs): `maddubs` of 4-bit weights and 8-bit activations
/// (|a| ≤ 127) is at most 2·15·127 per lane, and the eight of a sub-block's 32 inputs sum to
/// at most 30480 < 2¹⁵.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn q4k_rows<const R: usize>(
    w: *const u8,
    nsuper: usize,
    a: &Q8Rows,
    out: &mut [[f32; TILE]],
) {
    let mut accf = [[_mm256_setzero_ps(); 2]; R];
    let nib = _mm256_set1_epi8(0x0f);
    let ones = _mm256_set1_epi16(1);
    let three = _mm256_set1_epi32(3);
    let fifteen = _mm256_set1_epi32(15);
    // SAFETY (whole body): the tile holds `nsuper` blocks of 2304 bytes; every activation
    // row holds nsuper·256 quants and nsuper·8 scales and sums.
    unsafe {
        for s in 0..nsuper {
            let blk = w.add(s * Q4K_TILE_BLOCK);
            let d = [
                _mm256_cvtph_ps(_mm_loadu_si128(blk.add(q4k_off::D).cast())),
                _mm256_cvtph_ps(_mm_loadu_si128(blk.add(q4k_off::D + 16).cast())),
            ];
            let dmin = [
                _mm256_cvtph_ps(_mm_loadu_si128(blk.add(q4k_off::DMIN).cast())),
                _mm256_cvtph_ps(_mm_loadu_si128(blk.add(q4k_off::DMIN + 16).cast())),
            ];
            let mut hi = [
                _mm256_loadu_si256(blk.add(q4k_off::HI).cast()),
                _mm256_loadu_si256(blk.add(q4k_off::HI + 32).cast()),
            ];
            for j in 0..8 {
                let mut dsc = [_mm256_setzero_ps(); 2];
                let mut dm = [_mm256_setzero_ps(); 2];
                for h in 0..2 {
                    let lo = _mm256_cvtepu8_epi32(_mm_loadl_epi64(
                        blk.add(q4k_off::LO + j * TILE + h * 8).cast(),
                    ));
                    let sc = _mm256_or_si256(
                        _mm256_and_si256(lo, fifteen),
                        _mm256_slli_epi32::<4>(_mm256_and_si256(hi[h], three)),
                    );
                    let m = _mm256_or_si256(
                        _mm256_srli_epi32::<4>(lo),
                        _mm256_slli_epi32::<4>(_mm256_and_si256(
                            _mm256_srli_epi32::<16>(hi[h]),
                            three,
                        )),
                    );
                    hi[h] = _mm256_srli_epi32::<2>(hi[h]);
                    dsc[h] = _mm256_mul_ps(d[h], _mm256_cvtepi32_ps(sc));
                    dm[h] = _mm256_mul_ps(dmin[h], _mm256_cvtepi32_ps(m));
                }
                // i16 sums of the sub-block's products (see the function docs).
                let mut acc16 = [[_mm256_setzero_si256(); 2]; R];
                let qs = blk.add(q4k_off::QS + j * 256);
                for v in 0..4 {
                    for h in 0..2 {
                        let qv = _mm256_loadu_si256(qs.add(v * 64 + h * 32).cast());
                        let ql = _mm256_and_si256(qv, nib);
                        let qh = _mm256_and_si256(_mm256_srli_epi16::<4>(qv), nib);
                        for r in 0..R {
                            let ar = a.q.add(r * a.k_pad + s * QK_K + j * QBLOCK).cast::<u8>();
                            let pl = _mm256_maddubs_epi16(ql, bcast4(ar.add(v * 4)));
                            let ph = _mm256_maddubs_epi16(qh, bcast4(ar.add(v * 4 + 16)));
                            acc16[r][h] = _mm256_add_epi16(acc16[r][h], _mm256_add_epi16(pl, ph));
                        }
                    }
                }
                for r in 0..R {
                    let i = r * a.nb + s * (QK_K / QBLOCK) + j;
                    let asum = _mm256_set1_ps(*a.sum.add(i) as f32);
                    let da = _mm256_set1_ps(*a.d.add(i));
                    for h in 0..2 {
                        let isum = _mm256_madd_epi16(acc16[r][h], ones);
                        let t = _mm256_fmsub_ps(
                            _mm256_cvtepi32_ps(isum),
                            dsc[h],
                            _mm256_mul_ps(dm[h], asum),
                        );
                        accf[r][h] = _mm256_fmadd_ps(t, da, accf[r][h]);
                    }
                }
            }
        }
        store::<R>(&accf, out);
    }
}
