//! Intel AMX (tile matrix unit) many-rows kernels: bf16 products with f32 accumulation
//! (`tdpbf16ps`), for prefill and large batches on Sapphire Rapids and later Xeons (q4k
//! weights take the int8 kernels of `amx8.rs`; this module still multiplies them, through
//! the generic conversion, for its tests and the emulated check).
//!
//! AMX intrinsics are unstable in Rust, so the tile instructions are written with `asm!`.
//! Linux hands out AMX register state only to processes that ask for it
//! (`arch_prctl(ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA)`); [`supported`] asks once and
//! also checks CPUID (AMX-TILE, AMX-BF16, AMX-INT8) and that the OS enabled the tile state
//! in XCR0.
//!
//! Layout: per parallel task, two weight tiles (32 outputs) in bf16 in the AMX `B` layout —
//! pairs of inputs interleaved, `[k/2][16 outputs][2]`, which is the packed bf16 format
//! itself — padded to a multiple of 32 inputs. Activations are rounded
//! to bf16 once per call into `A` blocks of 16 rows × 32 inputs (1 KiB each, contiguous).
//! The inner loop keeps a 32 × 32 block of f32 sums in four tile registers (`tmm0..3`) and
//! streams `A` (`tmm4`, `tmm5`) and `B` (`tmm6`, `tmm7`) tiles through them.
//!
//! Arithmetic: weights and activations rounded to bf16, products and sums in f32 — what
//! PyTorch's bf16 prefill computes. The dispatcher sends bf16 and q8_0 weights here;
//! f32 and f16 keep their precision on the AVX-512 kernels (this module computes f16 too,
//! and its test covers it).
//!
//! **Status**: written on a machine without AMX (AMD Zen 3) and first run on real AMX
//! hardware in session 15 (a Sapphire Rapids-class Xeon, where `tests.rs` runs it); there
//! it measured ~7× the AVX-512 bf16 kernels at 128 rows (docs/benchmarks.md, "AMX on a real
//! Xeon"). `scripts/check-kernels-emulated.sh` runs [`pair_product`] (everything but the
//! rayon split and [`supported`]) on an emulated Sapphire Rapids core whose tile
//! instructions are emulated from the SDM, for machines without AMX. Detection chooses this
//! path only after its products passed the numerical self-check (`self_check.rs`) on the
//! CPU at hand.
//!
//! bf16 weights are read in place (the packed tile is the `B` layout; a partial last step of
//! 32 inputs is copied and zero-padded); other formats are converted per pair of tiles into
//! a scratch `B` buffer (q8_0 dequantized and rounded to bf16 in AVX-512, f32 rounded in
//! AVX-512 straight from the packed tile, the others converted to f32 in AVX2 first).

use std::arch::asm;
use std::arch::x86_64::{__cpuid, __cpuid_count};
use std::sync::OnceLock;

use rayon::prelude::*;

use super::OutPtr;
use super::acts::{ForEach, f32_to_bf16};
use super::aligned::AlignedVec;
use super::format::{TILE, WeightFormat};
use super::pack::PackedMatrix;

/// Bytes of the next pair of f32 tiles a pair product prefetches into L2 while the tile
/// unit multiplies (see [`pair_product`]): the 128-row products of one BTLM-3B layer took
/// 24.1–26.2 ms without, 22.3–23.9 with 64–128 KiB, 25.8–27.0 with 192 KiB (more pushes
/// the activations out of L2; `bench --matmul-only --matmul-rows 128 --formats f32
/// --prefill-precision bf16`, session 35, docs/benchmarks.md).
const F32_AHEAD: usize = 96 << 10;

/// Inputs per `A`/`B` tile (16 rows of 64 bytes of bf16).
const KC: usize = 32;
/// Bytes of one tile register's worth of data (16 rows × 64 bytes).
const TILE_BYTES: usize = 1024;

/// `arch_prctl` request to be granted an extended state component.
const ARCH_REQ_XCOMP_PERM: u64 = 0x1023;
/// The AMX tile data state component.
const XFEATURE_XTILEDATA: u64 = 18;
/// `arch_prctl`'s system call number on x86-64 Linux.
const SYS_ARCH_PRCTL: u64 = 158;

/// Whether this CPU has AMX-TILE, AMX-BF16 and AMX-INT8, the OS enabled tile state, the kernel
/// granted it to this process, and the AVX2 and AVX512-BF16 conversions are available.
/// Decided once.
pub fn supported() -> bool {
    static OK: OnceLock<bool> = OnceLock::new();
    *OK.get_or_init(|| {
        cpu_and_os_have_amx()
            && request_permission()
            && super::many::supported()
            && super::avx512::supported()
            && super::avx512::has_bf16()
    })
}

