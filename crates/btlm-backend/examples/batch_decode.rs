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
//! runs `--steps` decode steps; the median step time is reported, with the minor page
//! faults per step (first touches of memory: slow on VMs).
//!
//! `--caches` says where the caches come from: `fresh` (new memory, as every request had
//! before the engine's cache pool: the first round of a process) and/or `reused` (the steady
//! state of the pool: a warm-up round runs the same prefill and steps on caches from a
//! [`KvPool`], gives them back, and the timed round takes them again). Both leave the
//! caches' capacity alike: prompt plus every step, rounded as the pool rounds.
//!
//! `--sections` adds a table of where the steps' time went: the mean milliseconds a step
//! per section of the model ([`step_profile`]), and what is outside them ("other": the
//! embedding, the team's start, copying the logits); and the rate at which the attention
//! section read the keys and values (every cached position of every running sequence, each
//! step, over the section's time, which includes appending the step's own): against the
//! machine's read bandwidth, whether attention is bound by memory. It also prints where the
//! prefill of the contexts (every sequence's in one pass) went.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, bail};
use candle_core::DType;
use clap::Parser;
use prompting_btlm_backend::config::Config;
use prompting_btlm_backend::kv_cache::Cache;
use prompting_btlm_backend::kv_pool::{KvPool, KvPoolConfig, Lease};
use prompting_btlm_backend::loader::LoadOptions;
use prompting_btlm_backend::model::{Btlm, Segment};
use prompting_btlm_backend::options::{KvDtype, Quantization};
use prompting_btlm_backend::pack_cache::WeightCache;
use prompting_btlm_backend::step_profile::{self, Section, SectionTimes};
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
    /// Where the caches come from: `fresh`, `reused` (from a pool, after a warm-up round on
    /// the same caches), or both in turn.
    #[arg(long, value_delimiter = ',', default_value = "fresh")]
    caches: Vec<String>,
    /// What the key/value cache stores (`--btlm.kv_dtype`): `auto` (q8 for quantized
    /// weights, f16 for half-precision ones, f32 for f32), `f32`, `f16`, `q8` or `q4`.
    #[arg(long, value_enum, default_value_t = KvDtype::Auto)]
    kv_dtype: KvDtype,
    /// Also print the mean time a step spends in each section of the model.
    #[arg(long)]
    sections: bool,
}

/// Prints where the steps of `rows` went: mean ms a step per section, and the rest.
fn section_table(format: &str, caches: &str, rows: &[Row], steps: usize) {
    let names: Vec<&str> = Section::ALL.iter().map(|s| s.name()).collect();
    println!(
        "\n| {format} ({caches}) batch | mean step ms | {} | attention GB/s of keys and values | other |\n| ---: | ---: |{}",
        names.join(" | "),
        " ---: |".repeat(names.len() + 2)
    );
    let per_step = |d: std::time::Duration| d.as_secs_f64() * 1e3 / steps.max(1) as f64;
    for r in rows {
        let mut cells: Vec<String> = r
            .sections
            .iter()
            .map(|(_, d)| format!("{:.2}", per_step(d)))
            .collect();
        let attention_ms = per_step(r.sections.get(Section::Attention));
        cells.push(if attention_ms > 0.0 {
            format!("{:.1}", r.kv_bytes / attention_ms / 1e6)
        } else {
            "-".into()
        });
        let mean_ms = r.mean * 1e3;
        println!(
            "| {} | {mean_ms:.1} | {} | {:.2} |",
            r.batch,
            cells.join(" | "),
            mean_ms - per_step(r.sections.total())
        );
    }
    println!();
}

/// Minor page faults of this process so far (field 10 of `/proc/self/stat`; 0 elsewhere).
fn minor_faults() -> u64 {
    std::fs::read_to_string("/proc/self/stat")
        .ok()
        .and_then(|s| {
            // The fields after the command name, which is in parentheses.
            let rest = s.rsplit_once(')')?.1.to_string();
            rest.split_whitespace().nth(7)?.parse().ok()
        })
        .unwrap_or(0)
}

