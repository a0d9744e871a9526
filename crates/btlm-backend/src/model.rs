//! Cerebras BTLM (Bittensor Language Model, `cerebras/btlm-3b-8k-base`).
//!
//! A GPT-2 style decoder with three changes: ALiBi position biases instead of learned
//! positions, a SwiGLU MLP, and maximal-update parametrization (muP) multipliers on the
//! embeddings, the attention scores (`1/d` instead of `1/√d`) and the output logits.
//!
//! - Embeddings: `h = wte[ids] · embeddings_scale` (plus `wpe[pos]` before scaling for
//!   `position_embedding_type = "learned"`).
//! - Block: `h += attn(ln_1(h))`, `h += mlp(ln_2(h))`.
//! - Attention: fused `c_attn` (GPT-2 `Conv1D`, weight stored `[in, out]`) → q | k | v, scores
//!   `q·kᵀ / d^p` (`p = 1` with `scale_qk_dot_by_d`, else `½`), causal mask, ALiBi bias
//!   `−slope_h·|i − j|`, softmax, `c_proj`.
//! - MLP: `c_proj(c_fc(x) ⊙ silu(c_fc2(x)))`.
//! - Logits: `ln_f(h) · wteᵀ · output_logits_scale` (tied embeddings unless the checkpoint has
//!   its own `lm_head.weight`).

use std::sync::Arc;

use candle_core::quantized::{GgmlDType, QMatMul, QTensor};
use candle_core::{DType, Device, Module, Tensor};
use candle_nn::kv_cache::KvCache;
use serde::Deserialize;

use crate::error::{BtlmError, Result};
use crate::options::Quantization;
use crate::weights::Checkpoint;

/// How positions are encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PositionEmbeddingType {
    /// Attention with linear biases (BTLM's choice).
    Alibi,
    /// A learned absolute position table `transformer.wpe` (GPT-2 style).
    Learned,
}

/// The model hyper-parameters, normalised from `config.json`.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// Vocabulary size.
    pub vocab_size: usize,
    /// Context length the model was trained for.
    pub n_positions: usize,
    /// Hidden size.
    pub n_embd: usize,
    /// Number of transformer blocks.
    pub n_layer: usize,
    /// Number of attention heads.
    pub n_head: usize,
    /// MLP inner size.
    pub n_inner: usize,
    /// Layer-norm epsilon.
    pub layer_norm_epsilon: f64,
    /// ALiBi or learned positions.
    pub position_embedding_type: PositionEmbeddingType,
    /// Multiplier of the token (and position) embeddings.
    pub embeddings_scale: f64,
    /// Multiplier of the output logits (`mup_output_alpha · mup_width_scale`).
    pub output_logits_scale: f64,
    /// Scale attention scores by `1/d` (muP) instead of `1/√d`.
    pub scale_qk_dot_by_d: bool,
    /// Scale attention scores at all.
    pub scale_attn_weights: bool,
    /// Further divide attention scores of block `i` by `i + 1`.
    pub scale_attn_by_inverse_layer_idx: bool,
    /// Beginning-of-sequence token.
    pub bos_token_id: Option<u32>,
    /// End-of-sequence token.
    pub eos_token_id: Option<u32>,
}

/// `config.json` as written by the Cerebras code (both the `mup_*` names and the early ones).
#[derive(Debug, Deserialize)]
struct RawConfig {
    model_type: Option<String>,
    vocab_size: Option<usize>,
    n_positions: Option<usize>,
    n_embd: Option<usize>,
    n_layer: Option<usize>,
    n_head: Option<usize>,
    n_inner: Option<usize>,
    layer_norm_epsilon: Option<f64>,
    activation_function: Option<String>,
    position_embedding_type: Option<String>,
    mup_embeddings_scale: Option<f64>,
    embeddings_scale: Option<f64>,
    mup_output_alpha: Option<f64>,
    mup_width_scale: Option<f64>,
    output_logits_scale: Option<f64>,
    mup_scale_qk_dot_by_d: Option<bool>,
    scale_qk_dot_by_d: Option<bool>,
    scale_attn_weights: Option<bool>,
    scale_attn_by_inverse_layer_idx: Option<bool>,
    alibi_scaling: Option<serde_json::Value>,
    bos_token_id: Option<u32>,
    eos_token_id: Option<u32>,
}

