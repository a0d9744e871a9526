//! AVX-512 kernels of [`super::Head`]: the same blocks, tiles and prefetching as the AVX2
//! ones ([`super::avx2`]) on 16-lane vectors, so a row of BTLM's 80 values is 5 multiplies
//! instead of 10. Every function needs a CPU with AVX-512 F, AVX2, FMA and F16C, and a head
//! size that is a multiple of 16. The keys left over after the last whole vector of keys
//! run on the AVX2 kernels; the softmax is AVX2's.

// Indexed loops over register arrays read like the arithmetic they do.
#![allow(clippy::needless_range_loop)]

use std::arch::x86_64::*;

use super::avx2::{self, Ahead, KEYS_AHEAD, hint};
use super::{Head, HeadRows, KvElem};
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

/// See [`Head::dots`].
///
/// # Safety
/// AVX-512 F, AVX2, FMA and F16C; `d` a multiple of 16; the rows of `head` checked by
/// [`Head::attend`]; `scores` holds `qb` rows of `stride ≥ k0 + kt` values.
#[target_feature(enable = "avx512f,avx2,fma,f16c")]
pub(super) unsafe fn dots<T: KvElem>(
    head: &Head<'_, T>,
    q0: usize,
    qb: usize,
    k0: usize,
    kt: usize,
    scores: &mut [f32],
    stride: usize,
) {
    let d = head.keys.d;
    let ks = head.keys.stride;
    let kp = head.keys.data.as_ptr();
    let qp = |i: usize| head.queries[(q0 + i) * head.q_stride..][..d].as_ptr();
    assert!(scores.len() >= qb * stride && stride >= k0 + kt);
    let sp = scores.as_mut_ptr();
    let end = k0 + kt;
    // Prefetching as in the AVX2 kernel (see there): a block of queries asks for the
    // tile's values at once, a single query spreads its prefetches between the products.
    let single = qb == 1;
    if !single {
        avx2::prefetch_rows(&head.values, k0, end);
    }
    let keys_end = head.offset + head.t;
    let mut i = 0;
    // SAFETY (all below): the key rows `k0..end` and the query rows exist (`attend`),
    // score indices stay below `qb * stride` (asserted above); the AVX2 kernels need a
    // subset of this function's features and `d` a multiple of 8.
    unsafe {
        while i + 2 <= qb {
            let (x0, x1) = (qp(i), qp(i + 1));
            let (r0, r1) = (sp.add(i * stride), sp.add((i + 1) * stride));
            let mut j = k0;
            while j + 8 <= end {
                let v = dots_pair(x0, x1, kp.add(j * ks), ks, d);
                _mm256_storeu_ps(r0.add(j), _mm512_castps512_ps256(v));
                _mm256_storeu_ps(r1.add(j), upper8(v));
                j += 8;
            }
            for j in j..end {
                *r0.add(j) = avx2::dot1(x0, kp.add(j * ks), d);
                *r1.add(j) = avx2::dot1(x1, kp.add(j * ks), d);
            }
            i += 2;
        }
        if i < qb {
            let x = qp(i);
            let r = sp.add(i * stride);
            let mut j = k0;
            // Bytes of 16 rows of keys or values, a share per 16 values of a row.
            let size = std::mem::size_of::<T>();
            let rows16 = 16 * ks.max(head.values.stride) * size;
            let step = rows16.div_ceil(d / 16).next_multiple_of(64);
            let to_l2 = PrefetchLevel::active() == PrefetchLevel::L2;
            let at = |rows: &HeadRows<'_, T>, j: usize| {
                rows.data
                    .as_ptr()
                    .cast::<u8>()
                    .wrapping_add(j * rows.stride * size)
            };
            while j + 16 <= end {
                let next = j + KEYS_AHEAD;
                // Past the last key, the values alone (twice: a hint costs little).
                let ahead = single.then(|| Ahead {
                    keys: if next + 16 <= keys_end {
                        at(&head.keys, next)
                    } else {
                        at(&head.values, j)
                    },
                    values: at(&head.values, j),
                    step,
                    to_l2,
                });
                _mm512_storeu_ps(r.add(j), dots_single(x, kp.add(j * ks), ks, d, ahead));
                j += 16;
            }
            if j + 8 <= end {
                _mm256_storeu_ps(r.add(j), avx2::dots_single(x, kp.add(j * ks), ks, d, None));
                j += 8;
            }
            for j in j..end {
                *r.add(j) = avx2::dot1(x, kp.add(j * ks), d);
            }
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
unsafe fn load_kv<T: KvElem>(p: *const T) -> V {
    // SAFETY: the caller's 16 values.
    unsafe { T::load16(p) }
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
