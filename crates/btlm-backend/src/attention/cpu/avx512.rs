//! AVX-512 kernels of [`super::Head`]: the same blocks, tiles and prefetching as the AVX2
//! ones ([`super::avx2`]) on 16-lane vectors, so a row of BTLM's 80 values is 5 multiplies
//! instead of 10. Every function needs a CPU with AVX-512 F, AVX2, FMA and F16C, and a head
//! size that is a multiple of 16. The keys left over after the last whole vector of keys
//! run one by one on 16 lanes too (a key's score is the same bits in every kernel); the
//! softmax is AVX2's.

// Indexed loops over register arrays read like the arithmetic they do.
#![allow(clippy::needless_range_loop)]

use std::arch::x86_64::*;

use super::avx2::{Ahead, KEYS_AHEAD, hint, prefetch_rows};
use super::{Head, KvElem};
use crate::kernels::prefetch::PrefetchLevel;

/// Which input of [`sum16`]'s tree goes where: the tree leaves lane `4m + t` holding the
/// sum of its input `m + 4t`, so input `k` is `a[4·(k mod 4) + k / 4]` and every sum lands
/// in its own lane.
const ORDER: [usize; 16] = {
    let mut o = [0; 16];
    let mut k = 0;
    while k < 16 {
        o[k] = 4 * (k % 4) + k / 4;
        k += 1;
    }
    o
};

/// Horizontal sums of 16 vectors: lane `l` of the result is the sum of `a[l]`'s lanes. A
/// tree of 30 shuffles and 15 adds: 128-bit quarters of pairs, then of pairs of pairs, then
/// floats within the quarters.
#[inline]
#[target_feature(enable = "avx512f")]
fn sum16(a: [__m512; 16]) -> __m512 {
    let e: [__m512; 16] = std::array::from_fn(|k| a[ORDER[k]]);
    // Quarters 0, 1 of `b[i]`: partial sums of `e[2i]`; 2, 3: of `e[2i + 1]`.
    let b: [__m512; 8] = std::array::from_fn(|i| {
        let (x, y) = (e[2 * i], e[2 * i + 1]);
        _mm512_add_ps(
            _mm512_shuffle_f32x4::<0x44>(x, y),
            _mm512_shuffle_f32x4::<0xEE>(x, y),
        )
    });
    // Quarter `m` of `c[i]`: four partial sums of `e[4i + m]`.
    let c: [__m512; 4] = std::array::from_fn(|i| {
        let (x, y) = (b[2 * i], b[2 * i + 1]);
        _mm512_add_ps(
            _mm512_shuffle_f32x4::<0x88>(x, y),
            _mm512_shuffle_f32x4::<0xDD>(x, y),
        )
    });
    // Quarter `m` of `h[i]`: two partial sums of `e[8i + m]`, then two of `e[8i + 4 + m]`.
    let h: [__m512; 2] = std::array::from_fn(|i| {
        let (x, y) = (c[2 * i], c[2 * i + 1]);
        _mm512_add_ps(
            _mm512_shuffle_ps::<0x44>(x, y),
            _mm512_shuffle_ps::<0xEE>(x, y),
        )
    });
    // Quarter `m`: the sums of `e[m]`, `e[4 + m]`, `e[8 + m]`, `e[12 + m]`.
    _mm512_add_ps(
        _mm512_shuffle_ps::<0x88>(h[0], h[1]),
        _mm512_shuffle_ps::<0xDD>(h[0], h[1]),
    )
}

dot_kernels!("avx512f,avx2,fma,f16c", sum16);

/// The upper 8 lanes of `v`.
#[inline]
#[target_feature(enable = "avx512f")]
fn upper8(v: __m512) -> __m256 {
    _mm256_castpd_ps(_mm512_extractf64x4_pd::<1>(_mm512_castps_pd(v)))
}

/// Stores a [`dots_pair`] result: lanes 0–7 (the first query's) at `r0`, 8–15 at `r1`.
#[inline]
#[target_feature(enable = "avx512f,avx2,fma,f16c")]
unsafe fn store_pair(r0: *mut f32, r1: *mut f32, v: V) {
    // SAFETY: the caller's 8 floats at each.
    unsafe {
        _mm256_storeu_ps(r0, _mm512_castps512_ps256(v));
        _mm256_storeu_ps(r1, upper8(v));
    }
}

