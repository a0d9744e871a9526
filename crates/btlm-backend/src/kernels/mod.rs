//! CPU matrix kernels for BTLM: `y = x · Wᵀ + b` for a few activation rows (decode, one
//! row per running sequence) up to whole prompts (prefill), with `W` stored in one of the
//! packed [`WeightFormat`]s.
//!
//! The instruction set is chosen at run time ([`KernelPath::active`]): AMX (after a
//! numerical [`self_check`] on this CPU), AVX-512 (F/BW/VL with
//! VNNI), AVX2 + FMA + F16C, or the portable [`scalar`] reference, so a plain
//! `cargo build --release` gets the fast paths. The AVX-512 bf16 kernel also needs
//! AVX512-BF16; on AVX-512 CPUs without it (Cascade Lake, Ice Lake, Tiger Lake) the AVX-512
//! path runs bf16 weights on the AVX2 bf16 kernel and every other format on AVX-512.
//! `BTLM_KERNELS=amx|avx512|avx2|scalar` forces a path (tests run every path the CPU supports;
//! `scripts/check-kernels-emulated.sh` runs the AVX-512 and AMX kernels on an emulated
//! Sapphire Rapids and the AVX-512 ones on an emulated Ice Lake without AVX512-BF16, for
//! machines without them). On the AVX2 path, products with at least [`MANY_ROWS`]
//! activation rows (prefill, large batches) run cache-blocked many-rows kernels instead of
//! the tile kernels: f32 ones for bf16/f16 weights, and from [`Q4K_MANY_ROWS`] rows int8
//! ones computing exactly what the tile kernels compute for q4k. On the AVX-512 path
//! (with AVX512-BF16), bf16 products from [`WIDE_MANY_ROWS`] rows run the wide kernels
//! (`wide512.rs`: 4 tiles × 6 rows per micro-kernel, bit for bit the tile kernels' sums),
//! and exact f32 products on both AVX-512 paths from 16 rows run its f32 micro-kernel (the
//! tile kernel's FMAs, in its order).
//! With [`PrefillPrecision::Bf16`] (opt-in), f32 and f16 products from [`WIDE_MANY_ROWS`]
//! rows run on the same wide micro-kernel in bf16 arithmetic, each chunk of weights rounded
//! to bf16 on the fly (`convert512.rs`); decode keeps the exact kernels.
//! On the AMX path, bf16 products from [`MANY_ROWS`] rows and q8_0 ones from
//! [`AMX_Q8_0_MANY_ROWS`] run on the tile unit in bf16 (`amx.rs`: weights converted to bf16
//! per product, bf16 arithmetic), q4k ones from [`AMX_Q4K_MANY_ROWS`] in int8 (`amx8.rs`:
//! bit for bit the tile kernels' sums).
//! `BTLM_MANY_ROWS=N|off` moves or disables the threshold of every format.
//! The AVX-512 q4k tile kernel scales its sub-block sums in i32 on Zen 5 and later, in f32
//! elsewhere ([`q4k_scaling`]: the same bits, each the faster where chosen);
//! `BTLM_Q4K_SCALES=f32|i32` overrides.
//! The AVX-512 tile kernels prefetch the weight stream into L1 in two hops, in one on Zen 5
//! and later, into L2 on a 32 KiB L1D ([`prefetch`]: where each measured faster);
//! `BTLM_PREFETCH=l1|l1-one-hop|l2` overrides.
//!
//! Work is split over output tiles on rayon's global pool (the one candle's own matrix
//! products use); each tile is read once per call and multiplied with every activation row
//! while it sits in cache, so decode streams the weights once per step whatever the batch.

use std::fmt;
use std::sync::OnceLock;

use rayon::prelude::*;

pub mod acts;
pub mod aligned;
#[cfg(target_arch = "x86_64")]
mod amx;
#[cfg(target_arch = "x86_64")]
mod amx8;
#[cfg(target_arch = "x86_64")]
#[macro_use]
mod simd;
#[cfg(target_arch = "x86_64")]
mod avx2;
#[cfg(target_arch = "x86_64")]
mod avx512;
#[cfg(target_arch = "x86_64")]
mod convert512;
pub mod cpuid;
#[cfg(all(target_arch = "x86_64", feature = "emulation"))]
#[doc(hidden)]
pub mod emulation;
pub(crate) mod env_choice;
pub mod format;
#[cfg(target_arch = "x86_64")]
mod many;
#[cfg(target_arch = "x86_64")]
mod many8;
pub mod pack;
pub mod prefetch;
pub mod q4k_scaling;
pub mod quant;
pub mod scalar;
pub mod self_check;
mod split;
pub mod storage;
#[cfg(target_arch = "x86_64")]
mod wide512;

pub use crate::options::PrefillPrecision;
pub use acts::Acts;
pub use format::{TILE, WeightFormat};
pub use pack::{PackedMatrix, Source, SourceData};
pub use split::TileProduct;
pub use storage::Bytes;

/// Errors of the kernels' entry points.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KernelError {
    /// Operand sizes disagree.
    #[error("matrix shapes: {0}")]
    Shape(String),
    /// The requested instruction set is not available on this CPU or platform.
    #[error("kernel path {0} is not supported by this CPU")]
    Unsupported(KernelPath),
    /// The OS refused the memory for packed weights.
    #[error("no memory for packed weights: {0}")]
    Memory(String),
    /// `BTLM_KERNELS` names no path.
    #[error("BTLM_KERNELS={0:?}: expected auto, amx, avx512, avx2 or scalar")]
    BadOverride(String),
}

