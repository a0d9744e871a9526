//! Byte buffers for packed weights: owned, or a slice of a shared memory region (the
//! converted-weights cache).
//!
//! Owned buffers, and the cache's region ([`read_to_memory`]), are anonymous memory maps
//! advised to use transparent huge pages on Linux: decode streams every weight once per
//! token, and from 4 KiB pages (the page cache of a mapped file, or a default heap
//! allocation) it ran ~10% slower (32-layer q4k, docs/benchmarks.md "Weights in huge
//! pages"): a TLB miss every 4 KiB of a 1.5 GB stream, and prefetchers that stop at 4 KiB
//! boundaries. Maps are page aligned, so every buffer is 64-byte aligned.

use std::fs::File;
use std::sync::Arc;

use memmap2::{Mmap, MmapMut, MmapOptions};

/// Read-only bytes, owned or borrowed from a shared memory region; 64-byte aligned.
#[derive(Clone)]
pub struct Bytes {
    inner: Inner,
}

#[derive(Clone)]
enum Inner {
    Owned {
        map: Arc<Mmap>,
        len: usize,
    },
    Mapped {
        map: Arc<Mmap>,
        offset: usize,
        len: usize,
    },
}

/// Zeroed anonymous memory of `len` bytes (at least one page), advised to use huge pages.
fn anonymous(len: usize) -> std::io::Result<MmapMut> {
    let map = MmapOptions::new().len(len.max(1)).map_anon()?;
    // Only advice: without huge pages (disabled, or none free) the region still works.
    #[cfg(target_os = "linux")]
    let _ = map.advise(memmap2::Advice::HugePage);
    Ok(map)
}

/// The whole of `file` read into anonymous memory advised to use huge pages (see the
/// module documentation), for views with [`Bytes::mapped`].
///
/// A big file is read by one thread per core, each into its own part of the memory. What
/// such a read costs is mostly the first touch of the fresh memory (the kernel zeroes each
/// page as it is faulted in), and on a VM whose host takes freed memory back that is slow:
/// 1.5 GB of q4k weights took ~17 s from one thread (docs/benchmarks.md, "Reading the
/// weight cache on every core").
pub fn read_to_memory(file: &mut File) -> std::io::Result<Mmap> {
    let len = usize::try_from(file.metadata()?.len())
        .map_err(|_| std::io::Error::other("file larger than the address space"))?;
    let mut map = anonymous(len)?;
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    read_in_pieces(file, &mut map[..len], threads, PARALLEL_PIECE)?;
    map.make_read_only()
}

/// Parts of a file smaller than this are not worth a thread of their own.
const PARALLEL_PIECE: usize = 64 << 20;

