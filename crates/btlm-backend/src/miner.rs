//! [`BtlmMiner`]: the [`Miner`] implementation, and loading the model from [`BtlmArgs`].

use std::path::Path;
use std::sync::atomic::Ordering;

use async_trait::async_trait;
use futures::StreamExt;
use prompting_miner::{
    BackendMetric, CompletionReport, MetricKind, Miner, MinerError, PromptRequest, TextStream,
    TokenUsage,
};
use tokio::time::Instant;

use crate::args::{BtlmArgs, parse_device};
use crate::config::Config;
use crate::engine::{Engine, Event, SubmitError};
use crate::error::{BtlmError, Result};
use crate::generation::{FinishReason, Generation, GenerationConfig};
use crate::hub::{HubOptions, ModelFiles, TokenizerFiles, files_from_hub, files_in_dir};
use crate::loader::LoadOptions;
use crate::model::Btlm;
use crate::prompt::PromptFormat;
use crate::speed_probe;
use crate::tokenizer::BtlmTokenizer;
use crate::weights::Checkpoint;

/// Loads the model and tokenizer from resolved files.
pub fn load_model(files: &ModelFiles, opts: &LoadOptions) -> Result<(Btlm, BtlmTokenizer)> {
    let read = |p: &Path| {
        std::fs::read_to_string(p).map_err(|source| BtlmError::Io {
            path: p.to_path_buf(),
            source,
        })
    };
    let cfg = Config::from_json(&read(&files.config)?)?;
    let tokenizer = match &files.tokenizer {
        TokenizerFiles::Json(p) => BtlmTokenizer::from_tokenizer_json(p)?,
        TokenizerFiles::VocabMerges { vocab, merges } => {
            BtlmTokenizer::from_vocab_merges(vocab, merges)?
        }
    };
    if tokenizer.vocab_size() > cfg.vocab_size {
        return Err(BtlmError::Tokenizer(format!(
            "the tokenizer has {} tokens but the model only {}",
            tokenizer.vocab_size(),
            cfg.vocab_size
        )));
    }
    if let Some(eos) = cfg.eos_token_id
        && eos != tokenizer.eos_token_id()
    {
        tracing::warn!(
            config = eos,
            tokenizer = tokenizer.eos_token_id(),
            "config and tokenizer disagree on eos; using the tokenizer's <|endoftext|>"
        );
    }
    let started = std::time::Instant::now();
    let ckpt = Checkpoint::open(&files.weights)?;
    let model = Btlm::load(&cfg, &ckpt, opts)?;
    let kernels = match opts.kernels {
        Some(path) => path.to_string(),
        None => {
            crate::kernels::KernelPath::active().map_or_else(|e| e.to_string(), |p| p.to_string())
        }
    };
    tracing::info!(
        files = ?files.weights,
        dtype = ?opts.dtype,
        quantization = %opts.quantization,
        kernels = %kernels,
        seconds = started.elapsed().as_secs_f64(),
        "BTLM loaded"
    );
    if model.device().is_cpu() {
        crate::huge_pages::log_weights();
    }
    Ok((model, tokenizer))
}

/// The native BTLM miner: formats conversations like the Python `CerebrasBTLMMiner` and
/// generates on the batching [`Engine`], whose batch slots it reports as its
/// [capacity](Miner::capacity). It submits each request with the pipeline's
/// [priority](PromptRequest::priority) (0 when unset), so that requests waiting inside the
/// engine for cache room are admitted in the pipeline's order too.
#[derive(Debug, Clone)]
pub struct BtlmMiner {
    engine: Engine,
    format: PromptFormat,
    defaults: GenerationConfig,
    name: String,
}

