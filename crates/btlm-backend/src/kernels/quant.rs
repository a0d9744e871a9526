//! Weight quantizers: ggml's q8_0 and Q4_K number formats, computed here.

use super::format::{QBLOCK, QK_K};

/// Adding then subtracting 1.5·2²³ rounds to the nearest integer (ties to even) for
/// magnitudes below 2²².
#[inline]
fn round(v: f32) -> f32 {
    (v + 12_582_912.0) - 12_582_912.0
}

/// One q8_0 block: `(d, q)` with `x ≈ d · q`, `d` rounded to f16.
pub fn quantize_q8_0(x: &[f32; QBLOCK]) -> (half::f16, [i8; QBLOCK]) {
    let amax = x.iter().fold(0f32, |m, v| m.max(v.abs()));
    let d = amax / 127.0;
    let inv = if d > 0.0 { 1.0 / d } else { 0.0 };
    let mut q = [0i8; QBLOCK];
    for (o, &v) in q.iter_mut().zip(x) {
        *o = round(v * inv).clamp(-127.0, 127.0) as i8;
    }
    (half::f16::from_f32(d), q)
}

/// One Q4_K super-block of one row: `x ≈ d·sc[j]·q − dmin·m[j]` on sub-block `j`.
#[derive(Debug, Clone, PartialEq)]
pub struct Q4kBlock {
    /// Scale of the sub-block scales.
    pub d: half::f16,
    /// Scale of the sub-block mins.
    pub dmin: half::f16,
    /// 6-bit sub-block scales.
    pub sc: [u8; 8],
    /// 6-bit sub-block mins.
    pub m: [u8; 8],
    /// 4-bit quants.
    pub q: [u8; QK_K],
}

impl Q4kBlock {
    /// The value of weight `i`.
    pub fn value(&self, i: usize) -> f32 {
        let j = i / QBLOCK;
        self.d.to_f32() * self.sc[j] as f32 * self.q[i] as f32
            - self.dmin.to_f32() * self.m[j] as f32
    }
}

/// Lanes of the partial sums in [`fit_sub_block`]: sums kept per lane (and added up at the
/// end) let the compiler use SIMD registers, which a single running f32 sum forbids.
const LANES: usize = 8;

/// Adds up the lanes.
#[inline]
fn hsum(v: [f32; LANES]) -> f32 {
    ((v[0] + v[4]) + (v[1] + v[5])) + ((v[2] + v[6]) + (v[3] + v[7]))
}

/// Fits `x ≈ scale·l − min` with `l ∈ [0, 15]`, `min ≥ 0`, minimizing the error weighted by
/// `w`: the quantization grid is searched around `15 / (max − min)`, each candidate refined
/// by weighted least squares (the approach of ggml's `make_qkx2_quants`).
fn fit_sub_block(x: &[f32; QBLOCK], w: &[f32; QBLOCK]) -> (f32, f32) {
    let mut lo = x.iter().copied().fold(f32::INFINITY, f32::min).min(0.0);
    let hi = x.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    if hi <= lo {
        return (0.0, -lo);
    }
    let err_of = |scale: f32, lo: f32| -> f32 {
        let inv = if scale > 0.0 { 1.0 / scale } else { 0.0 };
        let mut acc = [0f32; LANES];
        for (xs, ws) in x.chunks_exact(LANES).zip(w.chunks_exact(LANES)) {
            for k in 0..LANES {
                let l = round((xs[k] - lo) * inv).clamp(0.0, 15.0);
                let e = scale * l + lo - xs[k];
                acc[k] += ws[k] * e * e;
            }
        }
        hsum(acc)
    };
    let mut best_scale = (hi - lo) / 15.0;
    let mut best_err = err_of(best_scale, lo);
    let (lo0, range) = (lo, hi - lo);
    for step in 0..=20 {
        let iscale = (15.0 - 1.0 + 0.1 * step as f32) / range;
        let [mut sw, mut sl, mut sl2, mut sx, mut sxl] = [[0f32; LANES]; 5];
        for (xs, ws) in x.chunks_exact(LANES).zip(w.chunks_exact(LANES)) {
            for k in 0..LANES {
                let (v, wt) = (xs[k], ws[k]);
                let l = round(iscale * (v - lo0)).clamp(0.0, 15.0);
                sw[k] += wt;
                sl[k] += wt * l;
                sl2[k] += wt * l * l;
                sx[k] += wt * v;
                sxl[k] += wt * l * v;
            }
        }
        let [sw, sl, sl2, sx, sxl] = [sw, sl, sl2, sx, sxl].map(hsum);
        let det = sw * sl2 - sl * sl;
        if det <= 0.0 {
            continue;
        }
        let mut scale = (sw * sxl - sx * sl) / det;
        let mut off = (sl2 * sx - sl * sxl) / det;
        if off > 0.0 {
            off = 0.0;
            scale = if sl2 > 0.0 { sxl / sl2 } else { 0.0 };
        }
        if scale <= 0.0 {
            continue;
        }
        let err = err_of(scale, off);
        if err < best_err {
            best_err = err;
            best_scale = scale;
            lo = off;
        }
    }
    (best_scale, -lo)
}

