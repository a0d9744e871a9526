//! Writes a complete BTLM model directory of the real shape (n_embd 2560, 32 heads, n_inner
//! 6826, vocab 50257) with random weights, for benchmarks that run the miner itself:
//! `config.json`, `model.safetensors` (bf16 like the hub checkpoint, or f32), and a
//! byte-level BPE tokenizer of the full vocabulary size (`vocab.json` + `merges.txt`: the 256
//! byte symbols, 50 000 merges of symbol pairs, `<|endoftext|>` = 50256), so that every
//! token id decodes to text.
//!
//! ```text
//! cargo run --release -p prompting-btlm-backend --example write_random_model -- \
//!     --layers 32 --out /work/bench-models/btlm-random-32l
//! ```
//!
//! Tensors are generated and written one at a time (memory stays small); an existing
//! directory written with the same settings is reused.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use clap::Parser;
use prompting_btlm_backend::config::Config;

#[derive(Parser, Debug)]
struct Cli {
    /// Number of transformer blocks.
    #[arg(long, default_value_t = 32)]
    layers: usize,
    /// The directory to write (created; reused if it holds the same model).
    #[arg(long)]
    out: PathBuf,
    /// Stored weight type: bf16 (the hub checkpoint's) or f32.
    #[arg(long, default_value = "bf16")]
    dtype: String,
    /// Seed of the weights.
    #[arg(long, default_value_t = 7)]
    seed: u64,
}

/// Weights are uniform in ±`SPREAD`: standard deviation 0.02, like the bench checkpoints.
const SPREAD: f32 = 0.034_641;

/// The marker recording what a directory holds.
const MARKER: &str = "random-model.json";

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let bf16 = match cli.dtype.as_str() {
        "bf16" => true,
        "f32" => false,
        other => bail!("--dtype {other}: expected bf16 or f32"),
    };
    let cfg = Config {
        n_layer: cli.layers,
        ..Config::btlm_3b_8k()
    };
    let marker = serde_json::json!({
        "layers": cli.layers,
        "dtype": cli.dtype,
        "seed": cli.seed,
        "format": 1,
    });
    let marker_path = cli.out.join(MARKER);
    if let Ok(text) = std::fs::read_to_string(&marker_path)
        && serde_json::from_str::<serde_json::Value>(&text).ok() == Some(marker.clone())
    {
        println!("reusing {}", cli.out.display());
        return Ok(());
    }
    std::fs::create_dir_all(&cli.out).with_context(|| format!("create {}", cli.out.display()))?;
    // A half-written directory must not look complete.
    let _ = std::fs::remove_file(&marker_path);
    write_config(&cfg, &cli.out)?;
    write_tokenizer(cfg.vocab_size, &cli.out)?;
    write_weights(&cfg, &cli.out.join("model.safetensors"), bf16, cli.seed)?;
    std::fs::write(&marker_path, marker.to_string()).context("write marker")?;
    println!("wrote {}", cli.out.display());
    Ok(())
}

fn write_config(cfg: &Config, dir: &Path) -> anyhow::Result<()> {
    let json = serde_json::json!({
        "model_type": "btlm",
        "architectures": ["BTLMLMHeadModel"],
        "activation_function": "swiglu",
        "vocab_size": cfg.vocab_size,
        "n_positions": cfg.n_positions,
        "n_embd": cfg.n_embd,
        "n_layer": cfg.n_layer,
        "n_head": cfg.n_head,
        "n_inner": cfg.n_inner,
        "layer_norm_epsilon": cfg.layer_norm_epsilon,
        "position_embedding_type": "alibi",
        "mup_embeddings_scale": cfg.embeddings_scale,
        "mup_output_alpha": 2.22,
        "mup_width_scale": 0.1,
        "mup_scale_qk_dot_by_d": cfg.scale_qk_dot_by_d,
        "scale_attn_weights": true,
        "scale_attn_by_inverse_layer_idx": false,
        "bos_token_id": 50256,
        "eos_token_id": 50256,
        "torch_dtype": "bfloat16",
    });
    std::fs::write(
        dir.join("config.json"),
        serde_json::to_string_pretty(&json)?,
    )
    .context("write config.json")
}

/// GPT-2's byte → symbol map: printable bytes stand for themselves, the others for the
/// code points from U+0100 on.
fn byte_symbols() -> Vec<char> {
    let printable = |b: u32| {
        (u32::from(b'!')..=u32::from(b'~')).contains(&b)
            || (0xA1..=0xAC).contains(&b)
            || (0xAE..=0xFF).contains(&b)
    };
    let mut next = 256u32;
    (0..256u32)
        .map(|b| {
            let code = if printable(b) {
                b
            } else {
                next += 1;
                next - 1
            };
            char::from_u32(code).unwrap_or('?')
        })
        .collect()
}

fn write_tokenizer(vocab_size: usize, dir: &Path) -> anyhow::Result<()> {
    let symbols = byte_symbols();
    let mut vocab: BTreeMap<String, usize> = BTreeMap::new();
    for s in &symbols {
        let id = vocab.len();
        vocab.insert(s.to_string(), id);
    }
    let merges_wanted = vocab_size - 1 - symbols.len();
    let mut merges = String::from("#version: 0.2\n");
    'pairs: for a in &symbols {
        for b in &symbols {
            if vocab.len() == symbols.len() + merges_wanted {
                break 'pairs;
            }
            let id = vocab.len();
            vocab.insert(format!("{a}{b}"), id);
            merges.push_str(&format!("{a} {b}\n"));
        }
    }
    vocab.insert("<|endoftext|>".into(), vocab_size - 1);
    if vocab.len() != vocab_size {
        bail!("built {} tokens, wanted {vocab_size}", vocab.len());
    }
    std::fs::write(dir.join("vocab.json"), serde_json::to_string(&vocab)?)
        .context("write vocab.json")?;
    std::fs::write(dir.join("merges.txt"), merges).context("write merges.txt")
}

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

/// Round-to-nearest-even f32 → bf16 bits.
fn bf16_bits(x: f32) -> u16 {
    let bits = x.to_bits();
    let rounding = ((bits >> 16) & 1) + 0x7FFF;
    (bits.wrapping_add(rounding) >> 16) as u16
}

fn write_weights(cfg: &Config, path: &Path, bf16: bool, seed: u64) -> anyhow::Result<()> {
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
    let mut out = BufWriter::with_capacity(
        1 << 20,
        File::create(&tmp).with_context(|| format!("create {}", tmp.display()))?,
    );
    out.write_all(&(header.len() as u64).to_le_bytes())?;
    out.write_all(&header)?;
    let mut rng = Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1);
    let mut buf = Vec::with_capacity(1 << 20);
    for (name, shape, fill) in &list {
        let n = shape.iter().product::<usize>();
        let mut left = n;
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
                    buf.extend_from_slice(&bf16_bits(v).to_le_bytes());
                } else {
                    buf.extend_from_slice(&v.to_le_bytes());
                }
            }
            out.write_all(&buf)
                .with_context(|| format!("write {name}"))?;
            left -= chunk;
        }
    }
    out.flush()?;
    drop(out);
    std::fs::rename(&tmp, path).with_context(|| format!("rename to {}", path.display()))
}
