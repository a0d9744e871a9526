//! How a checkpoint becomes model weights: the run format chosen from [`LoadOptions`], and
//! a `Loader` the layers read their tensors through (in the manner of candle's
//! `VarBuilder`). On CPU, projection weights are packed for [`crate::kernels`] tensor by
//! tensor, straight from the checkpoint's dtype.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use candle_core::{DType, Device, Tensor};

use crate::error::{BtlmError, Result};
use crate::kernels::{KernelPath, PackedMatrix, Source, SourceData, WeightFormat};
use crate::kv_cache::KvLayout;
use crate::options::{KvDtype, PrefillPrecision, Quantization};
use crate::pack_cache::{self, CachedWeights, WeightCache};
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
    /// The arithmetic of f32/f16 products with many rows (prefill) on CPU; `Bf16` falls
    /// back to `Exact` with one warning where the kernel path cannot run it (see
    /// [`KernelPath::prefill_bf16_applies`]).
    pub prefill_precision: PrefillPrecision,
    /// Where quantized (q8_0, q4k) CPU weights are cached for the next start; the default is
    /// [`WeightCache::Off`] (the miner turns it on, see `--btlm.weight_cache`).
    pub weight_cache: WeightCache,
    /// What the key/value cache stores on CPU (see [`KvDtype`]); GPUs cache keys and values
    /// in `dtype`.
    pub kv_dtype: KvDtype,
}

impl Default for LoadOptions {
    fn default() -> Self {
        LoadOptions {
            device: Device::Cpu,
            dtype: DType::F32,
            quantization: Quantization::None,
            kernels: None,
            prefill_precision: PrefillPrecision::Exact,
            weight_cache: WeightCache::Off,
            kv_dtype: KvDtype::Auto,
        }
    }
}

/// The converted-weights cache of one load.
#[derive(Debug)]
struct CacheState {
    path: PathBuf,
    key: String,
    /// The file of an earlier load, if it matched.
    hit: Option<CachedWeights>,
    /// Matrices converted by this load (written to the cache when the load completes).
    fresh: Mutex<Vec<(String, Arc<PackedMatrix>)>>,
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
    prefill: PrefillPrecision,
    kv_layout: KvLayout,
    cache: Option<CacheState>,
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
        let prefill = prefill_precision(opts.prefill_precision, packed, kernel_path);
        let dtype = if packed.is_some() {
            DType::F32
        } else {
            opts.dtype
        };
        let kv_layout = kv_layout(opts.kv_dtype, packed, dtype);
        // Only quantization is slow enough to be worth a second copy on disk (repacking
        // f32/bf16/f16 runs at memory speed).
        let cache = packed.filter(|f| f.quantized()).and_then(|format| {
            let path = pack_cache::cache_path(&opts.weight_cache, ckpt.files(), format)?;
            let key = match pack_cache::source_key(ckpt.files()) {
                Ok(k) => k,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot hash the checkpoint: no weight cache");
                    return None;
                }
            };
            let hit = CachedWeights::open(&path, format, &key);
            match &hit {
                Some(c) => tracing::info!(path = %path.display(), matrices = c.len(), "using cached converted weights"),
                None => tracing::info!(path = %path.display(), "converting weights (cached for the next start)"),
            }
            Some(CacheState {
                path,
                key,
                hit,
                fresh: Mutex::new(Vec::new()),
            })
        });
        Ok(Loader {
            ckpt,
            device: opts.device.clone(),
            dtype,
            packed,
            kernel_path,
            prefill,
            kv_layout,
            cache,
        })
    }

    /// Ends the load: writes the matrices this load converted to the weight cache (when
    /// it is on and nothing came from it). A cache that cannot be written is only logged.
    pub(crate) fn finish(&self) {
        let Some(cache) = &self.cache else { return };
        let Some(format) = self.packed else { return };
        if cache.hit.is_some() {
            return;
        }
        let fresh = std::mem::take(&mut *cache.fresh.lock().unwrap_or_else(|e| e.into_inner()));
        if fresh.is_empty() {
            return;
        }
        let t = std::time::Instant::now();
        match pack_cache::write(&cache.path, format, &cache.key, &fresh) {
            Ok(()) => tracing::info!(
                path = %cache.path.display(),
                seconds = t.elapsed().as_secs_f64(),
                "converted weights cached"
            ),
            Err(e) => tracing::warn!(
                path = %cache.path.display(),
                error = %e,
                "cannot write the converted-weights cache"
            ),
        }
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

    /// How the key/value cache stores keys and values.
    pub(crate) fn kv_layout(&self) -> KvLayout {
        self.kv_layout
    }

    /// The packed format of projection weights (CPU), or `None` for dense candle tensors.
    pub(crate) fn packed_format(&self) -> Option<WeightFormat> {
        self.packed
    }

    /// The CPU kernel path the packed projections use.
    pub(crate) fn kernel_path(&self) -> KernelPath {
        self.kernel_path
    }

    /// The arithmetic of the packed projections' products with many rows (already checked
    /// against the kernel path).
    pub(crate) fn prefill_precision(&self) -> PrefillPrecision {
        self.prefill
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
        if let Some(m) = self
            .cache
            .as_ref()
            .and_then(|c| c.hit.as_ref())
            .and_then(|hit| hit.get(name, n_out, n_in))
            .filter(|m| m.format() == format)
        {
            return Ok(Arc::new(m));
        }
        let t = get()?;
        let m = pack_tensor(&t, format, n_out, n_in, transposed)
            .map_err(|e| BtlmError::Checkpoint(format!("{name}: {e}")))?;
        let m = Arc::new(m);
        if let Some(c) = &self.cache
            && c.hit.is_none()
        {
            c.fresh
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push((name.to_string(), m.clone()));
        }
        Ok(m)
    }

    /// Reads a tensor that must exist with `shape`, converted to the activation dtype.
    pub(crate) fn tensor(&self, name: &str, shape: &[usize]) -> Result<Tensor> {
        Ok(self
            .ckpt
            .require(name, shape, &self.device)?
            .to_dtype(self.dtype)?)
    }
}

