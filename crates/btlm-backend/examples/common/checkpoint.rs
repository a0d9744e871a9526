//! A random BTLM checkpoint of any depth, written as `.safetensors` tensor by tensor (never
//! the whole model in memory: the 32-layer one is 5.3 GB in bf16), for the examples that
//! need a model of the real shape (`write_random_model`, `bench`).

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::Path;

use prompting_btlm_backend::config::Config;
use prompting_btlm_backend::kernels::acts::f32_to_bf16;

/// Random weights are uniform in ±`SPREAD`: standard deviation 0.02, like the training
/// init.
const SPREAD: f32 = 0.034_641;

/// How a tensor's values are made.
#[derive(Clone, Copy)]
enum Fill {
    Random,
    Ones,
    Zeros,
}
fn tensors(cfg: &Config) -> Vec<(String, Vec<usize>, Fill)> {
    let e = cfg.n_embd;
    let mut t = vec![
        (
            "transformer.wte.weight".to_string(),
            vec![cfg.vocab_size, e],
            Fill::Random,
        ),
        ("transformer.ln_f.weight".into(), vec![e], Fill::Ones),
        ("transformer.ln_f.bias".into(), vec![e], Fill::Zeros),
    ];
    for i in 0..cfg.n_layer {
        let p = format!("transformer.h.{i}");
        for ln in ["ln_1", "ln_2"] {
            t.push((format!("{p}.{ln}.weight"), vec![e], Fill::Ones));
            t.push((format!("{p}.{ln}.bias"), vec![e], Fill::Zeros));
        }
        for (name, n_in, n_out) in [
            ("attn.c_attn", e, 3 * e),
            ("attn.c_proj", e, e),
            ("mlp.c_fc", e, cfg.n_inner),
            ("mlp.c_fc2", e, cfg.n_inner),
            ("mlp.c_proj", cfg.n_inner, e),
        ] {
            t.push((
                format!("{p}.{name}.weight"),
                vec![n_in, n_out],
                Fill::Random,
            ));
            t.push((format!("{p}.{name}.bias"), vec![n_out], Fill::Zeros));
        }
    }
    t
}

/// xorshift64*: fast, reproducible, good enough for random weights.
struct Rng(u64);

impl Rng {
    fn uniform(&mut self) -> f32 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        let x = self.0.wrapping_mul(0x2545_F491_4F6C_DD1D);
        // 24 random bits → [-1, 1).
        ((x >> 40) as f32 / (1u64 << 23) as f32) - 1.0
    }
}

/// An I/O error `e` saying what was done to which file.
fn named(what: &'static str, file: &Path) -> impl Fn(std::io::Error) -> std::io::Error {
    let file = file.display().to_string();
    move |e| std::io::Error::new(e.kind(), format!("{what} {file}: {e}"))
}

/// Writes the checkpoint of `cfg` to `path` (through a temporary file beside it, renamed
/// when complete), in bf16 or f32, its random weights from `seed`. Errors name the file.
pub fn write_weights(cfg: &Config, path: &Path, bf16: bool, seed: u64) -> std::io::Result<()> {
    let list = tensors(cfg);
    let width = if bf16 { 2 } else { 4 };
    let mut header = serde_json::Map::new();
    let mut offset = 0usize;
    for (name, shape, _) in &list {
        let bytes = shape.iter().product::<usize>() * width;
        header.insert(
            name.clone(),
            serde_json::json!({
                "dtype": if bf16 { "BF16" } else { "F32" },
                "shape": shape,
                "data_offsets": [offset, offset + bytes],
            }),
        );
        offset += bytes;
    }
    let mut header = serde_json::Value::Object(header).to_string().into_bytes();
    while !header.len().is_multiple_of(8) {
        header.push(b' ');
    }
    let tmp = path.with_extension("safetensors.partial");
    let mut out =
        BufWriter::with_capacity(1 << 20, File::create(&tmp).map_err(named("create", &tmp))?);
    let write_err = named("write", &tmp);
    out.write_all(&(header.len() as u64).to_le_bytes())
        .map_err(&write_err)?;
    out.write_all(&header).map_err(&write_err)?;
    let mut rng = Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1);
    let mut buf = Vec::with_capacity(1 << 20);
    for (_, shape, fill) in &list {
        let mut left = shape.iter().product::<usize>();
        while left > 0 {
            let chunk = left.min(1 << 18);
            buf.clear();
            for _ in 0..chunk {
                let v = match fill {
                    Fill::Random => rng.uniform() * SPREAD,
                    Fill::Ones => 1.0,
                    Fill::Zeros => 0.0,
                };
                if bf16 {
                    buf.extend_from_slice(&f32_to_bf16(v).to_le_bytes());
                } else {
                    buf.extend_from_slice(&v.to_le_bytes());
                }
            }
            out.write_all(&buf).map_err(&write_err)?;
            left -= chunk;
        }
    }
    let file = out.into_inner().map_err(|e| write_err(e.into_error()))?;
    file.sync_all().map_err(&write_err)?;
    std::fs::rename(&tmp, path).map_err(named("rename to", path))
}
