//! The layers of a BTLM block: layer norm, SwiGLU MLP, and the block itself
//! (`h += attn(ln_1(h))`, `h += mlp(ln_2(h))`). Activations are `[rows, n_embd]`.

use std::sync::Mutex;

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
        let gated = if up.device().is_cpu() && up.dtype() == DType::F32 {
            swiglu_on(&up, &gate, team)?
        } else {
            (up * candle_nn::ops::silu(&gate)?)?
        };
        self.c_proj.forward_on(&gated, team)
    }
}

/// Values per task of [`swiglu_on`].
const SWIGLU_CHUNK: usize = 2048;

/// `up ⊙ silu(gate)` for f32 CPU tensors of one shape, in chunks over `team` (candle's
/// arithmetic: `silu(g) = g / (1 + e^−g)`, then the product).
fn swiglu_on(up: &Tensor, gate: &Tensor, team: &Team<'_>) -> candle_core::Result<Tensor> {
    if up.dims() != gate.dims() {
        candle_core::bail!(
            "SwiGLU halves of shapes {:?} and {:?}",
            up.dims(),
            gate.dims()
        );
    }
    let mut y = vec![0f32; up.elem_count()];
    let (up, gate) = (up.contiguous()?, gate.contiguous()?);
    with_f32_slice(&up, |u| {
        with_f32_slice(&gate, |g| {
            let chunks: Vec<Mutex<&mut [f32]>> =
                y.chunks_mut(SWIGLU_CHUNK).map(Mutex::new).collect();
            team.for_each(chunks.len(), &|i| {
                let mut out = chunks[i].lock().unwrap_or_else(|e| e.into_inner());
                let base = i * SWIGLU_CHUNK;
                let (u, g) = (&u[base..base + out.len()], &g[base..base + out.len()]);
                for ((o, &u), &g) in out.iter_mut().zip(u).zip(g) {
                    *o = u * (g / (1.0 + (-g).exp()));
                }
            });
        })
    })??;
    Tensor::from_vec(y, up.dims(), &Device::Cpu)
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::team;

    #[test]
    fn swiglu_on_a_team_equals_candle() {
        // Two rows, the last chunk partial.
        let n = SWIGLU_CHUNK + 37;
        let values = |k: f32| -> Tensor {
            let v: Vec<f32> = (0..2 * n).map(|i| (i as f32 * k).sin() * 6.0).collect();
            Tensor::from_vec(v, (2, n), &Device::Cpu).expect("tensor")
        };
        let (up, gate) = (values(0.37), values(0.11));
        let want = (&up * candle_nn::ops::silu(&gate).expect("silu"))
            .and_then(|y| y.flatten_all()?.to_vec1::<f32>())
            .expect("candle");
        for threads in [1, 2, 3] {
            let got = team::run(threads, |t| swiglu_on(&up, &gate, t))
                .and_then(|y| y.flatten_all()?.to_vec1::<f32>())
                .expect("team");
            assert_eq!(got, want, "{threads} threads");
        }
        let other = values(0.5).narrow(1, 0, 5).expect("narrow");
        assert!(team::run(2, |t| swiglu_on(&up, &other, t)).is_err());
    }

    #[test]
    fn layer_norm_rows_equal_candle() {
        let n = 300;
        let x: Vec<f32> = (0..3 * n)
            .map(|i| (i as f32 * 0.23).cos() * 3.0 + 1.0)
            .collect();
        let x = Tensor::from_vec(x, (3, n), &Device::Cpu).expect("x");
        let w = Tensor::from_vec(
            (0..n).map(|i| 1.0 + i as f32 / n as f32).collect(),
            n,
            &Device::Cpu,
        )
        .expect("w");
        let b = Tensor::from_vec((0..n).map(|i| i as f32 * 0.01).collect(), n, &Device::Cpu)
            .expect("b");
        let ln = LayerNorm {
            weight: w.clone(),
            bias: b.clone(),
            eps: 1e-5,
        };
        let want = candle_nn::ops::layer_norm(&x, &w, &b, 1e-5)
            .and_then(|y| y.flatten_all()?.to_vec1::<f32>())
            .expect("candle");
        let got = ln
            .forward(&x)
            .and_then(|y| y.flatten_all()?.to_vec1::<f32>())
            .expect("ours");
        assert_eq!(got, want);
    }
}