/// The prefill precision a load runs with: `asked`, except that [`PrefillPrecision::Bf16`]
/// falls back to exact arithmetic (one warning) for f32/f16 weights on a kernel path or CPU
/// without the converted bf16 products; other formats ignore it.
fn prefill_precision(
    asked: PrefillPrecision,
    packed: Option<WeightFormat>,
    path: KernelPath,
) -> PrefillPrecision {
    match packed {
        Some(f @ (WeightFormat::F32 | WeightFormat::F16))
            if asked == PrefillPrecision::Bf16 && !path.prefill_bf16_applies(f) =>
        {
            tracing::warn!(
                kernels = %path,
                "--btlm.prefill_precision bf16 needs AVX512-BF16 (kernel path avx512 or amx): \
                 prefill runs in exact {f} arithmetic"
            );
            PrefillPrecision::Exact
        }
        _ => asked,
    }
}

/// The key/value cache layout of `asked` (see [`KvDtype`]): the CPU attention path reads
/// f32, f16, int8 or 4-bit caches of weights in `packed`; the tensor path (a GPU, `packed`
/// `None`) caches in the weights' `dtype`, so any other `--btlm.kv_dtype` is ignored there
/// with one warning rather than silently.
fn kv_layout(asked: KvDtype, packed: Option<WeightFormat>, dtype: DType) -> KvLayout {
    if let Some(format) = packed {
        return cpu_kv_layout(asked, format);
    }
    let honoured = matches!(
        (asked, dtype),
        (KvDtype::Auto, _) | (KvDtype::F32, DType::F32) | (KvDtype::F16, DType::F16)
    );
    if !honoured {
        tracing::warn!(
            "--btlm.kv_dtype {asked} applies to the CPU path: on a GPU keys and values are \
             cached in --btlm.dtype ({dtype:?})"
        );
    }
    KvLayout::Dense(dtype)
}

/// The key/value cache layout of `asked` for CPU weights in `format` (see [`KvDtype`]).
fn cpu_kv_layout(asked: KvDtype, format: WeightFormat) -> KvLayout {
    match (asked, format) {
        (KvDtype::F32, _) | (KvDtype::Auto, WeightFormat::F32) => KvLayout::Dense(DType::F32),
        (KvDtype::F16, _) | (KvDtype::Auto, WeightFormat::Bf16 | WeightFormat::F16) => {
            KvLayout::Dense(DType::F16)
        }
        (KvDtype::Q8, _) | (KvDtype::Auto, WeightFormat::Q8_0 | WeightFormat::Q4K) => KvLayout::Q8,
        (KvDtype::Q4, _) => KvLayout::Q4,
    }
}

fn unsupported_dtype(dtype: DType) -> BtlmError {
    BtlmError::InvalidArgument {
        name: "--btlm.dtype",
        reason: format!("{dtype:?} is not supported (f32, bf16 or f16)"),
    }
}