impl BtlmMiner {
    /// Validates `args`, finds the files (`--btlm.model_dir`, else the Hugging Face cache or a
    /// download), loads the model and starts the worker. Blocking and slow (minutes for the
    /// real model): call it before starting the server or inside `spawn_blocking`.
    pub fn from_args(args: &BtlmArgs) -> Result<Self> {
        args.validate()?;
        let files = match &args.model_dir {
            Some(dir) => files_in_dir(dir)?,
            None => files_from_hub(&args.model_id, &args.revision, &HubOptions::from_env())?,
        };
        let opts = LoadOptions {
            device: parse_device(&args.device)?,
            dtype: args.dtype.dtype(),
            quantization: args.quantize,
            prefill_precision: args.prefill_precision,
            kv_dtype: args.kv_dtype,
            weight_cache: args.weight_cache(),
            ..LoadOptions::default()
        };
        let (model, tokenizer) = load_model(&files, &opts)?;
        if args.speed_probe_steps > 0 {
            let speed = speed_probe::measure(&model, args.speed_probe_steps)?;
            let on_cpu = model.device().is_cpu();
            let said = speed_probe::report(&speed, args.max_length, on_cpu, args.quantize);
            if said.too_slow {
                tracing::warn!("{}", said.message);
            } else {
                tracing::info!("{}", said.message);
            }
        }
        if model.device().is_cpu() {
            crate::host_memory::log_kv_budget(args.kv_cache_mb, args.heap_slack_mb);
        }
        let name = match &args.model_dir {
            Some(dir) => dir
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_else(|| args.model_id.clone()),
            None => args.model_id.clone(),
        };
        Self::new(model, tokenizer, args, name)
    }

    /// Wraps an already loaded model (the engine limits, generation and prompt settings come
    /// from `args`).
    pub fn new(
        model: Btlm,
        tokenizer: BtlmTokenizer,
        args: &BtlmArgs,
        name: impl Into<String>,
    ) -> Result<Self> {
        args.validate()?;
        let mut config = args.engine();
        if !model.device().is_cpu() {
            // The caches are in the GPU's memory, not the host's.
            config.memory_check = None;
        }
        let engine = Engine::start(model, tokenizer, config)?;
        Self::with_engine(engine, args, name)
    }

    /// Wraps a running engine (any [`StepModel`](crate::engine::StepModel)); the generation
    /// and prompt settings come from `args`, the limits from the engine.
    pub fn with_engine(engine: Engine, args: &BtlmArgs, name: impl Into<String>) -> Result<Self> {
        args.validate()?;
        Ok(BtlmMiner {
            engine,
            format: args.prompt_format(),
            defaults: args.generation(),
            name: name.into(),
        })
    }

    /// The engine handle (counters, tokenizer, limits).
    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    /// The prompt text a request is turned into.
    pub fn prompt_text(&self, request: &PromptRequest) -> String {
        self.format.format(&request.roles, &request.messages)
    }

    /// The generation settings for a request: the configured defaults with the caller's
    /// overrides, checked.
    pub fn generation_config(
        &self,
        request: &PromptRequest,
    ) -> std::result::Result<GenerationConfig, MinerError> {
        let mut cfg = self.defaults.clone();
        let s = &request.sampling;
        if let Some(m) = s.max_tokens {
            if m == 0 {
                return Err(MinerError::BadRequest(
                    "max_tokens must be at least 1".into(),
                ));
            }
            cfg.max_new_tokens = (m as usize).min(self.engine.context().saturating_sub(1).max(1));
        }
        if let Some(t) = s.temperature {
            if !t.is_finite() || t < 0.0 {
                return Err(MinerError::BadRequest(format!(
                    "temperature must be a finite number ≥ 0, got {t}"
                )));
            }
            cfg.temperature = f64::from(t);
        }
        if let Some(p) = s.top_p {
            if !(p > 0.0 && p <= 1.0) {
                return Err(MinerError::BadRequest(format!(
                    "top_p must be in (0, 1], got {p}"
                )));
            }
            cfg.top_p = f64::from(p);
        }
        Ok(cfg)
    }
}