/// CPUID leaf 7 (EDX bit 22 AMX-BF16, bit 24 AMX-TILE, bit 25 AMX-INT8: every AMX CPU so
/// far has all three; the AMX path runs bf16 products here and q4k ones on the int8 kernels
/// of `amx8.rs`) and XCR0 bits 17/18 (tile config and tile data enabled by the OS).
// `__cpuid` is a safe function in newer Rust releases, unsafe in older ones.
#[allow(unused_unsafe)]
pub(super) fn cpu_and_os_have_amx() -> bool {
    // SAFETY: CPUID is available on every x86-64 CPU.
    let max_leaf = unsafe { __cpuid(0) }.eax;
    if max_leaf < 7 {
        return false;
    }
    // SAFETY: as above; leaf 7 exists (checked).
    let l7 = unsafe { __cpuid_count(7, 0) };
    let amx_bf16 = l7.edx & (1 << 22) != 0;
    let amx_tile = l7.edx & (1 << 24) != 0;
    let amx_int8 = l7.edx & (1 << 25) != 0;
    // SAFETY: as above.
    let osxsave = unsafe { __cpuid(1) }.ecx & (1 << 27) != 0;
    if !(amx_bf16 && amx_tile && amx_int8 && osxsave) {
        return false;
    }
    let (lo, _hi): (u32, u32);
    // SAFETY: XGETBV with ECX = 0 reads XCR0; it is available when OSXSAVE is set.
    unsafe {
        asm!("xgetbv", in("ecx") 0u32, out("eax") lo, out("edx") _hi,
             options(nomem, nostack, preserves_flags));
    }
    lo & (0b11 << 17) == 0b11 << 17
}

/// Asks Linux for the AMX tile data state; true if granted.
#[cfg(target_os = "linux")]
fn request_permission() -> bool {
    let ret: i64;
    // SAFETY: arch_prctl(ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA) only changes which
    // extended register state this process may use; the syscall clobbers rcx and r11.
    unsafe {
        asm!("syscall",
             inlateout("rax") SYS_ARCH_PRCTL as i64 => ret,
             in("rdi") ARCH_REQ_XCOMP_PERM,
             in("rsi") XFEATURE_XTILEDATA,
             lateout("rcx") _, lateout("r11") _,
             options(nostack));
    }
    ret == 0
}

/// Other systems: no known way to ask; AMX stays off.
#[cfg(not(target_os = "linux"))]
fn request_permission() -> bool {
    false
}

/// The `ldtilecfg` operand: palette 1, all eight tiles 16 rows × 64 bytes.
#[repr(C, align(64))]
struct TileConfig {
    palette: u8,
    start_row: u8,
    reserved: [u8; 14],
    colsb: [u16; 16],
    rows: [u8; 16],
}

impl TileConfig {
    fn all_16x64() -> Self {
        let mut colsb = [0u16; 16];
        let mut rows = [0u8; 16];
        for t in 0..8 {
            colsb[t] = 64;
            rows[t] = 16;
        }
        TileConfig {
            palette: 1,
            start_row: 0,
            reserved: [0; 14],
            colsb,
            rows,
        }
    }
}

/// Tile registers configured on this thread for the duration of a task (all eight 16 rows
/// × 64 bytes); released on drop.
pub(super) struct Tiles;

impl Tiles {
    /// # Safety
    /// [`supported`] must be true.
    pub(super) unsafe fn configure() -> Tiles {
        let cfg = TileConfig::all_16x64();
        // SAFETY: AMX is supported and permitted (caller); the config is valid palette 1.
        unsafe {
            asm!("ldtilecfg [{}]", in(reg) &raw const cfg, options(nostack, readonly, preserves_flags));
        }
        Tiles
    }
}

impl Drop for Tiles {
    fn drop(&mut self) {
        // SAFETY: tiles were configured by `configure` on this thread.
        unsafe { asm!("tilerelease", options(nostack, nomem, preserves_flags)) };
    }
}

/// Where the `B` tiles of two 16-output weight tiles come from: `main` steps of 32 inputs,
/// 1 KiB apart from `b0`/`b1`, then, if `tail0` is not null, one last step from
/// `tail0`/`tail1` (a partial step copied and zero-padded apart, so that the main steps can
/// be read straight from the packed weights).
#[derive(Clone, Copy)]
struct BSteps {
    b0: *const u8,
    b1: *const u8,
    main: usize,
    tail0: *const u8,
    tail1: *const u8,
}

/// The weights a task reads next (the next pair's packed tiles), prefetched into L2 a few
/// lines per main step while the tile unit works on the current pair: the conversion of the
/// next pair then reads L2 instead of waiting on memory with the tile unit idle (q8_0, see
/// [`pair_product`]).
struct Ahead {
    /// The next line to prefetch (a prefetch never faults, even past the matrix).
    next: *const u8,
    /// Lines per main step.
    lines: usize,
}

