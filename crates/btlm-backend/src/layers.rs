//! The layers of a BTLM block: layer norm, SwiGLU MLP, and the block itself
//! (`h += attn(ln_1(h))`, `h += mlp(ln_2(h))`). Activations are `[rows, n_embd]`.

use std::sync::{Arc, Mutex};

use candle_core::{DType, Device, Tensor};

use crate::attention::{Attention, AttentionPart};
use crate::config::Config;
use crate::elementwise::{self, ElementwisePath};
use crate::error::Result;
use crate::linear::{Projection, packed_into, with_f32_slice};
use crate::loader::Loader;
use crate::step_profile::{Section, timed};
use crate::team::Team;

/// Layer normalisation over the last dimension.
#[derive(Debug, Clone)]
pub(crate) struct LayerNorm {
    weight: Tensor,
    bias: Tensor,
    eps: f32,
    /// The weight and bias as f32 values, for f32 CPU tensors.
    host: Option<Arc<(Vec<f32>, Vec<f32>)>>,
}

impl LayerNorm {
    /// Loads `{prefix}.weight` and `{prefix}.bias`, both `[n]`.
    pub(crate) fn load(ld: &Loader<'_>, prefix: &str, n: usize, eps: f64) -> Result<Self> {
        Self::new(
            ld.tensor(&format!("{prefix}.weight"), &[n])?,
            ld.tensor(&format!("{prefix}.bias"), &[n])?,
            eps,
        )
    }

    /// A layer norm of `weight` and `bias` (`[n]` each).
    fn new(weight: Tensor, bias: Tensor, eps: f64) -> Result<Self> {
        let host = if weight.device().is_cpu()
            && weight.dtype() == DType::F32
            && bias.dtype() == DType::F32
        {
            Some(Arc::new((weight.to_vec1::<f32>()?, bias.to_vec1::<f32>()?)))
        } else {
            None
        };
        Ok(LayerNorm {
            weight,
            bias,
            eps: eps as f32,
            host,
        })
    }

    /// Normalises the f32 rows `x` (rows of `n` values) into `out` (same size): the
    /// arithmetic of [`Self::forward`].
    pub(crate) fn rows_into(&self, x: &[f32], out: &mut [f32]) -> candle_core::Result<()> {
        let Some(host) = &self.host else {
            candle_core::bail!("layer norm of f32 rows needs f32 CPU weights");
        };
        let (weight, bias) = (&host.0, &host.1);
        let n = weight.len();
        if n == 0 || x.len() != out.len() || !x.len().is_multiple_of(n) {
            candle_core::bail!(
                "layer norm of {n} values applied to {} values into {}",
                x.len(),
                out.len()
            );
        }
        layer_norm_rows(x, weight, bias, self.eps, out);
        Ok(())
    }

    /// [`Self::rows_into`] on `team`, in tasks of [`ROWS_PER_TASK`] rows (a few rows, as in
    /// decode, on this thread): `h ← h + y` first when `add` is `Some(y)` (the residual sum,
    /// as [`add_into`]), then `out ← norm(h)`.
    pub(crate) fn rows_on(
        &self,
        h: &mut [f32],
        add: Option<&[f32]>,
        out: &mut [f32],
        team: &Team<'_>,
    ) -> candle_core::Result<()> {
        let Some(host) = &self.host else {
            candle_core::bail!("layer norm of f32 rows needs f32 CPU weights");
        };
        let (weight, bias) = (&host.0, &host.1);
        let n = weight.len();
        if n == 0
            || h.len() != out.len()
            || !h.len().is_multiple_of(n)
            || add.is_some_and(|y| y.len() != h.len())
        {
            candle_core::bail!(
                "layer norm of {n} values applied to {} values into {}",
                h.len(),
                out.len()
            );
        }
        let chunk = ROWS_PER_TASK * n;
        let tasks: Vec<Mutex<(&mut [f32], &mut [f32])>> = h
            .chunks_mut(chunk)
            .zip(out.chunks_mut(chunk))
            .map(Mutex::new)
            .collect();
        team.for_each(tasks.len(), &|i| {
            let mut task = tasks[i].lock().unwrap_or_else(|e| e.into_inner());
            let (h, out) = &mut *task;
            if let Some(y) = add {
                add_into(h, &y[i * chunk..][..h.len()]);
            }
            layer_norm_rows(h, weight, bias, self.eps, out);
        });
        Ok(())
    }

