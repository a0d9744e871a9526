//! The layers of a BTLM block: layer norm, SwiGLU MLP, and the block itself
//! (`h += attn(ln_1(h))`, `h += mlp(ln_2(h))`). Activations are `[rows, n_embd]`.

use candle_core::{DType, Device, Tensor};

use crate::attention::{Attention, AttentionPart};
use crate::config::Config;
use crate::error::Result;
use crate::linear::{Projection, with_f32_slice};
use crate::loader::Loader;
use crate::team::Team;

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

    /// Normalises each row of `x`. f32 rows on the CPU are normalised on this thread (the
    /// arithmetic of candle's `layer_norm`, which forks rayon's pool for more than one row).
    pub(crate) fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let x = x.contiguous()?;
        if !(x.device().is_cpu() && x.dtype() == DType::F32 && self.weight.dtype() == DType::F32) {
            return candle_nn::ops::layer_norm(&x, &self.weight, &self.bias, self.eps);
        }
        let (rows, n) = x.dims2()?;
        let (weight, bias) = (self.weight.to_vec1::<f32>()?, self.bias.to_vec1::<f32>()?);
        if weight.len() != n {
            candle_core::bail!(
                "layer norm of {} values applied to rows of {n}",
                weight.len()
            );
        }
        let mut y = vec![0f32; rows * n];
        with_f32_slice(&x, |xs| {
            for (src, dst) in xs.chunks_exact(n).zip(y.chunks_exact_mut(n)) {
                layer_norm_row(src, &weight, &bias, self.eps, dst);
            }
        })?;
        Tensor::from_vec(y, (rows, n), &Device::Cpu)
    }
}

/// `dst = (src − mean) / √(var + eps) · weight + bias` for one row, as candle's CPU
/// `layer_norm` computes it (f32 sums in order, variance as `E[x²] − mean²`).
fn layer_norm_row(src: &[f32], weight: &[f32], bias: &[f32], eps: f32, dst: &mut [f32]) {
    let n = src.len() as f32;
    let (mut sum, mut sum2) = (0f32, 0f32);
    for &v in src {
        sum += v;
        sum2 += v * v;
    }
    let mean = sum / n;
    let var = sum2 / n - mean * mean;
    let inv_std = (var + eps).sqrt().recip();
    for (((d, &s), &w), &b) in dst.iter_mut().zip(src).zip(weight).zip(bias) {
        *d = (s - mean) * inv_std * w + b;
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

    /// `x: [rows, n_embd] → [rows, n_embd]` (both up-projections in one section of `team`).
    pub(crate) fn forward(&self, x: &Tensor, team: &Team<'_>) -> candle_core::Result<Tensor> {
        let [up, gate] = <[Tensor; 2]>::try_from(Projection::forward_all(
            &[&self.c_fc, &self.c_fc2],
            x,
            team,
        )?)
        .map_err(|_| candle_core::Error::Msg("two projections give two outputs".into()))?;
        let gate = candle_nn::ops::silu(&gate)?;
        self.c_proj.forward_on(&(up * gate)?, team)
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
    /// [`Attention::forward`]), the parallel work on `team`.
    pub(crate) fn forward(
        &self,
        x: &Tensor,
        parts: &mut [AttentionPart<'_>],
        team: &Team<'_>,
    ) -> candle_core::Result<Tensor> {
        let h = (x + self.attn.forward(&self.ln_1.forward(x)?, parts, team)?)?;
        &h + self.mlp.forward(&self.ln_2.forward(&h)?, team)?
    }
}
