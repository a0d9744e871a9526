//! AVX-512 products with many activation rows (prefill) that multiply several weight tiles
//! at once: bf16 weights with `vdpbf16ps` (AVX512-BF16), f32 weights with FMAs.
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
//!
//! f32 weights take the same walk with one input where bf16 has a pair (a 64-byte vector is
//! 16 outputs of one f32 input): the f32 tile kernel also sums even and odd inputs apart
//! (the last odd input in the even sum), so the FMAs per output are the tile kernel's, in
//! its order. The f32 tile kernel loads a weight vector and 8 broadcasts per 8 FMAs, bound
//! by the load ports on cores with two 512-bit loads a cycle; here 10 loads feed 24 FMAs.

// Indexed loops over register arrays (tiles × rows) read like the arithmetic they do.
#![allow(clippy::needless_range_loop)]

use std::arch::x86_64::*;

use super::OutPtr;
use super::acts::{Acts, ForEach};
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
    matches!(format, super::WeightFormat::Bf16 | super::WeightFormat::F32)
}

/// `y = acts · Wᵀ (+ bias)` for the `rows` rows of `acts`, in tasks of whole tile groups run
/// by `for_each` (see [`super::acts::ForEach`]: rayon's pool or a step's team).
///
/// # Safety
/// The CPU must support AVX-512 F/BW/VL/VNNI, and AVX512-BF16 for bf16 weights; `w` must
/// hold bf16 or f32 weights and `acts` be prepared for it with `rows` rows of `w.k_pad()`
/// inputs ([`Acts::fits`]); `y` holds `rows × w.n_out()` values and `bias`, if any,
/// `w.n_out()`.
pub unsafe fn matmul(
    w: &PackedMatrix,
    acts: &Acts<'_>,
    rows: usize,
    bias: Option<&[f32]>,
    y: &mut [f32],
    for_each: &ForEach<'_>,
) {
    debug_assert!(acts.fits(w.format(), rows, w.k_pad()));
    match acts {
        // SAFETY: the forwarded contract (AVX512-BF16 for bf16 weights).
        Acts::Bf16 { x } => unsafe {
            tiles::<Bf16Dot>(w, x, w.k_pad() / 2, rows, bias, y, for_each)
        },
        Acts::F32 { x } => {
            // One f32 input is one 64-byte weight vector (a "pair" of the walk) and 4 bytes
            // of activations, i.e. two u16 of the walk's activation rows.
            // SAFETY: `u16` has no invalid values and an alignment dividing f32's.
            let x = unsafe { std::slice::from_raw_parts(x.as_ptr().cast::<u16>(), 2 * x.len()) };
            // SAFETY: the forwarded contract.
            unsafe { tiles::<F32Fma>(w, x, w.k_pad(), rows, bias, y, for_each) }
        }
        _ => unreachable!("the wide kernels take bf16 or f32 weights and their activations"),
    }
}

/// [`matmul`] for `pairs` 64-byte weight vectors a tile, multiplied by `M`.
///
/// # Safety
/// [`matmul`]'s, with `x` holding `rows × 2·pairs` u16 of activations.
unsafe fn tiles<M: Micro>(
    w: &PackedMatrix,
    x: &[u16],
    pairs: usize,
    rows: usize,
    bias: Option<&[f32]>,
    y: &mut [f32],
    for_each: &ForEach<'_>,
) {
    let out = OutPtr(y.as_mut_ptr());
    for_groups(
        w.tiles(),
        rows,
        || (),
        |_, acc, t0, g| {
            let mut src = Packed {
                tiles: std::array::from_fn(|i| w.tile(t0 + i.min(g - 1)).as_ptr()),
            };
            // SAFETY: the forwarded contract: tiles t0..t0 + g exist with `pairs` vectors,
            // `x` holds `rows` rows of 2·pairs u16, `acc` rows · BF16_ACC_ROW floats.
            unsafe { group::<M>(&mut src, g, pairs, x, rows, acc) };
            // SAFETY: this task alone writes the columns of its tiles (`for_groups`).
            unsafe { store(acc, rows, t0, g, w.n_out(), out, bias) };
        },
        for_each,
    );
}