/// An instruction set the kernels can run on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum KernelPath {
    /// The AVX-512 kernels, and Intel AMX bf16 tile products for many rows of bf16, q8_0
    /// and q4k weights (`amx.rs`). [`KernelPath::detect`] chooses it only after it passed
    /// [`self_check::self_check`] on this CPU (`BTLM_KERNELS=avx512` keeps it off).
    Amx,
    /// AVX-512 F/BW/VL with VNNI (and AVX2/FMA/F16C). bf16 weights need AVX512-BF16 too;
    /// without it they run on the AVX2 bf16 kernel (reported as `avx512 (bf16 on avx2)`).
    Avx512,
    /// AVX2 with FMA and F16C.
    Avx2,
    /// Portable Rust.
    Scalar,
}

impl fmt::Display for KernelPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            KernelPath::Amx => "amx",
            KernelPath::Avx512 => "avx512",
            KernelPath::Avx2 => "avx2",
            KernelPath::Scalar => "scalar",
        })
    }
}

impl KernelPath {
    /// Every path, fastest first.
    pub const ALL: [KernelPath; 4] = [
        KernelPath::Amx,
        KernelPath::Avx512,
        KernelPath::Avx2,
        KernelPath::Scalar,
    ];

    /// Whether this CPU can run the path.
    pub fn supported(self) -> bool {
        match self {
            KernelPath::Scalar => true,
            #[cfg(target_arch = "x86_64")]
            KernelPath::Amx => amx::supported() && avx512::supported() && avx512::has_bf16(),
            #[cfg(target_arch = "x86_64")]
            KernelPath::Avx512 => avx512::supported(),
            #[cfg(target_arch = "x86_64")]
            KernelPath::Avx2 => avx2::supported(),
            #[cfg(not(target_arch = "x86_64"))]
            _ => false,
        }
    }

    /// The fastest path this CPU supports; AMX only if it also passes its self-check
    /// (see [`KernelPath::Amx`]), which runs once per process and logs its verdict.
    pub fn detect() -> KernelPath {
        if KernelPath::Amx.supported() && amx_passes_self_check() {
            return KernelPath::Amx;
        }
        Self::ALL
            .into_iter()
            .filter(|&p| p != KernelPath::Amx)
            .find(|p| p.supported())
            .unwrap_or(KernelPath::Scalar)
    }

    /// The path named by `value` (`auto` or empty: [`Self::detect`]), if this CPU runs it.
    pub fn parse_override(value: &str) -> Result<KernelPath, KernelError> {
        let path = match value.trim() {
            "" | "auto" => return Ok(Self::detect()),
            "amx" => KernelPath::Amx,
            "avx512" => KernelPath::Avx512,
            "avx2" => KernelPath::Avx2,
            "scalar" => KernelPath::Scalar,
            other => return Err(KernelError::BadOverride(other.to_string())),
        };
        if path.supported() {
            Ok(path)
        } else {
            Err(KernelError::Unsupported(path))
        }
    }

    /// The path of this process: `BTLM_KERNELS` if set, else [`Self::detect`]; decided once.
    pub fn active() -> Result<KernelPath, KernelError> {
        static ACTIVE: OnceLock<Result<KernelPath, KernelError>> = OnceLock::new();
        ACTIVE
            .get_or_init(|| {
                Self::parse_override(&std::env::var("BTLM_KERNELS").unwrap_or_default())
            })
            .clone()
    }

    /// The path whose tile kernels multiply `format` weights on this path, `avx512_bf16`
    /// telling whether the CPU has AVX512-BF16: without it the AVX-512 paths run bf16
    /// weights on the AVX2 bf16 kernel (the same packed tiles and bf16 activations, see
    /// `avx2.rs`); otherwise the path itself.
    fn tile_path(self, format: WeightFormat, avx512_bf16: bool) -> KernelPath {
        match (self, format) {
            (KernelPath::Avx512 | KernelPath::Amx, WeightFormat::Bf16) if !avx512_bf16 => {
                KernelPath::Avx2
            }
            _ => self,
        }
    }

    /// Which kernels multiply `rows` activation rows with `format` weights on this path.
    fn route(self, format: WeightFormat, rows: usize) -> Route {
        if self.many_rows_min(format).is_none_or(|min| rows < min) {
            return Route::Tiles;
        }
        match (self, format) {
            // Measured on AVX2 (Zen 3): f32 weights run at the FMA peak either way; bf16/f16
            // gain 2× from the f32 many-rows kernels, which lose to the 8-bit tile kernels
            // for q8_0 and q4k; q4k gains 1.2× at 128 rows from the int8 many-rows kernels
            // (from Q4K_MANY_ROWS rows on), q8_0 lost 5–10% there (session 8,
            // docs/benchmarks.md "int8 many-rows kernels for prefill").
            (KernelPath::Avx2, WeightFormat::Bf16 | WeightFormat::F16) => Route::Many,
            (KernelPath::Avx2, WeightFormat::Q4K) => Route::Many8,
            // f32 and f16 keep their precision (AVX-512 tile kernels); bf16 rounding of
            // bf16 weights is none, of 8-bit weights below their quantization error.
            // q4k: the tile kernels' integer sums on the tile unit (`amx8.rs`), bit for bit.
            (KernelPath::Amx, WeightFormat::Q4K) => Route::Amx8,
            (KernelPath::Amx, WeightFormat::Bf16 | WeightFormat::Q8_0) => Route::Amx,
            // Several tiles per micro-kernel (`wide512.rs`); bf16 needs AVX512-BF16; f32
            // the tile kernels' FMAs in their order, with fewer loads (the AMX path's f32
            // products are exact only on these AVX-512 kernels).
            (KernelPath::Avx512, WeightFormat::Bf16) if avx512_bf16() => Route::Wide,
            (KernelPath::Avx512 | KernelPath::Amx, WeightFormat::F32) => Route::Wide,
            _ => Route::Tiles,
        }
    }