impl Config {
    /// The published `cerebras/btlm-3b-8k-base` configuration.
    pub fn btlm_3b_8k() -> Self {
        Config {
            vocab_size: 50257,
            n_positions: 8192,
            n_embd: 2560,
            n_layer: 32,
            n_head: 32,
            n_inner: 6826,
            layer_norm_epsilon: 1e-5,
            position_embedding_type: PositionEmbeddingType::Alibi,
            embeddings_scale: 14.6,
            output_logits_scale: 2.22 * 0.1,
            scale_qk_dot_by_d: true,
            scale_attn_weights: true,
            scale_attn_by_inverse_layer_idx: false,
            bos_token_id: Some(50256),
            eos_token_id: Some(50256),
        }
    }

    /// Parses and validates a `config.json`. Absent keys take the Cerebras `BTLMConfig`
    /// defaults; unsupported settings (non-SwiGLU activations, `alibi_scaling`) are refused.
    pub fn from_json(json: &str) -> Result<Self> {
        let raw: RawConfig =
            serde_json::from_str(json).map_err(|e| BtlmError::Config(e.to_string()))?;
        if let Some(t) = &raw.model_type
            && t != "btlm"
        {
            return Err(BtlmError::Config(format!(
                "model_type is {t:?}, this backend runs \"btlm\" models only"
            )));
        }
        let activation = raw.activation_function.as_deref().unwrap_or("gelu_new");
        if activation != "swiglu" {
            return Err(BtlmError::Config(format!(
                "activation_function {activation:?} is not supported (BTLM uses \"swiglu\")"
            )));
        }
        if let Some(v) = &raw.alibi_scaling
            && !v.is_null()
        {
            return Err(BtlmError::Config(format!(
                "alibi_scaling {v} is not supported (position interpolation is not implemented; \
                 use a checkpoint with alibi_scaling null)"
            )));
        }
        let position_embedding_type = match raw.position_embedding_type.as_deref() {
            None | Some("learned") => PositionEmbeddingType::Learned,
            Some("alibi") => PositionEmbeddingType::Alibi,
            Some(other) => {
                return Err(BtlmError::Config(format!(
                    "position_embedding_type {other:?} is not supported (alibi or learned)"
                )));
            }
        };
        let n_embd = raw.n_embd.unwrap_or(768);
        let output_logits_scale = match raw.output_logits_scale {
            Some(s) => s,
            None => raw.mup_output_alpha.unwrap_or(1.0) * raw.mup_width_scale.unwrap_or(1.0),
        };
        let cfg = Config {
            vocab_size: raw.vocab_size.unwrap_or(50257),
            n_positions: raw.n_positions.unwrap_or(1024),
            n_embd,
            n_layer: raw.n_layer.unwrap_or(12),
            n_head: raw.n_head.unwrap_or(12),
            n_inner: raw.n_inner.unwrap_or(4 * n_embd),
            layer_norm_epsilon: raw.layer_norm_epsilon.unwrap_or(1e-5),
            position_embedding_type,
            embeddings_scale: raw
                .mup_embeddings_scale
                .or(raw.embeddings_scale)
                .unwrap_or(1.0),
            output_logits_scale,
            scale_qk_dot_by_d: raw
                .mup_scale_qk_dot_by_d
                .or(raw.scale_qk_dot_by_d)
                .unwrap_or(false),
            scale_attn_weights: raw.scale_attn_weights.unwrap_or(true),
            scale_attn_by_inverse_layer_idx: raw.scale_attn_by_inverse_layer_idx.unwrap_or(false),
            bos_token_id: raw.bos_token_id,
            eos_token_id: raw.eos_token_id,
        };
        cfg.validate()?;
        Ok(cfg)
    }

    /// Checks that the sizes are usable.
    pub fn validate(&self) -> Result<()> {
        let positive = [
            ("vocab_size", self.vocab_size),
            ("n_positions", self.n_positions),
            ("n_embd", self.n_embd),
            ("n_layer", self.n_layer),
            ("n_head", self.n_head),
            ("n_inner", self.n_inner),
        ];
        for (name, v) in positive {
            if v == 0 {
                return Err(BtlmError::Config(format!("{name} must be positive")));
            }
        }
        if !self.n_embd.is_multiple_of(self.n_head) {
            return Err(BtlmError::Config(format!(
                "n_embd {} is not a multiple of n_head {}",
                self.n_embd, self.n_head
            )));
        }
        for (name, v) in [
            ("layer_norm_epsilon", self.layer_norm_epsilon),
            ("embeddings scale", self.embeddings_scale),
            ("output logits scale", self.output_logits_scale),
        ] {
            if !v.is_finite() || v <= 0.0 {
                return Err(BtlmError::Config(format!(
                    "{name} must be positive, got {v}"
                )));
            }
        }
        Ok(())
    }