/// Runs `body(state, acc, t0, g)` for every group of `g <= BF16_TILES` tiles `t0..t0 + g`
/// of a matrix of `tiles` tiles, in tasks of whole groups run by `for_each`: each task
/// makes its `state` with `init` (e.g. a scratch buffer) and a buffer `acc` of `rows ×
/// BF16_ACC_ROW` partial sums. Tasks take disjoint tiles.
pub(super) fn for_groups<S>(
    tiles: usize,
    rows: usize,
    init: impl Fn() -> S + Sync,
    body: impl Fn(&mut S, &mut [f32], usize, usize) + Sync,
    for_each: &ForEach<'_>,
) {
    let per_task = super::many_rows_tiles_per_task(tiles).next_multiple_of(BF16_TILES);
    for_each(tiles.div_ceil(per_task), &|task| {
        let mut state = init();
        let mut acc = vec![0f32; rows * BF16_ACC_ROW];
        let end = ((task + 1) * per_task).min(tiles);
        let mut t = task * per_task;
        while t < end {
            let g = (end - t).min(BF16_TILES);
            body(&mut state, &mut acc, t, g);
            t += g;
        }
    });
}

/// Where [`group`] reads a group's bf16 weights from, chunk by chunk: every tile as pairs
/// of inputs, 64 bytes each (16 rows × 2 bf16, the packed bf16 layout).
pub(super) trait ChunkSource {
    /// Pointers to pair `c0` of the group's tiles (entries from `g` on repeat the last
    /// one), each followed by pairs `c0 + 1..c1`; valid until the next call.
    ///
    /// # Safety
    /// `c0 < c1 <= ` the group's pairs, `c1 - c0 <= BF16_KC`, and the CPU supports the
    /// features of [`group`].
    unsafe fn chunk(&mut self, c0: usize, c1: usize) -> [*const u8; BF16_TILES];

    /// The memory [`Self::chunk`]`(c0, c1)` reads: its first byte in each of the group's
    /// tiles (entries from `g` on unused) and its bytes per tile. [`group`] prefetches it
    /// while the chunk before it is multiplied.
    fn memory(&self, c0: usize, c1: usize) -> ([*const u8; BF16_TILES], usize);
}

/// The tiles of packed bf16 weights, read in place.
struct Packed {
    /// Pair 0 of each tile.
    tiles: [*const u8; BF16_TILES],
}

impl ChunkSource for Packed {
    unsafe fn chunk(&mut self, c0: usize, _c1: usize) -> [*const u8; BF16_TILES] {
        // SAFETY: pair c0 exists in every tile (the caller's contract).
        std::array::from_fn(|i| unsafe { self.tiles[i].add(c0 * 64) })
    }

    fn memory(&self, c0: usize, c1: usize) -> ([*const u8; BF16_TILES], usize) {
        (
            std::array::from_fn(|i| self.tiles[i].wrapping_add(c0 * 64)),
            (c1 - c0) * 64,
        )
    }
}

/// Prefetches (into L2) part `part` of `parts` of the memory of a chunk, `bytes` from each
/// of the first `g` pointers of `at`: spread over a chunk's micro-kernel calls, the next
/// chunk arrives while the current one is multiplied instead of stalling the first pass
/// over it.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni")]
fn prefetch_part(at: &[*const u8; BF16_TILES], g: usize, bytes: usize, part: usize, parts: usize) {
    let lines = bytes.div_ceil(64);
    let (lo, hi) = (lines * part / parts, lines * (part + 1) / parts);
    for p in &at[..g] {
        for l in lo..hi {
            // A hint: it reads nothing observable and never faults.
            _mm_prefetch::<_MM_HINT_T1>(p.wrapping_add(l * 64).cast());
        }
    }
}

