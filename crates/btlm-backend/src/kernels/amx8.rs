//! AMX-INT8 many-rows kernels for q4k weights (prompts, large batches): the integer sums of
//! the AVX-512 tile kernels computed on the tile unit (`tdpbsud`: signed 8-bit activations ×
//! unsigned 8-bit weights, i32 sums), 16 activation rows per product.
//!
//! **Bit for bit the tile kernels' results.** q4k's per-sub-block 6-bit scale `sc` is folded
//! into the weights, split in two so that each product fits a byte: the `B` tiles hold
//! `q · (sc & 7)` and `q · (sc >> 3)` (at most 15 · 7 = 105), and `lo + 8·hi` over a
//! super-block is exactly the `Σ_j sc_j · Σ q·a` the AVX-512 kernel accumulates in i32 (all
//! integer, exact on either unit); from there the same f32 operations in the same order
//! (`scale`). So a row gets the same bits on this route as alone on the tile kernels, and
//! prompt pieces may share the decode rows' pass (`KernelPath::rows_independent`).
//!
//! Per tile (16 outputs) and super-block (256 inputs): the weights are unpacked once into
//! eight `B` tiles (4 steps of 64 inputs × the two scale parts, 8 KiB), then every block of
//! 16 activation rows multiplies them: `A` tiles read in place from the quantized
//! activations (rows `k_pad` bytes apart; a last partial block from a zero-padded copy), two
//! `C` tiles of sums, stored and rescaled into the rows' f32 sums in AVX-512 while the tile
//! unit works on the next block (two sets of `C` registers alternate).

// Indexed loops over register arrays (rows) read like the arithmetic they do.
#![allow(clippy::needless_range_loop)]

use std::arch::asm;
use std::arch::x86_64::*;

use super::OutPtr;
use super::acts::{Acts, ForEach};
use super::aligned::AlignedVec;
use super::amx::Tiles;
use super::avx512::{into_l1, pair_mins, q4k_row, q4k_scales_mins};
use super::format::{Q4K_TILE_BLOCK, QBLOCK, QK_K, TILE, q4k_off};
use super::pack::PackedMatrix;
use std::mem::MaybeUninit;

/// Activation rows per tile product.
const MB: usize = 16;

/// Bytes of one super-block's `B` tiles: per step `t` of 64 inputs, the weights times the
/// low 3 bits of their sub-block's scale (1 KiB), then times the high 3 bits.
const B_BYTES: usize = 4 * 2 * 1024;

/// Activation rows one pass over the weights takes at most (about: see [`passes`]).
///
/// A pass multiplies every tile of the weights by all of its rows, reading the rows'
/// activations again for each tile, so they must stay in L2: 128 rows of `mlp.c_proj`'s
/// 6 912 quantized inputs are 885 KB of a 2 MiB L2, where one pass of 1 024 rows read 7 MB
/// from farther for every tile. Eight 128-token prompts prefilled in one product took
/// 6.60–6.95 s (147–155 tok/s) in one pass, 4.26–4.47 s (229–240 tok/s) in passes of 128
/// rows (64 or 192: 4.4 s; a budget of 0.7–2 MB of activations a pass: 4.5–4.8 s); up to
/// ~264 rows (the engine's default steps) one pass and passes measure alike
/// (`batch_decode … --batches 2|8 --context 128|33 --sections`, docs/benchmarks.md,
/// session 37).
pub const PASS_ROWS: usize = 128;

/// The row ranges of the passes of a product of `rows` rows: `rows.div_ceil(PASS_ROWS)`
/// passes of nearly equal size (at most `PASS_ROWS + 15` rows), each starting at a multiple
/// of 16 rows so that only the last pass has a partial block of 16 rows.
pub fn passes(rows: usize) -> impl Iterator<Item = std::ops::Range<usize>> {
    let n = rows.div_ceil(PASS_ROWS);
    let start = move |i: usize| if i == n { rows } else { i * rows / n / MB * MB };
    (0..n).map(move |i| start(i)..start(i + 1))
}

