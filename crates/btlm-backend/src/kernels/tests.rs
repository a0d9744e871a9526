//! Every kernel path against the scalar reference, and the reference against plain f32
//! arithmetic on the dequantized weights.

use rand::{Rng, SeedableRng};

use super::*;

fn random(n: usize, rng: &mut impl Rng, scale: f32) -> Vec<f32> {
    (0..n)
        .map(|_| (rng.r#gen::<f32>() * 2.0 - 1.0) * scale)
        .collect()
}

fn pack(format: WeightFormat, w: &[f32], n_out: usize, n_in: usize) -> PackedMatrix {
    PackedMatrix::pack(
        format,
        &Source {
            data: SourceData::F32(w),
            n_out,
            n_in,
            transposed: false,
        },
    )
    .expect("pack")
}

/// `Σ_k |W[o][k]| · |x[r][k]|`: the scale of rounding differences of one output.
fn magnitudes(p: &PackedMatrix, x: &[f32], rows: usize) -> Vec<f32> {
    let n_in = p.n_in();
    let wrows: Vec<Vec<f32>> = (0..p.n_out()).map(|o| p.dequantize_row(o)).collect();
    let mut m = vec![0f32; rows * p.n_out()];
    for r in 0..rows {
        for (o, wr) in wrows.iter().enumerate() {
            m[r * p.n_out() + o] = wr
                .iter()
                .zip(&x[r * n_in..(r + 1) * n_in])
                .map(|(a, b)| (a * b).abs())
                .sum();
        }
    }
    m
}

fn run(
    path: KernelPath,
    p: &PackedMatrix,
    x: &[f32],
    rows: usize,
    bias: Option<&[f32]>,
) -> Vec<f32> {
    let mut y = vec![f32::NAN; rows * p.n_out()];
    matmul(path, p, x, rows, bias, &mut y).expect("matmul");
    y
}

fn supported_paths() -> Vec<KernelPath> {
    let paths: Vec<KernelPath> = KernelPath::ALL
        .into_iter()
        .filter(|p| p.supported())
        .collect();
    eprintln!("kernel paths tested on this CPU: {paths:?}");
    paths
}

#[test]
fn every_path_matches_the_scalar_reference() {
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    let shapes = [(1, 1), (17, 33), (40, 300), (16, 512), (35, 6826)];
    let rows_list = [1, 2, 3, 5, 8, 9, 16, 17];
    let paths = supported_paths();
    for format in WeightFormat::ALL {
        for &(n_out, n_in) in &shapes {
            let w = random(n_out * n_in, &mut rng, 0.1);
            let p = pack(format, &w, n_out, n_in);
            let bias = random(n_out, &mut rng, 1.0);
            for &rows in &rows_list {
                if n_in > 1000 && rows > 3 && rows != 17 {
                    continue; // keep the scalar reference cheap on the long rows
                }
                let x = random(rows * n_in, &mut rng, 2.0);
                let reference = run(KernelPath::Scalar, &p, &x, rows, Some(&bias));
                let mags = magnitudes(&p, &x, rows);
                for &path in &paths {
                    let y = run(path, &p, &x, rows, Some(&bias));
                    for (i, ((a, b), m)) in y.iter().zip(&reference).zip(&mags).enumerate() {
                        assert!(
                            (a - b).abs() <= 2e-6 * m + 1e-5,
                            "{path} {format} {n_out}×{n_in} rows {rows} [{i}]: {a} vs {b} (Σ|wx| {m})"
                        );
                    }
                }
            }
        }
    }
}

/// The reference computes what the format means: dense formats exactly (bf16 with bf16
/// activations), quantized ones within the error of 8-bit activations.
#[test]
fn reference_computes_the_dequantized_product() {
    let mut rng = rand::rngs::StdRng::seed_from_u64(11);
    let (n_out, n_in, rows) = (20, 600, 3);
    let w = random(n_out * n_in, &mut rng, 0.1);
    let x = random(rows * n_in, &mut rng, 2.0);
    for format in WeightFormat::ALL {
        let p = pack(format, &w, n_out, n_in);
        let y = run(KernelPath::Scalar, &p, &x, rows, None);
        let mags = magnitudes(&p, &x, rows);
        for r in 0..rows {
            for o in 0..n_out {
                let wr = p.dequantize_row(o);
                let xr = &x[r * n_in..(r + 1) * n_in];
                let exact: f64 = match format {
                    WeightFormat::Bf16 => wr
                        .iter()
                        .zip(xr)
                        .map(|(a, b)| *a as f64 * acts::bf16_to_f32(acts::f32_to_bf16(*b)) as f64)
                        .sum(),
                    _ => wr.iter().zip(xr).map(|(a, b)| *a as f64 * *b as f64).sum(),
                };
                let got = y[r * n_out + o] as f64;
                let m = mags[r * n_out + o] as f64;
                // 8-bit activations: relative error up to 1/254 per value.
                let tol = if format.quantized() {
                    m / 254.0
                } else {
                    1e-5 * m + 1e-6
                };
                assert!(
                    (got - exact).abs() <= tol,
                    "{format} [{r}][{o}]: {got} vs {exact}"
                );
            }
        }
    }
}

#[test]
fn bias_is_optional_and_rows_zero_is_a_no_op() {
    let w = vec![1.0f32; 3 * 2];
    let p = pack(WeightFormat::F32, &w, 3, 2);
    let x = [1.0f32, 2.0];
    assert_eq!(run(KernelPath::Scalar, &p, &x, 1, None), vec![3.0; 3]);
    assert_eq!(
        run(KernelPath::Scalar, &p, &x, 1, Some(&[1.0, 2.0, 3.0])),
        vec![4.0, 5.0, 6.0]
    );
    let mut empty: Vec<f32> = Vec::new();
    matmul(KernelPath::Scalar, &p, &[], 0, None, &mut empty).expect("zero rows");
}

#[test]
fn wrong_shapes_are_errors() {
    let p = pack(WeightFormat::F32, &[0.0; 6], 3, 2);
    let mut y = vec![0.0; 3];
    let e = matmul(KernelPath::Scalar, &p, &[0.0; 3], 1, None, &mut y).expect_err("x");
    assert!(matches!(e, KernelError::Shape(_)), "{e}");
    let e = matmul(
        KernelPath::Scalar,
        &p,
        &[0.0; 2],
        1,
        Some(&[0.0; 2]),
        &mut y,
    )
    .expect_err("b");
    assert!(e.to_string().contains("bias"), "{e}");
    let mut short = vec![0.0; 2];
    assert!(matmul(KernelPath::Scalar, &p, &[0.0; 2], 1, None, &mut short).is_err());
}

#[test]
fn overrides_parse_and_unsupported_paths_are_refused() {
    assert_eq!(KernelPath::parse_override("scalar"), Ok(KernelPath::Scalar));
    assert_eq!(KernelPath::parse_override(""), Ok(KernelPath::detect()));
    assert_eq!(KernelPath::parse_override("auto"), Ok(KernelPath::detect()));
    assert!(matches!(
        KernelPath::parse_override("neon9000"),
        Err(KernelError::BadOverride(_))
    ));
    for path in KernelPath::ALL {
        match KernelPath::parse_override(&path.to_string()) {
            Ok(p) => assert!(p == path && path.supported()),
            Err(e) => {
                assert_eq!(e, KernelError::Unsupported(path));
                let p = pack(WeightFormat::F32, &[0.0; 1], 1, 1);
                let mut y = [0.0];
                assert_eq!(matmul(path, &p, &[0.0], 1, None, &mut y), Err(e));
            }
        }
    }
    assert!(KernelPath::detect().supported());
}

/// The largest integer sums the quantized kernels accumulate: every 4-bit weight 15 (or
/// every 8-bit weight ±127) against activations of ±127, where narrow (i16) partial sums
/// would saturate if they were summed too long.
#[test]
fn extreme_quantized_values_do_not_saturate() {
    let (n_out, n_in) = (32, 1024);
    let w: Vec<f32> = (0..n_out * n_in)
        .map(|i| if (i / n_in) % 2 == 0 { 1.0 } else { -1.0 })
        .collect();
    for format in [WeightFormat::Q4K, WeightFormat::Q8_0] {
        let p = pack(format, &w, n_out, n_in);
        for sign in [1.0f32, -1.0] {
            let rows = 5;
            let x = vec![sign; rows * n_in];
            let reference = run(KernelPath::Scalar, &p, &x, rows, None);
            for path in supported_paths() {
                let y = run(path, &p, &x, rows, None);
                for (i, (a, b)) in y.iter().zip(&reference).enumerate() {
                    assert!(
                        (a - b).abs() <= 1e-4 * b.abs() + 1e-3,
                        "{path} {format} sign {sign} [{i}]: {a} vs {b}"
                    );
                }
            }
            // And the reference is the plain product: ±n_in per output.
            for (i, b) in reference.iter().enumerate() {
                let expect = if (i % n_out) % 2 == 0 { sign } else { -sign } * n_in as f32;
                assert!(
                    (b - expect).abs() <= 0.02 * n_in as f32,
                    "{format} [{i}]: {b}"
                );
            }
        }
    }
}