    /// Normalises each row of `x`. f32 rows on the CPU are normalised on this thread (the
    /// arithmetic of candle's `layer_norm`, which forks rayon's pool for more than one row).
    pub(crate) fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let x = x.contiguous()?;
        if !(x.device().is_cpu() && x.dtype() == DType::F32 && self.weight.dtype() == DType::F32) {
            return candle_nn::ops::layer_norm(&x, &self.weight, &self.bias, self.eps);
        }
        let (rows, n) = x.dims2()?;
        let mut y = vec![0f32; rows * n];
        with_f32_slice(&x, |xs| self.rows_into(xs, &mut y))??;
        Tensor::from_vec(y, (rows, n), &Device::Cpu)
    }
}

/// Rows whose sums [`layer_norm_rows`] runs side by side.
const INTERLEAVED_ROWS: usize = 4;
const _: () = assert!(
    INTERLEAVED_ROWS == 4,
    "layer_norm_rows matches groups of 1 to 4 rows"
);

/// `dst = (src − mean) / √(var + eps) · weight + bias` for each row of `src` (rows of
/// `weight.len()` values), as candle's CPU `layer_norm` computes it (f32 sums in order,
/// variance as `E[x²] − mean²`). The sums are two chains of dependent adds a row, so up to
/// [`INTERLEAVED_ROWS`] rows run theirs side by side: each row's sums keep their order (the
/// same bits as a row alone) while the chains overlap. The callers check the lengths.
fn layer_norm_rows(src: &[f32], weight: &[f32], bias: &[f32], eps: f32, dst: &mut [f32]) {
    let n = weight.len();
    debug_assert!(n > 0 && src.len() == dst.len() && src.len().is_multiple_of(n));
    let group = INTERLEAVED_ROWS * n;
    for (src, dst) in src.chunks(group).zip(dst.chunks_mut(group)) {
        let (sum, sum2) = match src.len() / n {
            4 => row_sums::<4>(src, n),
            3 => row_sums::<3>(src, n),
            2 => row_sums::<2>(src, n),
            _ => row_sums::<1>(src, n),
        };
        for (r, (src, dst)) in src.chunks_exact(n).zip(dst.chunks_exact_mut(n)).enumerate() {
            let len = n as f32;
            let mean = sum[r] / len;
            let var = sum2[r] / len - mean * mean;
            let inv_std = (var + eps).sqrt().recip();
            for (((d, &s), &w), &b) in dst.iter_mut().zip(src).zip(weight).zip(bias) {
                *d = (s - mean) * inv_std * w + b;
            }
        }
    }
}

/// The sums of the values and of their squares of the first `R` rows of `n` values in `src`
/// (zeros past `R`), each in order.
// Position by position across the rows: the loop is the interleaving.
#[allow(clippy::needless_range_loop)]
fn row_sums<const R: usize>(
    src: &[f32],
    n: usize,
) -> ([f32; INTERLEAVED_ROWS], [f32; INTERLEAVED_ROWS]) {
    let rows: [&[f32]; R] = std::array::from_fn(|r| &src[r * n..(r + 1) * n]);
    let (mut sum, mut sum2) = ([0f32; INTERLEAVED_ROWS], [0f32; INTERLEAVED_ROWS]);
    for k in 0..n {
        for r in 0..R {
            let v = rows[r][k];
            sum[r] += v;
            sum2[r] += v * v;
        }
    }
    (sum, sum2)
}

/// The SwiGLU MLP: `c_proj(c_fc(x) ⊙ silu(c_fc2(x)))`.
#[derive(Debug, Clone)]
pub(crate) struct Mlp {
    c_fc: Projection,
    c_fc2: Projection,
    c_proj: Projection,
    /// The code of SwiGLU on CPU rows.
    elementwise: ElementwisePath,
}

impl Mlp {
    /// Its projections.
    pub(crate) fn projections(&self) -> [&Projection; 3] {
        [&self.c_fc, &self.c_fc2, &self.c_proj]
    }

