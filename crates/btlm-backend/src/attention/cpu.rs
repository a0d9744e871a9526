//! The CPU attention of one head of one sequence: its query rows against every cached key
//! and value row of that head, in blocks of [`QUERY_BLOCK`] queries (a decode step's single
//! query is a block of one).
//!
//! Each block runs one pass over tiles of [`KEY_TILE`] keys: the tile's scores `q·kⱼ` for
//! the queries whose keys reach it (the tile stays in L1 while every query of the block
//! reads it), then per query the scaled scores plus the ALiBi bias and their softmax
//! against the largest score so far (the earlier sums scaled down when it grows: the online
//! softmax of FlashAttention), then `Σⱼ pⱼ·vⱼ` over the tile's values while they are still
//! in L1; the sums are divided at the end. A query's arithmetic is the same whichever other
//! queries share its call, down to the order each dot product is summed in, so its output
//! does not depend on how the sequence was split into calls (prefill pieces, one token at
//! a time): prefix reuse keeps positions computed in another split.
//!
//! [`AttnPath::Avx2`] runs the products and the softmax with AVX2 + FMA (scores of 4
//! queries × 2 keys, 2 × 4 or 1 query × 8 keys per kernel call, reduced with horizontal
//! adds; a polynomial `exp`, see [`crate::elementwise::avx2::exp`]); [`AttnPath::Avx512`]
//! runs the products on 16-lane vectors (4 queries × 4 keys, 2 × 8 or 1 query × 16 keys per
//! call, reduced by a tree of shuffles; `cpu/avx512.rs`) and the softmax as AVX2 does;
//! every score is the same sum whichever kernel makes it; [`AttnPath::Scalar`]
//! is portable Rust (`f32::exp`).
//!
//! Cached keys and values are f32, f16, or int8 or 4-bit rows with a scale ([`KvElem`],
//! [`Nibbles`]); f16, int8 and 4-bit values are widened to f32 as they are read, so all run
//! the same arithmetic on the values stored. The scales of int8 and 4-bit rows multiply the
//! scores: a key's its dot products before the softmax, a value's its weight after it.

use crate::elementwise::avx2_supported;
use crate::kernels::KernelPath;
use crate::kv_cache::KvLayout;

mod cache_rows;

pub(crate) use cache_rows::{q4_row, q8_row};
#[cfg(test)]
use cache_rows::{q4_row_scalar, q8_row_scalar};

/// Queries of one head attended together (their scores are one buffer of
/// `QUERY_BLOCK × positions` values).
pub(crate) const QUERY_BLOCK: usize = 16;

/// Keys (and values) per tile: 20 KiB of keys or values at head size 80.
pub(crate) const KEY_TILE: usize = 64;

/// The code the CPU attention runs, narrowed per head by [`for_head`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum AttnPath {
    /// Portable Rust (libm's `exp`).
    Scalar,
    /// AVX2 + FMA + F16C.
    Avx2,
    /// AVX-512 F products (the last keys that do not fill a vector one by one, on 16 lanes
    /// too), the AVX2 softmax.
    Avx512,
}

impl AttnPath {
    /// AVX-512 on the AVX-512 and AMX kernel paths of a CPU with AVX-512 F (and AVX2, FMA,
    /// F16C), AVX2 on the others with AVX2, FMA and F16C, scalar when the kernels are forced
    /// to scalar (`BTLM_KERNELS=scalar`) or the CPU lacks them.
    pub(crate) fn for_kernels(path: KernelPath) -> Self {
        match path {
            KernelPath::Amx | KernelPath::Avx512 if avx512_supported() => AttnPath::Avx512,
            KernelPath::Scalar => AttnPath::Scalar,
            _ if avx2_supported() => AttnPath::Avx2,
            _ => AttnPath::Scalar,
        }
    }
}

/// Whether this CPU has AVX-512 F besides AVX2, FMA and F16C.
fn avx512_supported() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        is_x86_feature_detected!("avx512f") && avx2_supported()
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// The path that runs heads of `d` values: AVX-512 needs `d` a multiple of 16, AVX2 a
/// multiple of 8.
fn for_head(path: AttnPath, d: usize) -> AttnPath {
    match path {
        AttnPath::Avx512 if d.is_multiple_of(16) && avx512_supported() => AttnPath::Avx512,
        AttnPath::Avx2 | AttnPath::Avx512 if d.is_multiple_of(8) && avx2_supported() => {
            AttnPath::Avx2
        }
        _ => AttnPath::Scalar,
    }
}

/// What cached keys and values are stored as: f32, f16, int8 with a scale per row or
/// 4-bit with a scale per row (`--btlm.kv_dtype`: a half, about a quarter or about an
/// eighth of the bytes a decode step reads per position; the arithmetic stays f32).
pub(crate) trait KvElem: Copy + Send + Sync + 'static {
    /// Elements after a row's values (the scale of an int8 or 4-bit row).
    const TAIL: usize = 0;

    /// Elements that hold a row of `d` values (before its tail).
    fn elems(d: usize) -> usize {
        d
    }

    /// Value `i` of `row` as f32 (an int8 or 4-bit row's before its scale).
    fn value(row: &[Self], i: usize) -> f32;

    /// The scale of a row from its [`Self::TAIL`] elements (1 for rows without one).
    fn scale(_tail: &[Self]) -> f32 {
        1.0
    }

    /// Values `c..c + 8` of the row at `row` as the lanes of an f32 vector.
    ///
    /// # Safety
    /// AVX2 and F16C; `c` a multiple of 8; the row's elements up to value `c + 8`
    /// readable.
    #[cfg(target_arch = "x86_64")]
    unsafe fn load8(row: *const Self, c: usize) -> std::arch::x86_64::__m256;

    /// Values `c..c + 16` of the row at `row` as the lanes of an f32 vector.
    ///
    /// # Safety
    /// AVX-512 F; `c` a multiple of 16; the row's elements up to value `c + 16` readable.
    #[cfg(target_arch = "x86_64")]
    unsafe fn load16(row: *const Self, c: usize) -> std::arch::x86_64::__m512;
}

impl KvElem for f32 {
    #[inline]
    fn value(row: &[f32], i: usize) -> f32 {
        row[i]
    }

    #[cfg(target_arch = "x86_64")]
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn load8(row: *const f32, c: usize) -> std::arch::x86_64::__m256 {
        // SAFETY: the caller's promise.
        unsafe { std::arch::x86_64::_mm256_loadu_ps(row.add(c)) }
    }

    #[cfg(target_arch = "x86_64")]
    #[inline]
    #[target_feature(enable = "avx512f")]
    unsafe fn load16(row: *const f32, c: usize) -> std::arch::x86_64::__m512 {
        // SAFETY: the caller's promise.
        unsafe { std::arch::x86_64::_mm512_loadu_ps(row.add(c)) }
    }
}

impl KvElem for half::f16 {
    #[inline]
    fn value(row: &[half::f16], i: usize) -> f32 {
        row[i].to_f32()
    }

    #[cfg(target_arch = "x86_64")]
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn load8(row: *const half::f16, c: usize) -> std::arch::x86_64::__m256 {
        use std::arch::x86_64::*;
        // SAFETY: the caller's promise (8 × 2 bytes).
        unsafe { _mm256_cvtph_ps(_mm_loadu_si128(row.add(c).cast())) }
    }

    #[cfg(target_arch = "x86_64")]
    #[inline]
    #[target_feature(enable = "avx512f")]
    unsafe fn load16(row: *const half::f16, c: usize) -> std::arch::x86_64::__m512 {
        use std::arch::x86_64::*;
        // SAFETY: the caller's promise (16 × 2 bytes).
        unsafe { _mm512_cvtph_ps(_mm256_loadu_si256(row.add(c).cast())) }
    }
}

impl KvElem for u8 {
    const TAIL: usize = KvLayout::SCALE_BYTES;

    /// The byte as the int8 it stores.
    #[inline]
    fn value(row: &[u8], i: usize) -> f32 {
        f32::from(row[i] as i8)
    }