/// The engine's counters and gauges as `/metrics` families (`prompting_btlm_...`), read now.
pub fn engine_metrics(engine: &Engine) -> Vec<BackendMetric> {
    use std::sync::atomic::{AtomicU64, AtomicUsize};
    let stats = engine.stats();
    let count = |c: &AtomicU64| c.load(Ordering::Relaxed) as f64;
    let gauge = |g: &AtomicUsize| g.load(Ordering::Acquire) as f64;
    let seconds = |nanos: &AtomicU64| nanos.load(Ordering::Relaxed) as f64 * 1e-9;
    let config = engine.config();
    vec![
        BackendMetric::labelled(
            "prompting_btlm_requests",
            "Requests the BTLM engine ended, by outcome (rejected: refused at submission, queue full or too large for the cache budget).",
            MetricKind::Counter,
            "outcome",
            [
                ("completed", count(&stats.completed)),
                ("cancelled", count(&stats.cancelled)),
                ("timed_out", count(&stats.timed_out)),
                ("failed", count(&stats.failed)),
                ("rejected", count(&stats.rejected)),
            ]
            .map(|(outcome, value)| (outcome.to_string(), value)),
        ),
        BackendMetric::counter(
            "prompting_btlm_deadline_guard_held_back",
            "Requests whose admission the deadline guard held back at least once: a higher-priority request in the batch would have been late (--btlm.deadline_guard).",
            count(&stats.held_back),
        ),
        BackendMetric::counter(
            "prompting_btlm_deadline_guard_preempted",
            "Running requests the deadline guard preempted (answered 503) so that a higher-priority one finishes in time.",
            count(&stats.preempted),
        ),
        BackendMetric::counter(
            "prompting_btlm_deadline_guard_late",
            "Requests the deadline guard ended (answered 503), running or on admission, because their prompt, in the steps it shares with the prompts ahead of it, could not have run (or would have made one of those late) before their deadline less --btlm.answer_time_ms.",
            count(&stats.late),
        ),
        BackendMetric::counter(
            "prompting_btlm_admitted",
            "Requests the BTLM engine admitted into its batch.",
            count(&stats.admitted),
        ),
        BackendMetric::counter(
            "prompting_btlm_admission_wait_seconds",
            "Time the admitted requests waited in the engine for a batch slot and cache room, summed.",
            seconds(&stats.queue_nanos),
        ),
        BackendMetric::counter(
            "prompting_btlm_generated_tokens",
            "Tokens the BTLM engine generated.",
            count(&stats.tokens),
        ),
        BackendMetric::counter(
            "prompting_btlm_steps",
            "Engine steps run (each advances every running sequence).",
            count(&stats.steps),
        ),
        BackendMetric::counter(
            "prompting_btlm_passes",
            "Model passes run (one per step when prompt pieces ride with the decode rows).",
            count(&stats.passes),
        ),
        BackendMetric::labelled(
            "prompting_btlm_rows",
            "Token rows the model ran, by kind (decode: one per decoding sequence and step; prompt: prompt tokens).",
            MetricKind::Counter,
            "kind",
            [
                ("decode".to_string(), count(&stats.decode_rows)),
                ("prompt".to_string(), count(&stats.prompt_rows)),
            ],
        ),
        BackendMetric::counter(
            "prompting_btlm_step_seconds",
            "Time spent in engine steps (model passes, sampling, detokenizing, sending text).",
            seconds(&stats.step_nanos),
        ),
        BackendMetric::counter(
            "prompting_btlm_model_seconds",
            "Time of the steps spent in model passes.",
            seconds(&stats.model_nanos),
        ),
        BackendMetric::counter(
            "prompting_btlm_prompt_pass_seconds",
            "Time of the model passes that held prompt rows (passes shared with decode rows included).",
            seconds(&stats.prompt_pass_nanos),
        ),
        BackendMetric::gauge(
            "prompting_btlm_last_step_seconds",
            "How long the engine's last step took.",
            stats.last_step_micros.load(Ordering::Relaxed) as f64 * 1e-6,
        ),
        BackendMetric::gauge(
            "prompting_btlm_running_sequences",
            "Sequences in the engine's batch now.",
            gauge(&stats.running),
        ),
        BackendMetric::gauge(
            "prompting_btlm_peak_running_sequences",
            "The most sequences one step ran.",
            gauge(&stats.peak_batch),
        ),
        BackendMetric::gauge(
            "prompting_btlm_max_batch",
            "Batch slots of the engine (--btlm.max_batch).",
            config.max_batch as f64,
        ),
        BackendMetric::gauge(
            "prompting_btlm_waiting_requests",
            "Requests waiting in the engine for a batch slot or cache room now.",
            gauge(&stats.waiting),
        ),
        BackendMetric::gauge(
            "prompting_btlm_kv_reserved_bytes",
            "Key/value cache bytes the running sequences reserved.",
            gauge(&stats.kv_reserved_bytes),
        ),
        BackendMetric::gauge(
            "prompting_btlm_kv_idle_bytes",
            "Key/value cache bytes kept idle for later sequences (--btlm.kv_pool).",
            gauge(&stats.kv_idle_bytes),
        ),
        BackendMetric::gauge(
            "prompting_btlm_kv_peak_bytes",
            "The most key/value cache bytes reserved and idle together since the start.",
            gauge(&stats.kv_peak_bytes),
        ),
        BackendMetric::labelled(
            "prompting_btlm_kv_caches",
            "Caches handed to admitted sequences, by source (reused: an idle one from the pool; allocated: new memory).",
            MetricKind::Counter,
            "source",
            [
                ("reused".to_string(), count(&stats.kv_reused)),
                ("allocated".to_string(), count(&stats.kv_allocated)),
            ],
        ),
        BackendMetric::counter(
            "prompting_btlm_kv_spare_caches_made",
            "Blank key/value caches made while the engine had nothing to run, for the requests to come (--btlm.kv_spare_caches).",
            count(&stats.kv_spares_made),
        ),
        BackendMetric::counter(
            "prompting_btlm_kv_spare_caches_used",
            "Caches handed to admitted sequences that were blank ones made while idle (among the reused ones).",
            count(&stats.kv_spares_used),
        ),
        BackendMetric::counter(
            "prompting_btlm_kv_idle_dropped",
            "Idle key/value caches dropped for room in the budget (--btlm.kv_cache_mb), the least recently used first: what they held is lost to later requests.",
            count(&stats.kv_dropped),
        ),
        BackendMetric::counter(
            "prompting_btlm_prefix_reused_tokens",
            "Prompt tokens not run again: their keys and values were kept from an idle cache holding an earlier sequence that began alike (--btlm.prefix_reuse).",
            count(&stats.prefix_tokens),
        ),
        BackendMetric::counter(
            "prompting_btlm_prefix_hits",
            "Requests that kept part of their prompt's keys and values from an idle cache (--btlm.prefix_reuse).",
            count(&stats.prefix_hits),
        ),
        BackendMetric::counter(
            "prompting_btlm_heap_trims",
            "Times the allocator's free heap memory was given back to the OS (--btlm.heap_slack_mb).",
            count(&stats.heap.trims),
        ),
        BackendMetric::counter(
            "prompting_btlm_heap_released_bytes",
            "Resident bytes those trims gave back (the process's RSS before less after, summed).",
            count(&stats.heap.released_bytes),
        ),
        BackendMetric::counter(
            "prompting_btlm_heap_trim_seconds",
            "Time those trims took, summed.",
            count(&stats.heap.trim_micros) / 1e6,
        ),
        BackendMetric::gauge(
            "prompting_btlm_heap_free_bytes",
            "Bytes the allocator's heaps held free at the last reading (every second with --btlm.heap_slack_mb), given back to the OS or not.",
            gauge(&stats.heap.free_bytes),
        ),
        BackendMetric::gauge(
            "prompting_btlm_kv_budget_bytes",
            "Key/value cache bytes the running sequences may reserve together.",
            config.kv_cache_bytes as f64,
        ),
        BackendMetric::counter(
            "prompting_btlm_kv_no_memory",
            "Requests refused (answered 503) on admission because the memory the host had left could not hold their key/value cache with nothing else running (--btlm.memory_check_ms).",
            count(&stats.no_memory),
        ),
        BackendMetric::gauge(
            "prompting_btlm_kv_limit_bytes",
            "The key/value cache budget in force: the whole budget, or less while the memory the host has left holds the caches back (--btlm.memory_check_ms).",
            gauge(&stats.kv_limit_bytes),
        ),
    ]
}

