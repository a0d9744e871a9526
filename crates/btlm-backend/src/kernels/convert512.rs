//! f32 and f16 weights multiplied in bf16 arithmetic for many activation rows (prefill with
//! `PrefillPrecision::Bf16`), on the wide bf16 micro-kernel of [`super::wide512`].
//!
//! The weights stay stored in their own format. The wide kernels walk a group of
//! [`BF16_TILES`] tiles in chunks of [`BF16_KC`] input pairs; here each chunk is first
//! rounded to bf16 (`vcvtne2ps2bf16`, nearest even) into a per-task scratch of the packed
//! bf16 layout (32 KiB, L1), which every activation row then reads. The activations are
//! rounded to bf16 as for bf16 weights, so a product computes exactly what the wide kernels
//! compute on the weights packed as bf16 — bit for bit, except that the instruction treats
//! denormal f32 weights (below 1.2·10⁻³⁸) as zero where packing rounds them (tested in
//! `tests.rs`). Converting costs one conversion per 16 weights per product, shared by all
//! rows: small next to the rows × 16 multiply-adds.

use std::arch::x86_64::*;

use super::OutPtr;
use super::acts::{Acts, ForEach};
use super::aligned::Line;
use super::format::{TILE, WeightFormat};
use super::pack::PackedMatrix;
use super::wide512::{self, BF16_KC, BF16_TILES, ChunkSource};

/// Whether these kernels multiply `format` weights (`KernelPath::route_with` routes those).
#[cfg(test)]
pub fn takes(format: WeightFormat) -> bool {
    matches!(format, WeightFormat::F32 | WeightFormat::F16)
}

/// `y = acts · Wᵀ (+ bias)` for f32 or f16 `w` in bf16 arithmetic: `acts` are the `rows`
/// rows prepared for bf16 weights of `w.n_in()` inputs (padded to even); the tasks run by
/// `for_each` (see [`wide512::matmul`]).
///
/// # Safety
/// The CPU must support AVX-512 F/BW/VL/VNNI and AVX512-BF16; `w` must hold f32 or f16
/// weights and `acts` be [`Acts::prepare`]d for [`WeightFormat::Bf16`] with `rows` rows of
/// `WeightFormat::Bf16.padded_k(w.n_in())` inputs; `y` holds `rows × w.n_out()` values and
/// `bias`, if any, `w.n_out()`.
pub unsafe fn matmul(
    w: &PackedMatrix,
    acts: &Acts<'_>,
    rows: usize,
    bias: Option<&[f32]>,
    y: &mut [f32],
    for_each: &ForEach<'_>,
) {
    let Acts::Bf16 { x } = acts else {
        unreachable!("converted products take bf16 activations");
    };
    assert!(
        matches!(w.format(), WeightFormat::F32 | WeightFormat::F16),
        "converted products take f32 or f16 weights"
    );
    let pairs = w.n_in().div_ceil(2);
    debug_assert!(acts.fits(WeightFormat::Bf16, rows, 2 * pairs));
    let out = OutPtr(y.as_mut_ptr());
    wide512::for_groups(
        w.tiles(),
        rows,
        || vec![Line([0; 64]); BF16_TILES * BF16_KC],
        |scratch, acc, t0, g| {
            let mut src = Converted { w, t0, g, scratch };
            // SAFETY: the forwarded contract: `src` yields `pairs` pairs of tiles
            // t0..t0 + g, `x` holds `rows` rows of 2 · pairs values, `acc` is
            // rows · BF16_ACC_ROW floats (`for_groups`).
            unsafe { wide512::group::<wide512::Bf16Dot>(&mut src, g, pairs, x, rows, acc) };
            // SAFETY: this task alone writes the columns of its tiles (`for_groups`).
            unsafe { wide512::store(acc, rows, t0, g, w.n_out(), out, bias) };
        },
        for_each,
    );
}