    #[inline]
    fn scale(tail: &[u8]) -> f32 {
        f32::from_le_bytes([tail[0], tail[1], tail[2], tail[3]])
    }

    #[cfg(target_arch = "x86_64")]
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn load8(row: *const u8, c: usize) -> std::arch::x86_64::__m256 {
        use std::arch::x86_64::*;
        // SAFETY: the caller's promise (8 bytes).
        unsafe { _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64(row.add(c).cast()))) }
    }

    #[cfg(target_arch = "x86_64")]
    #[inline]
    #[target_feature(enable = "avx512f")]
    unsafe fn load16(row: *const u8, c: usize) -> std::arch::x86_64::__m512 {
        use std::arch::x86_64::*;
        // SAFETY: the caller's promise (16 bytes).
        unsafe { _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128(row.add(c).cast()))) }
    }
}

/// A byte of a 4-bit cache row: two values, each a 4-bit two's-complement integer. A row's
/// values come in groups of 16 in 8 bytes ([`KvLayout::q4_bytes`]), read as one
/// little-endian 64-bit word: value `2m` of a group at bits `4m..4m + 4`, value `2m + 1` at
/// bits `32 + 4m..`. So every 64-bit lane `m` of a vector holding the word in each lane,
/// shifted right by `4m`, has value `2m` in the low bits of its low 32-bit lane and `2m + 1`
/// in those of its high one: 16 values widen in a shift and a table lookup
/// ([`Nibbles::load16`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(transparent)]
pub(crate) struct Nibbles(pub(crate) u8);

impl Nibbles {
    /// `bytes` as nibble pairs (the same memory).
    pub(crate) fn slice(bytes: &[u8]) -> &[Nibbles] {
        // SAFETY: `Nibbles` is `repr(transparent)` over `u8`: the same size, alignment and
        // valid values, so the same memory is a valid slice of as many of them.
        unsafe { std::slice::from_raw_parts(bytes.as_ptr().cast(), bytes.len()) }
    }
}

impl KvElem for Nibbles {
    const TAIL: usize = KvLayout::SCALE_BYTES;

    fn elems(d: usize) -> usize {
        KvLayout::q4_bytes(d)
    }

    /// The signed nibble that holds value `i`.
    #[inline]
    fn value(row: &[Nibbles], i: usize) -> f32 {
        let (byte, high) = nibble_of(i);
        let b = row[byte].0;
        // The nibble to the top of the byte, then back down with its sign.
        let top = if high { b & 0xf0 } else { b << 4 };
        f32::from((top as i8) >> 4)
    }

    #[inline]
    fn scale(tail: &[Nibbles]) -> f32 {
        f32::from_le_bytes([tail[0].0, tail[1].0, tail[2].0, tail[3].0])
    }

    #[cfg(target_arch = "x86_64")]
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn load8(row: *const Nibbles, c: usize) -> std::arch::x86_64::__m256 {
        use std::arch::x86_64::*;
        // SAFETY: the caller's promise (the group's 8 bytes).
        let group = unsafe { row.add(group_byte(c)).cast::<i64>().read_unaligned() };
        // Values 0–7 of the group (see `Nibbles`) at the bottom of the lanes, or 8–15.
        let shifts = if c.is_multiple_of(16) {
            _mm256_setr_epi64x(0, 4, 8, 12)
        } else {
            _mm256_setr_epi64x(16, 20, 24, 28)
        };
        let v = _mm256_srlv_epi64(_mm256_set1_epi64x(group), shifts);
        // Each lane's nibble to the top of the lane, then back down with its sign.
        _mm256_cvtepi32_ps(_mm256_srai_epi32::<28>(_mm256_slli_epi32::<28>(v)))
    }

    #[cfg(target_arch = "x86_64")]
    #[inline]
    #[target_feature(enable = "avx512f")]
    unsafe fn load16(row: *const Nibbles, c: usize) -> std::arch::x86_64::__m512 {
        use std::arch::x86_64::*;
        // SAFETY: the caller's promise (the group's 8 bytes).
        let group = unsafe { row.add(group_byte(c)).cast::<i64>().read_unaligned() };
        // Value `l` in the low 4 bits of lane `l` (see `Nibbles`); `vpermps` reads only
        // those bits of each index and maps them to the nibble's value.
        let v = _mm512_srlv_epi64(
            _mm512_set1_epi64(group),
            _mm512_setr_epi64(0, 4, 8, 12, 16, 20, 24, 28),
        );
        let values = _mm512_setr_ps(
            0.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, -8.0, -7.0, -6.0, -5.0, -4.0, -3.0, -2.0, -1.0,
        );
        _mm512_permutexvar_ps(v, values)
    }
}

/// The first bit of value `j` (< 16) in its group's 64-bit word (see [`Nibbles`]: bits
/// `4m` and `32 + 4m` hold values `2m` and `2m + 1`).
fn nibble_bit(j: usize) -> usize {
    4 * (j / 2) + 32 * (j % 2)
}

/// The first byte of the group of 16 values (one 64-bit word) that holds value `i` of a
/// 4-bit row.
fn group_byte(i: usize) -> usize {
    (i / 16) * 8
}

/// The byte of a 4-bit row that holds value `i`, and whether in its high nibble.
fn nibble_of(i: usize) -> (usize, bool) {
    let bit = nibble_bit(i % 16);
    (group_byte(i) + bit / 8, bit % 8 == 4)
}

/// `positions` rows of `d` values (and [`KvElem::TAIL`] elements after them), `stride`
/// values apart (one head's keys or values).
#[derive(Clone, Copy)]
pub(crate) struct HeadRows<'a, T = f32> {
    pub(crate) data: &'a [T],
    pub(crate) stride: usize,
    pub(crate) positions: usize,
    pub(crate) d: usize,
}

impl<T: KvElem> HeadRows<'_, T> {
    /// Row `j`'s elements (its values, [`KvElem::value`]).
    pub(crate) fn row(&self, j: usize) -> &[T] {
        &self.data[j * self.stride..][..T::elems(self.d)]
    }

    /// Value `i` of row `j` as f32, before the row's scale.
    #[cfg(test)]
    pub(crate) fn value(&self, j: usize, i: usize) -> f32 {
        T::value(self.row(j), i)
    }

    /// Row `j`'s scale ([`KvElem::scale`]).
    pub(crate) fn scale(&self, j: usize) -> f32 {
        T::scale(&self.data[j * self.stride + T::elems(self.d)..][..T::TAIL])
    }

    /// The scales of rows `j0..j0 + out.len()` into `out`.
    fn scales_into(&self, j0: usize, out: &mut [f32]) {
        for (j, s) in (j0..).zip(out.iter_mut()) {
            *s = self.scale(j);
        }
    }

    /// Whether rows `0..n` (with their tails) lie inside `data`.
    fn holds(&self, n: usize) -> bool {
        n == 0 || (n - 1) * self.stride + T::elems(self.d) + T::TAIL <= self.data.len()
    }
}

/// `row[j] *= scales[j]` for every `j` of both (nothing for rows without scales: `scales`
/// empty).
fn times(row: &mut [f32], scales: &[f32]) {
    for (s, k) in row.iter_mut().zip(scales) {
        *s *= k;
    }
}

/// One head of one sequence: `t` query rows at positions `offset..offset + t`, each
/// attending to keys `0..=position`.
pub(crate) struct Head<'a, T = f32> {
    /// Query `i` is `queries[i * q_stride..][..d]`.
    pub(crate) queries: &'a [f32],
    pub(crate) q_stride: usize,
    pub(crate) t: usize,
    pub(crate) offset: usize,
    pub(crate) keys: HeadRows<'a, T>,
    pub(crate) values: HeadRows<'a, T>,
    pub(crate) scale: f32,
    /// ALiBi slope (`None`: no position bias).
    pub(crate) slope: Option<f32>,
}