/// Quantizes one super-block of 256 weights to Q4_K.
pub fn quantize_q4k(x: &[f32; QK_K]) -> Q4kBlock {
    let mut scales = [0f32; 8];
    let mut mins = [0f32; 8];
    for j in 0..8 {
        let xs: &[f32; QBLOCK] = x[j * QBLOCK..(j + 1) * QBLOCK]
            .try_into()
            .expect("sub-block of 32");
        let rms = (xs.iter().map(|v| v * v).sum::<f32>() / QBLOCK as f32).sqrt();
        let w: [f32; QBLOCK] = std::array::from_fn(|i| rms + xs[i].abs());
        (scales[j], mins[j]) = fit_sub_block(xs, &w);
    }
    let max_scale = scales.iter().copied().fold(0f32, f32::max);
    let max_min = mins.iter().copied().fold(0f32, f32::max);
    let to6 = |v: f32, max: f32| -> u8 {
        if max > 0.0 {
            round(v * 63.0 / max).clamp(0.0, 63.0) as u8
        } else {
            0
        }
    };
    let sc: [u8; 8] = std::array::from_fn(|j| to6(scales[j], max_scale));
    let m: [u8; 8] = std::array::from_fn(|j| to6(mins[j], max_min));
    let d = half::f16::from_f32(max_scale / 63.0);
    let dmin = half::f16::from_f32(max_min / 63.0);
    let mut q = [0u8; QK_K];
    for j in 0..8 {
        let dl = d.to_f32() * sc[j] as f32;
        let ml = dmin.to_f32() * m[j] as f32;
        if dl <= 0.0 {
            continue;
        }
        for i in j * QBLOCK..(j + 1) * QBLOCK {
            q[i] = round((x[i] + ml) / dl).clamp(0.0, 15.0) as u8;
        }
    }
    Q4kBlock { d, dmin, sc, m, q }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::quantized::{GgmlDType, QTensor};
    use candle_core::{Device, Tensor};
    use rand::{Rng, SeedableRng};

    fn gaussian_rows(n: usize, seed: u64) -> Vec<f32> {
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        (0..n)
            .map(|_| {
                // Sum of uniforms: close enough to normal, with occasional larger outliers.
                let s: f32 = (0..4).map(|_| rng.r#gen::<f32>() - 0.5).sum();
                if rng.gen_bool(0.01) { s * 8.0 } else { s }
            })
            .collect()
    }

    fn rmse(a: &[f32], b: &[f32]) -> f32 {
        (a.iter().zip(b).map(|(x, y)| (x - y) * (x - y)).sum::<f32>() / a.len() as f32).sqrt()
    }

    /// ggml's own quantizer (candle's port) on the same data, dequantized.
    fn ggml_roundtrip(x: &[f32], dtype: GgmlDType) -> Vec<f32> {
        let t = Tensor::from_slice(x, (x.len() / QK_K, QK_K), &Device::Cpu).expect("tensor");
        QTensor::quantize(&t, dtype)
            .expect("quantize")
            .dequantize(&Device::Cpu)
            .expect("dequantize")
            .flatten_all()
            .expect("flat")
            .to_vec1::<f32>()
            .expect("vec")
    }

    #[test]
    fn q8_0_error_is_within_half_a_step() {
        let x = gaussian_rows(32 * 64, 1);
        for b in x.chunks_exact(32) {
            let b: &[f32; 32] = b.try_into().expect("32");
            let (d, q) = quantize_q8_0(b);
            let amax = b.iter().fold(0f32, |m, v| m.max(v.abs()));
            for (v, &qi) in b.iter().zip(&q) {
                // d is rounded to f16 (relative 2^-11) after choosing q.
                let err = (d.to_f32() * qi as f32 - v).abs();
                assert!(err <= amax / 254.0 + amax * 1e-3, "{v} {qi} {d}");
            }
        }
        let (d, q) = quantize_q8_0(&[0.0; 32]);
        assert_eq!((d.to_f32(), q), (0.0, [0; 32]));
    }

    #[test]
    fn q8_0_matches_ggml_quality() {
        let x = gaussian_rows(256 * 32, 2);
        let ours: Vec<f32> = x
            .chunks_exact(32)
            .flat_map(|b| {
                let (d, q) = quantize_q8_0(b.try_into().expect("32"));
                q.map(|v| d.to_f32() * v as f32)
            })
            .collect();
        let ggml = ggml_roundtrip(&x, GgmlDType::Q8_0);
        let (a, b) = (rmse(&ours, &x), rmse(&ggml, &x));
        assert!(a <= b * 1.01, "ours {a} ggml {b}");
    }

    #[test]
    fn q4k_matches_ggml_quality() {
        let x = gaussian_rows(256 * 64, 3);
        let ours: Vec<f32> = x
            .chunks_exact(QK_K)
            .flat_map(|b| {
                let blk = quantize_q4k(b.try_into().expect("256"));
                (0..QK_K).map(move |i| blk.value(i))
            })
            .collect();
        let ggml = ggml_roundtrip(&x, GgmlDType::Q4K);
        let (a, b) = (rmse(&ours, &x), rmse(&ggml, &x));
        let rms = (x.iter().map(|v| v * v).sum::<f32>() / x.len() as f32).sqrt();
        eprintln!("q4k rmse: ours {a}, ggml {b}, signal rms {rms}");
        assert!(a <= b * 1.02, "ours {a} ggml {b}");
        assert!(a < 0.12 * rms, "{a} vs rms {rms}");
    }

    #[test]
    fn q4k_handles_constant_and_zero_blocks() {
        let zero = quantize_q4k(&[0.0; QK_K]);
        assert!((0..QK_K).all(|i| zero.value(i) == 0.0));
        // All-positive constant: min is clipped at 0, the scale carries the value.
        let c = quantize_q4k(&[0.5; QK_K]);
        for i in 0..QK_K {
            assert!((c.value(i) - 0.5).abs() < 0.5 / 15.0, "{}", c.value(i));
        }
        // All-negative constant: carried by the min.
        let n = quantize_q4k(&[-0.25; QK_K]);
        for i in 0..QK_K {
            assert!((n.value(i) + 0.25).abs() < 0.01, "{}", n.value(i));
        }
    }
}