/// Fills `buf` with the first `buf.len()` bytes of `file`, read by up to `threads` threads
/// in pieces of at least `min_piece` bytes (where the OS can read at an offset).
fn read_in_pieces(
    file: &mut File,
    buf: &mut [u8],
    threads: usize,
    min_piece: usize,
) -> std::io::Result<()> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::FileExt;
        let pieces = threads.min(buf.len() / min_piece.max(1)).max(1);
        let piece = buf.len().div_ceil(pieces).max(1);
        let file: &File = file;
        std::thread::scope(|scope| {
            let readers: Vec<_> = buf
                .chunks_mut(piece)
                .enumerate()
                .map(|(i, part)| scope.spawn(move || file.read_exact_at(part, (i * piece) as u64)))
                .collect();
            readers.into_iter().try_for_each(|reader| {
                reader
                    .join()
                    .unwrap_or_else(|_| Err(std::io::Error::other("a reading thread panicked")))
            })
        })
    }
    #[cfg(not(unix))]
    {
        use std::io::Read;
        let _ = (threads, min_piece);
        file.read_exact(buf)
    }
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
    /// Takes ownership of bytes written by `fill` into a zeroed buffer (anonymous memory
    /// advised to use huge pages). Fails only if the OS refuses the memory.
    pub fn owned_with(len: usize, fill: impl FnOnce(&mut [u8])) -> std::io::Result<Self> {
        let mut map = anonymous(len)?;
        fill(&mut map[..len]);
        Ok(Bytes {
            inner: Inner::Owned {
                map: Arc::new(map.make_read_only()?),
                len,
            },
        })
    }

    /// A view of `len` bytes at `offset` of a memory map; `None` if out of range or if
    /// `offset` is not a multiple of 64 (maps are page aligned, so the view is 64-byte
    /// aligned; the weight cache keeps its views page-aligned, see `pack_cache::ALIGN`).
    pub fn mapped(map: Arc<Mmap>, offset: usize, len: usize) -> Option<Self> {
        let end = offset.checked_add(len)?;
        (end <= map.len() && offset.is_multiple_of(64)).then_some(Bytes {
            inner: Inner::Mapped { map, offset, len },
        })
    }

    /// The bytes.
    pub fn as_slice(&self) -> &[u8] {
        match &self.inner {
            Inner::Owned { map, len } => &map[..*len],
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

    /// Whether the bytes are a view of a shared region (the converted-weights cache).
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
        })
        .expect("memory");
        assert_eq!(b.len(), 100);
        assert_eq!(b.as_slice()[99], 99);
        assert_eq!(b.as_slice().as_ptr() as usize % 64, 0);
        assert!(!b.is_mapped());
        assert!(Bytes::owned_with(0, |_| {}).expect("memory").is_empty());
    }

    #[test]
    fn mapped_views_check_their_range() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("f");
        let data: Vec<u8> = (0..132u8).collect();
        std::fs::write(&path, &data).expect("write");
        let file = std::fs::File::open(&path).expect("open");
        // SAFETY: a private temporary file nobody else writes.
        let map = Arc::new(unsafe { Mmap::map(&file) }.expect("map"));
        let v = Bytes::mapped(map.clone(), 64, 2).expect("in range");
        assert_eq!(v.as_slice(), &[64, 65]);
        assert!(v.is_mapped());
        assert!(Bytes::mapped(map.clone(), 128, 4).is_some());
        assert!(Bytes::mapped(map.clone(), 128, 5).is_none(), "past the end");
        assert!(
            Bytes::mapped(map.clone(), 1, 2).is_none(),
            "not 64-byte aligned"
        );
        assert!(Bytes::mapped(map, usize::MAX, 2).is_none());
    }

    #[test]
    fn files_are_read_into_memory_whole() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("f");
        let data: Vec<u8> = (0..10_000u32).map(|i| (i * 7) as u8).collect();
        std::fs::write(&path, &data).expect("write");
        let mut file = std::fs::File::open(&path).expect("open");
        let map = Arc::new(read_to_memory(&mut file).expect("read"));
        assert_eq!(&map[..data.len()], &data[..]);
        let v = Bytes::mapped(map, 64, 100).expect("in range");
        assert_eq!(v.as_slice(), &data[64..164]);
        assert_eq!(v.as_slice().as_ptr() as usize % 64, 0);
        std::fs::write(&path, b"").expect("truncate");
        let mut empty = std::fs::File::open(&path).expect("open");
        assert!(read_to_memory(&mut empty).is_ok());
    }

    #[test]
    fn files_read_in_pieces_by_several_threads_arrive_whole() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("f");
        // Not a multiple of any piece size below.
        let data: Vec<u8> = (0..100_003u32).map(|i| (i * 13 + i / 256) as u8).collect();
        std::fs::write(&path, &data).expect("write");
        for (threads, min_piece) in [(1, 1), (2, 1), (3, 1000), (7, 4096), (4, 1 << 30), (64, 1)] {
            let mut file = std::fs::File::open(&path).expect("open");
            let mut buf = vec![0u8; data.len()];
            read_in_pieces(&mut file, &mut buf, threads, min_piece).expect("read");
            assert!(
                buf == data,
                "{threads} threads, pieces of at least {min_piece}"
            );
        }
        // A file shorter than the buffer is an error, not zeros.
        let mut file = std::fs::File::open(&path).expect("open");
        let mut long = vec![0u8; data.len() + 10];
        assert!(read_in_pieces(&mut file, &mut long, 2, 1).is_err());
    }
}