    /// The size of one attention head.
    pub fn head_dim(&self) -> usize {
        self.n_embd / self.n_head
    }

    /// The number of weights the matrix multiplications of one token read
    /// (all blocks plus the output projection).
    pub fn matmul_params(&self) -> usize {
        let e = self.n_embd;
        let block = e * 3 * e + e * e + 2 * e * self.n_inner + self.n_inner * e;
        self.n_layer * block + self.vocab_size * e
    }
}

/// ALiBi slopes for `n_heads` heads (the geometric series of the ALiBi paper, interleaved
/// for head counts that are not powers of two).
pub fn alibi_slopes(n_heads: usize) -> Vec<f64> {
    fn power_of_two(n: usize) -> Vec<f64> {
        let start = 2f64.powf(-8.0 / n as f64);
        (1..=n).map(|i| start.powi(i as i32)).collect()
    }
    if n_heads == 0 {
        return Vec::new();
    }
    if n_heads.is_power_of_two() {
        return power_of_two(n_heads);
    }
    let closest = 1usize << (usize::BITS - 1 - n_heads.leading_zeros());
    let mut slopes = power_of_two(closest);
    slopes.extend(
        power_of_two(2 * closest)
            .into_iter()
            .step_by(2)
            .take(n_heads - closest),
    );
    slopes
}

/// A matrix multiplication `x · W` (+ bias), dense or quantized.
#[derive(Debug, Clone)]
enum Weight {
    /// `[in, out]` (may be a transposed view).
    Dense(Tensor),
    /// ggml blocks of the `[out, in]` matrix.
    Quantized(QMatMul),
}

#[derive(Debug, Clone)]
struct Projection {
    weight: Weight,
    bias: Option<Tensor>,
}

/// From this many rows on (prompt processing), ggml-stored weights are expanded to f32 and
/// multiplied with the blocked dense kernel, which beats one pass of ggml dot products per row.
const DEQUANTIZE_MIN_ROWS: usize = 16;

impl Projection {
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let dims = x.dims().to_vec();
        let (last, lead) = dims
            .split_last()
            .ok_or_else(|| candle_core::Error::Msg("projection of a scalar".into()).bt())?;
        let rows = lead.iter().product::<usize>();
        let dense = |w: &Tensor| -> candle_core::Result<Tensor> {
            let out = w.dim(1)?;
            let y = x.reshape((rows, *last))?.matmul(w)?;
            let mut shape = lead.to_vec();
            shape.push(out);
            y.reshape(shape)
        };
        let y = match &self.weight {
            Weight::Dense(w) => dense(w)?,
            Weight::Quantized(QMatMul::QTensor(q)) if rows >= DEQUANTIZE_MIN_ROWS => {
                dense(&q.dequantize(x.device())?.t()?)?
            }
            Weight::Quantized(q) => q.forward(&x.contiguous()?)?,
        };
        match &self.bias {
            Some(b) => y.broadcast_add(b),
            None => Ok(y),
        }
    }
}

#[derive(Debug, Clone)]
struct LayerNorm {
    weight: Tensor,
    bias: Tensor,
    eps: f32,
}

impl LayerNorm {
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        candle_nn::ops::layer_norm(&x.contiguous()?, &self.weight, &self.bias, self.eps)
    }
}

#[derive(Debug, Clone)]
struct Attention {
    c_attn: Projection,
    c_proj: Projection,
    n_head: usize,
    head_dim: usize,
    scale: f64,
}

impl Attention {
    /// `x`: `[b, t, e]`; `bias`: `[1, h, t, T]` f32 (mask + ALiBi).
    fn forward(
        &self,
        x: &Tensor,
        bias: &Tensor,
        cache: &mut KvCache,
    ) -> candle_core::Result<Tensor> {
        let (b, t, e) = x.dims3()?;
        let qkv = self.c_attn.forward(x)?;
        let split = |i: usize| -> candle_core::Result<Tensor> {
            qkv.narrow(2, i * e, e)?
                .reshape((b, t, self.n_head, self.head_dim))?
                .transpose(1, 2)?
                .contiguous()
        };
        let (q, k, v) = (split(0)?, split(1)?, split(2)?);
        let (k, v) = cache.append(&k, &v)?;
        let scores = q.matmul(&k.t()?)?.to_dtype(DType::F32)?;
        let scores = (scores * self.scale)?.broadcast_add(bias)?;
        let probs = candle_nn::ops::softmax_last_dim(&scores)?.to_dtype(v.dtype())?;
        let y = probs.matmul(&v.contiguous()?)?;
        let y = y.transpose(1, 2)?.reshape((b, t, e))?;
        self.c_proj.forward(&y)
    }
}

