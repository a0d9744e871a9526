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
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use clap::Parser;
use prompting_btlm_backend::config::Config;

#[path = "common/checkpoint.rs"]
mod checkpoint;

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
    let weights = cli.out.join("model.safetensors");
    checkpoint::write_weights(&cfg, &weights, bf16, cli.seed).context("write the weights")?;
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