impl<T: KvElem> Head<'_, T> {
    /// `out` (`t × d`): row `i` = `softmax(q·kⱼ · scale − slope·(position − j))ⱼ · V` over keys
    /// `0..=position`, `position = offset + i`. `scores` is scratch space (reused, grown as
    /// needed).
    ///
    /// # Panics
    /// If the keys or values hold fewer than `offset + t` rows, a query row or `out` is
    /// too short.
    pub(crate) fn attend(&self, path: AttnPath, out: &mut [f32], scores: &mut Vec<f32>) {
        let (t, d) = (self.t, self.keys.d);
        let total = self.offset + t;
        assert!(
            self.values.d == d
                && self.keys.positions >= total
                && self.values.positions >= total
                && self.keys.holds(total)
                && self.values.holds(total)
                && out.len() >= t * d
                && (t == 0 || (t - 1) * self.q_stride + d <= self.queries.len()),
            "attention of {t} queries at {} over {} keys",
            self.offset,
            self.keys.positions
        );
        let path = for_head(path, d);
        for q0 in (0..t).step_by(QUERY_BLOCK) {
            let qb = QUERY_BLOCK.min(t - q0);
            self.attend_block(path, q0, qb, &mut out[q0 * d..(q0 + qb) * d], scores);
        }
    }

    /// [`Self::attend`] of queries `q0..q0 + qb` into `out` (`qb × d`), in one pass over the
    /// tiles of keys: each tile's scores for the queries whose keys reach it, then per query
    /// their softmax against the largest score so far (its earlier sums scaled down when
    /// that grows: the online softmax of FlashAttention), then the tile's values weighted
    /// while they are in L1. A query's arithmetic is that of the same query alone, whatever
    /// its block (prefix reuse keeps positions computed in other splits, bit for bit); the
    /// block shares the tile's reads. (Weighing the values after every key's score instead
    /// read the early tiles' values back from L2 and left memory idle meanwhile.)
    fn attend_block(
        &self,
        path: AttnPath,
        q0: usize,
        qb: usize,
        out: &mut [f32],
        scores: &mut Vec<f32>,
    ) {
        let d = self.keys.d;
        let first_position = self.offset + q0;
        // Keys of the block's last query.
        let n = first_position + qb;
        let stride = n.next_multiple_of(8);
        scores.clear();
        scores.resize(qb * stride, 0.0);
        out.fill(0.0);
        let mut max = [f32::NEG_INFINITY; QUERY_BLOCK];
        let mut sum = [0f32; QUERY_BLOCK];
        let (mut key_scales, mut value_scales) = ([0f32; KEY_TILE], [0f32; KEY_TILE]);
        for k0 in (0..n).step_by(KEY_TILE) {
            let kt = KEY_TILE.min(n - k0);
            // The block's queries before this tile's first key stop short of it.
            let first = k0.saturating_sub(first_position);
            let (scores, out) = (&mut scores[first * stride..], &mut out[first * d..]);
            self.dots(path, q0 + first, qb - first, k0, kt, scores, stride);
            if T::TAIL > 0 {
                self.keys.scales_into(k0, &mut key_scales[..kt]);
                self.values.scales_into(k0, &mut value_scales[..kt]);
            }
            for i in 0..qb - first {
                let tile = &mut scores[i * stride + k0..][..kt.next_multiple_of(8)];
                if T::TAIL > 0 {
                    times(&mut tile[..kt], &key_scales[..kt]);
                }
                let position = first_position + first + i - k0;
                let (m, s) = (&mut max[first + i], &mut sum[first + i]);
                let (top, part) = self.softmax(path, tile, position, *m);
                if top > *m {
                    // exp(−∞) = 0 before the first tile (nothing to scale down yet).
                    let f = (*m - top).exp();
                    out[i * d..][..d].iter_mut().for_each(|o| *o *= f);
                    *s *= f;
                    *m = top;
                }
                *s += part;
                if T::TAIL > 0 {
                    // Weights of the values as they are stored (the sum stays the softmax's).
                    times(&mut tile[..kt], &value_scales[..kt]);
                }
            }
            self.weighted_values(path, scores, stride, qb - first, k0, kt, out);
        }
        for (o, s) in out.chunks_exact_mut(d).zip(sum) {
            o.iter_mut().for_each(|x| *x /= s);
        }
    }

    /// Query `i`'s row.
    fn query(&self, i: usize) -> &[f32] {
        &self.queries[i * self.q_stride..][..self.keys.d]
    }

    /// `scores[i][j] = q(q0 + i) · k(j)` for `i < qb`, `j` in `k0..k0 + kt` (rows of
    /// `stride` values).
    #[allow(clippy::too_many_arguments)]
    fn dots(
        &self,
        path: AttnPath,
        q0: usize,
        qb: usize,
        k0: usize,
        kt: usize,
        scores: &mut [f32],
        stride: usize,
    ) {
        match path {
            #[cfg(target_arch = "x86_64")]
            AttnPath::Avx2 => {
                // SAFETY: `for_head` chose AVX2 only on a CPU with AVX2, FMA and F16C and
                // `d` a multiple of 8; `attend` checked that the rows exist.
                unsafe { avx2::dots(self, q0, qb, k0, kt, scores, stride) }
            }
            #[cfg(target_arch = "x86_64")]
            AttnPath::Avx512 => {
                // SAFETY: `for_head` chose AVX-512 only on a CPU with AVX-512 F, AVX2, FMA
                // and F16C and `d` a multiple of 16; `attend` checked that the rows exist.
                unsafe { avx512::dots(self, q0, qb, k0, kt, scores, stride) }
            }
            _ => {
                for i in 0..qb {
                    let q = self.query(q0 + i);
                    let row = &mut scores[i * stride + k0..][..kt];
                    for (j, s) in (k0..).zip(row) {
                        *s = dot(q, self.keys.row(j));
                    }
                }
            }
        }
    }

    /// Turns the dots of the query at `position` (`row[j]`, `j <= position`; `j` counted
    /// from the row's start) into `exp(sⱼ − m)` where `sⱼ = row[j] · scale −
    /// slope·(position − j)` and `m` is the largest of `floor` and the `sⱼ`, zeroes the
    /// rest of `row` and returns `m` and the sum of the exponentials. `row` is a multiple
    /// of 8 long.
    fn softmax(&self, path: AttnPath, row: &mut [f32], position: usize, floor: f32) -> (f32, f32) {
        match path {
            #[cfg(target_arch = "x86_64")]
            AttnPath::Avx2 | AttnPath::Avx512 => {
                // SAFETY: as in `dots` (an AVX-512 CPU has AVX2 and FMA); `row` is a
                // multiple of 8 long.
                unsafe { avx2::softmax(row, position, self.scale, self.slope, floor) }
            }
            _ => {
                let valid = (position + 1).min(row.len());
                let mut max = floor;
                for (j, s) in row[..valid].iter_mut().enumerate() {
                    *s *= self.scale;
                    if let Some(m) = self.slope {
                        *s += -m * (position - j) as f32;
                    }
                    max = max.max(*s);
                }
                let mut sum = 0.0;
                for s in &mut row[..valid] {
                    *s = (*s - max).exp();
                    sum += *s;
                }
                row[valid..].fill(0.0);
                (max, sum)
            }
        }
    }

    /// `out[i] += Σⱼ scores[i][j] · v(j)` for `i < qb`, `j` in `k0..k0 + kt`.
    #[allow(clippy::too_many_arguments)]
    fn weighted_values(
        &self,
        path: AttnPath,
        scores: &[f32],
        stride: usize,
        qb: usize,
        k0: usize,
        kt: usize,
        out: &mut [f32],
    ) {
        match path {
            #[cfg(target_arch = "x86_64")]
            AttnPath::Avx2 => {
                // SAFETY: as in `dots`.
                unsafe { avx2::weighted_values(self, scores, stride, qb, k0, kt, out) }
            }
            #[cfg(target_arch = "x86_64")]
            AttnPath::Avx512 => {
                // SAFETY: as in `dots`.
                unsafe { avx512::weighted_values(self, scores, stride, qb, k0, kt, out) }
            }
            _ => {
                let d = self.values.d;
                for (i, o) in out.chunks_exact_mut(d).take(qb).enumerate() {
                    let p = &scores[i * stride + k0..][..kt];
                    for (j, &pj) in (k0..).zip(p) {
                        let row = self.values.row(j);
                        for (i, o) in o.iter_mut().enumerate() {
                            *o += pj * T::value(row, i);
                        }
                    }
                }
            }
        }
    }
}