#[derive(Debug, Clone)]
struct Mlp {
    c_fc: Projection,
    c_fc2: Projection,
    c_proj: Projection,
}

impl Mlp {
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let up = self.c_fc.forward(x)?;
        let gate = candle_nn::ops::silu(&self.c_fc2.forward(x)?)?;
        self.c_proj.forward(&(up * gate)?)
    }
}

#[derive(Debug, Clone)]
struct Block {
    ln_1: LayerNorm,
    attn: Attention,
    ln_2: LayerNorm,
    mlp: Mlp,
}

impl Block {
    fn forward(
        &self,
        x: &Tensor,
        bias: &Tensor,
        cache: &mut KvCache,
    ) -> candle_core::Result<Tensor> {
        let h = (x + self.attn.forward(&self.ln_1.forward(x)?, bias, cache)?)?;
        &h + self.mlp.forward(&self.ln_2.forward(&h)?)?
    }
}

/// The key/value cache of one generation: keys and values of every block for the tokens
/// seen so far. Create one per sequence with [`Btlm::new_cache`].
#[derive(Debug, Clone)]
pub struct Cache {
    layers: Vec<KvCache>,
    seq_len: usize,
}

impl Cache {
    /// Number of tokens already processed.
    pub fn seq_len(&self) -> usize {
        self.seq_len
    }

    /// Forgets every token.
    pub fn reset(&mut self) {
        for l in &mut self.layers {
            l.reset();
        }
        self.seq_len = 0;
    }
}

/// How to load a checkpoint.
///
/// On CPU, candle's dense matrix multiplication is f32/f16 only and slow for half types, so
/// `bf16`/`f16` there means half-precision *weights* (read by candle's ggml kernels) with f32
/// activations, like llama.cpp. On CUDA the whole model runs in `dtype`.
#[derive(Debug, Clone)]
pub struct LoadOptions {
    /// Where the model runs.
    pub device: Device,
    /// Dtype of the weights (and of the activations on GPUs).
    pub dtype: DType,
    /// Quantize the matrix multiplications (CPU, requires `dtype` f32).
    pub quantization: Quantization,
}

impl Default for LoadOptions {
    fn default() -> Self {
        LoadOptions {
            device: Device::Cpu,
            dtype: DType::F32,
            quantization: Quantization::None,
        }
    }
}

/// Tensors are read from the checkpoint, converted, and either kept dense or stored in a
/// ggml format (`ggml`: a quantized block type, or f16/bf16 on CPU).
struct Loader<'a> {
    ckpt: &'a Checkpoint,
    device: &'a Device,
    /// Dtype of activations, dense weights, biases and norms.
    dtype: DType,
    ggml: Option<GgmlDType>,
}

impl Loader<'_> {
    fn tensor(&self, name: &str, shape: &[usize]) -> Result<Tensor> {
        Ok(self
            .ckpt
            .require(name, shape, self.device)?
            .to_dtype(self.dtype)?)
    }

    fn layer_norm(&self, prefix: &str, n: usize, eps: f64) -> Result<LayerNorm> {
        Ok(LayerNorm {
            weight: self.tensor(&format!("{prefix}.weight"), &[n])?,
            bias: self.tensor(&format!("{prefix}.bias"), &[n])?,
            eps: eps as f32,
        })
    }

    /// A GPT-2 `Conv1D` (`weight: [in, out]`, `bias: [out]`), padded with zeros to
    /// `pad_in`/`pad_out` (exact: padded outputs are zero, padded inputs multiply zeros).
    fn conv1d(
        &self,
        prefix: &str,
        n_in: usize,
        n_out: usize,
        pad_in: usize,
        pad_out: usize,
    ) -> Result<Projection> {
        let w = self.tensor(&format!("{prefix}.weight"), &[n_in, n_out])?;
        let b = self.tensor(&format!("{prefix}.bias"), &[n_out])?;
        let w = w
            .pad_with_zeros(0, 0, pad_in - n_in)?
            .pad_with_zeros(1, 0, pad_out - n_out)?;
        let b = b.pad_with_zeros(0, 0, pad_out - n_out)?;
        let weight = match self.ggml {
            None => Weight::Dense(w),
            Some(q) => to_ggml(&w.t()?, q, prefix)?,
        };
        Ok(Projection {
            weight,
            bias: Some(b),
        })
    }
}

