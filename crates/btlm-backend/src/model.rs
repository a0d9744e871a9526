//! Cerebras BTLM (Bittensor Language Model, `cerebras/btlm-3b-8k-base`).
//!
//! A GPT-2 style decoder with three changes: ALiBi position biases instead of learned
//! positions, a SwiGLU MLP, and maximal-update parametrization (muP) multipliers on the
//! embeddings, the attention scores (`1/d` instead of `1/√d`) and the output logits.
//!
//! - Embeddings: `h = wte[ids] · embeddings_scale` (plus `wpe[pos]` before scaling for
//!   `position_embedding_type = "learned"`).
//! - Block: `h += attn(ln_1(h))`, `h += mlp(ln_2(h))`.
//! - Attention: fused `c_attn` (GPT-2 `Conv1D`, weight stored `[in, out]`) → q | k | v, scores
//!   `q·kᵀ / d^p` (`p = 1` with `scale_qk_dot_by_d`, else `½`), causal mask, ALiBi bias
//!   `−slope_h·|i − j|`, softmax, `c_proj`.
//! - MLP: `c_proj(c_fc(x) ⊙ silu(c_fc2(x)))`.
//! - Logits: `ln_f(h) · wteᵀ · output_logits_scale` (tied embeddings unless the checkpoint has
//!   its own `lm_head.weight`).

use candle_core::{DType, Device, Tensor};

use crate::attention::{AttentionPart, alibi_slopes, attends_on_cpu, attention_bias};
use crate::config::{Config, PositionEmbeddingType};
use crate::error::{BtlmError, Result};
use crate::kv_cache::{Cache, KvLayout, bytes_per_token};
use crate::layers::{Block, LayerNorm, Workspace};
use crate::linear::{Projection, packed_into};
use crate::loader::{LoadOptions, Loader};
use crate::step_profile::{Section, timed};
use crate::team::{self, Team};
use crate::weights::Checkpoint;

/// One sequence's share of a [`Btlm::forward_batch`] step: tokens to run after those
/// already in its cache (`C`: the cache type, [`Cache`] for [`Btlm`]).
#[derive(Debug)]
pub struct Segment<'a, C = Cache> {
    /// The tokens (at least one).
    pub tokens: &'a [u32],
    /// The sequence's cache; the tokens are appended to it.
    pub cache: &'a mut C,
    /// Whether the logits after the last token are wanted.
    pub logits: bool,
}

/// The BTLM language model (weights only: per-sequence state lives in a [`Cache`], so one
/// instance can serve every request).
#[derive(Debug, Clone)]
pub struct Btlm {
    cfg: Config,
    wte: Tensor,
    wpe: Option<Tensor>,
    blocks: Vec<Block>,
    ln_f: LayerNorm,
    lm_head: Projection,
    slopes: Vec<f32>,
    device: Device,
    dtype: DType,
    kv_layout: KvLayout,
}

impl Btlm {
    /// Builds the model from a checkpoint.
    pub fn load(cfg: &Config, ckpt: &Checkpoint, opts: &LoadOptions) -> Result<Self> {
        cfg.validate()?;
        let ld = Loader::new(ckpt, opts)?;
        let e = cfg.n_embd;
        let blocks = (0..cfg.n_layer)
            .map(|i| Block::load(&ld, cfg, i))
            .collect::<Result<Vec<_>>>()?;
        let ln_f = LayerNorm::load(&ld, "transformer.ln_f", e, cfg.layer_norm_epsilon)?;
        let wte_raw = ckpt.require("transformer.wte.weight", &[cfg.vocab_size, e], ld.device())?;
        let head_raw = match ckpt.get("lm_head.weight", ld.device())? {
            Some(h) if h.dims() != [cfg.vocab_size, e] => {
                return Err(BtlmError::Checkpoint(format!(
                    "lm_head.weight has shape {:?}, expected {:?}",
                    h.dims(),
                    [cfg.vocab_size, e]
                )));
            }
            Some(h) => h,
            None => wte_raw.clone(),
        };
        let lm_head = Projection::from_out_in(&ld, "lm_head.weight", &head_raw)?;
        let wte = wte_raw.to_dtype(ld.table_dtype())?;
        let wpe = match cfg.position_embedding_type {
            PositionEmbeddingType::Learned => {
                Some(ld.tensor("transformer.wpe.weight", &[cfg.n_positions, e])?)
            }
            PositionEmbeddingType::Alibi => None,
        };
        let slopes = alibi_slopes(cfg.n_head);
        check_stored_slopes(ld.checkpoint(), &slopes, cfg.n_head)?;
        ld.finish();
        Ok(Btlm {
            cfg: cfg.clone(),
            wte,
            wpe,
            blocks,
            ln_f,
            lm_head,
            slopes: slopes.into_iter().map(|s| s as f32).collect(),
            device: opts.device.clone(),
            dtype: ld.dtype(),
            kv_layout: ld.kv_layout(),
        })
    }

