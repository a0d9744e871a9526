//! The key/value cache of one sequence: every block's keys and values for the tokens seen so
//! far, stored `[heads, capacity, head_dim]` per block.
//!
//! A cache made with a capacity (the tokens reserved for a request: prompt plus new tokens)
//! allocates it once, on the first token; without one it grows by [`GROW_BY`] positions.
//! On the CPU attention path the engine gives a reserved cache all its memory in two
//! allocations (`Cache::allocate`: every block's keys views of one, its values of the
//! other), in huge pages unless told otherwise ([`kv_pages`](crate::kv_pages)).
//! [`Cache::clear`] forgets the tokens but keeps the memory, so that the engine's pool
//! ([`kv_pool`](crate::kv_pool)) can hand the cache to another sequence: its old contents
//! are not zeroed, since attention reads only the positions written since (views of the
//! first `len` positions).

use candle_core::{CpuStorage, DType, Device, InplaceOp1, Layout, Tensor};
use rayon::prelude::*;

/// Positions added at a time to a cache that has no reserved capacity.
pub const GROW_BY: usize = 256;

/// Zeros of `shape` written by every thread of rayon's pool (CPU f32, f16, bf16, u8;
/// `Tensor::zeros` elsewhere). A new cache is new memory, which the OS backs page by page as
/// it is first written: candle writes f16 and bf16 zeros value by value, and glibc's
/// `calloc` writes the f32 and int8 ones too unless the block is a fresh mapping (a layer's
/// tensor of a few MB comes from a heap once glibc's mmap threshold has grown past it). On
/// the engine's thread alone, at admission, that took 90–240 ms a request on a VM whose
/// host backs pages slowly, with no step running (docs/benchmarks.md, session 40).
pub(crate) fn zeros_on_threads(
    shape: (usize, usize, usize),
    dtype: DType,
    device: &Device,
) -> candle_core::Result<Tensor> {
    fn zeros<T: Copy + Send + Sync>(n: usize, zero: T) -> Vec<T> {
        (0..n).into_par_iter().map(|_| zero).collect()
    }
    let n = shape.0 * shape.1 * shape.2;
    match (dtype, device) {
        (DType::F16, Device::Cpu) => Tensor::from_vec(zeros(n, half::f16::ZERO), shape, device),
        (DType::BF16, Device::Cpu) => Tensor::from_vec(zeros(n, half::bf16::ZERO), shape, device),
        (DType::F32, Device::Cpu) => Tensor::from_vec(zeros(n, 0f32), shape, device),
        (DType::U8, Device::Cpu) => Tensor::from_vec(zeros(n, 0u8), shape, device),
        _ => Tensor::zeros(shape, dtype, device),
    }
}

/// The least a CPU cache allocates: glibc's largest mmap threshold (32 MiB on 64-bit
/// targets). An allocation of at least this size is always a mapping of its own, whatever
/// threshold earlier frees have raised it to, and so goes back to the OS when freed.
pub(crate) const OWN_MAPPING_BYTES: usize = 32 << 20;

/// Zeros of `shape` whose memory nothing has written yet: on the CPU a zeroed allocation
/// of at least [`OWN_MAPPING_BYTES`] (a fresh mapping, which `calloc` does not write; the
/// elements past `shape` are never written either, so they take address space only), so
/// that the OS backs each page when it is first written, by the append that writes it or
/// by [`Cache::fill_next_block`] ahead of it, in huge pages unless told otherwise
/// ([`kv_pages`](crate::kv_pages)); `Tensor::zeros` elsewhere and for dtypes a
/// cache does not store. An allocation the allocator refuses is an error, not an abort.
fn unwritten_zeros(shape: &[usize], dtype: DType, device: &Device) -> candle_core::Result<Tensor> {
    fn zeroed<T: bytemuck::Zeroable + candle_core::WithDType>(
        shape: &[usize],
        device: &Device,
    ) -> candle_core::Result<Tensor> {
        let n = shape.iter().product::<usize>();
        let allocated = n.max(OWN_MAPPING_BYTES.div_ceil(std::mem::size_of::<T>()));
        let values = bytemuck::allocation::try_zeroed_vec::<T>(allocated).map_err(|()| {
            candle_core::Error::Msg(format!(
                "no memory for a key/value cache of {} MB",
                (allocated * std::mem::size_of::<T>()) >> 20
            ))
        })?;
        crate::kv_pages::advise(&values);
        Tensor::from_vec(values, allocated, device)?
            .narrow(0, 0, n)?
            .reshape(shape)
    }
    match (dtype, device) {
        (DType::F32, Device::Cpu) => zeroed::<f32>(shape, device),
        (DType::F16, Device::Cpu) => zeroed::<half::f16>(shape, device),
        (DType::BF16, Device::Cpu) => zeroed::<half::bf16>(shape, device),
        (DType::U8, Device::Cpu) => zeroed::<u8>(shape, device),
        _ => Tensor::zeros(shape, dtype, device),
    }
}