/// Stores an `[out, in]` matrix in a ggml format; block formats whose block does not divide
/// `in` fall back to q8_0 (32), then to dense f32.
fn to_ggml(w_out_in: &Tensor, q: GgmlDType, name: &str) -> Result<Weight> {
    let k = w_out_in.dim(1)?;
    let w = w_out_in.to_dtype(DType::F32)?.contiguous()?;
    let chosen = [q, GgmlDType::Q8_0]
        .into_iter()
        .find(|d| k.is_multiple_of(d.block_size()));
    match chosen {
        Some(d) => {
            if d != q {
                tracing::debug!(
                    "{name}: input size {k} is not a multiple of {q:?} blocks, using {d:?}"
                );
            }
            let qt = QTensor::quantize(&w, d)?;
            // Built directly: `QMatMul::from_qtensor` would expand f16/bf16 back to f32.
            Ok(Weight::Quantized(QMatMul::QTensor(Arc::new(qt))))
        }
        None => {
            tracing::debug!("{name}: input size {k} cannot be quantized, keeping f32");
            Ok(Weight::Dense(w.t()?))
        }
    }
}

/// The BTLM language model (weights only: per-sequence state lives in a [`Cache`], so one
/// instance can serve every request).
#[derive(Debug, Clone)]
pub struct Btlm {
    cfg: Config,
    wte: Tensor,
    wpe: Option<Tensor>,
    blocks: Vec<Block>,
    ln_f: LayerNorm,
    lm_head: Weight,
    slopes: Vec<f32>,
    device: Device,
    dtype: DType,
}