/// Tiles `t0..t0 + g` of f32/f16 `w`, each chunk converted into `scratch` when asked for.
struct Converted<'a> {
    w: &'a PackedMatrix,
    t0: usize,
    g: usize,
    /// `BF16_TILES × BF16_KC` pairs (16 rows × 2 bf16, a line each): tile `i`'s chunk from
    /// `scratch[i * BF16_KC]`.
    scratch: &'a mut [Line],
}

impl ChunkSource for Converted<'_> {
    unsafe fn chunk(&mut self, c0: usize, c1: usize) -> [*const u8; BF16_TILES] {
        for i in 0..self.g {
            let dst = &mut self.scratch[i * BF16_KC..][..c1 - c0];
            // SAFETY: the CPU supports AVX512-BF16 and pairs c0..c1 exist (the caller's
            // contract); tile t0 + i exists (the group's).
            unsafe { convert_pairs(self.w, self.t0 + i, c0, dst) };
        }
        std::array::from_fn(|i| self.scratch[i.min(self.g - 1) * BF16_KC].0.as_ptr())
    }

    fn memory(&self, c0: usize, c1: usize) -> ([*const u8; BF16_TILES], usize) {
        // Inputs 2·c0 .. 2·c1 (cut at n_in), 16 values of 4 (f32) or 2 (f16) bytes each.
        let unit = if self.w.format() == WeightFormat::F16 {
            2 * TILE
        } else {
            4 * TILE
        };
        let (k0, k1) = ((2 * c0).min(self.w.n_in()), (2 * c1).min(self.w.n_in()));
        let at = std::array::from_fn(|i| {
            let t = self.t0 + i.min(self.g - 1);
            self.w.tile(t).as_ptr().wrapping_add(k0 * unit)
        });
        (at, (k1 - k0) * unit)
    }
}

/// Pairs `c0..c0 + dst.len()` of tile `t` of f32/f16 `w` rounded to bf16 into `dst`, in the
/// packed bf16 layout (row `j`'s inputs `2p`, `2p + 1` at bytes `4j`, `4j + 2` of pair
/// `p`); input `n_in` of an odd `n_in` is zero.
///
/// # Safety
/// The CPU supports AVX-512 F/BW/VL/VNNI and AVX512-BF16; the pairs and tile exist.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx512bf16")]
unsafe fn convert_pairs(w: &PackedMatrix, t: usize, c0: usize, dst: &mut [Line]) {
    // Interleaves the even inputs (elements 0..16 of the converted pair) with the odd ones
    // (16..32): element 2j ← j, 2j + 1 ← 16 + j.
    let idx = _mm512_set_epi16(
        31, 15, 30, 14, 29, 13, 28, 12, 27, 11, 26, 10, 25, 9, 24, 8, 23, 7, 22, 6, 21, 5, 20, 4,
        19, 3, 18, 2, 17, 1, 16, 0,
    );
    let n_in = w.n_in();
    let tile = w.tile(t);
    let f16 = w.format() == WeightFormat::F16;
    // Input k of the 16 rows as f32 (k < n_in; the packed f32/f16 tile is k-major).
    let column = |k: usize| -> __m512 {
        // SAFETY: input k < n_in = k_pad exists in the tile (16 values of 2 or 4 bytes).
        unsafe {
            if f16 {
                _mm512_cvtph_ps(_mm256_loadu_si256(tile.as_ptr().add(k * 2 * TILE).cast()))
            } else {
                _mm512_loadu_ps(tile.as_ptr().add(k * 4 * TILE).cast())
            }
        }
    };
    for (i, line) in dst.iter_mut().enumerate() {
        let k = 2 * (c0 + i);
        let even = column(k);
        let odd = if k + 1 < n_in {
            column(k + 1)
        } else {
            _mm512_setzero_ps()
        };
        // Elements 0..16: the even inputs rounded to bf16, 16..32 the odd ones.
        // SAFETY: both are 512 bits of plain data.
        let both =
            unsafe { std::mem::transmute::<__m512bh, __m512i>(_mm512_cvtne2ps_pbh(odd, even)) };
        // SAFETY: `line` is 64 writable bytes.
        unsafe {
            _mm512_storeu_si512(
                line.0.as_mut_ptr().cast(),
                _mm512_permutexvar_epi16(idx, both),
            )
        };
    }
}

