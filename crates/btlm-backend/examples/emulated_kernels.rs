//! A C-ABI library for `scripts/check-kernels-emulated.sh`: builds one kernel test case
//! natively (random weights and activations, the scalar reference, the tolerances of
//! `src/kernels/tests.rs`), and runs the AVX-512 or AMX kernels of the case on the calling
//! thread, which the script's emulator (an emulated Sapphire Rapids core) executes.
//!
//! ```text
//! cargo build -p prompting-btlm-backend --features emulation --example emulated_kernels
//! ```
//!
//! Native calls: `emu_case_new`, `emu_case_reset`, `emu_case_check`, `emu_case_free`.
//! Emulated calls (no allocation, no system call): `emu_case_run_avx512`,
//! `emu_case_run_amx`, `emu_case_run_amx8` (q4k cases), `emu_feature_report`.

use std::ffi::c_char;

use prompting_btlm_backend::kernels::emulation::{self, Amx8Inputs, AmxInputs};
use prompting_btlm_backend::kernels::{
    self, Acts, KernelPath, PackedMatrix, Source, SourceData, WeightFormat, acts,
};
use rand::{Rng, SeedableRng};

/// One product and its expected results.
pub struct Case {
    w: PackedMatrix,
    rows: usize,
    bias: Vec<f32>,
    /// The prepared activations of the tile kernels (borrowing the leaked `x`).
    acts: Acts<'static>,
    /// The AMX kernels' activations and scratch.
    amx: AmxInputs,
    /// The AMX-INT8 kernels' buffers (q4k cases).
    amx8: Option<Amx8Inputs>,
    /// The scalar path's result (what the AVX-512 kernels must match).
    reference: Vec<f32>,
    /// The f64 product of bf16-rounded weights and activations plus bias (AMX).
    bf16_exact: Vec<f64>,
    /// `Σ |w·x|` per output: the scale of rounding differences.
    mags: Vec<f32>,
    /// The output the emulated kernels write.
    y: Vec<f32>,
}

fn random(n: usize, rng: &mut impl Rng, scale: f32) -> Vec<f32> {
    (0..n)
        .map(|_| (rng.r#gen::<f32>() * 2.0 - 1.0) * scale)
        .collect()
}

/// The case for `format` (index into [`WeightFormat::ALL`]), `n_out × n_in` weights and
/// `rows` rows, from `seed`; null for a bad format index or kind. `kind` 0: random weights
/// and activations; 1 and 2: the extreme quantized sums of `tests.rs` (weights ±1 by output
/// row, every activation +1 or −1), where narrow integer sums would saturate.
#[unsafe(no_mangle)]
pub extern "C" fn emu_case_new(
    format: u32,
    n_out: usize,
    n_in: usize,
    rows: usize,
    seed: u64,
    kind: u32,
) -> *mut Case {
    let Some(&format) = WeightFormat::ALL.get(format as usize) else {
        return std::ptr::null_mut();
    };
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let (wv, xv) = match kind {
        0 => {
            let w = random(n_out * n_in, &mut rng, 0.1);
            let x = random(rows * n_in, &mut rng, 2.0);
            (w, x)
        }
        1 | 2 => {
            let sign = if kind == 1 { 1.0 } else { -1.0 };
            let w = (0..n_out * n_in)
                .map(|i| {
                    if (i / n_in).is_multiple_of(2) {
                        1.0
                    } else {
                        -1.0
                    }
                })
                .collect();
            (w, vec![sign; rows * n_in])
        }
        _ => return std::ptr::null_mut(),
    };
    let source = Source {
        data: SourceData::F32(&wv),
        n_out,
        n_in,
        transposed: false,
    };
    let w = PackedMatrix::pack(format, &source).expect("pack");
    let bias = random(n_out, &mut rng, 1.0);
    let x: &'static [f32] = Box::leak(xv.into_boxed_slice());
    let mut reference = vec![0f32; rows * n_out];
    kernels::matmul(KernelPath::Scalar, &w, x, rows, Some(&bias), &mut reference)
        .expect("scalar reference");
    let round = |v: f32| acts::bf16_to_f32(acts::f32_to_bf16(v)) as f64;
    let mut mags = vec![0f32; rows * n_out];
    let mut bf16_exact = vec![0f64; rows * n_out];
    for o in 0..n_out {
        let wr = w.dequantize_row(o);
        for r in 0..rows {
            let xr = &x[r * n_in..(r + 1) * n_in];
            mags[r * n_out + o] = wr.iter().zip(xr).map(|(a, b)| (a * b).abs()).sum();
            bf16_exact[r * n_out + o] = wr
                .iter()
                .zip(xr)
                .map(|(&a, &b)| round(a) * round(b))
                .sum::<f64>()
                + bias[o] as f64;
        }
    }
    let acts = Acts::prepare(format, x, rows, n_in, w.k_pad());
    let amx = AmxInputs::prepare(&w, x, rows);
    let amx8 = (format == WeightFormat::Q4K).then(|| Amx8Inputs::prepare(&w, &acts, rows));
    Box::into_raw(Box::new(Case {
        w,
        rows,
        bias,
        acts,
        amx,
        amx8,
        reference,
        bf16_exact,
        mags,
        y: vec![f32::NAN; rows * n_out],
    }))
}

/// Sets the output to NaN (so that unwritten values fail the check).
///
/// # Safety
/// `case` from [`emu_case_new`], not freed.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn emu_case_reset(case: *mut Case) {
    // SAFETY: the caller's contract.
    let case = unsafe { &mut *case };
    case.y.fill(f32::NAN);
}

/// Runs the AVX-512 tile kernels of the case (emulated: AVX-512 F/BW/VL/VNNI, AVX2/FMA/F16C,
/// and AVX512-BF16 if `bf16` != 0; without it bf16 weights run on the AVX2 kernel).
///
/// # Safety
/// `case` from [`emu_case_new`]; the CPU runs AVX-512 F/BW/VL/VNNI and AVX2/FMA/F16C, and
/// AVX512-BF16 if `bf16` != 0.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn emu_case_run_avx512(case: *mut Case, bf16: u32) {
    // SAFETY: the caller's contract.
    let case = unsafe { &mut *case };
    let bias = Some(&case.bias[..]);
    // SAFETY: the caller's contract; shapes from `emu_case_new`.
    unsafe {
        emulation::tiles_on_this_thread(
            KernelPath::Avx512,
            &case.w,
            &case.acts,
            case.rows,
            bias,
            &mut case.y,
            bf16 != 0,
        )
    };
}

