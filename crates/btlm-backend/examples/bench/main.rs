//! Prefill/decode speed of BTLM at the real width (n_embd 2560, 32 heads, n_inner 6826,
//! vocab 50257) with a few layers of random weights, per weight format, with peak RSS and
//! decode speed as a fraction of the measured memory bandwidth.
//!
//! ```text
//! cargo run --release -p prompting-btlm-backend --example bench -- --layers 4
//! ```
//!
//! Each format runs in its own child process so that peak RSS is per format.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use candle_core::DType;
use clap::Parser;
use prompting_btlm_backend::args::parse_device;
use prompting_btlm_backend::config::Config;
use prompting_btlm_backend::kernels::prefetch::{self, PrefetchLevel};
use prompting_btlm_backend::kernels::q4k_scaling::Q4kScaling;
use prompting_btlm_backend::kernels::{KernelPath, TILE, WeightFormat};
use prompting_btlm_backend::loader::LoadOptions;
use prompting_btlm_backend::model::Btlm;
use prompting_btlm_backend::options::{KvDtype, PrefillPrecision, Quantization};
use prompting_btlm_backend::pack_cache::WeightCache;
use prompting_btlm_backend::sampling::argmax;
use prompting_btlm_backend::weights::Checkpoint;

mod bandwidth;
#[path = "../common/checkpoint.rs"]
mod checkpoint;
#[path = "../common/layer.rs"]
mod layer;
mod matmul;
#[path = "../common/passes.rs"]
mod passes;

