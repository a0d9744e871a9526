//! Prefill/decode speed of BTLM at the real width (n_embd 2560, 32 heads, n_inner 6826,
//! vocab 50257) with a few layers of random weights, per weight format, with peak RSS and
//! decode speed as a fraction of the measured memory bandwidth.
//!
//! ```text
//! cargo run --release -p prompting-btlm-backend --example bench -- --layers 4
//! ```
//!
//! Each format runs in its own child process so that peak RSS is per format.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use candle_core::{DType, Device, Tensor};
use clap::Parser;
use prompting_btlm_backend::config::Config;
use prompting_btlm_backend::loader::LoadOptions;
use prompting_btlm_backend::model::Btlm;
use prompting_btlm_backend::options::Quantization;
use prompting_btlm_backend::sampling::argmax;
use prompting_btlm_backend::weights::Checkpoint;

#[derive(Parser, Debug)]
struct Cli {
    /// Number of transformer blocks of the random checkpoint.
    #[arg(long, default_value_t = 4)]
    layers: usize,
    /// Prompt tokens for the prefill measurement.
    #[arg(long, default_value_t = 128)]
    prompt: usize,
    /// Tokens generated for the decode measurement.
    #[arg(long, default_value_t = 32)]
    decode: usize,
    /// Formats to measure.
    #[arg(long, value_delimiter = ',', default_value = "f32,bf16,f16,q8_0,q4k")]
    formats: Vec<String>,
    /// Where the random checkpoint is written (reused if present).
    #[arg(long)]
    checkpoint: Option<PathBuf>,
    /// Internal: measure one format and print one result line.
    #[arg(long, hide = true)]
    child: Option<String>,
}

fn config(layers: usize) -> Config {
    Config {
        n_layer: layers,
        ..Config::btlm_3b_8k()
    }
}

fn write_checkpoint(cfg: &Config, path: &Path) -> candle_core::Result<()> {
    let dev = Device::Cpu;
    let e = cfg.n_embd;
    let mut t: HashMap<String, Tensor> = HashMap::new();
    let randn = |shape: &[usize]| Tensor::randn(0f32, 0.02, shape, &dev);
    t.insert(
        "transformer.wte.weight".into(),
        randn(&[cfg.vocab_size, e])?,
    );
    t.insert(
        "transformer.ln_f.weight".into(),
        Tensor::ones(e, DType::F32, &dev)?,
    );
    t.insert(
        "transformer.ln_f.bias".into(),
        Tensor::zeros(e, DType::F32, &dev)?,
    );
    for i in 0..cfg.n_layer {
        let p = format!("transformer.h.{i}");
        for ln in ["ln_1", "ln_2"] {
            t.insert(
                format!("{p}.{ln}.weight"),
                Tensor::ones(e, DType::F32, &dev)?,
            );
            t.insert(
                format!("{p}.{ln}.bias"),
                Tensor::zeros(e, DType::F32, &dev)?,
            );
        }
        for (name, n_in, n_out) in [
            ("attn.c_attn", e, 3 * e),
            ("attn.c_proj", e, e),
            ("mlp.c_fc", e, cfg.n_inner),
            ("mlp.c_fc2", e, cfg.n_inner),
            ("mlp.c_proj", cfg.n_inner, e),
        ] {
            t.insert(format!("{p}.{name}.weight"), randn(&[n_in, n_out])?);
            t.insert(
                format!("{p}.{name}.bias"),
                Tensor::zeros(n_out, DType::F32, &dev)?,
            );
        }
    }
    candle_core::safetensors::save(&t, path)
}

/// Bytes of matmul weights read to produce one token (padding of the quantized MLP included).
fn weight_bytes_per_token(cfg: &Config, format: &str) -> f64 {
    let (bytes_per_weight, block) = match format {
        "f32" => (4.0, 1),
        "bf16" | "f16" => (2.0, 1),
        "q8_0" => (34.0 / 32.0, 32),
        "q4k" => (144.0 / 256.0, 256),
        _ => (4.0, 1),
    };
    let e = cfg.n_embd as f64;
    let inner = (cfg.n_inner.div_ceil(block) * block) as f64;
    let per_layer = e * 3.0 * e + e * e + 3.0 * e * inner;
    (cfg.n_layer as f64 * per_layer + cfg.vocab_size as f64 * e) * bytes_per_weight
}

/// Peak resident set size of this process, in MiB (Linux).
fn peak_rss_mib() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<f64>().ok())
        })
        .map(|kb| kb / 1024.0)
        .unwrap_or(f64::NAN)
}

/// Read bandwidth in GB/s of summing a 1 GiB buffer with `threads` threads (best of 5).
fn read_bandwidth(threads: usize) -> f64 {
    let n = (1usize << 30) / 8;
    let buf: Vec<u64> = (0..n as u64).collect();
    let chunk = n.div_ceil(threads);
    let mut best = f64::MAX;
    for _ in 0..5 {
        let t = Instant::now();
        let total: u64 = std::thread::scope(|s| {
            let hs: Vec<_> = buf
                .chunks(chunk)
                .map(|c| s.spawn(move || c.iter().fold(0u64, |a, &x| a.wrapping_add(x))))
                .collect();
            hs.into_iter()
                .map(|h| h.join().unwrap_or(0))
                .fold(0u64, u64::wrapping_add)
        });
        std::hint::black_box(total);
        best = best.min(t.elapsed().as_secs_f64());
    }
    (n * 8) as f64 / best / 1e9
}

