//! `--btlm.*` settings: the Python miner's flags (same names and defaults) plus the native
//! backend's own. Usable from the command line (`clap`) and from a TOML file (`serde`, keys
//! without the `btlm.` prefix).

use std::path::PathBuf;
use std::time::Duration;

use candle_core::Device;
use serde::Deserialize;

use crate::engine::{DEFAULT_PREFILL_STEP_MS, EngineConfig};
use crate::error::{BtlmError, Result};
use crate::generation::{DEFAULT_STOP, GenerationConfig};
use crate::options::{KvDtype, ModelDType, PrefillPrecision, Quantization};
use crate::pack_cache::WeightCache;
use crate::prompt::{DEFAULT_SYSTEM_PROMPT, PromptFormat};
use crate::speed_probe;

/// The default `--btlm.device`, the Python miner's: the first GPU when there is one.
pub const DEFAULT_DEVICE: &str = "cuda";

/// The default model repository.
pub const DEFAULT_MODEL_ID: &str = "cerebras/btlm-3b-8k-base";

/// Settings of the BTLM backend.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[cfg_attr(feature = "cli", derive(clap::Args))]
#[serde(default, deny_unknown_fields)]
pub struct BtlmArgs {
    /// Device to load the model on: cpu, cuda or cuda:N. A build without the `cuda` feature
    /// runs on the CPU (one warning); a `cuda` build stops when it cannot open the GPU.
    #[cfg_attr(feature = "cli", arg(long = "btlm.device", default_value = DEFAULT_DEVICE))]
    pub device: String,
    /// The maximum number of new tokens of a completion.
    #[cfg_attr(feature = "cli", arg(long = "btlm.max_length", default_value_t = 100))]
    pub max_length: usize,
    /// Sample instead of greedy decoding.
    #[cfg_attr(feature = "cli", arg(long = "btlm.do_sample"))]
    pub do_sample: bool,
    /// Never repeat an n-gram of this size (0: off).
    #[cfg_attr(
        feature = "cli",
        arg(long = "btlm.no_repeat_ngram_size", default_value_t = 2)
    )]
    pub no_repeat_ngram_size: usize,
    /// Start every prompt with --btlm.system_prompt instead of the caller's system message.
    #[cfg_attr(feature = "cli", arg(long = "btlm.do_prompt_injection"))]
    pub do_prompt_injection: bool,
    /// The system prompt used with --btlm.do_prompt_injection.
    #[cfg_attr(feature = "cli", arg(long = "btlm.system_prompt", default_value = DEFAULT_SYSTEM_PROMPT))]
    pub system_prompt: String,
    /// Sampling temperature (0: greedy).
    #[cfg_attr(feature = "cli", arg(long = "btlm.temperature", default_value_t = 0.7))]
    pub temperature: f64,
    /// Hugging Face model repository.
    #[cfg_attr(feature = "cli", arg(long = "btlm.model_id", default_value = DEFAULT_MODEL_ID))]
    pub model_id: String,
    /// Repository revision (branch, tag or commit).
    #[cfg_attr(feature = "cli", arg(long = "btlm.revision", default_value = "main"))]
    pub revision: String,
    /// Load the model from this directory instead of the hub (config.json, vocab.json +
    /// merges.txt or tokenizer.json, model.safetensors or pytorch_model.bin).
    #[cfg_attr(feature = "cli", arg(long = "btlm.model_dir"))]
    pub model_dir: Option<PathBuf>,
    /// Weight dtype (on CPU, bf16/f16 weights run with f32 activations).
    #[cfg_attr(feature = "cli", arg(long = "btlm.dtype", value_enum, default_value_t = ModelDType::F32))]
    pub dtype: ModelDType,
    /// Quantize the weights at load time (CPU; q8_0 ≈ f32 quality, q4k smaller and faster).
    #[cfg_attr(feature = "cli", arg(long = "btlm.quantize", value_enum, default_value_t = Quantization::None))]
    pub quantize: Quantization,
    /// Arithmetic of prompt prefill (products of 64+ rows) with f32/f16 weights on CPU:
    /// `exact` (the weights' own precision) or `bf16` (weights rounded to bf16 chunk by chunk
    /// as they are read, activations to bf16 as with --btlm.dtype bf16; about twice as fast
    /// on CPUs with AVX512-BF16, elsewhere exact after one warning). Decode steps stay exact:
    /// with `bf16`, prompt pieces run in passes of their own (--btlm.piggyback_prefill does
    /// not apply).
    #[cfg_attr(feature = "cli", arg(long = "btlm.prefill_precision", value_enum, default_value_t = PrefillPrecision::Exact))]
    pub prefill_precision: PrefillPrecision,
    /// What the key/value cache stores on CPU: `f16` halves the bytes every decode step reads
    /// per cached position (at long prompts and full batches as many as the weights) and the
    /// memory a request reserves; `q8` stores int8 with a scale per head and position, 84
    /// bytes for f16's 160; `q4` (opt-in, for long contexts) 4-bit integers with a scale, 44
    /// bytes, further from the reference; `f32` keeps f32 weights' answers exactly the
    /// reference's; `auto`: q8 for quantized weights (--btlm.quantize q8_0 or q4k, whose own
    /// rounding moves answers far more), f16 for bf16/f16 weights, f32 for f32 ones. GPUs
    /// cache in --btlm.dtype (any other value is ignored there, with a warning).
    #[cfg_attr(feature = "cli", arg(long = "btlm.kv_dtype", value_enum, default_value_t = KvDtype::Auto))]
    pub kv_dtype: KvDtype,
    /// Sample among the k most likely tokens (0: no limit; Hugging Face's default is 50).
    #[cfg_attr(feature = "cli", arg(long = "btlm.top_k", default_value_t = 50))]
    pub top_k: usize,
    /// Nucleus sampling mass, in (0, 1].
    #[cfg_attr(feature = "cli", arg(long = "btlm.top_p", default_value_t = 1.0))]
    pub top_p: f64,
    /// Repetition penalty (1: off).
    #[cfg_attr(
        feature = "cli",
        arg(long = "btlm.repetition_penalty", default_value_t = 1.0)
    )]
    pub repetition_penalty: f32,
    /// Random seed for sampling (default: from the OS).
    #[cfg_attr(feature = "cli", arg(long = "btlm.seed"))]
    pub seed: Option<u64>,
    /// Requests that may wait for a batch slot; more are refused (overloaded).
    #[cfg_attr(feature = "cli", arg(long = "btlm.queue_size", default_value_t = 16))]
    pub queue_size: usize,
    /// Sequences generated together: each step advances all of them with one pass over the
    /// weights. Also the number of requests the miner's priority queue lets run at once.
    #[cfg_attr(feature = "cli", arg(long = "btlm.max_batch", default_value_t = 8))]
    pub max_batch: usize,
    /// Key/value cache budget in MiB: a request reserves prompt plus new tokens when it
    /// joins the batch; one that does not fit waits, one that never fits is refused.
    #[cfg_attr(
        feature = "cli",
        arg(long = "btlm.kv_cache_mb", default_value_t = 4096)
    )]
    pub kv_cache_mb: usize,
    /// Prompt tokens of one request run per step (a longer prompt is prefilled in pieces
    /// over several steps), so that a long prompt does not stall the other sequences of the
    /// batch.
    #[cfg_attr(
        feature = "cli",
        arg(long = "btlm.prefill_chunk", default_value_t = 64)
    )]
    pub prefill_chunk: usize,
    /// Prompt tokens run per step over all the prompts being prefilled (one piece of
    /// --btlm.prefill_chunk tokens at most per prompt; the oldest prompt's piece always
    /// runs): prompts that arrive together are prefilled together, while the pause a step
    /// makes in the decoding sequences' answers stays bounded (about this many tokens at the
    /// model's prefill speed). The default, 512, lets every prompt of a full batch at the
    /// default --btlm.prefill_chunk run its piece in each step, so prompts that arrive
    /// together also finish together.
    #[cfg_attr(
        feature = "cli",
        arg(long = "btlm.prefill_step_tokens", default_value_t = 512)
    )]
    pub prefill_step_tokens: usize,
    /// Milliseconds a step's prompt pieces may take, at the prompt speed the engine
    /// measures: a step runs fewer than --btlm.prefill_step_tokens prompt tokens where they
    /// would take longer (one piece always runs), so that on a slow host arriving prompts
    /// do not pause the answers being generated for seconds at a time (hosts that prefill
    /// 512 tokens within the default 2 s keep --btlm.prefill_step_tokens). 0: no time
    /// limit.
    #[cfg_attr(
        feature = "cli",
        arg(long = "btlm.prefill_step_ms", default_value_t = DEFAULT_PREFILL_STEP_MS)
    )]
    pub prefill_step_ms: u64,
    /// Run the step's prompt pieces in the same pass as the decode rows of the batch (one
    /// pass over the weights per step; `true`, the default) or each in a pass of its own
    /// (`false`). Applies only where the kernels compute every row alike whatever shares
    /// the product (so answers never depend on what else runs); elsewhere (bf16 and q8_0
    /// weights on AMX, bf16/f16 weights on AVX2, --btlm.prefill_precision bf16, GPUs) the
    /// pieces run apart from the decode rows: together where each is long enough to take
    /// the many-rows kernels alone (CPU), else each alone.
    #[cfg_attr(
        feature = "cli",
        arg(
            long = "btlm.piggyback_prefill",
            default_value_t = true,
            num_args = 0..=1,
            default_missing_value = "true",
            action = clap::ArgAction::Set
        )
    )]
    pub piggyback_prefill: bool,
    /// Keep the key/value caches of finished requests for later ones (`true`, the default)
    /// instead of freeing them: new memory is slow to touch the first time (on VMs
    /// especially), reused memory is not. Idle caches count against --btlm.kv_cache_mb
    /// with the running ones and are dropped when a new cache needs their room (the least
    /// recently used first); the process keeps up to that much memory. On the CPU each
    /// cache is two mappings of its own (keys, values): a dropped cache goes back to the OS
    /// at once, and a cache's positions take memory only once written. Caches are rounded
    /// up to 64 positions.
    #[cfg_attr(
        feature = "cli",
        arg(
            long = "btlm.kv_pool",
            default_value_t = true,
            num_args = 0..=1,
            default_missing_value = "true",
            action = clap::ArgAction::Set
        )
    )]
    pub kv_pool: bool,
    /// Blank key/value caches to prepare while the engine has nothing to run, at most: one
    /// the size each of the most recent requests needed, within --btlm.kv_cache_mb beside
    /// every cache in use and idle (never dropping one), so that the next requests write
    /// memory the OS backs already rather than new memory (slow on VMs). A request that
    /// arrives meanwhile waits at most for one block's memory. Needs --btlm.kv_pool; CPU
    /// only. 0: none.
    #[cfg_attr(
        feature = "cli",
        arg(long = "btlm.kv_spare_caches", default_value_t = 8)
    )]
    pub kv_spare_caches: usize,
    /// Give the allocator's free memory back to the OS once its heaps held this many MB free
    /// through 30 s (read every second), beyond the least they held since the last time
    /// (`malloc_trim`, glibc on Linux): what loading and requests freed, which the heaps
    /// otherwise keep resident (key/value caches are mappings of their own, not in the
    /// heaps). Memory freed after a step and taken again by the next is left alone
    /// (writing it again costs). 0: never.
    #[cfg_attr(
        feature = "cli",
        arg(long = "btlm.heap_slack_mb", default_value_t = 256)
    )]
    pub heap_slack_mb: usize,
    /// Read the memory the host, and the miner's cgroup (a container's limit), has left
    /// every this many milliseconds while the engine runs, and hold the key/value caches
    /// to what fits in it beside 256 MiB for the rest of the engine: when other processes
    /// take memory, idle caches are dropped and requests that need more wait, rather than
    /// the kernel killing the miner for memory (a warning says so, and a line when the
    /// whole --btlm.kv_cache_mb fits again). CPU only. 0: never.
    #[cfg_attr(
        feature = "cli",
        arg(long = "btlm.memory_check_ms", default_value_t = crate::host_memory::DEFAULT_CHECK_MS)
    )]
    pub memory_check_ms: u64,
    /// Let a request keep the keys and values an idle cache (--btlm.kv_pool) holds of its
    /// prompt's start, from an earlier request whose prompt and answer began alike (a
    /// validator asking about the same context twice, a conversation going on), and run
    /// only the rest of its prompt (`true`, the default). Answers are the same bits either
    /// way. Where the kernels compute a position alike however its sequence is split into
    /// passes (the CPU kernels whose products compute each row alike), every token of the
    /// earlier request the prompt starts with is kept, its answer's too; elsewhere (bf16
    /// and f16 weights on AVX2, bf16 and q8_0 on AMX, --btlm.prefill_precision bf16, GPUs)
    /// only the earlier prompt's whole --btlm.prefill_chunk pieces. While
    /// --btlm.kv_cache_mb has room, an idle cache stays for the conversation it holds and a
    /// request that keeps only what other caches give too (a shared system prompt) gets
    /// new memory, so the process grows to that budget sooner.
    #[cfg_attr(
        feature = "cli",
        arg(
            long = "btlm.prefix_reuse",
            default_value_t = true,
            num_args = 0..=1,
            default_missing_value = "true",
            action = clap::ArgAction::Set
        )
    )]
    pub prefix_reuse: bool,
    /// Keep higher-priority requests in the batch on time (`true`, the default): hold back
    /// the admission of a lower-priority request, and preempt lower-priority ones (503),
    /// while a higher one would otherwise be projected to finish later than its deadline
    /// less a margin (see --btlm.deadline_headroom_ms; half of it for preempting; one that
    /// could not finish its token limit in time even without the lower ones is protected
    /// for the tokens it could make by then); and end a request (503) whose prompt, in the
    /// steps it shares with the prompts ahead of it, would leave it or one of those less
    /// than --btlm.answer_time_ms before its deadline. Projected from the step times
    /// measured; equal priorities never hold each other back.
    #[cfg_attr(
        feature = "cli",
        arg(
            long = "btlm.deadline_guard",
            default_value_t = true,
            num_args = 0..=1,
            default_missing_value = "true",
            action = clap::ArgAction::Set
        )
    )]
    pub deadline_guard: bool,
    /// The most milliseconds before its deadline a higher-priority request must be
    /// projected to finish for a lower one to join the batch (--btlm.deadline_guard): the
    /// margin is 3 × the share by which steps stray from their expected time × the
    /// projected time, at least 1.5 s, and this much until the steps' stray is measured.
    #[cfg_attr(
        feature = "cli",
        arg(long = "btlm.deadline_headroom_ms", default_value_t = 3000)
    )]
    pub deadline_headroom_ms: u64,
    /// Milliseconds a request must be projected to have left before its deadline once its
    /// prompt has run, in the steps it shares with the prompts ahead of it (a higher
    /// priority, or as high and older), for its prompt to run (--btlm.deadline_guard); nor
    /// may its pieces leave one of those less. One that would is ended at once (503): it
    /// could not answer in time, or its prompt would take the steps of the requests that
    /// still can.
    #[cfg_attr(
        feature = "cli",
        arg(long = "btlm.answer_time_ms", default_value_t = 2000)
    )]
    pub answer_time_ms: u64,
    /// Where quantized CPU weights (--btlm.quantize q8_0/q4k) are cached so that the next
    /// start maps them instead of quantizing again: `beside` (a `.btlm-cache`
    /// folder beside the checkpoint, in the hub cache for hub downloads), `off`, or a
    /// directory. Invalidated when the checkpoint changes.
    #[cfg_attr(
        feature = "cli",
        arg(long = "btlm.weight_cache", default_value = "beside")
    )]
    pub weight_cache: String,
    /// Decode steps of the start-up probe: after loading, a 16-token prompt and this many
    /// steps of one sequence are timed, and the log says how long a --btlm.max_length answer
    /// takes here alone (a warning, with what would be faster, when that is more than the 12
    /// s validators wait by default). The median step counts. 0: no probe; at most 64.
    #[cfg_attr(
        feature = "cli",
        arg(long = "btlm.speed_probe_steps", default_value_t = 4)
    )]
    pub speed_probe_steps: usize,
    /// Benchmarks only: never pick the end-of-text token, so every completion runs to
    /// --btlm.max_length tokens. Not for serving.
    #[cfg_attr(feature = "cli", arg(long = "btlm.ignore_eos"))]
    pub ignore_eos: bool,
    /// Stop strings (repeatable; the default stops before the next `user:`/`system:` turn;
    /// pass an empty string to disable).
    #[cfg_attr(feature = "cli", arg(long = "btlm.stop", default_values_t = DEFAULT_STOP.map(String::from)))]
    pub stop: Vec<String>,
}

