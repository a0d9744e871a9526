//! AVX-512 products with many activation rows (prefill) that multiply several weight tiles
//! at once: bf16 weights with `vdpbf16ps` (AVX512-BF16).
//!
//! The tile kernels ([`super::avx512`]) multiply one tile (16 outputs) with up to 8 rows
//! per call: every `vdpbf16ps` needs one broadcast load of an activation pair plus 1/8 of a
//! weight load, so they are bound by the load ports, not by the dot-product units. Here a
//! micro-kernel multiplies [`BF16_TILES`] tiles (64 outputs) with [`BF16_ROWS`] rows: each
//! broadcast activation feeds 4 instructions and each weight vector 6 (10 loads per 24
//! `vdpbf16ps` instead of 9 per 8). The inputs are walked in chunks of [`BF16_KC`] pairs
//! (the chunk of the tiles' weights stays in L1 while every row passes), the partial sums
//! kept in a small per-task buffer between chunks.
//!
//! Arithmetic: the tile kernel's, bit for bit. It sums the even input pairs in one
//! accumulator and the odd ones in another (in input order each, the last odd pair in the
//! even accumulator) and adds the two at the end; here one pass over a chunk runs the even
//! pairs into their accumulators and a second the odd ones, so every output sees the same
//! `vdpbf16ps` sequence, and the final add is the same f32 add (tested in `tests.rs`).

// Indexed loops over register arrays (tiles × rows) read like the arithmetic they do.
#![allow(clippy::needless_range_loop)]

use std::arch::x86_64::*;

use rayon::prelude::*;

use super::OutPtr;
use super::acts::Acts;
use super::format::TILE;
use super::pack::PackedMatrix;

/// Tiles one bf16 micro-kernel multiplies at once (64 outputs).
pub const BF16_TILES: usize = 4;
/// Activation rows of the bf16 micro-kernel: 4 tiles × 6 rows = 24 accumulators, 4 weight
/// vectors and a broadcast in the 32 zmm registers.
pub const BF16_ROWS: usize = 6;
/// Input pairs per chunk: 4 tiles × 128 pairs × 64 bytes = 32 KiB of weights (L1).
pub const BF16_KC: usize = 128;

/// f32 values of one row's partial sums in a task's buffer: (even, odd) × tiles × 16.
const BF16_ACC_ROW: usize = 2 * BF16_TILES * TILE;

/// Whether this CPU runs these kernels: the AVX-512 tile kernels' features and
/// AVX512-BF16 (the dispatcher checks them through `KernelPath::route`).
#[cfg(test)]
pub fn supported() -> bool {
    super::avx512::supported() && super::avx512::has_bf16()
}

/// Whether these kernels multiply `format` weights (`KernelPath::route` routes those).
#[cfg(test)]
pub fn takes(format: super::WeightFormat) -> bool {
    format == super::WeightFormat::Bf16
}

/// `y = acts · Wᵀ (+ bias)` for the `rows` rows of `acts`, in tasks of whole tile groups on
/// rayon's pool.
///
/// # Safety
/// The CPU must support AVX-512 F/BW/VL/VNNI and AVX512-BF16; `w` must hold bf16 weights
/// and `acts` be prepared for it with `rows` rows of `w.k_pad()` inputs
/// ([`Acts::fits`]); `y` holds `rows × w.n_out()` values and `bias`, if any, `w.n_out()`.
pub unsafe fn matmul(
    w: &PackedMatrix,
    acts: &Acts<'_>,
    rows: usize,
    bias: Option<&[f32]>,
    y: &mut [f32],
) {
    let Acts::Bf16 { x } = acts else {
        unreachable!("the wide kernels take bf16 weights and their activations");
    };
    debug_assert!(acts.fits(w.format(), rows, w.k_pad()));
    let out = OutPtr(y.as_mut_ptr());
    let tiles = w.tiles();
    let per_task = super::many_rows_tiles_per_task(tiles).next_multiple_of(BF16_TILES);
    (0..tiles.div_ceil(per_task))
        .into_par_iter()
        .for_each(|task| {
            let mut acc = vec![0f32; rows * BF16_ACC_ROW];
            let end = ((task + 1) * per_task).min(tiles);
            let mut t = task * per_task;
            while t < end {
                let g = (end - t).min(BF16_TILES);
                // SAFETY: the forwarded contract: tiles t..t + g exist, `x` holds `rows`
                // rows of k_pad bf16 values, `acc` rows · BF16_ACC_ROW floats; this task
                // alone writes the columns of its tiles.
                unsafe { bf16_group(w, t, g, x, rows, &mut acc, out, bias) };
                t += g;
            }
        });
}