/// One timed batch size.
struct Row {
    batch: usize,
    /// Median step seconds.
    median: f64,
    /// Mean step seconds.
    mean: f64,
    /// Minor page faults per step.
    faults: f64,
    /// The sections of all its steps (zero unless recorded).
    sections: SectionTimes,
    /// Bytes of keys and values a step's attention reads, on average.
    kv_bytes: f64,
}

/// The prefill of every sequence's context, in one pass.
struct Prefill {
    /// Wall-clock seconds of the pass.
    seconds: f64,
    /// Prompt tokens over all sequences.
    tokens: usize,
    /// Its sections (zero unless recorded).
    sections: SectionTimes,
}

/// Prints where the prefill's time went (ms per section over the whole pass, and the rest).
fn prefill_table(format: &str, caches: &str, prefill: &Prefill) {
    let names: Vec<&str> = Section::ALL.iter().map(|s| s.name()).collect();
    let cells: Vec<String> = prefill
        .sections
        .iter()
        .map(|(_, d)| format!("{:.1}", d.as_secs_f64() * 1e3))
        .collect();
    let ms = prefill.seconds * 1e3;
    println!(
        "| {format} ({caches}) prefill tokens | ms | tok/s | {} | other |\n| ---: | ---: | ---: |{}\n| {} | {ms:.1} | {:.1} | {} | {:.1} |\n",
        names.join(" | "),
        " ---: |".repeat(names.len() + 1),
        prefill.tokens,
        prefill.tokens as f64 / prefill.seconds.max(f64::MIN_POSITIVE),
        cells.join(" | "),
        ms - prefill.sections.total().as_secs_f64() * 1e3
    );
}

