//! Memory bandwidth probes: what "of bw" in the reports is relative to.
//!
//! The read probe streams a 1 GiB buffer the way the decode kernels stream weights: wide
//! loads into independent accumulators with `prefetcht0` 8 KiB ahead (the kernels'
//! `PREFETCH`). A plain `iter().fold()` (the probe before session 10) reads 20–30% less on
//! Zen 5 than the kernels do, so decode read "above 100%" of it.

use std::time::Instant;

/// Bytes the probes stream.
const BYTES: usize = 1 << 30;

/// How far ahead the read probe prefetches, as the q8_0/q4k decode kernels do.
#[cfg(target_arch = "x86_64")]
const PREFETCH: usize = 8192;

/// Read bandwidth in GB/s of summing a 1 GiB buffer with `threads` threads (best of 5).
pub fn read(threads: usize) -> f64 {
    let n = BYTES / 8;
    let buf: Vec<u64> = (0..n as u64).collect();
    // Whole 64-byte lines per thread, so every chunk is a multiple of 8 values.
    let chunk = n.div_ceil(threads).div_ceil(8) * 8;
    let mut best = f64::MAX;
    for _ in 0..5 {
        let t = Instant::now();
        let total: u64 = std::thread::scope(|s| {
            let hs: Vec<_> = buf.chunks(chunk).map(|c| s.spawn(move || sum(c))).collect();
            hs.into_iter()
                .map(|h| h.join().unwrap_or(0))
                .fold(0u64, u64::wrapping_add)
        });
        std::hint::black_box(total);
        best = best.min(t.elapsed().as_secs_f64());
    }
    (n * 8) as f64 / best / 1e9
}

/// The wrapping sum of `v`, with AVX2 loads and prefetches where the CPU has AVX2.
fn sum(v: &[u64]) -> u64 {
    #[cfg(target_arch = "x86_64")]
    if is_x86_feature_detected!("avx2") {
        // SAFETY: AVX2 was detected just above.
        return unsafe { sum_avx2(v) };
    }
    v.iter().fold(0u64, |a, &x| a.wrapping_add(x))
}

/// [`sum`] with four 256-bit accumulators over whole 64-byte lines, prefetching
/// [`PREFETCH`] bytes ahead.
///
/// # Safety
/// The CPU must support AVX2.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn sum_avx2(v: &[u64]) -> u64 {
    use std::arch::x86_64::*;
    let lines = v.len() / 8;
    let p = v.as_ptr();
    let mut acc = [_mm256_setzero_si256(); 4];
    for l in 0..lines {
        // SAFETY: line `l` (8 values) lies inside `v`; prefetches never fault.
        unsafe {
            let line = p.add(l * 8);
            _mm_prefetch::<_MM_HINT_T0>(line.cast::<i8>().wrapping_add(PREFETCH));
            let a = _mm256_loadu_si256(line.cast());
            let b = _mm256_loadu_si256(line.add(4).cast());
            let k = l % 2 * 2;
            acc[k] = _mm256_add_epi64(acc[k], a);
            acc[k + 1] = _mm256_add_epi64(acc[k + 1], b);
        }
    }
    let mut lanes = [0u64; 4];
    let total = _mm256_add_epi64(
        _mm256_add_epi64(acc[0], acc[1]),
        _mm256_add_epi64(acc[2], acc[3]),
    );
    // SAFETY: `lanes` holds 32 bytes.
    unsafe { _mm256_storeu_si256(lanes.as_mut_ptr().cast(), total) };
    let tail = v[lines * 8..].iter().fold(0u64, |a, &x| a.wrapping_add(x));
    lanes.iter().fold(tail, |a, &x| a.wrapping_add(x))
}

/// Copy bandwidth (bytes read + written) in GB/s of a 1 GiB memcpy (best of 5).
pub fn copy() -> f64 {
    let src = vec![1u8; BYTES];
    let mut dst = vec![0u8; BYTES];
    let mut best = f64::MAX;
    for _ in 0..5 {
        let t = Instant::now();
        dst.copy_from_slice(&src);
        std::hint::black_box(&dst);
        best = best.min(t.elapsed().as_secs_f64());
    }
    2.0 * BYTES as f64 / best / 1e9
}
