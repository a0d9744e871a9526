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
/// (bf16 activations for bf16 weights); for q8_0 exact integer sums per block of 32,
/// scaled in f32; for q4k exact integer sums per super-block of 256 (each block of 32
/// times its 6-bit scale, the mins times the activation block sums), scaled in f32.
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
        (WeightFormat::Q4K, Acts::Q8K { q, d, bsum }) => {
            let (ns, nb) = (k_pad / QK_K, k_pad / QBLOCK);
            for (r, o) in out.iter_mut().enumerate() {
                let row = row0 + r;
                o.fill(0.0);
                for (s, blk) in tile.chunks_exact(Q4K_TILE_BLOCK).enumerate() {
                    for (i, v) in o.iter_mut().enumerate() {
                        // Σ_j sc_j · (q · a over block j) and Σ_j m_j · (Σ a over block j):
                        // exact integers over the super-block (bounds in `avx2.rs`).
                        let (mut isum, mut msum) = (0i32, 0i32);
                        for j in 0..8 {
                            let (sc, m) = q4k_scale_min(blk, i, j);
                            let a = &q[row * k_pad + s * QK_K + j * QBLOCK..][..QBLOCK];
                            let mut dot = 0i32;
                            for (kk, &ak) in a.iter().enumerate() {
                                let g = kk / 4;
                                let byte =
                                    blk[q4k_off::QS + j * 256 + (g % 4) * 64 + i * 4 + kk % 4];
                                let w = if g < 4 { byte & 15 } else { byte >> 4 };
                                dot += w as i32 * ak as i32;
                            }
                            isum += sc as i32 * dot;
                            msum += m as i32 * bsum[row * nb + s * 8 + j] as i32;
                        }
                        let dd = f16_at(blk, q4k_off::D + 2 * i);
                        let dmin = f16_at(blk, q4k_off::DMIN + 2 * i);
                        *v += (isum as f32 * dd - msum as f32 * dmin) * d[row * ns + s];
                    }
                }
            }
        }
        _ => unreachable!("activations are prepared for the weight format"),
    }
}
