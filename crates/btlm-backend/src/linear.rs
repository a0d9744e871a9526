//! Projections: `y = x · W (+ b)`, on CPU with the packed [`crate::kernels`] (every weight
//! format), on GPUs with candle's dense matrix product in the model dtype.
//!
//! The model only sees [`Projection::forward`] on `[rows, in]` activations (one row per
//! token of every sequence in a step), so how the product is computed — which kernel, which
//! storage — stays behind this interface.

use std::sync::Arc;

use candle_core::{DType, Device, Tensor};

use crate::error::Result;
use crate::kernels::{
    self, Acts, KernelPath, PackedMatrix, PrefillPrecision, TileProduct, WeightFormat,
};
use crate::loader::Loader;
use crate::team::Team;

/// The weight matrix of a projection.
#[derive(Debug, Clone)]
enum Weight {
    /// `[in, out]` candle tensor (may be a transposed view): GPUs.
    Dense(Tensor),
    /// Packed `[out, in]` tiles multiplied by the CPU kernels.
    Packed(Packed),
}

/// Packed `[out, in]` tiles multiplied by the CPU kernels of `path`, products with many rows
/// in the arithmetic `prefill` (see [`kernels::matmul_with`]).
#[derive(Debug, Clone)]
struct Packed {
    matrix: Arc<PackedMatrix>,
    path: KernelPath,
    prefill: PrefillPrecision,
}

impl Packed {
    /// Whether a product of `rows` rows runs other kernels than the tile kernels.
    fn many_rows(&self, rows: usize) -> bool {
        self.path
            .many_rows_with(self.matrix.format(), self.prefill, rows)
    }

    /// Whether a product of `rows` rows runs on the wide f32 kernels (see
    /// [`KernelPath::wide_f32`]), on its f32 rows as given.
    fn wide_f32(&self, rows: usize) -> bool {
        self.path.wide_f32(self.matrix.format(), self.prefill, rows)
    }

    /// The padded inputs of the bf16 activations of a product of `rows` rows on the wide
    /// kernels (see [`KernelPath::wide_k_pad`]), `None` if it runs other kernels.
    fn wide_k_pad(&self, rows: usize) -> Option<usize> {
        self.path
            .wide_k_pad(self.matrix.format(), self.prefill, rows, self.matrix.n_in())
    }
}

/// A linear map `[rows, in] → [rows, out]` with an optional bias.
#[derive(Debug, Clone)]
pub struct Projection {
    weight: Weight,
    bias: Option<Tensor>,
    /// The bias as f32 values, fused into the packed kernels' output.
    bias_f32: Option<Arc<Vec<f32>>>,
}

impl Projection {
    /// Loads a GPT-2 `Conv1D` (`{prefix}.weight: [in, out]`, `{prefix}.bias: [out]`).
    pub(crate) fn load_conv1d(
        ld: &Loader<'_>,
        prefix: &str,
        (n_in, n_out): (usize, usize),
    ) -> Result<Self> {
        let name = format!("{prefix}.weight");
        match ld.packed_format() {
            None => {
                let w = ld.tensor(&name, &[n_in, n_out])?;
                let bias = ld.tensor(&format!("{prefix}.bias"), &[n_out])?;
                Ok(Projection {
                    weight: Weight::Dense(w),
                    bias: Some(bias),
                    bias_f32: None,
                })
            }
            Some(format) => {
                let matrix = ld.packed(&name, format, n_out, n_in, true)?;
                let bias = ld.tensor(&format!("{prefix}.bias"), &[n_out])?;
                Self::packed(ld, matrix, Some(bias))
            }
        }
    }

    /// An `nn.Linear`-style `[out, in]` matrix without bias (the output head).
    pub(crate) fn from_out_in(ld: &Loader<'_>, name: &str, w_out_in: &Tensor) -> Result<Self> {
        match ld.packed_format() {
            None => Ok(Projection {
                weight: Weight::Dense(w_out_in.to_dtype(ld.dtype())?.t()?),
                bias: None,
                bias_f32: None,
            }),
            Some(format) => {
                let (n_out, n_in) = w_out_in.dims2()?;
                let matrix =
                    ld.packed_from(name, format, n_out, n_in, false, || Ok(w_out_in.clone()))?;
                Self::packed(ld, matrix, None)
            }
        }
    }