impl Default for BtlmArgs {
    fn default() -> Self {
        BtlmArgs {
            device: DEFAULT_DEVICE.into(),
            max_length: 100,
            do_sample: false,
            no_repeat_ngram_size: 2,
            do_prompt_injection: false,
            system_prompt: DEFAULT_SYSTEM_PROMPT.into(),
            temperature: 0.7,
            model_id: DEFAULT_MODEL_ID.into(),
            revision: "main".into(),
            model_dir: None,
            dtype: ModelDType::F32,
            quantize: Quantization::None,
            prefill_precision: PrefillPrecision::Exact,
            kv_dtype: KvDtype::Auto,
            top_k: 50,
            top_p: 1.0,
            repetition_penalty: 1.0,
            seed: None,
            queue_size: 16,
            max_batch: 8,
            kv_cache_mb: 4096,
            prefill_chunk: 64,
            prefill_step_tokens: 512,
            prefill_step_ms: DEFAULT_PREFILL_STEP_MS,
            piggyback_prefill: true,
            kv_pool: true,
            kv_spare_caches: 8,
            heap_slack_mb: 256,
            memory_check_ms: crate::host_memory::DEFAULT_CHECK_MS,
            prefix_reuse: true,
            deadline_guard: true,
            deadline_headroom_ms: 3000,
            answer_time_ms: 2000,
            weight_cache: "beside".into(),
            speed_probe_steps: 4,
            ignore_eos: false,
            stop: DEFAULT_STOP.map(String::from).to_vec(),
        }
    }
}