/// Writes zeros over a contiguous CPU tensor's elements in place, on rayon's threads: the
/// first write of new memory, which the OS backs page by page as it is written.
struct WriteZeros;

impl InplaceOp1 for WriteZeros {
    fn name(&self) -> &'static str {
        "write-zeros"
    }

    fn cpu_fwd(&self, storage: &mut CpuStorage, layout: &Layout) -> candle_core::Result<()> {
        use candle_core::backend::BackendStorage;
        fn fill<T: Copy + Send + Sync>(values: &mut [T], range: (usize, usize), zero: T) {
            values[range.0..range.1]
                .par_chunks_mut(1 << 16)
                .for_each(|chunk| chunk.fill(zero));
        }
        let Some(range) = layout.contiguous_offsets() else {
            candle_core::bail!("zeros are written over a contiguous cache block only");
        };
        match storage {
            CpuStorage::F32(v) => fill(v, range, 0f32),
            CpuStorage::F16(v) => fill(v, range, half::f16::ZERO),
            CpuStorage::BF16(v) => fill(v, range, half::bf16::ZERO),
            CpuStorage::U8(v) => fill(v, range, 0u8),
            other => candle_core::bail!("no cache stores {:?}", other.dtype()),
        }
        Ok(())
    }
}

/// One block's keys and values.
#[derive(Debug, Clone)]
pub(crate) struct LayerKv {
    /// `[h, capacity, d]` keys and values, allocated on the first append.
    data: Option<(Tensor, Tensor)>,
    len: usize,
}

impl LayerKv {
    /// The dtype of the cached keys and values (`None` before the first append).
    #[cfg(test)]
    pub(crate) fn dtype(&self) -> Option<DType> {
        self.data.as_ref().map(|(k, _)| k.dtype())
    }

    /// Appends `k`, `v` (`[h, t, d]`) and returns the keys and values of every position so
    /// far (`[h, len, d]` views). `reserve` is the capacity to allocate when empty.
    pub(crate) fn append(
        &mut self,
        k: &Tensor,
        v: &Tensor,
        reserve: usize,
    ) -> candle_core::Result<(Tensor, Tensor)> {
        let (h, t, d) = k.dims3()?;
        let (ks, vs, at) = self.room((h, t, d), k.dtype(), k.device(), reserve)?;
        ks.slice_set(k, 1, at)?;
        vs.slice_set(v, 1, at)?;
        self.advance(t)
    }

    /// Memory for `t` more positions of `[h, ·, d]` rows of `dtype` (allocated with
    /// `reserve` positions when empty, grown by [`GROW_BY`] when full): the whole keys and
    /// values blocks and the position the new rows go to. The rows written there
    /// ([`WriteBlock`] or `slice_set`), [`Self::advance`] counts them.
    pub(crate) fn room(
        &mut self,
        (h, t, d): (usize, usize, usize),
        dtype: DType,
        device: &Device,
        reserve: usize,
    ) -> candle_core::Result<(Tensor, Tensor, usize)> {
        let needed = self.len + t;
        let (ks, vs) = match self.data.take() {
            None => {
                let cap = if reserve >= needed {
                    reserve
                } else {
                    needed.div_ceil(GROW_BY) * GROW_BY
                };
                let zeros = || zeros_on_threads((h, cap, d), dtype, device);
                (zeros()?, zeros()?)
            }
            Some((ks, vs)) if ks.dim(1)? < needed => {
                let extra = (needed - ks.dim(1)?).div_ceil(GROW_BY) * GROW_BY;
                let pad = || Tensor::zeros((h, extra, d), dtype, device);
                (
                    Tensor::cat(&[&ks, &pad()?], 1)?,
                    Tensor::cat(&[&vs, &pad()?], 1)?,
                )
            }
            Some(kv) => kv,
        };
        let fits = ks.dims().len() == 3
            && (ks.dim(0)?, ks.dim(2)?) == (h, d)
            && ks.dtype() == dtype
            && vs.dims() == ks.dims()
            && vs.dtype() == dtype;
        let blocks = (ks.clone(), vs.clone(), self.len);
        self.data = Some((ks, vs));
        if !fits {
            candle_core::bail!(
                "rows of {h} × {d} {dtype:?} do not fit a cache of {:?} {:?}",
                blocks.0.dims(),
                blocks.0.dtype()
            );
        }
        Ok(blocks)
    }

