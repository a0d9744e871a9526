//! Every kernel path against the scalar reference, and the reference against plain f32
//! arithmetic on the dequantized weights.

use rand::{Rng, SeedableRng};

use super::*;

/// `n` values uniform in ±`scale`.
pub(super) fn random(n: usize, rng: &mut impl Rng, scale: f32) -> Vec<f32> {
    (0..n)
        .map(|_| (rng.r#gen::<f32>() * 2.0 - 1.0) * scale)
        .collect()
}

/// `w` (`n_out × n_in`) packed in `format`.
pub(super) fn pack(format: WeightFormat, w: &[f32], n_out: usize, n_in: usize) -> PackedMatrix {
    PackedMatrix::pack(format, &Source::f32(w, n_out, n_in)).expect("pack")
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
                    // AMX rounds weights and activations to bf16 (up to 2^-8 per product).
                    let rel = if path == KernelPath::Amx && path.many_rows(format, rows) {
                        1.0 / 100.0
                    } else {
                        2e-6
                    };
                    for (i, ((a, b), m)) in y.iter().zip(&reference).zip(&mags).enumerate() {
                        assert!(
                            (a - b).abs() <= rel * m + 1e-5,
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

/// The many-rows kernels (prefill) compute the product of the dequantized weights with the
/// f32 activations (bf16-rounded for bf16 weights) up to f32 summation, on odd shapes: rows
/// not a multiple of the micro-kernel's 6, outputs not a multiple of 16, inputs not a
/// multiple of the 256-input blocks (n_inner 6826: the q4k tail).
#[cfg(target_arch = "x86_64")]
#[test]
fn many_rows_kernels_compute_the_dequantized_product() {
    if !many::supported() {
        eprintln!("many-rows kernels not supported on this CPU: skipped");
        return;
    }
    let mut rng = rand::rngs::StdRng::seed_from_u64(13);
    let cases = [
        (1, 1, 16),
        (17, 33, 16),
        (40, 300, 23),
        (16, 512, 6),
        (35, 6826, 19),
        (33, 257, 37),
    ];
    for format in WeightFormat::ALL {
        for &(n_out, n_in, rows) in &cases {
            let w = random(n_out * n_in, &mut rng, 0.1);
            let p = pack(format, &w, n_out, n_in);
            let bias = random(n_out, &mut rng, 1.0);
            let x = random(rows * n_in, &mut rng, 2.0);
            let mut y = vec![f32::NAN; rows * n_out];
            // SAFETY: supported (checked above); shapes as `matmul` checks them.
            unsafe { many::matmul(&p, &x, rows, Some(&bias), &mut y) };
            let mags = magnitudes(&p, &x, rows);
            let wrows: Vec<Vec<f32>> = (0..n_out).map(|o| p.dequantize_row(o)).collect();
            for r in 0..rows {
                let xr = &x[r * n_in..(r + 1) * n_in];
                for (o, wr) in wrows.iter().enumerate() {
                    let exact: f64 = wr
                        .iter()
                        .zip(xr)
                        .map(|(a, &b)| {
                            let b = if format == WeightFormat::Bf16 {
                                acts::bf16_to_f32(acts::f32_to_bf16(b))
                            } else {
                                b
                            };
                            *a as f64 * b as f64
                        })
                        .sum::<f64>()
                        + bias[o] as f64;
                    let got = y[r * n_out + o] as f64;
                    let m = mags[r * n_out + o] as f64;
                    assert!(
                        (got - exact).abs() <= 2e-6 * m + 1e-5,
                        "{format} {n_out}×{n_in} rows {rows} [{r}][{o}]: {got} vs {exact}"
                    );
                }
            }
        }
    }
}

/// `matmul` takes the many-rows kernels from the threshold on, and both sides agree.
#[test]
fn many_rows_dispatch_agrees_with_the_tile_kernels_on_dense_formats() {
    let mut rng = rand::rngs::StdRng::seed_from_u64(17);
    let (n_out, n_in) = (24, 130);
    let rows = MANY_ROWS + 3;
    // AMX rounds f16 weights to bf16: covered by `amx_tiles_compute_the_bf16_product`.
    for path in supported_paths()
        .into_iter()
        .filter(|&p| p != KernelPath::Amx)
    {
        for format in [WeightFormat::F32, WeightFormat::F16, WeightFormat::Bf16] {
            let w = random(n_out * n_in, &mut rng, 0.1);
            let p = pack(format, &w, n_out, n_in);
            let x = random(rows * n_in, &mut rng, 2.0);
            let all = run(path, &p, &x, rows, None);
            let mags = magnitudes(&p, &x, rows);
            // One row at a time never takes the many-rows kernels.
            for r in 0..rows {
                let one = run(path, &p, &x[r * n_in..(r + 1) * n_in], 1, None);
                for o in 0..n_out {
                    let (a, b) = (all[r * n_out + o], one[o]);
                    let m = mags[r * n_out + o];
                    assert!(
                        (a - b).abs() <= 2e-6 * m + 1e-6,
                        "{path} {format} [{r}][{o}]: {a} vs {b}"
                    );
                }
            }
        }
    }
}

/// AMX: the product of bf16-rounded weights and activations, summed in f32, on the odd
/// shapes (16-row blocks padded, 32-input steps padded, an odd last tile pairing itself).
#[cfg(target_arch = "x86_64")]
#[test]
fn amx_tiles_compute_the_bf16_product() {
    if !amx::supported() {
        eprintln!("AMX not available on this CPU (or refused by the OS): skipped");
        return;
    }
    let mut rng = rand::rngs::StdRng::seed_from_u64(19);
    let cases = [
        (1, 1, 1),
        (17, 33, 16),
        (40, 300, 23),
        (16, 512, 6),
        (35, 6826, 33),
        (48, 257, 37),
    ];
    let round = |v: f32| acts::bf16_to_f32(acts::f32_to_bf16(v));
    for format in [
        WeightFormat::F32,
        WeightFormat::F16,
        WeightFormat::Bf16,
        WeightFormat::Q8_0,
        WeightFormat::Q4K,
    ] {
        for &(n_out, n_in, rows) in &cases {
            let w = random(n_out * n_in, &mut rng, 0.1);
            let p = pack(format, &w, n_out, n_in);
            let bias = random(n_out, &mut rng, 1.0);
            let x = random(rows * n_in, &mut rng, 2.0);
            let mut y = vec![f32::NAN; rows * n_out];
            // SAFETY: supported (checked above); shapes as `matmul` checks them.
            unsafe { amx::matmul(&p, &x, rows, Some(&bias), &mut y, &super::on_rayon) };
            let mags = magnitudes(&p, &x, rows);
            for o in 0..n_out {
                let wr: Vec<f32> = p.dequantize_row(o).into_iter().map(round).collect();
                for r in 0..rows {
                    let exact: f64 = wr
                        .iter()
                        .zip(&x[r * n_in..(r + 1) * n_in])
                        .map(|(a, &b)| *a as f64 * round(b) as f64)
                        .sum::<f64>()
                        + bias[o] as f64;
                    let got = y[r * n_out + o] as f64;
                    let m = mags[r * n_out + o] as f64;
                    assert!(
                        (got - exact).abs() <= 2e-6 * m + 1e-5,
                        "{format} {n_out}×{n_in} rows {rows} [{r}][{o}]: {got} vs {exact}"
                    );
                }
            }
        }
    }
}

/// The AMX path sends bf16 products from `MANY_ROWS` rows to the tile unit, q8_0 ones
/// (whose weights are converted to bf16 per product) only from their own, higher
/// threshold, q4k ones to the int8 tile kernels from theirs and exact f32 ones to the wide
/// AVX-512 kernels from theirs; fewer rows run the AVX-512 tile kernels (bf16 ones on the
/// AVX2 bf16 kernel when this host lacks AVX512-BF16: routes are named on any host).
#[test]
fn amx_routes_each_format_from_its_threshold() {
    if many_rows_override().is_some() {
        eprintln!("BTLM_MANY_ROWS set: skipped");
        return;
    }
    let path = KernelPath::Amx;
    for (format, min, name) in [
        (WeightFormat::Bf16, MANY_ROWS, "amx-tiles"),
        (WeightFormat::Q8_0, AMX_Q8_0_MANY_ROWS, "amx-tiles"),
        (WeightFormat::Q4K, AMX_Q4K_MANY_ROWS, "amx-int8"),
        (WeightFormat::F32, WIDE_F32_MANY_ROWS, "avx512-wide"),
    ] {
        let tiles = if format == WeightFormat::Bf16 && !avx512_bf16() {
            "avx512 (bf16 on avx2)"
        } else {
            "avx512"
        };
        assert_eq!(path.kernel_name(format, min - 1), tiles, "{format}");
        assert_eq!(path.kernel_name(format, min), name, "{format}");
    }
    assert_eq!(path.kernel_name(WeightFormat::F16, 1000), "avx512");
}

/// AMX detection is consistent: the path is offered only when the unit is usable, and
/// chosen by detection only when it also passes its self-check.
#[test]
fn amx_is_detected_only_after_its_self_check() {
    #[cfg(target_arch = "x86_64")]
    assert_eq!(
        KernelPath::Amx.supported(),
        amx::supported() && KernelPath::Avx512.supported()
    );
    let expect_amx = KernelPath::Amx.supported() && self_check::self_check(KernelPath::Amx).is_ok();
    assert_eq!(KernelPath::detect() == KernelPath::Amx, expect_amx);
    match KernelPath::parse_override("amx") {
        Ok(p) => assert_eq!(p, KernelPath::Amx),
        Err(e) => assert_eq!(e, KernelError::Unsupported(KernelPath::Amx)),
    }
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
        for (sign, rows) in [1.0f32, -1.0]
            .into_iter()
            .flat_map(|s| (1..=8).map(move |r| (s, r)))
        {
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

/// Every row count a kernel call can take (1 to 8 on every path, and the 8-row chunks plus
/// a remainder of 9 to 15 rows), every format, on odd shapes: outputs not a multiple of 16,
/// inputs past one 256-input block of the dense kernels and not a multiple of it (301:
/// an odd bf16 pair count), and n_inner 6826 (the q4k tail).
#[test]
fn every_row_count_matches_the_scalar_reference() {
    let mut rng = rand::rngs::StdRng::seed_from_u64(23);
    let shapes = [(17, 33), (40, 301), (16, 1024), (35, 6826)];
    let paths = supported_paths();
    for format in WeightFormat::ALL {
        for &(n_out, n_in) in &shapes {
            let w = random(n_out * n_in, &mut rng, 0.1);
            let p = pack(format, &w, n_out, n_in);
            let max_rows = if n_in > 1000 { 8 } else { 15 };
            let x = random(max_rows * n_in, &mut rng, 2.0);
            let reference = run(KernelPath::Scalar, &p, &x, max_rows, None);
            let mags = magnitudes(&p, &x, max_rows);
            for rows in 1..=max_rows {
                let x = &x[..rows * n_in];
                for &path in &paths {
                    if path == KernelPath::Amx && path.many_rows(format, rows) {
                        continue; // bf16 rounding: `amx_tiles_compute_the_bf16_product`
                    }
                    let y = run(path, &p, x, rows, None);
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

/// The tile kernels compute every activation row exactly as for that row alone (no
/// grouping of rows, nor which call over a tile prefetches, changes an output bit), for 1 to
/// 15 rows (one call, or a call of 8 and one of the rest), every format and path, on odd
/// shapes with the q4k tail (6826 inputs).
#[test]
fn tile_kernels_give_each_row_the_bits_it_gets_alone() {
    let mut rng = rand::rngs::StdRng::seed_from_u64(29);
    let paths = supported_paths();
    for format in WeightFormat::ALL {
        for &(n_out, n_in) in &[(40, 301), (35, 6826)] {
            let w = random(n_out * n_in, &mut rng, 0.1);
            let p = pack(format, &w, n_out, n_in);
            let max_rows = 15;
            let x = random(max_rows * n_in, &mut rng, 2.0);
            for &path in &paths {
                let alone: Vec<Vec<f32>> = (0..max_rows)
                    .map(|r| run(path, &p, &x[r * n_in..(r + 1) * n_in], 1, None))
                    .collect();
                for rows in 2..=max_rows {
                    if path.many_rows(format, rows) {
                        continue; // other kernels (`BTLM_MANY_ROWS` set low)
                    }
                    let y = run(path, &p, &x[..rows * n_in], rows, None);
                    for (r, (got, want)) in y.chunks_exact(n_out).zip(&alone).enumerate() {
                        let same = got
                            .iter()
                            .zip(want)
                            .all(|(a, b)| a.to_bits() == b.to_bits());
                        assert!(
                            same,
                            "{path} {format} {n_out}×{n_in} rows {rows}: row {r} differs from alone"
                        );
                    }
                }
            }
        }
    }
}

/// On AVX-512 CPUs without AVX512-BF16 (Cascade Lake, Ice Lake) the AVX-512 path runs bf16
/// weights on the AVX2 bf16 kernel, every other format on its own kernels; the AVX2 kernel
/// computes the product from the tiles and activations the AVX-512 path prepares.
#[test]
fn avx512_without_bf16_runs_bf16_weights_on_the_avx2_kernel() {
    use KernelPath::{Amx, Avx2, Avx512, Scalar};
    for format in WeightFormat::ALL {
        let fallback = if format == WeightFormat::Bf16 {
            Avx2
        } else {
            Avx512
        };
        assert_eq!(Avx512.tile_path(format, false), fallback, "{format}");
        assert_eq!(Avx512.tile_path(format, true), Avx512, "{format}");
        assert_eq!(Amx.tile_path(format, true), Amx, "{format}");
        for path in [Avx2, Scalar] {
            assert_eq!(path.tile_path(format, false), path, "{format}");
        }
    }
    if !Avx2.supported() {
        eprintln!("no AVX2 here: the fallback kernel is not run");
        return;
    }
    let mut rng = rand::rngs::StdRng::seed_from_u64(11);
    for (n_out, n_in, rows) in [(17, 33, 9), (40, 300, 8), (35, 2560, 3)] {
        let w = random(n_out * n_in, &mut rng, 0.1);
        let p = pack(WeightFormat::Bf16, &w, n_out, n_in);
        let bias = random(n_out, &mut rng, 1.0);
        let x = random(rows * n_in, &mut rng, 2.0);
        let reference = run(Scalar, &p, &x, rows, Some(&bias));
        let mags = magnitudes(&p, &x, rows);
        let acts = Acts::prepare(WeightFormat::Bf16, &x, rows, n_in, p.k_pad());
        let mut y = vec![f32::NAN; rows * n_out];
        let out = OutPtr(y.as_mut_ptr());
        let path = Avx512.tile_path(WeightFormat::Bf16, false);
        tiles_into(
            path,
            &p,
            &acts,
            rows,
            Some(&bias),
            out,
            0..p.tiles(),
            tile_group(&p),
        );
        for (i, ((a, b), m)) in y.iter().zip(&reference).zip(&mags).enumerate() {
            assert!(
                (a - b).abs() <= 2e-6 * m + 1e-5,
                "{n_out}×{n_in} rows {rows} [{i}]: {a} vs {b} (Σ|wx| {m})"
            );
        }
    }
}

/// What one activation scale per 256 inputs (q4k) costs in accuracy against one per 32
/// (q8_0's activations), on random data: the relative RMS error of the outputs against the
/// product of the same (dequantized) weights with the f32 activations, next to the error of
/// the 4-bit weights themselves (against the f32 weights), for uniform activations, normal
/// ones, and normal ones with 1% of outliers 10× larger (hidden states of transformers
/// have a few such channels). Figures: docs/benchmarks.md, "q4k with super-block activation
/// scales".
#[test]
fn q4k_activation_scales_cost_little_against_the_weight_error() {
    let mut rng = rand::rngs::StdRng::seed_from_u64(29);
    let (n_out, n_in, rows) = (64, 2560, 8);
    let w = random(n_out * n_in, &mut rng, 0.1);
    let p = pack(WeightFormat::Q4K, &w, n_out, n_in);
    let wq: Vec<Vec<f32>> = (0..n_out).map(|o| p.dequantize_row(o)).collect();
    let normal = |rng: &mut rand::rngs::StdRng| -> f32 {
        (0..4).map(|_| rng.r#gen::<f32>() * 2.0 - 1.0).sum::<f32>() * 0.87
    };
    let kinds: [(&str, Vec<f32>); 3] = [
        ("uniform", random(rows * n_in, &mut rng, 2.0)),
        (
            "normal",
            (0..rows * n_in).map(|_| normal(&mut rng)).collect(),
        ),
        (
            "normal, 1% outliers ×10",
            (0..rows * n_in)
                .map(|_| {
                    let v = normal(&mut rng);
                    if rng.gen_bool(0.01) { v * 10.0 } else { v }
                })
                .collect(),
        ),
    ];
    // Relative RMS error of `got` against `want` (every row and output).
    let rel = |got: &[f64], want: &[f64]| -> f64 {
        let e: f64 = got.iter().zip(want).map(|(a, b)| (a - b) * (a - b)).sum();
        let n: f64 = want.iter().map(|b| b * b).sum();
        (e / n).sqrt()
    };
    let product = |wr: &dyn Fn(usize) -> Vec<f32>, x: &[f32]| -> Vec<f64> {
        let mut y = Vec::with_capacity(rows * n_out);
        for r in 0..rows {
            for o in 0..n_out {
                let row = wr(o);
                let xr = &x[r * n_in..(r + 1) * n_in];
                y.push(row.iter().zip(xr).map(|(a, b)| *a as f64 * *b as f64).sum());
            }
        }
        y
    };
    for (kind, x) in &kinds {
        // The activations as each format quantizes them, back in f32.
        let dequantized = |format: WeightFormat| -> Vec<f32> {
            let k_pad = format.padded_k(n_in);
            let (q, d, block) = match Acts::prepare(format, x, rows, n_in, k_pad) {
                Acts::Q8 { q, d, .. } => (q, d, 32),
                Acts::Q8K { q, d, .. } => (q, d, 256),
                _ => unreachable!("8-bit activations"),
            };
            (0..rows * n_in)
                .map(|i| {
                    let (r, k) = (i / n_in, i % n_in);
                    q[r * k_pad + k] as f32 * d[(r * k_pad + k) / block]
                })
                .collect()
        };
        let exact = product(&|o| wq[o].clone(), x);
        let per32 = product(&|o| wq[o].clone(), &dequantized(WeightFormat::Q8_0));
        let per256 = product(&|o| wq[o].clone(), &dequantized(WeightFormat::Q4K));
        let f32_weights = product(&|o| w[o * n_in..(o + 1) * n_in].to_vec(), x);
        let (e32, e256) = (rel(&per32, &exact), rel(&per256, &exact));
        let ew = rel(&exact, &f32_weights);
        // Both errors together, against the f32 weights and activations.
        let (t32, t256) = (rel(&per32, &f32_weights), rel(&per256, &f32_weights));
        // The kernels compute the per-256 product (up to f32 rounding).
        let y = run(KernelPath::detect(), &p, x, rows, None);
        let ek = rel(&y.iter().map(|&v| v as f64).collect::<Vec<_>>(), &per256);
        eprintln!(
            "{kind}: activations per 32 {e32:.5}, per 256 {e256:.5}; 4-bit weights {ew:.5}; \
             both per 32 {t32:.5}, per 256 {t256:.5}; kernel vs per-256 {ek:.1e}"
        );
        assert!(ek < 1e-5, "{kind}: kernel {ek}");
        // Measured: 1.1× to 2.1× the activation error of per-32 scales (the most with
        // outliers), under 0.4× the weights' error; 1.00–1.05× the total error.
        assert!(
            e256 < 0.5 * ew,
            "{kind}: activation error {e256} vs weights {ew}"
        );
        assert!(t256 < 1.1 * t32, "{kind}: total error {t256} vs {t32}");
    }
}

/// Checks that `kernel` (writing `y = acts · Wᵀ + bias` for the `rows` rows of `x`, from
/// activations prepared for `p`) gives bit for bit what `path`'s tile kernels give, and, if
/// `with_reference`, stays within the tolerance of the scalar reference.
#[cfg(target_arch = "x86_64")]
fn assert_equals_tile_kernels(
    path: KernelPath,
    p: &PackedMatrix,
    x: &[f32],
    rows: usize,
    bias: &[f32],
    with_reference: bool,
    kernel: impl Fn(&Acts<'_>, &mut [f32]),
) {
    let (format, n_out, n_in) = (p.format(), p.n_out(), p.n_in());
    let acts = Acts::prepare(format, x, rows, n_in, p.k_pad());
    let mut tiles = vec![f32::NAN; rows * n_out];
    let out = OutPtr(tiles.as_mut_ptr());
    tiles_into(
        path,
        p,
        &acts,
        rows,
        Some(bias),
        out,
        0..p.tiles(),
        tile_group(p),
    );
    let mut got = vec![f32::NAN; rows * n_out];
    kernel(&acts, &mut got);
    for (i, (a, b)) in got.iter().zip(&tiles).enumerate() {
        assert_eq!(
            a.to_bits(),
            b.to_bits(),
            "{format} {n_out}×{n_in} rows {rows} [{i}]: {a} vs tile kernels {b}"
        );
    }
    if with_reference {
        let reference = run(KernelPath::Scalar, p, x, rows, Some(bias));
        let mags = magnitudes(p, x, rows);
        for (i, ((a, b), m)) in got.iter().zip(&reference).zip(&mags).enumerate() {
            assert!(
                (a - b).abs() <= 2e-6 * m + 1e-5,
                "{format} {n_out}×{n_in} rows {rows} [{i}]: {a} vs {b} (Σ|wx| {m})"
            );
        }
    }
}

/// The AMX-INT8 kernels (q4k prefill and large batches on the AMX path) compute exactly
/// what the AVX-512 tile kernels compute from the same activations, bit for bit: one row
/// and a partial block of 16, whole blocks and more, outputs not a multiple of 16, n_inner's
/// q4k tail (6826 inputs), and the extreme integer sums (every weight and activation at its
/// largest magnitude: the split scales' products must not saturate or wrap); and they stay
/// within the tolerance of the scalar reference.
#[cfg(target_arch = "x86_64")]
#[test]
fn amx_int8_kernels_equal_the_tile_kernels() {
    if !KernelPath::Amx.supported() {
        eprintln!("AMX not available on this CPU (or refused by the OS): skipped");
        return;
    }
    let mut rng = rand::rngs::StdRng::seed_from_u64(53);
    let format = WeightFormat::Q4K;
    // (n_out, n_in, rows, weights, activations)
    type Case = (usize, usize, usize, Vec<f32>, Vec<f32>);
    let mut inputs: Vec<Case> = [
        (1, 1, 1),
        (17, 33, 16),
        (40, 300, 17),
        (16, 512, 32),
        (35, 6826, 19),
        (33, 257, 37),
        (48, 2560, 5),
    ]
    .into_iter()
    .map(|(n_out, n_in, rows)| {
        let w = random(n_out * n_in, &mut rng, 0.1);
        (n_out, n_in, rows, w, random(rows * n_in, &mut rng, 2.0))
    })
    .collect();
    for sign in [1.0, -1.0] {
        let (n_out, n_in, rows) = (32, 1024, 18);
        let w = (0..n_out * n_in)
            .map(|i: usize| {
                if (i / n_in).is_multiple_of(2) {
                    1.0
                } else {
                    -1.0
                }
            })
            .collect();
        inputs.push((n_out, n_in, rows, w, vec![sign; rows * n_in]));
    }
    for (n_out, n_in, rows, w, x) in inputs {
        let p = pack(format, &w, n_out, n_in);
        let bias = random(n_out, &mut rng, 1.0);
        assert_equals_tile_kernels(KernelPath::Avx512, &p, &x, rows, &bias, true, |acts, y| {
            // SAFETY: the AMX path is supported (checked above), which includes AMX-INT8 and
            // AVX-512 VNNI; `acts` prepared for `p`, shapes as `matmul` checks them.
            unsafe { amx8::matmul(&p, acts, rows, Some(&bias), y, &super::on_rayon) }
        });
    }
}

/// The int8 many-rows kernels (q4k prefill on AVX2) compute exactly what the tile kernels
/// compute from the same activations, bit for bit, on odd shapes: one tile of one output,
/// outputs not a multiple of 16, rows not a multiple of the micro-kernel's 4, n_in not a
/// multiple of the super-blocks (6826: the q4k tail), and the extreme integer sums (every
/// weight and activation at its largest magnitude); and they stay within the tolerance of
/// the scalar reference.
#[cfg(target_arch = "x86_64")]
#[test]
fn int8_many_rows_kernels_equal_the_tile_kernels() {
    if !many8::supported() {
        eprintln!("int8 many-rows kernels not supported on this CPU: skipped");
        return;
    }
    let mut rng = rand::rngs::StdRng::seed_from_u64(31);
    let cases = [
        (1, 1, 16),
        (17, 33, 17),
        (40, 300, 23),
        (16, 512, 6),
        (35, 6826, 19),
        (33, 257, 37),
        (48, 2560, 1),
        (20, 1000, 2),
    ];
    let extreme = |n_out: usize, n_in: usize, sign: f32| -> (Vec<f32>, Vec<f32>) {
        let w = (0..n_out * n_in)
            .map(|i| {
                if (i / n_in).is_multiple_of(2) {
                    1.0
                } else {
                    -1.0
                }
            })
            .collect();
        (w, vec![sign; 18 * n_in])
    };
    let format = WeightFormat::Q4K;
    {
        // (n_out, n_in, rows, weights, activations)
        type Case = (usize, usize, usize, Vec<f32>, Vec<f32>);
        let mut inputs: Vec<Case> = cases
            .iter()
            .map(|&(n_out, n_in, rows)| {
                let w = random(n_out * n_in, &mut rng, 0.1);
                (n_out, n_in, rows, w, random(rows * n_in, &mut rng, 2.0))
            })
            .collect();
        for sign in [1.0, -1.0] {
            let (w, x) = extreme(32, 1024, sign);
            inputs.push((32, 1024, 18, w, x));
        }
        for (n_out, n_in, rows, w, x) in inputs {
            let p = pack(format, &w, n_out, n_in);
            let bias = random(n_out, &mut rng, 1.0);
            assert_equals_tile_kernels(KernelPath::Avx2, &p, &x, rows, &bias, true, |acts, y| {
                // SAFETY: supported (checked above); `acts` prepared for `p`, shapes as
                // `matmul` checks them.
                unsafe { many8::matmul(&p, acts, rows, Some(&bias), y) }
            });
        }
    }
}

/// Checks that `rows` random rows multiplied together on `path` come out bit for bit as each
/// row multiplied alone (random `format` weights of `n_out × n_in`, with a bias).
fn assert_rows_as_alone(
    path: KernelPath,
    format: WeightFormat,
    n_out: usize,
    n_in: usize,
    rows: usize,
    rng: &mut rand::rngs::StdRng,
) {
    let w = random(n_out * n_in, rng, 0.1);
    let p = pack(format, &w, n_out, n_in);
    let bias = random(n_out, rng, 1.0);
    let x = random(rows * n_in, rng, 2.0);
    let all = run(path, &p, &x, rows, Some(&bias));
    for r in 0..rows {
        let one = run(path, &p, &x[r * n_in..(r + 1) * n_in], 1, Some(&bias));
        for o in 0..n_out {
            let (a, b) = (all[r * n_out + o], one[o]);
            assert_eq!(a.to_bits(), b.to_bits(), "{format} [{r}][{o}]: {a} vs {b}");
        }
    }
}

/// q4k products of more rows than one AMX-INT8 pass takes (`amx8::PASS_ROWS`) run in
/// passes of rows, each prepared and multiplied on its own: every row still comes out bit
/// for bit as alone, whether the rows fill whole blocks of 16 or not.
#[cfg(target_arch = "x86_64")]
#[test]
fn q4k_products_of_several_passes_give_each_row_its_bits_alone() {
    if !KernelPath::Amx.supported() {
        eprintln!("no AMX here: skipped");
        return;
    }
    let mut rng = rand::rngs::StdRng::seed_from_u64(71);
    for rows in [amx8::PASS_ROWS + 1, 2 * amx8::PASS_ROWS + 40] {
        assert!(amx8::passes(rows).count() > 1);
        assert_rows_as_alone(KernelPath::Amx, WeightFormat::Q4K, 40, 300, rows, &mut rng);
    }
}

/// The passes of a product cover its rows once, in order, each at most `PASS_ROWS + 15`
/// rows, every pass but the last a whole number of blocks of 16 rows.
#[cfg(target_arch = "x86_64")]
#[test]
fn amx_int8_passes_cover_the_rows_in_blocks() {
    for rows in 0..2000 {
        let passes: Vec<_> = amx8::passes(rows).collect();
        assert_eq!(passes.len(), rows.div_ceil(amx8::PASS_ROWS), "{rows}");
        let mut next = 0;
        for (i, pass) in passes.iter().enumerate() {
            assert_eq!(pass.start, next, "{rows}: {passes:?}");
            assert!(
                !pass.is_empty() && pass.len() <= amx8::PASS_ROWS + 15,
                "{rows}: {passes:?}"
            );
            if i + 1 < passes.len() {
                assert!(pass.len().is_multiple_of(16), "{rows}: {passes:?}");
            }
            next = pass.end;
        }
        assert_eq!(next, rows);
    }
}

/// From the many-rows threshold on, AVX2 multiplies q4k weights with the int8 many-rows
/// kernels (q8_0 keeps the tile kernels), and a prompt's rows come out bit for bit as when
/// each row is multiplied alone (the tile kernels): prefill answers do not depend on the
/// kernels.
#[test]
fn int8_many_rows_dispatch_equals_one_row_at_a_time() {
    if !KernelPath::Avx2.supported() {
        eprintln!("no AVX2 here: skipped");
        return;
    }
    let path = KernelPath::Avx2;
    let mut rng = rand::rngs::StdRng::seed_from_u64(37);
    let (n_out, n_in) = (40, 700);
    let rows = Q4K_MANY_ROWS + 3;
    for format in [WeightFormat::Q4K, WeightFormat::Q8_0] {
        let expect = match path.many_rows_min(format) {
            Some(min) if rows >= min && format == WeightFormat::Q4K => "avx2-many8",
            _ => "avx2",
        };
        if many_rows_override().is_none() {
            // The default thresholds: q4k from Q4K_MANY_ROWS rows, the rest from MANY_ROWS.
            let min = path.many_rows_min(format);
            let want = if format == WeightFormat::Q4K {
                Q4K_MANY_ROWS
            } else {
                MANY_ROWS
            };
            assert_eq!(min, Some(want), "{format}");
            assert_eq!(
                path.kernel_name(format, Q4K_MANY_ROWS - 1),
                "avx2",
                "{format}"
            );
        }
        assert_eq!(path.kernel_name(format, rows), expect, "{format}");
        assert_eq!(path.many_rows(format, rows), expect != "avx2", "{format}");
        assert_eq!(path.kernel_name(format, 1), "avx2", "{format}");
        assert_rows_as_alone(path, format, n_out, n_in, rows, &mut rng);
    }
}

/// The AVX-512 wide kernels (several tiles per micro-kernel) compute bit for bit what the
/// AVX-512 tile kernels compute, and stay within the tolerance of the scalar reference:
/// every row count 1..=37 and 128 (not multiples of the micro-kernel's rows), outputs not a
/// multiple of the tile group (1 to 13 tiles), inputs with odd pair counts, more than one
/// input chunk, and the q4k tail (6826).
#[cfg(target_arch = "x86_64")]
#[test]
fn wide_kernels_equal_the_avx512_tile_kernels() {
    if !wide512::supported() {
        eprintln!("AVX-512 wide kernels not supported on this CPU: skipped");
        return;
    }
    let mut rng = rand::rngs::StdRng::seed_from_u64(41);
    let mut cases: Vec<(usize, usize, usize)> = (1..=37).map(|rows| (40, 300, rows)).collect();
    cases.extend([
        (1, 1, 16),
        (17, 33, 128),
        (200, 258, 23),
        (35, 6826, 19),
        (70, 2560, 128),
        (64, 514, 7),
        (33, 257, 37),
    ]);
    for format in WeightFormat::ALL.into_iter().filter(|&f| wide512::takes(f)) {
        for &(n_out, n_in, rows) in &cases {
            let w = random(n_out * n_in, &mut rng, 0.1);
            let x = random(rows * n_in, &mut rng, 2.0);
            let p = pack(format, &w, n_out, n_in);
            let bias = random(n_out, &mut rng, 1.0);
            let check_reference = rows > 8 && n_in > 1000 || rows % 5 == 0;
            assert_equals_tile_kernels(
                KernelPath::Avx512,
                &p,
                &x,
                rows,
                &bias,
                check_reference,
                |acts, y| {
                    // SAFETY: supported (checked above); `acts` prepared for `p`, shapes as
                    // `matmul` checks them.
                    unsafe { wide512::matmul(&p, acts, rows, Some(&bias), y, &on_rayon) }
                },
            );
        }
    }
}

/// From the many-rows threshold on, the AVX-512 path multiplies the formats the wide
/// kernels take with them (bf16 only with AVX512-BF16), and a prompt's rows come out bit
/// for bit as when each row is multiplied alone (the tile kernels).
#[test]
fn wide_dispatch_equals_one_row_at_a_time() {
    let path = KernelPath::Avx512;
    if !path.supported() {
        eprintln!("no AVX-512 here: skipped");
        return;
    }
    let mut rng = rand::rngs::StdRng::seed_from_u64(43);
    let (n_out, n_in) = (72, 700);
    let rows = WIDE_MANY_ROWS + 5;
    for format in WeightFormat::ALL {
        let wide = match path.many_rows_min(format) {
            Some(min) => {
                rows >= min
                    && wide512::takes(format)
                    && (format == WeightFormat::F32 || avx512_bf16())
            }
            None => false,
        };
        let expect = if wide {
            "avx512-wide".to_string()
        } else {
            path.kernel_name(format, 1)
        };
        assert_eq!(path.kernel_name(format, rows), expect, "{format}");
        assert_eq!(path.many_rows(format, rows), wide, "{format}");
        if !wide {
            continue;
        }
        assert_rows_as_alone(path, format, n_out, n_in, rows, &mut rng);
    }
}

/// What `rows_independent` promises (the engine then runs prompt pieces in the decode rows'
/// pass): on every supported path, each format it says so for multiplies a row of a
/// many-rows product bit for bit as alone; and the paths that switch arithmetic for many
/// rows (AMX bf16 tiles, the AVX2 f32 many-rows kernels, f32/f16 converted to bf16) say no.
#[test]
fn rows_independent_formats_multiply_each_row_as_alone() {
    let mut rng = rand::rngs::StdRng::seed_from_u64(47);
    let rows = WIDE_MANY_ROWS.max(Q4K_MANY_ROWS).max(MANY_ROWS) + 6;
    for path in KernelPath::ALL.into_iter().filter(|p| p.supported()) {
        for format in WeightFormat::ALL {
            if path.rows_independent(format, PrefillPrecision::Exact) {
                assert_rows_as_alone(path, format, 40, 300, rows, &mut rng);
            }
        }
    }
    if many_rows_override().is_some() {
        return;
    }
    for format in WeightFormat::ALL {
        let exact = PrefillPrecision::Exact;
        assert!(
            KernelPath::Scalar.rows_independent(format, exact),
            "{format}"
        );
        // q4k's AMX route is the int8 one (`amx8.rs`), the tile kernels' sums bit for bit.
        let amx_tiles = matches!(format, WeightFormat::Bf16 | WeightFormat::Q8_0);
        assert_eq!(
            KernelPath::Amx.rows_independent(format, exact),
            !amx_tiles,
            "amx {format}"
        );
        let f32_many = matches!(format, WeightFormat::Bf16 | WeightFormat::F16);
        assert_eq!(
            KernelPath::Avx2.rows_independent(format, exact),
            !f32_many,
            "avx2 {format}"
        );
        assert!(
            KernelPath::Avx512.rows_independent(format, exact),
            "{format}"
        );
        let converted = matches!(format, WeightFormat::F32 | WeightFormat::F16) && avx512_bf16();
        assert_eq!(
            KernelPath::Avx512.rows_independent(format, PrefillPrecision::Bf16),
            !converted,
            "avx512 bf16 prefill {format}"
        );
    }
}

/// [`KernelPath::same_route_from`] (the engine then lets prompt pieces of at least that
/// many tokens share a pass): on every supported path and format, with exact and bf16
/// prefill, the route changes exactly there, and a product of two row groups that each
/// reach it gives every row the bits of its group's product alone.
#[test]
fn row_groups_past_the_route_threshold_multiply_as_alone() {
    let mut rng = rand::rngs::StdRng::seed_from_u64(67);
    let (n_out, n_in) = (40, 300);
    for path in KernelPath::ALL.into_iter().filter(|p| p.supported()) {
        for format in WeightFormat::ALL {
            for prefill in [PrefillPrecision::Exact, PrefillPrecision::Bf16] {
                let t = path.same_route_from(format, prefill);
                let what = format!("{path} {format} {prefill:?} from {t}");
                if path.rows_independent(format, prefill) {
                    assert_eq!(t, 1, "{what}");
                    continue;
                }
                let name = |rows| path.kernel_name_with(format, prefill, rows);
                assert_eq!(name(t), name(1 << 20), "{what}");
                assert_ne!(name(t - 1), name(t), "{what}");
                let w = random(n_out * n_in, &mut rng, 0.1);
                let p = pack(format, &w, n_out, n_in);
                let bias = random(n_out, &mut rng, 1.0);
                let (ra, rb) = (t, t + 3);
                let x = random((ra + rb) * n_in, &mut rng, 2.0);
                let product = |x: &[f32], rows: usize| {
                    let mut y = vec![f32::NAN; rows * n_out];
                    matmul_with(path, prefill, &p, x, rows, Some(&bias), &mut y).expect("matmul");
                    y
                };
                let both = product(&x, ra + rb);
                let mut apart = product(&x[..ra * n_in], ra);
                apart.extend(product(&x[ra * n_in..], rb));
                for (i, (a, b)) in both.iter().zip(&apart).enumerate() {
                    assert_eq!(a.to_bits(), b.to_bits(), "{what} [{i}]: {a} vs {b}");
                }
            }
        }
    }
}

/// The wide products run by another `for_each` than rayon's pool (tasks in reverse order on
/// scoped threads, as a team might claim them) with activations prepared once for several
/// products compute bit for bit what `matmul_with` computes: bf16 weights, and f32/f16 ones
/// converted with `PrefillPrecision::Bf16`, on odd shapes (the MLP's 6826 inputs, outputs
/// not a multiple of a tile group, rows not a multiple of the micro-kernel's); products that
/// do not run on the wide kernels, or activations of another shape, are refused.
#[test]
fn wide_products_on_other_threads_equal_matmul_with() {
    let mut rng = rand::rngs::StdRng::seed_from_u64(61);
    let threads = |n: usize, task: &(dyn Fn(usize) + Sync)| {
        std::thread::scope(|s| {
            for i in (0..n).rev() {
                s.spawn(move || task(i));
            }
        })
    };
    let rows = WIDE_MANY_ROWS.max(many_rows_threshold().unwrap_or(0)) + 3;
    for path in KernelPath::ALL.into_iter().filter(|p| p.supported()) {
        for prefill in [PrefillPrecision::Exact, PrefillPrecision::Bf16] {
            for format in WeightFormat::ALL {
                for (n_out, n_in) in [(72, 6826), (200, 257), (16, 2)] {
                    let wide = path.wide_k_pad(format, prefill, rows, n_in);
                    if wide.is_none() && n_in > 2 {
                        continue;
                    }
                    let x = random(rows * n_in, &mut rng, 2.0);
                    let bias = random(n_out, &mut rng, 1.0);
                    let k_pad = WeightFormat::Bf16.padded_k(n_in);
                    let acts = Acts::prepare(WeightFormat::Bf16, &x, rows, n_in, k_pad);
                    let p = pack(format, &random(n_out * n_in, &mut rng, 0.1), n_out, n_in);
                    let mut got = vec![f32::NAN; rows * n_out];
                    let r = matmul_wide_on(
                        path,
                        prefill,
                        &p,
                        &acts,
                        rows,
                        Some(&bias),
                        &mut got,
                        &threads,
                    );
                    let what = format!("{path} {prefill} {format} {n_out}×{n_in}");
                    let Some(k) = wide else {
                        assert!(r.is_err(), "{what}");
                        continue;
                    };
                    assert_eq!(k, k_pad, "{what}");
                    r.expect("wide product");
                    let mut want = vec![f32::NAN; rows * n_out];
                    matmul_with(path, prefill, &p, &x, rows, Some(&bias), &mut want)
                        .expect("matmul");
                    for (i, (a, b)) in got.iter().zip(&want).enumerate() {
                        assert_eq!(a.to_bits(), b.to_bits(), "{what} [{i}]");
                    }
                    // Too few rows for the wide kernels, or activations of other rows.
                    let few = Acts::prepare(WeightFormat::Bf16, &x[..8 * n_in], 8, n_in, k_pad);
                    let mut y8 = vec![0f32; 8 * n_out];
                    assert!(
                        matmul_wide_on(path, prefill, &p, &few, 8, None, &mut y8, &threads)
                            .is_err(),
                        "{what}"
                    );
                    assert!(
                        matmul_wide_on(path, prefill, &p, &few, rows, None, &mut got, &threads)
                            .is_err(),
                        "{what}"
                    );
                }
            }
        }
    }
}

/// A product of more rows than one kernel call takes runs its tiles in groups, each block
/// of rows over the whole group before the next block (`tiles_into`): whatever the group
/// size, and with ranges starting inside a group, every value is the bits of the tile by
/// tile order and of each row multiplied alone, on every path and format this CPU runs.
#[test]
fn grouped_tiles_equal_tile_by_tile_and_one_row_at_a_time() {
    let mut rng = rand::rngs::StdRng::seed_from_u64(43);
    let (n_out, n_in, rows) = (16 * 9 + 5, 300, 19);
    for path in KernelPath::ALL.into_iter().filter(|p| p.supported()) {
        for format in WeightFormat::ALL {
            let w = random(n_out * n_in, &mut rng, 0.1);
            let p = pack(format, &w, n_out, n_in);
            let bias = random(n_out, &mut rng, 1.0);
            let x = random(rows * n_in, &mut rng, 2.0);
            let tiles = path.tile_path(format, avx512_bf16());
            let product = |x: &[f32], rows: usize, ranges: &[(usize, std::ops::Range<usize>)]| {
                let acts = Acts::prepare(format, x, rows, n_in, p.k_pad());
                let mut y = vec![f32::NAN; rows * n_out];
                let out = OutPtr(y.as_mut_ptr());
                for (group, range) in ranges {
                    tiles_into(
                        tiles,
                        &p,
                        &acts,
                        rows,
                        Some(&bias),
                        out,
                        range.clone(),
                        *group,
                    );
                }
                y
            };
            let tile_by_tile = product(&x, rows, &[(1, 0..p.tiles())]);
            for ranges in [
                vec![(2, 0..p.tiles())],
                vec![(4, 0..p.tiles())],
                vec![(3, 0..5), (3, 5..p.tiles())],
                vec![(64, 0..p.tiles())],
            ] {
                let got = product(&x, rows, &ranges);
                for (i, (a, b)) in got.iter().zip(&tile_by_tile).enumerate() {
                    assert_eq!(
                        a.to_bits(),
                        b.to_bits(),
                        "{path} {format} {ranges:?} [{i}]: {a} vs {b}"
                    );
                }
            }
            for r in 0..rows {
                let one = product(&x[r * n_in..(r + 1) * n_in], 1, &[(1, 0..p.tiles())]);
                for (o, (a, b)) in tile_by_tile[r * n_out..].iter().zip(&one).enumerate() {
                    assert_eq!(
                        a.to_bits(),
                        b.to_bits(),
                        "{path} {format} [{r}][{o}]: {a} vs {b}"
                    );
                }
            }
        }
    }
}

/// Groups hold as many tiles as fit 512 KiB, at least one.
#[test]
fn tile_groups_fit_their_budget() {
    let group = |format: WeightFormat, n_in: usize| {
        tile_group(&pack(format, &vec![0.5; 16 * n_in], 16, n_in))
    };
    // A q4k tile of 6826 inputs (27 super-blocks × 16 outputs × 144 bytes) is 62 208 bytes.
    assert_eq!(group(WeightFormat::Q4K, 6826), 8);
    assert_eq!(group(WeightFormat::Q4K, 2560), 22);
    // An f32 tile of 6826 inputs is 436 864 bytes; of 16 384, above the budget.
    assert_eq!(group(WeightFormat::F32, 6826), 1);
    assert_eq!(group(WeightFormat::F32, 16384), 1);
}
