//! Activations prepared once per matrix product, in the form the weight format's dot
//! products read: f32 as given, bf16 (rounded to nearest even), 8-bit blocks of 32 with
//! one f32 scale and the integer sum per block for q8_0 weights (what llama.cpp calls q8_0
//! activations), or 8-bit super-blocks of 256 with one f32 scale and the integer sums of
//! their blocks of 32 for q4k weights (llama.cpp's q8_K).
//!
//! Why q4k takes one activation scale per 256 inputs: its weights have an integer scale per
//! block of 32 and one f32 scale per 256, so with activations on the same 256-input grid a
//! kernel sums a whole super-block in integers (each block's sum times its 6-bit scale) and
//! converts and scales once per super-block instead of once per 32 inputs — the f32 work
//! was ~30% of the instructions of the AVX2 kernel for 8 rows. The price is precision: an
//! activation block far smaller than the largest of its super-block keeps fewer bits
//! (docs/benchmarks.md, "q4k with super-block activation scales").

use std::sync::Mutex;

use rayon::prelude::*;

use super::aligned::AlignedVec;
use super::format::{QBLOCK, QK_K, WeightFormat};

/// Rows of activations in a weight format's input form; the input dimension is padded with
/// zeros to the format's `k_pad`.
#[derive(Debug)]
pub enum Acts<'a> {
    /// f32 rows as given (`k_pad == k`).
    F32 {
        /// `rows × k` values.
        x: &'a [f32],
    },
    /// bf16 bit patterns, `rows × k_pad`.
    Bf16 {
        /// The values.
        x: AlignedVec<u16>,
    },
    /// Signed 8-bit blocks of [`QBLOCK`] (for q8_0 weights).
    Q8 {
        /// `rows × k_pad` quants.
        q: AlignedVec<i8>,
        /// `rows × k_pad / 32` scales.
        d: Vec<f32>,
        /// `rows × k_pad / 32` sums of the quants of each block.
        sum: Vec<i32>,
    },
    /// Signed 8-bit super-blocks of [`QK_K`] (for q4k weights): one scale per 256 inputs.
    Q8K {
        /// `rows × k_pad` quants.
        q: AlignedVec<i8>,
        /// `rows × k_pad / 256` scales.
        d: Vec<f32>,
        /// `rows × k_pad / 32` sums of the quants of each block of 32 (|sum| ≤ 32 · 127,
        /// so i16: the AVX2 kernel multiplies two of them with two 6-bit mins in one
        /// `vpmaddwd`).
        bsum: Vec<i16>,
    },
}

/// Rows per parallel task when preparing many rows (prefill); decode rows run inline.
const PAR_ROWS: usize = 8;

/// Runs `task(i)` once for every `i` in `0..n`, on whatever threads the caller has (see
/// [`Acts::prepare_on`]).
pub type ForEach<'f> = dyn Fn(usize, &(dyn Fn(usize) + Sync)) + 'f;

impl<'a> Acts<'a> {
    /// Prepares `rows` rows of `k` inputs (`x.len() == rows * k`) for `format`, padded to
    /// `k_pad`: on this thread for a few rows (decode), on rayon's pool for many (prefill).
    pub fn prepare(
        format: WeightFormat,
        x: &'a [f32],
        rows: usize,
        k: usize,
        k_pad: usize,
    ) -> Self {
        Self::prepare_on(format, x, rows, k, k_pad, &|n, task| {
            if n > PAR_ROWS {
                (0..n).into_par_iter().for_each(task);
            } else {
                (0..n).for_each(task);
            }
        })
    }

    /// [`Acts::prepare`] with the rows spread over the caller's threads: `for_each(n, task)`
    /// must run `task(i)` exactly once for every `i < n` (in any order, on any threads) and
    /// return when all have run. The result is the same as [`Acts::prepare`]'s.
    pub fn prepare_on(
        format: WeightFormat,
        x: &'a [f32],
        rows: usize,
        k: usize,
        k_pad: usize,
        for_each: &ForEach<'_>,
    ) -> Self {
        debug_assert_eq!(x.len(), rows * k);
        match format {
            WeightFormat::F32 | WeightFormat::F16 => Acts::F32 { x },
            WeightFormat::Bf16 => {
                let mut out = AlignedVec::<u16>::zeroed(rows * k_pad);
                let chunks: Vec<Mutex<&mut [u16]>> =
                    out.chunks_mut(k_pad.max(1)).map(Mutex::new).collect();
                for_each(chunks.len(), &|r| {
                    let mut o = chunks[r].lock().unwrap_or_else(|e| e.into_inner());
                    for (d, &s) in o.iter_mut().zip(&x[r * k..(r + 1) * k]) {
                        *d = f32_to_bf16(s);
                    }
                });
                drop(chunks);
                Acts::Bf16 { x: out }
            }
            WeightFormat::Q8_0 => {
                let (q, d, sum) = quantize_rows_on(x, rows, k, k_pad, QBLOCK, |s| s, for_each);
                Acts::Q8 { q, d, sum }
            }
            WeightFormat::Q4K => {
                let (q, d, bsum) =
                    quantize_rows_on(x, rows, k, k_pad, QK_K, |s| s as i16, for_each);
                Acts::Q8K { q, d, bsum }
            }
        }
    }

