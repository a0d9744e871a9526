//! Time of each BTLM-3B projection shape alone, per activation row count: which matrices a
//! kernel change helps (the `bench` example times a whole layer), and the tile kernels'
//! compute ceiling on one core.
//!
//! ```text
//! shapes [FORMAT] [ROWS,...] [mem|cached|core]
//! ```
//!
//! - `mem` (default): each matrix copied until the set is four times the L3 cache, every
//!   pass streaming it from memory; the best of 24 passes. Products on the tile kernels are
//!   split as a model step splits them ([`TileProduct`] tasks claimed by one thread per
//!   core that stays busy from one product to the next); others (many-rows kernels) run
//!   on rayon's pool, as `bench --matmul-only` runs every product. Forking and joining
//!   rayon's pool for each product understates the tile kernels: 8-row q4k products of
//!   `mlp.c_fc` streamed 12.6 GB/s that way and 16–18.5 split as here (session 23).
//! - `cached`: as `mem`, but each matrix alone (one copy), so that every pass after the
//!   first reads it from the caches (at most the L3's ~11 MB for BTLM-3B's shapes, the
//!   head's 72 MB in q4k partly): what the products would stream if memory kept up, split
//!   across the cores as `mem` splits them. On the AMX Xeon of session 57, eight q4k rows
//!   of a layer's matrices streamed 17–23 GB/s this way against 17.5–19 from memory
//!   (docs/benchmarks.md).
//! - `core`: 11 tiles (176 outputs) of 2560 and of 6826 inputs, in L2, multiplied on this
//!   thread only (no pool, activations prepared once): the best of 300 windows of 20
//!   products, as GB/s of weights and, for 8-bit weights, billions of 64-product `vpdpbusd`
//!   per second (2 per cycle is the ceiling of a Zen 5 core). On a busy VM these are the
//!   figures that move least from minute to minute.

use std::time::Instant;

use prompting_btlm_backend::kernels::{
    Acts, Bytes, KernelPath, PackedMatrix, PrefillPrecision, Source, TileProduct, WeightFormat,
    matmul,
};

#[path = "common/layer.rs"]
mod layer;
#[path = "common/passes.rs"]
mod passes;

use layer::{LAYER, random};
use passes::{best_pass, min_set_bytes};

/// The distinct projection shapes of one BTLM-3B block (`mlp.c_fc2` has `mlp.c_fc`'s),
/// then the output head's (in the run format, as the model packs it).
fn shapes() -> impl Iterator<Item = (&'static str, usize, usize)> {
    LAYER
        .into_iter()
        .filter(|&(name, _, _)| name != "mlp.c_fc2")
        .chain([("lm_head", 2560, 50257)])
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let format: WeightFormat = args.get(1).map_or("q4k", String::as_str).parse()?;
    let rows_list: Vec<usize> = args
        .get(2)
        .map_or("1,8", String::as_str)
        .split(',')
        .map(str::parse)
        .collect::<Result<_, _>>()?;
    let path = KernelPath::active()?;
    match args.get(3).map_or("mem", String::as_str) {
        "mem" => split_passes(path, format, &rows_list, Set::FromMemory),
        "cached" => split_passes(path, format, &rows_list, Set::Cached),
        "core" => one_core(path, format, &rows_list),
        other => Err(format!("mode {other:?}: expected mem, cached or core").into()),
    }
}

/// Where the passes of [`split_passes`] read each matrix from.
#[derive(Clone, Copy)]
enum Set {
    /// Copies of it until they are four times the L3 ([`min_set_bytes`]): from memory.
    FromMemory,
    /// One copy: from the caches after the first pass.
    Cached,
}

/// Each matrix streamed from where `from` says, split across the cores as a model step
/// splits it ([`best_pass`]).
fn split_passes(
    path: KernelPath,
    format: WeightFormat,
    rows_list: &[usize],
    from: Set,
) -> Result<(), Box<dyn std::error::Error>> {
    let min_set = match from {
        Set::FromMemory => min_set_bytes(),
        Set::Cached => 0,
    };
    match from {
        Set::FromMemory => println!(
            "{format} on {path}, from memory (sets of {} MiB, best of 24 passes)",
            min_set >> 20
        ),
        Set::Cached => println!("{format} on {path}, each matrix alone (best of 24 passes)"),
    }
    println!("{:<12} {:>5} {:>9} {:>8}", "matrix", "rows", "µs", "GB/s");
    for (i, (name, n_in, n_out)) in shapes().enumerate() {
        let m = PackedMatrix::pack(
            format,
            &Source::f32(&random(n_in * n_out, i as u64 + 1), n_out, n_in),
        )?;
        let bytes = m.bytes().len();
        let mut set = Vec::new();
        for _ in 0..min_set.div_ceil(bytes).max(1) {
            let src = m.bytes().as_slice();
            let copy = Bytes::owned_with(src.len(), |d| d.copy_from_slice(src))?;
            set.push(PackedMatrix::from_bytes(format, n_out, n_in, copy)?);
        }
        for &rows in rows_list {
            let x = random(rows * n_in, 99);
            let xs = vec![x.as_slice(); set.len()];
            let mut ys = vec![vec![0f32; rows * n_out]; set.len()];
            let exact = PrefillPrecision::Exact;
            let best = best_pass(path, exact, &set, &xs, rows, &mut ys, 24)? / set.len() as f64;
            println!(
                "{name:<12} {rows:>5} {:>9.1} {:>8.1}",
                best * 1e6,
                bytes as f64 / best / 1e9
            );
        }
    }
    Ok(())
}

/// Small matrices in L2 on this thread only: the kernels' compute ceiling per core.
fn one_core(
    path: KernelPath,
    format: WeightFormat,
    rows_list: &[usize],
) -> Result<(), Box<dyn std::error::Error>> {
    println!("{format} on {path}, one core, 11 tiles in L2 (best of 300 windows)");
    println!(
        "{:>6} {:>5} {:>10} {:>14}",
        "n_in", "rows", "GB/s", "G vpdpbusd/s"
    );
    let n_out = 176;
    for n_in in [2560, 6826] {
        let m = PackedMatrix::pack(format, &Source::f32(&random(n_in * n_out, 3), n_out, n_in))?;
        for &rows in rows_list {
            let x = random(rows * n_in, 99);
            let acts = Acts::prepare(format, &x, rows, n_in, m.k_pad());
            let mut y = vec![0f32; rows * n_out];
            let mut best = f64::MAX;
            for _ in 0..300 {
                let t = Instant::now();
                for _ in 0..20 {
                    // One thread claims every task: the whole product runs here.
                    match TileProduct::with_acts(path, &m, &acts, rows, None, &mut y, 1)? {
                        Some(p) => p.work(0),
                        None => matmul(path, &m, &x, rows, None, &mut y)?,
                    }
                }
                best = best.min(t.elapsed().as_secs_f64() / 20.0);
            }
            let dpbusd = (m.k_pad() * m.tiles() * 16 * rows) as f64 / 64.0;
            println!(
                "{n_in:>6} {rows:>5} {:>10.1} {:>14.2}",
                m.bytes().len() as f64 / best / 1e9,
                dpbusd / best / 1e9
            );
        }
    }
    Ok(())
}