/// Prefills `caches` with `prompts` together, then runs `steps` decode steps for each batch
/// size (the first `n` caches), recording the sections of both if `sections`; returns the
/// prefill and the rows.
fn run_round(
    model: &Btlm,
    caches: &mut [Cache],
    prompts: &[Vec<u32>],
    batches: &[usize],
    steps: usize,
    sections: bool,
) -> anyhow::Result<(Prefill, Vec<Row>)> {
    let mut segments: Vec<Segment<'_>> = caches
        .iter_mut()
        .zip(prompts)
        .map(|(cache, p)| Segment {
            tokens: p,
            cache,
            logits: false,
        })
        .collect();
    step_profile::record(sections);
    let t = Instant::now();
    model.forward_batch(&mut segments)?;
    let prefill = Prefill {
        seconds: t.elapsed().as_secs_f64(),
        tokens: prompts.iter().map(Vec::len).sum(),
        sections: step_profile::take(),
    };
    step_profile::record(false);
    drop(segments);
    let mut rows = Vec::new();
    for &n in batches {
        let token = [42u32];
        let mut times = Vec::with_capacity(steps);
        // Positions the steps' attention reads: each sequence's cache and its new token.
        let mut positions = 0usize;
        let faults = minor_faults();
        step_profile::record(sections);
        for _ in 0..steps {
            positions += caches[..n].iter().map(|c| c.seq_len() + 1).sum::<usize>();
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
        let faults = (minor_faults() - faults) as f64 / steps.max(1) as f64;
        let sections = step_profile::take();
        step_profile::record(false);
        let mean = times.iter().sum::<f64>() / times.len().max(1) as f64;
        times.sort_by(f64::total_cmp);
        rows.push(Row {
            batch: n,
            median: times.get(times.len() / 2).copied().unwrap_or(0.0),
            mean,
            faults,
            sections,
            kv_bytes: (positions * model.kv_bytes_per_token()) as f64 / steps.max(1) as f64,
        });
    }
    Ok((prefill, rows))
}

/// Caches for `count` sequences of `needed` positions from `pool` (reused or new).
fn lease_all(
    model: &Btlm,
    pool: &mut KvPool<Cache>,
    count: usize,
    needed: usize,
) -> anyhow::Result<Vec<(Lease, Cache)>> {
    (0..count)
        .map(|_| {
            let (lease, cache) = pool
                .lease(needed)
                .context("the pool's budget holds every sequence")?;
            let cache = cache.unwrap_or_else(|| model.new_cache_with_capacity(lease.positions()));
            Ok((lease, cache))
        })
        .collect()
}

/// Empties the caches and gives them back to `pool`.
fn give_back_all(pool: &mut KvPool<Cache>, leased: Vec<(Lease, Cache)>) -> anyhow::Result<()> {
    for (lease, mut cache) in leased {
        cache.clear();
        let positions = cache.capacity();
        pool.give_back(lease, Some((cache, positions)))?;
    }
    Ok(())
}

fn options(format: &str, weight_cache: &str, kv_dtype: KvDtype) -> anyhow::Result<LoadOptions> {
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
        kv_dtype,
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
    for caches in &cli.caches {
        if !matches!(caches.as_str(), "fresh" | "reused") {
            bail!("--caches takes fresh and/or reused, not {caches}");
        }
    }
    println!(
        "| format | caches (kv dtype) | batch | step ms | aggregate tok/s | × batch 1 | minor faults/step |\n\
         | --- | --- | ---: | ---: | ---: | ---: | ---: |"
    );
    for format in &cli.formats {
        let t0 = Instant::now();
        let model = Btlm::load(
            &cfg,
            &ckpt,
            &options(format, &cli.weight_cache, cli.kv_dtype)?,
        )?;
        eprintln!("{format}: loaded in {:.1} s", t0.elapsed().as_secs_f64());
        let prompts: Vec<Vec<u32>> = (0..max_batch)
            .map(|s| {
                (0..cli.context)
                    .map(|i| ((s * 7919 + i * 104_729) % 50_000) as u32)
                    .collect()
            })
            .collect();
        // The first sequence runs every step of every batch size.
        let needed = cli.context + cli.steps * cli.batches.len();
        let mut pool = KvPool::new(KvPoolConfig {
            budget_bytes: usize::MAX,
            bytes_per_token: model.kv_bytes_per_token(),
            max_positions: cfg.n_positions.max(needed),
            recycle: true,
        })?;
        for caches in &cli.caches {
            let (prefill, rows) = if caches == "fresh" {
                let mut fresh: Vec<Cache> = (0..max_batch)
                    .map(|_| model.new_cache_with_capacity(pool.positions_for(needed)))
                    .collect();
                run_round(
                    &model,
                    &mut fresh,
                    &prompts,
                    &cli.batches,
                    cli.steps,
                    cli.sections,
                )?
            } else {
                // Warm-up: the same work on caches that then go back to the pool.
                let leased = lease_all(&model, &mut pool, max_batch, needed)?;
                let (leases, mut warm): (Vec<_>, Vec<_>) = leased.into_iter().unzip();
                run_round(&model, &mut warm, &prompts, &cli.batches, cli.steps, false)?;
                give_back_all(&mut pool, leases.into_iter().zip(warm).collect())?;
                let reused_before = pool.stats().reused;
                let leased = lease_all(&model, &mut pool, max_batch, needed)?;
                if pool.stats().reused - reused_before != max_batch as u64 {
                    bail!("the timed round did not get the warm-up's caches back");
                }
                let (leases, mut timed): (Vec<_>, Vec<_>) = leased.into_iter().unzip();
                let timed_round = run_round(
                    &model,
                    &mut timed,
                    &prompts,
                    &cli.batches,
                    cli.steps,
                    cli.sections,
                )?;
                give_back_all(&mut pool, leases.into_iter().zip(timed).collect())?;
                timed_round
            };
            let kv = model.kv_layout();
            let base = rows.first().map_or(1.0, |r| r.batch as f64 / r.median);
            for r in &rows {
                let rate = r.batch as f64 / r.median;
                println!(
                    "| {format} | {caches} ({kv}) | {} | {:.1} | {rate:.2} | {:.2} | {:.0} |",
                    r.batch,
                    r.median * 1e3,
                    rate / base,
                    r.faults
                );
            }
            if cli.sections {
                section_table(format, caches, &rows, cli.steps);
                prefill_table(format, caches, &prefill);
            }
        }
    }
    Ok(())
}