/// [`matmul`] of the f32 rows `x` (`rows × w.n_in()`), in [`passes`] of rows: each pass's
/// activations prepared and multiplied on their own, every row's the same as in one pass;
/// the tasks of both run by `for_each` (rayon's pool, or a step's team).
///
/// # Safety
/// As [`matmul`]'s, for `x` instead of prepared activations.
pub unsafe fn matmul_in_passes(
    w: &PackedMatrix,
    x: &[f32],
    rows: usize,
    bias: Option<&[f32]>,
    y: &mut [f32],
    for_each: &ForEach<'_>,
) {
    let (n_in, n_out) = (w.n_in(), w.n_out());
    for pass in passes(rows) {
        let n = pass.len();
        let acts = Acts::prepare_on(
            w.format(),
            &x[pass.start * n_in..pass.end * n_in],
            n,
            n_in,
            w.k_pad(),
            for_each,
        );
        // SAFETY: the forwarded contract, for the pass's rows.
        unsafe {
            matmul(
                w,
                &acts,
                n,
                bias,
                &mut y[pass.start * n_out..pass.end * n_out],
                for_each,
            )
        };
    }
}

/// `y = acts · Wᵀ (+ bias)` for `rows` rows of q4k weights, runs of whole tiles run by
/// `for_each` (each task on one thread): bit for bit what the AVX-512 tile kernels give
/// (see the module documentation).
///
/// # Safety
/// AMX-INT8 usable (the AMX path is supported), AVX-512 F/BW/VL/VNNI; `w` q4k; `acts`
/// prepared for it with `rows` rows; `y` holds `rows × w.n_out()` values, `bias`, if any,
/// `w.n_out()`.
pub unsafe fn matmul(
    w: &PackedMatrix,
    acts: &Acts<'_>,
    rows: usize,
    bias: Option<&[f32]>,
    y: &mut [f32],
    for_each: &ForEach<'_>,
) {
    let tail = padded_tail(acts, rows, w.k_pad());
    let out = OutPtr(y.as_mut_ptr());
    super::for_each_tile_run(w.tiles(), for_each, |range| {
        let mut acc = vec![0f32; rows * TILE];
        // SAFETY: the forwarded contract; tasks write disjoint tiles' columns.
        unsafe { tiles_into(w, acts, &tail, rows, bias, out, range, &mut acc) };
    });
}

/// The last partial block of 16 activation rows of a product, zero-padded to 16 rows (the
/// `A` tiles load 16 rows); empty when `rows` is a multiple of 16.
pub(super) fn padded_tail(acts: &Acts<'_>, rows: usize, k_pad: usize) -> AlignedVec<i8> {
    let Acts::Q8K { q, .. } = acts else {
        unreachable!("the AMX-INT8 kernels take q4k weights and their activations");
    };
    let full = rows / MB;
    if rows.is_multiple_of(MB) {
        return AlignedVec::zeroed(0);
    }
    let mut tail = AlignedVec::zeroed(MB * k_pad);
    tail[..(rows - full * MB) * k_pad].copy_from_slice(&q[full * MB * k_pad..rows * k_pad]);
    tail
}

