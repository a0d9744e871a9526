//! Numeric formats the model can run in.

use std::fmt;

use candle_core::DType;
use candle_core::quantized::GgmlDType;
use serde::Deserialize;

/// The floating-point type of dense weights and activations.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[cfg_attr(feature = "cli", derive(clap::ValueEnum))]
#[serde(rename_all = "lowercase")]
pub enum ModelDType {
    /// 32-bit floats (the default; required by the quantized path).
    #[default]
    F32,
    /// bfloat16 (the checkpoint's own type on the hub).
    Bf16,
    /// IEEE half precision.
    F16,
}

impl ModelDType {
    /// The candle dtype.
    pub fn dtype(self) -> DType {
        match self {
            ModelDType::F32 => DType::F32,
            ModelDType::Bf16 => DType::BF16,
            ModelDType::F16 => DType::F16,
        }
    }
}

impl fmt::Display for ModelDType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ModelDType::F32 => "f32",
            ModelDType::Bf16 => "bf16",
            ModelDType::F16 => "f16",
        })
    }
}

/// Weight quantization of the matrix multiplications (ggml block formats, CPU-friendly).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[cfg_attr(feature = "cli", derive(clap::ValueEnum))]
#[serde(rename_all = "snake_case")]
pub enum Quantization {
    /// Dense weights in the model dtype.
    #[default]
    None,
    /// 8-bit blocks of 32 weights (~1.06 bytes per weight); close to f32 quality.
    #[cfg_attr(feature = "cli", value(name = "q8_0"))]
    #[serde(rename = "q8_0")]
    Q8_0,
    /// 4-bit k-quant super-blocks of 256 weights (~0.56 bytes per weight).
    #[cfg_attr(feature = "cli", value(name = "q4k"))]
    #[serde(rename = "q4k")]
    Q4k,
}

impl Quantization {
    /// The ggml block type, or `None` for dense weights.
    pub fn ggml_dtype(self) -> Option<GgmlDType> {
        match self {
            Quantization::None => None,
            Quantization::Q8_0 => Some(GgmlDType::Q8_0),
            Quantization::Q4k => Some(GgmlDType::Q4K),
        }
    }
}

impl fmt::Display for Quantization {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Quantization::None => "none",
            Quantization::Q8_0 => "q8_0",
            Quantization::Q4k => "q4k",
        })
    }
}