/// `a · b` (`b` a row of `a.len()` values) with eight partial sums (vectorizable).
fn dot<T: KvElem>(a: &[f32], b: &[T]) -> f32 {
    let mut acc = [0f32; 8];
    let a8 = a.chunks_exact(8);
    let whole = a.len() - a8.remainder().len();
    let tail: f32 = (whole..)
        .zip(a8.remainder())
        .map(|(i, x)| x * T::value(b, i))
        .sum();
    for (c, x) in a8.enumerate() {
        for l in 0..8 {
            acc[l] += x[l] * T::value(b, 8 * c + l);
        }
    }
    acc.iter().sum::<f32>() + tail
}

/// Defines a SIMD module's `weighted_values` (see [`Head::weighted_values`]; `$group`
/// queries at a time, then one by one) and its kernels `weighted_group` and `weighted`, with
/// the features `$features`, over the module's vectors: it provides `LANES`, the vector type
/// `V` and `#[inline]` helpers with those features: `zero()`, `load(p)`, `store(p, v)`,
/// `splat(p)` (the f32 at `p` in every lane), `fma(a, b, c)` (`a · b + c`) and
/// `load_kv::<T>(row, c)` (values `c..c + LANES` of a cached row as f32).
#[cfg(target_arch = "x86_64")]
macro_rules! weighted_kernels {
    ($features:literal, $group:literal) => {
        /// See [`Head::weighted_values`].
        ///
        /// # Safety
        /// As [`dots`]; `out` holds `qb` rows of `d`.
        #[target_feature(enable = $features)]
        pub(super) unsafe fn weighted_values<T: KvElem>(
            head: &Head<'_, T>,
            scores: &[f32],
            stride: usize,
            qb: usize,
            k0: usize,
            kt: usize,
            out: &mut [f32],
        ) {
            let d = head.values.d;
            assert!(scores.len() >= qb * stride && stride >= k0 + kt && out.len() >= qb * d);
            let vs = head.values.stride;
            let vp = head.values.data.as_ptr().wrapping_add(k0 * vs);
            let sp = |i: usize| scores[i * stride + k0..].as_ptr();
            let op = out.as_mut_ptr();
            let mut i = 0;
            // SAFETY: value rows `k0..k0 + kt` exist (`attend`), score and output rows as
            // asserted above.
            unsafe {
                while i + $group <= qb {
                    let p = std::array::from_fn(|q| sp(i + q));
                    let o = std::array::from_fn(|q| op.add((i + q) * d));
                    weighted::<T, $group>(p, vp, vs, kt, o, d);
                    i += $group;
                }
                while i < qb {
                    weighted::<T, 1>([sp(i)], vp, vs, kt, [op.add(i * d)], d);
                    i += 1;
                }
            }
        }

        /// `out[i][..LANES·C] += Σⱼ p_i[j] · v(j)[g..g + LANES·C]` for `Q` queries,
        /// `j < kt`.
        #[inline]
        #[target_feature(enable = $features)]
        unsafe fn weighted_group<T: KvElem, const Q: usize, const C: usize>(
            p: [*const f32; Q],
            v: *const T,
            vs: usize,
            g: usize,
            kt: usize,
            out: [*mut f32; Q],
        ) {
            // SAFETY: the caller's rows.
            unsafe {
                let mut acc = [[zero(); C]; Q];
                for q in 0..Q {
                    for c in 0..C {
                        acc[q][c] = load(out[q].add(LANES * c));
                    }
                }
                for j in 0..kt {
                    let mut b = [zero(); Q];
                    for q in 0..Q {
                        b[q] = splat(p[q].add(j));
                    }
                    let row = v.add(j * vs);
                    for c in 0..C {
                        let y = load_kv(row, g + LANES * c);
                        for q in 0..Q {
                            acc[q][c] = fma(b[q], y, acc[q][c]);
                        }
                    }
                }
                for q in 0..Q {
                    for c in 0..C {
                        store(out[q].add(LANES * c), acc[q][c]);
                    }
                }
            }
        }

        /// [`weighted_group`] over every group of up to 5 vectors of a head of `d` values
        /// (`Q` queries × 5 vectors of sums, `Q` broadcast weights and a row's vector).
        #[inline]
        #[target_feature(enable = $features)]
        unsafe fn weighted<T: KvElem, const Q: usize>(
            p: [*const f32; Q],
            v: *const T,
            vs: usize,
            kt: usize,
            out: [*mut f32; Q],
            d: usize,
        ) {
            let mut g = 0;
            while g < d {
                let c = ((d - g) / LANES).min(5);
                let o = out.map(|o| o.wrapping_add(g));
                // SAFETY: the caller's rows, values from `g < d`.
                unsafe {
                    match c {
                        1 => weighted_group::<T, Q, 1>(p, v, vs, g, kt, o),
                        2 => weighted_group::<T, Q, 2>(p, v, vs, g, kt, o),
                        3 => weighted_group::<T, Q, 3>(p, v, vs, g, kt, o),
                        4 => weighted_group::<T, Q, 4>(p, v, vs, g, kt, o),
                        _ => weighted_group::<T, Q, 5>(p, v, vs, g, kt, o),
                    }
                }
                g += LANES * c;
            }
        }
    };
}

