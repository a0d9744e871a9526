//! Elementwise math of the CPU path: the polynomial `exp` the attention's softmax uses and
//! SwiGLU's `up ⊙ silu(gate)`, each with a portable fallback.
//!
//! The AVX2 SwiGLU computes `silu(g) = g · σ(g)` from `t = e^−|g|` (an argument ≤ 0, the
//! range of [`avx2::exp`]): `σ(g) = 1 / (1 + t)` for `g ≥ 0`, `t / (1 + t)` below. It is
//! within a few ulp of the portable `g / (1 + e^−g)` (candle's formula), not bit for bit;
//! every element of a slice runs it, the last ones too (padded to a vector), so a value's
//! result does not depend on where it lies.

use crate::kernels::KernelPath;

/// The code elementwise functions run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ElementwisePath {
    /// Portable Rust (libm's `exp`).
    Scalar,
    /// AVX2 + FMA + F16C (x86-64).
    Avx2,
}

impl ElementwisePath {
    /// AVX2 on every SIMD kernel path of a CPU with AVX2, FMA and F16C; scalar when the
    /// kernels are forced to scalar (`BTLM_KERNELS=scalar`) or the CPU lacks them.
    pub(crate) fn for_kernels(path: KernelPath) -> Self {
        if path != KernelPath::Scalar && avx2_supported() {
            ElementwisePath::Avx2
        } else {
            ElementwisePath::Scalar
        }
    }
}

/// Whether this CPU has AVX2, FMA and F16C (every AVX2 CPU has F16C; the attention's f16
/// key/value rows need it).
pub(crate) fn avx2_supported() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        is_x86_feature_detected!("avx2")
            && is_x86_feature_detected!("fma")
            && is_x86_feature_detected!("f16c")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// `up ← up ⊙ silu(gate)` (slices of one length).
///
/// # Panics
/// If the lengths differ.
pub(crate) fn swiglu(path: ElementwisePath, up: &mut [f32], gate: &[f32]) {
    assert_eq!(up.len(), gate.len(), "SwiGLU halves");
    match path {
        #[cfg(target_arch = "x86_64")]
        ElementwisePath::Avx2 if avx2_supported() => {
            // SAFETY: AVX2 and FMA checked; the lengths are equal.
            unsafe { avx2::swiglu(up, gate) }
        }
        _ => swiglu_scalar(up, gate),
    }
}

/// [`swiglu`] in portable Rust: candle's `g / (1 + e^−g)`, then the product.
fn swiglu_scalar(up: &mut [f32], gate: &[f32]) {
    for (o, &g) in up.iter_mut().zip(gate) {
        *o *= g / (1.0 + (-g).exp());
    }
}

#[cfg(target_arch = "x86_64")]
pub(crate) mod avx2 {
    //! AVX2 + FMA versions; every function needs a CPU with both.

    use std::arch::x86_64::*;

