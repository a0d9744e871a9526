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

use candle_core::{DType, Device, Tensor};
use candle_nn::kv_cache::KvCache;

use crate::attention::{alibi_slopes, attention_bias};
use crate::config::{Config, PositionEmbeddingType};
use crate::error::{BtlmError, Result};
use crate::layers::{Block, LayerNorm};
use crate::linear::Projection;
use crate::loader::{LoadOptions, Loader};
use crate::weights::Checkpoint;

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

/// The BTLM language model (weights only: per-sequence state lives in a [`Cache`], so one
/// instance can serve every request).
#[derive(Debug, Clone)]
pub struct Btlm {
    cfg: Config,
    wte: Tensor,
    wpe: Option<Tensor>,
    blocks: Vec<Block>,
    ln_f: LayerNorm,
    lm_head: Projection,
    slopes: Vec<f32>,
    device: Device,
    dtype: DType,
}

impl Btlm {
    /// Builds the model from a checkpoint.
    pub fn load(cfg: &Config, ckpt: &Checkpoint, opts: &LoadOptions) -> Result<Self> {
        cfg.validate()?;
        let ld = Loader::new(ckpt, opts)?;
        let e = cfg.n_embd;
        let blocks = (0..cfg.n_layer)
            .map(|i| Block::load(&ld, cfg, i))
            .collect::<Result<Vec<_>>>()?;
        let ln_f = LayerNorm::load(&ld, "transformer.ln_f", e, cfg.layer_norm_epsilon)?;
        let wte_raw = ckpt.require("transformer.wte.weight", &[cfg.vocab_size, e], ld.device())?;
        let head_raw = match ckpt.get("lm_head.weight", ld.device())? {
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
        let lm_head = Projection::from_out_in(&ld, &head_raw, "lm_head")?;
        let wte = wte_raw.to_dtype(ld.table_dtype())?;
        let wpe = match cfg.position_embedding_type {
            PositionEmbeddingType::Learned => {
                Some(ld.tensor("transformer.wpe.weight", &[cfg.n_positions, e])?)
            }
            PositionEmbeddingType::Alibi => None,
        };
        let slopes = alibi_slopes(cfg.n_head);
        check_stored_slopes(ld.checkpoint(), &slopes, cfg.n_head)?;
        Ok(Btlm {
            cfg: cfg.clone(),
            wte,
            wpe,
            blocks,
            ln_f,
            lm_head,
            slopes: slopes.into_iter().map(|s| s as f32).collect(),
            device: opts.device.clone(),
            dtype: ld.dtype(),
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

    /// The ALiBi slopes, or `None` for learned positions.
    fn alibi(&self) -> Option<&[f32]> {
        (self.cfg.position_embedding_type == PositionEmbeddingType::Alibi)
            .then_some(self.slopes.as_slice())
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
        let mut h = (h * self.cfg.embeddings_scale)?.reshape((b * t, self.cfg.n_embd))?;
        let bias = attention_bias(self.cfg.n_head, self.alibi(), offset, t, &self.device)?;
        for (block, kv) in self.blocks.iter().zip(cache.layers.iter_mut()) {
            h = block.forward(&h, (b, t), &bias, kv)?;
        }
        cache.seq_len += t;
        let last = h
            .reshape((b, t, self.cfg.n_embd))?
            .narrow(1, t - 1, 1)?
            .squeeze(1)?;
        let last = self.ln_f.forward(&last)?;
        let logits = self.lm_head.forward(&last)?;
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

/// Refuses a checkpoint whose stored ALiBi slopes (`transformer.relative_pe.slopes`, if
/// present) differ from the ones computed for `n_head` heads.
fn check_stored_slopes(ckpt: &Checkpoint, slopes: &[f64], n_head: usize) -> Result<()> {
    let Some(stored) = ckpt.get("transformer.relative_pe.slopes", &Device::Cpu)? else {
        return Ok(());
    };
    let stored = stored
        .to_dtype(DType::F64)?
        .flatten_all()?
        .to_vec1::<f64>()?;
    let agrees = stored.len() == slopes.len()
        && stored
            .iter()
            .zip(slopes)
            .all(|(a, b)| (a - b).abs() <= 1e-3 * b.abs().max(1e-6));
    if !agrees {
        return Err(BtlmError::Checkpoint(format!(
            "transformer.relative_pe.slopes {stored:?} disagree with the ALiBi slopes \
             for {n_head} heads {slopes:?}"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn model_is_shareable() {
        fn f<T: Send + Sync>() {}
        f::<Btlm>();
    }
}