#[derive(Parser, Debug)]
struct Cli {
    /// Number of transformer blocks of the random checkpoint.
    #[arg(long, default_value_t = 4)]
    layers: usize,
    /// Prompt tokens for the prefill measurement (at least 1).
    #[arg(long, default_value_t = 128)]
    prompt: usize,
    /// Tokens generated for the decode measurement.
    #[arg(long, default_value_t = 32)]
    decode: usize,
    /// Formats to measure.
    #[arg(long, value_delimiter = ',', default_value = "f32,bf16,f16,q8_0,q4k")]
    formats: Vec<String>,
    /// The random checkpoint's `.safetensors` file: written there unless present.
    #[arg(long)]
    checkpoint: Option<PathBuf>,
    /// Device: cpu, cuda or cuda:N (CUDA needs `--features cuda`; quantized formats are
    /// CPU-only, and "of bw" stays relative to the CPU's memory bandwidth).
    #[arg(long, default_value = "cpu")]
    device: String,
    /// Activation rows of the kernel-only matmul measurement.
    #[arg(long, value_delimiter = ',', default_value = "1,2,4,8,16,128")]
    matmul_rows: Vec<usize>,
    /// Skip the kernel-only matmul measurement.
    #[arg(long)]
    skip_matmul: bool,
    /// Only the kernel-only matmul measurement (no checkpoint, no model).
    #[arg(long)]
    matmul_only: bool,
    /// The kernel-only measurement in cache on one thread, timed in CPU time (the compute
    /// ceiling of each row count, little disturbed by other processes); implies
    /// `--matmul-only`.
    #[arg(long)]
    matmul_in_cache: bool,
    /// Cache converted weights: `off`, `beside` (beside the checkpoint) or a directory.
    /// Run twice to measure a second start.
    #[arg(long, default_value = "off")]
    weight_cache: String,
    /// Reserve the key/value cache for the prompt and the decoded tokens up front, as the
    /// miner does, instead of growing it 256 positions at a time (each growth copies the
    /// whole cache, e.g. on the first decode step after a 1024-token prompt).
    #[arg(long)]
    reserve_cache: bool,
    /// Arithmetic of f32/f16 products with many rows (`--btlm.prefill_precision`): `bf16`
    /// runs them converted to bf16 on CPUs with AVX512-BF16.
    #[arg(long, value_enum, default_value_t = PrefillPrecision::Exact)]
    prefill_precision: PrefillPrecision,
    /// What the key/value cache stores (`--btlm.kv_dtype`): `auto` (q8 for quantized
    /// weights, f16 for half-precision ones, f32 for f32), `f32`, `f16`, `q8` or `q4`.
    #[arg(long, value_enum, default_value_t = KvDtype::Auto)]
    kv_dtype: KvDtype,
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

/// Bytes of packed projection weights read to produce one token (tile and block padding
/// included).
fn weight_bytes_per_token(cfg: &Config, format: WeightFormat) -> f64 {
    let bytes = |n_in: usize, n_out: usize| {
        (n_out.div_ceil(TILE) * format.tile_bytes(format.padded_k(n_in))) as f64
    };
    let (e, inner) = (cfg.n_embd, cfg.n_inner);
    let per_layer = bytes(e, 3 * e) + bytes(e, e) + 2.0 * bytes(e, inner) + bytes(inner, e);
    cfg.n_layer as f64 * per_layer + bytes(e, cfg.vocab_size)
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
            device: parse_device(&cli.device)?,
            dtype,
            quantization,
            kernels: None,
            prefill_precision: cli.prefill_precision,
            weight_cache: match cli.weight_cache.as_str() {
                "off" => WeightCache::Off,
                "beside" => WeightCache::Beside,
                dir => WeightCache::Dir(dir.into()),
            },
            kv_dtype: cli.kv_dtype,
        },
    )?;
    drop(ckpt);
    let load_s = t.elapsed().as_secs_f64();
    let load_rss = peak_rss_mib();
    let prompt: Vec<u32> = (0..cli.prompt as u32).map(|i| (i * 7919) % 50000).collect();

    // Warm-up (allocations, thread pools).
    let mut cache = model.new_cache();
    model.prefill(&prompt[..prompt.len().min(8)], &mut cache, 256)?;

    let mut cache = if cli.reserve_cache {
        model.new_cache_with_capacity(cli.prompt + cli.decode)
    } else {
        model.new_cache()
    };
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
        "RESULT {format} {load_s} {} {} {} {load_rss} {}",
        cli.prompt as f64 / prefill_s,
        cli.decode as f64 / decode_s,
        peak_rss_mib(),
        {
            // Prefill / decode kernels, e.g. `avx2-many/avx2`.
            let path = KernelPath::active()?;
            let wf: WeightFormat = format.parse()?;
            format!(
                "{}/{}",
                path.kernel_name_with(wf, cli.prefill_precision, cli.prompt),
                path.kernel_name(wf, 1)
            )
        },
    ))
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let cli = Cli::parse();
    if cli.prompt == 0 {
        return Err("--prompt must be at least 1".into());
    }
    let cfg = config(cli.layers);
    let ckpt = cli.checkpoint.clone().unwrap_or_else(|| {
        std::env::temp_dir().join(format!("btlm-bench-{}l.safetensors", cli.layers))
    });
    if ckpt.is_dir() {
        // Else a random checkpoint would be written beside it, only to fail on the rename.
        return Err(format!(
            "--checkpoint {} is a folder: name a .safetensors file (in it, or one to write)",
            ckpt.display()
        )
        .into());
    }
    if cli.matmul_in_cache {
        let path = KernelPath::active()?;
        let formats = cli
            .formats
            .iter()
            .map(|f| f.parse::<WeightFormat>())
            .collect::<Result<Vec<_>, _>>()?;
        matmul::run_in_cache(path, cli.prefill_precision, &formats, &cli.matmul_rows);
        return Ok(());
    }
    if let Some(format) = &cli.child {
        println!("{}", measure(&cli, &ckpt, format)?);
        return Ok(());
    }
    if !ckpt.is_file() && !cli.matmul_only {
        eprintln!("writing random checkpoint {} ...", ckpt.display());
        checkpoint::write_weights(&cfg, &ckpt, true, 1)?;
    }
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let bw_read_1 = bandwidth::read(1);
    let bw_read = bandwidth::read(threads);
    let bw_copy = bandwidth::copy();
    println!(
        "BTLM bench: n_embd {} heads {} n_inner {} vocab {} layers {} | prompt {} tokens, decode {} tokens, {threads} threads, device {}",
        cfg.n_embd,
        cfg.n_head,
        cfg.n_inner,
        cfg.vocab_size,
        cfg.n_layer,
        cli.prompt,
        cli.decode,
        cli.device
    );
    println!(
        "memory bandwidth: read {bw_read:.1} GB/s ({threads} threads), read {bw_read_1:.1} GB/s (1 thread), memcpy {bw_copy:.1} GB/s (read+write)"
    );
    let path = KernelPath::active()?;
    println!(
        "kernel path: {path} (detected {}; BTLM_KERNELS overrides), weight prefetch into {} (L1D {}; BTLM_PREFETCH overrides), avx512 q4k sub-block scales in {} (BTLM_Q4K_SCALES overrides)",
        KernelPath::detect(),
        PrefetchLevel::active(),
        prefetch::l1d_bytes().map_or("unknown".to_string(), |b| format!("{} KiB", b >> 10)),
        Q4kScaling::active(),
    );
    if !cli.skip_matmul {
        let formats = cli
            .formats
            .iter()
            .map(|f| f.parse::<WeightFormat>())
            .collect::<Result<Vec<_>, _>>()?;
        matmul::run(
            path,
            cli.prefill_precision,
            &formats,
            &cli.matmul_rows,
            bw_read,
        );
    }
    if cli.matmul_only {
        return Ok(());
    }
    println!(
        "{:<6} {:<19} {:>7} {:>13} {:>12} {:>11} {:>9} {:>12} {:>10} {:>9} {:>13} {:>13}",
        "format",
        "kernels (pre/dec)",
        "load s",
        "load RSS MiB",
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
        let mut child = Command::new(&exe);
        if cli.reserve_cache {
            child.arg("--reserve-cache");
        }
        let out = child
            .args([
                "--layers",
                &cli.layers.to_string(),
                "--prompt",
                &cli.prompt.to_string(),
                "--decode",
                &cli.decode.to_string(),
                "--checkpoint",
                &ckpt.to_string_lossy(),
                "--device",
                &cli.device,
                "--weight-cache",
                &cli.weight_cache,
                "--prefill-precision",
                &cli.prefill_precision.to_string(),
                "--kv-dtype",
                &cli.kv_dtype.to_string(),
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
        let fields: Vec<&str> = line.split_whitespace().collect();
        let kpath = fields.last().copied().unwrap_or("?");
        let v: Vec<f64> = fields
            .iter()
            .skip(2)
            .filter_map(|x| x.parse().ok())
            .collect();
        let [load_s, prefill, decode, rss, load_rss] = v[..] else {
            println!("{format:<6} unparsable: {line}");
            continue;
        };
        let wf: WeightFormat = format.parse()?;
        let bytes = weight_bytes_per_token(&cfg, wf);
        let gbs = bytes * decode / 1e9;
        let est_full = decode * bytes / weight_bytes_per_token(&full, wf);
        println!(
            "{format:<6} {kpath:<19} {load_s:>7.1} {load_rss:>13.0} {prefill:>12.1} {decode:>11.2} {:>9.1} {:>12.0} {gbs:>10.2} {:>8.0}% {rss:>13.0} {est_full:>13.2}",
            1000.0 / decode,
            bytes / 1e6,
            100.0 * gbs / bw_read,
        );
    }
    Ok(())
}