impl Btlm {
    /// Builds the model from a checkpoint.
    pub fn load(cfg: &Config, ckpt: &Checkpoint, opts: &LoadOptions) -> Result<Self> {
        cfg.validate()?;
        let quant = opts.quantization.ggml_dtype();
        if quant.is_some() && opts.dtype != DType::F32 {
            return Err(BtlmError::InvalidArgument {
                name: "--btlm.dtype",
                reason: format!(
                    "quantized weights ({}) run with f32 activations; use --btlm.dtype f32",
                    opts.quantization
                ),
            });
        }
        if quant.is_some() && !opts.device.is_cpu() {
            return Err(BtlmError::InvalidArgument {
                name: "--btlm.quantize",
                reason: "the quantized path is for CPU; use a dense dtype on GPUs".into(),
            });
        }
        let on_cpu = opts.device.is_cpu();
        let ggml = match (quant, opts.dtype) {
            (Some(q), _) => Some(q),
            (None, DType::BF16) if on_cpu => Some(GgmlDType::BF16),
            (None, DType::F16) if on_cpu => Some(GgmlDType::F16),
            (None, DType::F32 | DType::BF16 | DType::F16) => None,
            (None, other) => {
                return Err(BtlmError::InvalidArgument {
                    name: "--btlm.dtype",
                    reason: format!("{other:?} is not supported (f32, bf16 or f16)"),
                });
            }
        };
        let act_dtype = if ggml.is_some() {
            DType::F32
        } else {
            opts.dtype
        };
        let ld = Loader {
            ckpt,
            device: &opts.device,
            dtype: act_dtype,
            ggml,
        };
        let e = cfg.n_embd;
        let eps = cfg.layer_norm_epsilon;
        // The quantized path pads the MLP's inner size to a whole number of blocks.
        let inner_pad = match ggml {
            Some(q) => cfg.n_inner.div_ceil(q.block_size()) * q.block_size(),
            None => cfg.n_inner,
        };
        let scale_power = if cfg.scale_qk_dot_by_d { 1.0 } else { 0.5 };
        let mut blocks = Vec::with_capacity(cfg.n_layer);
        for i in 0..cfg.n_layer {
            let p = format!("transformer.h.{i}");
            let mut scale = 1.0;
            if cfg.scale_attn_weights {
                scale /= (cfg.head_dim() as f64).powf(scale_power);
            }
            if cfg.scale_attn_by_inverse_layer_idx {
                scale /= (i + 1) as f64;
            }
            blocks.push(Block {
                ln_1: ld.layer_norm(&format!("{p}.ln_1"), e, eps)?,
                attn: Attention {
                    c_attn: ld.conv1d(&format!("{p}.attn.c_attn"), e, 3 * e, e, 3 * e)?,
                    c_proj: ld.conv1d(&format!("{p}.attn.c_proj"), e, e, e, e)?,
                    n_head: cfg.n_head,
                    head_dim: cfg.head_dim(),
                    scale,
                },
                ln_2: ld.layer_norm(&format!("{p}.ln_2"), e, eps)?,
                mlp: Mlp {
                    c_fc: ld.conv1d(&format!("{p}.mlp.c_fc"), e, cfg.n_inner, e, inner_pad)?,
                    c_fc2: ld.conv1d(&format!("{p}.mlp.c_fc2"), e, cfg.n_inner, e, inner_pad)?,
                    c_proj: ld.conv1d(&format!("{p}.mlp.c_proj"), cfg.n_inner, e, inner_pad, e)?,
                },
            });
        }
        let ln_f = ld.layer_norm("transformer.ln_f", e, eps)?;
        let wte_raw = ckpt.require("transformer.wte.weight", &[cfg.vocab_size, e], &opts.device)?;
        let head_raw = match ckpt.get("lm_head.weight", &opts.device)? {
            Some(h) if h.dims() != [cfg.vocab_size, e] => {
                return Err(BtlmError::Checkpoint(format!(
                    "lm_head.weight has shape {:?}, expected {:?}",
                    h.dims(),
                    [cfg.vocab_size, e]
                )));
            }
            Some(h) => h,
            None => wte_raw.clone(),
        };
        let (wte, lm_head) = match ggml {
            None => {
                let wte = wte_raw.to_dtype(act_dtype)?;
                let head = head_raw.to_dtype(act_dtype)?;
                (wte, Weight::Dense(head.t()?))
            }
            // The embedding table is only gathered from: keep it in the weight dtype (f16 for
            // quantized models); rows are converted to f32 after the lookup.
            Some(q) => {
                let table_dtype = if quant.is_some() {
                    DType::F16
                } else {
                    opts.dtype
                };
                (
                    wte_raw.to_dtype(table_dtype)?,
                    to_ggml(&head_raw, q, "lm_head")?,
                )
            }
        };
        let wpe = match cfg.position_embedding_type {
            PositionEmbeddingType::Learned => {
                Some(ld.tensor("transformer.wpe.weight", &[cfg.n_positions, e])?)
            }
            PositionEmbeddingType::Alibi => None,
        };
        let slopes = alibi_slopes(cfg.n_head);
        if let Some(stored) = ckpt.get("transformer.relative_pe.slopes", &Device::Cpu)? {
            let stored = stored
                .to_dtype(DType::F64)?
                .flatten_all()?
                .to_vec1::<f64>()?;
            let agrees = stored.len() == slopes.len()
                && stored
                    .iter()
                    .zip(&slopes)
                    .all(|(a, b)| (a - b).abs() <= 1e-3 * b.abs().max(1e-6));
            if !agrees {
                return Err(BtlmError::Checkpoint(format!(
                    "transformer.relative_pe.slopes {stored:?} disagree with the ALiBi slopes \
                     for {} heads {slopes:?}",
                    cfg.n_head
                )));
            }
        }
        Ok(Btlm {
            cfg: cfg.clone(),
            wte,
            wpe,
            blocks,
            ln_f,
            lm_head,
            slopes: slopes.into_iter().map(|s| s as f32).collect(),
            device: opts.device.clone(),
            dtype: act_dtype,
        })
    }

    /// The configuration.
    pub fn config(&self) -> &Config {
        &self.cfg
    }

    /// The device the model runs on.
    pub fn device(&self) -> &Device {
        &self.device
    }

    /// The activation dtype.
    pub fn dtype(&self) -> DType {
        self.dtype
    }

    /// An empty cache for a new sequence.
    pub fn new_cache(&self) -> Cache {
        Cache {
            // Grows in steps of 256 positions rather than reserving the whole context.
            layers: (0..self.cfg.n_layer)
                .map(|_| KvCache::new(2, 256))
                .collect(),
            seq_len: 0,
        }
    }