/// What `prompt` tokens and `generated` ones cost, as the pipeline counts it.
fn usage(prompt: usize, generated: usize) -> TokenUsage {
    TokenUsage {
        prompt_tokens: prompt as u64,
        completion_tokens: generated as u64,
    }
}

/// Records how a finished answer ended, in OpenAI's words (`length` when the token limit
/// ended it, `stop` for the end token or a stop string), and its tokens.
fn record_end(report: &CompletionReport, g: &Generation) {
    let reason = match g.finish {
        FinishReason::Length => "length",
        _ => "stop",
    };
    report.set_finish_reason(reason);
    report.set_usage(usage(g.prompt_tokens, g.tokens.len()));
}

fn timeout(started: Instant) -> MinerError {
    MinerError::Timeout(started.elapsed().as_secs_f64())
}

#[async_trait]
impl Miner for BtlmMiner {
    fn name(&self) -> &str {
        &self.name
    }

    fn capacity(&self) -> Option<usize> {
        Some(self.engine.config().max_batch)
    }

    fn metrics(&self) -> Vec<BackendMetric> {
        engine_metrics(&self.engine)
    }

    /// Text goes out as the engine generates it (held back only while it may be the start
    /// of a stop string), so a request near its deadline is answered with what it has.
    fn streams_as_generated(&self) -> bool {
        true
    }