    /// [`Self::route`] with the arithmetic `prefill` for f32/f16 products of many rows: with
    /// [`PrefillPrecision::Bf16`] and AVX512-BF16, from [`WIDE_MANY_ROWS`] rows (or
    /// `BTLM_MANY_ROWS`) on, they run converted to bf16 chunk by chunk (`convert512.rs`);
    /// on the AMX path from [`MANY_ROWS`] rows on the tile unit (`amx.rs`, which converts
    /// them to bf16 per pair of tiles).
    fn route_with(self, format: WeightFormat, prefill: PrefillPrecision, rows: usize) -> Route {
        let converts = prefill == PrefillPrecision::Bf16
            && matches!(format, WeightFormat::F32 | WeightFormat::F16)
            && matches!(self, KernelPath::Avx512 | KernelPath::Amx)
            && avx512_bf16();
        let amx = self == KernelPath::Amx;
        let default_min = if amx { MANY_ROWS } else { WIDE_MANY_ROWS };
        let min = many_rows_override().unwrap_or(Some(default_min));
        match (converts && min.is_some_and(|min| rows >= min), amx) {
            (true, true) => Route::Amx,
            (true, false) => Route::Converted,
            (false, _) => self.route(format, rows),
        }
    }

    /// Whether every row of a product of `format` weights with the arithmetic `prefill`
    /// gets the same bits on this path whatever the number of rows multiplied with it: true
    /// when each route from one row to many computes the tile kernels' arithmetic (the tile
    /// kernels themselves, the wide bf16 and the int8 many-rows q4k kernels, tested bit for
    /// bit against them); false where many rows switch to other arithmetic (the AMX bf16
    /// tile unit, the AVX2 f32 many-rows kernels, f32/f16 weights converted to bf16).
    pub fn rows_independent(self, format: WeightFormat, prefill: PrefillPrecision) -> bool {
        matches!(
            self.route_with(format, prefill, usize::MAX),
            Route::Tiles | Route::Wide | Route::Many8 | Route::Amx8
        )
    }