    /// `exp(x)` for `x ≤ 0` (0 below −87.3, where f32 results would be subnormal); within
    /// a few ulp of the exact value: `x = n·ln 2 + r`, `|r| ≤ ln 2 / 2`, `eʳ` by its
    /// degree-6 Taylor polynomial, `2ⁿ` by the exponent bits.
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    pub(crate) fn exp(x: __m256) -> __m256 {
        let low = _mm256_cmp_ps(x, _mm256_set1_ps(-87.3), _CMP_GE_OQ);
        let x = _mm256_max_ps(x, _mm256_set1_ps(-87.3));
        let n = _mm256_round_ps(
            _mm256_mul_ps(x, _mm256_set1_ps(std::f32::consts::LOG2_E)),
            _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC,
        );
        // ln 2 in two parts: `n · LN2_HI` is exact for |n| < 2⁹.
        let r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693_145_75), x);
        let r = _mm256_fnmadd_ps(n, _mm256_set1_ps(1.428_606_8e-6), r);
        let mut p = _mm256_set1_ps(1.0 / 720.0);
        for c in [1.0 / 120.0, 1.0 / 24.0, 1.0 / 6.0, 0.5, 1.0, 1.0] {
            p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(c));
        }
        let pow2 = _mm256_castsi256_ps(_mm256_slli_epi32(
            _mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)),
            23,
        ));
        _mm256_and_ps(_mm256_mul_ps(p, pow2), low)
    }

    /// `silu(g)` for 8 lanes (see the module documentation).
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    fn silu(g: __m256) -> __m256 {
        let sign = _mm256_set1_ps(-0.0);
        let t = exp(_mm256_or_ps(g, sign));
        let one = _mm256_set1_ps(1.0);
        let positive = _mm256_cmp_ps(g, _mm256_setzero_ps(), _CMP_GE_OQ);
        let sigma = _mm256_div_ps(_mm256_blendv_ps(t, one, positive), _mm256_add_ps(one, t));
        _mm256_mul_ps(g, sigma)
    }

    /// See [`super::swiglu`].
    ///
    /// # Safety
    /// AVX2 + FMA; `gate` at least as long as `up`.
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn swiglu(up: &mut [f32], gate: &[f32]) {
        assert!(gate.len() >= up.len());
        let n8 = up.len() / 8 * 8;
        let (u, g) = (up.as_mut_ptr(), gate.as_ptr());
        // SAFETY: `i + 8 ≤ n8 ≤ up.len() ≤ gate.len()`.
        unsafe {
            for i in (0..n8).step_by(8) {
                let s = silu(_mm256_loadu_ps(g.add(i)));
                _mm256_storeu_ps(u.add(i), _mm256_mul_ps(_mm256_loadu_ps(u.add(i)), s));
            }
        }
        // The last values on the same arithmetic, padded to a vector: an element's bits
        // must not depend on where it lies (the model's chunks of a step's rows).
        let n = up.len();
        if n8 < n {
            let (mut u8s, mut g8s) = ([0f32; 8], [0f32; 8]);
            u8s[..n - n8].copy_from_slice(&up[n8..]);
            g8s[..n - n8].copy_from_slice(&gate[n8..n]);
            // SAFETY: 8 floats each.
            unsafe {
                let s = silu(_mm256_loadu_ps(g8s.as_ptr()));
                let y = _mm256_mul_ps(_mm256_loadu_ps(u8s.as_ptr()), s);
                _mm256_storeu_ps(u8s.as_mut_ptr(), y);
            }
            up[n8..].copy_from_slice(&u8s[..n - n8]);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[cfg(target_arch = "x86_64")]
    #[test]
    fn avx2_exp_is_within_a_few_ulp() {
        use std::arch::x86_64::*;
        if !avx2_supported() {
            return;
        }
        let mut worst = 0f64;
        let mut x = -90f32;
        while x <= 0.0 {
            let xs: [f32; 8] = std::array::from_fn(|l| x + l as f32 * 1e-4);
            let mut got = [0f32; 8];
            // SAFETY: AVX2 and FMA checked above.
            unsafe {
                _mm256_storeu_ps(got.as_mut_ptr(), avx2::exp(_mm256_loadu_ps(xs.as_ptr())));
            }
            for (&x, &g) in xs.iter().zip(&got) {
                let want = (x as f64).exp();
                if x < -87.3 {
                    assert!(
                        g == 0.0 || (g as f64 - want).abs() <= want * 1e-6,
                        "{x}: {g}"
                    );
                } else if x <= 0.0 {
                    worst = worst.max((g as f64 - want).abs() / want);
                }
            }
            x += 0.0137;
        }
        // f32's epsilon is 1.2e-7.
        assert!(worst < 5e-7, "relative error {worst}");
    }

    #[test]
    fn swiglu_paths_agree_with_the_exact_formula() {
        // Gates across silu's range (saturated both ways, around 0, ±∞ limits of exp), an
        // odd length (a scalar tail); `up` of both signs.
        let n = 8 * 1000 + 5;
        let gate: Vec<f32> = (0..n)
            .map(|i| match i % 97 {
                0 => 120.0,
                1 => -120.0,
                2 => 0.0,
                3 => -0.0,
                _ => (i as f32 * 0.731).sin() * 30.0 * ((i % 7) as f32 / 7.0),
            })
            .collect();
        let up: Vec<f32> = (0..n).map(|i| (i as f32 * 0.37).cos() * 4.0).collect();
        for path in [ElementwisePath::Scalar, ElementwisePath::Avx2] {
            let mut got = up.clone();
            swiglu(path, &mut got, &gate);
            for ((&u, &g), &y) in up.iter().zip(&gate).zip(&got) {
                let (u, g) = (u as f64, g as f64);
                let want = u * g / (1.0 + (-g).exp());
                // `exp` within 5·10⁻⁷, then three roundings; absolute near 0.
                let tol = 1e-6 * want.abs() + 1e-30;
                assert!(
                    (y as f64 - want).abs() <= tol,
                    "{path:?} u {u} g {g}: {y} vs {want}"
                );
            }
        }
        let mut scalar = up.clone();
        swiglu(ElementwisePath::Scalar, &mut scalar, &gate);
        let mut exact = up.clone();
        swiglu_scalar(&mut exact, &gate);
        assert_eq!(
            scalar, exact,
            "the scalar path is candle's formula bit for bit"
        );
    }

    /// An element's result does not depend on where it lies in the slice (the model runs
    /// SwiGLU over all of a step's rows in chunks, so a row's place there depends on the
    /// rows beside it): whole and in every run of 1 to 17 values, each path gives the same
    /// bits.
    #[test]
    fn swiglu_gives_each_element_the_same_bits_wherever_it_lies() {
        let n = 170;
        let gate: Vec<f32> = (0..n).map(|i| (i as f32 * 0.913).sin() * 9.0).collect();
        let up: Vec<f32> = (0..n).map(|i| (i as f32 * 0.37).cos() * 4.0).collect();
        for path in [ElementwisePath::Scalar, ElementwisePath::Avx2] {
            let mut whole = up.clone();
            swiglu(path, &mut whole, &gate);
            let whole: Vec<u32> = whole.iter().map(|v| v.to_bits()).collect();
            for run in 1..=17 {
                let mut parts = up.clone();
                for (u, g) in parts.chunks_mut(run).zip(gate.chunks(run)) {
                    swiglu(path, u, g);
                }
                let parts: Vec<u32> = parts.iter().map(|v| v.to_bits()).collect();
                assert!(parts == whole, "{path:?} in runs of {run}");
            }
        }
    }
}
