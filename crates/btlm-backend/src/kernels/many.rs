//! Matrix products with many activation rows (prefill, large batches) on AVX2 + FMA.
//!
//! Used for bf16 and f16 weights (see `KernelPath::route` for the measurement behind the
//! choice); it computes every format and is tested on all of them, and converts tiles for
//! the AMX kernels too.
//! The tile kernels ([`super::avx2`]) multiply one whole weight tile with at most 4 rows
//! per call: for a 128-token prompt every tile is re-read from L2 32 times, and the
//! activations of the call sit in four long streams. Here each tile is instead walked in
//! blocks of [`KB`] inputs: the block is converted once into f32 (`[k][16]`, 16 KiB, L1
//! resident) and multiplied with *every* row, [`MR`] rows at a time by a register-blocked
//! micro-kernel (12 accumulators: `MR` rows × 16 outputs), partial sums kept in a small
//! per-tile buffer.
//!
//! Arithmetic: f32 products summed in f32 for every format, on the weights as the format
//! stores them (f16, bf16, q8_0 and q4k dequantized exactly to f32). f32 and f16 weights
//! compute what the tile kernels compute; bf16 weights meet activations rounded to bf16,
//! as in the tile kernels; q8_0 and q4k meet the f32 activations themselves instead of
//! 8-bit quantized ones (more accurate than the tile kernels: no activation rounding).

// Indexed loops over register arrays (rows × halves) read like the arithmetic they do.
#![allow(clippy::needless_range_loop)]

use std::arch::x86_64::*;

use rayon::prelude::*;

use super::OutPtr;
use super::acts::f32_to_bf16;
use super::format::{Q4K_TILE_BLOCK, Q8_0_TILE_BLOCK, QBLOCK, QK_K, TILE, WeightFormat, q4k_off};
use super::pack::{PackedMatrix, q4k_scale_min};

/// Inputs per block: one q4k super-block, 8 q8_0 blocks; 16 KiB of f32 weights.
pub const KB: usize = 256;
/// Activation rows of the micro-kernel (2·MR accumulators + 2 weight vectors + 1 broadcast
/// fill the 16 ymm registers).
pub const MR: usize = 6;

/// Whether this CPU runs these kernels (the [`super::avx2`] features).
pub fn supported() -> bool {
    super::avx2::supported()
}

/// `y = x · Wᵀ (+ bias)`; shapes checked by the caller ([`super::matmul`]).
///
/// # Safety
/// The CPU must support the features of [`supported`]; `x` holds `rows × w.n_in()` values,
/// `y` `rows × w.n_out()` and `bias`, if any, `w.n_out()`.
pub unsafe fn matmul(
    w: &PackedMatrix,
    x: &[f32],
    rows: usize,
    bias: Option<&[f32]>,
    y: &mut [f32],
) {
    let n_out = w.n_out();
    // bf16 weights multiply bf16-rounded activations (as the tile kernels do).
    let rounded: Vec<f32>;
    let x = if w.format() == WeightFormat::Bf16 {
        rounded = x
            .par_iter()
            .map(|&v| f32::from_bits((f32_to_bf16(v) as u32) << 16))
            .collect();
        &rounded[..]
    } else {
        x
    };
    let out = OutPtr(y.as_mut_ptr());
    super::for_each_tile_run(w.tiles(), &super::on_rayon, |range| {
        let mut wbuf = vec![0f32; KB * TILE];
        let mut acc = vec![0f32; rows * TILE];
        for t in range {
            // SAFETY: forwarded contract; `wbuf` holds KB·16 and `acc` rows·16 floats.
            unsafe { tile(w, t, x, rows, &mut wbuf, &mut acc) };
            let col = t * TILE;
            for (r, vals) in acc.chunks_exact(TILE).enumerate() {
                // SAFETY: `(r + 1) * n_out <= rows * n_out = y.len()`, and
                // columns `col..col + ncols` belong to this task's tile only.
                unsafe { out.store_row(n_out, r, col, vals, bias) };
            }
        }
    });
}