/// Defines a SIMD module's products of queries with keys, `dots` (see [`Head::dots`]) and
/// its kernels `dots_quad` (lanes of 4 queries × `LANES / 4` keys), `dots_pair` (lanes of 2
/// queries × `LANES / 2` keys: `[q0·k0, …, q1·k0, …]`) and `dots_single` (1 query × `LANES`
/// keys, prefetching), with the features `$features`, over the helpers of
/// [`weighted_kernels`], `$reduce` (lane `l` of the result: the sum of `a[l]`'s lanes) and
/// the module's `store_quad(r, v)` and `store_pair(r0, r1, v)` (a `dots_quad` result's
/// quarters to four score rows, a `dots_pair` result's halves to two),
/// `single_tail(x, kp, ks, d, r, j, end)` (a single query's last keys,
/// fewer than `LANES`), `dot1`, `prefetch_rows` and `KEYS_AHEAD`.
#[cfg(target_arch = "x86_64")]
macro_rules! dot_kernels {
    ($features:literal, $reduce:ident) => {
        /// Lanes of 2 queries × `LANES / 2` keys: `[q0·k0, …, q1·k0, …]` (`k`: rows `ks`
        /// values apart; `d` values each).
        #[inline]
        #[target_feature(enable = $features)]
        unsafe fn dots_pair<T: KvElem>(
            q0: *const f32,
            q1: *const f32,
            k: *const T,
            ks: usize,
            d: usize,
        ) -> V {
            let mut a = [zero(); LANES];
            // SAFETY: the caller's rows.
            unsafe {
                for c in (0..d).step_by(LANES) {
                    let x0 = load(q0.add(c));
                    let x1 = load(q1.add(c));
                    for kk in 0..LANES / 2 {
                        let y = load_kv(k.add(kk * ks), c);
                        a[kk] = fma(x0, y, a[kk]);
                        a[LANES / 2 + kk] = fma(x1, y, a[LANES / 2 + kk]);
                    }
                }
            }
            $reduce(a)
        }

        /// Lanes of 4 queries × `LANES / 4` keys: `[q0·k0, …, q1·k0, …]`, each sum as
        /// [`dots_pair`] makes it (the same products in the same order, the same
        /// reduction): a key row widened once for four queries instead of two.
        #[inline]
        #[target_feature(enable = $features)]
        unsafe fn dots_quad<T: KvElem>(q: [*const f32; 4], k: *const T, ks: usize, d: usize) -> V {
            let mut a = [zero(); LANES];
            // SAFETY: the caller's rows.
            unsafe {
                for c in (0..d).step_by(LANES) {
                    let x = q.map(|q| load(q.add(c)));
                    for kk in 0..LANES / 4 {
                        let y = load_kv(k.add(kk * ks), c);
                        for (i, x) in x.iter().enumerate() {
                            let at = i * (LANES / 4) + kk;
                            a[at] = fma(*x, y, a[at]);
                        }
                    }
                }
            }
            $reduce(a)
        }

        /// Lanes of 1 query × `LANES` keys: `[q·k0, …]`. With `ahead`, also prefetches its
        /// two ranges, `ahead.step` bytes of each per `LANES` values multiplied: spread
        /// between the arithmetic, not in a burst that would fill the core's miss buffers
        /// and stall it (see `avx2::dots`).
        #[inline]
        #[target_feature(enable = $features)]
        pub(super) unsafe fn dots_single<T: KvElem>(
            q: *const f32,
            k: *const T,
            ks: usize,
            d: usize,
            ahead: Option<Ahead>,
        ) -> V {
            let mut a = [zero(); LANES];
            // SAFETY: the caller's rows; prefetches never fault.
            unsafe {
                for (n, c) in (0..d).step_by(LANES).enumerate() {
                    if let Some(Ahead {
                        keys,
                        values,
                        step,
                        to_l2,
                    }) = ahead
                    {
                        for off in (n * step..(n + 1) * step).step_by(64) {
                            hint(keys.wrapping_add(off), to_l2);
                            hint(values.wrapping_add(off), to_l2);
                        }
                    }
                    let x = load(q.add(c));
                    for kk in 0..LANES {
                        a[kk] = fma(x, load_kv(k.add(kk * ks), c), a[kk]);
                    }
                }
            }
            $reduce(a)
        }

        /// See [`Head::dots`].
        ///
        /// # Safety
        /// The features `$features`; `d` a multiple of `LANES`; the rows of `head` checked
        /// by [`Head::attend`]; `scores` holds `qb` rows of `stride ≥ k0 + kt` values.
        #[target_feature(enable = $features)]
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
            // One query (a decode step): each head's keys and values are short streams read
            // once, which the hardware prefetchers pick up late, so the keys are prefetched
            // `KEYS_AHEAD` rows ahead and the values of the keys being multiplied, a few
            // lines per `LANES` values (`Ahead`). Prefetching a tile's values at once instead
            // stalled the core on its miss buffers: 17% of this function's time in a decode
            // step of 8 sequences; spread out, the step's attention took 35% less time (Zen
            // 4, session 19, docs/benchmarks.md). A block of queries rereads its tile from
            // cache: it asks for the tile's values at once.
            let single = qb == 1;
            if !single {
                prefetch_rows(&head.values, k0, end);
            }
            let keys_end = head.offset + head.t;
            let mut i = 0;
            // SAFETY (all below): the key rows `k0..end` and the query rows exist
            // (`attend`), score indices stay below `qb * stride` (asserted above).
            unsafe {
                while i + 4 <= qb {
                    let x: [*const f32; 4] = std::array::from_fn(|n| qp(i + n));
                    let r: [*mut f32; 4] = std::array::from_fn(|n| sp.add((i + n) * stride));
                    let mut j = k0;
                    while j + LANES / 4 <= end {
                        let v = dots_quad(x, kp.add(j * ks), ks, d);
                        store_quad(r.map(|r| r.add(j)), v);
                        j += LANES / 4;
                    }
                    for j in j..end {
                        for n in 0..4 {
                            *r[n].add(j) = dot1(x[n], kp.add(j * ks), d);
                        }
                    }
                    i += 4;
                }
                while i + 2 <= qb {
                    let (x0, x1) = (qp(i), qp(i + 1));
                    let (r0, r1) = (sp.add(i * stride), sp.add((i + 1) * stride));
                    let mut j = k0;
                    while j + LANES / 2 <= end {
                        let v = dots_pair(x0, x1, kp.add(j * ks), ks, d);
                        store_pair(r0.add(j), r1.add(j), v);
                        j += LANES / 2;
                    }
                    for j in j..end {
                        *r0.add(j) = dot1(x0, kp.add(j * ks), d);
                        *r1.add(j) = dot1(x1, kp.add(j * ks), d);
                    }
                    i += 2;
                }
                if i < qb {
                    let x = qp(i);
                    let r = sp.add(i * stride);
                    let mut j = k0;
                    // Bytes of `LANES` rows of keys or values, a share per `LANES` values
                    // of a row.
                    let size = std::mem::size_of::<T>();
                    let rows = LANES * ks.max(head.values.stride) * size;
                    let step = rows.div_ceil(d / LANES).next_multiple_of(64);
                    let to_l2 = PrefetchLevel::active() == PrefetchLevel::L2;
                    let at = |rows: &super::HeadRows<'_, T>, j: usize| {
                        rows.data
                            .as_ptr()
                            .cast::<u8>()
                            .wrapping_add(j * rows.stride * size)
                    };
                    while j + LANES <= end {
                        let next = j + KEYS_AHEAD;
                        // Past the last key, the values alone (twice: a hint costs little).
                        let ahead = single.then(|| Ahead {
                            keys: if next + LANES <= keys_end {
                                at(&head.keys, next)
                            } else {
                                at(&head.values, j)
                            },
                            values: at(&head.values, j),
                            step,
                            to_l2,
                        });
                        store(r.add(j), dots_single(x, kp.add(j * ks), ks, d, ahead));
                        j += LANES;
                    }
                    single_tail(x, kp, ks, d, r, j, end);
                }
            }
        }
    };
}

#[cfg(target_arch = "x86_64")]
mod avx512;

#[cfg(target_arch = "x86_64")]
mod avx2 {
    //! AVX2 + FMA kernels of [`super::Head`]; every function needs a CPU with both (and
    //! F16C, for f16 keys and values) and a head size that is a multiple of 8.

    // Indexed loops over register arrays read like the arithmetic they do.
    #![allow(clippy::needless_range_loop)]

    use std::arch::x86_64::*;

    use super::{Head, KvElem};
    use crate::elementwise::avx2::exp;
    use crate::kernels::prefetch::PrefetchLevel;

    /// Horizontal sums of 8 vectors: lane `l` of the result is the sum of `a[l]`'s lanes.
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    fn sum8(a: [__m256; 8]) -> __m256 {
        let t0 = _mm256_hadd_ps(a[0], a[1]);
        let t1 = _mm256_hadd_ps(a[2], a[3]);
        let t2 = _mm256_hadd_ps(a[4], a[5]);
        let t3 = _mm256_hadd_ps(a[6], a[7]);
        let u0 = _mm256_hadd_ps(t0, t1);
        let u1 = _mm256_hadd_ps(t2, t3);
        _mm256_add_ps(
            _mm256_permute2f128_ps(u0, u1, 0x20),
            _mm256_permute2f128_ps(u0, u1, 0x31),
        )
    }

    /// Sum of the lanes of `v`.
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    pub(super) fn sum1(v: __m256) -> f32 {
        let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
        let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
        _mm_cvtss_f32(_mm_add_ss(s, _mm_movehdup_ps(s)))
    }

    /// Maximum of the lanes of `v`.
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    pub(super) fn max1(v: __m256) -> f32 {
        let s = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
        let s = _mm_max_ps(s, _mm_movehl_ps(s, s));
        _mm_cvtss_f32(_mm_max_ss(s, _mm_movehdup_ps(s)))
    }

    dot_kernels!("avx2,fma,f16c", sum8);