/// Tiles `range` of `w` times all `rows` rows of `acts` (`+ bias`) into their columns of
/// `out` (`rows × n_out`), on this thread (which configures the tile registers for the
/// run); `tail` from [`padded_tail`], `acc` scratch of `rows × 16` floats.
///
/// # Safety
/// As [`matmul`]; `out` holds `rows × w.n_out()` values of which no other thread writes
/// these tiles' columns meanwhile.
#[allow(clippy::too_many_arguments)]
pub(super) unsafe fn tiles_into(
    w: &PackedMatrix,
    acts: &Acts<'_>,
    tail: &[i8],
    rows: usize,
    bias: Option<&[f32]>,
    out: OutPtr,
    range: std::ops::Range<usize>,
    acc: &mut [f32],
) {
    let Acts::Q8K { q, d, bsum } = acts else {
        unreachable!("the AMX-INT8 kernels take q4k weights and their activations");
    };
    let k_pad = w.k_pad();
    assert!(
        acts.fits(w.format(), rows, k_pad)
            && rows > 0
            && acc.len() >= rows * TILE
            && tail.len()
                == if rows.is_multiple_of(MB) {
                    0
                } else {
                    MB * k_pad
                },
        "AMX-INT8 operands"
    );
    let a = Rows {
        q: q.as_ptr(),
        tail: tail.as_ptr(),
        d: d.as_ptr(),
        bsum: bsum.as_ptr(),
        k_pad,
        rows,
    };
    let n_out = w.n_out();
    // SAFETY: the caller's contract (the AMX path supported); all eight tiles 16 × 64 bytes:
    // `tmm0`–`tmm3` sums, `tmm4`/`tmm5` activations, `tmm6`/`tmm7` weights.
    let _tiles = unsafe { Tiles::configure() };
    for t in range {
        let col = t * TILE;
        // The rows' output lines, owned before the tile's sums are stored.
        out.own_lines(n_out, 0..rows, col..col + TILE);
        // SAFETY: `w.tile(t)` is a whole q4k tile of k_pad / 256 super-blocks; `a` holds
        // `rows` rows (checked above); `acc` rows·16 floats.
        unsafe {
            tile(
                w.tile(t).as_ptr(),
                k_pad / QK_K,
                &a,
                &mut acc[..rows * TILE],
            )
        };
        for (r, vals) in acc[..rows * TILE].chunks_exact(TILE).enumerate() {
            // SAFETY: `(r + 1) * n_out <= rows * n_out`, the size of `out` (caller), and
            // columns `col..col + ncols` belong to this run's tiles only.
            unsafe { out.store_row(n_out, r, col, vals, bias) };
        }
    }
}

/// The activations of one product, as the kernels read them.
struct Rows {
    /// Quants, `k_pad` per row.
    q: *const i8,
    /// The last partial block of 16 rows, zero-padded (dangling when `rows % 16 == 0`).
    tail: *const i8,
    /// Super-block scales, `k_pad / 256` per row.
    d: *const f32,
    /// Sums of the quants of each block of 32, `k_pad / 32` per row.
    bsum: *const i16,
    k_pad: usize,
    rows: usize,
}

/// A 64-byte aligned scratch buffer.
#[repr(C, align(64))]
struct Aligned<T>(T);