/// A group of `g <= BF16_TILES` tiles of `pairs` input pairs (from `src`) times all `rows`
/// rows of `x` (`rows × 2·pairs` bf16 values, or `rows × pairs` f32 ones as u16 pairs)
/// into `acc` (even and odd partial sums per row, see [`store`]) by the micro-kernel `M`,
/// chunk by chunk of [`BF16_KC`] pairs.
///
/// # Safety
/// The CPU supports AVX-512 F/BW/VL/VNNI and what `M` needs; `src` yields `pairs` pairs of
/// `g` tiles, `x` holds `rows × 2·pairs` values and `acc` `rows × BF16_ACC_ROW` floats.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni")]
pub(super) unsafe fn group<M: Micro>(
    src: &mut impl ChunkSource,
    g: usize,
    pairs: usize,
    x: &[u16],
    rows: usize,
    acc: &mut [f32],
) {
    let k_pad = 2 * pairs;
    debug_assert!(x.len() >= rows * k_pad && acc.len() >= rows * BF16_ACC_ROW);
    let mut c0 = 0;
    while c0 < pairs {
        let c1 = (c0 + BF16_KC).min(pairs);
        // SAFETY: c0 < c1 <= pairs, at most BF16_KC apart; the CPU's features (caller).
        let chunk = unsafe { src.chunk(c0, c1) };
        // The next chunk's memory, prefetched a part after every micro-kernel call.
        let (next, next_bytes) = src.memory(c1, (c1 + BF16_KC).min(pairs));
        let parts = 2 * rows.div_ceil(BF16_ROWS);
        let mut part = 0;
        for parity in 0..2 {
            // Pairs c0 + parity, c0 + parity + 2, … below c1 (c0 is even).
            let n = (c1 - c0).saturating_sub(parity).div_ceil(2);
            // The first chunk's sums start from zero (instead of from `acc`).
            let first = c0 == 0;
            if n == 0 {
                if first {
                    // One pair in all: no odd pairs, zero odd sums.
                    for r in 0..rows {
                        acc[r * BF16_ACC_ROW + parity * BF16_TILES * TILE..][..BF16_TILES * TILE]
                            .fill(0.0);
                    }
                }
                continue;
            }
            let p = c0 + parity;
            // SAFETY (both): pair p of every tile and row exists (p < c1), and `n` steps
            // of 2 pairs stay below c1.
            let wp: [*const u8; BF16_TILES] =
                std::array::from_fn(|i| unsafe { chunk[i].add(parity * 64) });
            let mut r0 = 0;
            while r0 < rows {
                let nr = (rows - r0).min(BF16_ROWS);
                // SAFETY: rows r0..r0 + nr exist in `x` and `acc` (the loop); see above.
                unsafe {
                    let xp = x.as_ptr().add(r0 * k_pad + 2 * p).cast::<u8>();
                    let ap = acc
                        .as_mut_ptr()
                        .add(r0 * BF16_ACC_ROW + parity * BF16_TILES * TILE);
                    M::rows_of(g, nr, &wp, xp, 2 * k_pad, n, ap, first);
                }
                if c1 < pairs {
                    prefetch_part(&next, g, next_bytes, part, parts);
                }
                part += 1;
                r0 += nr;
            }
        }
        c0 = c1;
    }
}

