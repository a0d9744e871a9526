//! Packing matrices into the tiled layouts of [`super::format`], and reading them back.

use rayon::prelude::*;

use super::KernelError;
use super::acts::{bf16_to_f32, f32_to_bf16};
use super::format::{Q4K_TILE_BLOCK, Q8_0_TILE_BLOCK, QBLOCK, QK_K, TILE, WeightFormat, q4k_off};
use super::quant::{quantize_q4k, quantize_q8_0};
use super::storage::Bytes;

/// The element type of a source matrix.
#[derive(Debug, Clone, Copy)]
pub enum SourceData<'a> {
    /// f32 values.
    F32(&'a [f32]),
    /// bf16 values.
    Bf16(&'a [half::bf16]),
    /// f16 values.
    F16(&'a [half::f16]),
}

impl SourceData<'_> {
    fn len(&self) -> usize {
        match self {
            SourceData::F32(v) => v.len(),
            SourceData::Bf16(v) => v.len(),
            SourceData::F16(v) => v.len(),
        }
    }

    #[inline]
    fn get(&self, i: usize) -> f32 {
        match self {
            SourceData::F32(v) => v[i],
            SourceData::Bf16(v) => v[i].to_f32(),
            SourceData::F16(v) => v[i].to_f32(),
        }
    }
}

/// A row-major source matrix of the weights `W` of `y = x · Wᵀ` (`[n_out, n_in]`), or of its
/// transpose (`[n_in, n_out]`, GPT-2's `Conv1D` layout) when `transposed`.
#[derive(Debug, Clone, Copy)]
pub struct Source<'a> {
    /// The values.
    pub data: SourceData<'a>,
    /// Outputs.
    pub n_out: usize,
    /// Inputs.
    pub n_in: usize,
    /// Stored `[n_in, n_out]`.
    pub transposed: bool,
}

impl<'a> Source<'a> {
    /// Row-major f32 weights `[n_out, n_in]`.
    pub fn f32(w: &'a [f32], n_out: usize, n_in: usize) -> Self {
        Source {
            data: SourceData::F32(w),
            n_out,
            n_in,
            transposed: false,
        }
    }

    /// Copies output rows `o0..o0 + 16` (zero past `n_out` and past `n_in`) into `buf`
    /// (`16 × k_pad`).
    fn gather_tile(&self, o0: usize, k_pad: usize, buf: &mut [f32]) {
        buf.fill(0.0);
        let rows = self.n_out.saturating_sub(o0).min(TILE);
        if self.transposed {
            for k in 0..self.n_in {
                let base = k * self.n_out + o0;
                for i in 0..rows {
                    buf[i * k_pad + k] = self.data.get(base + i);
                }
            }
        } else {
            for i in 0..rows {
                let base = (o0 + i) * self.n_in;
                for (k, b) in buf[i * k_pad..i * k_pad + self.n_in].iter_mut().enumerate() {
                    *b = self.data.get(base + k);
                }
            }
        }
    }
}

/// A matrix in one of the packed [`WeightFormat`]s, ready for [`super::matmul`].
#[derive(Debug, Clone)]
pub struct PackedMatrix {
    format: WeightFormat,
    n_out: usize,
    n_in: usize,
    k_pad: usize,
    data: Bytes,
}

impl PackedMatrix {
    /// Converts (and quantizes) `src`, tiles in parallel.
    pub fn pack(format: WeightFormat, src: &Source<'_>) -> Result<Self, KernelError> {
        if src.data.len() != src.n_out * src.n_in || src.n_out == 0 || src.n_in == 0 {
            return Err(KernelError::Shape(format!(
                "source of {} values for a {}×{} matrix",
                src.data.len(),
                src.n_out,
                src.n_in
            )));
        }
        let k_pad = format.padded_k(src.n_in);
        let tile_bytes = format.tile_bytes(k_pad);
        let tiles = src.n_out.div_ceil(TILE);
        let data = Bytes::owned_with(tiles * tile_bytes, |bytes| {
            bytes.par_chunks_mut(tile_bytes).enumerate().for_each_init(
                || vec![0f32; TILE * k_pad],
                |buf, (t, out)| {
                    src.gather_tile(t * TILE, k_pad, buf);
                    pack_tile(format, buf, k_pad, out);
                },
            );
        })
        .map_err(|e| KernelError::Memory(format!("{} bytes: {e}", tiles * tile_bytes)))?;
        Ok(PackedMatrix {
            format,
            n_out: src.n_out,
            n_in: src.n_in,
            k_pad,
            data,
        })
    }

