//! Weight formats and their packed, SIMD-friendly layouts.
//!
//! Every format stores the `[n_out, n_in]` matrix as *tiles* of [`TILE`] = 16 output rows
//! (the last tile is padded with zero rows), each tile contiguous so that a core streams it
//! front to back. Inside a tile the 16 rows are interleaved: one 64-byte vector holds the
//! same few input positions `k` of all 16 rows, so one SIMD instruction updates 16 outputs
//! and activations are broadcast, never reduced horizontally. The input dimension is padded
//! with zeros to [`WeightFormat::k_align`].
//!
//! | format | unit of `k` | unit layout (one tile) | bytes / weight |
//! | --- | --- | --- | ---: |
//! | f32 | 1 | `[16] f32` | 4 |
//! | f16 | 1 | `[16] f16` | 2 |
//! | bf16 | 2 | `[16][2] bf16` (VNNI pairs) | 2 |
//! | q8_0 | 32 | `[16] f16` scales, then `[8][16][4] u8` = `q + 128` | 1.0625 |
//! | q4k | 256 | `d [16] f16`, `dmin [16] f16`, `hi [16] u32`, `lo [8][16] u8`, `qs [8][4][64] u8` | 0.5625 |
//!
//! q8_0 weights are `d · q`, `q ∈ [−127, 127]` per block of 32 (ggml's q8_0); they are
//! stored offset by 128 so that they are the unsigned operand of VNNI's `u8 × i8` products.
//! q4k is ggml's Q4_K: super-blocks of 256 inputs, eight sub-blocks of 32 with 6-bit scales
//! `sc` and mins `m`, weights `d·sc·q − dmin·m`, `q ∈ [0, 15]`. Per row and sub-block `j`,
//! `lo[j]` holds `(sc & 15) | (m & 15) << 4`; `hi` bits `2j..2j+2` hold `sc >> 4` and bits
//! `16+2j..` hold `m >> 4`. `qs[j][v]` packs the 4-weight groups `v` (low nibbles) and `v + 4`
//! (high nibbles) of sub-block `j` as `[16 rows][4 k]`.

use std::fmt;
use std::str::FromStr;

/// Output rows per tile.
pub const TILE: usize = 16;
/// Inputs per q8_0 block (and per block of quantized activations).
pub const QBLOCK: usize = 32;
/// Inputs per q4k super-block.
pub const QK_K: usize = 256;
/// Bytes of one q8_0 block of a tile (16 rows × 32 inputs).
pub const Q8_0_TILE_BLOCK: usize = TILE * 2 + TILE * QBLOCK;
/// Bytes of one q4k super-block of a tile (16 rows × 256 inputs).
pub const Q4K_TILE_BLOCK: usize = 2 * TILE * 2 + TILE * 4 + 8 * TILE + TILE * QK_K / 2;
/// Offsets inside a q4k tile block.
pub(crate) mod q4k_off {
    /// `d`, 16 × f16.
    pub const D: usize = 0;
    /// `dmin`, 16 × f16.
    pub const DMIN: usize = 32;
    /// High bits of scales and mins, 16 × u32.
    pub const HI: usize = 64;
    /// Low bits, 8 × 16 bytes.
    pub const LO: usize = 128;
    /// Nibbles, 8 sub-blocks × 4 vectors × 64 bytes.
    pub const QS: usize = 256;
}

/// How the weights of a matrix are stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum WeightFormat {
    /// 32-bit floats (exact).
    F32,
    /// IEEE half precision.
    F16,
    /// bfloat16; activations are rounded to bf16 for the dot products (like PyTorch bf16).
    Bf16,
    /// 8-bit blocks of 32 (ggml q8_0).
    Q8_0,
    /// 4-bit super-blocks of 256 with 6-bit sub-block scales and mins (ggml Q4_K).
    Q4K,
}

impl WeightFormat {
    /// Every format, in a fixed order.
    pub const ALL: [WeightFormat; 5] = [
        WeightFormat::F32,
        WeightFormat::F16,
        WeightFormat::Bf16,
        WeightFormat::Q8_0,
        WeightFormat::Q4K,
    ];