/// The `asm!` lines of [`block_2x2`] and [`block_1x2`] after each main step: prefetch
/// `{lines}` lines from `{pf}` on (the [`Ahead`] of the call; `{k}` a scratch register).
macro_rules! prefetch_ahead {
    () => {
        "mov {k}, {lines}\n test {k}, {k}\n jz 6f\n 5:\n prefetcht1 [{pf}]\n add {pf}, 64\n \
         dec {k}\n jnz 5b\n 6:"
    };
}

/// `C[2][2] (16×16 f32 each) = Σ_kc A[m][kc] · B[n][kc]` over the steps of `b`: `a0`/`a1`
/// the first `A` tiles of two 16-row blocks (consecutive steps 1 KiB apart, the tail step
/// after the main ones); `c` receives `[m][n][16][16]` f32. After each main step,
/// prefetches `ahead.lines` lines from `ahead.next` on (and advances it).
///
/// # Safety
/// Tiles configured ([`Tiles::configure`]); at least one step; every pointer valid for its
/// steps' KiB (`c` for 4 KiB, writable).
#[inline]
unsafe fn block_2x2(a0: *const u8, a1: *const u8, b: BSteps, c: *mut f32, ahead: &mut Ahead) {
    // SAFETY: the caller's contract; tmm registers are not used by compiled code.
    unsafe {
        asm!(
            "tilezero tmm0",
            "tilezero tmm1",
            "tilezero tmm2",
            "tilezero tmm3",
            "test {n}, {n}",
            "jz 3f",
            "2:",
            "tileloadd tmm4, [{a0} + {s64}*1]",
            "tileloadd tmm6, [{b0} + {s64}*1]",
            "tdpbf16ps tmm0, tmm4, tmm6",
            "tileloadd tmm7, [{b1} + {s64}*1]",
            "tdpbf16ps tmm1, tmm4, tmm7",
            "tileloadd tmm5, [{a1} + {s64}*1]",
            "tdpbf16ps tmm2, tmm5, tmm6",
            "tdpbf16ps tmm3, tmm5, tmm7",
            "add {a0}, 1024",
            "add {a1}, 1024",
            "add {b0}, 1024",
            "add {b1}, 1024",
            prefetch_ahead!(),
            "dec {n}",
            "jnz 2b",
            "3:",
            "test {t0}, {t0}",
            "jz 4f",
            "tileloadd tmm4, [{a0} + {s64}*1]",
            "tileloadd tmm6, [{t0} + {s64}*1]",
            "tdpbf16ps tmm0, tmm4, tmm6",
            "tileloadd tmm7, [{t1} + {s64}*1]",
            "tdpbf16ps tmm1, tmm4, tmm7",
            "tileloadd tmm5, [{a1} + {s64}*1]",
            "tdpbf16ps tmm2, tmm5, tmm6",
            "tdpbf16ps tmm3, tmm5, tmm7",
            "4:",
            "tilestored [{c} + {s64}*1], tmm0",
            "add {c}, 1024",
            "tilestored [{c} + {s64}*1], tmm1",
            "add {c}, 1024",
            "tilestored [{c} + {s64}*1], tmm2",
            "add {c}, 1024",
            "tilestored [{c} + {s64}*1], tmm3",
            a0 = inout(reg) a0 => _,
            a1 = inout(reg) a1 => _,
            b0 = inout(reg) b.b0 => _,
            b1 = inout(reg) b.b1 => _,
            t0 = in(reg) b.tail0,
            t1 = in(reg) b.tail1,
            c = inout(reg) c => _,
            n = inout(reg) b.main => _,
            pf = inout(reg) ahead.next,
            lines = in(reg) ahead.lines,
            k = out(reg) _,
            s64 = in(reg) 64usize,
            options(nostack),
        );
    }
}