/// Tile `t` of `w` times all rows of `x` into `acc` (`rows × 16`).
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn tile(
    w: &PackedMatrix,
    t: usize,
    x: &[f32],
    rows: usize,
    wbuf: &mut [f32],
    acc: &mut [f32],
) {
    let n_in = w.n_in();
    let tile = w.tile(t);
    acc.fill(0.0);
    let mut k0 = 0;
    while k0 < n_in {
        let kn = (n_in - k0).min(KB);
        // f32 tiles are already `[k][16]` f32: multiply in place.
        let wp: *const f32 = if w.format() == WeightFormat::F32 {
            tile[k0 * TILE * 4..].as_ptr().cast()
        } else {
            // SAFETY: `tile` is a whole tile; `k0` is a multiple of KB (and so of every
            // format's block), `kn <= KB`.
            unsafe { convert(w.format(), tile, k0, kn, wbuf) };
            wbuf.as_ptr()
        };
        let mut r0 = 0;
        while r0 < rows {
            let nr = (rows - r0).min(MR);
            let xp = x[r0 * n_in + k0..].as_ptr();
            let cp = acc[r0 * TILE..].as_mut_ptr();
            // SAFETY: `wp` holds `kn` vectors of 16 floats; rows `r0..r0 + nr` of `x` hold
            // `n_in >= k0 + kn` values; `acc` holds `nr` rows of 16 from `r0`.
            unsafe {
                match nr {
                    6 => micro::<6>(wp, kn, xp, n_in, cp),
                    5 => micro::<5>(wp, kn, xp, n_in, cp),
                    4 => micro::<4>(wp, kn, xp, n_in, cp),
                    3 => micro::<3>(wp, kn, xp, n_in, cp),
                    2 => micro::<2>(wp, kn, xp, n_in, cp),
                    _ => micro::<1>(wp, kn, xp, n_in, cp),
                }
            }
            r0 += nr;
        }
        k0 += kn;
    }
}

/// `c[r][0..16] += Σ_k x[r·stride + k] · w[k][0..16]` for `R` rows and `kn` inputs.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn micro<const R: usize>(
    w: *const f32,
    kn: usize,
    x: *const f32,
    stride: usize,
    c: *mut f32,
) {
    let mut acc = [[_mm256_setzero_ps(); 2]; R];
    // SAFETY (whole body): the caller's contract.
    unsafe {
        for k in 0..kn {
            let w0 = _mm256_loadu_ps(w.add(k * TILE));
            let w1 = _mm256_loadu_ps(w.add(k * TILE + 8));
            for r in 0..R {
                let a = _mm256_broadcast_ss(&*x.add(r * stride + k));
                acc[r][0] = _mm256_fmadd_ps(a, w0, acc[r][0]);
                acc[r][1] = _mm256_fmadd_ps(a, w1, acc[r][1]);
            }
        }
        for r in 0..R {
            let p = c.add(r * TILE);
            _mm256_storeu_ps(p, _mm256_add_ps(_mm256_loadu_ps(p), acc[r][0]));
            _mm256_storeu_ps(
                p.add(8),
                _mm256_add_ps(_mm256_loadu_ps(p.add(8)), acc[r][1]),
            );
        }
    }
}

