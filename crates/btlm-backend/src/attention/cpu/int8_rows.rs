//! [`super::q8_row`] on 16 lanes (AVX-512 F) and on 8 (AVX2): every value goes through the
//! same operations as in the portable function — its magnitude into the row's largest (a
//! NaN ignored, as `f32::max` ignores it), `x · inv` rounded by adding and subtracting
//! [`ROUND`], a NaN stored as 0, clamped to ±127 — so a row gets the same bytes on every
//! path. The portable function's `max` and `clamp` chains did not vectorize: it took ~4 ns
//! a value, a twelfth of a 1 024-token prompt's time (docs/benchmarks.md, session 55).

use std::arch::x86_64::*;

use super::ROUND;

/// The scale of a row whose largest magnitude is `max`, and the factor that turns its
/// values into steps (0 for an all-zero row), as [`super::q8_row`] computes them.
fn scale_and_inverse(max: f32) -> (f32, f32) {
    let s = max / 127.0;
    (s, if s > 0.0 { 1.0 / s } else { 0.0 })
}

/// [`super::q8_row`] on 16 lanes.
///
/// # Safety
/// AVX-512 F.
///
/// # Panics
/// If `out` is shorter than `x.len() + 4` bytes.
#[target_feature(enable = "avx512f")]
pub(super) unsafe fn q8_row_avx512(x: &[f32], out: &mut [u8]) {
    let n = x.len();
    assert!(
        out.len() >= n + 4,
        "an int8 row of {n} values in {}",
        out.len()
    );
    let whole = n - n % 16;
    let (xp, op) = (x.as_ptr(), out.as_mut_ptr());
    // SAFETY (all below): loads of values `c..c + 16 <= whole <= n` of `x`, stores of bytes
    // `c..c + 16` of `out` (checked above).
    unsafe {
        let mut m = _mm512_setzero_ps();
        for c in (0..whole).step_by(16) {
            // A NaN in the first operand gives the second: `m` stays.
            m = _mm512_max_ps(_mm512_abs_ps(_mm512_loadu_ps(xp.add(c))), m);
        }
        let max = x[whole..]
            .iter()
            .fold(_mm512_reduce_max_ps(m), |m, v| m.max(v.abs()));
        let (s, inv) = scale_and_inverse(max);
        let (inv16, round) = (_mm512_set1_ps(inv), _mm512_set1_ps(ROUND));
        let (lo, hi) = (_mm512_set1_ps(-127.0), _mm512_set1_ps(127.0));
        for c in (0..whole).step_by(16) {
            let v = _mm512_loadu_ps(xp.add(c));
            let q = _mm512_sub_ps(_mm512_add_ps(_mm512_mul_ps(v, inv16), round), round);
            let q = _mm512_maskz_mov_ps(_mm512_cmp_ps_mask::<_CMP_ORD_Q>(q, q), q);
            let q = _mm512_cvttps_epi32(_mm512_min_ps(_mm512_max_ps(q, lo), hi));
            _mm_storeu_si128(op.add(c).cast(), _mm512_cvtepi32_epi8(q));
        }
        tail(x, out, whole, inv, s);
    }
}