    /// Whether these activations are `rows` rows prepared for `format` weights of `k_pad`
    /// (padded) inputs, so that kernels of such weights may read them.
    pub fn fits(&self, format: WeightFormat, rows: usize, k_pad: usize) -> bool {
        let n = rows * k_pad;
        match (self, format) {
            (Acts::F32 { x }, WeightFormat::F32 | WeightFormat::F16) => x.len() == n,
            (Acts::Bf16 { x }, WeightFormat::Bf16) => x.len() == n,
            (Acts::Q8 { q, d, sum }, WeightFormat::Q8_0) => {
                q.len() == n && d.len() == n / QBLOCK && sum.len() == n / QBLOCK
            }
            (Acts::Q8K { q, d, bsum }, WeightFormat::Q4K) => {
                q.len() == n && d.len() == n / QK_K && bsum.len() == n / QBLOCK
            }
            _ => false,
        }
    }
}

/// One row's quants, scales and block sums.
type RowParts<'r, S> = (&'r mut [i8], &'r mut [f32], &'r mut [S]);

/// Quantizes `rows` rows of `k` values (`x`), zero padded to `k_pad`, in blocks of `block`
/// inputs with one scale each ([`quantize_block`]), and sums the quants of every block of
/// [`QBLOCK`] (converted by `sum_as`): `(quants, scales, sums)`; one task per row, run by
/// `for_each` (see [`Acts::prepare_on`]).
fn quantize_rows_on<S: Copy + Default + Send>(
    x: &[f32],
    rows: usize,
    k: usize,
    k_pad: usize,
    block: usize,
    sum_as: impl Fn(i32) -> S + Sync,
    for_each: &ForEach<'_>,
) -> (AlignedVec<i8>, Vec<f32>, Vec<S>) {
    let (nd, ns) = (k_pad / block, k_pad / QBLOCK);
    let mut q = AlignedVec::<i8>::zeroed(rows * k_pad);
    let mut d = vec![0f32; rows * nd];
    let mut sum = vec![S::default(); rows * ns];
    if rows > 0 && k_pad > 0 {
        let chunks: Vec<Mutex<RowParts<'_, S>>> = q
            .chunks_mut(k_pad)
            .zip(d.chunks_mut(nd))
            .zip(sum.chunks_mut(ns))
            .map(|((qr, dr), sr)| Mutex::new((qr, dr, sr)))
            .collect();
        for_each(chunks.len(), &|r| {
            let mut c = chunks[r].lock().unwrap_or_else(|e| e.into_inner());
            let (qr, dr, sr) = &mut *c;
            quantize_row(&x[r * k..(r + 1) * k], block, qr, dr, sr, &sum_as);
        });
    }
    (q, d, sum)
}

/// Quantizes one row `xr` (zero padded to `qr.len()`) in blocks of `block` inputs into
/// `qr` with the scales `dr`, and the sums of the quants of every block of [`QBLOCK`]
/// (converted by `sum_as`) into `sr`; the blocks in AVX2 where the CPU has it (bit for bit
/// the same quants: 8 rows of a decode step's inputs were ~4% of its time in scalar code).
fn quantize_row<S>(
    xr: &[f32],
    block: usize,
    qr: &mut [i8],
    dr: &mut [f32],
    sr: &mut [S],
    sum_as: &impl Fn(i32) -> S,
) {
    let quantize: fn(&[f32], &mut [i8]) -> f32 = {
        #[cfg(target_arch = "x86_64")]
        if super::avx2::supported() {
            // SAFETY: the CPU has AVX2 (checked above).
            |xs, q| unsafe { quantize_block_avx2(xs, q) }
        } else {
            quantize_block
        }
        #[cfg(not(target_arch = "x86_64"))]
        quantize_block
    };
    let k = xr.len();
    for (b, (qb, db)) in qr.chunks_mut(block).zip(dr.iter_mut()).enumerate() {
        let start = (b * block).min(k);
        let end = ((b + 1) * block).min(k);
        *db = quantize(&xr[start..end], qb);
    }
    for (qb, sb) in qr.chunks_exact(QBLOCK).zip(sr.iter_mut()) {
        *sb = sum_as(qb.iter().map(|&v| v as i32).sum());
    }
}