/// Writes the sums of tiles `t0..t0 + g` (even + odd accumulators of `acc`, plus `bias`)
/// into `out`: one vector per row and tile, the columns past `n_out` masked off.
///
/// # Safety
/// The CPU supports AVX-512 F/BW/VL/VNNI; `out` holds `rows × n_out` values, no other task
/// writes the tiles' columns, `acc` holds `rows × BF16_ACC_ROW` floats and `bias`, if any,
/// `n_out` values.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni")]
pub(super) unsafe fn store(
    acc: &[f32],
    rows: usize,
    t0: usize,
    g: usize,
    n_out: usize,
    out: OutPtr,
    bias: Option<&[f32]>,
) {
    debug_assert!(acc.len() >= rows * BF16_ACC_ROW && (t0 + g - 1) * TILE < n_out);
    debug_assert!(bias.is_none_or(|b| b.len() >= n_out));
    // Per tile of the group: its first column and the mask of its columns below n_out.
    let tiles: [(usize, __mmask16); BF16_TILES] = std::array::from_fn(|i| {
        let col = (t0 + i) * TILE;
        let n = n_out.saturating_sub(col).min(TILE);
        (col, ((1u32 << n) - 1) as __mmask16)
    });
    // SAFETY (whole body): the masks keep every load of `bias` and store into `out` inside
    // their `n_out` columns (the caller's contract for their sizes), `acc` rows < rows.
    unsafe {
        let b: [__m512; BF16_TILES] = std::array::from_fn(|i| match bias {
            Some(bias) if i < g => _mm512_maskz_loadu_ps(tiles[i].1, bias.as_ptr().add(tiles[i].0)),
            _ => _mm512_setzero_ps(),
        });
        for r in 0..rows {
            let a = acc.as_ptr().add(r * BF16_ACC_ROW);
            for i in 0..g {
                let (col, mask) = tiles[i];
                let even = _mm512_loadu_ps(a.add(i * TILE));
                let odd = _mm512_loadu_ps(a.add(BF16_TILES * TILE + i * TILE));
                let sum = _mm512_add_ps(even, odd);
                // The tile kernels' store: the sum, then the bias added (if any).
                let v = if bias.is_some() {
                    _mm512_add_ps(sum, b[i])
                } else {
                    sum
                };
                _mm512_mask_storeu_ps(out.at(r * n_out + col), mask, v);
            }
        }
    }
}

/// A micro-kernel of the walk: `G` tiles times `R` rows over `n` weight vectors of one
/// parity, vector `i` at `w[g] + 128·i` in tile `g` and its activations at `x + r·stride +
/// 8·i` in row `r` (bytes); the sums start from `acc` (from zero if `first`) and return to
/// it (row `r`, tile `g` at `acc + r·BF16_ACC_ROW + 16·g`).
pub(super) trait Micro {
    /// Runs the micro-kernel for `g <= BF16_TILES` tiles and `nr <= BF16_ROWS` rows.
    ///
    /// # Safety
    /// The CPU supports the instructions of the micro-kernel; those weight vectors,
    /// activations and sums exist.
    #[allow(clippy::too_many_arguments)]
    unsafe fn rows_of(
        g: usize,
        nr: usize,
        w: &[*const u8; BF16_TILES],
        x: *const u8,
        stride: usize,
        n: usize,
        acc: *mut f32,
        first: bool,
    );
}

/// Calls `$micro::<$g, R>(args…)` for the `$nr` rows of a call (`$g` a literal).
macro_rules! micro_rows {
    ($micro:ident, $g:literal, $nr:expr, $args:tt) => {
        match $nr {
            6 => $micro::<$g, 6> $args,
            5 => $micro::<$g, 5> $args,
            4 => $micro::<$g, 4> $args,
            3 => $micro::<$g, 3> $args,
            2 => $micro::<$g, 2> $args,
            _ => $micro::<$g, 1> $args,
        }
    };
}

/// Calls `$micro::<G, R>(args…)` for the `$g` tiles and `$nr` rows of a call.
macro_rules! micro_call {
    ($micro:ident, $g:expr, $nr:expr, $args:tt) => {
        match $g {
            4 => micro_rows!($micro, 4, $nr, $args),
            3 => micro_rows!($micro, 3, $nr, $args),
            2 => micro_rows!($micro, 2, $nr, $args),
            _ => micro_rows!($micro, 1, $nr, $args),
        }
    };
}