impl BtlmArgs {
    /// The generation defaults these settings describe.
    pub fn generation(&self) -> GenerationConfig {
        GenerationConfig {
            max_new_tokens: self.max_length,
            do_sample: self.do_sample,
            temperature: self.temperature,
            top_k: self.top_k,
            top_p: self.top_p,
            repetition_penalty: self.repetition_penalty,
            no_repeat_ngram_size: self.no_repeat_ngram_size,
            seed: self.seed,
            stop: self
                .stop
                .iter()
                .filter(|s| !s.is_empty())
                .cloned()
                .collect(),
            prefill_chunk: self.prefill_chunk,
            ignore_eos: self.ignore_eos,
        }
    }

    /// The engine limits these settings describe.
    pub fn engine(&self) -> EngineConfig {
        EngineConfig {
            max_batch: self.max_batch,
            kv_cache_bytes: self.kv_cache_mb.saturating_mul(1 << 20),
            prefill_tokens_per_step: self.prefill_step_tokens,
            prefill_step_time: (self.prefill_step_ms > 0)
                .then(|| Duration::from_millis(self.prefill_step_ms)),
            queue_size: self.queue_size,
            piggyback_prefill: self.piggyback_prefill,
            kv_pool: self.kv_pool,
            spare_caches: self.kv_spare_caches,
            heap_slack_bytes: (self.heap_slack_mb > 0)
                .then(|| self.heap_slack_mb.saturating_mul(1 << 20)),
            prefix_reuse: self.prefix_reuse,
            deadline_headroom: self
                .deadline_guard
                .then(|| Duration::from_millis(self.deadline_headroom_ms)),
            answer_time: Duration::from_millis(self.answer_time_ms),
            memory_check: (self.memory_check_ms > 0)
                .then(|| Duration::from_millis(self.memory_check_ms)),
        }
    }