    async fn prompt(&self, request: &PromptRequest) -> std::result::Result<String, MinerError> {
        let mut stream = self.prompt_stream(request).await?;
        let mut completion = String::new();
        while let Some(piece) = stream.next().await {
            completion.push_str(&piece?);
        }
        Ok(completion)
    }

    async fn prompt_stream(
        &self,
        request: &PromptRequest,
    ) -> std::result::Result<TextStream, MinerError> {
        if request.messages.is_empty() {
            return Err(MinerError::BadRequest("no messages".into()));
        }
        let config = self.generation_config(request)?;
        let prompt = self.prompt_text(request);
        let started = Instant::now();
        let deadline = request.deadline;
        if deadline <= started {
            return Err(timeout(started));
        }
        tracing::debug!(prompt = %prompt, "btlm prompt");
        let rx = self
            .engine
            .submit_ranked(
                &prompt,
                config,
                Some(deadline.into_std()),
                request.priority.unwrap_or(0.0),
            )
            .map_err(|e| match e {
                SubmitError::QueueFull | SubmitError::TooLarge { .. } => {
                    MinerError::Overloaded(e.to_string())
                }
                SubmitError::Invalid(_) => MinerError::BadRequest(e.to_string()),
                SubmitError::WorkerGone => MinerError::Backend(e.to_string()),
            })?;
        // Ends after the last piece, or with one error. Dropping the stream drops the
        // receiver, which cancels the generation. Every piece records the tokens spent so
        // far, so an answer cut short near its deadline still reports its cost.
        let report = request.report.clone();
        let stream = futures::stream::unfold(Some(rx), move |state| {
            let report = report.clone();
            async move {
                let mut rx = state?;
                let item = match tokio::time::timeout_at(deadline, rx.recv()).await {
                    Err(_) => Err(timeout(started)),
                    Ok(None) => Err(MinerError::Backend("the model worker stopped".into())),
                    Ok(Some(Event::Text(t, spent))) => {
                        report.set_usage(usage(spent.prompt_tokens, spent.generated_tokens));
                        return Some((Ok(t), Some(rx)));
                    }
                    Ok(Some(Event::Done(Ok(g)))) => match g.finish {
                        FinishReason::Deadline => Err(timeout(started)),
                        FinishReason::Cancelled => {
                            Err(MinerError::Backend("generation was cancelled".into()))
                        }
                        FinishReason::Preempted => Err(MinerError::Preempted),
                        FinishReason::Late => Err(MinerError::Overloaded(
                            "its prompt could not have run in time behind the others".into(),
                        )),
                        FinishReason::NoMemory => Err(MinerError::Overloaded(
                            "the host has too little memory left for its key/value cache".into(),
                        )),
                        FinishReason::Eos | FinishReason::Stop | FinishReason::Length => {
                            record_end(&report, &g);
                            return None;
                        }
                    },
                    Ok(Some(Event::Done(Err(e)))) => Err(MinerError::Backend(e.to_string())),
                };
                Some((item, None))
            }
        });
        Ok(Box::pin(stream))
    }
}
