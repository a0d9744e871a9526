//! Projections: `y = x · W (+ b)` with `W` dense or stored in a ggml format.
//!
//! The model only sees [`Projection::forward`] on `[rows, in]` activations (one row per
//! token of every sequence in a step), so how the product is computed — which kernel, which
//! storage — stays behind this interface.

use std::sync::Arc;

use candle_core::quantized::{GgmlDType, QMatMul, QTensor};
use candle_core::{DType, Module, Tensor};

use crate::error::Result;
use crate::loader::Loader;

/// The weight matrix of a projection.
#[derive(Debug, Clone)]
enum Weight {
    /// `[in, out]` (may be a transposed view).
    Dense(Tensor),
    /// ggml blocks of the `[out, in]` matrix.
    Quantized(QMatMul),
}

/// From this many rows on (prompt processing), ggml-stored weights are expanded to f32 and
/// multiplied with the blocked dense kernel, which beats one pass of ggml dot products per row.
const DEQUANTIZE_MIN_ROWS: usize = 16;

/// A linear map `[rows, in] → [rows, out]` with an optional bias.
#[derive(Debug, Clone)]
pub struct Projection {
    weight: Weight,
    bias: Option<Tensor>,
}

impl Projection {
    /// Loads a GPT-2 `Conv1D` (`{prefix}.weight: [in, out]`, `{prefix}.bias: [out]`),
    /// padded with zeros to `pad_in`/`pad_out` (exact: padded outputs are zero, padded
    /// inputs multiply zeros).
    pub(crate) fn load_conv1d(
        ld: &Loader<'_>,
        prefix: &str,
        (n_in, n_out): (usize, usize),
        (pad_in, pad_out): (usize, usize),
    ) -> Result<Self> {
        let w = ld.tensor(&format!("{prefix}.weight"), &[n_in, n_out])?;
        let b = ld.tensor(&format!("{prefix}.bias"), &[n_out])?;
        let w = w
            .pad_with_zeros(0, 0, pad_in - n_in)?
            .pad_with_zeros(1, 0, pad_out - n_out)?;
        let b = b.pad_with_zeros(0, 0, pad_out - n_out)?;
        let weight = match ld.ggml() {
            None => Weight::Dense(w),
            Some(q) => to_ggml(&w.t()?, q, prefix)?,
        };
        Ok(Projection {
            weight,
            bias: Some(b),
        })
    }

    /// An `nn.Linear`-style `[out, in]` matrix without bias (the output head).
    pub(crate) fn from_out_in(ld: &Loader<'_>, w_out_in: &Tensor, name: &str) -> Result<Self> {
        let weight = match ld.ggml() {
            None => Weight::Dense(w_out_in.to_dtype(ld.dtype())?.t()?),
            Some(q) => to_ggml(w_out_in, q, name)?,
        };
        Ok(Projection { weight, bias: None })
    }

    /// `x · W + b` for `x: [rows, in]`, giving `[rows, out]`.
    pub fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let rows = x.dims2()?.0;
        let y = match &self.weight {
            Weight::Dense(w) => x.matmul(w)?,
            Weight::Quantized(QMatMul::QTensor(q)) if rows >= DEQUANTIZE_MIN_ROWS => {
                x.matmul(&q.dequantize(x.device())?.t()?)?
            }
            Weight::Quantized(q) => q.forward(&x.contiguous()?)?,
        };
        match &self.bias {
            Some(b) => y.broadcast_add(b),
            None => Ok(y),
        }
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