/// Copy bandwidth (bytes read + written) in GB/s of a 1 GiB memcpy (best of 5).
fn copy_bandwidth() -> f64 {
    let n = 1usize << 30;
    let src = vec![1u8; n];
    let mut dst = vec![0u8; n];
    let mut best = f64::MAX;
    for _ in 0..5 {
        let t = Instant::now();
        dst.copy_from_slice(&src);
        std::hint::black_box(&dst);
        best = best.min(t.elapsed().as_secs_f64());
    }
    2.0 * n as f64 / best / 1e9
}

fn measure(
    cli: &Cli,
    ckpt_path: &Path,
    format: &str,
) -> Result<String, Box<dyn std::error::Error>> {
    let cfg = config(cli.layers);
    let (dtype, quantization) = match format {
        "f32" => (DType::F32, Quantization::None),
        "bf16" => (DType::BF16, Quantization::None),
        "f16" => (DType::F16, Quantization::None),
        "q8_0" => (DType::F32, Quantization::Q8_0),
        "q4k" => (DType::F32, Quantization::Q4k),
        other => return Err(format!("unknown format {other}").into()),
    };
    let t = Instant::now();
    let ckpt = Checkpoint::open(&[ckpt_path.to_path_buf()])?;
    let model = Btlm::load(
        &cfg,
        &ckpt,
        &LoadOptions {
            device: Device::Cpu,
            dtype,
            quantization,
        },
    )?;
    drop(ckpt);
    let load_s = t.elapsed().as_secs_f64();
    let prompt: Vec<u32> = (0..cli.prompt as u32).map(|i| (i * 7919) % 50000).collect();

    // Warm-up (allocations, thread pools).
    let mut cache = model.new_cache();
    model.prefill(&prompt[..8], &mut cache, 256)?;

    let mut cache = model.new_cache();
    let t = Instant::now();
    let logits = model.prefill(&prompt, &mut cache, 256)?;
    let prefill_s = t.elapsed().as_secs_f64();
    let mut next = argmax(&logits.to_vec1::<f32>()?).unwrap_or(0);
    let t = Instant::now();
    for _ in 0..cli.decode {
        let l = model.next_token_logits(next, &mut cache)?;
        next = argmax(&l).unwrap_or(0);
    }
    let decode_s = t.elapsed().as_secs_f64();
    Ok(format!(
        "RESULT {format} {load_s} {} {} {}",
        cli.prompt as f64 / prefill_s,
        cli.decode as f64 / decode_s,
        peak_rss_mib()
    ))
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let cli = Cli::parse();
    let cfg = config(cli.layers);
    let ckpt = cli.checkpoint.clone().unwrap_or_else(|| {
        std::env::temp_dir().join(format!("btlm-bench-{}l.safetensors", cli.layers))
    });
    if let Some(format) = &cli.child {
        println!("{}", measure(&cli, &ckpt, format)?);
        return Ok(());
    }
    if !ckpt.is_file() {
        eprintln!("writing random checkpoint {} ...", ckpt.display());
        write_checkpoint(&cfg, &ckpt)?;
    }
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let bw_read_1 = read_bandwidth(1);
    let bw_read = read_bandwidth(threads);
    let bw_copy = copy_bandwidth();
    println!(
        "BTLM bench: n_embd {} heads {} n_inner {} vocab {} layers {} | prompt {} tokens, decode {} tokens, {threads} threads",
        cfg.n_embd, cfg.n_head, cfg.n_inner, cfg.vocab_size, cfg.n_layer, cli.prompt, cli.decode
    );
    println!(
        "memory bandwidth: read {bw_read:.1} GB/s ({threads} threads), read {bw_read_1:.1} GB/s (1 thread), memcpy {bw_copy:.1} GB/s (read+write)"
    );
    println!(
        "{:<6} {:>7} {:>12} {:>11} {:>9} {:>12} {:>10} {:>9} {:>13} {:>13}",
        "format",
        "load s",
        "prefill t/s",
        "decode t/s",
        "ms/token",
        "MB/token",
        "GB/s",
        "of bw",
        "peak RSS MiB",
        "32L est. t/s"
    );
    let full = config(32);
    let exe = std::env::current_exe()?;
    for format in &cli.formats {
        let out = Command::new(&exe)
            .args([
                "--layers",
                &cli.layers.to_string(),
                "--prompt",
                &cli.prompt.to_string(),
                "--decode",
                &cli.decode.to_string(),
                "--checkpoint",
                &ckpt.to_string_lossy(),
                "--child",
                format,
            ])
            .output()?;
        let stdout = String::from_utf8_lossy(&out.stdout);
        let Some(line) = stdout.lines().find(|l| l.starts_with("RESULT ")) else {
            println!(
                "{format:<6} failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            );
            continue;
        };
        let v: Vec<f64> = line
            .split_whitespace()
            .skip(2)
            .filter_map(|x| x.parse().ok())
            .collect();
        let [load_s, prefill, decode, rss] = v[..] else {
            println!("{format:<6} unparsable: {line}");
            continue;
        };
        let bytes = weight_bytes_per_token(&cfg, format);
        let gbs = bytes * decode / 1e9;
        let est_full = decode * bytes / weight_bytes_per_token(&full, format);
        println!(
            "{format:<6} {load_s:>7.1} {prefill:>12.1} {decode:>11.2} {:>9.1} {:>12.0} {gbs:>10.2} {:>8.0}% {rss:>13.0} {est_full:>13.2}",
            1000.0 / decode,
            bytes / 1e6,
            100.0 * gbs / bw_read,
        );
    }
    Ok(())
}
