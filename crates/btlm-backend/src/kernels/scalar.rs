//! Portable reference kernels: the definition every SIMD path is tested against, and the
//! fallback on CPUs without AVX2.

use super::acts::{Acts, bf16_to_f32};
use super::format::{Q4K_TILE_BLOCK, Q8_0_TILE_BLOCK, QBLOCK, QK_K, TILE, WeightFormat, q4k_off};
use super::pack::{q4k_scale_min, weight_at};

#[inline]
fn f16_at(b: &[u8], off: usize) -> f32 {
    half::f16::from_bits(u16::from_le_bytes([b[off], b[off + 1]])).to_f32()
}

/// `out[r][i] = Σ_k W[i][k] · a[row0 + r][k]` for the 16 rows `i` of one tile.
///
/// The arithmetic is the SIMD kernels': f32 products summed in f32 for the dense formats
/// (bf16 activations for bf16 weights); for q8_0/q4k exact integer sums per block of 32,
/// scaled in f32.
pub fn tile(
    format: WeightFormat,
    tile: &[u8],
    k_pad: usize,
    acts: &Acts<'_>,
    row0: usize,
    out: &mut [[f32; TILE]],
) {
    match (format, acts) {
        (WeightFormat::F32 | WeightFormat::F16, Acts::F32 { x }) => {
            for (r, o) in out.iter_mut().enumerate() {
                let a = &x[(row0 + r) * k_pad..(row0 + r + 1) * k_pad];
                for (i, v) in o.iter_mut().enumerate() {
                    *v = a
                        .iter()
                        .enumerate()
                        .map(|(k, &ak)| ak * weight_at(format, tile, i, k))
                        .sum();
                }
            }
        }
        (WeightFormat::Bf16, Acts::Bf16 { x }) => {
            for (r, o) in out.iter_mut().enumerate() {
                let a = &x[(row0 + r) * k_pad..(row0 + r + 1) * k_pad];
                for (i, v) in o.iter_mut().enumerate() {
                    *v = a
                        .iter()
                        .enumerate()
                        .map(|(k, &ak)| bf16_to_f32(ak) * weight_at(format, tile, i, k))
                        .sum();
                }
            }
        }
        (WeightFormat::Q8_0, Acts::Q8 { q, d, sum }) => {
            let nb = k_pad / QBLOCK;
            for (r, o) in out.iter_mut().enumerate() {
                let row = row0 + r;
                o.fill(0.0);
                for (b, blk) in tile.chunks_exact(Q8_0_TILE_BLOCK).enumerate() {
                    let a = &q[row * k_pad + b * QBLOCK..][..QBLOCK];
                    for (i, v) in o.iter_mut().enumerate() {
                        let mut isum = 0i32;
                        for (kk, &ak) in a.iter().enumerate() {
                            let w = blk[2 * TILE + (kk / 4) * 64 + i * 4 + kk % 4] as i32;
                            isum += w * ak as i32;
                        }
                        isum -= 128 * sum[row * nb + b];
                        *v += isum as f32 * (f16_at(blk, 2 * i) * d[row * nb + b]);
                    }
                }
            }
        }
        (WeightFormat::Q4K, Acts::Q8 { q, d, sum }) => {
            let nb = k_pad / QBLOCK;
            for (r, o) in out.iter_mut().enumerate() {
                let row = row0 + r;
                o.fill(0.0);
                for (s, blk) in tile.chunks_exact(Q4K_TILE_BLOCK).enumerate() {
                    for (i, v) in o.iter_mut().enumerate() {
                        let dd = f16_at(blk, q4k_off::D + 2 * i);
                        let dmin = f16_at(blk, q4k_off::DMIN + 2 * i);
                        for j in 0..8 {
                            let (sc, m) = q4k_scale_min(blk, i, j);
                            let b = s * (QK_K / QBLOCK) + j;
                            let a = &q[row * k_pad + b * QBLOCK..][..QBLOCK];
                            let mut isum = 0i32;
                            for (kk, &ak) in a.iter().enumerate() {
                                let g = kk / 4;
                                let byte =
                                    blk[q4k_off::QS + j * 256 + (g % 4) * 64 + i * 4 + kk % 4];
                                let w = if g < 4 { byte & 15 } else { byte >> 4 };
                                isum += w as i32 * ak as i32;
                            }
                            let t = isum as f32 * (dd * sc as f32)
                                - (dmin * m as f32) * sum[row * nb + b] as f32;
                            *v += t * d[row * nb + b];
                        }
                    }
                }
            }
        }
        _ => unreachable!("activations are prepared for the weight format"),
    }
}
