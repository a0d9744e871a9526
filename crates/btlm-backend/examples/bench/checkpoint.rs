//! A random bf16 BTLM checkpoint of any depth, written as `.safetensors` tensor by tensor
//! (never the whole model in memory: the 32-layer one is 5.3 GB).

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::Path;

use prompting_btlm_backend::config::Config;
use prompting_btlm_backend::kernels::acts::f32_to_bf16;

/// What a tensor holds.
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

/// Writes the checkpoint to `path` (through a temporary file, renamed when complete).
/// Random weights are uniform with standard deviation 0.02, like the training init.
pub fn write(cfg: &Config, path: &Path) -> std::io::Result<()> {
    let list = tensors(cfg);
    let mut header = serde_json::Map::new();
    let mut offset = 0usize;
    for (name, shape, _) in &list {
        let bytes = 2 * shape.iter().product::<usize>();
        header.insert(
            name.clone(),
            serde_json::json!({"dtype": "BF16", "shape": shape, "data_offsets": [offset, offset + bytes]}),
        );
        offset += bytes;
    }
    let mut json = serde_json::Value::Object(header).to_string().into_bytes();
    while !json.len().is_multiple_of(8) {
        json.push(b' ');
    }
    let tmp = path.with_extension("partial");
    let mut out = BufWriter::with_capacity(1 << 22, File::create(&tmp)?);
    out.write_all(&(json.len() as u64).to_le_bytes())?;
    out.write_all(&json)?;
    let mut state = 0x2545_f491_4f6c_dd1du64;
    let half_width = 0.02 * 3f32.sqrt();
    let mut buf = Vec::with_capacity(1 << 20);
    for (_, shape, fill) in &list {
        let mut left = shape.iter().product::<usize>();
        while left > 0 {
            let n = left.min(1 << 19);
            buf.clear();
            for _ in 0..n {
                let v = match fill {
                    Fill::Ones => 1.0,
                    Fill::Zeros => 0.0,
                    Fill::Random => {
                        state ^= state << 13;
                        state ^= state >> 7;
                        state ^= state << 17;
                        ((state >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0) * half_width
                    }
                };
                buf.extend_from_slice(&f32_to_bf16(v).to_le_bytes());
            }
            out.write_all(&buf)?;
            left -= n;
        }
    }
    out.into_inner().map_err(|e| e.into_error())?.sync_all()?;
    std::fs::rename(&tmp, path)
}