    /// Mask and ALiBi bias `[1, h, t, offset + t]` for queries at `offset..offset + t`.
    fn attention_bias(&self, offset: usize, t: usize) -> candle_core::Result<Tensor> {
        let total = offset + t;
        let h = self.cfg.n_head;
        let alibi = self.cfg.position_embedding_type == PositionEmbeddingType::Alibi;
        let mut data = Vec::with_capacity(h * t * total);
        for head in 0..h {
            let slope = if alibi { self.slopes[head] } else { 0.0 };
            for qi in 0..t {
                let i = offset + qi;
                for j in 0..total {
                    data.push(if j > i {
                        f32::NEG_INFINITY
                    } else {
                        -slope * (i - j) as f32
                    });
                }
            }
        }
        Tensor::from_vec(data, (1, h, t, total), &self.device)
    }

    /// Runs `input_ids` (`[batch, t]`, u32) after the tokens already in `cache`, appends them
    /// to it, and returns the f32 logits of the last position, `[batch, vocab]`.
    pub fn forward(&self, input_ids: &Tensor, cache: &mut Cache) -> candle_core::Result<Tensor> {
        let (b, t) = input_ids.dims2()?;
        let offset = cache.seq_len;
        if t == 0 {
            candle_core::bail!("forward needs at least one token");
        }
        if cache.layers.len() != self.blocks.len() {
            candle_core::bail!("the cache belongs to another model");
        }
        let mut h = self
            .wte
            .embedding(&input_ids.flatten_all()?)?
            .to_dtype(self.dtype)?
            .reshape((b, t, self.cfg.n_embd))?;
        if let Some(wpe) = &self.wpe {
            if offset + t > self.cfg.n_positions {
                candle_core::bail!(
                    "position {} is past the learned position table ({})",
                    offset + t,
                    self.cfg.n_positions
                );
            }
            let pos = Tensor::arange(offset as u32, (offset + t) as u32, &self.device)?;
            h = h.broadcast_add(&wpe.embedding(&pos)?.unsqueeze(0)?)?;
        }
        h = (h * self.cfg.embeddings_scale)?;
        let bias = self.attention_bias(offset, t)?;
        for (block, kv) in self.blocks.iter().zip(cache.layers.iter_mut()) {
            h = block.forward(&h, &bias, kv)?;
        }
        cache.seq_len += t;
        let last = h.narrow(1, t - 1, 1)?.squeeze(1)?;
        let last = self.ln_f.forward(&last)?;
        let logits = match &self.lm_head {
            Weight::Dense(w) => last.matmul(w)?,
            Weight::Quantized(q) => q.forward(&last)?,
        };
        (logits.to_dtype(DType::F32)? * self.cfg.output_logits_scale)?.contiguous()
    }

    /// Runs a prompt in chunks of at most `chunk` tokens (bounding the size of the attention
    /// score matrices) and returns the logits of its last token, `[vocab]`.
    pub fn prefill(
        &self,
        tokens: &[u32],
        cache: &mut Cache,
        chunk: usize,
    ) -> candle_core::Result<Tensor> {
        let mut logits = None;
        for piece in tokens.chunks(chunk.max(1)) {
            let ids = Tensor::new(piece, &self.device)?.unsqueeze(0)?;
            logits = Some(self.forward(&ids, cache)?);
        }
        match logits {
            Some(l) => l.squeeze(0),
            None => candle_core::bail!("empty prompt"),
        }
    }

    /// Returns the logits of the last position as a `Vec` (for one sequence).
    pub fn next_token_logits(
        &self,
        token: u32,
        cache: &mut Cache,
    ) -> candle_core::Result<Vec<f32>> {
        let ids = Tensor::new(&[token], &self.device)?.unsqueeze(0)?;
        self.forward(&ids, cache)?.squeeze(0)?.to_vec1::<f32>()
    }
}

/// Index of the largest value (first on ties), as Hugging Face's greedy search picks.
pub fn argmax(logits: &[f32]) -> Option<u32> {
    let mut best: Option<(usize, f32)> = None;
    for (i, &v) in logits.iter().enumerate() {
        match best {
            Some((_, b)) if v <= b => {}
            _ => best = Some((i, v)),
        }
    }
    best.map(|(i, _)| i as u32)
}

#[cfg(test)]
mod tests {
    use super::*;

    const TINY: &str = include_str!("../tests/fixtures/btlm-tiny/config.json");

    #[test]
    fn slopes_power_of_two() {
        let s = alibi_slopes(8);
        let expected: Vec<f64> = (1..=8).map(|i| 0.5f64.powi(i)).collect();
        for (a, b) in s.iter().zip(&expected) {
            assert!((a - b).abs() < 1e-12, "{s:?}");
        }
        let s4 = alibi_slopes(4);
        assert!((s4[0] - 0.25).abs() < 1e-12 && (s4[3] - 0.25f64.powi(4)).abs() < 1e-12);
    }

