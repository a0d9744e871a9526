//! Throughput of the packed matrix kernels alone on BTLM-3B's projection shapes, for a few
//! activation rows (decode steps of 1..16 sequences) and a prompt-sized block (prefill).
//!
//! One layer's five matrices are packed from random values, then copied into fresh buffers
//! until the set is four times the L3 cache, so every pass streams weights from memory; the
//! products are split across the cores as a model step splits them
//! ([`best_pass`](crate::passes::best_pass)).

use std::time::Instant;

use prompting_btlm_backend::kernels::{
    Acts, Bytes, KernelPath, PackedMatrix, PrefillPrecision, Source, SourceData, TILE,
    WeightFormat, matmul_with,
};

use crate::layer::{LAYER, random};
use crate::passes::{best_pass, min_set_bytes};

fn copy(m: &PackedMatrix) -> PackedMatrix {
    let src = m.bytes().as_slice();
    let bytes = Bytes::owned_with(src.len(), |b| b.copy_from_slice(src)).expect("memory");
    PackedMatrix::from_bytes(m.format(), m.n_out(), m.n_in(), bytes).expect("same shape")
}

/// Prints one line per row count: time of one pass over the set, weight bytes streamed per
/// second and as a share of `bw_read`, and what that means for a 32-layer model.
pub fn run(
    path: KernelPath,
    prefill: PrefillPrecision,
    formats: &[WeightFormat],
    rows_list: &[usize],
    bw_read: f64,
) {
    let min_set = min_set_bytes();
    println!(
        "matmul kernels ({path}, prefill precision {prefill}): one pass over {} MiB+ of packed BTLM-3B projections",
        min_set >> 20
    );
    println!(
        "{:<6} {:>5} {:<11} {:>10} {:>9} {:>8} {:>16} {:>9}",
        "format", "rows", "kernels", "ms/layer", "GB/s", "of bw", "32L rows/s", "GFLOP/s"
    );
    for &format in formats {
        let t = Instant::now();
        let layer: Vec<PackedMatrix> = LAYER
            .iter()
            .enumerate()
            .map(|(i, &(_, n_in, n_out))| {
                let w = random(n_in * n_out, i as u64 + 1);
                PackedMatrix::pack(
                    format,
                    &Source {
                        data: SourceData::F32(&w),
                        n_out,
                        n_in,
                        transposed: true,
                    },
                )
                .expect("pack")
            })
            .collect();
        let pack_s = t.elapsed().as_secs_f64();
        let layer_bytes: usize = layer.iter().map(|m| m.bytes().len()).sum();
        let copies = min_set.div_ceil(layer_bytes);
        let mut set: Vec<PackedMatrix> = Vec::with_capacity(copies * LAYER.len());
        for _ in 0..copies {
            set.extend(layer.iter().map(copy));
        }
        drop(layer);
        eprintln!(
            "{format}: packed one layer in {pack_s:.1} s ({:.1} MB), {copies} copies",
            layer_bytes as f64 / 1e6
        );
        for &rows in rows_list {
            let xs: Vec<Vec<f32>> = set.iter().map(|m| random(rows * m.n_in(), 99)).collect();
            let mut ys: Vec<Vec<f32>> = set.iter().map(|m| vec![0f32; rows * m.n_out()]).collect();
            let xs: Vec<&[f32]> = xs.iter().map(Vec::as_slice).collect();
            let reps = if rows > 16 { 3 } else { 4 };
            let best = best_pass(path, prefill, &set, &xs, rows, &mut ys, reps).expect("matmul");
            let per_layer = best / copies as f64;
            let gbs = (layer_bytes * copies) as f64 / best / 1e9;
            let flops =
                2.0 * rows as f64 * LAYER.iter().map(|&(_, i, o)| (i * o) as f64).sum::<f64>();
            println!(
                "{:<6} {rows:>5} {:<11} {:>10.2} {gbs:>9.1} {:>7.0}% {:>16.1} {:>9.1}",
                format.name(),
                path.kernel_name_with(format, prefill, rows),
                per_layer * 1e3,
                100.0 * gbs / bw_read,
                rows as f64 / (32.0 * per_layer),
                flops / per_layer / 1e9,
            );
        }
    }
}