/// Packs a CPU tensor holding `W` (`[n_out, n_in]`, or `[n_in, n_out]` when `transposed`)
/// in its own dtype (no f32 copy of bf16 checkpoints).
pub(crate) fn pack_tensor(
    t: &Tensor,
    format: WeightFormat,
    n_out: usize,
    n_in: usize,
    transposed: bool,
) -> Result<PackedMatrix> {
    let t = t.contiguous()?;
    let (storage, layout) = t.storage_and_layout();
    let candle_core::Storage::Cpu(cpu) = &*storage else {
        return Err(BtlmError::Device(
            "weights are packed from CPU tensors".into(),
        ));
    };
    let (start, end) = layout
        .contiguous_offsets()
        .ok_or_else(|| BtlmError::Checkpoint("non-contiguous weight tensor".into()))?;
    let data = match t.dtype() {
        DType::F32 => SourceData::F32(&cpu.as_slice::<f32>()?[start..end]),
        DType::BF16 => SourceData::Bf16(&cpu.as_slice::<half::bf16>()?[start..end]),
        DType::F16 => SourceData::F16(&cpu.as_slice::<half::f16>()?[start..end]),
        other => {
            return Err(BtlmError::Checkpoint(format!(
                "weights of dtype {other:?} (f32, bf16 or f16 expected)"
            )));
        }
    };
    let src = Source {
        data,
        n_out,
        n_in,
        transposed,
    };
    PackedMatrix::pack(format, &src).map_err(|e| BtlmError::Checkpoint(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `--btlm.prefill_precision bf16` stays on only where the converted bf16 products run
    /// (f32/f16 weights on an AVX-512 path with AVX512-BF16); it falls back to exact for
    /// f32/f16 elsewhere and is kept (and ignored by the kernels) for other formats.
    #[test]
    fn bf16_prefill_falls_back_to_exact_where_it_cannot_run() {
        let bf16 = PrefillPrecision::Bf16;
        for path in KernelPath::ALL {
            for format in WeightFormat::ALL {
                let got = prefill_precision(bf16, Some(format), path);
                let dense = matches!(format, WeightFormat::F32 | WeightFormat::F16);
                let want = if dense && !path.prefill_bf16_applies(format) {
                    PrefillPrecision::Exact
                } else {
                    bf16
                };
                assert_eq!(got, want, "{path} {format}");
                let exact = prefill_precision(PrefillPrecision::Exact, Some(format), path);
                assert_eq!(exact, PrefillPrecision::Exact, "{path} {format}");
            }
            assert_eq!(prefill_precision(bf16, None, path), bf16, "GPU: unused");
        }
        for format in [WeightFormat::F32, WeightFormat::F16] {
            assert!(!KernelPath::Avx2.prefill_bf16_applies(format));
            assert!(!KernelPath::Scalar.prefill_bf16_applies(format));
        }
    }

    /// `--btlm.kv_dtype` chooses the cache of CPU weights; a GPU caches in the weights'
    /// dtype whatever it asks (its tensor path reads no int8 or 4-bit rows).
    #[test]
    fn the_cache_dtype_applies_to_cpu_weights_and_gpus_cache_in_theirs() {
        let asked = [
            KvDtype::Auto,
            KvDtype::F32,
            KvDtype::F16,
            KvDtype::Q8,
            KvDtype::Q4,
        ];
        for kv in asked {
            for format in WeightFormat::ALL {
                assert_eq!(
                    kv_layout(kv, Some(format), DType::F32),
                    cpu_kv_layout(kv, format),
                    "{kv} {format}"
                );
            }
            for dtype in [DType::F32, DType::BF16, DType::F16] {
                assert_eq!(
                    kv_layout(kv, None, dtype),
                    KvLayout::Dense(dtype),
                    "{kv} {dtype:?}"
                );
            }
        }
        // `auto`: the weights' precision decides; an explicit choice holds for any weights.
        for (format, auto) in [
            (WeightFormat::F32, KvLayout::Dense(DType::F32)),
            (WeightFormat::F16, KvLayout::Dense(DType::F16)),
            (WeightFormat::Bf16, KvLayout::Dense(DType::F16)),
            (WeightFormat::Q8_0, KvLayout::Q8),
            (WeightFormat::Q4K, KvLayout::Q8),
        ] {
            assert_eq!(cpu_kv_layout(KvDtype::Auto, format), auto, "{format}");
            assert_eq!(
                cpu_kv_layout(KvDtype::F32, format),
                KvLayout::Dense(DType::F32)
            );
            assert_eq!(
                cpu_kv_layout(KvDtype::F16, format),
                KvLayout::Dense(DType::F16)
            );
            assert_eq!(cpu_kv_layout(KvDtype::Q8, format), KvLayout::Q8);
            assert_eq!(cpu_kv_layout(KvDtype::Q4, format), KvLayout::Q4);
        }
    }
}
