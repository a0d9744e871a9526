//! Causal self-attention with ALiBi position biases and a key/value cache.
//!
//! f32 activations on the CPU (every CPU model) attend in plain Rust, one task per
//! sequence and head on the step's team of threads; other devices use candle's tensor operations
//! with a precomputed mask and ALiBi bias.

mod cpu;

use std::sync::Mutex;

use candle_core::{DType, Device, Tensor};

use cpu::{AttnPath, Head, HeadRows, KvElem, Nibbles};

use crate::config::{Config, PositionEmbeddingType};
use crate::error::Result;
use crate::kv_cache::{BlockMut, KvLayout, LayerKv, WriteBlock};
use crate::linear::{Projection, packed_into, with_f32_slice};
use crate::loader::Loader;
use crate::step_profile::{Section, timed};
use crate::team::Team;

thread_local! {
    /// Each thread's scores buffer for [`Head::attend`], kept across heads and steps (a
    /// decode step attends heads × layers × sequences: 8 192 allocations at 8 sequences
    /// before); it keeps its largest size, 16 queries × the context (512 KiB at 8 192).
    static SCORES: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Whether activations of `dtype` on `device` attend on the CPU path (see the module
/// documentation); the others need an [`attention_bias`] per sequence.
pub(crate) fn attends_on_cpu(device: &Device, dtype: DType) -> bool {
    device.is_cpu() && dtype == DType::F32
}

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
    heads: Heads,
}

/// The attention between the projections: `q | k | v` rows in, one output row per query.
#[derive(Debug, Clone)]
struct Heads {
    n_head: usize,
    head_dim: usize,
    scale: f64,
    /// ALiBi slopes, one per head (`None`: learned positions, a plain causal mask).
    slopes: Option<Vec<f32>>,
    /// The code of the CPU path.
    path: AttnPath,
    /// How the CPU path stores cached keys and values: f32, f16, or int8 or 4-bit rows with
    /// their f32 scale after them ([`cpu::q8_row`], [`cpu::q4_row`]).
    kv_layout: KvLayout,
}

impl Attention {
    /// Its projections.
    pub(crate) fn projections(&self) -> [&Projection; 2] {
        [&self.c_attn, &self.c_proj]
    }

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
            heads: Heads {
                n_head: cfg.n_head,
                head_dim: cfg.head_dim(),
                scale,
                slopes: (cfg.position_embedding_type == PositionEmbeddingType::Alibi).then(|| {
                    alibi_slopes(cfg.n_head)
                        .into_iter()
                        .map(|s| s as f32)
                        .collect()
                }),
                path: AttnPath::for_kernels(ld.kernel_path()),
                kv_layout: ld.kv_layout(),
            },
        })
    }

    /// `x`: `[rows, e]`, the rows of several sequences one after the other; `parts`: for
    /// each sequence, in row order, its rows, the bias of its queries (see
    /// [`attention_bias`]; not needed on the CPU path) and its block cache. Each sequence
    /// attends to its own keys only. Returns `[rows, e]`.
    pub(crate) fn forward(
        &self,
        x: &Tensor,
        parts: &mut [AttentionPart<'_>],
        team: &Team<'_>,
    ) -> candle_core::Result<Tensor> {
        let qkv = self.c_attn.forward_on(x, team)?;
        let y = self.heads.forward(&qkv, parts, team)?;
        self.c_proj.forward_on(&y, team)
    }
}

