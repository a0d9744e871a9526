//! What the SIMD kernel modules ([`super::avx2`], [`super::avx512`]) share: the per-tile
//! entry point, generated for each module's row kernels by `simd_tile!`, and the pointers
//! to rows of quantized activations.

/// Pointers to the first of the rows of quantized activations a kernel call works on.
pub(super) struct Q8Rows {
    /// Quants, `k_pad` per row.
    pub q: *const i8,
    /// Block scales, `nb` per row.
    pub d: *const f32,
    /// Block sums of the quants, `nb` per row.
    pub sum: *const i32,
    /// Stride of `q`.
    pub k_pad: usize,
    /// Stride of `d` and `sum`.
    pub nb: usize,
    /// Whether the call starts at row 0: the first over its tile, which reads the tile from
    /// memory (later calls of a product with more rows find it in cache); the AVX-512
    /// kernels prefetch the weights only then.
    pub first: bool,
}

/// Pointers to the first of the rows of q4k activations (one scale per super-block) a kernel
/// call works on.
pub(super) struct Q8KRows {
    /// Quants, `k_pad` per row.
    pub q: *const i8,
    /// Super-block scales, `ns` per row.
    pub d: *const f32,
    /// Sums of the quants of each block of 32, `nb` per row.
    pub bsum: *const i16,
    /// Stride of `q`.
    pub k_pad: usize,
    /// Stride of `d`.
    pub ns: usize,
    /// Stride of `bsum`.
    pub nb: usize,
    /// Whether the call starts at row 0 (see [`Q8Rows::first`]).
    pub first: bool,
}

/// Calls `$f::<R>(args…)` for `R = $n`, one of the listed row counts.
macro_rules! call_rows {
    ($n:expr, $f:ident, $args:tt, [$($r:literal),+]) => {
        match $n {
            $($r => $f::<$r> $args,)+
            n => unreachable!("{n} rows per call"),
        }
    };
}

/// Defines the module's `pub unsafe fn tile` over its generic row kernels `f32_rows`,
/// `f16_rows`, `bf16_rows` (`(w, k_pad, x, stride, first, out)`, `first`: whether the call
/// is the first over its tile, see [`Q8Rows::first`]), `q8_0_rows` (`(w, blocks, &Q8Rows,
/// out)`) and `q4k_rows` (`(w, super_blocks, &Q8KRows, out)`), for the listed row counts
/// (1 to `MAX_ROWS`).
macro_rules! simd_tile {
    ($($r:literal),+) => {
        /// One tile times `out.len()` activation rows (1 to [`MAX_ROWS`]) starting at `row0`.
        ///
        /// # Safety
        /// The CPU must support the features of [`supported`]; `tile` must be one whole
        /// tile of `format` for `k_pad` inputs, and `acts` must be prepared for `format` with
        /// at least `row0 + out.len()` rows of `k_pad` inputs. (The dispatcher checks all
        /// of this.)
        pub unsafe fn tile(
            format: WeightFormat,
            tile: &[u8],
            k_pad: usize,
            acts: &Acts<'_>,
            row0: usize,
            out: &mut [[f32; TILE]],
        ) {
            let t = tile.as_ptr();
            // SAFETY (every call): the forwarded contract of this function.
            match (format, acts) {
                (WeightFormat::F32, Acts::F32 { x }) => unsafe {
                    let x = x[row0 * k_pad..].as_ptr();
                    call_rows!(out.len(), f32_rows, (t, k_pad, x, k_pad, row0 == 0, out), [$($r),+])
                },
                (WeightFormat::F16, Acts::F32 { x }) => unsafe {
                    let x = x[row0 * k_pad..].as_ptr();
                    call_rows!(out.len(), f16_rows, (t, k_pad, x, k_pad, row0 == 0, out), [$($r),+])
                },
                (WeightFormat::Bf16, Acts::Bf16 { x }) => unsafe {
                    let x = x[row0 * k_pad..].as_ptr();
                    call_rows!(out.len(), bf16_rows, (t, k_pad, x, k_pad, row0 == 0, out), [$($r),+])
                },
                (WeightFormat::Q8_0, Acts::Q8 { q, d, sum }) => {
                    let nb = k_pad / QBLOCK;
                    let a = Q8Rows {
                        q: q[row0 * k_pad..].as_ptr(),
                        d: d[row0 * nb..].as_ptr(),
                        sum: sum[row0 * nb..].as_ptr(),
                        k_pad,
                        nb,
                        first: row0 == 0,
                    };
                    unsafe { call_rows!(out.len(), q8_0_rows, (t, nb, &a, out), [$($r),+]) }
                }
                (WeightFormat::Q4K, Acts::Q8K { q, d, bsum }) => {
                    let (ns, nb) = (k_pad / QK_K, k_pad / QBLOCK);
                    let a = Q8KRows {
                        q: q[row0 * k_pad..].as_ptr(),
                        d: d[row0 * ns..].as_ptr(),
                        bsum: bsum[row0 * nb..].as_ptr(),
                        k_pad,
                        ns,
                        nb,
                        first: row0 == 0,
                    };
                    unsafe { call_rows!(out.len(), q4k_rows, (t, ns, &a, out), [$($r),+]) }
                }
                _ => unreachable!("activations are prepared for the weight format"),
            }
        }
    };
}
