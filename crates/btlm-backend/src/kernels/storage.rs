//! Byte buffers for packed weights: owned and 64-byte aligned, or a slice of a memory map.

use std::sync::Arc;

use memmap2::Mmap;

/// A 64-byte aligned chunk (the size of a cache line and of an AVX-512 vector).
#[derive(Clone, Copy)]
#[repr(C, align(64))]
struct Line([u8; 64]);

/// Read-only bytes, either owned (aligned to 64) or borrowed from a shared memory map.
#[derive(Clone)]
pub struct Bytes {
    inner: Inner,
}

#[derive(Clone)]
enum Inner {
    Owned {
        lines: Arc<Vec<Line>>,
        len: usize,
    },
    Mapped {
        map: Arc<Mmap>,
        offset: usize,
        len: usize,
    },
}

impl std::fmt::Debug for Bytes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kind = match self.inner {
            Inner::Owned { .. } => "owned",
            Inner::Mapped { .. } => "mapped",
        };
        write!(f, "Bytes({kind}, {} bytes)", self.len())
    }
}

impl Bytes {
    /// Takes ownership of bytes written by `fill` into a zeroed, 64-byte aligned buffer.
    pub fn owned_with(len: usize, fill: impl FnOnce(&mut [u8])) -> Self {
        let mut lines = vec![Line([0; 64]); len.div_ceil(64)];
        // SAFETY: `Line` is 64 plain bytes with no padding, so the vector's storage is
        // `lines.len() * 64` initialized bytes; `len` does not exceed that.
        let bytes = unsafe { std::slice::from_raw_parts_mut(lines.as_mut_ptr().cast::<u8>(), len) };
        fill(bytes);
        Bytes {
            inner: Inner::Owned {
                lines: Arc::new(lines),
                len,
            },
        }
    }

    /// A view of `len` bytes at `offset` of a memory map; `None` if out of range.
    pub fn mapped(map: Arc<Mmap>, offset: usize, len: usize) -> Option<Self> {
        let end = offset.checked_add(len)?;
        (end <= map.len()).then_some(Bytes {
            inner: Inner::Mapped { map, offset, len },
        })
    }

    /// The bytes.
    pub fn as_slice(&self) -> &[u8] {
        match &self.inner {
            Inner::Owned { lines, len } => {
                // SAFETY: as in `owned_with`: the lines hold at least `len` initialized bytes,
                // and they live as long as `self` (shared, never mutated after creation).
                unsafe { std::slice::from_raw_parts(lines.as_ptr().cast::<u8>(), *len) }
            }
            Inner::Mapped { map, offset, len } => &map[*offset..*offset + *len],
        }
    }

    /// Number of bytes.
    pub fn len(&self) -> usize {
        match &self.inner {
            Inner::Owned { len, .. } | Inner::Mapped { len, .. } => *len,
        }
    }

    /// Whether there are no bytes.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Whether the bytes live in a memory map (the converted-weights cache).
    pub fn is_mapped(&self) -> bool {
        matches!(self.inner, Inner::Mapped { .. })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn owned_bytes_are_aligned_and_filled() {
        let b = Bytes::owned_with(100, |s| {
            for (i, x) in s.iter_mut().enumerate() {
                *x = i as u8;
            }
        });
        assert_eq!(b.len(), 100);
        assert_eq!(b.as_slice()[99], 99);
        assert_eq!(b.as_slice().as_ptr() as usize % 64, 0);
        assert!(!b.is_mapped());
        assert!(Bytes::owned_with(0, |_| {}).is_empty());
    }

    #[test]
    fn mapped_views_check_their_range() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("f");
        std::fs::write(&path, [1u8, 2, 3, 4]).expect("write");
        let file = std::fs::File::open(&path).expect("open");
        // SAFETY: a private temporary file nobody else writes.
        let map = Arc::new(unsafe { Mmap::map(&file) }.expect("map"));
        let v = Bytes::mapped(map.clone(), 1, 2).expect("in range");
        assert_eq!(v.as_slice(), &[2, 3]);
        assert!(v.is_mapped());
        assert!(Bytes::mapped(map.clone(), 3, 2).is_none());
        assert!(Bytes::mapped(map, usize::MAX, 2).is_none());
    }
}