/// As [`block_2x2`] for one 16-row block: `c` receives `[n][16][16]` f32 (2 KiB).
///
/// # Safety
/// As [`block_2x2`].
#[inline]
unsafe fn block_1x2(a0: *const u8, b: BSteps, c: *mut f32, ahead: &mut Ahead) {
    // SAFETY: the caller's contract.
    unsafe {
        asm!(
            "tilezero tmm0",
            "tilezero tmm1",
            "test {n}, {n}",
            "jz 3f",
            "2:",
            "tileloadd tmm4, [{a0} + {s64}*1]",
            "tileloadd tmm6, [{b0} + {s64}*1]",
            "tdpbf16ps tmm0, tmm4, tmm6",
            "tileloadd tmm7, [{b1} + {s64}*1]",
            "tdpbf16ps tmm1, tmm4, tmm7",
            "add {a0}, 1024",
            "add {b0}, 1024",
            "add {b1}, 1024",
            prefetch_ahead!(),
            "dec {n}",
            "jnz 2b",
            "3:",
            "test {t0}, {t0}",
            "jz 4f",
            "tileloadd tmm4, [{a0} + {s64}*1]",
            "tileloadd tmm6, [{t0} + {s64}*1]",
            "tdpbf16ps tmm0, tmm4, tmm6",
            "tileloadd tmm7, [{t1} + {s64}*1]",
            "tdpbf16ps tmm1, tmm4, tmm7",
            "4:",
            "tilestored [{c} + {s64}*1], tmm0",
            "add {c}, 1024",
            "tilestored [{c} + {s64}*1], tmm1",
            a0 = inout(reg) a0 => _,
            b0 = inout(reg) b.b0 => _,
            b1 = inout(reg) b.b1 => _,
            t0 = in(reg) b.tail0,
            t1 = in(reg) b.tail1,
            c = inout(reg) c => _,
            n = inout(reg) b.main => _,
            pf = inout(reg) ahead.next,
            lines = in(reg) ahead.lines,
            k = out(reg) _,
            s64 = in(reg) 64usize,
            options(nostack),
        );
    }
}

/// Rounds `rows × n_in` activations to bf16 in `A` blocks: `[rows/16][k32/32][16][32]`,
/// zero padded to whole blocks.
fn pack_acts(x: &[f32], rows: usize, n_in: usize, k32: usize) -> AlignedVec<u16> {
    let mblocks = rows.div_ceil(TILE);
    let kcs = k32 / KC;
    let mut a = AlignedVec::<u16>::zeroed(mblocks * kcs * TILE_BYTES / 2);
    let avx512_bf16 = super::avx512::supported() && super::avx512::has_bf16();
    a.par_chunks_mut(kcs * TILE_BYTES / 2)
        .enumerate()
        .for_each(|(mb, blk)| {
            for i in 0..TILE.min(rows - mb * TILE) {
                let row = &x[(mb * TILE + i) * n_in..(mb * TILE + i + 1) * n_in];
                if avx512_bf16 {
                    // SAFETY: checked just above; `blk` holds the block's `kcs` steps.
                    unsafe { pack_act_row(row, i, blk) };
                } else {
                    for (k, &v) in row.iter().enumerate() {
                        blk[(k / KC) * (TILE_BYTES / 2) + i * KC + k % KC] = f32_to_bf16(v);
                    }
                }
            }
        });
    a
}

/// Row `i` of a 16-row `A` block: each step's 32 inputs rounded to bf16 (nearest even, as
/// [`f32_to_bf16`] but f32 denormals read as zero) into its 64 bytes.
///
/// # Safety
/// AVX-512 F/BW/BF16; `blk` holds `row.len()` rounded up to 32 steps of 1 KiB; `i < 16`.
#[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
unsafe fn pack_act_row(row: &[f32], i: usize, blk: &mut [u16]) {
    use std::arch::x86_64::*;
    let n_in = row.len();
    debug_assert!(blk.len() >= n_in.div_ceil(KC) * TILE_BYTES / 2 && i < TILE);
    let mask = |k: usize| -> __mmask16 {
        let n = n_in.saturating_sub(k).min(16);
        ((1u32 << n) - 1) as __mmask16
    };
    for kc in 0..n_in.div_ceil(KC) {
        let k = kc * KC;
        // SAFETY: masked loads touch only inputs below n_in; step kc's row i lies in `blk`.
        unsafe {
            let lo = _mm512_maskz_loadu_ps(mask(k), row.as_ptr().add(k));
            let hi = _mm512_maskz_loadu_ps(mask(k + 16), row.as_ptr().add((k + 16).min(n_in)));
            let both = round_to_bf16(lo, hi);
            _mm512_storeu_si512(
                blk.as_mut_ptr().add(kc * (TILE_BYTES / 2) + i * KC).cast(),
                both,
            );
        }
    }
}

/// `lo` and `hi` rounded to bf16 (nearest even, f32 denormals read as zero), `lo` in
/// elements 0..16. Two `vcvtneps2bf16` rather than one `vcvtne2ps2bf16`, which computes the
/// same on hardware but which the emulator of `scripts/check-kernels-emulated.sh` (bochscpu
/// 0.4.0) gets wrong: it fills both halves from `lo` (probed, docs/benchmarks.md).
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
fn round_to_bf16(
    lo: std::arch::x86_64::__m512,
    hi: std::arch::x86_64::__m512,
) -> std::arch::x86_64::__m512i {
    use std::arch::x86_64::*;
    // SAFETY: `__m256bh` and `__m256i` are both 256 bits of plain data.
    let (l, h) = unsafe {
        (
            std::mem::transmute::<__m256bh, __m256i>(_mm512_cvtneps_pbh(lo)),
            std::mem::transmute::<__m256bh, __m256i>(_mm512_cvtneps_pbh(hi)),
        )
    };
    _mm512_inserti64x4::<1>(_mm512_castsi256_si512(l), h)
}