/// One q4k tile of `nsuper` super-blocks times all rows of `a` into `acc` (`rows × 16`,
/// overwritten).
///
/// # Safety
/// AVX-512 F/BW/VL/VNNI, tiles configured ([`Tiles::configure`]); the tile holds `nsuper`
/// super-blocks; `a` as [`matmul`] makes it; `acc` holds `a.rows × 16` floats.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni")]
unsafe fn tile(w: *const u8, nsuper: usize, a: &Rows, acc: &mut [f32]) {
    // Two sets of `B` tiles and of the super-block's factors (super-blocks alternate) and of
    // sums (blocks of rows alternate); each written before it is read.
    let mut b = MaybeUninit::<Aligned<[[u8; B_BYTES]; 2]>>::uninit();
    let mut c = MaybeUninit::<Aligned<[[i32; 2 * MB * TILE]; 2]>>::uninit();
    let b = b.as_mut_ptr().cast::<[u8; B_BYTES]>();
    let c = c.as_mut_ptr().cast::<[i32; 2 * MB * TILE]>();
    let mut f = [Factors::default(); 2];
    let blocks = a.rows.div_ceil(MB);
    acc.fill(0.0);
    let mut pending: Option<(usize, usize, usize)> = None;
    let mut i = 0;
    // SAFETY (whole body): the tile holds `nsuper` super-blocks; the rows of `a` hold
    // nsuper·256 quants (the last partial block in `a.tail`, 16 rows), nsuper scales and
    // nsuper·8 block sums; each set of `b` holds one super-block's `B` tiles, of `c` one
    // block's sums.
    unsafe {
        unpack(w, 0, b.cast());
        for s in 0..nsuper {
            for blk in 0..blocks {
                let quants = if (blk + 1) * MB <= a.rows {
                    a.q.add(blk * MB * a.k_pad + s * QK_K)
                } else {
                    a.tail.add(s * QK_K)
                };
                let set = i % 2;
                sums(quants, a.k_pad, b.add(s % 2).cast(), set == 1);
                // A software pipeline: while the tile unit multiplies, the next
                // super-block is unpacked (its stores drain long before the tile loads
                // read them) and the previous block's sums, done meanwhile, are rescaled.
                if blk == 0 {
                    f[s % 2] = Factors::of(w, s);
                    if s + 1 < nsuper {
                        unpack(w, s + 1, b.add((s + 1) % 2).cast());
                    }
                }
                if let Some((ps, pblk, pset)) = pending {
                    store(c.add(pset).cast(), pset == 1);
                    scale(&f[ps % 2], ps, a, pblk, c.add(pset).cast(), acc);
                }
                pending = Some((s, blk, set));
                i += 1;
            }
        }
        if let Some((ps, pblk, pset)) = pending {
            store(c.add(pset).cast(), pset == 1);
            scale(&f[ps % 2], ps, a, pblk, c.add(pset).cast(), acc);
        }
    }
}

/// What a q4k super-block's rescale needs besides each row's sums: its `d` and `dmin`
/// (16 outputs) and its sub-blocks' mins in pairs (lane c: sub-blocks 2p and 2p + 1 as i16),
/// computed once per tile and super-block for all blocks of rows.
#[derive(Clone, Copy)]
struct Factors {
    d: __m512,
    dmin: __m512,
    mpair: [__m512i; 4],
}

impl Default for Factors {
    fn default() -> Self {
        // SAFETY: all-zero bits are valid vectors.
        unsafe { std::mem::zeroed() }
    }
}

impl Factors {
    /// Super-block `s` of the tile at `w`.
    ///
    /// # Safety
    /// AVX-512 F/BW; the tile holds super-block `s`.
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni")]
    unsafe fn of(w: *const u8, s: usize) -> Factors {
        // SAFETY: the caller's contract.
        unsafe {
            let sb = w.add(s * Q4K_TILE_BLOCK);
            let mut hi = _mm512_loadu_si512(sb.add(q4k_off::HI).cast());
            let mut mpair = [_mm512_setzero_si512(); 4];
            for j in 0..8 {
                let (_, m) = q4k_scales_mins(sb, j, hi);
                hi = _mm512_srli_epi32::<2>(hi);
                pair_mins(&mut mpair, j, m);
            }
            Factors {
                d: _mm512_cvtph_ps(_mm256_loadu_si256(sb.add(q4k_off::D).cast())),
                dmin: _mm512_cvtph_ps(_mm256_loadu_si256(sb.add(q4k_off::DMIN).cast())),
                mpair,
            }
        }
    }
}

