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

/// The arithmetic of CPU products with many activation rows (prompt prefill) for f32 and
/// f16 weights (`--btlm.prefill_precision`).
///
/// `bf16` multiplies them like bf16 weights on CPUs with AVX512-BF16: each chunk of the
/// weights is rounded to bf16 on the fly (the weights stay stored in f32/f16) and the
/// activations are rounded to bf16, as with `--btlm.dtype bf16`; about twice the f32
/// arithmetic peak. Decode (few rows) keeps the exact kernels. Other formats ignore it
/// (bf16 weights already run in bf16, q8_0/q4k in 8-bit integers).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Deserialize)]
#[cfg_attr(feature = "cli", derive(clap::ValueEnum))]
#[serde(rename_all = "lowercase")]
pub enum PrefillPrecision {
    /// The weights' own precision (f32 or f16 products in f32 arithmetic).
    #[default]
    Exact,
    /// bf16 products for many rows (AVX512-BF16; elsewhere exact, after one warning).
    Bf16,
}

impl fmt::Display for PrefillPrecision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            PrefillPrecision::Exact => "exact",
            PrefillPrecision::Bf16 => "bf16",
        })
    }
}

impl std::str::FromStr for PrefillPrecision {
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "exact" => Ok(PrefillPrecision::Exact),
            "bf16" => Ok(PrefillPrecision::Bf16),
            other => Err(format!(
                "prefill precision {other:?}: expected exact or bf16"
            )),
        }
    }
}

/// What the key/value cache stores on CPU (`--btlm.kv_dtype`). Attention reads every cached
/// position of every running sequence at each step, so at long contexts and full batches
/// the cache is read as much as the weights: f16 halves those bytes (and the memory a
/// sequence reserves), q8 about quarters them and q4 about eighths them; the arithmetic
/// stays f32 either way.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Deserialize)]
#[cfg_attr(feature = "cli", derive(clap::ValueEnum))]
#[serde(rename_all = "lowercase")]
pub enum KvDtype {
    /// q8 for quantized weights (q8_0, q4k), whose own rounding moves the logits far more
    /// than q8's does; f16 for half-precision weights; f32 for f32 weights (whose answers
    /// then stay those of the f32 reference).
    #[default]
    Auto,
    /// 32-bit floats.
    F32,
    /// IEEE half precision (keys and values rounded to nearest as they are cached).
    F16,
    /// int8 with an f32 scale per head and position (each head's key or value row rounded
    /// to the nearest of 255 steps of its largest magnitude): 84 bytes a row of 80 values
    /// where f16 takes 160. Under f32 weights answers move further from the f32 reference
    /// than with f16 (the error of a value is up to 1/254 of its row's largest); under
    /// quantized weights, the default there, no further than f16's (the weights' rounding
    /// dominates).
    Q8,
    /// 4-bit integers with an f32 scale per head and position (each row rounded to the
    /// nearest of 15 steps of its largest magnitude): 44 bytes a row of 80 values. Opt-in,
    /// and further from the reference than q8 (a value's error is up to 1/14 of its row's
    /// largest): for long contexts, where attention's reads weigh most.
    Q4,
}

impl fmt::Display for KvDtype {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            KvDtype::Auto => "auto",
            KvDtype::F32 => "f32",
            KvDtype::F16 => "f16",
            KvDtype::Q8 => "q8",
            KvDtype::Q4 => "q4",
        })
    }
}

impl std::str::FromStr for KvDtype {
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "auto" => Ok(KvDtype::Auto),
            "f32" => Ok(KvDtype::F32),
            "f16" => Ok(KvDtype::F16),
            "q8" => Ok(KvDtype::Q8),
            "q4" => Ok(KvDtype::Q4),
            other => Err(format!(
                "key/value cache dtype {other:?}: expected auto, f32, f16, q8 or q4"
            )),
        }
    }
}