/// One pair of inputs of 16 outputs in the `B` layout: `even` and `odd` rounded to bf16
/// ([`round_to_bf16`]) and interleaved, output `j`'s two inputs at `2j`, `2j + 1`, stored
/// as 32 values at `dst`.
///
/// # Safety
/// AVX-512 F/BW/BF16; `dst` writable for 32 values.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
unsafe fn store_pair(
    dst: *mut u16,
    even: std::arch::x86_64::__m512,
    odd: std::arch::x86_64::__m512,
) {
    use std::arch::x86_64::*;
    // Element 2j ← j (the even input), 2j + 1 ← 16 + j (the odd one).
    let idx = _mm512_set_epi16(
        31, 15, 30, 14, 29, 13, 28, 12, 27, 11, 26, 10, 25, 9, 24, 8, 23, 7, 22, 6, 21, 5, 20, 4,
        19, 3, 18, 2, 17, 1, 16, 0,
    );
    let both = round_to_bf16(even, odd);
    // SAFETY: the caller's contract.
    unsafe { _mm512_storeu_si512(dst.cast(), _mm512_permutexvar_epi16(idx, both)) };
}

/// Converts weight tile `t` into `B` tiles (`[k32/32][16 pairs][16][2]` bf16) in `out`.
///
/// # Safety
/// AVX2/FMA/F16C and AVX-512 F/BW/BF16; `out` holds `k32 · 16` values, `k32` =
/// `w.k_pad()` rounded up to 32.
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512bf16")]
unsafe fn pack_weights(w: &PackedMatrix, t: usize, f32buf: &mut [f32], out: &mut [u16]) {
    let tile = w.tile(t);
    let n_in = w.n_in();
    debug_assert!(
        w.format() != WeightFormat::Bf16,
        "bf16 tiles are read in place"
    );
    // Inputs past n_in (to k32) stay zero.
    out[n_in.div_ceil(2) * 2 * TILE..].fill(0);
    if w.format() == WeightFormat::Q8_0 {
        // SAFETY: AVX-512 F/BW/BF16 (caller); `out` holds the tile's k_pad inputs (k32 ≥
        // k_pad).
        unsafe { q8_0_to_b(tile, w.k_pad() / 32, out) };
        // Inputs past n_in read as zero, as for the other formats.
        out[n_in.div_ceil(2) * 2 * TILE..].fill(0);
        if n_in % 2 == 1 {
            let last = &mut out[(n_in / 2) * 2 * TILE..][..2 * TILE];
            last.iter_mut().skip(1).step_by(2).for_each(|v| *v = 0);
        }
        return;
    }
    if w.format() == WeightFormat::F32 {
        // Straight from the packed tile (`[k_pad][16]` f32), streamed from memory.
        // SAFETY: forwarded contract; the tile holds k_pad ≥ n_in rows of 16 floats, `out`
        // every pair below k32 / 2.
        unsafe { interleave_pairs::<true>(tile.as_ptr().cast(), n_in, out) };
        return;
    }
    let mut k0 = 0;
    while k0 < n_in {
        let kn = (n_in - k0).min(super::many::KB);
        // SAFETY: forwarded contract; `f32buf` holds KB · 16 floats; `k0` is a multiple of
        // KB (even), so pair `p` of the block is pair `k0 / 2 + p` of `out`, which holds
        // every pair below k32 / 2.
        unsafe {
            super::many::convert(w.format(), tile, k0, kn, f32buf);
            interleave_pairs::<false>(f32buf.as_ptr(), kn, &mut out[k0 * TILE..]);
        }
        k0 += kn;
    }
}