/// Super-block `s`'s `B` tiles at `b` ([`B_BYTES`]): for step `t` (sub-blocks `2t`,
/// `2t + 1`) a tile of the 4-bit weights times `sc & 7`, then one times `sc >> 3` (`sc` the
/// sub-block's 6-bit scale; both products at most 105, one byte). Rows 0–3 of a tile are
/// sub-block `2t`'s low nibbles (its inputs 0–15, 4 per row as `tdpbsud` pairs them with
/// the activations), 4–7 its high nibbles (16–31), 8–15 sub-block `2t + 1`'s.
///
/// # Safety
/// AVX-512 F/BW; the tile at `w` holds super-block `s`; `b` writable for [`B_BYTES`],
/// 64-byte aligned.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni")]
unsafe fn unpack(w: *const u8, s: usize, b: *mut u8) {
    let nib = _mm512_set1_epi8(0x0f);
    let seven = _mm512_set1_epi32(7);
    // SAFETY: the caller's contract.
    unsafe {
        let blk = w.add(s * Q4K_TILE_BLOCK);
        let mut hi = _mm512_loadu_si512(blk.add(q4k_off::HI).cast());
        for j in 0..8 {
            let (sc, _) = q4k_scales_mins(blk, j, hi);
            hi = _mm512_srli_epi32::<2>(hi);
            // Both 16-bit halves of lane n hold output n's factor: `vpmullw` multiplies two
            // weights a lane, and products below 256 do not carry into the next byte.
            let lo = _mm512_and_si512(sc, seven);
            let lo = _mm512_or_si512(lo, _mm512_slli_epi32::<16>(lo));
            let hi3 = _mm512_srli_epi32::<3>(sc);
            let hi3 = _mm512_or_si512(hi3, _mm512_slli_epi32::<16>(hi3));
            let qs = blk.add(q4k_off::QS + j * 256);
            let dst = b.add((j / 2) * 2048 + (j % 2) * 512);
            if j < 4 {
                // The weight stream, one line per vector, in the tile kernels' two hops
                // (`avx512::into_l1`): 16 and 32 rows 3–12% faster than one hint 8 KiB
                // ahead, 128 rows level (`shapes q4k 16,32,128 mem`, session 34).
                into_l1(blk.wrapping_add(j * 64));
            }
            for v in 0..4 {
                into_l1(qs.wrapping_add(v * 64));
                let qv = _mm512_loadu_si512(qs.add(v * 64).cast());
                let ql = _mm512_and_si512(qv, nib);
                let qh = _mm512_and_si512(_mm512_srli_epi16::<4>(qv), nib);
                let row = dst.add(v * 64);
                _mm512_store_si512(row.cast(), _mm512_mullo_epi16(ql, lo));
                _mm512_store_si512(row.add(256).cast(), _mm512_mullo_epi16(qh, lo));
                _mm512_store_si512(row.add(1024).cast(), _mm512_mullo_epi16(ql, hi3));
                _mm512_store_si512(row.add(1280).cast(), _mm512_mullo_epi16(qh, hi3));
            }
        }
    }
}

/// The two sums of one super-block for 16 rows: `lo = Σ_t A_t · B_t`, `hi = Σ_t A_t · B'_t`
/// over the 4 steps of 64 inputs, `A_t` at `a + 64·t` (rows `stride` bytes apart), `B_t`
/// and `B'_t` at `b + 2048·t` and 1 KiB after; into `tmm0`/`tmm1`, or `tmm2`/`tmm3` if
/// `odd` (see [`store`]).
///
/// # Safety
/// Tiles configured; `a` valid for 16 rows of 256 bytes, `b` for [`B_BYTES`].
#[inline]
unsafe fn sums(a: *const i8, stride: usize, b: *const u8, odd: bool) {
    /// The products into the sum tiles `$lo`, `$hi` (the rest as documented above).
    macro_rules! products {
        ($lo:literal, $hi:literal) => {
            asm!(
                concat!("tilezero ", $lo),
                concat!("tilezero ", $hi),
                "tileloadd tmm4, [{a} + {stride}*1]",
                "tileloadd tmm6, [{b} + {s64}*1]",
                concat!("tdpbsud ", $lo, ", tmm4, tmm6"),
                "tileloadd tmm7, [{b} + {s64}*1 + 1024]",
                concat!("tdpbsud ", $hi, ", tmm4, tmm7"),
                "tileloadd tmm5, [{a} + {stride}*1 + 64]",
                "tileloadd tmm6, [{b} + {s64}*1 + 2048]",
                concat!("tdpbsud ", $lo, ", tmm5, tmm6"),
                "tileloadd tmm7, [{b} + {s64}*1 + 3072]",
                concat!("tdpbsud ", $hi, ", tmm5, tmm7"),
                "tileloadd tmm4, [{a} + {stride}*1 + 128]",
                "tileloadd tmm6, [{b} + {s64}*1 + 4096]",
                concat!("tdpbsud ", $lo, ", tmm4, tmm6"),
                "tileloadd tmm7, [{b} + {s64}*1 + 5120]",
                concat!("tdpbsud ", $hi, ", tmm4, tmm7"),
                "tileloadd tmm5, [{a} + {stride}*1 + 192]",
                "tileloadd tmm6, [{b} + {s64}*1 + 6144]",
                concat!("tdpbsud ", $lo, ", tmm5, tmm6"),
                "tileloadd tmm7, [{b} + {s64}*1 + 7168]",
                concat!("tdpbsud ", $hi, ", tmm5, tmm7"),
                a = in(reg) a,
                b = in(reg) b,
                stride = in(reg) stride,
                s64 = in(reg) 64usize,
                options(nostack, readonly, preserves_flags),
            )
        };
    }
    // SAFETY: the caller's contract; tmm registers are not used by compiled code.
    unsafe {
        if odd {
            products!("tmm2", "tmm3");
        } else {
            products!("tmm0", "tmm1");
        }
    }
}