    /// Counts `t` positions written after the last ones (into the memory [`Self::room`]
    /// made) and returns the keys and values of every position so far (`[h, len, d]` views).
    pub(crate) fn advance(&mut self, t: usize) -> candle_core::Result<(Tensor, Tensor)> {
        let Some((ks, vs)) = &self.data else {
            candle_core::bail!("positions counted in a cache block without memory");
        };
        let needed = self.len + t;
        if needed > ks.dim(1)? {
            candle_core::bail!("{needed} positions counted in a block of {}", ks.dim(1)?);
        }
        self.len = needed;
        Ok((ks.narrow(1, 0, needed)?, vs.narrow(1, 0, needed)?))
    }
}

/// A contiguous CPU cache block's values, as [`WriteBlock`] hands them out to be written.
pub(crate) enum BlockMut<'a> {
    F32(&'a mut [f32]),
    F16(&'a mut [half::f16]),
    U8(&'a mut [u8]),
}

/// Writes into a contiguous CPU cache block (a [`LayerKv::room`] block, `[h, capacity,
/// d]`) in place: the closure gets its values, row-major. The new rows go straight to their
/// places, with no tensor of their own to allocate and copy (a decode step's 8 sequences ×
/// 32 blocks × keys and values).
pub(crate) struct WriteBlock<'a>(
    pub(crate) &'a (dyn Fn(BlockMut<'_>) -> candle_core::Result<()> + Sync),
);

impl InplaceOp1 for WriteBlock<'_> {
    fn name(&self) -> &'static str {
        "write-block"
    }

    fn cpu_fwd(&self, storage: &mut CpuStorage, layout: &Layout) -> candle_core::Result<()> {
        let Some((start, end)) = layout.contiguous_offsets() else {
            candle_core::bail!("rows are written into a contiguous cache block only");
        };
        match storage {
            CpuStorage::F32(v) => (self.0)(BlockMut::F32(&mut v[start..end])),
            CpuStorage::F16(v) => (self.0)(BlockMut::F16(&mut v[start..end])),
            CpuStorage::U8(v) => (self.0)(BlockMut::U8(&mut v[start..end])),
            other => {
                use candle_core::backend::BackendStorage;
                candle_core::bail!("no cache rows of {:?} are written in place", other.dtype())
            }
        }
    }
}

/// The key/value cache of one sequence. Create one per sequence with
/// [`Btlm::new_cache`](crate::model::Btlm::new_cache) or
/// [`Btlm::new_cache_with_capacity`](crate::model::Btlm::new_cache_with_capacity).
#[derive(Debug, Clone)]
pub struct Cache {
    pub(crate) layers: Vec<LayerKv>,
    seq_len: usize,
    reserve: usize,
    /// Blocks whose memory [`Cache::fill_next_block`] has written ahead.
    written_ahead: usize,
}

impl Cache {
    /// An empty cache for `n_layer` blocks reserving `capacity` positions (0: grow on
    /// demand).
    pub(crate) fn new(n_layer: usize, capacity: usize) -> Self {
        Cache {
            layers: (0..n_layer)
                .map(|_| LayerKv { data: None, len: 0 })
                .collect(),
            seq_len: 0,
            reserve: capacity,
            written_ahead: 0,
        }
    }

    /// Number of tokens already processed.
    pub fn seq_len(&self) -> usize {
        self.seq_len
    }

    /// The capacity allocated on the first token.
    pub(crate) fn reserve(&self) -> usize {
        self.reserve
    }

    /// Records that `t` more tokens went through every block.
    pub(crate) fn advance(&mut self, t: usize) {
        self.seq_len += t;
    }

    /// Positions every block's memory holds (0 while some block has none yet): what a
    /// cleared cache can take without growing.
    pub fn capacity(&self) -> usize {
        self.layers
            .iter()
            .map(|l| match &l.data {
                Some((k, v)) => k.dim(1).unwrap_or(0).min(v.dim(1).unwrap_or(0)),
                None => 0,
            })
            .min()
            .unwrap_or(0)
    }