/// A whole q8_0 tile (`nblocks` blocks of 32 inputs) dequantized and rounded to bf16 in the
/// `B` layout, in AVX-512: `(q − 128) · d` per weight (the stored `q + 128` converted, less
/// 128, times the block's f16 scale: `many::convert`'s arithmetic), each pair of inputs
/// rounded to bf16.
///
/// # Safety
/// AVX-512 F/BW/BF16; `tile` holds `nblocks` q8_0 blocks, `out` `nblocks · 32 · 16` values.
#[target_feature(enable = "avx512f,avx512bw,avx512bf16,f16c")]
unsafe fn q8_0_to_b(tile: &[u8], nblocks: usize, out: &mut [u16]) {
    use super::format::Q8_0_TILE_BLOCK;
    use std::arch::x86_64::*;
    assert!(tile.len() >= nblocks * Q8_0_TILE_BLOCK && out.len() >= nblocks * 32 * TILE);
    let low = _mm512_set1_epi32(0xff);
    let bias = _mm512_set1_ps(128.0);
    let shifts: [__m512i; 4] = std::array::from_fn(|b| _mm512_set1_epi32(8 * b as i32));
    for b in 0..nblocks {
        let blk = tile[b * Q8_0_TILE_BLOCK..].as_ptr();
        // SAFETY (whole block): offsets inside the block's Q8_0_TILE_BLOCK bytes; the stores
        // inside block b's 32 · 16 values of `out` (asserted above).
        unsafe {
            let d = _mm512_cvtph_ps(_mm256_loadu_si256(blk.cast()));
            for g in 0..8 {
                // Lane i: output i's inputs 4g .. 4g + 4, one byte each.
                let v = _mm512_loadu_si512(blk.add(2 * TILE + g * 64).cast());
                let value = |j: usize| {
                    let q = _mm512_and_si512(_mm512_srlv_epi32(v, shifts[j]), low);
                    _mm512_mul_ps(_mm512_sub_ps(_mm512_cvtepi32_ps(q), bias), d)
                };
                for jp in 0..2 {
                    let k = b * 32 + g * 4 + 2 * jp;
                    store_pair(
                        out.as_mut_ptr().add(k * TILE),
                        value(2 * jp),
                        value(2 * jp + 1),
                    );
                }
            }
        }
    }
}

/// Rounds `kn` rows of 16 f32 weights at `src` (`[k][16]`) to bf16 in the `B` layout: pair
/// `p` (inputs `2p`, `2p + 1`) becomes 32 values, output `j`'s two inputs at `2j`, `2j + 1`;
/// the odd input of an odd count is zero. Nearest-even rounding (`vcvtne2ps2bf16`, which
/// reads f32 denormals as zero: dequantized weights have none). With `STREAM` the rows come
/// from memory (an f32 tile read in place): each pair asks for its lines
/// [`super::avx512::NEAR`] bytes ahead into L1, the tile kernels' near hop.
///
/// # Safety
/// AVX-512 F/BW/BF16; `src` readable for `kn · 16` floats (unaligned is fine), `out` holds
/// `kn` rounded up to 2, times 16, values.
#[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
unsafe fn interleave_pairs<const STREAM: bool>(src: *const f32, kn: usize, out: &mut [u16]) {
    use std::arch::x86_64::*;
    debug_assert!(out.len() >= kn.div_ceil(2) * 2 * TILE);
    for p in 0..kn.div_ceil(2) {
        // SAFETY: inputs 2p (and 2p + 1 when it exists) are 16 floats of `src`; pair p's
        // 32 values lie in `out` (the contract). Prefetches are hints and never fault.
        unsafe {
            let even = src.add(2 * p * TILE);
            if STREAM {
                let ahead = even.cast::<u8>().wrapping_add(super::avx512::NEAR);
                _mm_prefetch::<_MM_HINT_T0>(ahead.cast());
                _mm_prefetch::<_MM_HINT_T0>(ahead.wrapping_add(64).cast());
            }
            let odd = if 2 * p + 1 < kn {
                _mm512_loadu_ps(even.add(TILE))
            } else {
                _mm512_setzero_ps()
            };
            store_pair(
                out.as_mut_ptr().add(2 * p * TILE),
                _mm512_loadu_ps(even),
                odd,
            );
        }
    }
}

/// `y = x · Wᵀ (+ bias)` on the tile unit, runs of pairs of tiles as the tasks of
/// `for_each` (rayon's pool, or a step's team), each task with its own [`Scratch`]; shapes
/// checked by the caller.
///
/// # Safety
/// [`supported`] must be true; `x` holds `rows × w.n_in()` values, `y` `rows × w.n_out()`
/// and `bias`, if any, `w.n_out()`.
pub unsafe fn matmul(
    w: &PackedMatrix,
    x: &[f32],
    rows: usize,
    bias: Option<&[f32]>,
    y: &mut [f32],
    for_each: &ForEach<'_>,
) {
    let k32 = w.k_pad().div_ceil(KC) * KC;
    let a = pack_acts(x, rows, w.n_in(), k32);
    let out = OutPtr(y.as_mut_ptr());
    super::for_each_tile_run(w.tiles().div_ceil(2), for_each, |pairs| {
        let mut scratch = Scratch::new(w);
        for pair in pairs {
            // SAFETY: the caller's contract; pairs write disjoint columns.
            unsafe { pair_product(w, &a, rows, bias, out, pair, &mut scratch) };
        }
    });
}