    /// From how many rows on a product of `format` weights with the arithmetic `prefill`
    /// gives each row the same bits whatever other rows share it, provided they all number
    /// at least as many (so that each alone would take the same route): 1 where
    /// [`Self::rows_independent`]; else the threshold of the many-rows route (the tile unit,
    /// the AVX2 f32 many-rows kernels, f32/f16 converted to bf16), each of which computes
    /// every row on its own (tested). The routes switch once, at their threshold.
    pub fn same_route_from(self, format: WeightFormat, prefill: PrefillPrecision) -> usize {
        if self.rows_independent(format, prefill) {
            return 1;
        }
        let top = self.route_with(format, prefill, usize::MAX);
        // The smallest count on the top route (routes are monotone in the row count).
        let (mut lo, mut hi) = (1usize, 1usize << 20);
        if self.route_with(format, prefill, hi) != top {
            return usize::MAX;
        }
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            if self.route_with(format, prefill, mid) == top {
                hi = mid;
            } else {
                lo = mid + 1;
            }
        }
        lo
    }

    /// The padded inputs of the bf16 activations a product of `rows` rows of `format`
    /// weights of `n_in` inputs with the arithmetic `prefill` takes when it runs on the wide
    /// bf16 micro-kernel (bf16 weights, or f32/f16 ones converted, from [`WIDE_MANY_ROWS`]
    /// rows on): such a product can run with [`matmul_wide_on`]. `None` for every other
    /// product.
    pub fn wide_k_pad(
        self,
        format: WeightFormat,
        prefill: PrefillPrecision,
        rows: usize,
        n_in: usize,
    ) -> Option<usize> {
        match self.route_with(format, prefill, rows) {
            Route::Wide if format == WeightFormat::Bf16 => Some(WeightFormat::Bf16.padded_k(n_in)),
            Route::Converted => Some(WeightFormat::Bf16.padded_k(n_in)),
            _ => None,
        }
    }

    /// Whether a product of `rows` rows of `format` weights with the arithmetic `prefill`
    /// runs on the wide f32 micro-kernel: it then runs with [`matmul_wide_on`] on its f32
    /// activations as given ([`Acts::F32`]).
    pub fn wide_f32(self, format: WeightFormat, prefill: PrefillPrecision, rows: usize) -> bool {
        format == WeightFormat::F32 && self.route_with(format, prefill, rows) == Route::Wide
    }

    /// Whether [`PrefillPrecision::Bf16`] changes any product of `format` weights on this
    /// path and CPU (f32 and f16 weights on the AVX-512 paths with AVX512-BF16).
    pub fn prefill_bf16_applies(self, format: WeightFormat) -> bool {
        matches!(format, WeightFormat::F32 | WeightFormat::F16)
            && matches!(
                self.route_with(format, PrefillPrecision::Bf16, usize::MAX),
                Route::Converted | Route::Amx
            )
    }

    /// From how many activation rows on products of `format` weights may run other kernels
    /// than the tile kernels: `BTLM_MANY_ROWS` if set, else [`Q4K_MANY_ROWS`] for q4k on
    /// AVX2, [`WIDE_MANY_ROWS`] for bf16 on AVX-512, [`AMX_Q8_0_MANY_ROWS`] and
    /// [`AMX_Q4K_MANY_ROWS`] for q8_0 and q4k on AMX, and [`MANY_ROWS`] otherwise; `None`
    /// when disabled.
    fn many_rows_min(self, format: WeightFormat) -> Option<usize> {
        many_rows_override().unwrap_or(match (self, format) {
            (KernelPath::Avx2, WeightFormat::Q4K) => Some(Q4K_MANY_ROWS),
            (KernelPath::Avx512, WeightFormat::Bf16) => Some(WIDE_MANY_ROWS),
            (KernelPath::Avx512 | KernelPath::Amx, WeightFormat::F32) => Some(WIDE_F32_MANY_ROWS),
            (KernelPath::Amx, WeightFormat::Q8_0) => Some(AMX_Q8_0_MANY_ROWS),
            (KernelPath::Amx, WeightFormat::Q4K) => Some(AMX_Q4K_MANY_ROWS),
            _ => Some(MANY_ROWS),
        })
    }

    /// Whether a product with `rows` activation rows of `format` weights runs other
    /// kernels than this path's tile kernels (from [`MANY_ROWS`] rows on, [`Q4K_MANY_ROWS`]
    /// for q4k on AVX2, [`WIDE_MANY_ROWS`] for bf16 on AVX-512).
    pub fn many_rows(self, format: WeightFormat, rows: usize) -> bool {
        self.many_rows_with(format, PrefillPrecision::Exact, rows)
    }

    /// [`Self::many_rows`] with the arithmetic `prefill` (see [`matmul_with`]).
    pub fn many_rows_with(
        self,
        format: WeightFormat,
        prefill: PrefillPrecision,
        rows: usize,
    ) -> bool {
        self.route_with(format, prefill, rows) != Route::Tiles
    }

    /// The kernels a product with `rows` activation rows of `format` weights runs, for
    /// reports: the path's name (its tile kernels), `avx512 (bf16 on avx2)` (bf16 weights
    /// without AVX512-BF16), `avx2-many`, `avx2-many8`, `avx512-wide` or `amx-tiles`.
    pub fn kernel_name(self, format: WeightFormat, rows: usize) -> String {
        self.kernel_name_with(format, PrefillPrecision::Exact, rows)
    }

    /// [`Self::kernel_name`] with the arithmetic `prefill` (see [`matmul_with`]):
    /// `avx512-wide-bf16` for f32/f16 products converted to bf16.
    pub fn kernel_name_with(
        self,
        format: WeightFormat,
        prefill: PrefillPrecision,
        rows: usize,
    ) -> String {
        match self.route_with(format, prefill, rows) {
            Route::Tiles
                if self != KernelPath::Avx2
                    && self.tile_path(format, avx512_bf16()) == KernelPath::Avx2 =>
            {
                "avx512 (bf16 on avx2)".into()
            }
            Route::Tiles if self == KernelPath::Amx => "avx512".into(),
            Route::Tiles => self.to_string(),
            Route::Many => "avx2-many".into(),
            Route::Many8 => "avx2-many8".into(),
            Route::Amx => "amx-tiles".into(),
            Route::Amx8 => "amx-int8".into(),
            Route::Wide => "avx512-wide".into(),
            Route::Converted => "avx512-wide-bf16".into(),
        }
    }

    /// Activation rows one kernel call handles.
    fn max_rows(self) -> usize {
        match self {
            #[cfg(target_arch = "x86_64")]
            KernelPath::Avx512 | KernelPath::Amx => avx512::MAX_ROWS,
            #[cfg(target_arch = "x86_64")]
            KernelPath::Avx2 => avx2::MAX_ROWS,
            _ => 8,
        }
    }
}

/// Whether the AMX path passed [`self_check::self_check`] on this CPU; checked once, with
/// a warning when it failed (detection then falls back to AVX-512).
fn amx_passes_self_check() -> bool {
    static PASSED: OnceLock<bool> = OnceLock::new();
    *PASSED.get_or_init(|| match self_check::self_check(KernelPath::Amx) {
        Ok(()) => {
            tracing::info!("AMX kernels passed their self-check: prompts run on the tile unit");
            true
        }
        Err(e) => {
            tracing::warn!("AMX kernels failed their self-check, using AVX-512 instead: {e}");
            false
        }
    })
}

/// Whether this CPU has AVX512-BF16 (see [`KernelPath::Avx512`]).
fn avx512_bf16() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        avx512::has_bf16()
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// From this many activation rows on (prompts, large batches), the AVX2 path multiplies
/// bf16 and f16 weights with the cache-blocked many-rows kernels (weights converted to f32
/// once per block of 256 inputs and reused by every row, `many.rs`), q4k weights with the
/// int8 many-rows kernels (each super-block unpacked once for all rows, the tile kernels'
/// integer arithmetic, `many8.rs`), and the AMX path bf16, q8_0 and q4k weights on the
/// tile unit (`amx.rs`).
/// `BTLM_MANY_ROWS=N` sets another threshold (for every format, [`Q4K_MANY_ROWS`]
/// included), `BTLM_MANY_ROWS=off` (or 0) disables them.
pub const MANY_ROWS: usize = 16;

