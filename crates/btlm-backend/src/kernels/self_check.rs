//! A numerical check of a kernel path on this CPU, run once before detection chooses a
//! path that our tests have not run on real hardware (AMX, see [`super::KernelPath::Amx`]).
//!
//! The check multiplies small random matrices of every format the path serves, on odd
//! shapes (a padded tail, an odd last tile) with one row (the tile kernels) and with enough
//! rows for the many-rows kernels, through [`super::matmul`] itself (dispatch and rayon
//! split included), and compares the result with the exact product of the dequantized
//! weights. A kernel bug (a wrong layout, stride or tile configuration) makes outputs
//! unrelated to the exact ones — an error of the order of the outputs themselves, even in
//! a single column — while the path's own rounding (bf16 activations on AMX, 8-bit
//! activations on the tile kernels) stays near 1% of them; the limit sits between the
//! two. It takes a few tens of milliseconds.

use rand::{Rng, SeedableRng};

use super::{KernelError, KernelPath, MANY_ROWS, PackedMatrix, Source, WeightFormat};

/// Largest accepted error of one output, relative to the root mean square of its row's
/// exact outputs. Rounding stays below 0.02 on the check's random data (measured on every
/// path here, see the tests); one wrong output is off by about its own size, ~1.
pub const RELATIVE_ERROR_LIMIT: f64 = 0.1;

/// Weight formats the check multiplies.
const FORMATS: [WeightFormat; 4] = [
    WeightFormat::Bf16,
    WeightFormat::Q8_0,
    WeightFormat::Q4K,
    WeightFormat::F32,
];

/// `(n_out, n_in)`: an odd last tile and a padded input tail, and BTLM's `n_inner` (not a
/// multiple of the q4k super-block).
const SHAPES: [(usize, usize); 2] = [(48, 300), (35, 6826)];

/// Why a path failed its check.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum SelfCheckError {
    /// The path computed a product too far from the exact one.
    #[error(
        "{path} kernels, {format} {n_out}×{n_in} with {rows} rows: relative error {error:.2e} \
         (limit {RELATIVE_ERROR_LIMIT:.0e})"
    )]
    Mismatch {
        /// The path checked.
        path: KernelPath,
        /// Weight format of the failing product.
        format: WeightFormat,
        /// Outputs of the matrix.
        n_out: usize,
        /// Inputs of the matrix.
        n_in: usize,
        /// Activation rows.
        rows: usize,
        /// The worst output's error relative to its row's RMS (NaN when an output was).
        error: f64,
    },
    /// The kernels refused the product.
    #[error("{path} kernels: {source}")]
    Kernel {
        /// The path checked.
        path: KernelPath,
        /// The kernels' error.
        source: KernelError,
    },
}

/// Checks `path`'s products against the exact ones (see the module documentation).
pub fn self_check(path: KernelPath) -> Result<(), SelfCheckError> {
    check_products(path, |w, x, rows, y| {
        super::matmul(path, w, x, rows, None, y)
    })
}

/// [`self_check`] with the product under test given as `product(w, x, rows, y)`.
fn check_products(
    path: KernelPath,
    mut product: impl FnMut(&PackedMatrix, &[f32], usize, &mut [f32]) -> Result<(), KernelError>,
) -> Result<(), SelfCheckError> {
    let kernel = |source| SelfCheckError::Kernel { path, source };
    let many = super::many_rows_threshold().unwrap_or(MANY_ROWS);
    let mut rng = rand::rngs::StdRng::seed_from_u64(0x5e1f_c4ec);
    for format in FORMATS {
        for (n_out, n_in) in SHAPES {
            let w: Vec<f32> = (0..n_out * n_in)
                .map(|_| rng.gen_range(-0.1..0.1))
                .collect();
            let packed =
                PackedMatrix::pack(format, &Source::f32(&w, n_out, n_in)).map_err(kernel)?;
            let weights: Vec<Vec<f32>> = (0..n_out).map(|o| packed.dequantize_row(o)).collect();
            for rows in [1, many + 1] {
                let x: Vec<f32> = (0..rows * n_in).map(|_| rng.gen_range(-2.0..2.0)).collect();
                let mut y = vec![f32::NAN; rows * n_out];
                product(&packed, &x, rows, &mut y).map_err(kernel)?;
                let error = relative_error(&weights, &x, &y);
                if error.is_nan() || error > RELATIVE_ERROR_LIMIT {
                    return Err(SelfCheckError::Mismatch {
                        path,
                        format,
                        n_out,
                        n_in,
                        rows,
                        error,
                    });
                }
            }
        }
    }
    Ok(())
}