#[cfg(test)]
mod tests {
    use rand::SeedableRng;

    use super::super::tests::{pack, random};
    use super::super::{
        KernelPath, PrefillPrecision, WIDE_MANY_ROWS, matmul as exact, matmul_with, on_rayon,
    };
    use super::*;

    /// `p`'s weights (as stored: f16 ones rounded) packed as bf16.
    fn as_bf16(p: &PackedMatrix) -> PackedMatrix {
        let w: Vec<f32> = (0..p.n_out()).flat_map(|o| p.dequantize_row(o)).collect();
        pack(WeightFormat::Bf16, &w, p.n_out(), p.n_in())
    }

    /// Whether the CPU runs these kernels.
    fn supported() -> bool {
        super::super::avx512::supported() && super::super::avx512::has_bf16()
    }

    fn assert_bits(got: &[f32], want: &[f32], what: &str) {
        for (i, (a, b)) in got.iter().zip(want).enumerate() {
            assert_eq!(a.to_bits(), b.to_bits(), "{what} [{i}]: {a} vs {b}");
        }
    }

    /// The converted products compute bit for bit what the wide bf16 kernels compute on the
    /// same weights packed as bf16, on odd shapes: odd inputs (the last pair half zero), one
    /// input, outputs not a multiple of a tile or a tile group, rows not a multiple of the
    /// micro-kernel's, more than one input chunk.
    #[test]
    fn converted_products_equal_the_wide_kernels_on_bf16_weights() {
        if !supported() {
            eprintln!("no AVX512-BF16 here: skipped");
            return;
        }
        let mut rng = rand::rngs::StdRng::seed_from_u64(47);
        let cases = [
            (1, 1, 1),
            (17, 33, 7),
            (40, 300, 13),
            (200, 257, 23),
            (35, 6827, 19),
            (70, 2560, 128),
            (64, 514, 64),
            (33, 255, 37),
        ];
        for format in [WeightFormat::F32, WeightFormat::F16] {
            assert!(takes(format));
            for (n_out, n_in, rows) in cases {
                let w = random(n_out * n_in, &mut rng, 0.1);
                let x = random(rows * n_in, &mut rng, 2.0);
                let bias = random(n_out, &mut rng, 1.0);
                let p = pack(format, &w, n_out, n_in);
                let b = as_bf16(&p);
                let acts = Acts::prepare(WeightFormat::Bf16, &x, rows, n_in, b.k_pad());
                let mut want = vec![f32::NAN; rows * n_out];
                let mut got = vec![f32::NAN; rows * n_out];
                // SAFETY: supported (checked above); `acts` prepared for bf16 weights of
                // n_in inputs; the outputs and bias have the matrices' sizes.
                unsafe {
                    wide512::matmul(&b, &acts, rows, Some(&bias), &mut want, &on_rayon);
                    matmul(&p, &acts, rows, Some(&bias), &mut got, &on_rayon);
                }
                assert_bits(&got, &want, &format!("{format} {n_out}×{n_in} rows {rows}"));
            }
        }
    }

    /// `vcvtne2ps2bf16` treats denormal f32 weights as zero (packing as bf16 rounds them):
    /// the only weights where the converted products and the bf16 format differ.
    #[test]
    fn denormal_weights_count_as_zero() {
        if !supported() {
            eprintln!("no AVX512-BF16 here: skipped");
            return;
        }
        let (n_out, n_in, rows) = (16, 8, 3);
        let mut rng = rand::rngs::StdRng::seed_from_u64(53);
        let mut w = random(n_out * n_in, &mut rng, 0.1);
        let x = vec![1e38f32; rows * n_in];
        w[5] = 1e-39;
        let p = pack(WeightFormat::F32, &w, n_out, n_in);
        w[5] = 0.0;
        let b = pack(WeightFormat::Bf16, &w, n_out, n_in);
        let acts = Acts::prepare(WeightFormat::Bf16, &x, rows, n_in, n_in);
        let mut want = vec![f32::NAN; rows * n_out];
        let mut got = vec![f32::NAN; rows * n_out];
        // SAFETY: as above.
        unsafe {
            wide512::matmul(&b, &acts, rows, None, &mut want, &on_rayon);
            matmul(&p, &acts, rows, None, &mut got, &on_rayon);
        }
        assert_bits(&got, &want, "denormal weight");
    }