    /// The converted-weights cache these settings describe.
    pub fn weight_cache(&self) -> WeightCache {
        match self.weight_cache.trim() {
            "beside" => WeightCache::Beside,
            "off" | "" => WeightCache::Off,
            dir => WeightCache::Dir(PathBuf::from(dir)),
        }
    }

    /// The prompt format these settings describe.
    pub fn prompt_format(&self) -> PromptFormat {
        PromptFormat {
            do_prompt_injection: self.do_prompt_injection,
            system_prompt: self.system_prompt.clone(),
        }
    }

    /// Checks every setting (without loading anything), naming the first bad one.
    pub fn validate(&self) -> Result<()> {
        check_device(&self.device)?;
        self.generation().validate()?;
        self.engine().validate()?;
        if self.model_dir.is_none() && self.model_id.trim().is_empty() {
            return Err(BtlmError::InvalidArgument {
                name: "--btlm.model_id",
                reason: "is empty (or pass --btlm.model_dir)".into(),
            });
        }
        if self.speed_probe_steps > speed_probe::MAX_STEPS {
            return Err(BtlmError::InvalidArgument {
                name: "--btlm.speed_probe_steps",
                reason: format!(
                    "{} steps is more than the probe's {} (0 skips it): each step is a \
                     token's time at start-up",
                    self.speed_probe_steps,
                    speed_probe::MAX_STEPS
                ),
            });
        }
        if self.quantize != Quantization::None && self.dtype != ModelDType::F32 {
            return Err(BtlmError::InvalidArgument {
                name: "--btlm.dtype",
                reason: format!(
                    "--btlm.quantize {} runs with f32 activations; use --btlm.dtype f32",
                    self.quantize
                ),
            });
        }
        Ok(())
    }
}