/// The many-rows threshold of q4k weights on the AVX2 path: the int8 many-rows kernels
/// measured up to 10% slower than the tile kernels at 16 and 32 rows (their unpacking and
/// per-super-block work is shared by fewer rows), 5% faster at 48, 7% at 64, 1.2× at 128
/// (session 8, docs/benchmarks.md "int8 many-rows kernels for prefill").
pub const Q4K_MANY_ROWS: usize = 48;

/// The many-rows threshold of bf16 weights on the AVX-512 path (with AVX512-BF16): the wide
/// kernels (`wide512.rs`, 4 tiles × 6 rows per micro-kernel) measured 10–15% slower than the
/// tile kernels at 16 and 32 rows, level at 64, faster at 128 (session 9, Zen 5).
pub const WIDE_MANY_ROWS: usize = 64;

/// From how many activation rows f32 products run on the wide micro-kernel on the AVX-512
/// paths (same sums as the tile kernels, fewer loads; docs/benchmarks.md, session 21).
pub const WIDE_F32_MANY_ROWS: usize = 16;

/// The many-rows threshold of q8_0 weights on the AMX path: each product converts the
/// weights to bf16 first (in AVX-512), a cost shared by its rows; on a Sapphire
/// Rapids-class Xeon the AVX-512 VNNI tile kernels were faster at 16 rows, level at 32, and
/// slower from 64 (1.8× at 128; session 15, docs/benchmarks.md "AMX on a real Xeon").
pub const AMX_Q8_0_MANY_ROWS: usize = 32;

/// The many-rows threshold of q4k weights on the AMX path, from which they run on the
/// AMX-INT8 kernels (`amx8.rs`, the tile kernels' sums bit for bit, 16 rows per product):
/// against the AVX-512 VNNI tile kernels, one layer's `mlp.c_fc` from memory measured 7%
/// slower at 9 rows, 15% faster at 16, 1.7× at 32, 1.9× at 64 and 128 (session 17,
/// docs/benchmarks.md).
pub const AMX_Q4K_MANY_ROWS: usize = 16;

/// The many-rows threshold of this process ([`MANY_ROWS`] or `BTLM_MANY_ROWS`), `None`
/// when disabled; read once. (q4k on AVX2: [`Q4K_MANY_ROWS`] unless `BTLM_MANY_ROWS` is
/// set.)
pub fn many_rows_threshold() -> Option<usize> {
    many_rows_override().unwrap_or(Some(MANY_ROWS))
}

/// `BTLM_MANY_ROWS` of this process, read once: `None` when unset, `Some(None)` when it
/// disables the many-rows kernels (`off`, 0), else the threshold it sets (an unreadable
/// value: [`MANY_ROWS`]).
fn many_rows_override() -> Option<Option<usize>> {
    static SET: OnceLock<Option<Option<usize>>> = OnceLock::new();
    *SET.get_or_init(|| {
        let v = std::env::var("BTLM_MANY_ROWS").ok()?;
        Some(match v.trim() {
            "off" | "0" => None,
            n => Some(n.parse().unwrap_or(MANY_ROWS)),
        })
    })
}

/// The kernels of one product.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Route {
    /// The path's tile kernels, a few rows per call.
    Tiles,
    /// The AVX2 many-rows kernels (`many.rs`).
    Many,
    /// The AVX2 int8 many-rows kernels for q4k (`many8.rs`).
    Many8,
    /// The AMX kernels (`amx.rs`).
    Amx,
    /// The AMX-INT8 many-rows kernels for q4k (`amx8.rs`).
    Amx8,
    /// The AVX-512 kernels of several tiles at once (`wide512.rs`).
    Wide,
    /// f32/f16 weights converted to bf16 per chunk for the wide kernels (`convert512.rs`).
    Converted,
}

/// A raw output pointer shared by the tasks of one product; each task writes its own columns.
#[derive(Clone, Copy)]
struct OutPtr(*mut f32);
// SAFETY: tasks write disjoint columns (their own tiles) of the output, which outlives them.
unsafe impl Send for OutPtr {}
// SAFETY: as above.
unsafe impl Sync for OutPtr {}

impl OutPtr {
    /// The pointer to element `i` (a method, so that closures capture the whole `OutPtr`).
    fn at(self, i: usize) -> *mut f32 {
        self.0.wrapping_add(i)
    }

    /// Asks for the lines of columns `cols` (cut at the last column) of rows `rows` of an
    /// output of `n_out` columns in the exclusive state, ahead of the stores of a tile's
    /// results: the rows are `4·n_out` bytes apart, and a product of many rows has outputs
    /// far larger than L2, so each row's store would otherwise wait on a read for ownership
    /// from farther. (AMX-INT8 q4k products of 256 rows: 3–12% faster, docs/benchmarks.md,
    /// session 38.) A prefetch, so any addresses are harmless.
    #[cfg(target_arch = "x86_64")]
    fn own_lines(self, n_out: usize, rows: std::ops::Range<usize>, cols: std::ops::Range<usize>) {
        use std::arch::x86_64::{_MM_HINT_ET0, _mm_prefetch};
        let end = cols.end.min(n_out);
        if cols.start >= end {
            return;
        }
        for r in rows {
            let base = r * n_out;
            // One address in each line the columns touch: every 16 values, and the last.
            for c in (cols.start..end).step_by(16).chain([end - 1]) {
                // SAFETY: a prefetch reads nothing and faults on nothing.
                unsafe { _mm_prefetch::<_MM_HINT_ET0>(self.at(base + c).cast()) };
            }
        }
    }