/// Runs the AMX kernels of the case (emulated: AMX-TILE/BF16, AVX2).
///
/// # Safety
/// `case` from [`emu_case_new`]; the CPU runs AMX-TILE/BF16 and AVX2/FMA/F16C.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn emu_case_run_amx(case: *mut Case) {
    // SAFETY: the caller's contract.
    let case = unsafe { &mut *case };
    let bias = Some(&case.bias[..]);
    // SAFETY: the caller's contract; inputs prepared for this case.
    unsafe { emulation::amx_on_this_thread(&case.w, &mut case.amx, case.rows, bias, &mut case.y) };
}

/// Runs the AMX-INT8 kernels of a q4k case (emulated: AMX-TILE/INT8, AVX-512
/// F/BW/VL/VNNI); other formats: nothing (the output stays NaN and fails the check).
///
/// # Safety
/// `case` from [`emu_case_new`]; the CPU runs AMX-TILE/INT8 and AVX-512 F/BW/VL/VNNI.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn emu_case_run_amx8(case: *mut Case) {
    // SAFETY: the caller's contract.
    let case = unsafe { &mut *case };
    let bias = Some(&case.bias[..]);
    let Some(inputs) = case.amx8.as_mut() else {
        return;
    };
    // SAFETY: the caller's contract; inputs prepared for this case.
    unsafe {
        emulation::amx8_on_this_thread(&case.w, &case.acts, inputs, case.rows, bias, &mut case.y)
    };
}

/// The feature bits of [`emulation::feature_report`] (run it first, on the emulator).
#[unsafe(no_mangle)]
pub extern "C" fn emu_feature_report() -> u32 {
    emulation::feature_report()
}

/// Compares the output with the expected values (`amx` != 0: the bf16 product, else the
/// scalar reference) within the tolerances of `src/kernels/tests.rs`; returns the number of
/// mismatches and writes the first one (NUL-terminated, truncated) into `msg[..cap]`.
///
/// # Safety
/// `case` from [`emu_case_new`]; `msg` writable for `cap` bytes.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn emu_case_check(
    case: *const Case,
    amx: i32,
    msg: *mut c_char,
    cap: usize,
) -> usize {
    // SAFETY: the caller's contract.
    let case = unsafe { &*case };
    let n_out = case.w.n_out();
    let mut bad = 0;
    let mut first = String::new();
    for (i, (&got, &m)) in case.y.iter().zip(&case.mags).enumerate() {
        let (want, tol) = if amx != 0 {
            (case.bf16_exact[i], 2e-6 * m as f64 + 1e-5)
        } else {
            (case.reference[i] as f64, 2e-6 * m as f64 + 1e-5)
        };
        let ok = (got as f64 - want).abs() <= tol;
        if !ok {
            if bad == 0 {
                first = format!(
                    "[{}][{}]: {got} vs {want} (Σ|wx| {m})",
                    i / n_out,
                    i % n_out
                );
            }
            bad += 1;
        }
    }
    if cap > 0 {
        let bytes = first.as_bytes();
        let n = bytes.len().min(cap - 1);
        // SAFETY: `n + 1 <= cap` bytes of `msg` (caller).
        unsafe {
            std::ptr::copy_nonoverlapping(bytes.as_ptr(), msg.cast::<u8>(), n);
            *msg.add(n) = 0;
        }
    }
    bad
}

/// Frees a case (its activations stay leaked: a few per check run).
///
/// # Safety
/// `case` from [`emu_case_new`], not used afterwards.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn emu_case_free(case: *mut Case) {
    // SAFETY: the caller's contract.
    drop(unsafe { Box::from_raw(case) });
}
