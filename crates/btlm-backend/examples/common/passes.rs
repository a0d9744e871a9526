//! What the kernel benchmarks (`shapes`, `bench`) share: weight sets sized well beyond the
//! L3 cache, so that every pass streams them from memory, and passes over a set of
//! products split across the cores as a model step splits them.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use prompting_btlm_backend::kernels::{
    KernelError, KernelPath, PackedMatrix, PrefillPrecision, TileProduct, matmul_with,
};

/// Bytes of a set of weight copies that streams from memory: four times the L3 cache (the
/// first CPU's, from sysfs; 260 MiB on the Xeon of session 25, 32 MiB on the Zen 4 and 5
/// machines before), at least 256 MiB.
pub fn min_set_bytes() -> usize {
    let l3 = std::fs::read_to_string("/sys/devices/system/cpu/cpu0/cache/index3/size")
        .ok()
        .and_then(|s| cache_size_bytes(&s))
        .unwrap_or(0);
    (4 * l3).max(256 << 20)
}

/// A sysfs cache size (`"266240K"`, `"32M"`, `"1024"`) in bytes.
fn cache_size_bytes(s: &str) -> Option<usize> {
    let s = s.trim();
    let (digits, unit) = match s.strip_suffix(['K', 'M', 'G']) {
        Some(d) => (d, &s[d.len()..]),
        None => (s, ""),
    };
    let shift = match unit {
        "K" => 10,
        "M" => 20,
        "G" => 30,
        _ => 0,
    };
    digits.parse::<usize>().ok()?.checked_mul(1 << shift)
}

/// The best of `passes` timed passes (seconds) after one untimed, each multiplying `rows`
/// rows `xs[i]` with every matrix `set[i]` into `ys[i]`, one product after the other. Tile
/// kernel products are split into [`TileProduct`] tasks claimed by one scoped thread per
/// core, which all wait for the last task of a product before the next (spinning, as a
/// model step's team does: forking and joining rayon's pool for each product understates
/// the tile kernels, session 23); products on other kernels (many rows) run
/// [`matmul_with`] on rayon's pool. Every product of a set takes the same route (it depends
/// on the format, the rows and `prefill` only).
pub fn best_pass(
    path: KernelPath,
    prefill: PrefillPrecision,
    set: &[PackedMatrix],
    xs: &[&[f32]],
    rows: usize,
    ys: &mut [Vec<f32>],
    passes: usize,
) -> Result<f64, KernelError> {
    let threads = rayon::current_num_threads();
    let tiles = set
        .first()
        .is_some_and(|m| !path.many_rows_with(m.format(), prefill, rows));
    let mut best = f64::MAX;
    if !tiles {
        for pass in 0..=passes {
            let t = Instant::now();
            for ((m, x), y) in set.iter().zip(xs).zip(ys.iter_mut()) {
                matmul_with(path, prefill, m, x, rows, None, y)?;
            }
            if pass > 0 {
                best = best.min(t.elapsed().as_secs_f64());
            }
        }
        return Ok(best);
    }
    for pass in 0..=passes {
        // A product's tasks are claimed once: a pass takes fresh ones (built untimed).
        let mut products = Vec::with_capacity(set.len());
        for ((m, x), y) in set.iter().zip(xs).zip(ys.iter_mut()) {
            match TileProduct::new(path, m, x, rows, None, y, threads)? {
                Some(p) => products.push(p),
                None => unreachable!("checked above: {rows} rows run the tile kernels"),
            }
        }
        let done = AtomicUsize::new(0);
        let t = Instant::now();
        std::thread::scope(|s| {
            for member in 0..threads {
                let (products, done) = (&products, &done);
                s.spawn(move || {
                    for (i, p) in products.iter().enumerate() {
                        p.work(member);
                        done.fetch_add(1, Ordering::AcqRel);
                        while done.load(Ordering::Acquire) < (i + 1) * threads {
                            std::hint::spin_loop();
                        }
                    }
                });
            }
        });
        if pass > 0 {
            best = best.min(t.elapsed().as_secs_f64());
        }
    }
    Ok(best)
}