    /// Loads `{prefix}.c_fc`, `.c_fc2` and `.c_proj`.
    pub(crate) fn load(ld: &Loader<'_>, prefix: &str, cfg: &Config) -> Result<Self> {
        let (e, inner) = (cfg.n_embd, cfg.n_inner);
        Ok(Mlp {
            c_fc: Projection::load_conv1d(ld, &format!("{prefix}.c_fc"), (e, inner))?,
            c_fc2: Projection::load_conv1d(ld, &format!("{prefix}.c_fc2"), (e, inner))?,
            c_proj: Projection::load_conv1d(ld, &format!("{prefix}.c_proj"), (inner, e))?,
            elementwise: ElementwisePath::for_kernels(ld.kernel_path()),
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
            swiglu_on(self.elementwise, &up, &gate, team)?
        } else {
            (up * candle_nn::ops::silu(&gate)?)?
        };
        self.c_proj.forward_on(&gated, team)
    }
}

impl Mlp {
    /// [`Self::forward`] on f32 CPU rows with packed weights: `x` (`rows × n_embd` values)
    /// into `y` (`rows × n_embd`), through the step's buffers `up` and `gate` (`rows ×
    /// n_inner` each). Both up-projections share one activation preparation and one
    /// parallel section of `team`.
    pub(crate) fn forward_rows(
        &self,
        x: &[f32],
        rows: usize,
        team: &Team<'_>,
        up: &mut [f32],
        gate: &mut [f32],
        y: &mut [f32],
    ) -> candle_core::Result<()> {
        timed(Section::MlpUpProducts, || {
            packed_into(
                &mut [(&self.c_fc, &mut *up), (&self.c_fc2, &mut *gate)],
                x,
                rows,
                team,
            )
        })?;
        timed(Section::SwiGlu, || {
            swiglu_into(self.elementwise, up, gate, team)
        })?;
        timed(Section::MlpDownProduct, || {
            packed_into(&mut [(&self.c_proj, y)], up, rows, team)
        })
    }
}

/// `up ← up ⊙ silu(gate)` in chunks over `team` ([`elementwise::swiglu`]).
fn swiglu_into(
    path: ElementwisePath,
    up: &mut [f32],
    gate: &[f32],
    team: &Team<'_>,
) -> candle_core::Result<()> {
    if up.len() != gate.len() {
        candle_core::bail!("SwiGLU halves of {} and {} values", up.len(), gate.len());
    }
    let chunks: Vec<Mutex<&mut [f32]>> = up.chunks_mut(SWIGLU_CHUNK).map(Mutex::new).collect();
    team.for_each(chunks.len(), &|i| {
        let mut out = chunks[i].lock().unwrap_or_else(|e| e.into_inner());
        let base = i * SWIGLU_CHUNK;
        let n = out.len();
        elementwise::swiglu(path, &mut out, &gate[base..base + n]);
    });
    Ok(())
}

/// Values per task of [`swiglu_on`].
const SWIGLU_CHUNK: usize = 2048;

/// `up ⊙ silu(gate)` for f32 CPU tensors of one shape, in chunks over `team` (see
/// [`swiglu_into`]).
fn swiglu_on(
    path: ElementwisePath,
    up: &Tensor,
    gate: &Tensor,
    team: &Team<'_>,
) -> candle_core::Result<Tensor> {
    if up.dims() != gate.dims() {
        candle_core::bail!(
            "SwiGLU halves of shapes {:?} and {:?}",
            up.dims(),
            gate.dims()
        );
    }
    let (up, gate) = (up.contiguous()?, gate.contiguous()?);
    let mut y = with_f32_slice(&up, <[f32]>::to_vec)?;
    with_f32_slice(&gate, |g| swiglu_into(path, &mut y, g, team))??;
    Tensor::from_vec(y, up.dims(), &Device::Cpu)
}

/// The activations of one step on the CPU path ([`Block::forward_rows`]), reused by every
/// block.
pub(crate) struct Workspace {
    /// Rows the buffers hold.
    rows: usize,
    /// `n_embd` and `n_inner`.
    e: usize,
    inner: usize,
    /// A layer norm's output, `rows × n_embd`.
    x: Vec<f32>,
    /// `c_attn`'s output, `rows × 3·n_embd`.
    qkv: Vec<f32>,
    /// The attention's output, `rows × n_embd`.
    att: Vec<f32>,
    /// A sub-layer's output before the residual sum, `rows × n_embd`.
    y: Vec<f32>,
    /// `c_fc`'s output (then the gated product), `rows × n_inner`.
    up: Vec<f32>,
    /// `c_fc2`'s output, `rows × n_inner`.
    gate: Vec<f32>,
}

impl Workspace {
    /// Buffers for `rows` rows of a model of `cfg`'s widths.
    pub(crate) fn new(rows: usize, cfg: &Config) -> Self {
        let (e, inner) = (cfg.n_embd, cfg.n_inner);
        Workspace {
            rows,
            e,
            inner,
            x: vec![0.0; rows * e],
            qkv: vec![0.0; rows * 3 * e],
            att: vec![0.0; rows * e],
            y: vec![0.0; rows * e],
            up: vec![0.0; rows * inner],
            gate: vec![0.0; rows * inner],
        }
    }
}

/// `h ← h + y` (the residual sum, as candle adds tensors).
fn add_into(h: &mut [f32], y: &[f32]) {
    for (a, &b) in h.iter_mut().zip(y) {
        *a += b;
    }
}

/// Rows per task of the row-wise work of a step on its team (layer norms, residual sums).
const ROWS_PER_TASK: usize = 4;

/// [`add_into`] for rows of `n` values on `team`, in tasks of [`ROWS_PER_TASK`] rows.
fn add_on(h: &mut [f32], y: &[f32], n: usize, team: &Team<'_>) {
    let chunk = ROWS_PER_TASK * n.max(1);
    let tasks: Vec<Mutex<&mut [f32]>> = h.chunks_mut(chunk).map(Mutex::new).collect();
    team.for_each(tasks.len(), &|i| {
        let mut h = tasks[i].lock().unwrap_or_else(|e| e.into_inner());
        let len = h.len();
        add_into(&mut h, &y[i * chunk..][..len]);
    });
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
    /// Its projections: attention's, then the MLP's.
    pub(crate) fn projections(&self) -> impl Iterator<Item = &Projection> {
        self.attn
            .projections()
            .into_iter()
            .chain(self.mlp.projections())
    }

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

    /// [`Self::forward`] on f32 CPU rows with packed weights, in place: `h` holds `rows`
    /// rows of `n_embd` values; `ws` (made for at least as many rows) holds the
    /// intermediate activations, so a step allocates them once for all blocks.
    pub(crate) fn forward_rows(
        &self,
        h: &mut [f32],
        rows: usize,
        parts: &mut [AttentionPart<'_>],
        team: &Team<'_>,
        ws: &mut Workspace,
    ) -> candle_core::Result<()> {
        let n = rows * ws.e;
        if rows > ws.rows || h.len() != n {
            candle_core::bail!(
                "block of {} values per row applied to {} values in {rows} rows \
                 (buffers for {})",
                ws.e,
                h.len(),
                ws.rows
            );
        }
        let (x, y) = (&mut ws.x[..n], &mut ws.y[..n]);
        let qkv = &mut ws.qkv[..3 * n];
        let att = &mut ws.att[..n];
        timed(Section::LayerNorm, || self.ln_1.rows_on(h, None, x, team))?;
        self.attn.forward_rows(x, rows, parts, team, qkv, att, y)?;
        // The residual sum and the second layer norm in one section of the team.
        timed(Section::LayerNorm, || {
            self.ln_2.rows_on(h, Some(y), x, team)
        })?;
        let m = rows * ws.inner;
        let (up, gate) = (&mut ws.up[..m], &mut ws.gate[..m]);
        self.mlp.forward_rows(x, rows, team, up, gate, y)?;
        timed(Section::Residual, || add_on(h, y, ws.e, team));
        Ok(())
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
        for path in [ElementwisePath::Scalar, ElementwisePath::Avx2] {
            for threads in [1, 2, 3] {
                let got = team::run(threads, |t| swiglu_on(path, &up, &gate, t))
                    .and_then(|y| y.flatten_all()?.to_vec1::<f32>())
                    .expect("team");
                if path == ElementwisePath::Scalar {
                    assert_eq!(got, want, "{threads} threads");
                } else {
                    // The polynomial `exp` (see `elementwise`): a few ulp.
                    for (g, w) in got.iter().zip(&want) {
                        assert!((g - w).abs() <= 1e-6 * w.abs() + 1e-30, "{g} vs {w}");
                    }
                }
            }
        }
        let other = values(0.5).narrow(1, 0, 5).expect("narrow");
        let path = ElementwisePath::Scalar;
        assert!(team::run(2, |t| swiglu_on(path, &up, &other, t)).is_err());
    }

    #[test]
    fn layer_norm_and_residual_sum_on_a_team_equal_them_on_one_thread() {
        let n = 300;
        let rows = 2 * ROWS_PER_TASK + 1;
        let h: Vec<f32> = (0..rows * n)
            .map(|i| (i as f32 * 0.31).sin() * 2.0)
            .collect();
        let y: Vec<f32> = (0..rows * n)
            .map(|i| (i as f32 * 0.17).cos() + 0.5)
            .collect();
        let w = Tensor::from_vec(
            (0..n).map(|i| 1.0 - i as f32 / n as f32).collect(),
            n,
            &Device::Cpu,
        )
        .expect("w");
        let b = Tensor::from_vec((0..n).map(|i| i as f32 * 0.02).collect(), n, &Device::Cpu)
            .expect("b");
        let ln = LayerNorm::new(w, b, 1e-5).expect("layer norm");
        let mut want_h = h.clone();
        add_into(&mut want_h, &y);
        let mut want = vec![0f32; rows * n];
        ln.rows_into(&want_h, &mut want).expect("rows");
        let mut plain = vec![0f32; rows * n];
        ln.rows_into(&h, &mut plain).expect("rows");
        for threads in [1, 2, 3] {
            team::run(threads, |t| {
                let (mut hh, mut out) = (h.clone(), vec![f32::NAN; rows * n]);
                ln.rows_on(&mut hh, None, &mut out, t).expect("norm");
                assert_eq!((&hh, &out), (&h, &plain), "{threads} threads");
                ln.rows_on(&mut hh, Some(&y), &mut out, t)
                    .expect("add and norm");
                assert_eq!((&hh, &out), (&want_h, &want), "{threads} threads");
                let mut hh = h.clone();
                add_on(&mut hh, &y, n, t);
                assert_eq!(hh, want_h, "{threads} threads");
                assert!(ln.rows_on(&mut hh, Some(&y[1..]), &mut out, t).is_err());
            });
        }
    }

    /// Rows normalised side by side give each row's bits alone, whatever the group's size.
    #[test]
    fn interleaved_rows_are_each_row_alone() {
        let n = 257;
        let weight: Vec<f32> = (0..n).map(|i| 0.5 + (i as f32 * 0.11).sin()).collect();
        let bias: Vec<f32> = (0..n).map(|i| (i as f32 * 0.07).cos() * 0.1).collect();
        for rows in 1..=2 * INTERLEAVED_ROWS + 1 {
            // Rows of different scales, so that a row's sums mixed into another's show.
            let x: Vec<f32> = (0..rows * n)
                .map(|i| (i as f32 * 0.37).sin() * (1.0 + (i / n) as f32) + (i / n) as f32)
                .collect();
            let mut together = vec![0f32; rows * n];
            layer_norm_rows(&x, &weight, &bias, 1e-5, &mut together);
            for (r, got) in together.chunks_exact(n).enumerate() {
                let mut alone = vec![0f32; n];
                layer_norm_rows(&x[r * n..(r + 1) * n], &weight, &bias, 1e-5, &mut alone);
                let row = &x[r * n..(r + 1) * n];
                let mean = row.iter().fold(0f32, |s, &v| s + v) / n as f32;
                let var = row.iter().fold(0f32, |s, &v| s + v * v) / n as f32 - mean * mean;
                let inv_std = (var + 1e-5f32).sqrt().recip();
                let want: Vec<f32> = row
                    .iter()
                    .zip(&weight)
                    .zip(&bias)
                    .map(|((&v, &w), &b)| (v - mean) * inv_std * w + b)
                    .collect();
                assert_eq!(got, &alone[..], "row {r} of {rows}");
                assert_eq!(got, &want[..], "row {r} of {rows}");
            }
        }
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
        let ln = LayerNorm::new(w.clone(), b.clone(), 1e-5).expect("layer norm");
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