    /// With `PrefillPrecision::Bf16` the AVX-512 path (with AVX512-BF16) runs f32 and f16
    /// products from the wide threshold on as the bf16 wide kernels on the rounded weights
    /// (bit for bit), the AMX path from its threshold on as the tile unit's products, fewer
    /// rows exactly as without it; other paths, other formats and `Exact` never change.
    #[test]
    fn bf16_prefill_dispatch() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(59);
        let (n_out, n_in) = (72, 301);
        let many = WIDE_MANY_ROWS.max(super::super::many_rows_threshold().unwrap_or(0)) + 5;
        for path in KernelPath::ALL.into_iter().filter(|p| p.supported()) {
            for format in WeightFormat::ALL {
                let applies = path.prefill_bf16_applies(format);
                let expect_applies = takes(format)
                    && matches!(path, KernelPath::Avx512 | KernelPath::Amx)
                    && supported();
                assert_eq!(applies, expect_applies, "{path} {format}");
                let w = random(n_out * n_in, &mut rng, 0.1);
                let p = pack(format, &w, n_out, n_in);
                let bias = random(n_out, &mut rng, 1.0);
                for rows in [1, 8, many] {
                    let x = random(rows * n_in, &mut rng, 2.0);
                    let run = |prefill, m: &PackedMatrix| {
                        let mut y = vec![f32::NAN; rows * n_out];
                        matmul_with(path, prefill, m, &x, rows, Some(&bias), &mut y)
                            .expect("matmul");
                        y
                    };
                    let mut want = vec![f32::NAN; rows * n_out];
                    exact(path, &p, &x, rows, Some(&bias), &mut want).expect("matmul");
                    let what = format!("{path} {format} rows {rows}");
                    assert_bits(&run(PrefillPrecision::Exact, &p), &want, &what);
                    let converted =
                        applies && path.many_rows_with(format, PrefillPrecision::Bf16, rows);
                    let name = path.kernel_name_with(format, PrefillPrecision::Bf16, rows);
                    if converted && path == KernelPath::Amx {
                        // On the tile unit, as its own bf16 products of these weights.
                        assert_eq!(name, "amx-tiles", "{what}");
                        let mut want = vec![f32::NAN; rows * n_out];
                        // SAFETY: the Amx path is supported (filtered above).
                        unsafe {
                            super::super::amx::matmul(
                                &p,
                                &x,
                                rows,
                                Some(&bias),
                                &mut want,
                                &super::super::on_rayon,
                            )
                        };
                        assert_bits(&run(PrefillPrecision::Bf16, &p), &want, &what);
                    } else if converted {
                        assert_eq!(name, "avx512-wide-bf16", "{what}");
                        let b = as_bf16(&p);
                        let mut want = vec![f32::NAN; rows * n_out];
                        // SAFETY: supported (`applies`); `acts` prepared for `b`.
                        unsafe {
                            let acts = Acts::prepare(WeightFormat::Bf16, &x, rows, n_in, b.k_pad());
                            wide512::matmul(&b, &acts, rows, Some(&bias), &mut want, &on_rayon);
                        }
                        assert_bits(&run(PrefillPrecision::Bf16, &p), &want, &what);
                    } else {
                        assert_eq!(name, path.kernel_name(format, rows), "{what}");
                        assert_bits(&run(PrefillPrecision::Bf16, &p), &want, &what);
                    }
                    if applies && rows == many && super::super::many_rows_threshold().is_some() {
                        assert!(converted, "{what}");
                    }
                }
            }
        }
    }
}