/// [`quantize_block`] on 8 lanes, the same quants and scale bit for bit: `vmaxps` keeps the
/// running maximum when the input is a NaN (as `f32::max` does), the rounding is the same
/// additions, and NaN lanes are zeroed before the conversion (as `as i32` makes them 0).
/// `q.len()` is a multiple of 32 (a block of [`QBLOCK`] or [`QK_K`]).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn quantize_block_avx2(xs: &[f32], q: &mut [i8]) -> f32 {
    use std::arch::x86_64::*;
    let mut buf = [0f32; QK_K];
    let buf = &mut buf[..q.len()];
    buf[..xs.len()].copy_from_slice(xs);
    let magnitude = _mm256_castsi256_ps(_mm256_set1_epi32(0x7fff_ffff));
    let mut m = _mm256_setzero_ps();
    for c in buf.chunks_exact(8) {
        // SAFETY: `c` is 8 floats.
        let v = unsafe { _mm256_loadu_ps(c.as_ptr()) };
        m = _mm256_max_ps(_mm256_and_ps(v, magnitude), m);
    }
    let mut lanes = [0f32; 8];
    // SAFETY: `lanes` is 8 floats.
    unsafe { _mm256_storeu_ps(lanes.as_mut_ptr(), m) };
    let amax = lanes.iter().fold(0f32, |a, &v| a.max(v));
    let scale = amax / 127.0;
    let inv = if scale > 0.0 { 1.0 / scale } else { 0.0 };
    let (vinv, magic) = (_mm256_set1_ps(inv), _mm256_set1_ps(ROUND_MAGIC));
    for (o, c) in q.chunks_exact_mut(32).zip(buf.chunks_exact(32)) {
        let mut ints = [_mm256_setzero_si256(); 4];
        for (i, v8) in ints.iter_mut().zip(c.chunks_exact(8)) {
            // SAFETY: `v8` is 8 floats.
            let v = unsafe { _mm256_loadu_ps(v8.as_ptr()) };
            let r = _mm256_sub_ps(_mm256_add_ps(_mm256_mul_ps(v, vinv), magic), magic);
            let r = _mm256_and_ps(r, _mm256_cmp_ps::<_CMP_ORD_Q>(r, r));
            *i = _mm256_cvttps_epi32(r);
        }
        // |r| <= 127: the saturating packs keep every value; they interleave the 128-bit
        // halves, which the permutation puts back in order.
        let w01 = _mm256_packs_epi32(ints[0], ints[1]);
        let w23 = _mm256_packs_epi32(ints[2], ints[3]);
        let b = _mm256_packs_epi16(w01, w23);
        let b = _mm256_permutevar8x32_epi32(b, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
        // SAFETY: `o` is 32 bytes.
        unsafe { _mm256_storeu_si256(o.as_mut_ptr().cast(), b) };
    }
    scale
}

/// Rounds to the nearest bf16 (ties to even); NaN stays NaN.
#[inline]
pub fn f32_to_bf16(v: f32) -> u16 {
    let bits = v.to_bits();
    if v.is_nan() {
        return ((bits >> 16) | 0x40) as u16;
    }
    let rounding = 0x7fff + ((bits >> 16) & 1);
    (bits.wrapping_add(rounding) >> 16) as u16
}

/// The f32 value of bf16 bits.
#[inline]
pub fn bf16_to_f32(b: u16) -> f32 {
    f32::from_bits((b as u32) << 16)
}

/// Adding then subtracting 1.5·2²³ rounds an f32 of magnitude < 2²² to the nearest integer
/// (ties to even) with plain arithmetic, which vectorizes on every x86-64.
const ROUND_MAGIC: f32 = 12_582_912.0;