    /// Gives every block its keys' and values' memory for the reserved capacity,
    /// `[heads, capacity, columns]` of `dtype` each, in two allocations (`[n_layer, heads,
    /// capacity, columns]` of keys and one of values; every block's keys and values are
    /// views of them), not written yet ([`unwritten_zeros`]). Nothing to do when nothing
    /// is reserved or some block has memory already.
    ///
    /// Two allocations per cache (every block's keys in one, their values in the other),
    /// not two per block, each at least [`OWN_MAPPING_BYTES`]: a mapping of its own, which
    /// goes back to the OS as soon as the cache is dropped, and which the OS backs page by
    /// page as positions are written (the positions a sequence reserves but never reaches
    /// take no memory). Two tensors a block, a few MB each, came from the engine thread's
    /// heap, where the pool's churn of caches of every size left holes that caches of other
    /// sizes fit badly, and the heap kept what it freed (docs/benchmarks.md, session 47).
    /// Keys and values apart, each has a lock of its own: a sequence's new keys and its
    /// new values are written in place by two threads at once ([`WriteBlock`]).
    pub(crate) fn allocate(
        &mut self,
        heads: usize,
        columns: usize,
        dtype: DType,
        device: &Device,
    ) -> candle_core::Result<()> {
        if self.reserve == 0 || self.layers.iter().any(|l| l.data.is_some()) {
            return Ok(());
        }
        let shape = [self.layers.len(), heads, self.reserve, columns];
        let keys = unwritten_zeros(&shape, dtype, device)?;
        let values = unwritten_zeros(&shape, dtype, device)?;
        for (i, layer) in self.layers.iter_mut().enumerate() {
            layer.data = Some((keys.get(i)?, values.get(i)?));
        }
        Ok(())
    }

    /// Gives the cache its memory ([`Cache::allocate`]) and writes zeros over the next block's
    /// (on rayon's threads), as the block's appends would write it: a cache made ahead of its
    /// sequence (the engine's blank caches, [`kv_pool`](crate::kv_pool)) whose memory the OS
    /// backs already. Returns whether every block's memory is written.
    pub(crate) fn fill_next_block(
        &mut self,
        heads: usize,
        columns: usize,
        dtype: DType,
        device: &Device,
    ) -> candle_core::Result<bool> {
        if self.reserve == 0 {
            candle_core::bail!("a cache is filled ahead only for a reserved capacity");
        }
        self.allocate(heads, columns, dtype, device)?;
        if let Some(layer) = self.layers.get(self.written_ahead) {
            let Some((k, v)) = &layer.data else {
                candle_core::bail!("a block of a cache filled ahead has no memory");
            };
            k.inplace_op1(&WriteZeros)?;
            v.inplace_op1(&WriteZeros)?;
            self.written_ahead += 1;
        }
        Ok(self.written_ahead == self.layers.len())
    }

    /// Forgets every token but keeps the memory (for another sequence; see
    /// [`Cache::capacity`]). The old keys and values stay in place until overwritten.
    pub fn clear(&mut self) {
        self.truncate(0);
    }

    /// Keeps the first `len` tokens (all of them if there are fewer) and forgets the rest,
    /// keeping the memory: a sequence whose prompt starts with those tokens goes on from
    /// there (the engine's prefix reuse). Each position's keys and values depend only on
    /// the tokens up to it, so what stays is exactly what those tokens alone would leave.
    pub fn truncate(&mut self, len: usize) {
        let len = len.min(self.seq_len);
        for l in &mut self.layers {
            l.len = l.len.min(len);
        }
        self.seq_len = len;
    }

    /// Copies the keys and values of the first `len` positions (at most those held) into
    /// `dst`, an empty cache of the same model, which then holds those positions (in its
    /// memory if every block has room for its reserved capacity, or `len` if more, else in
    /// new memory of that size): a sequence whose prompt starts with those tokens goes on
    /// from there in a cache larger than this one.
    pub fn copy_prefix_into(&self, dst: &mut Cache, len: usize) -> candle_core::Result<()> {
        let len = len.min(self.seq_len);
        if dst.seq_len != 0 || dst.layers.len() != self.layers.len() {
            candle_core::bail!("a prefix is copied into an empty cache of the same model");
        }
        if let Some((k, _)) = self.layers.first().and_then(|l| l.data.as_ref())
            && dst.reserve >= len
            && k.device().is_cpu()
        {
            let (h, _, d) = k.dims3()?;
            dst.allocate(h, d, k.dtype(), k.device())?;
        }
        for (from, to) in self.layers.iter().zip(&mut dst.layers) {
            let Some((k, v)) = &from.data else {
                candle_core::bail!("a cache holding {len} positions has a layer without memory");
            };
            let (h, _, d) = k.dims3()?;
            let cap = dst.reserve.max(len);
            let zeros = || zeros_on_threads((h, cap, d), k.dtype(), k.device());
            let room = |t: &Tensor| match t.dims3() {
                Ok((th, tcap, td)) => th == h && td == d && tcap >= cap && t.dtype() == k.dtype(),
                Err(_) => false,
            };
            let (ks, vs) = match to.data.take() {
                Some((ks, vs)) if room(&ks) && room(&vs) => (ks, vs),
                _ => (zeros()?, zeros()?),
            };
            ks.slice_set(&k.narrow(1, 0, len)?.contiguous()?, 1, 0)?;
            vs.slice_set(&v.narrow(1, 0, len)?.contiguous()?, 1, 0)?;
            to.data = Some((ks, vs));
            to.len = len;
        }
        dst.seq_len = len;
        Ok(())
    }

