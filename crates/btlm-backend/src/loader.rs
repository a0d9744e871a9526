//! How a checkpoint becomes model weights: the run format chosen from [`LoadOptions`], and
//! a [`Loader`] the layers read their tensors through (in the manner of candle's
//! `VarBuilder`).

use candle_core::quantized::GgmlDType;
use candle_core::{DType, Device, Tensor};

use crate::error::{BtlmError, Result};
use crate::options::Quantization;
use crate::weights::Checkpoint;

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

/// Reads tensors from a checkpoint in the run format: activations, norms, biases and dense
/// weights in [`Loader::dtype`]; projection weights either dense or in a ggml format
/// ([`Loader::ggml`]: a quantized block type, or f16/bf16 on CPU).
#[derive(Debug)]
pub(crate) struct Loader<'a> {
    ckpt: &'a Checkpoint,
    device: Device,
    dtype: DType,
    ggml: Option<GgmlDType>,
    /// Whether `--btlm.quantize` asked for a block format (not only half-precision storage).
    quantized: bool,
    weight_dtype: DType,
}

impl<'a> Loader<'a> {
    /// Checks the options against each other and picks the run format.
    pub(crate) fn new(ckpt: &'a Checkpoint, opts: &LoadOptions) -> Result<Self> {
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
        let dtype = if ggml.is_some() {
            DType::F32
        } else {
            opts.dtype
        };
        Ok(Loader {
            ckpt,
            device: opts.device.clone(),
            dtype,
            ggml,
            quantized: quant.is_some(),
            weight_dtype: opts.dtype,
        })
    }

    /// The checkpoint read from.
    pub(crate) fn checkpoint(&self) -> &Checkpoint {
        self.ckpt
    }

    /// The device tensors are loaded onto.
    pub(crate) fn device(&self) -> &Device {
        &self.device
    }

    /// The activation dtype (also of norms, biases and dense weights).
    pub(crate) fn dtype(&self) -> DType {
        self.dtype
    }

    /// The ggml storage of projection weights, if any.
    pub(crate) fn ggml(&self) -> Option<GgmlDType> {
        self.ggml
    }

    /// The dtype an embedding table is kept in: it is only gathered from, so it stays in the
    /// weight dtype (f16 for quantized models); rows are converted after the lookup.
    pub(crate) fn table_dtype(&self) -> DType {
        match self.ggml {
            None => self.dtype,
            Some(_) if self.quantized => DType::F16,
            Some(_) => self.weight_dtype,
        }
    }

    /// `n` rounded up to a whole number of ggml blocks (the quantized path pads the MLP's
    /// inner size; padding is exact: padded outputs are zero and multiply zeros).
    pub(crate) fn padded(&self, n: usize) -> usize {
        match self.ggml {
            Some(q) => n.div_ceil(q.block_size()) * q.block_size(),
            None => n,
        }
    }

    /// Reads a tensor that must exist with `shape`, converted to the activation dtype.
    pub(crate) fn tensor(&self, name: &str, shape: &[usize]) -> Result<Tensor> {
        Ok(self
            .ckpt
            .require(name, shape, &self.device)?
            .to_dtype(self.dtype)?)
    }
}
