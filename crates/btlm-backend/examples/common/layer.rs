//! What the kernel benchmarks (`bench --matmul-only`, `shapes`) multiply: BTLM-3B's
//! projection shapes and reproducible random values. (A folder without `main.rs`, so cargo
//! does not take it for an example; the examples include it with `#[path]`.)

/// The projections of one BTLM-3B block as `(name, n_in, n_out)`.
pub const LAYER: [(&str, usize, usize); 5] = [
    ("attn.c_attn", 2560, 7680),
    ("attn.c_proj", 2560, 2560),
    ("mlp.c_fc", 2560, 6826),
    ("mlp.c_fc2", 2560, 6826),
    ("mlp.c_proj", 6826, 2560),
];

/// `n` values in ±0.02 (xorshift from `seed`): weights and activations of the benchmarks.
pub fn random(n: usize, seed: u64) -> Vec<f32> {
    let mut s = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            ((s >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 0.04
        })
        .collect()
}