    /// The input dimension is padded to a multiple of this.
    pub fn k_align(self) -> usize {
        match self {
            WeightFormat::F32 | WeightFormat::F16 => 1,
            WeightFormat::Bf16 => 2,
            WeightFormat::Q8_0 => QBLOCK,
            WeightFormat::Q4K => QK_K,
        }
    }

    /// `k` rounded up to [`Self::k_align`].
    pub fn padded_k(self, k: usize) -> usize {
        k.div_ceil(self.k_align()) * self.k_align()
    }

    /// Bytes of one tile (16 output rows) for a padded input size `k_pad`.
    pub fn tile_bytes(self, k_pad: usize) -> usize {
        match self {
            WeightFormat::F32 => TILE * 4 * k_pad,
            WeightFormat::F16 | WeightFormat::Bf16 => TILE * 2 * k_pad,
            WeightFormat::Q8_0 => k_pad / QBLOCK * Q8_0_TILE_BLOCK,
            WeightFormat::Q4K => k_pad / QK_K * Q4K_TILE_BLOCK,
        }
    }

    /// Whether the dot products use 8-bit quantized activations.
    pub fn quantized(self) -> bool {
        matches!(self, WeightFormat::Q8_0 | WeightFormat::Q4K)
    }

    /// The name used on the command line and in bench output.
    pub fn name(self) -> &'static str {
        match self {
            WeightFormat::F32 => "f32",
            WeightFormat::F16 => "f16",
            WeightFormat::Bf16 => "bf16",
            WeightFormat::Q8_0 => "q8_0",
            WeightFormat::Q4K => "q4k",
        }
    }

    /// A stable one-byte code (for the converted-weights cache).
    pub fn code(self) -> u8 {
        match self {
            WeightFormat::F32 => 0,
            WeightFormat::F16 => 1,
            WeightFormat::Bf16 => 2,
            WeightFormat::Q8_0 => 3,
            WeightFormat::Q4K => 4,
        }
    }

    /// The format of a [`Self::code`].
    pub fn from_code(code: u8) -> Option<Self> {
        Self::ALL.into_iter().find(|f| f.code() == code)
    }
}

impl fmt::Display for WeightFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for WeightFormat {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|f| f.name() == s)
            .ok_or_else(|| format!("unknown weight format {s:?} (f32, f16, bf16, q8_0, q4k)"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_match_the_documented_layouts() {
        assert_eq!(Q8_0_TILE_BLOCK, 544);
        assert_eq!(Q4K_TILE_BLOCK, 2304);
        assert_eq!(q4k_off::QS + 8 * 4 * 64, Q4K_TILE_BLOCK);
        // n_inner of BTLM-3B: the q4k tail pads 6826 to 27 super-blocks.
        assert_eq!(WeightFormat::Q4K.padded_k(6826), 6912);
        assert_eq!(WeightFormat::Q8_0.padded_k(6826), 6848);
        assert_eq!(WeightFormat::Bf16.padded_k(7), 8);
        assert_eq!(WeightFormat::F32.padded_k(7), 7);
        // Bytes per weight as documented.
        for (f, bpw) in [
            (WeightFormat::F32, 4.0),
            (WeightFormat::F16, 2.0),
            (WeightFormat::Bf16, 2.0),
            (WeightFormat::Q8_0, 1.0625),
            (WeightFormat::Q4K, 0.5625),
        ] {
            let k = 512;
            assert_eq!(f.tile_bytes(k) as f64 / (TILE * k) as f64, bpw, "{f}");
        }
    }

    #[test]
    fn names_and_codes_round_trip() {
        for f in WeightFormat::ALL {
            assert_eq!(f.name().parse::<WeightFormat>(), Ok(f));
            assert_eq!(WeightFormat::from_code(f.code()), Some(f));
        }
        assert!("q5k".parse::<WeightFormat>().is_err());
        assert_eq!(WeightFormat::from_code(99), None);
    }
}