/// Quantizes `xs` into `q` (`xs.len() <= q.len() <= QK_K`; the rest of `q` is zero padding)
/// with one scale: `d = max|x| / 127` (NaNs ignored), `q = round(x / d)`; returns `d`.
fn quantize_block(xs: &[f32], q: &mut [i8]) -> f32 {
    // A fixed-size copy (zero padded) so that the loops vectorize.
    let mut buf = [0f32; QK_K];
    let buf = &mut buf[..q.len()];
    buf[..xs.len()].copy_from_slice(xs);
    let amax = buf.iter().fold(0f32, |m, v| m.max(v.abs()));
    let scale = amax / 127.0;
    let inv = if scale > 0.0 { 1.0 / scale } else { 0.0 };
    for (o, &v) in q.iter_mut().zip(buf.iter()) {
        *o = ((v * inv + ROUND_MAGIC) - ROUND_MAGIC) as i32 as i8;
    }
    scale
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every format's values start on a cache line, and q4k's rows too: the AMX-INT8
    /// kernels load 64 bytes of each row at a time, in place (see `aligned.rs`).
    #[test]
    fn values_and_q4k_rows_start_on_cache_lines() {
        let (rows, k) = (5, 2560 + 40);
        let x: Vec<f32> = (0..rows * k).map(|i| (i as f32 * 0.1).cos()).collect();
        for f in [WeightFormat::Q4K, WeightFormat::Q8_0, WeightFormat::Bf16] {
            let k_pad = f.padded_k(k);
            let start = match Acts::prepare(f, &x, rows, k, k_pad) {
                Acts::Bf16 { x } => x.as_ptr() as usize,
                Acts::Q8 { q, .. } | Acts::Q8K { q, .. } => q.as_ptr() as usize,
                Acts::F32 { .. } => unreachable!("prepared for {f}"),
            };
            assert_eq!(start % 64, 0, "{f}");
            if f == WeightFormat::Q4K {
                assert_eq!(k_pad % 64, 0, "{k_pad} bytes a row");
            }
        }
    }

    #[test]
    fn bf16_rounds_to_nearest_even() {
        assert_eq!(f32_to_bf16(1.0), 0x3f80);
        // 1 + 2^-8 is halfway between 1 and 1 + 2^-7: ties to even (1.0).
        assert_eq!(f32_to_bf16(1.0 + 1.0 / 256.0), 0x3f80);
        // Just above halfway rounds up.
        assert_eq!(f32_to_bf16(1.0 + 1.0 / 256.0 + 1.0 / 65536.0), 0x3f81);
        assert_eq!(bf16_to_f32(f32_to_bf16(-2.5)), -2.5);
        assert!(bf16_to_f32(f32_to_bf16(f32::NAN)).is_nan());
        assert_eq!(bf16_to_f32(f32_to_bf16(f32::INFINITY)), f32::INFINITY);
    }

    /// The quants, scales, block sums (as i32) and inputs per scale of 8-bit activations.
    fn parts(acts: &Acts<'_>) -> (Vec<i8>, Vec<f32>, Vec<i32>, usize) {
        match acts {
            Acts::Q8 { q, d, sum } => (q.to_vec(), d.clone(), sum.clone(), QBLOCK),
            Acts::Q8K { q, d, bsum } => (
                q.to_vec(),
                d.clone(),
                bsum.iter().map(|&s| s as i32).collect(),
                QK_K,
            ),
            _ => panic!("8-bit activations expected"),
        }
    }

    #[cfg(target_arch = "x86_64")]
    #[test]
    fn avx2_blocks_quantize_bit_for_bit() {
        if !crate::kernels::avx2::supported() {
            return;
        }
        let mut seed = 0x9e37_79b9_u32;
        let mut next = move || {
            seed ^= seed << 13;
            seed ^= seed >> 17;
            seed ^= seed << 5;
            seed
        };
        for case in 0..400 {
            let len = [QBLOCK, QK_K][case % 2];
            // Full blocks and a zero-padded tail, values over many magnitudes (random bits),
            // ties (multiples of a half step), zeros, infinities and NaNs.
            let n = if case % 3 == 0 {
                len - 1 - case % 29
            } else {
                len
            };
            let xs: Vec<f32> = (0..n)
                .map(|i| match (case / 6 + i) % 11 {
                    0 if case % 5 == 0 => f32::NAN,
                    1 if case % 7 == 0 => f32::INFINITY,
                    2 if case % 4 == 0 => 0.0,
                    3 => (next() % 255) as f32 * 0.5 - 63.5,
                    _ => {
                        f32::from_bits(next() & 0xbfff_ffff)
                            * if case % 2 == 0 { 1.0 } else { 1e-30 }
                    }
                })
                .collect();
            let (mut want, mut got) = (vec![1i8; len], vec![1i8; len]);
            let d_want = quantize_block(&xs, &mut want);
            // SAFETY: the CPU has AVX2 (checked above).
            let d_got = unsafe { quantize_block_avx2(&xs, &mut got) };
            assert_eq!(d_got.to_bits(), d_want.to_bits(), "case {case}");
            assert_eq!(got, want, "case {case}");
        }
    }

    #[test]
    fn q8_rows_reconstruct_and_pad_with_zeros() {
        // Two whole blocks and a tail of 6; one whole super-block and a tail of 44.
        for (format, k) in [(WeightFormat::Q8_0, 70), (WeightFormat::Q4K, 300)] {
            let k_pad = format.padded_k(k);
            let rows = 3;
            let x: Vec<f32> = (0..rows * k)
                .map(|i| ((i * 37 % 101) as f32 - 50.0) / 7.0)
                .collect();
            let (q, d, sum, block) = parts(&Acts::prepare(format, &x, rows, k, k_pad));
            assert_eq!(q.len(), rows * k_pad);
            assert_eq!(d.len(), rows * k_pad / block);
            assert_eq!(sum.len(), rows * k_pad / QBLOCK);
            for r in 0..rows {
                for i in 0..k_pad {
                    let b = r * (k_pad / block) + i / block;
                    let back = q[r * k_pad + i] as f32 * d[b];
                    let orig = if i < k { x[r * k + i] } else { 0.0 };
                    assert!((back - orig).abs() <= d[b] * 0.5 + 1e-6, "{format} {r} {i}");
                    if i >= k {
                        assert_eq!(q[r * k_pad + i], 0);
                    }
                }
                for b in 0..k_pad / QBLOCK {
                    let s: i32 = q[r * k_pad + b * QBLOCK..][..QBLOCK]
                        .iter()
                        .map(|&v| v as i32)
                        .sum();
                    assert_eq!(s, sum[r * (k_pad / QBLOCK) + b], "{format}");
                }
                // The largest magnitude of every scale block maps to ±127.
                for qb in q[r * k_pad..(r + 1) * k_pad].chunks_exact(block) {
                    assert_eq!(qb.iter().map(|v| v.unsigned_abs()).max(), Some(127));
                }
            }
        }
    }

    #[test]
    fn prepared_on_threads_equals_prepared_inline() {
        let k = 300; // a partial last block and super-block
        for rows in [0, 1, 3, 20] {
            let x: Vec<f32> = (0..rows * k)
                .map(|i| (i as f32 * 0.53).cos() * 4.0)
                .collect();
            for f in [
                WeightFormat::Q4K,
                WeightFormat::Q8_0,
                WeightFormat::Bf16,
                WeightFormat::F32,
            ] {
                let k_pad = f.padded_k(k);
                let want = Acts::prepare(f, &x, rows, k, k_pad);
                // Tasks run in reverse order on scoped threads, two at a time.
                let threads = |n: usize, task: &(dyn Fn(usize) + Sync)| {
                    std::thread::scope(|s| {
                        for i in (0..n).rev() {
                            s.spawn(move || task(i));
                        }
                    })
                };
                let got = Acts::prepare_on(f, &x, rows, k, k_pad, &threads);
                assert!(got.fits(f, rows, k_pad), "{f} {rows}");
                assert_eq!(format!("{got:?}"), format!("{want:?}"), "{f} {rows} rows");
            }
        }
        let x = vec![1f32; 2 * 256];
        let a = Acts::prepare(WeightFormat::Q4K, &x, 2, 256, 256);
        assert!(!a.fits(WeightFormat::Q4K, 1, 256));
        assert!(!a.fits(WeightFormat::Q8_0, 2, 256));
    }

    #[test]
    fn many_rows_prepare_like_few_rows() {
        let k = 40;
        let rows = 20;
        let x: Vec<f32> = (0..rows * k).map(|i| (i as f32 * 0.37).sin()).collect();
        for f in [WeightFormat::Q4K, WeightFormat::Q8_0, WeightFormat::Bf16] {
            let k_pad = f.padded_k(k);
            let all = Acts::prepare(f, &x, rows, k, k_pad);
            for r in [0, 7, 19] {
                let one = Acts::prepare(f, &x[r * k..(r + 1) * k], 1, k, k_pad);
                match (&all, &one) {
                    (Acts::Bf16 { x }, Acts::Bf16 { x: x1 }) => {
                        assert_eq!(&x[r * k_pad..(r + 1) * k_pad], &x1[..]);
                    }
                    _ => {
                        let (q, d, sum, block) = parts(&all);
                        let (q1, d1, sum1, _) = parts(&one);
                        assert_eq!(&q[r * k_pad..(r + 1) * k_pad], &q1[..]);
                        let (nd, ns) = (k_pad / block, k_pad / QBLOCK);
                        assert_eq!(&d[r * nd..(r + 1) * nd], &d1[..]);
                        assert_eq!(&sum[r * ns..(r + 1) * ns], &sum1[..]);
                    }
                }
            }
        }
    }
}