    fn packed(ld: &Loader<'_>, matrix: Arc<PackedMatrix>, bias: Option<Tensor>) -> Result<Self> {
        let bias_f32 = match &bias {
            Some(b) => Some(Arc::new(b.to_dtype(DType::F32)?.to_vec1::<f32>()?)),
            None => None,
        };
        Ok(Projection {
            weight: Weight::Packed(Packed {
                matrix,
                path: ld.kernel_path(),
                prefill: ld.prefill_precision(),
            }),
            bias: None,
            bias_f32,
        })
    }

    /// The packed weights and the kernel path, on CPU.
    pub fn packed_matrix(&self) -> Option<(&PackedMatrix, KernelPath)> {
        match &self.weight {
            Weight::Packed(w) => Some((&w.matrix, w.path)),
            Weight::Dense(_) => None,
        }
    }

    /// Whether each row of a product gets the same bits whatever the other rows of the call
    /// (see [`KernelPath::rows_independent`]); never assumed for dense (GPU) weights, whose
    /// matrix-product library may pick another algorithm for another shape.
    pub fn rows_independent(&self) -> bool {
        match &self.weight {
            Weight::Packed(w) => w.path.rows_independent(w.matrix.format(), w.prefill),
            Weight::Dense(_) => false,
        }
    }

    /// From how many rows on each row of a product gets the same bits whatever other rows
    /// share it, provided they all number at least as many
    /// ([`KernelPath::same_route_from`]); `None` for dense (GPU) weights.
    pub fn same_route_from(&self) -> Option<usize> {
        match &self.weight {
            Weight::Packed(w) => Some(w.path.same_route_from(w.matrix.format(), w.prefill)),
            Weight::Dense(_) => None,
        }
    }

    /// `x · W + b` for `x: [rows, in]`, giving `[rows, out]` (packed weights: on a team of
    /// as many threads as rayon's pool has, made for this call).
    pub fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        crate::team::run(rayon::current_num_threads(), |team| {
            self.forward_on(x, team)
        })
    }

    /// [`Self::forward`] with the tile-kernel products split over `team` (rayon's pool for
    /// products of many rows, see [`TileProduct::new`]).
    pub(crate) fn forward_on(&self, x: &Tensor, team: &Team<'_>) -> candle_core::Result<Tensor> {
        let mut ys = Self::forward_all(&[self], x, team)?;
        Ok(ys.swap_remove(0))
    }

    /// Every projection of `projections` applied to the same `x` (they take the same number
    /// of inputs), the tile-kernel products of all in one parallel section of `team`.
    pub(crate) fn forward_all(
        projections: &[&Projection],
        x: &Tensor,
        team: &Team<'_>,
    ) -> candle_core::Result<Vec<Tensor>> {
        let (rows, _) = x.dims2()?;
        let is_packed = |p: &&Projection| matches!(p.weight, Weight::Packed(_));
        let mut outs: Vec<Vec<f32>> = projections
            .iter()
            .map(|p| match &p.weight {
                Weight::Packed(w) => vec![0f32; rows * w.matrix.n_out()],
                Weight::Dense(_) => Vec::new(),
            })
            .collect();
        if projections.iter().any(is_packed) {
            let xf = x.to_dtype(DType::F32)?.contiguous()?;
            with_f32_slice(&xf, |xs| -> candle_core::Result<()> {
                let mut products: Vec<(&Projection, &mut [f32])> = projections
                    .iter()
                    .zip(&mut outs)
                    .filter(|(p, _)| is_packed(p))
                    .map(|(p, y)| (*p, y.as_mut_slice()))
                    .collect();
                packed_into(&mut products, xs, rows, team)
            })??;
        }
        projections
            .iter()
            .zip(outs)
            .map(|(p, y)| match &p.weight {
                Weight::Packed(w) => Tensor::from_vec(y, (rows, w.matrix.n_out()), &Device::Cpu),
                Weight::Dense(w) => {
                    let y = x.matmul(w)?;
                    match &p.bias {
                        Some(b) => y.broadcast_add(b),
                        None => Ok(y),
                    }
                }
            })
            .collect()
    }
}

