//! Activations prepared once per matrix product, in the form the weight format's dot
//! products read: f32 as given, bf16 (rounded to nearest even), or 8-bit blocks of 32 with
//! one f32 scale and the integer sum per block (what llama.cpp calls q8 activations).

use rayon::prelude::*;

use super::format::{QBLOCK, WeightFormat};

/// Rows of activations in a weight format's input form; the input dimension is padded with
/// zeros to the format's `k_pad`.
#[derive(Debug)]
pub enum Acts<'a> {
    /// f32 rows as given (`k_pad == k`).
    F32 {
        /// `rows × k` values.
        x: &'a [f32],
    },
    /// bf16 bit patterns, `rows × k_pad`.
    Bf16 {
        /// The values.
        x: Vec<u16>,
    },
    /// Signed 8-bit blocks of [`QBLOCK`].
    Q8 {
        /// `rows × k_pad` quants.
        q: Vec<i8>,
        /// `rows × k_pad / 32` scales.
        d: Vec<f32>,
        /// `rows × k_pad / 32` sums of the quants of each block.
        sum: Vec<i32>,
    },
}

/// Rows per parallel task when preparing many rows (prefill); decode rows run inline.
const PAR_ROWS: usize = 8;

impl<'a> Acts<'a> {
    /// Prepares `rows` rows of `k` inputs (`x.len() == rows * k`) for `format`, padded to
    /// `k_pad`.
    pub fn prepare(
        format: WeightFormat,
        x: &'a [f32],
        rows: usize,
        k: usize,
        k_pad: usize,
    ) -> Self {
        debug_assert_eq!(x.len(), rows * k);
        match format {
            WeightFormat::F32 | WeightFormat::F16 => Acts::F32 { x },
            WeightFormat::Bf16 => {
                let mut out = vec![0u16; rows * k_pad];
                for_rows(&mut out, k_pad, rows, |r, o| {
                    for (d, &s) in o.iter_mut().zip(&x[r * k..(r + 1) * k]) {
                        *d = f32_to_bf16(s);
                    }
                });
                Acts::Bf16 { x: out }
            }
            WeightFormat::Q8_0 | WeightFormat::Q4K => {
                let nb = k_pad / QBLOCK;
                let mut q = vec![0i8; rows * k_pad];
                let mut d = vec![0f32; rows * nb];
                let mut sum = vec![0i32; rows * nb];
                let row = |r: usize, qr: &mut [i8], dr: &mut [f32], sr: &mut [i32]| {
                    quantize_row(&x[r * k..(r + 1) * k], qr, dr, sr);
                };
                if rows > PAR_ROWS {
                    q.par_chunks_mut(k_pad)
                        .zip(d.par_chunks_mut(nb))
                        .zip(sum.par_chunks_mut(nb))
                        .enumerate()
                        .for_each(|(r, ((qr, dr), sr))| row(r, qr, dr, sr));
                } else {
                    q.chunks_mut(k_pad)
                        .zip(d.chunks_mut(nb))
                        .zip(sum.chunks_mut(nb))
                        .enumerate()
                        .for_each(|(r, ((qr, dr), sr))| row(r, qr, dr, sr));
                }
                Acts::Q8 { q, d, sum }
            }
        }
    }
}

/// Runs `f(row, row_slice)` over the rows of `out` (in parallel for many rows).
fn for_rows<T: Send>(
    out: &mut [T],
    stride: usize,
    rows: usize,
    f: impl Fn(usize, &mut [T]) + Sync,
) {
    if rows > PAR_ROWS {
        out.par_chunks_mut(stride)
            .enumerate()
            .for_each(|(r, o)| f(r, o));
    } else {
        out.chunks_mut(stride)
            .enumerate()
            .for_each(|(r, o)| f(r, o));
    }
}

/// Rounds to the nearest bf16 (ties to even); NaN stays NaN.
#[inline]
pub fn f32_to_bf16(v: f32) -> u16 {
    let bits = v.to_bits();
    if v.is_nan() {
        return ((bits >> 16) | 0x40) as u16;
    }
    let rounding = 0x7fff + ((bits >> 16) & 1);
    (bits.wrapping_add(rounding) >> 16) as u16
}

/// The f32 value of bf16 bits.
#[inline]
pub fn bf16_to_f32(b: u16) -> f32 {
    f32::from_bits((b as u32) << 16)
}

/// Adding then subtracting 1.5·2²³ rounds an f32 of magnitude < 2²² to the nearest integer
/// (ties to even) with plain arithmetic, which vectorizes on every x86-64.
const ROUND_MAGIC: f32 = 12_582_912.0;