/// Parses and opens `cpu`, `cuda` or `cuda:N`.
///
/// A build with the `cuda` feature opens the GPU or fails with [`BtlmError::Device`] (a GPU
/// build asked for a GPU it cannot open is a mistake worth stopping for). A build without it
/// runs on the CPU after one warning: `--btlm.device cuda` is the Python miners' default, so
/// their command lines carry it.
pub fn parse_device(spec: &str) -> Result<Device> {
    match device_ordinal(spec)? {
        None => Ok(Device::Cpu),
        Some(ordinal) => cuda_device(ordinal),
    }
}

/// Checks a `--btlm.device` value without the warning of [`parse_device`]: its spelling, and
/// in a `cuda` build that the GPU opens.
pub fn check_device(spec: &str) -> Result<()> {
    match device_ordinal(spec)? {
        Some(ordinal) if cfg!(feature = "cuda") => cuda_device(ordinal).map(drop),
        _ => Ok(()),
    }
}

/// Checks the spelling of a `--btlm.device` value: `None` for `cpu`, the ordinal for `cuda`
/// (0) or `cuda:N`.
pub fn device_ordinal(spec: &str) -> Result<Option<usize>> {
    let bad = |reason: String| BtlmError::InvalidArgument {
        name: "--btlm.device",
        reason,
    };
    let spec = spec.trim();
    if spec == "cpu" {
        return Ok(None);
    }
    match spec.strip_prefix("cuda") {
        Some("") => Ok(Some(0)),
        Some(rest) => rest
            .strip_prefix(':')
            .and_then(|n| n.parse::<usize>().ok())
            .map(Some)
            .ok_or_else(|| bad(format!("{spec:?}: expected cpu, cuda or cuda:N"))),
        None => Err(bad(format!("{spec:?}: expected cpu, cuda or cuda:N"))),
    }
}