/// Stores a [`dots_quad`] result: lanes `4n..4n + 4` (query `n`'s) at `r[n]`.
#[inline]
#[target_feature(enable = "avx512f,avx2,fma,f16c")]
unsafe fn store_quad(r: [*mut f32; 4], v: V) {
    // SAFETY: the caller's 4 floats at each.
    unsafe {
        _mm_storeu_ps(r[0], _mm512_extractf32x4_ps::<0>(v));
        _mm_storeu_ps(r[1], _mm512_extractf32x4_ps::<1>(v));
        _mm_storeu_ps(r[2], _mm512_extractf32x4_ps::<2>(v));
        _mm_storeu_ps(r[3], _mm512_extractf32x4_ps::<3>(v));
    }
}

/// `q · k` for one pair of rows, bit for bit as `dots_single`, `dots_pair` and `dots_quad`
/// give it: the same 16 partial sums, reduced in [`sum16`]'s order (`(w₀ + w₂) + (w₁ + w₃)`
/// where `wₑ = (aₑ + aₑ₊₈) + (aₑ₊₄ + aₑ₊₁₂)`).
#[inline]
#[target_feature(enable = "avx512f,avx2,fma,f16c")]
unsafe fn dot1<T: KvElem>(q: *const f32, k: *const T, d: usize) -> f32 {
    let mut a = _mm512_setzero_ps();
    // SAFETY: the caller's rows of `d` values.
    unsafe {
        for c in (0..d).step_by(16) {
            a = _mm512_fmadd_ps(_mm512_loadu_ps(q.add(c)), T::load16(k, c), a);
        }
    }
    let h = _mm256_add_ps(_mm512_castps512_ps256(a), upper8(a));
    let w = _mm_add_ps(_mm256_castps256_ps128(h), _mm256_extractf128_ps::<1>(h));
    let w = _mm_add_ps(w, _mm_movehl_ps(w, w));
    _mm_cvtss_f32(_mm_add_ss(w, _mm_movehdup_ps(w)))
}

/// A single query's scores of keys `j..end` (fewer than 16) into `r`, one by one.
#[inline]
#[target_feature(enable = "avx512f,avx2,fma,f16c")]
unsafe fn single_tail<T: KvElem>(
    x: *const f32,
    kp: *const T,
    ks: usize,
    d: usize,
    r: *mut f32,
    j: usize,
    end: usize,
) {
    // SAFETY: the caller's rows.
    unsafe {
        for j in j..end {
            *r.add(j) = dot1(x, kp.add(j * ks), d);
        }
    }
}

const LANES: usize = 16;
type V = __m512;

#[inline]
#[target_feature(enable = "avx512f,avx2,fma,f16c")]
fn zero() -> V {
    _mm512_setzero_ps()
}

#[inline]
#[target_feature(enable = "avx512f,avx2,fma,f16c")]
unsafe fn load(p: *const f32) -> V {
    // SAFETY: the caller's 16 floats.
    unsafe { _mm512_loadu_ps(p) }
}

#[inline]
#[target_feature(enable = "avx512f,avx2,fma,f16c")]
unsafe fn store(p: *mut f32, v: V) {
    // SAFETY: the caller's 16 floats.
    unsafe { _mm512_storeu_ps(p, v) }
}

#[inline]
#[target_feature(enable = "avx512f,avx2,fma,f16c")]
unsafe fn splat(p: *const f32) -> V {
    // SAFETY: the caller's float.
    _mm512_set1_ps(unsafe { *p })
}

#[inline]
#[target_feature(enable = "avx512f,avx2,fma,f16c")]
fn fma(a: V, b: V, c: V) -> V {
    _mm512_fmadd_ps(a, b, c)
}

#[inline]
#[target_feature(enable = "avx512f,avx2,fma,f16c")]
unsafe fn load_kv<T: KvElem>(row: *const T, c: usize) -> V {
    // SAFETY: the caller's 16 values.
    unsafe { T::load16(row, c) }
}

// 4 queries at a time in blocks (25 of the 32 registers).
weighted_kernels!("avx512f,avx2,fma,f16c", 4);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sum16_puts_each_vectors_sum_in_its_own_lane() {
        if !crate::attention::cpu::avx512_supported() {
            return;
        }
        let a: [__m512; 16] = std::array::from_fn(|k| {
            let lanes: [f32; 16] = std::array::from_fn(|l| (k * 100 + l * l) as f32);
            // SAFETY: 16 floats.
            unsafe { _mm512_loadu_ps(lanes.as_ptr()) }
        });
        let mut got = [0f32; 16];
        // SAFETY: AVX-512 F checked above; 16 floats written.
        unsafe { _mm512_storeu_ps(got.as_mut_ptr(), sum16(a)) };
        let want: [f32; 16] =
            std::array::from_fn(|k| (k * 1600 + (0..16).map(|l| l * l).sum::<usize>()) as f32);
        assert_eq!(got, want);
    }
}