/// Quantizes one row into blocks of 32: `d = max|x| / 127`, `q = round(x / d)`. The padding
/// past `x.len()` is zero.
fn quantize_row(x: &[f32], q: &mut [i8], d: &mut [f32], sum: &mut [i32]) {
    for (b, (qb, (db, sb))) in q
        .chunks_mut(QBLOCK)
        .zip(d.iter_mut().zip(sum.iter_mut()))
        .enumerate()
    {
        let start = (b * QBLOCK).min(x.len());
        let end = ((b + 1) * QBLOCK).min(x.len());
        let mut xs = [0f32; QBLOCK];
        xs[..end - start].copy_from_slice(&x[start..end]);
        let amax = xs.iter().fold(0f32, |m, v| m.max(v.abs()));
        let scale = amax / 127.0;
        let inv = if scale > 0.0 { 1.0 / scale } else { 0.0 };
        let mut s = 0i32;
        for (o, v) in qb.iter_mut().zip(xs) {
            let r = ((v * inv + ROUND_MAGIC) - ROUND_MAGIC) as i32;
            *o = r as i8;
            s += r;
        }
        *db = scale;
        *sb = s;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bf16_rounds_to_nearest_even() {
        assert_eq!(f32_to_bf16(1.0), 0x3f80);
        // 1 + 2^-8 is halfway between 1 and 1 + 2^-7: ties to even (1.0).
        assert_eq!(f32_to_bf16(1.0 + 1.0 / 256.0), 0x3f80);
        // Just above halfway rounds up.
        assert_eq!(f32_to_bf16(1.0 + 1.0 / 256.0 + 1.0 / 65536.0), 0x3f81);
        assert_eq!(bf16_to_f32(f32_to_bf16(-2.5)), -2.5);
        assert!(bf16_to_f32(f32_to_bf16(f32::NAN)).is_nan());
        assert_eq!(bf16_to_f32(f32_to_bf16(f32::INFINITY)), f32::INFINITY);
    }

    #[test]
    fn q8_rows_reconstruct_and_pad_with_zeros() {
        let k = 70; // two whole blocks and a tail of 6
        let k_pad = WeightFormat::Q8_0.padded_k(k);
        let rows = 3;
        let x: Vec<f32> = (0..rows * k)
            .map(|i| ((i * 37 % 101) as f32 - 50.0) / 7.0)
            .collect();
        let Acts::Q8 { q, d, sum } = Acts::prepare(WeightFormat::Q8_0, &x, rows, k, k_pad) else {
            panic!("q8 expected");
        };
        assert_eq!(q.len(), rows * k_pad);
        for r in 0..rows {
            for i in 0..k_pad {
                let b = r * (k_pad / QBLOCK) + i / QBLOCK;
                let back = q[r * k_pad + i] as f32 * d[b];
                let orig = if i < k { x[r * k + i] } else { 0.0 };
                assert!((back - orig).abs() <= d[b] * 0.5 + 1e-6, "{r} {i}");
                if i >= k {
                    assert_eq!(q[r * k_pad + i], 0);
                }
            }
            for b in 0..k_pad / QBLOCK {
                let s: i32 = q[r * k_pad + b * QBLOCK..][..QBLOCK]
                    .iter()
                    .map(|&v| v as i32)
                    .sum();
                assert_eq!(s, sum[r * (k_pad / QBLOCK) + b]);
            }
        }
        // The largest magnitude of a block maps to ±127.
        assert!(q.iter().any(|&v| v == 127 || v == -127));
    }

    #[test]
    fn many_rows_prepare_like_few_rows() {
        let k = 40;
        let rows = 20;
        let x: Vec<f32> = (0..rows * k).map(|i| (i as f32 * 0.37).sin()).collect();
        for f in [WeightFormat::Q4K, WeightFormat::Bf16] {
            let k_pad = f.padded_k(k);
            let all = Acts::prepare(f, &x, rows, k, k_pad);
            for r in [0, 7, 19] {
                let one = Acts::prepare(f, &x[r * k..(r + 1) * k], 1, k, k_pad);
                match (&all, &one) {
                    (Acts::Q8 { q, d, .. }, Acts::Q8 { q: q1, d: d1, .. }) => {
                        assert_eq!(&q[r * k_pad..(r + 1) * k_pad], &q1[..]);
                        let nb = k_pad / QBLOCK;
                        assert_eq!(&d[r * nb..(r + 1) * nb], &d1[..]);
                    }
                    (Acts::Bf16 { x }, Acts::Bf16 { x: x1 }) => {
                        assert_eq!(&x[r * k_pad..(r + 1) * k_pad], &x1[..]);
                    }
                    _ => panic!("same kind expected"),
                }
            }
        }
    }
}