/// Stores the sums [`sums`] left in `tmm0`/`tmm1` (or `tmm2`/`tmm3` if `odd`) at `c`: 16
/// rows of 16 i32 of the low-bits sums, then 16 of the high-bits ones.
///
/// # Safety
/// Tiles configured; `c` writable for 2 KiB.
#[inline]
unsafe fn store(c: *mut i32, odd: bool) {
    /// Stores the sum tiles `$lo`, `$hi`.
    macro_rules! stores {
        ($lo:literal, $hi:literal) => {
            asm!(
                concat!("tilestored [{c} + {s64}*1], ", $lo),
                concat!("tilestored [{c} + {s64}*1 + 1024], ", $hi),
                c = in(reg) c,
                s64 = in(reg) 64usize,
                options(nostack, preserves_flags),
            )
        };
    }
    // SAFETY: the caller's contract.
    unsafe {
        if odd {
            stores!("tmm2", "tmm3");
        } else {
            stores!("tmm0", "tmm1");
        }
    }
}

/// Adds super-block `s`'s part of rows `16·blk ..` (those that exist) to `acc` from their
/// sums at `c` ([`store`]'s layout) and the super-block's factors `f`: `lo + 8·hi` is the
/// integer `avx512::q4k_pass` accumulates, and from there its f32 arithmetic
/// ([`q4k_row`]).
///
/// # Safety
/// AVX-512 F/BW/VL; `c` holds the block's sums, 64-byte aligned; `acc` holds `a.rows × 16`
/// floats.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni")]
unsafe fn scale(f: &Factors, s: usize, a: &Rows, blk: usize, c: *const i32, acc: &mut [f32]) {
    let (ns, nb) = (a.k_pad / QK_K, a.k_pad / QBLOCK);
    // SAFETY: the caller's contract.
    unsafe {
        for i in 0..MB.min(a.rows - blk * MB) {
            let r = blk * MB + i;
            let lo = _mm512_load_si512(c.add(i * TILE).cast());
            let hi = _mm512_load_si512(c.add((MB + i) * TILE).cast());
            let sum = _mm512_add_epi32(lo, _mm512_slli_epi32::<3>(hi));
            let bs = a.bsum.add(r * nb + s * (QK_K / QBLOCK)).cast::<u8>();
            let o = acc.as_mut_ptr().add(r * TILE);
            let row = q4k_row(
                _mm512_cvtepi32_ps(sum),
                &f.mpair,
                bs,
                (f.d, f.dmin),
                *a.d.add(r * ns + s),
                _mm512_loadu_ps(o),
            );
            _mm512_storeu_ps(o, row);
        }
    }
}