    #[test]
    fn slopes_not_power_of_two() {
        // 12 heads: the 8-head slopes, then slopes 1, 3, 5, 7 (0-based) of the 16-head series.
        let s = alibi_slopes(12);
        assert_eq!(s.len(), 12);
        let s8 = alibi_slopes(8);
        let s16 = alibi_slopes(16);
        assert_eq!(&s[..8], &s8[..]);
        assert_eq!(&s[8..], &[s16[0], s16[2], s16[4], s16[6]]);
        assert_eq!(alibi_slopes(1), vec![2f64.powf(-8.0)]);
        assert!(alibi_slopes(0).is_empty());
    }

    #[test]
    fn tiny_config_parses() {
        let c = Config::from_json(TINY).expect("tiny config");
        assert_eq!((c.n_embd, c.n_head, c.n_inner, c.n_layer), (64, 4, 170, 2));
        assert_eq!(c.position_embedding_type, PositionEmbeddingType::Alibi);
        assert!((c.output_logits_scale - 0.222).abs() < 1e-12);
        assert!((c.embeddings_scale - 14.6).abs() < 1e-12);
        assert!(c.scale_qk_dot_by_d);
        assert_eq!(c.eos_token_id, Some(1000));
    }

    fn edit(f: impl FnOnce(&mut serde_json::Map<String, serde_json::Value>)) -> String {
        let mut v: serde_json::Value = serde_json::from_str(TINY).expect("json");
        f(v.as_object_mut().expect("object"));
        v.to_string()
    }

    #[test]
    fn early_key_names_are_accepted() {
        let json = edit(|m| {
            m.remove("mup_embeddings_scale");
            m.remove("mup_output_alpha");
            m.remove("mup_width_scale");
            m.remove("mup_scale_qk_dot_by_d");
            m.insert("embeddings_scale".into(), 3.0.into());
            m.insert("output_logits_scale".into(), 0.5.into());
            m.insert("scale_qk_dot_by_d".into(), false.into());
            m.insert("n_inner".into(), serde_json::Value::Null);
        });
        let c = Config::from_json(&json).expect("early names");
        assert_eq!(c.embeddings_scale, 3.0);
        assert_eq!(c.output_logits_scale, 0.5);
        assert!(!c.scale_qk_dot_by_d);
        assert_eq!(c.n_inner, 256);
    }

    #[test]
    fn unsupported_settings_are_refused() {
        let cases: Vec<(String, &str)> = vec![
            (
                edit(|m| {
                    m.insert(
                        "alibi_scaling".into(),
                        serde_json::json!({"type": "linear", "factor": 2.0}),
                    );
                }),
                "alibi_scaling",
            ),
            (
                edit(|m| {
                    m.insert("activation_function".into(), "gelu_new".into());
                }),
                "activation_function",
            ),
            (
                edit(|m| {
                    m.insert("n_head".into(), 5.into());
                }),
                "multiple of n_head",
            ),
            (
                edit(|m| {
                    m.insert("position_embedding_type".into(), "rotary".into());
                }),
                "rotary",
            ),
            (
                edit(|m| {
                    m.insert("model_type".into(), "gpt2".into());
                }),
                "model_type",
            ),
            ("{not json".to_string(), "invalid model config"),
        ];
        for (json, needle) in cases {
            let err = Config::from_json(&json).expect_err(needle).to_string();
            assert!(err.contains(needle), "{err} should mention {needle}");
        }
        // A null alibi_scaling is fine.
        let ok = edit(|m| {
            m.insert("alibi_scaling".into(), serde_json::Value::Null);
        });
        assert!(Config::from_json(&ok).is_ok());
    }

    #[test]
    fn model_is_shareable() {
        fn f<T: Send + Sync>() {}
        f::<Btlm>();
    }

    #[test]
    fn argmax_takes_first_maximum() {
        assert_eq!(argmax(&[1.0, 3.0, 3.0, -1.0]), Some(1));
        assert_eq!(argmax(&[]), None);
    }

    #[test]
    fn real_model_size() {
        let c = Config::btlm_3b_8k();
        c.validate().expect("valid");
        assert_eq!(c.head_dim(), 80);
        // ~2.6 B weights in matmuls.
        let p = c.matmul_params();
        assert!((2_500_000_000..2_800_000_000).contains(&p), "{p}");
    }
}
