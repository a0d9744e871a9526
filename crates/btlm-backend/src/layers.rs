//! The layers of a BTLM block: layer norm, SwiGLU MLP, and the block itself
//! (`h += attn(ln_1(h))`, `h += mlp(ln_2(h))`). Activations are `[rows, n_embd]`.

use candle_core::Tensor;

use crate::attention::{Attention, AttentionPart};
use crate::config::Config;
use crate::error::Result;
use crate::linear::Projection;
use crate::loader::Loader;

/// Layer normalisation over the last dimension.
#[derive(Debug, Clone)]
pub(crate) struct LayerNorm {
    weight: Tensor,
    bias: Tensor,
    eps: f32,
}

impl LayerNorm {
    /// Loads `{prefix}.weight` and `{prefix}.bias`, both `[n]`.
    pub(crate) fn load(ld: &Loader<'_>, prefix: &str, n: usize, eps: f64) -> Result<Self> {
        Ok(LayerNorm {
            weight: ld.tensor(&format!("{prefix}.weight"), &[n])?,
            bias: ld.tensor(&format!("{prefix}.bias"), &[n])?,
            eps: eps as f32,
        })
    }

    /// Normalises each row of `x`.
    pub(crate) fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        candle_nn::ops::layer_norm(&x.contiguous()?, &self.weight, &self.bias, self.eps)
    }
}

/// The SwiGLU MLP: `c_proj(c_fc(x) ⊙ silu(c_fc2(x)))`.
#[derive(Debug, Clone)]
pub(crate) struct Mlp {
    c_fc: Projection,
    c_fc2: Projection,
    c_proj: Projection,
}

impl Mlp {
    /// Loads `{prefix}.c_fc`, `.c_fc2` and `.c_proj`.
    pub(crate) fn load(ld: &Loader<'_>, prefix: &str, cfg: &Config) -> Result<Self> {
        let (e, inner) = (cfg.n_embd, cfg.n_inner);
        Ok(Mlp {
            c_fc: Projection::load_conv1d(ld, &format!("{prefix}.c_fc"), (e, inner))?,
            c_fc2: Projection::load_conv1d(ld, &format!("{prefix}.c_fc2"), (e, inner))?,
            c_proj: Projection::load_conv1d(ld, &format!("{prefix}.c_proj"), (inner, e))?,
        })
    }

    /// `x: [rows, n_embd] → [rows, n_embd]`.
    pub(crate) fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let up = self.c_fc.forward(x)?;
        let gate = candle_nn::ops::silu(&self.c_fc2.forward(x)?)?;
        self.c_proj.forward(&(up * gate)?)
    }
}

/// One transformer block.
#[derive(Debug, Clone)]
pub(crate) struct Block {
    ln_1: LayerNorm,
    attn: Attention,
    ln_2: LayerNorm,
    mlp: Mlp,
}

impl Block {
    /// Loads block `i` (`transformer.h.{i}.*`).
    pub(crate) fn load(ld: &Loader<'_>, cfg: &Config, i: usize) -> Result<Self> {
        let p = format!("transformer.h.{i}");
        let (e, eps) = (cfg.n_embd, cfg.layer_norm_epsilon);
        Ok(Block {
            ln_1: LayerNorm::load(ld, &format!("{p}.ln_1"), e, eps)?,
            attn: Attention::load(ld, &format!("{p}.attn"), cfg, i)?,
            ln_2: LayerNorm::load(ld, &format!("{p}.ln_2"), e, eps)?,
            mlp: Mlp::load(ld, &format!("{p}.mlp"), cfg)?,
        })
    }

    /// `x: [rows, n_embd]`, the rows of the sequences described by `parts` (see
    /// [`Attention::forward`]).
    pub(crate) fn forward(
        &self,
        x: &Tensor,
        parts: &mut [AttentionPart<'_>],
    ) -> candle_core::Result<Tensor> {
        let h = (x + self.attn.forward(&self.ln_1.forward(x)?, parts)?)?;
        &h + self.mlp.forward(&self.ln_2.forward(&h)?)?
    }
}