/// The largest `|y − x·Wᵀ|` of an output divided by the root mean square of its row of
/// `x·Wᵀ` (computed in f64, `W` given by its dequantized rows); NaN if an output is NaN.
fn relative_error(weights: &[Vec<f32>], x: &[f32], y: &[f32]) -> f64 {
    let n_in = weights.first().map_or(0, Vec::len);
    let mut worst = 0f64;
    for (xr, yr) in x.chunks_exact(n_in).zip(y.chunks_exact(weights.len())) {
        let exact: Vec<f64> = weights
            .iter()
            .map(|wr| wr.iter().zip(xr).map(|(&a, &b)| a as f64 * b as f64).sum())
            .collect();
        let rms = (exact.iter().map(|e| e * e).sum::<f64>() / exact.len() as f64).sqrt();
        for (&got, e) in yr.iter().zip(&exact) {
            let error = (got as f64 - e).abs() / rms.max(f64::MIN_POSITIVE);
            if error.is_nan() {
                return f64::NAN;
            }
            worst = worst.max(error);
        }
    }
    worst
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_supported_path_passes() {
        for path in KernelPath::ALL.into_iter().filter(|p| p.supported()) {
            let mut worst = 0f64;
            let verdict = check_products(path, |w, x, rows, y| {
                super::super::matmul(path, w, x, rows, None, y)?;
                let weights: Vec<Vec<f32>> = (0..w.n_out()).map(|o| w.dequantize_row(o)).collect();
                worst = worst.max(relative_error(&weights, x, y));
                Ok(())
            });
            eprintln!("{path}: worst relative error {worst:.2e}");
            assert_eq!(verdict, Ok(()), "{path}");
            assert!(worst < RELATIVE_ERROR_LIMIT / 2.0, "{path}: {worst}");
        }
    }

    /// The check is able to fail: a product with two of its outputs swapped (a local
    /// layout bug) and one returning NaN are both caught, naming the format.
    #[test]
    fn a_wrong_product_fails_the_check() {
        let path = KernelPath::Scalar;
        let swapped = check_products(path, |w, x, rows, y| {
            super::super::matmul(path, w, x, rows, None, y)?;
            y.swap(0, 1);
            Ok(())
        });
        match swapped {
            Err(SelfCheckError::Mismatch {
                format,
                rows,
                error,
                ..
            }) => {
                assert_eq!((format, rows), (FORMATS[0], 1));
                assert!(error > 3.0 * RELATIVE_ERROR_LIMIT, "{error}");
            }
            other => panic!("expected a mismatch, got {other:?}"),
        }
        let nan = check_products(path, |_, _, _, y| {
            y.fill(f32::NAN);
            Ok(())
        });
        assert!(
            matches!(nan, Err(SelfCheckError::Mismatch { error, .. }) if error.is_nan()),
            "{nan:?}"
        );
    }

    #[test]
    fn a_refused_product_is_an_error() {
        let refused = check_products(KernelPath::Amx, |_, _, _, _| {
            Err(KernelError::Unsupported(KernelPath::Amx))
        });
        assert_eq!(
            refused,
            Err(SelfCheckError::Kernel {
                path: KernelPath::Amx,
                source: KernelError::Unsupported(KernelPath::Amx)
            })
        );
    }
}