#[cfg(feature = "cuda")]
fn cuda_device(ordinal: usize) -> Result<Device> {
    Device::new_cuda(ordinal).map_err(|e| {
        // With RUST_BACKTRACE set candle attaches a backtrace, which its Display prints: keep
        // the message one line (the cause, e.g. DriverError(CUDA_ERROR_NO_DEVICE, ...)).
        let e = match e {
            candle_core::Error::WithBacktrace { inner, .. } => *inner,
            e => e,
        };
        BtlmError::Device(format!("cannot open CUDA device {ordinal}: {e}"))
    })
}

#[cfg(not(feature = "cuda"))]
fn cuda_device(ordinal: usize) -> Result<Device> {
    tracing::warn!(
        "--btlm.device cuda:{ordinal}: this build has no CUDA support (build with \
         `--features cuda` for a GPU, see README); running on the CPU"
    );
    Ok(Device::Cpu)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        btlm: BtlmArgs,
    }

    fn parse(args: &[&str]) -> std::result::Result<BtlmArgs, clap::Error> {
        Cli::try_parse_from(std::iter::once("miner").chain(args.iter().copied())).map(|c| c.btlm)
    }

    /// The defaults on the CPU: what validation says about the other settings does not depend
    /// on whether this build can open the default device (a GPU in a `cuda` build).
    fn on_cpu() -> BtlmArgs {
        BtlmArgs {
            device: "cpu".into(),
            ..BtlmArgs::default()
        }
    }

    #[test]
    fn the_speed_probe_takes_up_to_64_steps() {
        for steps in [0, 1, 64] {
            let a = BtlmArgs {
                speed_probe_steps: steps,
                ..on_cpu()
            };
            a.validate().expect("a valid probe");
        }
        let a = parse(&["--btlm.device", "cpu", "--btlm.speed_probe_steps", "65"]).expect("parse");
        match a.validate() {
            Err(BtlmError::InvalidArgument { name, reason }) => {
                assert_eq!(name, "--btlm.speed_probe_steps");
                assert!(reason.contains("65 steps"), "{reason}");
            }
            other => panic!("65 probe steps: {other:?}"),
        }
    }

    #[test]
    fn weight_cache_places() {
        assert_eq!(BtlmArgs::default().weight_cache(), WeightCache::Beside);
        let a = parse(&["--btlm.weight_cache", "off"]).expect("off");
        assert_eq!(a.weight_cache(), WeightCache::Off);
        let a = parse(&["--btlm.weight_cache", "/tmp/w"]).expect("dir");
        assert_eq!(a.weight_cache(), WeightCache::Dir(PathBuf::from("/tmp/w")));
    }

    #[test]
    fn clap_defaults_equal_default_and_python() {
        let a = parse(&[]).expect("no args");
        assert_eq!(a, BtlmArgs::default());
        // The engine's settings from the flags' defaults are the engine's own defaults.
        assert_eq!(a.engine(), EngineConfig::default());
        assert_eq!(a.max_length, 100);
        assert_eq!(a.no_repeat_ngram_size, 2);
        assert!(!a.do_sample && !a.do_prompt_injection);
        assert_eq!(a.temperature, 0.7);
        assert_eq!(a.system_prompt, DEFAULT_SYSTEM_PROMPT);
        assert_eq!(a.stop, vec!["\nuser:".to_string(), "\nsystem:".to_string()]);
        // The default device is the GPU: a cuda build opens it in `validate` (see
        // `an_unavailable_cuda_device_is_a_device_error`); everything else must be valid.
        BtlmArgs {
            device: "cpu".into(),
            ..a
        }
        .validate()
        .expect("defaults are valid");
    }

    #[test]
    fn python_flag_names_parse() {
        let a = parse(&[
            "--btlm.device",
            "cpu",
            "--btlm.max_length",
            "32",
            "--btlm.do_sample",
            "--btlm.no_repeat_ngram_size",
            "3",
            "--btlm.do_prompt_injection",
            "--btlm.system_prompt",
            "Be nice.",
            "--btlm.temperature",
            "0.2",
            "--btlm.dtype",
            "bf16",
            "--btlm.quantize",
            "q8_0",
            "--btlm.model_dir",
            "/models/btlm",
            "--btlm.seed",
            "9",
            "--btlm.stop",
            "END",
        ])
        .expect("parse");
        assert_eq!(a.max_length, 32);
        assert!(a.do_sample && a.do_prompt_injection);
        assert_eq!(a.no_repeat_ngram_size, 3);
        assert_eq!(a.system_prompt, "Be nice.");
        assert_eq!(a.dtype, ModelDType::Bf16);
        assert_eq!(a.quantize, Quantization::Q8_0);
        assert_eq!(a.model_dir, Some(PathBuf::from("/models/btlm")));
        assert_eq!(a.seed, Some(9));
        assert_eq!(a.stop, vec!["END".to_string()]);
        // bf16 + q8_0 is refused by validation.
        let err = a.validate().expect_err("bf16 + q8_0").to_string();
        assert!(err.contains("--btlm.dtype"), "{err}");
        assert!(parse(&["--btlm.quantize", "q5"]).is_err());
        assert!(parse(&["--btlm.dtype", "f64"]).is_err());
    }

    #[test]
    fn kv_dtype_is_auto_unless_asked() {
        let a = parse(&[]).expect("parse");
        assert_eq!(a.kv_dtype, KvDtype::Auto);
        assert_eq!(BtlmArgs::default().kv_dtype, KvDtype::Auto);
        for (flag, want) in [
            ("f16", KvDtype::F16),
            ("f32", KvDtype::F32),
            ("auto", KvDtype::Auto),
            ("q8", KvDtype::Q8),
            ("q4", KvDtype::Q4),
        ] {
            let a = parse(&["--btlm.kv_dtype", flag]).expect("parse");
            assert_eq!(a.kv_dtype, want);
            let toml: BtlmArgs = toml::from_str(&format!("kv_dtype = \"{flag}\"\n")).expect("toml");
            assert_eq!(toml.kv_dtype, want);
        }
        assert!(parse(&["--btlm.kv_dtype", "bf16"]).is_err());
    }

    #[test]
    fn prefill_precision_is_exact_unless_asked() {
        let a = parse(&[]).expect("parse");
        assert_eq!(a.prefill_precision, PrefillPrecision::Exact);
        assert_eq!(
            BtlmArgs::default().prefill_precision,
            PrefillPrecision::Exact
        );
        let a = parse(&["--btlm.prefill_precision", "bf16"]).expect("parse");
        assert_eq!(a.prefill_precision, PrefillPrecision::Bf16);
        assert!(parse(&["--btlm.prefill_precision", "f16"]).is_err());
        let toml: BtlmArgs = toml::from_str("prefill_precision = \"bf16\"\n").expect("toml");
        assert_eq!(toml.prefill_precision, PrefillPrecision::Bf16);
    }

    #[test]
    fn bad_values_are_named() {
        let cases: [(BtlmArgs, &str); 6] = [
            (
                BtlmArgs {
                    device: "tpu".into(),
                    ..on_cpu()
                },
                "--btlm.device",
            ),
            (
                BtlmArgs {
                    device: "cuda:x".into(),
                    ..on_cpu()
                },
                "--btlm.device",
            ),
            (
                BtlmArgs {
                    max_length: 0,
                    ..on_cpu()
                },
                "--btlm.max_length",
            ),
            (
                BtlmArgs {
                    temperature: -0.5,
                    ..on_cpu()
                },
                "--btlm.temperature",
            ),
            (
                BtlmArgs {
                    top_p: 0.0,
                    ..on_cpu()
                },
                "--btlm.top_p",
            ),
            (
                BtlmArgs {
                    queue_size: 0,
                    ..on_cpu()
                },
                "--btlm.queue_size",
            ),
        ];
        for (a, name) in cases {
            let err = a.validate().expect_err(name).to_string();
            assert!(err.contains(name), "{err}");
        }
    }

    #[test]
    fn engine_flags_parse_and_are_checked() {
        let a = parse(&[
            "--btlm.max_batch",
            "4",
            "--btlm.kv_cache_mb",
            "512",
            "--btlm.prefill_chunk",
            "32",
            "--btlm.prefill_step_tokens",
            "96",
            "--btlm.piggyback_prefill",
            "--btlm.ignore_eos",
        ])
        .expect("parse");
        let e = a.engine();
        assert_eq!(
            (e.max_batch, e.kv_cache_bytes, e.prefill_tokens_per_step),
            (4, 512 << 20, 96)
        );
        assert!(e.piggyback_prefill);
        // Piggybacking is the default; `false` turns it off, the bare switch still means on.
        assert!(parse(&[]).expect("defaults").engine().piggyback_prefill);
        let off = parse(&["--btlm.piggyback_prefill", "false"]).expect("off");
        assert!(!off.engine().piggyback_prefill);
        let off = parse(&["--btlm.piggyback_prefill=false"]).expect("off");
        assert!(!off.engine().piggyback_prefill);
        // The cache pool likewise.
        assert!(parse(&[]).expect("defaults").engine().kv_pool);
        assert!(BtlmArgs::default().engine().kv_pool);
        let off = parse(&["--btlm.kv_pool", "false"]).expect("off");
        assert!(!off.engine().kv_pool);
        assert!(parse(&["--btlm.kv_pool"]).expect("on").engine().kv_pool);
        assert!(parse(&[]).expect("defaults").engine().prefix_reuse);
        assert!(BtlmArgs::default().engine().prefix_reuse);
        let off = parse(&["--btlm.prefix_reuse", "false"]).expect("off");
        assert!(!off.engine().prefix_reuse);
        assert_eq!(
            parse(&[]).expect("defaults").engine().answer_time,
            Duration::from_secs(2)
        );
        let t = parse(&["--btlm.answer_time_ms", "750"]).expect("answer time");
        assert_eq!(t.engine().answer_time, Duration::from_millis(750));
        let defaults = parse(&[]).expect("defaults").engine();
        assert_eq!(defaults.prefill_step_time, Some(Duration::from_secs(2)));
        assert_eq!(
            defaults.prefill_step_time,
            BtlmArgs::default().engine().prefill_step_time
        );
        assert_eq!(
            defaults.prefill_step_time,
            EngineConfig::default().prefill_step_time
        );
        let t = parse(&["--btlm.prefill_step_ms", "1500"]).expect("step time");
        assert_eq!(
            t.engine().prefill_step_time,
            Some(Duration::from_millis(1500))
        );
        let t = parse(&["--btlm.prefill_step_ms", "0"]).expect("no step time");
        assert_eq!(t.engine().prefill_step_time, None);
        assert_eq!(defaults.memory_check, Some(Duration::from_millis(100)));
        assert_eq!(defaults.memory_check, EngineConfig::default().memory_check);
        assert_eq!(
            defaults.memory_check,
            BtlmArgs::default().engine().memory_check
        );
        let t = parse(&["--btlm.memory_check_ms", "250"]).expect("check");
        assert_eq!(t.engine().memory_check, Some(Duration::from_millis(250)));
        let t = parse(&["--btlm.memory_check_ms", "0"]).expect("never");
        assert_eq!(t.engine().memory_check, None);
        let g = a.generation();
        assert_eq!(g.prefill_chunk, 32);
        assert!(g.ignore_eos);
        for (flag, edit) in [
            (
                "--btlm.max_batch",
                (|a: &mut BtlmArgs| a.max_batch = 0) as fn(&mut BtlmArgs),
            ),
            ("--btlm.kv_cache_mb", |a| a.kv_cache_mb = 0),
            ("--btlm.prefill_chunk", |a| a.prefill_chunk = 0),
            ("--btlm.prefill_step_tokens", |a| a.prefill_step_tokens = 0),
        ] {
            let mut bad = on_cpu();
            edit(&mut bad);
            let err = bad.validate().expect_err(flag).to_string();
            assert!(err.contains(flag), "{err}");
        }
    }

    #[cfg(not(feature = "cuda"))]
    #[test]
    fn cuda_without_the_feature_falls_back_to_the_cpu() {
        assert_eq!(BtlmArgs::default().device, "cuda", "the Python default");
        for spec in ["cuda", "cuda:1"] {
            assert!(parse_device(spec).expect(spec).is_cpu());
        }
        assert_eq!(device_ordinal("cuda:1").expect("valid"), Some(1));
        assert_eq!(device_ordinal("cpu").expect("valid"), None);
        assert!(parse_device("gpu").is_err());
        assert!(check_device("cuda:3").is_ok() && check_device("gpu").is_err());
    }

    /// No machine has 100 GPUs: with or without a GPU (and with the driver stub of
    /// scripts/check-cuda.sh), opening one is a typed device error naming the ordinal.
    #[cfg(feature = "cuda")]
    #[test]
    fn an_unavailable_cuda_device_is_a_device_error() {
        match parse_device("cuda:99") {
            Err(BtlmError::Device(msg)) => {
                assert!(msg.contains("cannot open CUDA device 99"), "{msg}");
                assert!(!msg.contains('\n'), "one line, no backtrace: {msg}");
            }
            other => panic!("expected a device error, got {other:?}"),
        }
    }

    #[test]
    fn config_file_keys() {
        let from_toml = |text: &str| toml::from_str::<BtlmArgs>(text);
        let a = from_toml(
            "max_length = 64\ndo_sample = true\ndtype = \"f16\"\nquantize = \"q4k\"\nstop = []\n",
        )
        .expect("toml");
        assert_eq!(a.max_length, 64);
        assert!(a.do_sample);
        assert_eq!(a.dtype, ModelDType::F16);
        assert_eq!(a.quantize, Quantization::Q4k);
        assert!(a.generation().stop.is_empty());
        assert_eq!(
            a.system_prompt, DEFAULT_SYSTEM_PROMPT,
            "unset keys keep defaults"
        );
        let err = from_toml("max_lenght = 3").expect_err("typo").to_string();
        assert!(err.contains("max_lenght"), "{err}");
        assert!(from_toml("quantize = \"q2\"").is_err());
    }
}