    /// Whether a sequence's rows get the same logits whatever other rows share their pass:
    /// every projection computes each row alike at any row count
    /// ([`Projection::rows_independent`]; the rest of a step works row by row or sequence
    /// by sequence). The engine runs prompt pieces in the decode rows' pass only then.
    pub fn rows_independent(&self) -> bool {
        self.blocks
            .iter()
            .flat_map(Block::projections)
            .chain([&self.lm_head])
            .all(Projection::rows_independent)
    }

    /// Whether a position's keys and values are the same bits however its sequence is split
    /// into passes: the CPU attention computes a query alike whatever queries share its call
    /// ([`crate::attention`]'s CPU path, tested), so this holds where the products compute
    /// each row alike too ([`Self::rows_independent`]).
    pub fn splits_alike(&self) -> bool {
        attends_on_cpu(&self.device, self.dtype) && self.rows_independent()
    }

    /// Which prompt pieces may share a pass without changing any row's logits, where
    /// [`Self::rows_independent`] is false (e.g. on AMX, whose tile unit takes products of
    /// many rows): `(min_rows, max_pieces)` — pieces of at least `min_rows` tokens each
    /// (every block projection then runs them on the route each takes alone), at most
    /// `max_pieces` of them (the output head, which multiplies one row per piece, then stays
    /// on the route of one row). `None` where this cannot be promised (dense GPU weights).
    pub fn shared_prompt_pass(&self) -> Option<(usize, usize)> {
        let mut min_rows = 1;
        for p in self.blocks.iter().flat_map(Block::projections) {
            min_rows = min_rows.max(p.same_route_from()?);
        }
        let head = self.lm_head.same_route_from()?;
        let max_pieces = if head == 1 { usize::MAX } else { head - 1 };
        Some((min_rows, max_pieces))
    }

    /// The configuration.
    pub fn config(&self) -> &Config {
        &self.cfg
    }

    /// The device the model runs on.
    pub fn device(&self) -> &Device {
        &self.device
    }

    /// The activation dtype.
    pub fn dtype(&self) -> DType {
        self.dtype
    }

    /// How the key/value cache stores keys and values (`--btlm.kv_dtype`, see
    /// [`crate::options::KvDtype`]; displayed as the flag names it).
    pub fn kv_layout(&self) -> KvLayout {
        self.kv_layout
    }

    /// An empty cache for a new sequence, growing as tokens arrive.
    pub fn new_cache(&self) -> Cache {
        Cache::new(self.cfg.n_layer, 0)
    }

    /// An empty cache that allocates room for `tokens` positions on its first token (it
    /// still grows past them if needed).
    pub fn new_cache_with_capacity(&self, tokens: usize) -> Cache {
        Cache::new(self.cfg.n_layer, tokens)
    }

    /// Whether caches can be made ahead of their sequences ([`Self::fill_cache_block`]):
    /// on the CPU attention path, whose caches are the memory the OS backs on first write.
    pub fn fills_caches_ahead(&self) -> bool {
        attends_on_cpu(&self.device, self.dtype)
    }

