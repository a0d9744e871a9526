//! How a checkpoint becomes model weights: the run format chosen from [`LoadOptions`], and
//! a [`Loader`] the layers read their tensors through (in the manner of candle's
//! `VarBuilder`). On CPU, projection weights are packed for [`crate::kernels`] tensor by
//! tensor, straight from the checkpoint's dtype.

use std::sync::Arc;

use candle_core::{DType, Device, Tensor};

use crate::error::{BtlmError, Result};
use crate::kernels::{KernelPath, PackedMatrix, WeightFormat};
use crate::linear::pack_tensor;
use crate::options::Quantization;
use crate::weights::Checkpoint;

/// How to load a checkpoint.
///
/// On CPU, projection weights are stored in `dtype` (or quantized) and multiplied by the
/// crate's own kernels with f32 activations (bf16 weights take bf16-rounded activations,
/// like PyTorch bf16); everything else runs in f32. On CUDA the whole model runs in `dtype`.
#[derive(Debug, Clone)]
pub struct LoadOptions {
    /// Where the model runs.
    pub device: Device,
    /// Dtype of the weights (and of the activations on GPUs).
    pub dtype: DType,
    /// Quantize the matrix multiplications (CPU, requires `dtype` f32).
    pub quantization: Quantization,
    /// The CPU kernel path; `None`: [`KernelPath::active`] (the best this CPU runs, or
    /// `BTLM_KERNELS`).
    pub kernels: Option<KernelPath>,
}

impl Default for LoadOptions {
    fn default() -> Self {
        LoadOptions {
            device: Device::Cpu,
            dtype: DType::F32,
            quantization: Quantization::None,
            kernels: None,
        }
    }
}

/// Reads tensors from a checkpoint in the run format: activations, norms, biases and dense
/// weights in [`Loader::dtype`]; projection weights either dense (GPUs) or packed for the
/// CPU kernels ([`Loader::packed_format`]).
#[derive(Debug)]
pub(crate) struct Loader<'a> {
    ckpt: &'a Checkpoint,
    device: Device,
    dtype: DType,
    packed: Option<WeightFormat>,
    kernel_path: KernelPath,
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
        let packed = if opts.device.is_cpu() {
            Some(match (opts.quantization, opts.dtype) {
                (Quantization::Q8_0, _) => WeightFormat::Q8_0,
                (Quantization::Q4k, _) => WeightFormat::Q4K,
                (Quantization::None, DType::F32) => WeightFormat::F32,
                (Quantization::None, DType::BF16) => WeightFormat::Bf16,
                (Quantization::None, DType::F16) => WeightFormat::F16,
                (Quantization::None, other) => return Err(unsupported_dtype(other)),
            })
        } else {
            match opts.dtype {
                DType::F32 | DType::BF16 | DType::F16 => None,
                other => return Err(unsupported_dtype(other)),
            }
        };
        let kernel_path = match opts.kernels {
            Some(p) if p.supported() => p,
            Some(p) => {
                return Err(BtlmError::Device(format!(
                    "kernel path {p} is not supported by this CPU"
                )));
            }
            None => KernelPath::active().map_err(|e| BtlmError::Device(e.to_string()))?,
        };
        let dtype = if packed.is_some() {
            DType::F32
        } else {
            opts.dtype
        };
        Ok(Loader {
            ckpt,
            device: opts.device.clone(),
            dtype,
            packed,
            kernel_path,
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

    /// The packed format of projection weights (CPU), or `None` for dense candle tensors.
    pub(crate) fn packed_format(&self) -> Option<WeightFormat> {
        self.packed
    }

    /// The CPU kernel path the packed projections use.
    pub(crate) fn kernel_path(&self) -> KernelPath {
        self.kernel_path
    }

    /// The dtype an embedding table is kept in: it is only gathered from, so it stays in the
    /// weight dtype (f16 for quantized models); rows are converted after the lookup.
    pub(crate) fn table_dtype(&self) -> DType {
        match self.packed {
            None | Some(WeightFormat::F32) => self.dtype,
            Some(WeightFormat::Bf16) => DType::BF16,
            Some(WeightFormat::F16 | WeightFormat::Q8_0 | WeightFormat::Q4K) => DType::F16,
        }
    }

    /// The checkpoint tensor `name` (`[n_out, n_in]`, or `[n_in, n_out]` when `transposed`),
    /// packed in `format`.
    pub(crate) fn packed(
        &self,
        name: &str,
        format: WeightFormat,
        n_out: usize,
        n_in: usize,
        transposed: bool,
    ) -> Result<Arc<PackedMatrix>> {
        let shape = if transposed {
            [n_in, n_out]
        } else {
            [n_out, n_in]
        };
        self.packed_from(name, format, n_out, n_in, transposed, || {
            self.ckpt.require(name, &shape, &Device::Cpu)
        })
    }

    /// As [`Self::packed`], with the tensor obtained from `get` (only called when needed).
    pub(crate) fn packed_from(
        &self,
        name: &str,
        format: WeightFormat,
        n_out: usize,
        n_in: usize,
        transposed: bool,
        get: impl FnOnce() -> Result<Tensor>,
    ) -> Result<Arc<PackedMatrix>> {
        let t = get()?;
        let m = pack_tensor(&t, format, n_out, n_in, transposed)
            .map_err(|e| BtlmError::Checkpoint(format!("{name}: {e}")))?;
        Ok(Arc::new(m))
    }

    /// Reads a tensor that must exist with `shape`, converted to the activation dtype.
    pub(crate) fn tensor(&self, name: &str, shape: &[usize]) -> Result<Tensor> {
        Ok(self
            .ckpt
            .require(name, shape, &self.device)?
            .to_dtype(self.dtype)?)
    }
}

fn unsupported_dtype(dtype: DType) -> BtlmError {
    BtlmError::InvalidArgument {
        name: "--btlm.dtype",
        reason: format!("{dtype:?} is not supported (f32, bf16 or f16)"),
    }
}