    /// Prefetches the line at `p` into L2 (`prefetcht1`) or L1 (`prefetcht0`): a hint, it
    /// reads nothing observable and never faults.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    pub(super) fn hint(p: *const u8, to_l2: bool) {
        if to_l2 {
            _mm_prefetch::<_MM_HINT_T1>(p.cast());
        } else {
            _mm_prefetch::<_MM_HINT_T0>(p.cast());
        }
    }

    /// What a `dots_single` call prefetches: as many rows of keys and of values as the
    /// call multiplies from these addresses, `step` bytes of each per vector of values
    /// multiplied, into L2 (`prefetcht1`) or L1 (`prefetcht0`) as the weight kernels do
    /// ([`PrefetchLevel`]).
    #[derive(Clone, Copy)]
    pub(super) struct Ahead {
        pub(super) keys: *const u8,
        pub(super) values: *const u8,
        pub(super) step: usize,
        pub(super) to_l2: bool,
    }

    /// `q · k` for one pair of rows, bit for bit as [`dots_single`] and [`dots_pair`] give
    /// it: the same 8 partial sums, reduced in [`sum8`]'s order.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    pub(super) unsafe fn dot1<T: KvElem>(q: *const f32, k: *const T, d: usize) -> f32 {
        let mut a = _mm256_setzero_ps();
        unsafe {
            for c in (0..d).step_by(8) {
                a = _mm256_fmadd_ps(_mm256_loadu_ps(q.add(c)), T::load8(k, c), a);
            }
        }
        // ((a₀ + a₁) + (a₂ + a₃)) + ((a₄ + a₅) + (a₆ + a₇)), as `sum8` adds each lane.
        let h = _mm256_hadd_ps(a, a);
        let h = _mm256_hadd_ps(h, h);
        _mm_cvtss_f32(_mm_add_ss(
            _mm256_castps256_ps128(h),
            _mm256_extractf128_ps(h, 1),
        ))
    }

    /// Asks for rows `j0..j1` of `rows` in the cache (`prefetcht0`) at once, while the keys
    /// of the same positions are multiplied for a block of queries: the value rows are read
    /// next ([`weighted_values`]). A single query spreads its prefetches instead
    /// ([`Ahead`]). The prefetch only hints: it reads nothing observable and never faults.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    pub(super) fn prefetch_rows<T: KvElem>(rows: &super::HeadRows<'_, T>, j0: usize, j1: usize) {
        if j1 <= j0 {
            return;
        }
        let base = rows.data.as_ptr().cast::<u8>();
        let size = std::mem::size_of::<T>();
        let (from, to) = (
            j0 * rows.stride * size,
            ((j1 - 1) * rows.stride + T::elems(rows.d)) * size,
        );
        let mut off = from & !63;
        while off < to {
            _mm_prefetch::<_MM_HINT_T0>(base.wrapping_add(off).cast());
            off += 64;
        }
    }

    /// Key rows ahead of those being multiplied that a single query asks for: 2.5 KiB at
    /// BTLM's head size in f16. 8 to 32 measured alike (Zen 4, session 19).
    pub(super) const KEYS_AHEAD: usize = 16;

    /// Stores a [`dots_pair`] result: lanes 0–3 (the first query's) at `r0`, 4–7 at `r1`.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn store_pair(r0: *mut f32, r1: *mut f32, v: V) {
        // SAFETY: the caller's 4 floats at each.
        unsafe {
            _mm_storeu_ps(r0, _mm256_castps256_ps128(v));
            _mm_storeu_ps(r1, _mm256_extractf128_ps(v, 1));
        }
    }

    /// Stores a [`dots_quad`] result: lanes `2n`, `2n + 1` (query `n`'s) at `r[n]`.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn store_quad(r: [*mut f32; 4], v: V) {
        let lo = _mm_castps_pd(_mm256_castps256_ps128(v));
        let hi = _mm_castps_pd(_mm256_extractf128_ps(v, 1));
        // SAFETY: the caller's 2 floats at each (stored as one 64-bit lane).
        unsafe {
            _mm_storel_pd(r[0].cast(), lo);
            _mm_storeh_pd(r[1].cast(), lo);
            _mm_storel_pd(r[2].cast(), hi);
            _mm_storeh_pd(r[3].cast(), hi);
        }
    }

    /// A single query's scores of keys `j..end` (fewer than 8) into `r`.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn single_tail<T: KvElem>(
        x: *const f32,
        kp: *const T,
        ks: usize,
        d: usize,
        r: *mut f32,
        j: usize,
        end: usize,
    ) {
        // SAFETY: the caller's rows.
        unsafe {
            for j in j..end {
                *r.add(j) = dot1(x, kp.add(j * ks), d);
            }
        }
    }

    /// See [`Head::softmax`].
    ///
    /// # Safety
    /// AVX2 + FMA (`row.len()`, a multiple of 8, is asserted).
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn softmax(
        row: &mut [f32],
        position: usize,
        scale: f32,
        slope: Option<f32>,
        floor: f32,
    ) -> (f32, f32) {
        let valid = (position + 1).min(row.len());
        assert!(row.len().is_multiple_of(8));
        let chunks = valid.div_ceil(8);
        let p = row.as_mut_ptr();
        let scale_v = _mm256_set1_ps(scale);
        let neg_slope = _mm256_set1_ps(-slope.unwrap_or(0.0));
        let pos = _mm256_set1_ps(position as f32);
        let iota = _mm256_setr_ps(0.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0);
        let valid_v = _mm256_set1_ps(valid as f32);
        // Indices below 2²⁴ are exact in f32, and so are their differences.
        let index = |c: usize| _mm256_add_ps(_mm256_set1_ps((c * 8) as f32), iota);
        let mut max = _mm256_set1_ps(floor);
        // SAFETY: chunks `0..chunks` lie inside `row` (asserted above).
        unsafe {
            for c in 0..chunks {
                let j = index(c);
                let mut s = _mm256_mul_ps(_mm256_loadu_ps(p.add(c * 8)), scale_v);
                if slope.is_some() {
                    s = _mm256_add_ps(s, _mm256_mul_ps(neg_slope, _mm256_sub_ps(pos, j)));
                }
                let s = _mm256_blendv_ps(
                    _mm256_set1_ps(f32::NEG_INFINITY),
                    s,
                    _mm256_cmp_ps(j, valid_v, _CMP_LT_OQ),
                );
                _mm256_storeu_ps(p.add(c * 8), s);
                max = _mm256_max_ps(max, s);
            }
            let top = max1(max);
            let max = _mm256_set1_ps(top);
            let mut sum = _mm256_setzero_ps();
            for c in 0..chunks {
                let e = exp(_mm256_sub_ps(_mm256_loadu_ps(p.add(c * 8)), max));
                _mm256_storeu_ps(p.add(c * 8), e);
                sum = _mm256_add_ps(sum, e);
            }
            row[chunks * 8..].fill(0.0);
            (top, sum1(sum))
        }
    }

    const LANES: usize = 8;
    type V = __m256;

    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    fn zero() -> V {
        _mm256_setzero_ps()
    }

    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn load(p: *const f32) -> V {
        // SAFETY: the caller's 8 floats.
        unsafe { _mm256_loadu_ps(p) }
    }

    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn store(p: *mut f32, v: V) {
        // SAFETY: the caller's 8 floats.
        unsafe { _mm256_storeu_ps(p, v) }
    }

    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn splat(p: *const f32) -> V {
        // SAFETY: the caller's float.
        unsafe { _mm256_broadcast_ss(&*p) }
    }

    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    fn fma(a: V, b: V, c: V) -> V {
        _mm256_fmadd_ps(a, b, c)
    }

    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn load_kv<T: KvElem>(row: *const T, c: usize) -> V {
        // SAFETY: the caller's 8 values.
        unsafe { T::load8(row, c) }
    }

    // 2 queries at a time in blocks (of the 16 registers: 10 sums, 2 weights, a row's
    // vector).
    weighted_kernels!("avx2,fma,f16c", 2);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The plain per-query attention the blocked kernels must equal: scores, `f32::exp`
    /// softmax normalized before the sum of values.
    fn reference<T: KvElem>(head: &Head<'_, T>) -> Vec<f32> {
        let d = head.keys.d;
        let mut out = vec![0f32; head.t * d];
        for (i, o) in out.chunks_exact_mut(d).enumerate() {
            let position = head.offset + i;
            let q = &head.queries[i * head.q_stride..][..d];
            let scores: Vec<f32> = (0..=position)
                .map(|j| {
                    let s = (0..d).map(|i| q[i] * head.keys.value(j, i)).sum::<f32>()
                        * head.keys.scale(j)
                        * head.scale;
                    s + head.slope.map_or(0.0, |m| -m * (position - j) as f32)
                })
                .collect();
            let max = scores.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            let e: Vec<f32> = scores.iter().map(|s| (s - max).exp()).collect();
            let sum: f32 = e.iter().sum();
            for (j, e) in e.iter().enumerate() {
                for (i, o) in o.iter_mut().enumerate() {
                    *o += e / sum * head.values.scale(j) * head.values.value(j, i);
                }
            }
        }
        out
    }

    /// Deterministic values in `[-amp, amp)`.
    fn noise(n: usize, seed: u64, amp: f32) -> Vec<f32> {
        let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        (0..n)
            .map(|_| {
                s ^= s << 13;
                s ^= s >> 7;
                s ^= s << 17;
                ((s >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0) * amp
            })
            .collect()
    }

    fn paths() -> Vec<AttnPath> {
        let mut p = vec![AttnPath::Scalar];
        if avx2_supported() {
            p.push(AttnPath::Avx2);
        }
        if avx512_supported() {
            p.push(AttnPath::Avx512);
        }
        p
    }

    /// Every path's output within 2·10⁻⁶ of [`reference`].
    fn check<T: KvElem>(head: &Head<'_, T>, scores: &mut Vec<f32>, what: &str) {
        let want = reference(head);
        let (t, d) = (head.t, head.keys.d);
        for path in paths() {
            let mut got = vec![f32::NAN; t * d];
            head.attend(path, &mut got, scores);
            let diff = want
                .iter()
                .zip(&got)
                .map(|(a, b)| (a - b).abs())
                .fold(0f32, f32::max);
            assert!(
                diff < 2e-6,
                "{what} {path:?} d {d} offset {} t {t} slope {:?}: {diff}",
                head.offset,
                head.slope
            );
        }
    }

    /// Random keys and values of `total` positions (rows `d + 8` apart, inside a larger
    /// cache), `t` queries (inside `[t, 3e]`-like rows, values within `q_amp`), and the same
    /// cache in f16, and in int8 and 4-bit rows with their scales.
    struct HeadData {
        d: usize,
        total: usize,
        stride: usize,
        q_stride: usize,
        keys: Vec<f32>,
        values: Vec<f32>,
        queries: Vec<f32>,
        half: [Vec<half::f16>; 2],
        int8: [Vec<u8>; 2],
        int4: [Vec<Nibbles>; 2],
    }

    impl HeadData {
        fn new(d: usize, total: usize, t: usize, seed: u64, q_amp: f32) -> Self {
            let (stride, q_stride) = (d + 8, 3 * d + 4);
            let keys = noise(total * stride, seed, 1.5);
            let values = noise(total * stride, seed + 1000, 1.0);
            let queries = noise(t * q_stride, seed + 2000, q_amp);
            let half = |v: &[f32]| v.iter().map(|&x| half::f16::from_f32(x)).collect();
            // int8 and 4-bit rows take `d + 4` bytes or fewer of the same stride.
            let rows = |v: &[f32], row: fn(&[f32], &mut [u8])| {
                let mut out = vec![0u8; total * stride];
                for j in 0..total {
                    row(&v[j * stride..][..d], &mut out[j * stride..][..d + 4]);
                }
                out
            };
            let int4 = |v: &[f32]| Nibbles::slice(&rows(v, q4_row_scalar)).to_vec();
            HeadData {
                half: [half(&keys), half(&values)],
                int8: [rows(&keys, q8_row_scalar), rows(&values, q8_row_scalar)],
                int4: [int4(&keys), int4(&values)],
                d,
                total,
                stride,
                q_stride,
                keys,
                values,
                queries,
            }
        }

        /// The head of its `t` queries at `offset` over the f32 cache.
        fn head(&self, t: usize, offset: usize, slope: Option<f32>) -> Head<'_> {
            let rows = |data| HeadRows {
                data,
                stride: self.stride,
                positions: self.total,
                d: self.d,
            };
            Head {
                queries: &self.queries,
                q_stride: self.q_stride,
                t,
                offset,
                keys: rows(&self.keys),
                values: rows(&self.values),
                scale: 1.0 / (self.d as f32).sqrt(),
                slope,
            }
        }

        /// `head` over the f16 cache.
        fn f16<'a>(&'a self, head: &Head<'a>) -> Head<'a, half::f16> {
            with_cache(head, &self.half[0], &self.half[1], self.stride)
        }

        /// `head` over the int8 cache.
        fn q8<'a>(&'a self, head: &Head<'a>) -> Head<'a, u8> {
            with_cache(head, &self.int8[0], &self.int8[1], self.stride)
        }

        /// `head` over the 4-bit cache.
        fn q4<'a>(&'a self, head: &Head<'a>) -> Head<'a, Nibbles> {
            with_cache(head, &self.int4[0], &self.int4[1], self.stride)
        }
    }

    /// `head` over `keys` and `values` instead of its own cache, rows `stride` apart.
    fn with_cache<'a, T>(
        head: &Head<'a, f32>,
        keys: &'a [T],
        values: &'a [T],
        stride: usize,
    ) -> Head<'a, T> {
        let rows = |data| HeadRows {
            data,
            stride,
            positions: head.keys.positions,
            d: head.keys.d,
        };
        Head {
            queries: head.queries,
            q_stride: head.q_stride,
            t: head.t,
            offset: head.offset,
            keys: rows(keys),
            values: rows(values),
            scale: head.scale,
            slope: head.slope,
        }
    }

    #[test]
    fn blocked_heads_equal_the_per_query_reference() {
        let mut scores = Vec::new();
        let mut seed = 1;
        // Head sizes with and without an AVX2 kernel (12: scalar only), positions that are
        // not multiples of 8 or of the tiles, one query, blocks with odd tails.
        for d in [8, 12, 16, 80] {
            for (offset, t) in [
                (0, 1),
                (0, 2),
                (0, 5),
                (3, 1),
                (7, 3),
                (64, 1),
                (0, 37),
                (63, 17),
                (130, 33),
                (200, 1),
                (1000, 1),
                (1000, 3),
            ] {
                for slope in [None, Some(0.35), Some(2f32.powf(-8.0))] {
                    seed += 1;
                    let data = HeadData::new(d, offset + t, t, seed, 1.5);
                    let head = data.head(t, offset, slope);
                    check(&head, &mut scores, "f32");
                    // The same cache in f16, and in int8 and 4-bit rows with their scales:
                    // the kernels must equal the reference on the values stored.
                    check(&data.f16(&head), &mut scores, "f16");
                    check(&data.q8(&head), &mut scores, "q8");
                    check(&data.q4(&head), &mut scores, "q4");
                }
            }
        }
    }

    /// `head`'s outputs with its queries attended in calls of `pieces` queries each (they
    /// sum to `head.t`), every call over the same cache.
    fn attend_in_pieces<T: KvElem>(
        head: &Head<'_, T>,
        path: AttnPath,
        pieces: &[usize],
    ) -> Vec<f32> {
        let d = head.keys.d;
        let mut out = vec![f32::NAN; head.t * d];
        let mut scores = Vec::new();
        let mut start = 0;
        for &t in pieces {
            let piece = Head {
                queries: &head.queries[start * head.q_stride..],
                t,
                offset: head.offset + start,
                ..*head
            };
            piece.attend(path, &mut out[start * d..(start + t) * d], &mut scores);
            start += t;
        }
        assert_eq!(start, head.t);
        out
    }

    /// Asserts that `head` attended in calls of `a` and of `b` queries gives the same bits.
    fn same_bits<T: KvElem>(
        head: &Head<'_, T>,
        path: AttnPath,
        a: &[usize],
        b: &[usize],
        what: &str,
    ) {
        let bits = |v: Vec<f32>| v.into_iter().map(f32::to_bits).collect::<Vec<_>>();
        assert!(
            bits(attend_in_pieces(head, path, a)) == bits(attend_in_pieces(head, path, b)),
            "{what}"
        );
    }

    #[test]
    fn a_query_attends_alike_however_its_sequence_is_split() {
        // A query's output must not depend on the other queries of its call (how a prompt
        // is split into prefill pieces, or whether it runs one token at a time), bit for
        // bit: prefix reuse keeps positions computed in other splits. Three tiles of keys,
        // so the largest score can grow from tile to tile.
        let total = 2 * KEY_TILE + 22;
        let splits: [&[usize]; 5] = [
            &[total],
            &[5, 13, 64, 1, 67],
            &[17, 16, 16, 2, 99],
            &[63, 2, 85],
            &[1, 1, 7, 141],
        ];
        let mut seed = 77;
        for d in [8, 16, 40, 80] {
            for slope in [None, Some(0.35), Some(2f32.powf(-8.0))] {
                seed += 1;
                let data = HeadData::new(d, total, total, seed, 2.5);
                let head = data.head(total, 0, slope);
                for path in paths() {
                    let one_by_one = vec![1; total];
                    for split in splits {
                        let case = format!("{path:?} d {d} slope {slope:?} split {split:?}");
                        same_bits(&head, path, split, &one_by_one, &format!("f32 {case}"));
                        same_bits(
                            &data.f16(&head),
                            path,
                            split,
                            &one_by_one,
                            &format!("f16 {case}"),
                        );
                        same_bits(
                            &data.q8(&head),
                            path,
                            split,
                            &one_by_one,
                            &format!("q8 {case}"),
                        );
                        same_bits(
                            &data.q4(&head),
                            path,
                            split,
                            &one_by_one,
                            &format!("q4 {case}"),
                        );
                    }
                }
            }
        }
    }

    /// Row 0 of `rows` holds `x` rounded to steps of `s = max |x| / levels` (its scale):
    /// every value read back within half a step.
    fn assert_within_half_a_step<T: KvElem>(x: &[f32], rows: &HeadRows<'_, T>, levels: f32) {
        let max = x.iter().fold(0f32, |m, v| m.max(v.abs()));
        let s = rows.scale(0);
        assert_eq!(s, max / levels);
        for (i, v) in x.iter().enumerate() {
            let back = rows.value(0, i) * s;
            assert!(
                (back - v).abs() <= s * 0.5 * 1.0001,
                "d {}: {v} → {back} (step {s})",
                x.len()
            );
        }
    }

    #[test]
    fn int8_rows_keep_every_value_within_half_a_step() {
        let d = 80;
        for seed in 1..20 {
            let amp = [1e-3f32, 0.5, 3.0, 700.0][seed as usize % 4];
            let x = noise(d, seed, amp);
            let mut row = vec![0u8; d + 4];
            q8_row_scalar(&x, &mut row);
            let rows = HeadRows {
                data: &row,
                stride: d + 4,
                positions: 1,
                d,
            };
            assert!(
                rows.row(0)
                    .iter()
                    .all(|&q| (-127..=127).contains(&(q as i8)))
            );
            assert_within_half_a_step(&x, &rows, 127.0);
        }
        // The largest magnitude is stored exactly as ±127 steps; a zero row has scale 0, and
        // a NaN is stored as 0.
        let mut row = vec![0u8; 8 + 4];
        q8_row_scalar(&[0.0, -2.54, 1.27, f32::NAN, 0.0, 0.0, 2.0, 0.01], &mut row);
        assert_eq!(row[1] as i8, -127);
        assert_eq!(row[2] as i8, 64);
        assert_eq!(row[3] as i8, 0);
        q8_row_scalar(&[0.0; 8], &mut row);
        assert!(row[..8].iter().all(|&b| b == 0));
        assert_eq!(f32::from_le_bytes(row[8..].try_into().unwrap()), 0.0);
    }

    #[test]
    fn four_bit_rows_keep_every_value_within_half_a_step() {
        for d in [8, 12, 16, 80] {
            for seed in 1..20 {
                let amp = [1e-3f32, 0.5, 3.0, 700.0][seed as usize % 4];
                let x = noise(d, seed, amp);
                let mut bytes = vec![0xffu8; KvLayout::Q4.row_bytes(d)];
                q4_row_scalar(&x, &mut bytes);
                let rows = HeadRows {
                    data: Nibbles::slice(&bytes),
                    stride: bytes.len(),
                    positions: 1,
                    d,
                };
                for i in 0..d {
                    let q = rows.value(0, i);
                    assert!((-7.0..=7.0).contains(&q) && q.fract() == 0.0, "{q}");
                }
                assert_within_half_a_step(&x, &rows, 7.0);
            }
        }
        // The largest magnitude is ±7 steps; NaN is 0; a zero row has scale 0.
        let mut x = [0f32; 16];
        (x[0], x[1], x[8], x[9], x[15]) = (-1.4, 0.2, -0.4, f32::NAN, 1.0);
        let mut row = vec![0u8; 8 + 4];
        q4_row_scalar(&x, &mut row);
        let s = f32::from_le_bytes(row[8..].try_into().unwrap());
        assert_eq!(s, 1.4f32 / 7.0);
        // Bits 4m and 32 + 4m of the word hold values 2m and 2m + 1: value 0 (−7, 0b1001)
        // at bits 0–3, 8 (−2, 0b1110) at 16–19, 1 (1) at 32–35, 9 (NaN as 0) at 48–51 and
        // 15 (5) at 60–63.
        assert_eq!(row[..8], [0x09, 0, 0x0e, 0, 0x01, 0, 0, 0x50]);
        q4_row_scalar(&[0.0; 16], &mut row);
        assert!(row.iter().all(|&b| b == 0));
    }

    #[test]
    #[cfg(target_arch = "x86_64")]
    fn four_bit_vectors_widen_every_value_as_the_scalar_path_does() {
        let d = 48;
        let x = noise(d, 5, 3.0);
        let mut bytes = vec![0u8; KvLayout::Q4.row_bytes(d)];
        q4_row_scalar(&x, &mut bytes);
        let row = Nibbles::slice(&bytes);
        let want: Vec<f32> = (0..d).map(|i| Nibbles::value(row, i)).collect();
        assert!(want.iter().any(|&v| v < 0.0) && want.iter().any(|&v| v > 0.0));
        if avx2_supported() {
            for c in (0..d).step_by(8) {
                let mut got = [0f32; 8];
                // SAFETY: AVX2, FMA and F16C checked; the row holds `d` values.
                unsafe {
                    std::arch::x86_64::_mm256_storeu_ps(
                        got.as_mut_ptr(),
                        Nibbles::load8(row.as_ptr(), c),
                    )
                };
                assert_eq!(got, want[c..c + 8], "AVX2 values {c}..");
            }
        }
        if avx512_supported() {
            for c in (0..d).step_by(16) {
                let mut got = [0f32; 16];
                // SAFETY: AVX-512 F checked; the row holds `d` values.
                unsafe {
                    std::arch::x86_64::_mm512_storeu_ps(
                        got.as_mut_ptr(),
                        Nibbles::load16(row.as_ptr(), c),
                    )
                };
                assert_eq!(got, want[c..c + 16], "AVX-512 values {c}..");
            }
        }
    }

    #[test]
    fn huge_scores_give_a_one_hot_softmax() {
        // Keys far above the others: the others' exponentials underflow to 0. With three
        // tiles of keys, the largest score (key 150, third tile) comes after a large one
        // (key 10): the first tile's weights must vanish against the later maximum.
        let d = 8;
        for (n, spikes, want) in [
            (20, vec![(5, 1.0)], 5.0),
            (3 * KEY_TILE, vec![(10, 1.0), (150, 2.0)], 150.0),
        ] {
            let mut keys = vec![0f32; n * d];
            for (j, k) in spikes {
                keys[j * d] = k;
            }
            let values: Vec<f32> = (0..n * d).map(|i| (i / d) as f32).collect();
            let queries = vec![1000.0; d];
            let rows = |data| HeadRows {
                data,
                stride: d,
                positions: n,
                d,
            };
            let head = Head {
                queries: &queries,
                q_stride: d,
                t: 1,
                offset: n - 1,
                keys: rows(&keys),
                values: rows(&values),
                scale: 1.0,
                slope: None,
            };
            for path in paths() {
                let mut out = vec![0f32; d];
                head.attend(path, &mut out, &mut Vec::new());
                assert_eq!(out, vec![want; d], "{n} keys, {path:?}");
            }
        }
    }
}