    /// Gives the next block of `cache` (made by [`Self::new_cache_with_capacity`], empty)
    /// the memory of its capacity, written now, as its first token would: the engine
    /// prepares caches ahead of the requests to come while it has nothing to run. Returns
    /// whether every block has its memory. Only where [`Self::fills_caches_ahead`].
    pub fn fill_cache_block(&self, cache: &mut Cache) -> candle_core::Result<bool> {
        if !self.fills_caches_ahead() {
            candle_core::bail!("caches are filled ahead only on the CPU attention path");
        }
        let (heads, columns, dtype) = self.kv_rows();
        cache.fill_next_block(heads, columns, dtype, &self.device)
    }

    /// A CPU cache block's keys (or values): `heads` rows of `columns` elements of `dtype`
    /// a position.
    fn kv_rows(&self) -> (usize, usize, DType) {
        let heads = self.cfg.n_head;
        let head_dim = self.cfg.n_embd / heads;
        (
            heads,
            self.kv_layout.columns(head_dim),
            self.kv_layout.dtype(),
        )
    }

    /// Bytes of cache one token of a sequence takes (keys and values of every block).
    pub fn kv_bytes_per_token(&self) -> usize {
        bytes_per_token(
            self.cfg.n_layer,
            self.cfg.n_embd,
            self.cfg.n_head,
            self.kv_layout,
        )
    }

    /// The ALiBi slopes, or `None` for learned positions.
    fn alibi(&self) -> Option<&[f32]> {
        (self.cfg.position_embedding_type == PositionEmbeddingType::Alibi)
            .then_some(self.slopes.as_slice())
    }

