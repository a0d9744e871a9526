//! The rows the int8 and 4-bit caches store ([`q8_row`], [`q4_row`] on the vectors of an
//! attention path; [`q8_row_scalar`], [`q4_row_scalar`] portable): on 16 lanes (AVX-512 F)
//! or 8 (AVX2, int8 only) every value goes through the portable functions' operations —
//! its magnitude into the row's largest (a NaN ignored, as `f32::max` ignores it), `x · inv`
//! rounded by adding and subtracting [`ROUND`], a NaN stored as 0, clamped to the steps each
//! side — so a row gets the same bytes on every path. The portable functions' `max` folds
//! and `clamp` chains did not vectorize: the int8 rows took ~4 ns a value, a twelfth of a
//! 1 024-token prompt's time (docs/benchmarks.md, session 55).

use super::{AttnPath, nibble_bit};
use crate::kv_cache::KvLayout;

/// Adding and subtracting 1.5·2²³ rounds an f32 below 2²² in magnitude to the nearest
/// integer (ties to even) in plain SSE2 arithmetic, which vectorizes (`round` is a library
/// call without SSE4.1).
const ROUND: f32 = 12_582_912.0;

/// Steps each side of zero of an int8 row.
const Q8_LEVELS: f32 = 127.0;

/// Steps each side of zero of a 4-bit row.
const Q4_LEVELS: f32 = 7.0;

/// The scale of a row whose largest magnitude is `max`, in `levels` steps each side, and
/// the factor that turns its values into steps (0 for an all-zero row).
fn scale_and_inverse(max: f32, levels: f32) -> (f32, f32) {
    let s = max / levels;
    (s, if s > 0.0 { 1.0 / s } else { 0.0 })
}

/// `v` in steps of `1 / inv`, rounded to the nearest (ties to even), within ±`levels` (`|v ·
/// inv|` ≤ `levels`: within [`ROUND`]'s range); a NaN is 0 (`as` maps it there).
fn steps(v: f32, inv: f32, levels: f32) -> i8 {
    ((v * inv + ROUND) - ROUND).clamp(-levels, levels) as i8
}

/// Up to 16 values as the 4-bit steps of one 64-bit word of a row ([`super::Nibbles`]).
fn q4_word(group: &[f32], inv: f32) -> u64 {
    let mut bits = 0u64;
    for (j, v) in group.iter().enumerate() {
        bits |= u64::from(steps(*v, inv, Q4_LEVELS) as u8 & 0x0f) << nibble_bit(j);
    }
    bits
}

/// `x` as an int8 cache row (`x.len() + 4` bytes in `out`): each value `x / s` rounded to
/// the nearest integer (ties to even), in −127..=127 where `s = max |x| / 127`, then `s` as
/// 4 little-endian bytes (an all-zero row has scale 0; a NaN value is stored as 0).
///
/// # Panics
/// If `out` is shorter than `x.len() + 4` bytes.
pub(crate) fn q8_row_scalar(x: &[f32], out: &mut [u8]) {
    let max = x.iter().fold(0f32, |m, v| m.max(v.abs()));
    let (s, inv) = scale_and_inverse(max, Q8_LEVELS);
    let (values, tail) = out.split_at_mut(x.len());
    for (o, v) in values.iter_mut().zip(x) {
        *o = steps(*v, inv, Q8_LEVELS) as u8;
    }
    tail[..4].copy_from_slice(&s.to_le_bytes());
}

/// `x` as a 4-bit cache row ([`super::Nibbles`]: [`KvLayout::q4_bytes`] bytes of values,
/// then 4): each value `x / s` rounded to the nearest integer (ties to even), in −7..=7
/// where `s = max |x| / 7`, then `s` as 4 little-endian bytes (an all-zero row has scale 0;
/// a NaN value is stored as 0).
///
/// # Panics
/// If `out` is shorter than the row.
pub(crate) fn q4_row_scalar(x: &[f32], out: &mut [u8]) {
    let max = x.iter().fold(0f32, |m, v| m.max(v.abs()));
    let (s, inv) = scale_and_inverse(max, Q4_LEVELS);
    let (values, tail) = out.split_at_mut(KvLayout::q4_bytes(x.len()));
    for (group, word) in x.chunks(16).zip(values.chunks_exact_mut(8)) {
        word.copy_from_slice(&q4_word(group, inv).to_le_bytes());
    }
    tail[..4].copy_from_slice(&s.to_le_bytes());
}