    /// Wraps already packed bytes (from the converted-weights cache), checking their size.
    pub fn from_bytes(
        format: WeightFormat,
        n_out: usize,
        n_in: usize,
        data: Bytes,
    ) -> Result<Self, KernelError> {
        let k_pad = format.padded_k(n_in);
        let expected = n_out.div_ceil(TILE) * format.tile_bytes(k_pad);
        if n_out == 0 || n_in == 0 || data.len() != expected {
            return Err(KernelError::Shape(format!(
                "{} bytes for a {n_out}×{n_in} {format} matrix (expected {expected})",
                data.len()
            )));
        }
        Ok(PackedMatrix {
            format,
            n_out,
            n_in,
            k_pad,
            data,
        })
    }

    /// The format.
    pub fn format(&self) -> WeightFormat {
        self.format
    }

    /// Outputs (rows of `W`).
    pub fn n_out(&self) -> usize {
        self.n_out
    }

    /// Inputs (columns of `W`).
    pub fn n_in(&self) -> usize {
        self.n_in
    }

    /// Inputs padded to the format's block.
    pub fn k_pad(&self) -> usize {
        self.k_pad
    }

    /// Number of 16-row tiles.
    pub fn tiles(&self) -> usize {
        self.n_out.div_ceil(TILE)
    }

    /// The packed bytes.
    pub fn bytes(&self) -> &Bytes {
        &self.data
    }

    /// The bytes of tile `t`.
    pub fn tile(&self, t: usize) -> &[u8] {
        let n = self.format.tile_bytes(self.k_pad);
        &self.data.as_slice()[t * n..(t + 1) * n]
    }

    /// Row `o` of `W` as f32 (the values the kernels multiply with), `n_in` long.
    pub fn dequantize_row(&self, o: usize) -> Vec<f32> {
        let mut out = vec![0f32; self.k_pad];
        let tile = self.tile(o / TILE);
        let i = o % TILE;
        for (k, v) in out.iter_mut().enumerate() {
            *v = weight_at(self.format, tile, i, k);
        }
        out.truncate(self.n_in);
        out
    }
}

#[inline]
fn f16_at(b: &[u8], off: usize) -> f32 {
    half::f16::from_bits(u16::from_le_bytes([b[off], b[off + 1]])).to_f32()
}

/// Weight (row `i` of the tile, input `k`) of a packed tile; the scalar definition of the
/// layouts, used by the reference kernels and the tests.
pub(crate) fn weight_at(format: WeightFormat, tile: &[u8], i: usize, k: usize) -> f32 {
    match format {
        WeightFormat::F32 => {
            let o = dense_offset(format, i, k);
            f32::from_le_bytes([tile[o], tile[o + 1], tile[o + 2], tile[o + 3]])
        }
        WeightFormat::F16 => f16_at(tile, dense_offset(format, i, k)),
        WeightFormat::Bf16 => {
            let o = dense_offset(format, i, k);
            bf16_to_f32(u16::from_le_bytes([tile[o], tile[o + 1]]))
        }
        WeightFormat::Q8_0 => {
            let blk = &tile[k / QBLOCK * Q8_0_TILE_BLOCK..];
            let kk = k % QBLOCK;
            let q = blk[2 * TILE + (kk / 4) * 64 + i * 4 + kk % 4] as i32 - 128;
            f16_at(blk, 2 * i) * q as f32
        }
        WeightFormat::Q4K => {
            let blk = &tile[k / QK_K * Q4K_TILE_BLOCK..];
            let kk = k % QK_K;
            let (j, within) = (kk / QBLOCK, kk % QBLOCK);
            let (sc, m) = q4k_scale_min(blk, i, j);
            let g = within / 4;
            let byte = blk[q4k_off::QS + j * 256 + (g % 4) * 64 + i * 4 + within % 4];
            let q = if g < 4 { byte & 15 } else { byte >> 4 };
            f16_at(blk, q4k_off::D + 2 * i) * sc as f32 * q as f32
                - f16_at(blk, q4k_off::DMIN + 2 * i) * m as f32
        }
    }
}

