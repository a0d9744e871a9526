//! Speed of one batched decode step (`Btlm::forward_batch` with one token for each of N
//! sequences) against N, per weight format: the figure continuous batching rests on. A step
//! reads the weights once for all rows, so while decode is memory-bound its time should grow
//! little with N and the aggregate tokens/s almost N-fold.
//!
//! ```text
//! cargo run --release -p prompting-btlm-backend --example write_random_model -- \
//!     --layers 4 --out target/bench-models/btlm-random-4l
//! cargo run --release -p prompting-btlm-backend --example batch_decode -- \
//!     --model target/bench-models/btlm-random-4l --formats f32,q4k --batches 1,2,4,8
//! ```
//!
//! Every sequence first holds `--context` tokens (prefilled together), then each batch size
//! runs `--steps` decode steps; the median step time is reported.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, bail};
use candle_core::DType;
use clap::Parser;
use prompting_btlm_backend::config::Config;
use prompting_btlm_backend::loader::LoadOptions;
use prompting_btlm_backend::model::{Btlm, Segment};
use prompting_btlm_backend::options::Quantization;
use prompting_btlm_backend::pack_cache::WeightCache;
use prompting_btlm_backend::weights::Checkpoint;

#[derive(Parser, Debug)]
struct Cli {
    /// A model directory (config.json + model.safetensors), e.g. from `write_random_model`.
    #[arg(long)]
    model: PathBuf,
    /// Weight formats to measure.
    #[arg(long, value_delimiter = ',', default_value = "f32,bf16,q8_0,q4k")]
    formats: Vec<String>,
    /// Batch sizes to measure.
    #[arg(long, value_delimiter = ',', default_value = "1,2,4,8")]
    batches: Vec<usize>,
    /// Tokens in each sequence's cache before measuring.
    #[arg(long, default_value_t = 32)]
    context: usize,
    /// Decode steps timed per batch size.
    #[arg(long, default_value_t = 8)]
    steps: usize,
    /// Cache converted weights: `off`, `beside` (beside the checkpoint, where a second run
    /// loads them in seconds instead of converting again) or a directory.
    #[arg(long, default_value = "beside")]
    weight_cache: String,
}

fn options(format: &str, weight_cache: &str) -> anyhow::Result<LoadOptions> {
    let (dtype, quantization) = match format {
        "f32" => (DType::F32, Quantization::None),
        "bf16" => (DType::BF16, Quantization::None),
        "f16" => (DType::F16, Quantization::None),
        "q8_0" => (DType::F32, Quantization::Q8_0),
        "q4k" => (DType::F32, Quantization::Q4k),
        other => bail!("unknown format {other}"),
    };
    // The CPU is the default device.
    Ok(LoadOptions {
        dtype,
        quantization,
        weight_cache: match weight_cache {
            "off" => WeightCache::Off,
            "beside" => WeightCache::Beside,
            dir => WeightCache::Dir(dir.into()),
        },
        ..LoadOptions::default()
    })
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let cfg_text =
        std::fs::read_to_string(cli.model.join("config.json")).context("read config.json")?;
    let cfg = Config::from_json(&cfg_text)?;
    let ckpt = Checkpoint::open(&[cli.model.join("model.safetensors")])?;
    let max_batch = cli.batches.iter().copied().max().unwrap_or(1);
    println!(
        "| format | batch | step ms | aggregate tok/s | × batch 1 |\n| --- | ---: | ---: | ---: | ---: |"
    );
    for format in &cli.formats {
        let t0 = Instant::now();
        let model = Btlm::load(&cfg, &ckpt, &options(format, &cli.weight_cache)?)?;
        eprintln!("{format}: loaded in {:.1} s", t0.elapsed().as_secs_f64());
        let mut caches: Vec<_> = (0..max_batch).map(|_| model.new_cache()).collect();
        let prompts: Vec<Vec<u32>> = (0..max_batch)
            .map(|s| {
                (0..cli.context)
                    .map(|i| ((s * 7919 + i * 104_729) % 50_000) as u32)
                    .collect()
            })
            .collect();
        let mut segments: Vec<Segment<'_>> = caches
            .iter_mut()
            .zip(&prompts)
            .map(|(cache, p)| Segment {
                tokens: p,
                cache,
                logits: false,
            })
            .collect();
        model.forward_batch(&mut segments)?;
        drop(segments);
        let mut single = None;
        for &n in &cli.batches {
            let token = [42u32];
            let mut times = Vec::with_capacity(cli.steps);
            for _ in 0..cli.steps {
                let mut segments: Vec<Segment<'_>> = caches[..n]
                    .iter_mut()
                    .map(|cache| Segment {
                        tokens: &token,
                        cache,
                        logits: true,
                    })
                    .collect();
                let t = Instant::now();
                let logits = model.forward_batch(&mut segments)?;
                std::hint::black_box(logits.to_vec2::<f32>()?);
                times.push(t.elapsed().as_secs_f64());
            }
            times.sort_by(f64::total_cmp);
            let step = times[times.len() / 2];
            let rate = n as f64 / step;
            let base = *single.get_or_insert(rate);
            println!(
                "| {format} | {n} | {:.1} | {rate:.2} | {:.2} |",
                step * 1e3,
                rate / base
            );
        }
    }
    Ok(())
}