/// The buffers of one task of [`matmul`]: two weight tiles in the `B` layout, one block of
/// converted f32 weights, and the 32 × 32 f32 results of one block.
pub(super) struct Scratch {
    bbuf: AlignedVec<u16>,
    f32buf: Vec<f32>,
    c: AlignedVec<f32>,
}

impl Scratch {
    /// Buffers for products with `w`.
    pub(super) fn new(w: &PackedMatrix) -> Scratch {
        let k32 = w.k_pad().div_ceil(KC) * KC;
        Scratch {
            bbuf: AlignedVec::zeroed(2 * k32 * TILE),
            f32buf: vec![0f32; super::many::KB * TILE],
            c: AlignedVec::zeroed(4 * TILE * TILE),
        }
    }
}

/// The activations of `rows × w.n_in()` values `x` in the `A` layout [`pair_product`] reads.
#[cfg(feature = "emulation")]
pub(super) fn pack_acts_for(w: &PackedMatrix, x: &[f32], rows: usize) -> AlignedVec<u16> {
    pack_acts(x, rows, w.n_in(), w.k_pad().div_ceil(KC) * KC)
}

/// Output tiles `2·pair` and `2·pair + 1` of `w` (the last tile alone if the count is odd)
/// for all `rows` rows: packs the weights, multiplies them with every 16-row block of `a`
/// (`pack_acts_for`, emulation builds) on the tile unit, adds `bias` and writes the columns
/// to `out`.
///
/// # Safety
/// AMX usable on this thread (tile data permitted), AVX2/FMA/F16C, AVX-512 F/BW/BF16; `out` holds
/// `rows × w.n_out()` values of which this call alone writes these tiles' columns; `a` was
/// packed for `w` and `rows`; `scratch` was made for `w`; `bias`, if any, holds `w.n_out()`.
pub(super) unsafe fn pair_product(
    w: &PackedMatrix,
    a: &[u16],
    rows: usize,
    bias: Option<&[f32]>,
    out: OutPtr,
    pair: usize,
    scratch: &mut Scratch,
) {
    let n_out = w.n_out();
    let k32 = w.k_pad().div_ceil(KC) * KC;
    let kcs = k32 / KC;
    let mblocks = rows.div_ceil(TILE);
    let a_block = kcs * TILE_BYTES; // bytes of one 16-row block
    let Scratch { bbuf, f32buf, c } = scratch;
    let (wb0, wb1) = bbuf.split_at_mut(k32 * TILE);
    let t0 = 2 * pair;
    let t1 = (t0 + 1).min(w.tiles() - 1); // an odd last tile pairs with itself
    let steps = if w.format() == WeightFormat::Bf16 {
        // The packed bf16 tile is `[k_pad/2][16][2]`, the B layout: whole steps are read in
        // place, a partial last one from a zero-padded copy.
        let main = w.k_pad() / KC;
        let tail_bytes = (w.k_pad() % KC) * TILE * 2;
        let tail = |t: usize, buf: &mut [u16]| -> *const u8 {
            if tail_bytes == 0 {
                return std::ptr::null();
            }
            let bytes = &w.tile(t)[main * TILE_BYTES..][..tail_bytes];
            let step = &mut buf[..TILE_BYTES / 2];
            step.fill(0);
            for (o, b) in step.iter_mut().zip(bytes.chunks_exact(2)) {
                *o = u16::from_le_bytes([b[0], b[1]]);
            }
            step.as_ptr().cast()
        };
        let tails = [tail(t0, wb0), tail(t1, wb1)];
        BSteps {
            b0: w.tile(t0).as_ptr(),
            b1: w.tile(t1).as_ptr(),
            main,
            tail0: tails[0],
            tail1: tails[1],
        }
    } else {
        // SAFETY: AVX2 and AVX-512 BF16 (caller); buffers sized for k32.
        unsafe {
            pack_weights(w, t0, f32buf, wb0);
            if t1 != t0 {
                pack_weights(w, t1, f32buf, wb1);
            }
        }
        let b1 = if t1 != t0 { &*wb1 } else { &*wb0 };
        BSteps {
            b0: wb0.as_ptr().cast(),
            b1: b1.as_ptr().cast(),
            main: kcs,
            tail0: std::ptr::null(),
            tail1: std::ptr::null(),
        }
    };
    // The next pair's tiles (this task's likely next), spread over this pair's main steps:
    // all of a q8_0 pair (87–235 KiB; q4k measured alike before it moved to `amx8.rs`),
    // which fits in L2 beside the activations, and the first [`F32_AHEAD`] bytes of an f32
    // pair (327–874 KiB), which its conversion then reads from L2.
    // Prefetching the next pair of bf16 tiles (160–437 KiB) or a whole f32 pair measured
    // slower at 128 rows and more (they push the activations out of L2), bf16 also at 64.
    let mut ahead = {
        let next = (t1 + 1).min(w.tiles() - 1);
        let pair_bytes = w.tile(next).len() * 2.min(w.tiles() - next);
        let per_call = mblocks.div_ceil(2) * steps.main;
        let bytes = match w.format() {
            WeightFormat::Q8_0 => pair_bytes,
            WeightFormat::F32 => pair_bytes.min(F32_AHEAD),
            _ => 0,
        };
        Ahead {
            next: w.tile(next).as_ptr(),
            lines: if t1 + 1 < w.tiles() {
                (bytes / 64).div_ceil(per_call.max(1))
            } else {
                0
            },
        }
    };
    // SAFETY: AMX usable (caller).
    let _tiles = unsafe { Tiles::configure() };
    let ab = a.as_ptr().cast::<u8>();
    let mut mb = 0;
    while mb < mblocks {
        let two = mb + 1 < mblocks;
        // The block's output lines, owned while the tile unit works.
        let block_rows = mb * TILE..((mb + if two { 2 } else { 1 }) * TILE).min(rows);
        out.own_lines(n_out, block_rows, t0 * TILE..(t1 + 1) * TILE);
        // SAFETY: A blocks `mb` (and `mb + 1`) hold `kcs` KiB, the steps of `steps` as many
        // (the main ones inside the packed tiles or the buffers); `c` holds 4 KiB.
        unsafe {
            let a0 = ab.add(mb * a_block);
            if two {
                block_2x2(a0, a0.add(a_block), steps, c.as_mut_ptr(), &mut ahead);
            } else {
                block_1x2(a0, steps, c.as_mut_ptr(), &mut ahead);
            }
        }
        let mcount = if two { 2 } else { 1 };
        for m in 0..mcount {
            for (n, t) in [t0, t1].into_iter().enumerate() {
                if n == 1 && t1 == t0 {
                    continue;
                }
                let col = t * TILE;
                let cblk = &c[(m * 2 + n) * TILE * TILE..][..TILE * TILE];
                for i in 0..TILE {
                    let r = (mb + m) * TILE + i;
                    if r >= rows {
                        break;
                    }
                    let vals = &cblk[i * TILE..(i + 1) * TILE];
                    // SAFETY: `(r + 1) * n_out <= out`'s size; this call owns the
                    // columns of tiles t0 and t1.
                    unsafe { out.store_row(n_out, r, col, vals, bias) };
                }
            }
        }
        mb += mcount;
    }
}