/// `impl Micro for $kind` calling `$micro::<G, R>` for each call's tiles and rows.
macro_rules! micro_impl {
    ($kind:ident, $micro:ident) => {
        impl Micro for $kind {
            unsafe fn rows_of(
                g: usize,
                nr: usize,
                w: &[*const u8; BF16_TILES],
                x: *const u8,
                stride: usize,
                n: usize,
                acc: *mut f32,
                first: bool,
            ) {
                // SAFETY: the forwarded contract (the CPU runs `$micro`'s instructions).
                unsafe { micro_call!($micro, g, nr, (w, x, stride, n, acc, first)) }
            }
        }
    };
}

/// bf16 weights and activations, `vdpbf16ps` ([`bf16_micro`]; needs AVX512-BF16).
pub(super) struct Bf16Dot;
micro_impl!(Bf16Dot, bf16_micro);

/// f32 weights and activations, FMAs ([`f32_micro`]).
pub(super) struct F32Fma;
micro_impl!(F32Fma, f32_micro);

/// A micro-kernel's `G × R` partial sums from `acc` (row `r`, tile `g` at `acc +
/// r·BF16_ACC_ROW + 16·g`), or zeros if `first`.
///
/// # Safety
/// Unless `first`, those sums exist.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni")]
unsafe fn sums_in<const G: usize, const R: usize>(
    acc: *const f32,
    first: bool,
) -> [[__m512; R]; G] {
    if first {
        return [[_mm512_setzero_ps(); R]; G];
    }
    // SAFETY: the caller's contract.
    std::array::from_fn(|g| {
        std::array::from_fn(|r| unsafe { _mm512_loadu_ps(acc.add(r * BF16_ACC_ROW + g * TILE)) })
    })
}

/// Stores a micro-kernel's partial sums where [`sums_in`] reads them.
///
/// # Safety
/// Room for those sums at `acc`.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni")]
unsafe fn sums_out<const G: usize, const R: usize>(acc: *mut f32, a: &[[__m512; R]; G]) {
    for g in 0..G {
        for r in 0..R {
            // SAFETY: the caller's contract.
            unsafe { _mm512_storeu_ps(acc.add(r * BF16_ACC_ROW + g * TILE), a[g][r]) };
        }
    }
}

/// [`Micro`] for f32: `G` tiles times `R` rows, one input per weight vector, the tile
/// kernel's FMA (`x · w + acc`) per input.
///
/// # Safety
/// As [`Micro::rows_of`].
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni")]
unsafe fn f32_micro<const G: usize, const R: usize>(
    w: &[*const u8; BF16_TILES],
    x: *const u8,
    stride: usize,
    n: usize,
    acc: *mut f32,
    first: bool,
) {
    // SAFETY (whole body): the caller's contract.
    unsafe {
        let mut a = sums_in::<G, R>(acc, first);
        for i in 0..n {
            let wv: [__m512; G] =
                std::array::from_fn(|g| _mm512_loadu_ps(w[g].add(i * 128).cast()));
            for r in 0..R {
                let xb = _mm512_set1_ps(x.add(r * stride + i * 8).cast::<f32>().read_unaligned());
                for g in 0..G {
                    a[g][r] = _mm512_fmadd_ps(xb, wv[g], a[g][r]);
                }
            }
        }
        sums_out(acc, &a);
    }
}

/// `G` tiles times `R` rows over `n` input pairs of one parity: pair `i` of the walk is at
/// `w[g] + 128·i` in tile `g` and at `x + r·stride + 8·i` in row `r` (bytes); the sums
/// start from `acc` (from zero if `first`) and return to it (row `r`, tile `g` at
/// `acc + r·BF16_ACC_ROW + 16·g`).
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
    first: bool,
) {
    let bh = |v: __m512i| -> __m512bh {
        // SAFETY: both are 512 bits of plain data.
        unsafe { std::mem::transmute::<__m512i, __m512bh>(v) }
    };
    // SAFETY (whole body): the caller's contract.
    unsafe {
        let mut a = sums_in::<G, R>(acc, first);
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
        sums_out(acc, &a);
    }
}