/// Byte offset of weight (row `i` of the tile, input `k`) in a dense tile: `[k][16]` for
/// f32 and f16, `[k/2][16][2]` (VNNI pairs) for bf16.
#[inline]
fn dense_offset(format: WeightFormat, i: usize, k: usize) -> usize {
    match format {
        WeightFormat::F32 => (k * TILE + i) * 4,
        WeightFormat::F16 => (k * TILE + i) * 2,
        WeightFormat::Bf16 => ((k / 2 * TILE + i) * 2 + k % 2) * 2,
        WeightFormat::Q8_0 | WeightFormat::Q4K => unreachable!("{format} tiles are not dense"),
    }
}

/// The 6-bit scale and min of row `i`, sub-block `j` of a q4k tile block.
pub(crate) fn q4k_scale_min(blk: &[u8], i: usize, j: usize) -> (u8, u8) {
    let o = q4k_off::HI + 4 * i;
    let hi = u32::from_le_bytes([blk[o], blk[o + 1], blk[o + 2], blk[o + 3]]);
    let lo = blk[q4k_off::LO + j * TILE + i];
    let sc = (lo & 15) | ((((hi >> (2 * j)) & 3) as u8) << 4);
    let m = (lo >> 4) | ((((hi >> (16 + 2 * j)) & 3) as u8) << 4);
    (sc, m)
}

