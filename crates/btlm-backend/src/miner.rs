//! [`BtlmMiner`]: the [`Miner`] implementation, and loading the model from [`BtlmArgs`].

use std::path::Path;

use async_trait::async_trait;
use futures::StreamExt;
use prompting_miner::{Miner, MinerError, PromptRequest, TextStream};
use tokio::time::Instant;

use crate::args::{BtlmArgs, parse_device};
use crate::config::Config;
use crate::engine::{Engine, Event, SubmitError};
use crate::error::{BtlmError, Result};
use crate::generation::{FinishReason, GenerationConfig};
use crate::hub::{HubOptions, ModelFiles, TokenizerFiles, files_from_hub, files_in_dir};
use crate::loader::LoadOptions;
use crate::model::Btlm;
use crate::prompt::PromptFormat;
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
            weight_cache: args.weight_cache(),
            ..LoadOptions::default()
        };
        let (model, tokenizer) = load_model(&files, &opts)?;
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
        let engine = Engine::start(model, tokenizer, args.engine())?;
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
        // receiver, which cancels the generation.
        let stream = futures::stream::unfold(Some(rx), move |state| async move {
            let mut rx = state?;
            let item = match tokio::time::timeout_at(deadline, rx.recv()).await {
                Err(_) => Err(timeout(started)),
                Ok(None) => Err(MinerError::Backend("the model worker stopped".into())),
                Ok(Some(Event::Text(t))) => return Some((Ok(t), Some(rx))),
                Ok(Some(Event::Done(Ok(g)))) => match g.finish {
                    FinishReason::Deadline => Err(timeout(started)),
                    FinishReason::Cancelled => {
                        Err(MinerError::Backend("generation was cancelled".into()))
                    }
                    FinishReason::Eos | FinishReason::Stop | FinishReason::Length => {
                        return None;
                    }
                },
                Ok(Some(Event::Done(Err(e)))) => Err(MinerError::Backend(e.to_string())),
            };
            Some((item, None))
        });
        Ok(Box::pin(stream))
    }
}