    /// Forgets every token (and frees the memory).
    pub fn reset(&mut self) {
        for l in &mut self.layers {
            l.data = None;
            l.len = 0;
        }
        self.seq_len = 0;
        self.written_ahead = 0;
    }
}

/// How a cache stores its keys and values: each head's row of `head_dim` values at a
/// position.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum KvLayout {
    /// The values as they are, in this dtype: f32 or f16 on the CPU attention path
    /// (`--btlm.kv_dtype`), the activation dtype on the tensor path (a GPU's bf16 say).
    Dense(DType),
    /// int8 values followed by their f32 scale in 4 bytes (CPU only, `--btlm.kv_dtype q8`;
    /// see `attention::cpu::cache_rows::q8_row_scalar`), stored in `u8` tensors of `head_dim + 4`
    /// columns.
    Q8,
    /// 4-bit values, two a byte, followed by their f32 scale in 4 bytes (CPU only,
    /// `--btlm.kv_dtype q4`; see `attention::cpu::cache_rows::q4_row_scalar`), stored in `u8`
    /// tensors of `head_dim / 2 + 4` columns (a head size not a multiple of 16 padded to
    /// one).
    Q4,
}

impl KvLayout {
    /// Bytes of the f32 scale after each int8 or 4-bit row.
    pub(crate) const SCALE_BYTES: usize = 4;

    /// Bytes of the values of a 4-bit row of `head_dim` values: 8 for each group of 16
    /// (the last group padded).
    pub(crate) fn q4_bytes(head_dim: usize) -> usize {
        head_dim.div_ceil(16) * 8
    }

    /// The dtype of the cache's tensors.
    pub fn dtype(self) -> DType {
        match self {
            KvLayout::Dense(dtype) => dtype,
            KvLayout::Q8 | KvLayout::Q4 => DType::U8,
        }
    }

    /// Bytes of one head's row of `head_dim` values.
    pub fn row_bytes(self, head_dim: usize) -> usize {
        match self {
            KvLayout::Dense(dtype) => head_dim * dtype.size_in_bytes(),
            KvLayout::Q8 => head_dim + Self::SCALE_BYTES,
            KvLayout::Q4 => Self::q4_bytes(head_dim) + Self::SCALE_BYTES,
        }
    }

    /// Elements of [`Self::dtype`] in one head's row of `head_dim` values: the last
    /// dimension of a cache block.
    pub fn columns(self, head_dim: usize) -> usize {
        match self {
            KvLayout::Dense(_) => head_dim,
            packed => packed.row_bytes(head_dim),
        }
    }
}

impl std::fmt::Display for KvLayout {
    /// As `--btlm.kv_dtype` names it (`f32`, `f16`, `q8`, `q4`); another dense dtype, which only
    /// a GPU caches in, by its candle name (`bf16`).
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            KvLayout::Dense(dtype) => f.write_str(dtype.as_str()),
            KvLayout::Q8 => f.write_str("q8"),
            KvLayout::Q4 => f.write_str("q4"),
        }
    }
}