/// Packs one tile from `rows` (`16 × k_pad` f32, zero padded) into `out`.
fn pack_tile(format: WeightFormat, rows: &[f32], k_pad: usize, out: &mut [u8]) {
    let at = |i: usize, k: usize| rows[i * k_pad + k];
    match format {
        WeightFormat::F32 | WeightFormat::F16 | WeightFormat::Bf16 => {
            for k in 0..k_pad {
                for i in 0..TILE {
                    let (o, v) = (dense_offset(format, i, k), at(i, k));
                    match format {
                        WeightFormat::F32 => out[o..o + 4].copy_from_slice(&v.to_le_bytes()),
                        WeightFormat::F16 => {
                            out[o..o + 2].copy_from_slice(&half::f16::from_f32(v).to_le_bytes())
                        }
                        _ => out[o..o + 2].copy_from_slice(&f32_to_bf16(v).to_le_bytes()),
                    }
                }
            }
        }
        WeightFormat::Q8_0 => {
            for (b, blk) in out.chunks_exact_mut(Q8_0_TILE_BLOCK).enumerate() {
                for i in 0..TILE {
                    let x: &[f32; QBLOCK] = rows[i * k_pad + b * QBLOCK..][..QBLOCK]
                        .try_into()
                        .expect("block of 32");
                    let (d, q) = quantize_q8_0(x);
                    blk[2 * i..2 * i + 2].copy_from_slice(&d.to_le_bytes());
                    for (kk, &v) in q.iter().enumerate() {
                        blk[2 * TILE + (kk / 4) * 64 + i * 4 + kk % 4] = (v as i32 + 128) as u8;
                    }
                }
            }
        }
        WeightFormat::Q4K => {
            for (s, blk) in out.chunks_exact_mut(Q4K_TILE_BLOCK).enumerate() {
                for i in 0..TILE {
                    let x: &[f32; QK_K] = rows[i * k_pad + s * QK_K..][..QK_K]
                        .try_into()
                        .expect("block of 256");
                    let b = quantize_q4k(x);
                    blk[q4k_off::D + 2 * i..][..2].copy_from_slice(&b.d.to_le_bytes());
                    blk[q4k_off::DMIN + 2 * i..][..2].copy_from_slice(&b.dmin.to_le_bytes());
                    let mut hi = 0u32;
                    for j in 0..8 {
                        blk[q4k_off::LO + j * TILE + i] = (b.sc[j] & 15) | ((b.m[j] & 15) << 4);
                        hi |= ((b.sc[j] >> 4) as u32) << (2 * j);
                        hi |= ((b.m[j] >> 4) as u32) << (16 + 2 * j);
                    }
                    blk[q4k_off::HI + 4 * i..][..4].copy_from_slice(&hi.to_le_bytes());
                    for j in 0..8 {
                        for v in 0..4 {
                            for kk in 0..4 {
                                let lo = b.q[j * QBLOCK + v * 4 + kk];
                                let hi = b.q[j * QBLOCK + (v + 4) * 4 + kk];
                                blk[q4k_off::QS + j * 256 + v * 64 + i * 4 + kk] = lo | (hi << 4);
                            }
                        }
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn matrix(n_out: usize, n_in: usize) -> Vec<f32> {
        (0..n_out * n_in)
            .map(|i| ((i * 7919 % 1009) as f32 / 1009.0 - 0.5) * 0.1)
            .collect()
    }

    #[test]
    fn dense_formats_round_trip_exactly_or_by_rounding() {
        let (n_out, n_in) = (21, 13);
        let w = matrix(n_out, n_in);
        for format in [WeightFormat::F32, WeightFormat::F16, WeightFormat::Bf16] {
            let p = PackedMatrix::pack(format, &Source::f32(&w, n_out, n_in)).expect("pack");
            assert_eq!(p.tiles(), 2);
            for o in 0..n_out {
                let row = p.dequantize_row(o);
                for (k, &v) in row.iter().enumerate() {
                    let orig = w[o * n_in + k];
                    let expect = match format {
                        WeightFormat::F32 => orig,
                        WeightFormat::F16 => half::f16::from_f32(orig).to_f32(),
                        _ => bf16_to_f32(f32_to_bf16(orig)),
                    };
                    assert_eq!(v, expect, "{format} {o} {k}");
                }
            }
            // Padding rows are zero.
            let pad = weight_at(format, p.tile(1), TILE - 1, 0);
            assert_eq!(pad, 0.0);
        }
    }

    #[test]
    fn transposed_and_bf16_sources_pack_the_same_matrix() {
        let (n_out, n_in) = (18, 300);
        let w = matrix(n_out, n_in);
        let wt: Vec<f32> = (0..n_in * n_out)
            .map(|i| w[(i % n_out) * n_in + i / n_out])
            .collect();
        let wb: Vec<half::bf16> = w.iter().map(|&v| half::bf16::from_f32(v)).collect();
        for format in WeightFormat::ALL {
            let a = PackedMatrix::pack(format, &Source::f32(&w, n_out, n_in)).expect("pack");
            let b = PackedMatrix::pack(
                format,
                &Source {
                    data: SourceData::F32(&wt),
                    n_out,
                    n_in,
                    transposed: true,
                },
            )
            .expect("pack");
            assert_eq!(a.bytes().as_slice(), b.bytes().as_slice(), "{format}");
            let c = PackedMatrix::pack(
                format,
                &Source {
                    data: SourceData::Bf16(&wb),
                    n_out,
                    n_in,
                    transposed: false,
                },
            )
            .expect("pack");
            if format == WeightFormat::Bf16 {
                assert_eq!(a.bytes().as_slice(), c.bytes().as_slice());
            }
            assert_eq!(c.dequantize_row(17).len(), n_in);
        }
    }

    #[test]
    fn quantized_rows_stay_close() {
        let (n_out, n_in) = (16, 6826);
        let w = matrix(n_out, n_in);
        for (format, tol) in [
            (WeightFormat::Q8_0, 0.05 / 127.0),
            (WeightFormat::Q4K, 0.006),
        ] {
            let p = PackedMatrix::pack(format, &Source::f32(&w, n_out, n_in)).expect("pack");
            assert_eq!(p.k_pad(), format.padded_k(6826));
            for o in [0, 7, 15] {
                let row = p.dequantize_row(o);
                let worst = row
                    .iter()
                    .zip(&w[o * n_in..])
                    .map(|(a, b)| (a - b).abs())
                    .fold(0f32, f32::max);
                assert!(worst <= tol, "{format} row {o}: {worst}");
            }
        }
    }

    #[test]
    fn wrong_sizes_are_refused() {
        let w = matrix(4, 4);
        let err = PackedMatrix::pack(WeightFormat::F32, &Source::f32(&w, 4, 5)).expect_err("size");
        assert!(err.to_string().contains("4×5"), "{err}");
        let bytes = Bytes::owned_with(10, |_| {}).expect("memory");
        assert!(PackedMatrix::from_bytes(WeightFormat::F32, 1, 1, bytes.clone()).is_err());
        let ok = Bytes::owned_with(64, |_| {}).expect("memory");
        assert!(PackedMatrix::from_bytes(WeightFormat::F32, 16, 1, ok).is_ok());
    }
}