/// [`q8_row_scalar`] on the vectors of `path` (the same bytes on every path).
///
/// # Panics
/// If `out` is shorter than `x.len() + 4` bytes.
pub(crate) fn q8_row(path: AttnPath, x: &[f32], out: &mut [u8]) {
    match path {
        #[cfg(target_arch = "x86_64")]
        AttnPath::Avx512 if super::avx512_supported() => {
            // SAFETY: this CPU has AVX-512 F (checked just above).
            unsafe { simd::q8_row_avx512(x, out) }
        }
        #[cfg(target_arch = "x86_64")]
        AttnPath::Avx2 | AttnPath::Avx512 if crate::elementwise::avx2_supported() => {
            // SAFETY: this CPU has AVX2 and FMA (checked just above).
            unsafe { simd::q8_row_avx2(x, out) }
        }
        _ => q8_row_scalar(x, out),
    }
}

/// [`q4_row_scalar`] on the vectors of `path` (16 lanes on AVX-512, else portable; the same
/// bytes on every path).
///
/// # Panics
/// If `out` is shorter than the row.
pub(crate) fn q4_row(path: AttnPath, x: &[f32], out: &mut [u8]) {
    match path {
        #[cfg(target_arch = "x86_64")]
        AttnPath::Avx512 if super::avx512_supported() => {
            // SAFETY: this CPU has AVX-512 F (checked just above).
            unsafe { simd::q4_row_avx512(x, out) }
        }
        _ => q4_row_scalar(x, out),
    }
}

#[cfg(target_arch = "x86_64")]
mod simd {
    //! The rows on 16 and 8 lanes; each function needs the features it names.

    use std::arch::x86_64::*;

    use super::super::avx2::max1;
    use super::{Q4_LEVELS, Q8_LEVELS, ROUND, q4_word, scale_and_inverse, steps};
    use crate::kv_cache::KvLayout;

    /// The largest magnitude of `x` (0 if none, NaN ignored), its first `whole` values (a
    /// multiple of 16) 16 at a time.
    ///
    /// # Safety
    /// AVX-512 F; `whole <= x.len()`.
    #[target_feature(enable = "avx512f")]
    unsafe fn max_magnitude(x: &[f32], whole: usize) -> f32 {
        let mut m = _mm512_setzero_ps();
        for c in (0..whole).step_by(16) {
            // SAFETY: values `c..c + 16 <= whole` of `x`.
            let v = unsafe { _mm512_loadu_ps(x.as_ptr().add(c)) };
            // A NaN in the first operand gives the second: `m` stays.
            m = _mm512_max_ps(_mm512_abs_ps(v), m);
        }
        x[whole..]
            .iter()
            .fold(_mm512_reduce_max_ps(m), |m, v| m.max(v.abs()))
    }

    /// Values `c..c + 16` of `x` in steps of `1 / inv` within ±`levels` ([`steps`] of each,
    /// as i32 lanes).
    ///
    /// # Safety
    /// AVX-512 F; `c + 16 <= x.len()`.
    #[inline]
    #[target_feature(enable = "avx512f")]
    unsafe fn steps16(x: &[f32], c: usize, inv: f32, levels: f32) -> __m512i {
        let round = _mm512_set1_ps(ROUND);
        // SAFETY: the caller's values.
        let v = unsafe { _mm512_loadu_ps(x.as_ptr().add(c)) };
        let q = _mm512_sub_ps(
            _mm512_add_ps(_mm512_mul_ps(v, _mm512_set1_ps(inv)), round),
            round,
        );
        let q = _mm512_maskz_mov_ps(_mm512_cmp_ps_mask::<_CMP_ORD_Q>(q, q), q);
        let (lo, hi) = (_mm512_set1_ps(-levels), _mm512_set1_ps(levels));
        _mm512_cvttps_epi32(_mm512_min_ps(_mm512_max_ps(q, lo), hi))
    }