#[cfg(test)]
mod tests {
    use rand::SeedableRng;

    use super::*;
    use crate::kernels::Source;
    use crate::kernels::tests::random;

    /// f32 tiles rounded to bf16 straight from the packed tile give the `B` layout: pair `p`
    /// of output `j` at `32·p + 2j` (its odd input zero past `n_in`, whole pairs past it
    /// zero), each weight rounded to the nearest bf16.
    #[test]
    fn f32_tiles_round_in_place_into_the_b_layout() {
        let usable = super::super::avx2::supported() && super::super::avx512::has_bf16();
        if !usable {
            eprintln!("no AVX-512 BF16 on this CPU: skipped");
            return;
        }
        let mut rng = rand::rngs::StdRng::seed_from_u64(35);
        for n_in in [1, 2, 33, 257, 2560, 6826] {
            let n_out = 2 * TILE + 3;
            let w = random(n_out * n_in, &mut rng, 0.5);
            let p =
                PackedMatrix::pack(WeightFormat::F32, &Source::f32(&w, n_out, n_in)).expect("pack");
            let k32 = p.k_pad().div_ceil(KC) * KC;
            let mut f32buf = vec![0f32; super::super::many::KB * TILE];
            for t in 0..p.tiles() {
                let mut out = vec![u16::MAX; k32 * TILE];
                // SAFETY: the features checked above; `out` holds k32 · 16 values.
                unsafe { pack_weights(&p, t, &mut f32buf, &mut out) };
                for (i, &got) in out.iter().enumerate() {
                    let (pair, lane) = (i / (2 * TILE), i % (2 * TILE));
                    let (k, o) = (2 * pair + lane % 2, t * TILE + lane / 2);
                    let want = if k < n_in && o < n_out {
                        f32_to_bf16(w[o * n_in + k])
                    } else {
                        0
                    };
                    assert_eq!(got, want, "n_in {n_in} tile {t} input {k} output {o}");
                }
            }
        }
    }
}
