//! Causal self-attention with ALiBi position biases and a key/value cache.

use candle_core::{DType, Device, Tensor};

use crate::config::Config;
use crate::error::Result;
use crate::kv_cache::LayerKv;
use crate::linear::Projection;
use crate::loader::Loader;

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

/// Causal mask plus ALiBi bias, `[h, t, offset + t]`, for queries at `offset..offset + t`
/// (`slopes`: one per head, or `None` for a plain causal mask).
pub(crate) fn attention_bias(
    n_head: usize,
    slopes: Option<&[f32]>,
    offset: usize,
    t: usize,
    device: &Device,
) -> candle_core::Result<Tensor> {
    let total = offset + t;
    let mut data = Vec::with_capacity(n_head * t * total);
    for head in 0..n_head {
        let slope = slopes.and_then(|s| s.get(head).copied()).unwrap_or(0.0);
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
    Tensor::from_vec(data, (n_head, t, total), device)
}

/// One block's attention: fused `c_attn` (GPT-2 `Conv1D`) → q | k | v, scores
/// `q·kᵀ · scale` plus the mask/ALiBi bias, softmax, `c_proj`.
#[derive(Debug, Clone)]
pub(crate) struct Attention {
    c_attn: Projection,
    c_proj: Projection,
    n_head: usize,
    head_dim: usize,
    scale: f64,
}

impl Attention {
    /// Loads block `layer`'s attention from `{prefix}.c_attn` and `{prefix}.c_proj`.
    pub(crate) fn load(ld: &Loader<'_>, prefix: &str, cfg: &Config, layer: usize) -> Result<Self> {
        let e = cfg.n_embd;
        let scale_power = if cfg.scale_qk_dot_by_d { 1.0 } else { 0.5 };
        let mut scale = 1.0;
        if cfg.scale_attn_weights {
            scale /= (cfg.head_dim() as f64).powf(scale_power);
        }
        if cfg.scale_attn_by_inverse_layer_idx {
            scale /= (layer + 1) as f64;
        }
        Ok(Attention {
            c_attn: Projection::load_conv1d(ld, &format!("{prefix}.c_attn"), (e, 3 * e))?,
            c_proj: Projection::load_conv1d(ld, &format!("{prefix}.c_proj"), (e, e))?,
            n_head: cfg.n_head,
            head_dim: cfg.head_dim(),
            scale,
        })
    }

    /// `x`: `[rows, e]`, the rows of several sequences one after the other; `parts`: for
    /// each sequence its rows, the bias of its queries (see [`attention_bias`]) and its
    /// block cache. Each sequence attends to its own keys only. Returns `[rows, e]`.
    pub(crate) fn forward(
        &self,
        x: &Tensor,
        parts: &mut [AttentionPart<'_>],
    ) -> candle_core::Result<Tensor> {
        let e = x.dim(1)?;
        let qkv = self.c_attn.forward(x)?;
        let mut outputs = Vec::with_capacity(parts.len());
        for part in parts.iter_mut() {
            let rows = qkv.narrow(0, part.start, part.len)?;
            outputs.push(self.attend(&rows, part)?);
        }
        let y = match outputs.len() {
            1 => outputs.swap_remove(0),
            _ => Tensor::cat(&outputs, 0)?,
        };
        debug_assert_eq!(y.dim(1).ok(), Some(e));
        self.c_proj.forward(&y)
    }

    /// Attention of one sequence's `t` query rows (`qkv: [t, 3e]`), giving `[t, e]`.
    fn attend(&self, qkv: &Tensor, part: &mut AttentionPart<'_>) -> candle_core::Result<Tensor> {
        let (t, e3) = qkv.dims2()?;
        let e = e3 / 3;
        let split = |i: usize| -> candle_core::Result<Tensor> {
            qkv.narrow(1, i * e, e)?
                .reshape((t, self.n_head, self.head_dim))?
                .transpose(0, 1)?
                .contiguous()
        };
        let (q, k, v) = (split(0)?, split(1)?, split(2)?);
        let (k, v) = part.kv.append(&k, &v, part.reserve)?;
        let scores = q.matmul(&k.t()?)?.to_dtype(DType::F32)?;
        let scores = (scores * self.scale)?.broadcast_add(part.bias)?;
        let probs = candle_nn::ops::softmax_last_dim(&scores)?.to_dtype(v.dtype())?;
        let y = probs.matmul(&v.contiguous()?)?;
        y.transpose(0, 1)?.reshape((t, e))
    }
}

/// One sequence's share of an attention call.
pub(crate) struct AttentionPart<'a> {
    /// First row of the sequence in the step's activations.
    pub(crate) start: usize,
    /// Number of its rows (tokens run this step).
    pub(crate) len: usize,
    /// Mask and ALiBi bias of its queries, `[h, len, positions]`.
    pub(crate) bias: &'a Tensor,
    /// Its cache for this block.
    pub(crate) kv: &'a mut LayerKv,
    /// Capacity to allocate if the cache is still empty.
    pub(crate) reserve: usize,
}

#[cfg(test)]
mod tests {
    use super::*;

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
    fn bias_is_causal_with_linear_distance_penalty() {
        let b = attention_bias(2, Some(&[0.5, 0.25]), 1, 2, &Device::Cpu)
            .and_then(|t| t.flatten_all()?.to_vec1::<f32>())
            .expect("bias");
        let inf = f32::NEG_INFINITY;
        // Head 0, queries at positions 1 and 2 over keys 0..3; then head 1.
        assert_eq!(
            b,
            vec![
                -0.5, 0.0, inf, -1.0, -0.5, 0.0, //
                -0.25, 0.0, inf, -0.5, -0.25, 0.0
            ]
        );
        let plain = attention_bias(1, None, 0, 2, &Device::Cpu)
            .and_then(|t| t.flatten_all()?.to_vec1::<f32>())
            .expect("mask");
        assert_eq!(plain, vec![0.0, inf, 0.0, 0.0]);
    }
}