    /// [`super::q8_row_scalar`] on 16 lanes.
    ///
    /// # Safety
    /// AVX-512 F.
    ///
    /// # Panics
    /// If `out` is shorter than `x.len() + 4` bytes.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn q8_row_avx512(x: &[f32], out: &mut [u8]) {
        let whole = q8_whole(x, out);
        // SAFETY (all below): values `c..c + 16 <= whole <= x.len()` of `x`, bytes `c..c + 16`
        // of `out` (checked by `q8_whole`).
        unsafe {
            let (s, inv) = scale_and_inverse(max_magnitude(x, whole), Q8_LEVELS);
            for c in (0..whole).step_by(16) {
                let q = _mm512_cvtepi32_epi8(steps16(x, c, inv, Q8_LEVELS));
                _mm_storeu_si128(out.as_mut_ptr().add(c).cast(), q);
            }
            q8_tail(x, out, whole, inv, s);
        }
    }

    /// [`super::q4_row_scalar`] on 16 lanes: a group of 16 values a vector, each lane's nibble
    /// shifted to its place in the group's 64-bit word (value `2m` at bit `4m` of the low
    /// half, `2m + 1` at bit `4m` of the high one) and the halves gathered with ORs.
    ///
    /// # Safety
    /// AVX-512 F.
    ///
    /// # Panics
    /// If `out` is shorter than the row.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn q4_row_avx512(x: &[f32], out: &mut [u8]) {
        let n = x.len();
        let bytes = KvLayout::q4_bytes(n);
        assert!(
            out.len() >= bytes + 4,
            "a 4-bit row of {n} values in {}",
            out.len()
        );
        let whole = n - n % 16;
        let shifts = _mm512_setr_epi32(0, 0, 4, 4, 8, 8, 12, 12, 16, 16, 20, 20, 24, 24, 28, 28);
        let nibble = _mm512_set1_epi32(0x0f);
        // SAFETY: values `c..c + 16 <= whole <= n` of `x`.
        unsafe {
            let (s, inv) = scale_and_inverse(max_magnitude(x, whole), Q4_LEVELS);
            for c in (0..whole).step_by(16) {
                let q = _mm512_and_si512(steps16(x, c, inv, Q4_LEVELS), nibble);
                let q = _mm512_sllv_epi32(q, shifts);
                let low = _mm512_mask_reduce_or_epi32(0x5555, q) as u32;
                let high = _mm512_mask_reduce_or_epi32(0xaaaa, q) as u32;
                let word = u64::from(low) | u64::from(high) << 32;
                out[c / 2..c / 2 + 8].copy_from_slice(&word.to_le_bytes());
            }
            if whole < n {
                let word = q4_word(&x[whole..], inv);
                out[whole / 2..whole / 2 + 8].copy_from_slice(&word.to_le_bytes());
            }
            out[bytes..bytes + 4].copy_from_slice(&s.to_le_bytes());
        }
    }

    /// [`super::q8_row_scalar`] on 8 lanes, 16 values a store.
    ///
    /// # Safety
    /// AVX2 and FMA.
    ///
    /// # Panics
    /// If `out` is shorter than `x.len() + 4` bytes.
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn q8_row_avx2(x: &[f32], out: &mut [u8]) {
        let whole = q8_whole(x, out);
        let (xp, op) = (x.as_ptr(), out.as_mut_ptr());
        // SAFETY (all below): values `c..c + 8 <= whole <= x.len()` of `x`, bytes `c..c + 16`
        // of `out` (checked by `q8_whole`).
        unsafe {
            let magnitude = _mm256_castsi256_ps(_mm256_set1_epi32(0x7fff_ffff));
            let mut m = _mm256_setzero_ps();
            for c in (0..whole).step_by(8) {
                let v = _mm256_and_ps(_mm256_loadu_ps(xp.add(c)), magnitude);
                m = _mm256_max_ps(v, m);
            }
            let max = x[whole..].iter().fold(max1(m), |m, v| m.max(v.abs()));
            let (s, inv) = scale_and_inverse(max, Q8_LEVELS);
            let (inv8, round) = (_mm256_set1_ps(inv), _mm256_set1_ps(ROUND));
            let (lo, hi) = (_mm256_set1_ps(-Q8_LEVELS), _mm256_set1_ps(Q8_LEVELS));
            let steps8 = |c: usize| {
                let v = _mm256_loadu_ps(xp.add(c));
                let q = _mm256_sub_ps(_mm256_add_ps(_mm256_mul_ps(v, inv8), round), round);
                let q = _mm256_and_ps(q, _mm256_cmp_ps::<_CMP_ORD_Q>(q, q));
                _mm256_cvttps_epi32(_mm256_min_ps(_mm256_max_ps(q, lo), hi))
            };
            for c in (0..whole).step_by(16) {
                // i16 lanes [a0–3, b0–3 | a4–7, b4–7], the middle quarters swapped, then
                // bytes.
                let w = _mm256_packs_epi32(steps8(c), steps8(c + 8));
                let w = _mm256_permute4x64_epi64::<0b11_01_10_00>(w);
                let b =
                    _mm_packs_epi16(_mm256_castsi256_si128(w), _mm256_extracti128_si256::<1>(w));
                _mm_storeu_si128(op.add(c).cast(), b);
            }
            q8_tail(x, out, whole, inv, s);
        }
    }

    /// How many of `x`'s values an int8 row of them takes in whole vectors of 16 (the
    /// rest go one by one, [`q8_tail`]).
    ///
    /// # Panics
    /// If `out` is shorter than `x.len() + 4` bytes.
    fn q8_whole(x: &[f32], out: &[u8]) -> usize {
        let n = x.len();
        assert!(
            out.len() >= n + 4,
            "an int8 row of {n} values in {}",
            out.len()
        );
        n - n % 16
    }

    /// An int8 row's values from `whole` on, one by one, then its scale `s`.
    fn q8_tail(x: &[f32], out: &mut [u8], whole: usize, inv: f32, s: f32) {
        let n = x.len();
        for (o, v) in out[whole..n].iter_mut().zip(&x[whole..]) {
            *o = steps(*v, inv, Q8_LEVELS) as u8;
        }
        out[n..n + 4].copy_from_slice(&s.to_le_bytes());
    }

    #[cfg(test)]
    mod tests {
        use rand::{Rng, SeedableRng};

        use super::super::{q4_row_scalar, q8_row_scalar};
        use super::*;

        /// Rows of every length class (under a vector, whole vectors, a tail) and
        /// magnitude, with the values the rounding and the NaN rule must treat alike: ties,
        /// NaN, ±∞, −0.
        fn rows(levels: f32) -> Vec<Vec<f32>> {
            let mut rng = rand::rngs::StdRng::seed_from_u64(55);
            let mut rows = Vec::new();
            for n in [1, 7, 8, 15, 16, 17, 31, 32, 33, 80, 81, 160, 203] {
                for amp in [1e-3f32, 0.7, 3.0, 900.0] {
                    let mut x: Vec<f32> = (0..n).map(|_| rng.gen_range(-amp..amp)).collect();
                    rows.push(x.clone());
                    // Largest magnitude `levels`, so the steps are the values: halves are
                    // ties.
                    x[0] = levels;
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

        /// Every row of [`rows`] through `simd` gives `portable`'s bytes (`bytes(n)` of a
        /// row of `n` values).
        fn assert_same_bytes(
            levels: f32,
            bytes: fn(usize) -> usize,
            portable: fn(&[f32], &mut [u8]),
            simd: unsafe fn(&[f32], &mut [u8]),
        ) {
            for x in rows(levels) {
                let mut want = vec![0u8; bytes(x.len())];
                portable(&x, &mut want);
                let mut got = vec![0xaau8; bytes(x.len())];
                // SAFETY: the callers check the CPU's features.
                unsafe { simd(&x, &mut got) };
                assert_eq!(got, want, "row {x:?}");
            }
        }

        fn q8_bytes(n: usize) -> usize {
            n + 4
        }

        fn q4_bytes(n: usize) -> usize {
            KvLayout::q4_bytes(n) + 4
        }

        #[test]
        fn sixteen_lane_cache_rows_are_the_portable_rows() {
            if !is_x86_feature_detected!("avx512f") {
                eprintln!("skipped: this CPU has no AVX-512 F");
                return;
            }
            assert_same_bytes(Q8_LEVELS, q8_bytes, q8_row_scalar, q8_row_avx512);
            assert_same_bytes(Q4_LEVELS, q4_bytes, q4_row_scalar, q4_row_avx512);
        }

        #[test]
        fn eight_lane_int8_rows_are_the_portable_rows() {
            if !crate::elementwise::avx2_supported() {
                eprintln!("skipped: this CPU has no AVX2 and FMA");
                return;
            }
            assert_same_bytes(Q8_LEVELS, q8_bytes, q8_row_scalar, q8_row_avx2);
        }
    }
}