/// Dequantizes inputs `k0..k0 + kn` of a packed tile into `out` as `[k][16]` f32.
///
/// # Safety
/// AVX2/FMA/F16C; `tile` a whole tile of `format`, `k0` a multiple of [`KB`],
/// `kn <= KB`, `k0 + kn` within the padded inputs, `out.len() >= kn * 16`.
#[target_feature(enable = "avx2,fma,f16c")]
pub(crate) unsafe fn convert(
    format: WeightFormat,
    tile: &[u8],
    k0: usize,
    kn: usize,
    out: &mut [f32],
) {
    debug_assert!(out.len() >= kn * TILE);
    let o = out.as_mut_ptr();
    let t = tile.as_ptr();
    // SAFETY (whole body): the offsets below stay inside the tile of `format` for inputs
    // `k0..k0 + kn` (see `super::format` for the layouts) and inside `out`.
    unsafe {
        match format {
            WeightFormat::F32 => {
                std::ptr::copy_nonoverlapping(t.cast::<f32>().add(k0 * TILE), o, kn * TILE);
            }
            WeightFormat::F16 => {
                let src = t.add(k0 * TILE * 2);
                for k in 0..kn {
                    let h = src.add(k * 32);
                    _mm256_storeu_ps(o.add(k * TILE), _mm256_cvtph_ps(_mm_loadu_si128(h.cast())));
                    _mm256_storeu_ps(
                        o.add(k * TILE + 8),
                        _mm256_cvtph_ps(_mm_loadu_si128(h.add(16).cast())),
                    );
                }
            }
            WeightFormat::Bf16 => {
                // `[k/2][16][2]`: one 64-byte vector per pair of inputs; k0 is even.
                let high = _mm256_set1_epi32(0xffff_0000_u32 as i32);
                let src = t.add(k0 * TILE * 2);
                let mut k = 0;
                while k < kn {
                    for h in 0..2 {
                        let v = _mm256_loadu_si256(src.add(k * 32 + h * 32).cast());
                        let even = _mm256_castsi256_ps(_mm256_slli_epi32::<16>(v));
                        let odd = _mm256_castsi256_ps(_mm256_and_si256(v, high));
                        _mm256_storeu_ps(o.add(k * TILE + 8 * h), even);
                        if k + 1 < kn {
                            _mm256_storeu_ps(o.add((k + 1) * TILE + 8 * h), odd);
                        }
                    }
                    k += 2;
                }
            }
            WeightFormat::Q8_0 => {
                let low = _mm256_set1_epi32(0xff);
                let bias = _mm256_set1_ps(128.0);
                for b in 0..kn.div_ceil(QBLOCK) {
                    let blk = t.add((k0 / QBLOCK + b) * Q8_0_TILE_BLOCK);
                    let d = [
                        _mm256_cvtph_ps(_mm_loadu_si128(blk.cast())),
                        _mm256_cvtph_ps(_mm_loadu_si128(blk.add(16).cast())),
                    ];
                    for g in 0..QBLOCK / 4 {
                        for h in 0..2 {
                            // Rows 8h..8h+8, 4 inputs each (one i32 lane per row).
                            let v = _mm256_loadu_si256(blk.add(2 * TILE + g * 64 + h * 32).cast());
                            for j in 0..4 {
                                let q = _mm256_and_si256(
                                    _mm256_srlv_epi32(v, _mm256_set1_epi32(8 * j as i32)),
                                    low,
                                );
                                let f = _mm256_sub_ps(_mm256_cvtepi32_ps(q), bias);
                                let k = b * QBLOCK + g * 4 + j;
                                _mm256_storeu_ps(o.add(k * TILE + 8 * h), _mm256_mul_ps(f, d[h]));
                            }
                        }
                    }
                }
            }
            WeightFormat::Q4K => {
                // k0 is a multiple of 256 and kn == 256 (k_pad is a multiple of 256).
                let blk = t.add(k0 / QK_K * Q4K_TILE_BLOCK);
                let nib = _mm256_set1_epi32(0x0f);
                let tile_blk = std::slice::from_raw_parts(blk, Q4K_TILE_BLOCK);
                let f16 = |off: usize| {
                    half::f16::from_bits(u16::from_le_bytes([tile_blk[off], tile_blk[off + 1]]))
                        .to_f32()
                };
                for j in 0..QK_K / QBLOCK {
                    let mut scale = [0f32; TILE];
                    let mut min = [0f32; TILE];
                    for i in 0..TILE {
                        let (sc, m) = q4k_scale_min(tile_blk, i, j);
                        scale[i] = f16(q4k_off::D + 2 * i) * sc as f32;
                        min[i] = f16(q4k_off::DMIN + 2 * i) * m as f32;
                    }
                    let qs = blk.add(q4k_off::QS + j * 256);
                    for h in 0..2 {
                        let sc = _mm256_loadu_ps(scale.as_ptr().add(8 * h));
                        let mn = _mm256_loadu_ps(min.as_ptr().add(8 * h));
                        for v in 0..4 {
                            let bytes = _mm256_loadu_si256(qs.add(v * 64 + h * 32).cast());
                            for b in 0..4 {
                                for (hi, group) in [(0, v), (1, v + 4)] {
                                    let shift = _mm256_set1_epi32((8 * b + 4 * hi) as i32);
                                    let q = _mm256_and_si256(_mm256_srlv_epi32(bytes, shift), nib);
                                    // (d·sc)·q − dmin·m, rounded as `weight_at` rounds.
                                    let f =
                                        _mm256_sub_ps(_mm256_mul_ps(_mm256_cvtepi32_ps(q), sc), mn);
                                    let k = j * QBLOCK + group * 4 + b;
                                    _mm256_storeu_ps(o.add(k * TILE + 8 * h), f);
                                }
                            }
                        }
                    }
                }
            }
        }
    }
}