/// Every packed projection of `products` applied to the same `x` (`rows × n_in` f32
/// values), each into its output (`rows × n_out`): the activations are prepared once per
/// weight format, their rows spread over `team`, and the tile-kernel products of all run in
/// one parallel section of `team` (products of many rows run on rayon's pool, see
/// [`KernelPath::many_rows`]).
pub(crate) fn packed_into(
    products: &mut [(&Projection, &mut [f32])],
    x: &[f32],
    rows: usize,
    team: &Team<'_>,
) -> candle_core::Result<()> {
    let for_each = |n: usize, task: &(dyn Fn(usize) + Sync)| team.for_each(n, task);
    // Activations per (format, padded inputs) that a tile product needs.
    let mut prepared: Vec<(WeightFormat, usize, Acts<'_>)> = Vec::new();
    for (p, y) in products.iter() {
        let Weight::Packed(w) = &p.weight else {
            candle_core::bail!("packed_into takes packed projections only");
        };
        let matrix = &w.matrix;
        let n_in = matrix.n_in();
        if x.len() != rows * n_in || y.len() != rows * matrix.n_out() {
            candle_core::bail!(
                "projection of {} inputs and {} outputs applied to {rows} rows of {} values \
                 into {}",
                n_in,
                matrix.n_out(),
                x.len() / rows.max(1),
                y.len()
            );
        }
        // The activations of the tile kernels, or the bf16 ones of the wide kernels.
        let needs = match w.wide_k_pad(rows) {
            Some(k_pad) => Some((WeightFormat::Bf16, k_pad)),
            None if !w.many_rows(rows) => Some((matrix.format(), matrix.k_pad())),
            None => None,
        };
        if let Some((format, k_pad)) = needs
            && !prepared.iter().any(|(f, k, _)| (*f, *k) == (format, k_pad))
        {
            let acts = Acts::prepare_on(format, x, rows, n_in, k_pad, &for_each);
            prepared.push((format, k_pad, acts));
        }
    }
    let mut tiles = Vec::new();
    for (p, y) in products.iter_mut() {
        let Weight::Packed(w) = &p.weight else {
            continue;
        };
        let bias = p.bias_f32.as_deref().map(Vec::as_slice);
        if w.wide_f32(rows) {
            // The wide f32 kernels, on this team (the input's rows as they are).
            let acts = Acts::F32 { x };
            kernels::matmul_wide_on(
                w.path, w.prefill, &w.matrix, &acts, rows, bias, y, &for_each,
            )
            .map_err(kernel_error)?;
            continue;
        }
        if let Some(k_pad) = w.wide_k_pad(rows) {
            // The wide kernels, on this team (the input's bf16 rows shared).
            let Some((_, _, acts)) = prepared
                .iter()
                .find(|(f, k, _)| (*f, *k) == (WeightFormat::Bf16, k_pad))
            else {
                candle_core::bail!("bf16 activations expected");
            };
            kernels::matmul_wide_on(w.path, w.prefill, &w.matrix, acts, rows, bias, y, &for_each)
                .map_err(kernel_error)?;
            continue;
        }
        let (format, k_pad) = (w.matrix.format(), w.matrix.k_pad());
        match prepared
            .iter()
            .find(|(f, k, _)| (*f, *k) == (format, k_pad))
        {
            Some((_, _, acts)) if !w.many_rows(rows) => {
                let product =
                    TileProduct::with_acts(w.path, &w.matrix, acts, rows, bias, y, team.threads())
                        .map_err(kernel_error)?
                        .ok_or_else(|| {
                            candle_core::Error::Msg("tile kernels expected".into()).bt()
                        })?;
                tiles.push(product);
            }
            // Other kernels than the tile kernels: on this team where they take it (the
            // tile unit's), else parallel on rayon's pool.
            _ => kernels::matmul_with_on(w.path, w.prefill, &w.matrix, x, rows, bias, y, &for_each)
                .map_err(kernel_error)?,
        }
    }
    match tiles.as_slice() {
        [] => {}
        [one] => team.broadcast(&|member| one.work(member)),
        all => team.broadcast(&|member| all.iter().for_each(|p| p.work(member))),
    }
    Ok(())
}

/// A kernel error as a candle error.
fn kernel_error(e: kernels::KernelError) -> candle_core::Error {
    candle_core::Error::Msg(e.to_string()).bt()
}

/// Calls `f` with the values of a contiguous f32 CPU tensor.
pub(crate) fn with_f32_slice<T>(x: &Tensor, f: impl FnOnce(&[f32]) -> T) -> candle_core::Result<T> {
    let (storage, layout) = x.storage_and_layout();
    let candle_core::Storage::Cpu(cpu) = &*storage else {
        candle_core::bail!("packed projections run on CPU tensors");
    };
    let (start, end) = layout
        .contiguous_offsets()
        .ok_or_else(|| candle_core::Error::Msg("non-contiguous activations".into()).bt())?;
    Ok(f(&cpu.as_slice::<f32>()?[start..end]))
}