/// Bytes of cache one token takes in a model of `n_layer` blocks of width `n_embd` in
/// `n_head` heads whose keys and values are stored in `layout`.
pub fn bytes_per_token(n_layer: usize, n_embd: usize, n_head: usize, layout: KvLayout) -> usize {
    2 * n_layer * n_head * layout.row_bytes(n_embd / n_head)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use candle_core::Device;

    fn kv(h: usize, t: usize, d: usize, start: f32) -> Tensor {
        Tensor::arange(start, start + (h * t * d) as f32, &Device::Cpu)
            .and_then(|x| x.reshape((h, t, d)))
            .expect("tensor")
    }

    #[test]
    fn appends_past_the_reservation_grow_and_keep_the_contents() {
        let mut layer = LayerKv { data: None, len: 0 };
        let a = kv(2, 3, 4, 0.0);
        let (k, _) = layer.append(&a, &a, 4).expect("append");
        assert_eq!(k.dims(), [2, 3, 4]);
        let b = kv(2, 2, 4, 100.0);
        let (k, v) = layer.append(&b, &b, 4).expect("grow");
        assert_eq!(k.dims(), [2, 5, 4]);
        let expected = Tensor::cat(&[&a, &b], 1).expect("cat");
        for got in [k, v] {
            let diff = (got - &expected)
                .and_then(|d| d.abs()?.sum_all()?.to_scalar::<f32>())
                .expect("diff");
            assert_eq!(diff, 0.0);
        }
        assert_eq!(
            layer.data.as_ref().map(|(k, _)| k.dim(1).ok()),
            Some(Some(4 + GROW_BY))
        );
    }

    /// Rows of another head size or dtype than the block's are refused, and the block keeps
    /// its memory and its positions.
    #[test]
    fn rows_that_do_not_fit_the_block_are_refused_and_nothing_is_lost() {
        let mut layer = LayerKv { data: None, len: 0 };
        let a = kv(2, 3, 4, 0.0);
        layer.append(&a, &a, 8).expect("append");
        let cpu = &Device::Cpu;
        assert!(
            layer.room((2, 1, 5), DType::F32, cpu, 8).is_err(),
            "head size"
        );
        assert!(layer.room((3, 1, 4), DType::F32, cpu, 8).is_err(), "heads");
        assert!(layer.room((2, 1, 4), DType::F16, cpu, 8).is_err(), "dtype");
        assert!(
            layer
                .append(&kv(2, 1, 5, 0.0), &kv(2, 1, 5, 0.0), 8)
                .is_err()
        );
        let (k, v) = layer.advance(0).expect("still there");
        assert_eq!((k.dims(), v.dims()), (&[2, 3, 4][..], &[2, 3, 4][..]));
        let diff = (k - &a).and_then(|d| d.abs()?.sum_all()?.to_scalar::<f32>());
        assert_eq!(diff.expect("diff"), 0.0);
        assert!(layer.advance(6).is_err(), "past the block");
    }

    /// A cache filled ahead block by block has the memory its first token would give it,
    /// and a prefix copied into it stays in that memory; one whose memory is too small for
    /// the copy gets new memory.
    #[test]
    fn a_cache_filled_ahead_keeps_its_memory_for_a_prefix_copied_into_it() {
        let mut src = Cache::new(2, 4);
        let a = kv(2, 4, 3, 0.0);
        for l in &mut src.layers {
            l.append(&a, &a, 4).expect("append");
        }
        src.advance(4);
        for (reserve, kept) in [(8, true), (2, false)] {
            let mut dst = Cache::new(2, reserve);
            let fill = |c: &mut Cache| c.fill_next_block(2, 3, DType::F32, &Device::Cpu);
            assert!(!fill(&mut dst).expect("block 1"), "one block of two");
            assert!(fill(&mut dst).expect("block 2"));
            assert_eq!(dst.capacity(), reserve);
            assert!(two_allocations(&dst));
            let ids = |c: &Cache| -> Vec<_> {
                c.layers
                    .iter()
                    .flat_map(|l| l.data.as_ref().map(|(k, v)| [k.id(), v.id()]))
                    .flatten()
                    .collect()
            };
            let before = ids(&dst);
            src.copy_prefix_into(&mut dst, 3).expect("copy");
            assert_eq!(ids(&dst) == before, kept, "reserve {reserve}");
            assert_eq!(dst.seq_len(), 3);
            for l in &dst.layers {
                let (k, _) = l.data.as_ref().expect("memory");
                let diff = (k.narrow(1, 0, 3).expect("kept") - a.narrow(1, 0, 3).expect("a"))
                    .and_then(|d| d.abs()?.sum_all()?.to_scalar::<f32>())
                    .expect("diff");
                assert_eq!(diff, 0.0);
            }
        }
        assert!(
            Cache::new(2, 0)
                .fill_next_block(2, 3, DType::F32, &Device::Cpu)
                .is_err()
        );
    }

    /// Whether every block's keys are views of one allocation and their values of another.
    pub(crate) fn two_allocations(c: &Cache) -> bool {
        let blocks: Vec<(&Tensor, &Tensor)> = c
            .layers
            .iter()
            .filter_map(|l| l.data.as_ref().map(|(k, v)| (k, v)))
            .collect();
        let same = |a: &Tensor, b: &Tensor| {
            std::ptr::eq(&*a.storage_and_layout().0, &*b.storage_and_layout().0)
        };
        !blocks.is_empty()
            && blocks.len() == c.layers.len()
            && !same(blocks[0].0, blocks[0].1)
            && blocks
                .iter()
                .all(|(k, v)| same(k, blocks[0].0) && same(v, blocks[0].1))
    }

    /// A reserved cache's memory is two allocations (keys, values), zeros of its blocks'
    /// shape, each block's keys and values written into their own place; an unreserved
    /// cache or one with memory already is left as it is.
    #[test]
    fn a_reserved_cache_gets_all_its_memory_in_two_allocations() {
        for dtype in [DType::F32, DType::F16, DType::BF16, DType::U8] {
            let mut c = Cache::new(3, 5);
            c.allocate(2, 4, dtype, &Device::Cpu).expect("allocate");
            assert!(two_allocations(&c), "{dtype:?}");
            assert_eq!(c.capacity(), 5);
            for l in &c.layers {
                let (k, v) = l.data.as_ref().expect("memory");
                assert_eq!(
                    (k.dims(), v.dims(), k.dtype()),
                    (&[2, 5, 4][..], &[2, 5, 4][..], dtype)
                );
                let zeros = k
                    .to_dtype(DType::F32)
                    .and_then(|k| k.abs()?.sum_all()?.to_scalar::<f32>());
                assert_eq!(zeros.expect("sum"), 0.0);
            }
        }
        let mut c = Cache::new(3, 5);
        c.allocate(2, 4, DType::F32, &Device::Cpu)
            .expect("allocate");
        for (i, l) in c.layers.iter_mut().enumerate() {
            let k = kv(2, 2, 4, 10.0 * i as f32);
            let v = kv(2, 2, 4, -10.0 * i as f32 - 5.0);
            let (got_k, got_v) = l.append(&k, &v, 5).expect("append");
            for (got, want) in [(got_k, k), (got_v, v)] {
                let diff = (got - want).and_then(|d| d.abs()?.sum_all()?.to_scalar::<f32>());
                assert_eq!(diff.expect("diff"), 0.0, "block {i}");
            }
        }
        assert!(two_allocations(&c), "appends write in place");
        let ids = |c: &Cache| {
            c.layers
                .iter()
                .map(|l| l.data.as_ref().map(|(k, _)| k.id()))
                .collect::<Vec<_>>()
        };
        let before = ids(&c);
        c.allocate(2, 4, DType::F32, &Device::Cpu).expect("again");
        assert_eq!(ids(&c), before, "memory it has is kept");
        // A small cache still allocates a mapping of its own (its tail is never written).
        let (storage, _) = c.layers[0]
            .data
            .as_ref()
            .expect("memory")
            .0
            .storage_and_layout();
        let bytes = match &*storage {
            candle_core::Storage::Cpu(CpuStorage::F32(v)) => v.len() * 4,
            _ => 0,
        };
        assert!(bytes >= OWN_MAPPING_BYTES, "{bytes} bytes");
        drop(storage);
        let mut unreserved = Cache::new(3, 0);
        unreserved
            .allocate(2, 4, DType::F32, &Device::Cpu)
            .expect("allocate");
        assert_eq!(
            unreserved.capacity(),
            0,
            "nothing reserved, nothing allocated"
        );
    }

    /// Where a CPU tensor's storage starts.
    fn storage_address(t: &Tensor) -> usize {
        match &*t.storage_and_layout().0 {
            candle_core::Storage::Cpu(CpuStorage::U8(v)) => v.as_ptr() as usize,
            candle_core::Storage::Cpu(CpuStorage::F16(v)) => v.as_ptr() as usize,
            other => panic!("a cache of {:?}", other.dtype()),
        }
    }

    #[test]
    fn a_reserved_cache_asks_for_huge_pages() {
        use crate::kv_pages::tests::{eligible_for_huge_pages, huge_pages_offered};
        use crate::kv_pages::{HUGE_PAGE, KvPages};
        if KvPages::active() != KvPages::Huge || !huge_pages_offered() {
            eprintln!("skipped: BTLM_KV_PAGES=small or no transparent huge pages here");
            return;
        }
        for dtype in [DType::U8, DType::F16] {
            let mut c = Cache::new(2, 4096);
            c.allocate(32, 84, dtype, &Device::Cpu).expect("allocate");
            let (k, v) = c.layers[0].data.as_ref().expect("memory");
            for t in [k, v] {
                let first_huge_page = storage_address(t).div_ceil(HUGE_PAGE) * HUGE_PAGE;
                assert!(eligible_for_huge_pages(first_huge_page), "{dtype:?}");
            }
        }
    }

    #[test]
    fn a_prefix_copied_into_a_larger_cache_is_the_same_and_the_rest_is_not_copied() {
        let mut small = Cache::new(2, 4);
        let a = kv(2, 4, 3, 0.0);
        for l in &mut small.layers {
            l.append(&a, &a, small.reserve).expect("append");
        }
        small.advance(4);
        let mut big = Cache::new(2, 10);
        small.copy_prefix_into(&mut big, 3).expect("copy");
        assert_eq!((big.seq_len(), big.capacity()), (3, 10));
        assert!(
            two_allocations(&big),
            "a copy's new memory is two allocations"
        );
        let b = kv(2, 1, 3, 100.0);
        for l in &mut big.layers {
            let (k, _) = l.append(&b, &b, big.reserve).expect("append");
            let want = Tensor::cat(&[&a.narrow(1, 0, 3).expect("narrow"), &b], 1).expect("cat");
            let diff = (k - want)
                .and_then(|d| d.abs()?.sum_all()?.to_scalar::<f32>())
                .expect("diff");
            assert_eq!(diff, 0.0);
        }
        // Only into an empty cache of as many layers.
        assert!(small.copy_prefix_into(&mut big, 2).is_err());
        assert!(small.copy_prefix_into(&mut Cache::new(3, 10), 2).is_err());
        assert!(
            Cache::new(2, 4)
                .copy_prefix_into(&mut Cache::new(2, 4), 0)
                .is_err()
        );
    }

    #[test]
    fn reset_frees_and_counts_bytes() {
        let mut c = Cache::new(2, 10);
        let a = kv(1, 2, 2, 0.0);
        for l in &mut c.layers {
            l.append(&a, &a, c.reserve).expect("append");
        }
        c.advance(2);
        assert_eq!(c.seq_len(), 2);
        c.reset();
        assert_eq!(c.seq_len(), 0);
        assert!(c.layers.iter().all(|l| l.data.is_none()));
        assert_eq!(c.capacity(), 0);
        let per_token = |layout| bytes_per_token(32, 2560, 32, layout);
        assert_eq!(per_token(KvLayout::Dense(DType::F32)), 655_360);
        assert_eq!(per_token(KvLayout::Dense(DType::F16)), 327_680);
        assert_eq!(per_token(KvLayout::Dense(DType::BF16)), 327_680);
        // 32 heads of 80 int8 values and a 4-byte scale each.
        assert_eq!(per_token(KvLayout::Q8), 172_032);
        // 32 heads of 40 bytes of 4-bit values and a 4-byte scale each.
        assert_eq!(per_token(KvLayout::Q4), 90_112);
        assert_eq!(KvLayout::Q4.row_bytes(12), 8 + 4, "a group of 16 padded");
        let names = [
            KvLayout::Dense(DType::F32),
            KvLayout::Dense(DType::F16),
            KvLayout::Q8,
            KvLayout::Q4,
        ]
        .map(|l| l.to_string());
        assert_eq!(
            names,
            ["f32", "f16", "q8", "q4"],
            "as --btlm.kv_dtype names them"
        );
        assert_eq!(KvLayout::Dense(DType::BF16).to_string(), "bf16");
    }

    #[test]
    fn a_cleared_cache_keeps_its_memory_and_shows_only_new_positions() {
        let mut c = Cache::new(2, 6);
        assert_eq!(c.capacity(), 0, "no memory before the first token");
        let junk = (kv(1, 5, 2, 0.0) * f64::NAN).expect("nan");
        c.layers[0].append(&junk, &junk, c.reserve).expect("append");
        assert_eq!(c.capacity(), 0, "one block still has none");
        c.layers[1].append(&junk, &junk, c.reserve).expect("append");
        c.advance(5);
        assert_eq!(c.capacity(), 6);
        c.clear();
        assert_eq!((c.seq_len(), c.capacity()), (0, 6));
        let fresh = kv(1, 3, 2, 1.0);
        for l in &mut c.layers {
            let (k, v) = l.append(&fresh, &fresh, c.reserve).expect("append");
            for got in [k, v] {
                assert_eq!(got.dims(), [1, 3, 2]);
                let got = got
                    .flatten_all()
                    .and_then(|g| g.to_vec1::<f32>())
                    .expect("vec");
                let want = fresh
                    .flatten_all()
                    .and_then(|g| g.to_vec1::<f32>())
                    .expect("vec");
                assert_eq!(got, want, "no old position shows");
            }
        }
    }

    /// The zeros of every thread are `Tensor::zeros`' in every dtype a cache stores.
    #[test]
    fn zeros_on_threads_are_zeros_of_the_shape_and_dtype() {
        for dtype in [DType::F32, DType::F16, DType::BF16, DType::U8, DType::U32] {
            let shape = (3, 70_001, 5); // past rayon's splitting, an odd length
            let t = zeros_on_threads(shape, dtype, &Device::Cpu).expect("zeros");
            assert_eq!((t.dims3().expect("dims"), t.dtype()), (shape, dtype));
            let want = Tensor::zeros(shape, dtype, &Device::Cpu).expect("zeros");
            let same = t
                .eq(&want)
                .and_then(|e| e.to_dtype(DType::U32)?.sum_all()?.to_scalar::<u32>())
                .expect("compare");
            assert_eq!(same as usize, 3 * 70_001 * 5, "{dtype:?}");
        }
    }
}