impl Attention {
    /// [`Self::forward`] on f32 CPU rows with packed weights: `x` (`rows × e` values) into
    /// `y` (`rows × e`), through the step's buffers `qkv` (`rows × 3e`) and `att`
    /// (`rows × e`).
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn forward_rows(
        &self,
        x: &[f32],
        rows: usize,
        parts: &mut [AttentionPart<'_>],
        team: &Team<'_>,
        qkv: &mut [f32],
        att: &mut [f32],
        y: &mut [f32],
    ) -> candle_core::Result<()> {
        timed(Section::QkvProduct, || {
            packed_into(&mut [(&self.c_attn, &mut *qkv)], x, rows, team)
        })?;
        timed(Section::Attention, || {
            self.heads.attend_rows(qkv, rows, parts, team, att)
        })?;
        timed(Section::AttnOutProduct, || {
            packed_into(&mut [(&self.c_proj, y)], att, rows, team)
        })
    }
}

impl Heads {
    /// `qkv: [rows, 3e]` of the sequences of `parts` (see [`Attention::forward`]) → `[rows, e]`.
    fn forward(
        &self,
        qkv: &Tensor,
        parts: &mut [AttentionPart<'_>],
        team: &Team<'_>,
    ) -> candle_core::Result<Tensor> {
        if attends_on_cpu(qkv.device(), qkv.dtype()) {
            return self.attend_on_cpu(qkv, parts, team);
        }
        let mut outputs = Vec::with_capacity(parts.len());
        for part in parts.iter_mut() {
            let rows = qkv.narrow(0, part.start, part.len)?;
            outputs.push(self.attend(&rows, part)?);
        }
        match outputs.len() {
            1 => Ok(outputs.swap_remove(0)),
            _ => Tensor::cat(&outputs, 0),
        }
    }

    /// The `[t, e]` queries, keys or values (`i` = 0, 1, 2) of `qkv: [t, 3e]` as `[h, t, d]`.
    fn heads(&self, qkv: &Tensor, i: usize) -> candle_core::Result<Tensor> {
        let (t, e3) = qkv.dims2()?;
        let e = e3 / 3;
        qkv.narrow(1, i * e, e)?
            .reshape((t, self.n_head, self.head_dim))?
            .transpose(0, 1)?
            .contiguous()
    }

    /// The CPU path of [`Self::forward`] for f32 `qkv: [rows, 3e]` (see
    /// [`Self::attend_rows`]).
    fn attend_on_cpu(
        &self,
        qkv: &Tensor,
        parts: &mut [AttentionPart<'_>],
        team: &Team<'_>,
    ) -> candle_core::Result<Tensor> {
        let (rows, e3) = qkv.dims2()?;
        let mut out = vec![0f32; rows * (e3 / 3)];
        with_f32_slice(&qkv.contiguous()?, |qkv| {
            self.attend_rows(qkv, rows, parts, team, &mut out)
        })??;
        Tensor::from_vec(out, (rows, e3 / 3), &Device::Cpu)
    }

    /// Writes the keys (`i` = 1) or values (`i` = 2) of rows `start..start + t` of the f32
    /// `qkv` rows (`[rows, 3e]`) into `block` (a cache block of [`LayerKv::room`], `[h,
    /// capacity, …]` in the cache's dtype) at positions `at..at + t`, converted in place.
    fn write_heads(
        &self,
        qkv: &[f32],
        (start, t, i): (usize, usize, usize),
        block: &Tensor,
        at: usize,
    ) -> candle_core::Result<()> {
        let (h, d) = (self.n_head, self.head_dim);
        let (e, e3) = (h * d, 3 * h * d);
        let (bh, capacity, w) = block.dims3()?;
        if bh != h || at + t > capacity || w != self.kv_layout.columns(d) {
            candle_core::bail!(
                "{t} rows of {h} heads of {d} at position {at} do not fit a cache block of {:?}",
                block.dims()
            );
        }
        // `put(place, piece)` for each head's `d` values of each row, row by row (a row's
        // heads are next to each other in `qkv`; head by head, each read strode a whole
        // row), `place` = head · capacity + at + row: the piece's row in the block.
        let each = |put: &mut dyn FnMut(usize, &[f32])| {
            for row in 0..t {
                let src = &qkv[(start + row) * e3 + i * e..][..e];
                for (head, piece) in src.chunks_exact(d).enumerate() {
                    put(head * capacity + at + row, piece);
                }
            }
        };
        let layout = self.kv_layout;
        let path = self.path;
        block.inplace_op1(&WriteBlock(&|values| {
            match (layout, values) {
                (KvLayout::Dense(DType::F32), BlockMut::F32(out)) => {
                    each(&mut |place, piece| out[place * d..][..d].copy_from_slice(piece))
                }
                (KvLayout::Dense(DType::F16), BlockMut::F16(out)) => {
                    use half::slice::HalfFloatSliceExt;
                    each(&mut |place, piece| out[place * d..][..d].convert_from_f32_slice(piece))
                }
                (KvLayout::Q8, BlockMut::U8(out)) => {
                    each(&mut |place, piece| cpu::q8_row(path, piece, &mut out[place * w..][..w]))
                }
                (KvLayout::Q4, BlockMut::U8(out)) => {
                    each(&mut |place, piece| cpu::q4_row(path, piece, &mut out[place * w..][..w]))
                }
                (other, _) => {
                    candle_core::bail!("the CPU attention path has no {other} cache of this block")
                }
            }
            Ok(())
        }))
    }

    /// Attention of the f32 rows `qkv` (`rows × 3e` values) of the sequences of `parts`
    /// into `out` (`rows × e`): appends every sequence's keys and values to its cache,
    /// then runs one task per sequence and head on `team`, a sequence's heads claimed in
    /// runs ([`Team::for_each_in_runs`]).
    pub(crate) fn attend_rows(
        &self,
        qkv: &[f32],
        rows: usize,
        parts: &mut [AttentionPart<'_>],
        team: &Team<'_>,
        out: &mut [f32],
    ) -> candle_core::Result<()> {
        let (h, d) = (self.n_head, self.head_dim);
        let (e, e3) = (h * d, 3 * h * d);
        if qkv.len() != rows * e3 || out.len() != rows * e {
            candle_core::bail!(
                "attention of {rows} rows: {} values in and {} out, {h} heads of {d}",
                qkv.len(),
                out.len()
            );
        }
        let mut next_row = 0;
        for part in parts.iter() {
            if part.start != next_row {
                candle_core::bail!("attention parts must cover the rows in order");
            }
            next_row += part.len;
        }
        if next_row != rows {
            candle_core::bail!("attention parts cover {next_row} of {rows} rows");
        }
        // Every sequence's new keys and values into its own cache: room made for them on
        // this thread (the memory is the cache's already, unless it has none reserved), then
        // its keys and its values each converted straight into their places by a task of
        // their own (a lone prompt's on two threads: on one they were a twelfth of a 1
        // 024-token prompt's time, session 55), then the positions counted. On the calling
        // thread alone, the others waiting, they were most of an eight-sequence decode
        // step's serial work (5.1 → 3.4 ms a step outside the team's sections, Zen 4,
        // session 19).
        let spans: Vec<(usize, usize)> = parts.iter().map(|p| (p.start, p.len)).collect();
        let (columns, dtype) = (self.kv_layout.columns(d), self.kv_layout.dtype());
        let rooms = parts
            .iter_mut()
            .map(|part| {
                part.kv
                    .room((h, part.len, columns), dtype, &Device::Cpu, part.reserve)
            })
            .collect::<candle_core::Result<Vec<_>>>()?;
        let failed = Mutex::new(None);
        team.for_each(2 * rooms.len(), &|task| {
            let (p, which) = (task / 2, task % 2);
            let (keys, values, at) = &rooms[p];
            let block = if which == 0 { keys } else { values };
            let (start, len) = spans[p];
            if let Err(e) = self.write_heads(qkv, (start, len, 1 + which), block, *at) {
                *failed.lock().unwrap_or_else(|e| e.into_inner()) = Some(e);
            }
        });
        if let Some(e) = failed.into_inner().unwrap_or_else(|e| e.into_inner()) {
            return Err(e);
        }
        let cached = parts
            .iter_mut()
            .zip(&rooms)
            .map(|(part, (_, _, at))| part.kv.advance(part.len).map(|(k, v)| (k, v, *at)))
            .collect::<candle_core::Result<Vec<_>>>()?;
        let storages: Vec<_> = cached
            .iter()
            .map(|(k, v, _)| (k.storage_and_layout(), v.storage_and_layout()))
            .collect();
        let views = storages
            .iter()
            .map(|((ks, kl), (vs, vl))| CachedPair::new((ks, kl), (vs, vl), self.kv_layout, d))
            .collect::<candle_core::Result<Vec<_>>>()?;
        // Per sequence `[h][t][d]`, the sequences one after the other (one row per
        // sequence, the decode case: already `[t][h·d]`).
        let reorder = parts.iter().any(|p| p.len > 1);
        let mut scratch = if reorder {
            vec![0f32; rows * e]
        } else {
            Vec::new()
        };
        {
            let target: &mut [f32] = if reorder { &mut scratch } else { &mut *out };
            let mut slots = Vec::with_capacity(parts.len() * h);
            let mut rest = target;
            for part in parts.iter() {
                let (mine, tail) = rest.split_at_mut(part.len * e);
                slots.extend(mine.chunks_mut(part.len * d).map(Mutex::new));
                rest = tail;
            }
            team.for_each_in_runs(slots.len(), &|task| {
                let (p, head) = (task / h, task % h);
                let part = &parts[p];
                let mut slot = slots[task].lock().unwrap_or_else(|e| e.into_inner());
                let offset = cached[p].2;
                match &views[p] {
                    CachedPair::F32(k, v) => {
                        self.attend_head(qkv, part, offset, head, (k, v), &mut slot)
                    }
                    CachedPair::F16(k, v) => {
                        self.attend_head(qkv, part, offset, head, (k, v), &mut slot)
                    }
                    CachedPair::Q8(k, v) => {
                        self.attend_head(qkv, part, offset, head, (k, v), &mut slot)
                    }
                    CachedPair::Q4(k, v) => {
                        self.attend_head(qkv, part, offset, head, (k, v), &mut slot)
                    }
                }
            });
        }
        // `[h][t][d]` → `[t][h·d]` per sequence.
        if reorder {
            for part in parts.iter() {
                let (t, base) = (part.len, part.start * e);
                for head in 0..h {
                    for qi in 0..t {
                        let src = base + (head * t + qi) * d;
                        let dst = base + qi * e + head * d;
                        out[dst..dst + d].copy_from_slice(&scratch[src..src + d]);
                    }
                }
            }
        }
        Ok(())
    }

    /// Head `head` of the sequence of `part` (its queries in the f32 rows `qkv`, `offset`
    /// positions cached before them) into `out` (`part.len × d`).
    fn attend_head<T: KvElem>(
        &self,
        qkv: &[f32],
        part: &AttentionPart<'_>,
        offset: usize,
        head: usize,
        (keys, values): (&CachedHeads<'_, T>, &CachedHeads<'_, T>),
        out: &mut [f32],
    ) {
        let (d, e3) = (self.head_dim, 3 * self.n_head * self.head_dim);
        let one = Head {
            queries: &qkv[part.start * e3 + head * d..],
            q_stride: e3,
            t: part.len,
            offset,
            keys: keys.head(head),
            values: values.head(head),
            scale: self.scale as f32,
            slope: self.slopes.as_ref().map(|s| s[head]),
        };
        SCORES.with_borrow_mut(|scores| one.attend(self.path, out, scores));
    }

    /// Attention of one sequence's `t` query rows (`qkv: [t, 3e]`), giving `[t, e]`.
    fn attend(&self, qkv: &Tensor, part: &mut AttentionPart<'_>) -> candle_core::Result<Tensor> {
        let (t, e3) = qkv.dims2()?;
        let e = e3 / 3;
        let Some(bias) = part.bias else {
            candle_core::bail!("attention off the CPU path needs the bias of its queries");
        };
        let (q, k, v) = (
            self.heads(qkv, 0)?,
            self.heads(qkv, 1)?,
            self.heads(qkv, 2)?,
        );
        let (k, v) = part.kv.append(&k, &v, part.reserve)?;
        let scores = q.matmul(&k.t()?)?.to_dtype(DType::F32)?;
        let scores = (scores * self.scale)?.broadcast_add(bias)?;
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
    /// Mask and ALiBi bias of its queries, `[h, len, positions]` (off the CPU path only,
    /// see [`attends_on_cpu`]).
    pub(crate) bias: Option<&'a Tensor>,
    /// Its cache for this block.
    pub(crate) kv: &'a mut LayerKv,
    /// Capacity to allocate if the cache is still empty.
    pub(crate) reserve: usize,
}

/// The keys and values of one sequence's block cache, in the dtype they are stored in.
enum CachedPair<'a> {
    F32(CachedHeads<'a, f32>, CachedHeads<'a, f32>),
    F16(CachedHeads<'a, half::f16>, CachedHeads<'a, half::f16>),
    /// int8 rows with their scales ([`cpu::q8_row`]).
    Q8(CachedHeads<'a, u8>, CachedHeads<'a, u8>),
    /// 4-bit rows with their scales ([`cpu::q4_row`]).
    Q4(CachedHeads<'a, Nibbles>, CachedHeads<'a, Nibbles>),
}

impl<'a> CachedPair<'a> {
    /// The keys and values of a cache of rows of `d` values stored in `kv` (the bytes of
    /// a `u8` cache are int8 or 4-bit rows as `kv` says).
    fn new(
        (keys, key_layout): (&'a candle_core::Storage, &candle_core::Layout),
        (values, value_layout): (&'a candle_core::Storage, &candle_core::Layout),
        kv: KvLayout,
        d: usize,
    ) -> candle_core::Result<Self> {
        use candle_core::{CpuStorage, Storage};
        match (keys, values) {
            (Storage::Cpu(CpuStorage::F32(k)), Storage::Cpu(CpuStorage::F32(v))) => {
                Ok(CachedPair::F32(
                    CachedHeads::new(k, key_layout, d)?,
                    CachedHeads::new(v, value_layout, d)?,
                ))
            }
            (Storage::Cpu(CpuStorage::F16(k)), Storage::Cpu(CpuStorage::F16(v))) => {
                Ok(CachedPair::F16(
                    CachedHeads::new(k, key_layout, d)?,
                    CachedHeads::new(v, value_layout, d)?,
                ))
            }
            (Storage::Cpu(CpuStorage::U8(k)), Storage::Cpu(CpuStorage::U8(v)))
                if kv == KvLayout::Q4 =>
            {
                Ok(CachedPair::Q4(
                    CachedHeads::new(Nibbles::slice(k), key_layout, d)?,
                    CachedHeads::new(Nibbles::slice(v), value_layout, d)?,
                ))
            }
            (Storage::Cpu(CpuStorage::U8(k)), Storage::Cpu(CpuStorage::U8(v))) => {
                Ok(CachedPair::Q8(
                    CachedHeads::new(k, key_layout, d)?,
                    CachedHeads::new(v, value_layout, d)?,
                ))
            }
            (k, v) => candle_core::bail!(
                "the CPU attention path needs f32, f16, int8 or 4-bit CPU caches, got {:?} keys and {:?} values",
                k.dtype(),
                v.dtype()
            ),
        }
    }
}

/// One head's keys or values of a sequence's cache, `[h, positions, d + tail]` in a CPU
/// storage (any strides with contiguous rows; the tail: [`KvElem::TAIL`]).
struct CachedHeads<'a, T> {
    data: &'a [T],
    start: usize,
    head_stride: usize,
    position_stride: usize,
    positions: usize,
    d: usize,
}

impl<'a, T: KvElem> CachedHeads<'a, T> {
    /// Rows of `d` values in `data` as `layout` lays them out.
    fn new(data: &'a [T], layout: &candle_core::Layout, d: usize) -> candle_core::Result<Self> {
        let (&[_, positions, width], &[head_stride, position_stride, 1]) =
            (layout.dims(), layout.stride())
        else {
            candle_core::bail!(
                "cache of shape {:?} and strides {:?}",
                layout.dims(),
                layout.stride()
            );
        };
        if width != T::elems(d) + T::TAIL {
            candle_core::bail!(
                "cache rows of {width} elements for {d} values ({} expected)",
                T::elems(d) + T::TAIL
            );
        }
        Ok(CachedHeads {
            data,
            start: layout.start_offset(),
            head_stride,
            position_stride,
            positions,
            d,
        })
    }

    /// Head `head`'s rows.
    fn head(&self, head: usize) -> HeadRows<'a, T> {
        HeadRows {
            data: &self.data[self.start + head * self.head_stride..],
            stride: self.position_stride,
            positions: self.positions,
            d: self.d,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kv_cache::Cache;
    use crate::team;

    /// Runs steps of two sequences (`lens`: tokens of each per step) through the tensor
    /// path (with [`attention_bias`]) and through the CPU path on a team of `threads`,
    /// returning both outputs of every step.
    fn both_paths(heads: &Heads, lens: &[[usize; 2]], threads: usize) -> Vec<(Vec<f32>, Vec<f32>)> {
        let e = heads.n_head * heads.head_dim;
        let mut tensor_caches = [Cache::new(1, 0), Cache::new(1, 16)];
        let mut cpu_caches = tensor_caches.clone();
        let mut outputs = Vec::new();
        for (step, lens) in lens.iter().enumerate() {
            let rows: usize = lens.iter().sum();
            // Values f16 holds exactly: an f16 cache stores them as they are, so both
            // cache dtypes must give the tensor path's outputs.
            let qkv: Vec<f32> = (0..rows * 3 * e)
                .map(|i| half::f16::from_f32(((i * 7 + step * 13) as f32 * 0.61).sin()).to_f32())
                .collect();
            let qkv = Tensor::from_vec(qkv, (rows, 3 * e), &Device::Cpu).expect("qkv");
            let offsets = tensor_caches.each_ref().map(|c| c.seq_len());
            let biases: Vec<Tensor> = lens
                .iter()
                .zip(offsets)
                .map(|(&t, offset)| {
                    attention_bias(
                        heads.n_head,
                        heads.slopes.as_deref(),
                        offset,
                        t,
                        &Device::Cpu,
                    )
                    .expect("bias")
                })
                .collect();
            let mut tensor_out = Vec::new();
            let mut start = 0;
            for ((cache, &t), bias) in tensor_caches.iter_mut().zip(lens).zip(&biases) {
                let reserve = cache.reserve();
                let mut part = AttentionPart {
                    start,
                    len: t,
                    bias: Some(bias),
                    kv: &mut cache.layers[0],
                    reserve,
                };
                let mine = qkv.narrow(0, start, t).expect("rows");
                let y = heads.attend(&mine, &mut part).expect("tensor path");
                tensor_out.extend(y.flatten_all().and_then(|y| y.to_vec1::<f32>()).expect("y"));
                cache.advance(t);
                start += t;
            }
            let mut parts = Vec::new();
            let mut start = 0;
            for (cache, &t) in cpu_caches.iter_mut().zip(lens) {
                let reserve = cache.reserve();
                parts.push(AttentionPart {
                    start,
                    len: t,
                    bias: None,
                    kv: &mut cache.layers[0],
                    reserve,
                });
                start += t;
            }
            let cpu_out = team::run(threads, |team| heads.forward(&qkv, &mut parts, team))
                .and_then(|y| y.flatten_all()?.to_vec1::<f32>())
                .expect("cpu path");
            drop(parts);
            for (cache, &t) in cpu_caches.iter_mut().zip(lens) {
                cache.advance(t);
                assert_eq!(
                    cache.layers[0].dtype(),
                    Some(heads.kv_layout.dtype()),
                    "cache dtype"
                );
            }
            outputs.push((tensor_out, cpu_out));
        }
        outputs
    }

    /// Largest difference between the tensor and the CPU path over every step of `lens`,
    /// on teams of each of `threads` threads.
    fn worst_difference(heads: &Heads, lens: &[[usize; 2]], threads: &[usize]) -> f32 {
        let mut worst = 0f32;
        for &threads in threads {
            for (step, (want, got)) in both_paths(heads, lens, threads).iter().enumerate() {
                assert_eq!(want.len(), got.len(), "step {step}");
                let diff = want
                    .iter()
                    .zip(got)
                    .map(|(a, b)| (a - b).abs())
                    .fold(0f32, f32::max);
                worst = worst.max(diff);
            }
        }
        worst
    }

    fn test_heads(n_head: usize, head_dim: usize, alibi: bool, path: AttnPath) -> Heads {
        Heads {
            n_head,
            head_dim,
            scale: 1.0 / head_dim as f64,
            slopes: alibi.then(|| alibi_slopes(n_head).into_iter().map(|s| s as f32).collect()),
            path,
            kv_layout: KvLayout::Dense(DType::F32),
        }
    }

    fn attn_paths() -> Vec<AttnPath> {
        use crate::kernels::KernelPath;
        let mut paths = vec![AttnPath::Scalar];
        for kernels in [KernelPath::Avx2, KernelPath::Avx512] {
            let path = AttnPath::for_kernels(kernels);
            if !paths.contains(&path) {
                paths.push(path);
            }
        }
        paths
    }

    #[test]
    fn cpu_attention_equals_the_tensor_path() {
        // Rows of 12 (no AVX2 kernel) and of 16; prompts of different lengths, then decode
        // rows and pieces of several rows.
        let lens = [[3, 5], [1, 1], [4, 1], [1, 2]];
        for head_dim in [12, 16] {
            for alibi in [true, false] {
                for path in attn_paths() {
                    let heads = test_heads(4, head_dim, alibi, path);
                    let diff = worst_difference(&heads, &lens, &[1, 2, 3]);
                    assert!(diff < 1e-5, "d {head_dim}, alibi {alibi}, {path:?}: {diff}");
                }
            }
        }
    }

    #[test]
    fn half_int8_and_four_bit_caches_hold_the_same_attention() {
        // f16: keys and values that f16 holds exactly (see `both_paths`), so an f16 cache
        // must give what the tensor path gives with f32 caches. int8: values in [-1, 1],
        // each cached within 1/254 of its row's largest, so the scores move by at most
        // d · 1/254 · scale (= 1/254 here) and every output, a weighted mean of values, by
        // little more than a step. 4-bit: likewise within 1/14 of the largest (measured:
        // up to 0.071). Every path, short and long context; the cache must be stored in the
        // dtype asked.
        for (layout, tolerance) in [
            (KvLayout::Dense(DType::F16), 1e-5),
            (KvLayout::Q8, 0.02),
            (KvLayout::Q4, 0.1),
        ] {
            for lens in [
                &[[3, 5], [1, 1], [4, 1], [1, 2]][..],
                &[[256, 77], [1, 1], [3, 1]],
            ] {
                for path in attn_paths() {
                    for head_dim in [12, 80] {
                        let heads = Heads {
                            kv_layout: layout,
                            ..test_heads(2, head_dim, true, path)
                        };
                        let diff = worst_difference(&heads, lens, &[1, 2]);
                        assert!(
                            diff < tolerance,
                            "{layout} d {head_dim}, {path:?}, {lens:?}: {diff}"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn cpu_attention_equals_the_tensor_path_at_long_context() {
        // BTLM's head size; prompts run as several chunks of up to 256 rows (one of them
        // not a multiple of the query block or key tile), then decode and short pieces.
        let lens = [[256, 77], [256, 1], [45, 256], [1, 1], [3, 1], [1, 17]];
        for alibi in [true, false] {
            for path in attn_paths() {
                let heads = test_heads(2, 80, alibi, path);
                // Two threads: the team sizes are covered by the test above.
                let diff = worst_difference(&heads, &lens, &[2]);
                assert!(diff < 1e-5, "alibi {alibi}, {path:?}: {diff}");
            }
        }
    }

    /// Runs steps of `lens` rows of one sequence on `cache` through the CPU path (or the
    /// tensor path) and returns the outputs.
    fn run_on(heads: &Heads, cache: &mut Cache, lens: &[usize], cpu: bool) -> Vec<Vec<f32>> {
        let e = heads.n_head * heads.head_dim;
        let mut outputs = Vec::new();
        for (step, &t) in lens.iter().enumerate() {
            let qkv: Vec<f32> = (0..t * 3 * e)
                .map(|i| ((i * 5 + step * 11) as f32 * 0.37).cos())
                .collect();
            let qkv = Tensor::from_vec(qkv, (t, 3 * e), &Device::Cpu).expect("qkv");
            let reserve = cache.reserve();
            let bias = attention_bias(
                heads.n_head,
                heads.slopes.as_deref(),
                cache.seq_len(),
                t,
                &Device::Cpu,
            )
            .expect("bias");
            let mut part = AttentionPart {
                start: 0,
                len: t,
                bias: (!cpu).then_some(&bias),
                kv: &mut cache.layers[0],
                reserve,
            };
            let y = if cpu {
                team::run(2, |team| {
                    heads.forward(&qkv, std::slice::from_mut(&mut part), team)
                })
            } else {
                heads.attend(&qkv, &mut part)
            };
            let y = y
                .and_then(|y| y.flatten_all()?.to_vec1::<f32>())
                .expect("y");
            cache.advance(t);
            outputs.push(y);
        }
        outputs
    }

    /// A cache reused after [`Cache::clear`] still holds the old sequence's keys and values
    /// past the new one's positions (NaN here): attention never reads them, on either path.
    #[test]
    fn a_cleared_cache_gives_the_answers_of_a_new_one() {
        let lens = [5, 1, 1, 3, 1];
        for cpu in [true, false] {
            for path in attn_paths() {
                let heads = test_heads(4, 16, true, path);
                let mut reused = Cache::new(1, 32);
                let nan = Tensor::full(f32::NAN, (4, 32, 16), &Device::Cpu).expect("nan");
                reused.layers[0].append(&nan, &nan, 32).expect("poison");
                reused.advance(32);
                reused.clear();
                assert_eq!(reused.capacity(), 32);
                let got = run_on(&heads, &mut reused, &lens, cpu);
                let want = run_on(&heads, &mut Cache::new(1, 32), &lens, cpu);
                assert!(
                    got.iter().flatten().all(|v| v.is_finite()),
                    "{path:?} cpu {cpu}"
                );
                assert_eq!(got, want, "{path:?} cpu {cpu}");
            }
        }
    }

    #[test]
    fn cpu_attention_refuses_parts_out_of_row_order() {
        let heads = Heads {
            n_head: 2,
            head_dim: 4,
            scale: 0.25,
            slopes: None,
            path: AttnPath::Scalar,
            kv_layout: KvLayout::Dense(DType::F32),
        };
        let qkv = Tensor::zeros((3, 24), DType::F32, &Device::Cpu).expect("qkv");
        let mut caches = [Cache::new(1, 0), Cache::new(1, 0)];
        let [a, b] = &mut caches;
        let mut parts = [(1, 2, a), (0, 1, b)].map(|(start, len, c)| AttentionPart {
            start,
            len,
            bias: None,
            kv: &mut c.layers[0],
            reserve: 0,
        });
        let r = team::run(2, |team| heads.forward(&qkv, &mut parts, team));
        assert!(r.is_err());
    }

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