    /// Runs one step for several sequences at once: the tokens of every segment go through
    /// each projection together (`[rows, n_embd]`, one pass over the weights), each
    /// sequence attends to its own cache with its own positions. Appends the tokens to the
    /// caches and returns the f32 logits after the last token of each segment that asked
    /// for them, `[n, vocab]`, in segment order.
    ///
    /// On the CPU the step runs on a team of as many threads as rayon's pool has (the
    /// caller one of them): the products and the attention of every layer are split over
    /// the team, which stays busy from one to the next.
    pub fn forward_batch(&self, segments: &mut [Segment<'_>]) -> candle_core::Result<Tensor> {
        let threads = if self.device.is_cpu() {
            rayon::current_num_threads()
        } else {
            1
        };
        team::run(threads, |team| self.forward_on(segments, team, true))
    }

    /// [`Self::forward_batch`] on `team`; `rows_path`: whether CPU models run their blocks on
    /// plain f32 rows ([`Block::forward_rows`], the default) rather than tensors.
    fn forward_on(
        &self,
        segments: &mut [Segment<'_>],
        team: &Team<'_>,
        rows_path: bool,
    ) -> candle_core::Result<Tensor> {
        if segments.is_empty() {
            candle_core::bail!("forward needs at least one sequence");
        }
        let mut ids = Vec::new();
        let mut positions = Vec::new();
        let cpu_attention = attends_on_cpu(&self.device, self.dtype);
        let mut biases = Vec::with_capacity(segments.len());
        let mut last_rows = Vec::new();
        for s in segments.iter() {
            let (offset, t) = (s.cache.seq_len(), s.tokens.len());
            if t == 0 {
                candle_core::bail!("forward needs at least one token per sequence");
            }
            if s.cache.layers.len() != self.blocks.len() {
                candle_core::bail!("the cache belongs to another model");
            }
            if self.wpe.is_some() && offset + t > self.cfg.n_positions {
                candle_core::bail!(
                    "position {} is past the learned position table ({})",
                    offset + t,
                    self.cfg.n_positions
                );
            }
            ids.extend_from_slice(s.tokens);
            positions.extend(offset as u32..(offset + t) as u32);
            if !cpu_attention {
                biases.push(attention_bias(
                    self.cfg.n_head,
                    self.alibi(),
                    offset,
                    t,
                    &self.device,
                )?);
            }
            if s.logits {
                last_rows.push((ids.len() - 1) as u32);
            }
        }
        if cpu_attention {
            let (heads, columns, dtype) = self.kv_rows();
            for s in segments.iter_mut() {
                s.cache.allocate(heads, columns, dtype, &self.device)?;
            }
        }
        let rows = ids.len();
        let ids = Tensor::from_vec(ids, rows, &self.device)?;
        let mut h = self.wte.embedding(&ids)?.to_dtype(self.dtype)?;
        if let Some(wpe) = &self.wpe {
            let pos = Tensor::from_vec(positions, rows, &self.device)?;
            h = (h + wpe.embedding(&pos)?)?;
        }
        let mut h = (h * self.cfg.embeddings_scale)?;
        // f32 activations on the CPU with packed weights (every CPU model): the blocks run
        // on plain rows in place, their intermediate activations in buffers made once per
        // step.
        let mut on_rows = if rows_path && cpu_attention && self.lm_head.packed_matrix().is_some() {
            let values = h.contiguous()?.flatten_all()?.to_vec1::<f32>()?;
            Some((values, Workspace::new(rows, &self.cfg)))
        } else {
            None
        };
        for (i, block) in self.blocks.iter().enumerate() {
            let mut start = 0;
            let mut parts = Vec::with_capacity(segments.len());
            for (j, s) in segments.iter_mut().enumerate() {
                let len = s.tokens.len();
                let reserve = s.cache.reserve();
                parts.push(AttentionPart {
                    start,
                    len,
                    bias: biases.get(j),
                    kv: &mut s.cache.layers[i],
                    reserve,
                });
                start += len;
            }
            match &mut on_rows {
                Some((values, ws)) => block.forward_rows(values, rows, &mut parts, team, ws)?,
                None => h = block.forward(&h, &mut parts, team)?,
            }
        }
        for s in segments.iter_mut() {
            s.cache.advance(s.tokens.len());
        }
        let n = last_rows.len();
        if n == 0 {
            return Tensor::zeros((0, self.cfg.vocab_size), DType::F32, &self.device);
        }
        if let Some((values, _)) = on_rows {
            return timed(Section::Head, || {
                self.logits_of_rows(&values, &last_rows, team)
            });
        }
        let last = h.index_select(&Tensor::from_vec(last_rows, n, &self.device)?, 0)?;
        let logits = self.lm_head.forward_on(&self.ln_f.forward(&last)?, team)?;
        (logits.to_dtype(DType::F32)? * self.cfg.output_logits_scale)?.contiguous()
    }

    /// The f32 logits (`[n, vocab]`) after the rows `last_rows` of the final hidden
    /// states `h` (f32 CPU rows of `n_embd` values; packed output head).
    fn logits_of_rows(
        &self,
        h: &[f32],
        last_rows: &[u32],
        team: &Team<'_>,
    ) -> candle_core::Result<Tensor> {
        let (e, vocab, n) = (self.cfg.n_embd, self.cfg.vocab_size, last_rows.len());
        let mut last = Vec::with_capacity(n * e);
        for &r in last_rows {
            let r = r as usize;
            let Some(row) = h.get(r * e..(r + 1) * e) else {
                candle_core::bail!("row {r} is past the step's rows");
            };
            last.extend_from_slice(row);
        }
        let mut x = vec![0f32; n * e];
        self.ln_f.rows_into(&last, &mut x)?;
        let mut logits = vec![0f32; n * vocab];
        packed_into(&mut [(&self.lm_head, &mut logits)], &x, n, team)?;
        // As candle multiplies a tensor by a scalar (`x · s + 0`).
        let scale = self.cfg.output_logits_scale as f32;
        for v in &mut logits {
            *v = *v * scale + 0.0;
        }
        Tensor::from_vec(logits, (n, vocab), &self.device)
    }

    /// Runs a prompt in chunks of at most `chunk` tokens (bounding the size of the attention
    /// score matrices) and returns the logits of its last token, `[vocab]`.
    pub fn prefill(
        &self,
        tokens: &[u32],
        cache: &mut Cache,
        chunk: usize,
    ) -> candle_core::Result<Tensor> {
        let mut logits = None;
        let pieces: Vec<&[u32]> = tokens.chunks(chunk.max(1)).collect();
        for (i, piece) in pieces.iter().enumerate() {
            let last = i + 1 == pieces.len();
            let l = self.forward_batch(&mut [Segment {
                tokens: piece,
                cache,
                logits: last,
            }])?;
            if last {
                logits = Some(l);
            }
        }
        match logits {
            Some(l) => l.squeeze(0),
            None => candle_core::bail!("empty prompt"),
        }
    }

    /// Returns the logits of the last position as a `Vec` (for one sequence).
    pub fn next_token_logits(
        &self,
        token: u32,
        cache: &mut Cache,
    ) -> candle_core::Result<Vec<f32>> {
        self.forward_batch(&mut [Segment {
            tokens: &[token],
            cache,
            logits: true,
        }])?
        .squeeze(0)?
        .to_vec1::<f32>()
    }
}

/// Refuses a checkpoint whose stored ALiBi slopes (`transformer.relative_pe.slopes`, if
/// present) differ from the ones computed for `n_head` heads.
fn check_stored_slopes(ckpt: &Checkpoint, slopes: &[f64], n_head: usize) -> Result<()> {
    let Some(stored) = ckpt.get("transformer.relative_pe.slopes", &Device::Cpu)? else {
        return Ok(());
    };
    let stored = stored
        .to_dtype(DType::F64)?
        .flatten_all()?
        .to_vec1::<f64>()?;
    let agrees = stored.len() == slopes.len()
        && stored
            .iter()
            .zip(slopes)
            .all(|(a, b)| (a - b).abs() <= 1e-3 * b.abs().max(1e-6));
    if !agrees {
        return Err(BtlmError::Checkpoint(format!(
            "transformer.relative_pe.slopes {stored:?} disagree with the ALiBi slopes \
             for {n_head} heads {slopes:?}"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn model_is_shareable() {
        fn f<T: Send + Sync>() {}
        f::<Btlm>();
    }

    /// The tiny test checkpoint in `format`.
    fn tiny(quantization: crate::options::Quantization) -> Btlm {
        tiny_with(&LoadOptions {
            quantization,
            ..LoadOptions::default()
        })
    }

    /// The tiny test checkpoint loaded with `opts`.
    fn tiny_with(opts: &LoadOptions) -> Btlm {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/btlm-tiny");
        let cfg = std::fs::read_to_string(dir.join("config.json")).expect("config.json");
        let cfg = Config::from_json(&cfg).expect("config");
        let ckpt = Checkpoint::open(&[dir.join("model.safetensors")]).expect("checkpoint");
        Btlm::load(&cfg, &ckpt, opts).expect("model")
    }

    /// The model answers what its packed projections' kernels promise (every projection
    /// shares the load's format, path and prefill precision).
    #[test]
    fn rows_independent_follows_the_kernels() {
        use crate::kernels::{KernelPath, PrefillPrecision, WeightFormat};
        use crate::options::Quantization;
        let path = KernelPath::active().expect("kernel path");
        for (q, format) in [
            (Quantization::None, WeightFormat::F32),
            (Quantization::Q8_0, WeightFormat::Q8_0),
            (Quantization::Q4k, WeightFormat::Q4K),
        ] {
            assert_eq!(
                tiny(q).rows_independent(),
                path.rows_independent(format, PrefillPrecision::Exact),
                "{format} on {path}"
            );
        }
    }

    /// A step on the rows path times every section on the thread that runs it (the
    /// leader of its team); one on the tensor path records none.
    #[test]
    fn a_step_on_rows_records_its_sections_and_one_on_tensors_none() {
        use crate::step_profile::{self, SectionTimes};
        let model = tiny(crate::options::Quantization::Q8_0);
        let tokens = [5u32, 9, 11];
        for rows_path in [true, false] {
            let mut cache = model.new_cache();
            let mut segments = vec![Segment {
                tokens: &tokens,
                cache: &mut cache,
                logits: true,
            }];
            step_profile::record(true);
            team::run(2, |t| model.forward_on(&mut segments, t, rows_path)).expect("step");
            let times = step_profile::take();
            step_profile::record(false);
            if rows_path {
                for (section, spent) in times.iter() {
                    assert!(spent > std::time::Duration::ZERO, "{section:?}: {times:?}");
                }
            } else {
                assert_eq!(times, SectionTimes::default());
            }
        }
    }

    /// The bits of the logits after the last of `pieces`, run one pass each on `cache`.
    fn last_logits<'t>(
        model: &Btlm,
        cache: &mut Cache,
        pieces: impl IntoIterator<Item = &'t [u32]>,
    ) -> Vec<u32> {
        let mut last = Vec::new();
        for tokens in pieces {
            let mut segment = [Segment {
                tokens,
                cache: &mut *cache,
                logits: true,
            }];
            let l = model.forward_batch(&mut segment).expect("step");
            last = l
                .flatten_all()
                .expect("flat")
                .to_vec1::<f32>()
                .expect("logits");
        }
        last.iter().map(|v| v.to_bits()).collect()
    }

    /// What prefix reuse rests on: a cache truncated at a piece boundary, or its positions
    /// up to there copied into a larger one, and fed the rest of a sequence in the pieces a
    /// new cache would get gives the new cache's logits, bit for bit, whatever the positions
    /// it held past the cut, in every format and key/value layout.
    #[test]
    fn a_cache_truncated_at_a_piece_boundary_gives_a_new_caches_logits() {
        use crate::options::{KvDtype, Quantization};
        for (quantization, kv_dtype) in [
            (Quantization::None, KvDtype::Auto),
            (Quantization::Q8_0, KvDtype::Auto),
            (Quantization::Q8_0, KvDtype::F16),
            (Quantization::Q4k, KvDtype::Auto),
            (Quantization::Q4k, KvDtype::F16),
            (Quantization::Q4k, KvDtype::Q4),
        ] {
            let opts = LoadOptions {
                quantization,
                kv_dtype,
                ..LoadOptions::default()
            };
            let model = tiny_with(&opts);
            let vocab = model.config().vocab_size as u32;
            let tokens =
                |seed: u32| -> Vec<u32> { (0..30).map(|i| (i * 7919 + seed) % vocab).collect() };
            // A prompt of 20 in pieces of 8, then ten tokens one at a time, from `at` on.
            let run = |cache: &mut Cache, tokens: &[u32], at: usize| -> Vec<u32> {
                let mut pieces: Vec<&[u32]> = tokens[at..20].chunks(8).collect();
                pieces.extend(tokens[20..].chunks(1));
                last_logits(&model, cache, pieces)
            };
            let (a, b) = (tokens(13), tokens(101));
            for cut in [8, 16] {
                // `b` starting with `a`'s first `cut` tokens.
                let mut next = a[..cut].to_vec();
                next.extend_from_slice(&b[cut..]);
                let want = run(&mut model.new_cache(), &next, 0);
                // (A cloned cache shares its tensors' memory: one cache per cut.)
                let mut kept = model.new_cache();
                run(&mut kept, &a, 0);
                let mut copied = model.new_cache_with_capacity(64);
                kept.copy_prefix_into(&mut copied, cut).expect("copy");
                kept.truncate(cut);
                assert_eq!(kept.seq_len(), cut);
                assert_eq!(run(&mut kept, &next, cut), want, "{opts:?}: cut at {cut}");
                assert_eq!(run(&mut copied, &next, cut), want, "{opts:?}: {cut} copied");
            }
        }
    }

    /// What keeping any prefix rests on ([`Btlm::splits_alike`]): where the products give
    /// each row the same bits whatever other rows share them, a sequence's logits do
    /// not depend on how it was split into passes (prefill pieces of any size, one token at
    /// a time), bit for bit, over three tiles of keys, in every format and key/value layout.
    #[test]
    fn where_rows_are_independent_a_sequence_gives_the_same_logits_however_it_is_split() {
        use crate::options::{KvDtype, Quantization};
        let mut checked = 0;
        for (quantization, dtype, kv_dtype) in [
            (Quantization::None, DType::F32, KvDtype::Auto),
            (Quantization::None, DType::F32, KvDtype::F16),
            (Quantization::None, DType::BF16, KvDtype::Auto),
            (Quantization::None, DType::F16, KvDtype::Auto),
            (Quantization::Q8_0, DType::F32, KvDtype::Auto),
            (Quantization::Q8_0, DType::F32, KvDtype::F16),
            (Quantization::Q4k, DType::F32, KvDtype::Auto),
            (Quantization::Q4k, DType::F32, KvDtype::F16),
            (Quantization::Q4k, DType::F32, KvDtype::Q4),
        ] {
            let opts = LoadOptions {
                quantization,
                dtype,
                kv_dtype,
                ..LoadOptions::default()
            };
            let model = tiny_with(&opts);
            assert_eq!(model.splits_alike(), model.rows_independent(), "{opts:?}");
            if !model.splits_alike() {
                continue;
            }
            checked += 1;
            let vocab = model.config().vocab_size as u32;
            let tokens: Vec<u32> = (0..150).map(|i| (i * 7919 + 29) % vocab).collect();
            let run = |split: &[usize]| -> Vec<u32> {
                let mut cache = model.new_cache_with_capacity(tokens.len());
                let mut start = 0;
                let pieces = split.iter().map(|&n| {
                    start += n;
                    &tokens[start - n..start]
                });
                let last = last_logits(&model, &mut cache, pieces);
                assert!(crate::kv_cache::tests::two_allocations(&cache), "{opts:?}");
                assert_eq!(start, tokens.len());
                last
            };
            let want = run(&[150]);
            let mut one_a_token = vec![1; 20];
            one_a_token.push(130);
            for split in [
                &[64, 64, 22][..],
                &[5, 13, 64, 1, 67],
                &[149, 1],
                &one_a_token,
            ] {
                assert!(run(split) == want, "{opts:?}: split {split:?}");
            }
        }
        let path = crate::kernels::KernelPath::active().expect("kernel path");
        // Every path but the scalar one has a route that computes rows alone.
        assert!(
            checked > 0 || path == crate::kernels::KernelPath::Scalar,
            "{path}"
        );
    }

    #[test]
    fn blocks_on_rows_equal_blocks_on_tensors_bit_for_bit() {
        use crate::options::Quantization;
        for q in [Quantization::None, Quantization::Q8_0, Quantization::Q4k] {
            let model = tiny(q);
            let vocab = model.config().vocab_size as u32;
            let tokens: Vec<u32> = (0..12).map(|i| (i * 7919 + 13) % vocab).collect();
            for threads in [1, 2, 3] {
                let mut caches: [[Cache; 3]; 2] =
                    std::array::from_fn(|_| std::array::from_fn(|_| model.new_cache()));
                // A prompt piece of each sequence (the last wants no logits), then decode
                // steps of one token each, the third sequence joining late.
                let steps: [[&[u32]; 3]; 3] = [
                    [&tokens[..5], &tokens[5..8], &[]],
                    [&tokens[8..9], &tokens[9..10], &tokens[..4]],
                    [&tokens[10..11], &tokens[11..12], &tokens[4..5]],
                ];
                for (step, pieces) in steps.iter().enumerate() {
                    let mut outs = Vec::new();
                    for (path, caches) in caches.iter_mut().enumerate() {
                        let mut segments: Vec<Segment<'_>> = caches
                            .iter_mut()
                            .zip(pieces)
                            .filter(|(_, p)| !p.is_empty())
                            .enumerate()
                            .map(|(i, (cache, p))| Segment {
                                tokens: p,
                                cache,
                                logits: i != 2 || step > 0,
                            })
                            .collect();
                        let logits =
                            team::run(threads, |t| model.forward_on(&mut segments, t, path == 0))
                                .expect("step");
                        outs.push(logits.to_vec2::<f32>().expect("logits"));
                    }
                    assert!(!outs[0].is_empty());
                    assert_eq!(outs[0], outs[1], "{q:?}, {threads} threads, step {step}");
                }
            }
        }
    }
}