    /// Writes one row of a tile's results, `vals` (plus `bias[col..]`), into row `r` of an
    /// output of `n_out` columns from column `col` on, cut at the last column.
    ///
    /// # Safety
    /// The output holds row `r` (`(r + 1) * n_out` values or more), and no other task
    /// writes its columns `col..col + vals.len()` meanwhile.
    unsafe fn store_row(
        self,
        n_out: usize,
        r: usize,
        col: usize,
        vals: &[f32],
        bias: Option<&[f32]>,
    ) {
        let ncols = (n_out - col).min(vals.len());
        // SAFETY: the caller's contract.
        let dst = unsafe { std::slice::from_raw_parts_mut(self.at(r * n_out + col), ncols) };
        match bias {
            Some(b) => {
                for ((d, v), bv) in dst.iter_mut().zip(vals).zip(&b[col..]) {
                    *d = v + bv;
                }
            }
            None => dst.copy_from_slice(&vals[..ncols]),
        }
    }
}

/// Tiles per parallel task: enough tasks for work stealing between busy cores, each still a
/// long contiguous stream for the hardware prefetchers.
fn tiles_per_task(tiles: usize, rows: usize) -> usize {
    let threads = rayon::current_num_threads().max(1);
    let tasks = if rows >= 16 { 8 * threads } else { 4 * threads };
    tiles.div_ceil(tasks).max(1)
}

/// Tiles per parallel task of the many-rows kernels (`many.rs`, `many8.rs`): four tasks per
/// thread, each a run of whole tiles.
fn many_rows_tiles_per_task(tiles: usize) -> usize {
    tiles
        .div_ceil(4 * rayon::current_num_threads().max(1))
        .max(1)
}

/// Runs `task` once per run of [`many_rows_tiles_per_task`] consecutive units of
/// `0..tiles` (tiles, or pairs of tiles; the last run shorter) as the tasks of `for_each`
/// (rayon's pool, or a step's team): the split of the many-rows kernels (`many.rs`,
/// `many8.rs`, `amx8.rs`, `amx.rs`).
#[cfg(target_arch = "x86_64")]
fn for_each_tile_run(
    tiles: usize,
    for_each: &acts::ForEach<'_>,
    task: impl Fn(std::ops::Range<usize>) + Sync,
) {
    let per_task = many_rows_tiles_per_task(tiles);
    for_each(tiles.div_ceil(per_task), &|i| {
        task(i * per_task..((i + 1) * per_task).min(tiles))
    });
}

/// Checks the operands of a product (see [`matmul`]) and that the CPU runs `path`.
fn check_operands(
    path: KernelPath,
    w: &PackedMatrix,
    x: &[f32],
    rows: usize,
    bias: Option<&[f32]>,
    y: &[f32],
) -> Result<(), KernelError> {
    let (n_in, n_out) = (w.n_in(), w.n_out());
    if x.len() != rows * n_in || y.len() != rows * n_out {
        return Err(KernelError::Shape(format!(
            "{rows} rows: x has {} values and y {} for a {n_out}×{n_in} matrix",
            x.len(),
            y.len()
        )));
    }
    if let Some(b) = bias
        && b.len() != n_out
    {
        return Err(KernelError::Shape(format!(
            "bias of {} values for {n_out} outputs",
            b.len()
        )));
    }
    if !path.supported() {
        return Err(KernelError::Unsupported(path));
    }
    Ok(())
}

/// `y = x · Wᵀ (+ bias)` for `rows` rows: `x` is `rows × n_in`, `y` is `rows × n_out`.
pub fn matmul(
    path: KernelPath,
    w: &PackedMatrix,
    x: &[f32],
    rows: usize,
    bias: Option<&[f32]>,
    y: &mut [f32],
) -> Result<(), KernelError> {
    matmul_with(path, PrefillPrecision::Exact, w, x, rows, bias, y)
}

/// [`matmul`] with the arithmetic `prefill` of products with many rows:
/// [`PrefillPrecision::Bf16`] runs f32 and f16 weights from [`WIDE_MANY_ROWS`] rows on in
/// bf16 on CPUs with AVX512-BF16 (weights rounded to bf16 chunk by chunk, activations as
/// for bf16 weights); every other product is [`matmul`]'s.
pub fn matmul_with(
    path: KernelPath,
    prefill: PrefillPrecision,
    w: &PackedMatrix,
    x: &[f32],
    rows: usize,
    bias: Option<&[f32]>,
    y: &mut [f32],
) -> Result<(), KernelError> {
    matmul_with_on(path, prefill, w, x, rows, bias, y, &on_rayon)
}

