//! Zeroed buffers that start on a cache line, for what the tile unit loads.
//!
//! A `tileloadd` reads 16 rows of 64 bytes. When the rows straddle cache lines, each reads
//! two lines, and on a Sapphire Rapids-class Xeon the load took ~6× as long (16 ns instead
//! of 2.4 ns from L1; docs/benchmarks.md, "Tile loads on cache lines"). A `Vec`'s heap
//! memory is only as aligned as its element (16 bytes in practice), so activations and
//! scratch the tile kernels read go in an [`AlignedVec`] instead.

use std::fmt;
use std::marker::PhantomData;
use std::ops::{Deref, DerefMut};

use bytemuck::{Pod, Zeroable};

/// One cache line (also the unit of `convert512.rs`'s scratch: a pair of inputs of a bf16
/// tile).
#[derive(Clone, Copy, Zeroable, Pod)]
#[repr(C, align(64))]
pub(super) struct Line(pub(super) [u8; 64]);

/// `len` plain values, zero-initialised, the first one 64-byte aligned; a slice otherwise.
/// `T`'s size divides 64 (any primitive number does; others panic when viewed).
#[derive(Clone)]
pub struct AlignedVec<T> {
    lines: Vec<Line>,
    len: usize,
    _values: PhantomData<T>,
}

impl<T: Pod> AlignedVec<T> {
    /// `len` zeros.
    pub fn zeroed(len: usize) -> Self {
        let bytes = len * size_of::<T>();
        AlignedVec {
            lines: vec![Line([0; 64]); bytes.div_ceil(size_of::<Line>())],
            len,
            _values: PhantomData,
        }
    }
}

impl<T: Pod> Deref for AlignedVec<T> {
    type Target = [T];
    fn deref(&self) -> &[T] {
        &bytemuck::cast_slice(&self.lines)[..self.len]
    }
}

impl<T: Pod> DerefMut for AlignedVec<T> {
    fn deref_mut(&mut self) -> &mut [T] {
        &mut bytemuck::cast_slice_mut(&mut self.lines)[..self.len]
    }
}

impl<T: Pod + fmt::Debug> fmt::Debug for AlignedVec<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.iter()).finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_start_on_a_cache_line_and_are_zero() {
        for len in [0, 1, 15, 16, 17, 1000, 4096 + 3] {
            let mut v = AlignedVec::<u16>::zeroed(len);
            assert_eq!(v.len(), len);
            assert_eq!(v.as_ptr() as usize % 64, 0, "len {len}");
            assert!(v.iter().all(|&x| x == 0));
            for (i, x) in v.iter_mut().enumerate() {
                *x = i as u16;
            }
            assert!(v.iter().enumerate().all(|(i, &x)| x == i as u16));
            let w = v.clone();
            assert_eq!(&w[..], &v[..]);
            assert_eq!(w.as_ptr() as usize % 64, 0);
        }
    }
}