/// Packed bytes of the in-cache matrix: well inside a core's L2 (512 KiB on Zen 3), so
/// that a neighbour on the same core disturbs it little.
const IN_CACHE_BYTES: usize = 256 << 10;

/// Nanoseconds this thread has run on a CPU (`/proc/thread-self/schedstat`), if readable.
fn thread_cpu_ns() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/thread-self/schedstat").ok()?;
    s.split_whitespace().next()?.parse().ok()
}

/// The best CPU time per call of `f` over many short windows (the quietest moments of a
/// busy machine).
fn best_cpu_secs(mut f: impl FnMut()) -> f64 {
    let mut best = f64::MAX;
    for _ in 0..40 {
        let (t0, c0) = (Instant::now(), thread_cpu_ns());
        let mut calls = 0u32;
        while t0.elapsed().as_secs_f64() < 0.01 || calls < 4 {
            f();
            calls += 1;
        }
        let cpu = match (c0, thread_cpu_ns()) {
            (Some(a), Some(b)) => (b - a) as f64 * 1e-9,
            _ => t0.elapsed().as_secs_f64(),
        };
        best = best.min(cpu / calls as f64);
    }
    best
}

/// Prints one line per row count: one matrix of 2560 inputs and ~256 KiB of packed weights,
/// multiplied over and over on one thread, timed in this thread's CPU time (wall-clock
/// where that is not readable): weight bytes per CPU-second and the products per second
/// relative to one row, the preparation of the activations (timed apart) taken off.
pub fn run_in_cache(
    path: KernelPath,
    prefill: PrefillPrecision,
    formats: &[WeightFormat],
    rows_list: &[usize],
) {
    let clock = if thread_cpu_ns().is_some() {
        "thread CPU time"
    } else {
        "wall-clock"
    };
    println!("matmul kernels ({path}) in cache, one thread, {clock}");
    println!(
        "{:<6} {:>5} {:<11} {:>8} {:>12} {:>14}",
        "format", "rows", "kernels", "outputs", "GB/s (core)", "× of 1 row"
    );
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(1)
        .build()
        .expect("a one-thread pool");
    let n_in = 2560;
    for &format in formats {
        let tiles = (IN_CACHE_BYTES / format.tile_bytes(format.padded_k(n_in))).max(1);
        let n_out = tiles * TILE;
        let w = random(n_in * n_out, 5);
        let m = PackedMatrix::pack(format, &Source::f32(&w, n_out, n_in)).expect("pack");
        let mut one_row = None;
        for &rows in rows_list {
            let x = random(rows * n_in, 99);
            let mut y = vec![0f32; rows * n_out];
            // The activations are prepared once per call (quantized, rounded): timed
            // apart and taken off, so that the figure is the tile kernels'.
            let total = pool.install(|| {
                best_cpu_secs(|| {
                    matmul_with(path, prefill, &m, &x, rows, None, &mut y).expect("matmul")
                })
            });
            // Converted f32/f16 products take activations prepared as for bf16 weights.
            let (acts_format, k_pad) = match path.kernel_name_with(format, prefill, rows) {
                name if name.ends_with("-bf16") => {
                    (WeightFormat::Bf16, WeightFormat::Bf16.padded_k(n_in))
                }
                _ => (format, m.k_pad()),
            };
            let prep = pool.install(|| {
                best_cpu_secs(|| {
                    std::hint::black_box(Acts::prepare(acts_format, &x, rows, n_in, k_pad));
                })
            });
            let secs = total - prep;
            let per_row = secs / rows as f64;
            let base = *one_row.get_or_insert(if rows == 1 { per_row } else { f64::NAN });
            println!(
                "{:<6} {rows:>5} {:<11} {n_out:>8} {:>12.1} {:>14.2}",
                format.name(),
                path.kernel_name_with(format, prefill, rows),
                m.bytes().len() as f64 / secs / 1e9,
                base / per_row,
            );
        }
    }
}