/// [`matmul_with`] with the tasks of the tile unit's and the wide kernels run by
/// `for_each` (rayon's pool, or a step's team), the others' on rayon's pool: the same
/// values either way. A step's team waiting on rayon's pool spins for a while (its helpers
/// before they park) beside the pool's workers; on the team, q4k prompts of 256 tokens ran
/// 4–6% faster (docs/benchmarks.md, session 38).
#[allow(clippy::too_many_arguments)]
pub fn matmul_with_on(
    path: KernelPath,
    prefill: PrefillPrecision,
    w: &PackedMatrix,
    x: &[f32],
    rows: usize,
    bias: Option<&[f32]>,
    y: &mut [f32],
    for_each: &acts::ForEach<'_>,
) -> Result<(), KernelError> {
    check_operands(path, w, x, rows, bias, y)?;
    let n_in = w.n_in();
    if rows == 0 {
        return Ok(());
    }
    #[cfg(target_arch = "x86_64")]
    match path.route_with(w.format(), prefill, rows) {
        Route::Tiles => {}
        // SAFETY: `path` is supported (checked above), so are the AVX2 features `many`
        // needs; shapes were checked above.
        Route::Many => {
            unsafe { many::matmul(w, x, rows, bias, y) };
            return Ok(());
        }
        // SAFETY: as above; the activations are prepared here for the weights' format
        // (q4k, the only format routed there).
        Route::Many8 => {
            let acts = Acts::prepare(w.format(), x, rows, n_in, w.k_pad());
            unsafe { many8::matmul(w, &acts, rows, bias, y) };
            return Ok(());
        }
        // SAFETY: as above (AMX-INT8 is part of the Amx path); the weights are q4k, the
        // only format routed there, and `matmul_in_passes` prepares their activations.
        Route::Amx8 => {
            unsafe { amx8::matmul_in_passes(w, x, rows, bias, y, for_each) };
            return Ok(());
        }
        // SAFETY: as above; the Amx path is supported only when AMX is usable.
        Route::Amx => {
            unsafe { amx::matmul(w, x, rows, bias, y, for_each) };
            return Ok(());
        }
        // SAFETY: as above; routed only for the formats `wide512` takes (bf16 with
        // AVX512-BF16, f32); the activations are prepared here for the weights' format.
        Route::Wide => {
            let acts = Acts::prepare(w.format(), x, rows, n_in, w.k_pad());
            unsafe { wide512::matmul(w, &acts, rows, bias, y, for_each) };
            return Ok(());
        }
        // SAFETY: as above; routed only for f32/f16 weights with AVX512-BF16; the
        // activations are prepared here as for bf16 weights of the same inputs.
        Route::Converted => {
            let k_pad = WeightFormat::Bf16.padded_k(n_in);
            let acts = Acts::prepare(WeightFormat::Bf16, x, rows, n_in, k_pad);
            unsafe { convert512::matmul(w, &acts, rows, bias, y, for_each) };
            return Ok(());
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = (prefill, for_each);
    let acts = Acts::prepare(w.format(), x, rows, n_in, w.k_pad());
    // Without AVX512-BF16 the AVX-512 paths run bf16 weights on the AVX2 kernel, which the
    // CPU then supports too (`avx512::supported` requires AVX2, FMA and F16C).
    let tiles = path.tile_path(w.format(), avx512_bf16());
    let out = OutPtr(y.as_mut_ptr());
    let per_task = tiles_per_task(w.tiles(), rows);
    let tasks = w.tiles().div_ceil(per_task);
    (0..tasks).into_par_iter().for_each(|task| {
        let first = task * per_task;
        let last = (first + per_task).min(w.tiles());
        tiles_into(tiles, w, &acts, rows, bias, out, first..last, tile_group(w));
    });
    Ok(())
}

/// [`matmul_with`] for a product that runs on the wide micro-kernels, its activations
/// already prepared and its tasks run by `for_each` (e.g. a step's team instead of rayon's
/// pool): the same values as [`matmul_with`]. On the bf16 micro-kernel (see
/// [`KernelPath::wide_k_pad`]) `acts` are [`Acts::prepare`]d for [`WeightFormat::Bf16`]
/// with `rows` rows of that many inputs (e.g. shared by several products of the same
/// input); on the f32 one ([`KernelPath::wide_f32`]) they are the rows as given.
#[allow(clippy::too_many_arguments)]
pub fn matmul_wide_on(
    path: KernelPath,
    prefill: PrefillPrecision,
    w: &PackedMatrix,
    acts: &Acts<'_>,
    rows: usize,
    bias: Option<&[f32]>,
    y: &mut [f32],
    for_each: &acts::ForEach<'_>,
) -> Result<(), KernelError> {
    let (n_in, n_out) = (w.n_in(), w.n_out());
    let (acts_format, k_pad) = if path.wide_f32(w.format(), prefill, rows) {
        (WeightFormat::F32, w.k_pad())
    } else if let Some(k_pad) = path.wide_k_pad(w.format(), prefill, rows, n_in) {
        (WeightFormat::Bf16, k_pad)
    } else {
        return Err(KernelError::Shape(format!(
            "a {} product of {rows} rows does not run on the wide kernels",
            w.format()
        )));
    };
    if !acts.fits(acts_format, rows, k_pad)
        || y.len() != rows * n_out
        || bias.is_some_and(|b| b.len() != n_out)
    {
        return Err(KernelError::Shape(format!(
            "{rows} rows of {k_pad} {acts_format} inputs, {} outputs for a {n_out}×{n_in} matrix",
            y.len()
        )));
    }
    if !path.supported() {
        return Err(KernelError::Unsupported(path));
    }
    #[cfg(target_arch = "x86_64")]
    match path.route_with(w.format(), prefill, rows) {
        // SAFETY: `path` is supported and routes bf16 here only with AVX512-BF16
        // (`wide_k_pad`), f32 on every AVX-512 CPU; `acts` fit, `y` and `bias` have the
        // sizes checked.
        Route::Wide => unsafe { wide512::matmul(w, acts, rows, bias, y, for_each) },
        // SAFETY: as above (f32/f16 weights; acts of the bf16 padded inputs).
        Route::Converted => unsafe { convert512::matmul(w, acts, rows, bias, y, for_each) },
        _ => unreachable!("checked by wide_k_pad"),
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = (acts, bias, y, for_each);
    Ok(())
}

/// Runs `task(i)` for every `i` in `0..n` on rayon's pool (an [`acts::ForEach`]).
fn on_rayon(n: usize, task: &(dyn Fn(usize) + Sync)) {
    (0..n).into_par_iter().for_each(task);
}

/// Bytes of weights [`tiles_into`] multiplies with one block of rows before the next block:
/// the group stays in L2 (2 MiB or more on the AVX-512 cores measured) while every block
/// of rows passes over it.
const TILE_GROUP_BYTES: usize = 512 << 10;

/// Tiles of `w` in one group of [`tiles_into`]: as many as fit [`TILE_GROUP_BYTES`], at
/// least one.
fn tile_group(w: &PackedMatrix) -> usize {
    (TILE_GROUP_BYTES / w.format().tile_bytes(w.k_pad()).max(1)).max(1)
}

/// Tiles `range` of `w` times all `rows` rows of `acts` (`+ bias`) into their columns of
/// `out` (`rows × n_out`), one kernel call per tile and up to `path.max_rows()` rows.
/// `path` must be supported, with AVX512-BF16 for bf16 weights on an AVX-512 path (see
/// [`KernelPath::tile_path`]), `out` must hold `rows × w.n_out()` values, and no other task
/// may write these tiles' columns (the tasks of [`matmul`] take disjoint ranges).
///
/// With more rows than one call takes, the tiles go in groups of `group` (callers pass
/// [`tile_group`]; at least one): each block
/// of rows runs over the whole group before the next block, so the block's activations
/// stay in L1 across the group and its outputs are written a group's columns at a time
/// (whole cache lines side by side) instead of one 64-byte line per row and tile (at 128
/// rows, a row of 7680 outputs is 30 KiB apart from the next). Every call multiplies the
/// same tile with the same rows as tile by tile: the same bits.
#[allow(clippy::too_many_arguments)]
fn tiles_into(
    path: KernelPath,
    w: &PackedMatrix,
    acts: &Acts<'_>,
    rows: usize,
    bias: Option<&[f32]>,
    out: OutPtr,
    range: std::ops::Range<usize>,
    group: usize,
) {
    let n_out = w.n_out();
    let mut buf = [[0f32; TILE]; 8];
    let group = group.max(1);
    let mut g0 = range.start;
    while g0 < range.end {
        let g1 = (g0 + group).min(range.end);
        let mut row0 = 0;
        while row0 < rows {
            let nr = (rows - row0).min(path.max_rows());
            for t in g0..g1 {
                run_tile(path, w, t, acts, row0, &mut buf[..nr]);
                let col = t * TILE;
                let ncols = (n_out - col).min(TILE);
                for (r, vals) in buf[..nr].iter().enumerate() {
                    let start = (row0 + r) * n_out + col;
                    // SAFETY: `start + ncols <= rows * n_out`, the size of `out` (caller),
                    // and columns `col..col + ncols` belong to this range's tiles only.
                    let dst = unsafe { std::slice::from_raw_parts_mut(out.at(start), ncols) };
                    match bias {
                        Some(b) => {
                            for ((d, v), bv) in dst.iter_mut().zip(vals).zip(&b[col..]) {
                                *d = v + bv;
                            }
                        }
                        None => dst.copy_from_slice(&vals[..ncols]),
                    }
                }
            }
            row0 += nr;
        }
        g0 = g1;
    }
}

/// One tile of `w` times `out.len()` rows of `acts` from `row0`, on `path`.
fn run_tile(
    path: KernelPath,
    w: &PackedMatrix,
    t: usize,
    acts: &Acts<'_>,
    row0: usize,
    out: &mut [[f32; TILE]],
) {
    let tile = w.tile(t);
    let k_pad = w.k_pad();
    match path {
        KernelPath::Scalar => scalar::tile(w.format(), tile, k_pad, acts, row0, out),
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `matmul` checked that the CPU supports the path and (`tile_path`) that it
        // has AVX512-BF16 if the format is bf16; `tile` is a whole tile of
        // `w` (PackedMatrix guarantees its size); `acts` was prepared from `rows × n_in`
        // values for this format and `row0 + out.len() <= rows`.
        KernelPath::Avx512 | KernelPath::Amx => unsafe {
            avx512::tile(w.format(), tile, k_pad, acts, row0, out)
        },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: as above.
        KernelPath::Avx2 => unsafe { avx2::tile(w.format(), tile, k_pad, acts, row0, out) },
        #[cfg(not(target_arch = "x86_64"))]
        _ => unreachable!("only the scalar path is supported here"),
    }
}

#[cfg(test)]
mod tests;
