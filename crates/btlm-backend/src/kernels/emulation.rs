//! Test-only entry points for running the AVX-512 and AMX kernels on an emulated CPU
//! (`scripts/check-kernels-emulated.sh`, feature `emulation`; not part of the API).
//!
//! The emulator runs a piece of this process's own code on an emulated Sapphire Rapids
//! core without an operating system: what it runs must not allocate, make system calls or
//! hand work to other threads. So these functions run the same per-tile and per-pair code
//! as [`super::matmul`], on the calling thread only, with every buffer prepared before
//! (activations, AMX scratch), and they do not consult `std_detect` (which caches the host
//! CPU's features): the caller vouches for the instruction set.

use super::aligned::AlignedVec;
use super::amx::{self, Scratch};
use super::{Acts, KernelPath, OutPtr, PackedMatrix, amx8, avx512, tile_group, tiles_into};

/// `y = x · Wᵀ (+ bias)` on `path`'s tile kernels (all tiles, this thread), `acts`
/// prepared with [`Acts::prepare`] for `w`'s format and `rows` rows; `avx512_bf16`: whether
/// the CPU has AVX512-BF16 (without it, the AVX-512 path runs bf16 weights on the AVX2
/// kernel, as [`super::matmul`] does).
///
/// # Safety
/// The CPU must support `path`'s instructions, and AVX512-BF16 if `avx512_bf16` (not
/// checked); `y` holds `rows × w.n_out()`
/// values, `bias`, if any, `w.n_out()`.
pub unsafe fn tiles_on_this_thread(
    path: KernelPath,
    w: &PackedMatrix,
    acts: &Acts<'_>,
    rows: usize,
    bias: Option<&[f32]>,
    y: &mut [f32],
    avx512_bf16: bool,
) {
    assert!(y.len() == rows * w.n_out(), "output size");
    tiles_into(
        path.tile_path(w.format(), avx512_bf16),
        w,
        acts,
        rows,
        bias,
        OutPtr(y.as_mut_ptr()),
        0..w.tiles(),
        tile_group(w),
    );
}

/// The inputs of one AMX product prepared outside the emulator: activations in the `A`
/// layout and one task's scratch buffers.
pub struct AmxInputs {
    a: AlignedVec<u16>,
    scratch: Scratch,
}

impl AmxInputs {
    /// Packs `rows × w.n_in()` activations `x` for [`amx_on_this_thread`].
    pub fn prepare(w: &PackedMatrix, x: &[f32], rows: usize) -> AmxInputs {
        AmxInputs {
            a: amx::pack_acts_for(w, x, rows),
            scratch: Scratch::new(w),
        }
    }
}

/// `y = x · Wᵀ (+ bias)` on the AMX kernels (every pair of tiles in turn, this thread).
///
/// # Safety
/// AMX-TILE/BF16 usable, AVX2/FMA/F16C and AVX-512 F/BW/BF16 (not checked); `inputs` prepared for `w` and
/// `rows`; `y` holds `rows × w.n_out()` values, `bias`, if any, `w.n_out()`.
pub unsafe fn amx_on_this_thread(
    w: &PackedMatrix,
    inputs: &mut AmxInputs,
    rows: usize,
    bias: Option<&[f32]>,
    y: &mut [f32],
) {
    assert!(y.len() == rows * w.n_out(), "output size");
    let out = OutPtr(y.as_mut_ptr());
    for pair in 0..w.tiles().div_ceil(2) {
        // SAFETY: the caller's contract; one pair at a time.
        unsafe {
            amx::pair_product(w, &inputs.a, rows, bias, out, pair, &mut inputs.scratch);
        }
    }
}

/// The buffers of one AMX-INT8 product prepared outside the emulator: the zero-padded last
/// block of activation rows and the rows' sums of one tile.
pub struct Amx8Inputs {
    tail: AlignedVec<i8>,
    acc: Vec<f32>,
}

impl Amx8Inputs {
    /// Buffers for the product of `rows` rows of `acts` ([`Acts::prepare`]d for `w`, q4k).
    pub fn prepare(w: &PackedMatrix, acts: &Acts<'_>, rows: usize) -> Amx8Inputs {
        Amx8Inputs {
            tail: amx8::padded_tail(acts, rows, w.k_pad()),
            acc: vec![0.0; rows * super::TILE],
        }
    }
}

/// `y = acts · Wᵀ (+ bias)` on the AMX-INT8 kernels (q4k weights, every tile in turn, this
/// thread).
///
/// # Safety
/// AMX-TILE/INT8 usable and AVX-512 F/BW/VL/VNNI (not checked); `w` q4k; `acts` and
/// `inputs` prepared for `w` and `rows`; `y` holds `rows × w.n_out()` values, `bias`, if
/// any, `w.n_out()`.
pub unsafe fn amx8_on_this_thread(
    w: &PackedMatrix,
    acts: &Acts<'_>,
    inputs: &mut Amx8Inputs,
    rows: usize,
    bias: Option<&[f32]>,
    y: &mut [f32],
) {
    assert!(y.len() == rows * w.n_out(), "output size");
    let out = OutPtr(y.as_mut_ptr());
    // SAFETY: the caller's contract; this thread writes every column.
    unsafe {
        amx8::tiles_into(
            w,
            acts,
            &inputs.tail,
            rows,
            bias,
            out,
            0..w.tiles(),
            &mut inputs.acc,
        );
    }
}

/// What this CPU's feature checks say, as bits: 1 the AVX-512 kernels are supported,
/// 2 [`KernelPath::detect`] chooses them, 4 CPUID and XCR0 show usable AMX, bits 3..4 the
/// index of `detect`'s choice in [`KernelPath::ALL`]. Runs `std_detect` (which caches its
/// answer): call it first in a process, on the emulator.
pub fn feature_report() -> u32 {
    let detected = KernelPath::detect();
    let index = KernelPath::ALL
        .iter()
        .position(|&p| p == detected)
        .unwrap_or(3) as u32;
    (avx512::supported() as u32)
        | (((detected == KernelPath::Avx512) as u32) << 1)
        | ((amx::cpu_and_os_have_amx() as u32) << 2)
        | (index << 3)
}