/// [`super::q8_row`] on 8 lanes, 16 values a store.
///
/// # Safety
/// AVX2.
///
/// # Panics
/// If `out` is shorter than `x.len() + 4` bytes.
#[target_feature(enable = "avx2")]
pub(super) unsafe fn q8_row_avx2(x: &[f32], out: &mut [u8]) {
    let n = x.len();
    assert!(
        out.len() >= n + 4,
        "an int8 row of {n} values in {}",
        out.len()
    );
    let whole = n - n % 16;
    let (xp, op) = (x.as_ptr(), out.as_mut_ptr());
    // SAFETY (all below): as in `q8_row_avx512`, 8 values a load.
    unsafe {
        let magnitude = _mm256_castsi256_ps(_mm256_set1_epi32(0x7fff_ffff));
        let mut m = _mm256_setzero_ps();
        for c in (0..whole).step_by(8) {
            let v = _mm256_and_ps(_mm256_loadu_ps(xp.add(c)), magnitude);
            m = _mm256_max_ps(v, m);
        }
        let mut lanes = [0f32; 8];
        _mm256_storeu_ps(lanes.as_mut_ptr(), m);
        let max = lanes
            .iter()
            .chain(&x[whole..])
            .fold(0f32, |m, v| m.max(v.abs()));
        let (s, inv) = scale_and_inverse(max);
        let (inv8, round) = (_mm256_set1_ps(inv), _mm256_set1_ps(ROUND));
        let (lo, hi) = (_mm256_set1_ps(-127.0), _mm256_set1_ps(127.0));
        let steps = |c: usize| {
            let v = _mm256_loadu_ps(xp.add(c));
            let q = _mm256_sub_ps(_mm256_add_ps(_mm256_mul_ps(v, inv8), round), round);
            let q = _mm256_and_ps(q, _mm256_cmp_ps::<_CMP_ORD_Q>(q, q));
            _mm256_cvttps_epi32(_mm256_min_ps(_mm256_max_ps(q, lo), hi))
        };
        for c in (0..whole).step_by(16) {
            // i16 lanes [a0–3, b0–3 | a4–7, b4–7], the middle quarters swapped, then bytes.
            let w = _mm256_packs_epi32(steps(c), steps(c + 8));
            let w = _mm256_permute4x64_epi64::<0b11_01_10_00>(w);
            let b = _mm_packs_epi16(_mm256_castsi256_si128(w), _mm256_extracti128_si256::<1>(w));
            _mm_storeu_si128(op.add(c).cast(), b);
        }
        tail(x, out, whole, inv, s);
    }
}

/// The values from `whole` on, one by one, then the scale `s`.
fn tail(x: &[f32], out: &mut [u8], whole: usize, inv: f32, s: f32) {
    let n = x.len();
    for (o, v) in out[whole..n].iter_mut().zip(&x[whole..]) {
        let q = (v * inv + ROUND) - ROUND;
        *o = (q.clamp(-127.0, 127.0) as i8) as u8;
    }
    out[n..n + 4].copy_from_slice(&s.to_le_bytes());
}

#[cfg(test)]
mod tests {
    use rand::{Rng, SeedableRng};

    use super::super::q8_row;
    use super::*;

    /// Rows of every length class (under a vector, whole vectors, a tail) and magnitude,
    /// with the values the rounding and the NaN rule must treat alike: ties, NaN, ±∞, −0.
    fn rows() -> Vec<Vec<f32>> {
        let mut rng = rand::rngs::StdRng::seed_from_u64(55);
        let mut rows = Vec::new();
        for n in [1, 7, 8, 15, 16, 17, 31, 32, 33, 80, 81, 160, 203] {
            for amp in [1e-3f32, 0.7, 3.0, 900.0] {
                let mut x: Vec<f32> = (0..n).map(|_| rng.gen_range(-amp..amp)).collect();
                rows.push(x.clone());
                // Largest magnitude 127, so the steps are the values: halves are ties.
                x[0] = 127.0;
                for (i, v) in x.iter_mut().enumerate().skip(1) {
                    *v = (i as f32 % 9.0) - 4.5;
                }
                rows.push(x.clone());
                x[n / 2] = f32::NAN;
                rows.push(x.clone());
                x[n - 1] = -0.0;
                rows.push(x.clone());
                x[n / 3] = f32::INFINITY;
                rows.push(x.clone());
                x[n / 3] = f32::NEG_INFINITY;
                rows.push(x);
            }
            rows.push(vec![0.0; n]);
            rows.push(vec![f32::NAN; n]);
        }
        rows
    }

    /// Every row of [`rows`] through `simd` gives the portable function's bytes.
    fn assert_same_bytes(simd: unsafe fn(&[f32], &mut [u8])) {
        for x in rows() {
            let mut want = vec![0u8; x.len() + 4];
            q8_row(&x, &mut want);
            let mut got = vec![0xaau8; x.len() + 4];
            // SAFETY: the callers check the CPU's features.
            unsafe { simd(&x, &mut got) };
            assert_eq!(got, want, "row {x:?}");
        }
    }

    #[test]
    fn sixteen_lane_int8_rows_are_the_portable_rows() {
        if !is_x86_feature_detected!("avx512f") {
            eprintln!("skipped: this CPU has no AVX-512 F");
            return;
        }
        assert_same_bytes(q8_row_avx512);
    }

    #[test]
    fn eight_lane_int8_rows_are_the_portable_rows() {
        if !is_x86_feature_detected!("avx2") {
            eprintln!("skipped: this CPU has no AVX2");
            return;
        }
        assert_same_bytes(q8_row_avx2);
    }
}