/// Tiles `t0..t0 + g` (`g <= BF16_TILES`) of bf16 `w` times all `rows` rows of `x` into
/// their columns of `out` (+ `bias`), chunk by chunk of the inputs.
///
/// # Safety
/// As [`matmul`]; the tiles exist, `acc` holds `rows × BF16_ACC_ROW` floats and no other
/// task writes the tiles' columns.
#[allow(clippy::too_many_arguments)]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx512bf16")]
unsafe fn bf16_group(
    w: &PackedMatrix,
    t0: usize,
    g: usize,
    x: &[u16],
    rows: usize,
    acc: &mut [f32],
    out: OutPtr,
    bias: Option<&[f32]>,
) {
    let k_pad = w.k_pad();
    let pairs = k_pad / 2;
    let tw: [*const u8; BF16_TILES] = std::array::from_fn(|i| w.tile(t0 + i.min(g - 1)).as_ptr());
    acc.fill(0.0);
    let mut c0 = 0;
    while c0 < pairs {
        let c1 = (c0 + BF16_KC).min(pairs);
        for parity in 0..2 {
            // Pairs c0 + parity, c0 + parity + 2, … below c1 (c0 is even).
            let n = (c1 - c0).saturating_sub(parity).div_ceil(2);
            if n == 0 {
                continue;
            }
            let p = c0 + parity;
            // SAFETY (both): pair p of every tile and row exists (p < pairs), and `n` steps
            // of 2 pairs stay below `pairs`.
            let wp: [*const u8; BF16_TILES] = std::array::from_fn(|i| unsafe { tw[i].add(p * 64) });
            let mut r0 = 0;
            while r0 < rows {
                let nr = (rows - r0).min(BF16_ROWS);
                // SAFETY: rows r0..r0 + nr exist in `x` and `acc` (the loop); see above.
                unsafe {
                    let xp = x.as_ptr().add(r0 * k_pad + 2 * p).cast::<u8>();
                    let ap = acc
                        .as_mut_ptr()
                        .add(r0 * BF16_ACC_ROW + parity * BF16_TILES * TILE);
                    bf16_rows_of(g, nr, &wp, xp, 2 * k_pad, n, ap);
                }
                r0 += nr;
            }
        }
        c0 = c1;
    }
    bf16_store(acc, rows, t0, g, w.n_out(), out, bias);
}

/// Writes the sums of tiles `t0..t0 + g` (even + odd accumulators of `acc`) into `out`.
fn bf16_store(
    acc: &[f32],
    rows: usize,
    t0: usize,
    g: usize,
    n_out: usize,
    out: OutPtr,
    bias: Option<&[f32]>,
) {
    let mut vals = [0f32; TILE];
    for r in 0..rows {
        let even = &acc[r * BF16_ACC_ROW..][..BF16_TILES * TILE];
        let odd = &acc[r * BF16_ACC_ROW + BF16_TILES * TILE..][..BF16_TILES * TILE];
        for i in 0..g {
            for j in 0..TILE {
                vals[j] = even[i * TILE + j] + odd[i * TILE + j];
            }
            // SAFETY: row r < rows of an output of rows × n_out values (the caller's
            // contract), columns of this task's tile t0 + i only.
            unsafe { out.store_row(n_out, r, (t0 + i) * TILE, &vals, bias) };
        }
    }
}

/// Calls [`bf16_micro`] for `g` tiles and `nr` rows.
///
/// # Safety
/// As [`bf16_micro`].
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx512bf16")]
unsafe fn bf16_rows_of(
    g: usize,
    nr: usize,
    w: &[*const u8; BF16_TILES],
    x: *const u8,
    stride: usize,
    n: usize,
    acc: *mut f32,
) {
    macro_rules! rows {
        ($g:literal) => {
            // SAFETY: the forwarded contract.
            unsafe {
                match nr {
                    6 => bf16_micro::<$g, 6>(w, x, stride, n, acc),
                    5 => bf16_micro::<$g, 5>(w, x, stride, n, acc),
                    4 => bf16_micro::<$g, 4>(w, x, stride, n, acc),
                    3 => bf16_micro::<$g, 3>(w, x, stride, n, acc),
                    2 => bf16_micro::<$g, 2>(w, x, stride, n, acc),
                    _ => bf16_micro::<$g, 1>(w, x, stride, n, acc),
                }
            }
        };
    }
    match g {
        4 => rows!(4),
        3 => rows!(3),
        2 => rows!(2),
        _ => rows!(1),
    }
}

/// `G` tiles times `R` rows over `n` input pairs of one parity: pair `i` of the walk is at
/// `w[g] + 128·i` in tile `g` and at `x + r·stride + 8·i` in row `r` (bytes); the sums
/// start from and return to `acc` (row `r`, tile `g` at `acc + r·BF16_ACC_ROW + 16·g`).
///
/// # Safety
/// The CPU supports AVX512-BF16; those weight vectors, activation pairs and sums exist.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx512bf16")]
unsafe fn bf16_micro<const G: usize, const R: usize>(
    w: &[*const u8; BF16_TILES],
    x: *const u8,
    stride: usize,
    n: usize,
    acc: *mut f32,
) {
    let bh = |v: __m512i| -> __m512bh {
        // SAFETY: both are 512 bits of plain data.
        unsafe { std::mem::transmute::<__m512i, __m512bh>(v) }
    };
    // SAFETY (whole body): the caller's contract.
    unsafe {
        let mut a = [[_mm512_setzero_ps(); R]; G];
        for g in 0..G {
            for r in 0..R {
                a[g][r] = _mm512_loadu_ps(acc.add(r * BF16_ACC_ROW + g * TILE));
            }
        }
        for i in 0..n {
            let wv: [__m512bh; G] =
                std::array::from_fn(|g| bh(_mm512_loadu_si512(w[g].add(i * 128).cast())));
            for r in 0..R {
                let xb = bh(_mm512_set1_epi32(
                    x.add(r * stride + i * 8).cast::<i32>().read_unaligned(),
                ));
                for g in 0..G {
                    a[g][r] = _mm512_dpbf16_ps(a[g][r], xb, wv[g]);
                }
            }
        }
        for g in 0..G {
            for r in 0..R {
                _mm512_storeu_ps(acc.add(r * BF16_ACC_ROW + g * TILE), a[g][r]);
            }
        }
    }
}
