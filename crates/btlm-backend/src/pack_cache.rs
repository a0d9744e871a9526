//! The converted-weights cache: the packed projection matrices of one checkpoint in one
//! [`WeightFormat`], written once after a load that had to convert them, and read whole
//! into huge-page memory (nothing converted; see `kernels::storage` for why not mapped) at
//! every later start.
//!
//! A cache file is `MAGIC`, the length of a JSON index (u64, little endian), the index, then
//! every matrix's packed bytes at a page-aligned offset (`ALIGN`). The index records the format,
//! the [`source_key`] of the checkpoint files and each matrix's name, shape and byte range;
//! a file whose key or format differs is ignored (and replaced by the next conversion).
//!
//! The key hashes, for each checkpoint file, its size, its modification time, and its first
//! and last MiB (the safetensors header with every tensor's name, dtype and offsets; the
//! zip directory of a PyTorch `.bin`), plus the hub's content hash when the file is a hub
//! blob (named by its SHA-256). A full-content hash would read the whole checkpoint at every
//! start (seconds for BTLM-3B), which is what the cache is there to avoid.

use std::collections::HashMap;
use std::fs::File;
use std::io::{BufWriter, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use memmap2::Mmap;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::kernels::storage::read_to_memory;
use crate::kernels::{Bytes, PackedMatrix, WeightFormat};

/// First bytes of a cache file (`01`: matrices 64-byte aligned, ignored since; see
/// [`ALIGN`]).
const MAGIC: &[u8; 8] = b"BTLMPK02";
/// Bytes hashed at each end of a checkpoint file.
const EDGE: u64 = 1 << 20;
/// Alignment of every matrix in the file, and so in memory (the file is read whole into
/// page-aligned memory): a page, like an owned buffer. Where the tiles start matters to
/// the decode kernels' weight stream: the AVX-512 q4k kernel streamed 17.7 GB/s from
/// memory on one core with its tiles at 0 or 64 bytes past a multiple of 256, and 10.0 at
/// 128 or 192 (session 16 Xeon, docs/benchmarks.md "Where the weights start"). 64-byte
/// alignment left every q4k matrix of the 32-layer model at 192: q4k decode 14.5 tok/s.
const ALIGN: u64 = 4096;

/// Where converted weights are cached.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum WeightCache {
    /// Beside the checkpoint (`.btlm-cache/` in its directory; for hub downloads that is the
    /// hub cache's snapshot directory).
    #[default]
    Beside,
    /// In this directory.
    Dir(PathBuf),
    /// Never read or write a cache.
    Off,
}

#[derive(Debug, Serialize, Deserialize)]
struct Entry {
    name: String,
    n_out: usize,
    n_in: usize,
    offset: u64,
    len: u64,
}

#[derive(Debug, Serialize, Deserialize)]
struct Index {
    format: String,
    key: String,
    entries: Vec<Entry>,
}

/// A hash identifying the content of checkpoint `files` (see the module docs).
pub fn source_key(files: &[PathBuf]) -> std::io::Result<String> {
    let mut h = Sha256::new();
    for f in files {
        let real = std::fs::canonicalize(f)?;
        if let Some(name) = real.file_name().and_then(|n| n.to_str())
            && name.len() == 64
            && name.bytes().all(|b| b.is_ascii_hexdigit())
        {
            h.update(name.as_bytes());
        }
        let mut file = File::open(&real)?;
        let meta = file.metadata()?;
        let len = meta.len();
        h.update(len.to_le_bytes());
        if let Ok(m) = meta.modified()
            && let Ok(d) = m.duration_since(std::time::UNIX_EPOCH)
        {
            h.update(d.as_nanos().to_le_bytes());
        }
        let mut buf = vec![0u8; EDGE.min(len) as usize];
        file.read_exact(&mut buf)?;
        h.update(&buf);
        if len > EDGE {
            let tail = EDGE.min(len - EDGE);
            file.seek(SeekFrom::Start(len - tail))?;
            buf.resize(tail as usize, 0);
            file.read_exact(&mut buf)?;
            h.update(&buf);
        }
    }
    Ok(h.finalize().iter().map(|b| format!("{b:02x}")).collect())
}

/// The cache file for checkpoint `files` in `format` under `place`, if any.
pub fn cache_path(place: &WeightCache, files: &[PathBuf], format: WeightFormat) -> Option<PathBuf> {
    let first = files.first()?;
    let dir = match place {
        WeightCache::Off => return None,
        WeightCache::Dir(d) => d.clone(),
        WeightCache::Beside => first.parent()?.join(".btlm-cache"),
    };
    let stem = first.file_stem()?.to_string_lossy().into_owned();
    Some(dir.join(format!("{stem}.{}.packed", format.name())))
}

/// Packed matrices read from a cache file (one region of memory, views of it).
#[derive(Debug)]
pub struct CachedWeights {
    map: Arc<Mmap>,
    entries: HashMap<String, Entry>,
    format: WeightFormat,
}

impl CachedWeights {
    /// Opens `path` if it holds `format` for the checkpoint of `key`; `None` if it is
    /// missing, stale or unreadable (then the weights are converted again).
    pub fn open(path: &Path, format: WeightFormat, key: &str) -> Option<Self> {
        let mut file = File::open(path).ok()?;
        let map = read_to_memory(&mut file).ok()?;
        let (index, start) = read_index(&map)?;
        if index.format != format.name() || index.key != key {
            return None;
        }
        let mut entries = HashMap::with_capacity(index.entries.len());
        for mut e in index.entries {
            e.offset = e.offset.checked_add(start)?;
            let end = e.offset.checked_add(e.len)?;
            if end > map.len() as u64 || e.offset % ALIGN != 0 {
                return None;
            }
            entries.insert(e.name.clone(), e);
        }
        Some(CachedWeights {
            map: Arc::new(map),
            entries,
            format,
        })
    }

    /// The matrix `name`, if cached with this shape.
    pub fn get(&self, name: &str, n_out: usize, n_in: usize) -> Option<PackedMatrix> {
        let e = self.entries.get(name)?;
        if e.n_out != n_out || e.n_in != n_in {
            return None;
        }
        let bytes = Bytes::mapped(self.map.clone(), e.offset as usize, e.len as usize)?;
        PackedMatrix::from_bytes(self.format, n_out, n_in, bytes).ok()
    }

    /// Number of cached matrices.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether the file holds no matrix.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

/// Where the matrices start after an index of `json_len` bytes.
fn data_start(json_len: usize) -> u64 {
    (16 + json_len as u64).div_ceil(ALIGN) * ALIGN
}

/// The index and the start of the data.
fn read_index(map: &[u8]) -> Option<(Index, u64)> {
    if map.len() < 16 || &map[..8] != MAGIC {
        return None;
    }
    let n = usize::try_from(u64::from_le_bytes(map[8..16].try_into().ok()?)).ok()?;
    let json = map.get(16..16usize.checked_add(n)?)?;
    Some((serde_json::from_slice(json).ok()?, data_start(n)))
}

/// Writes `matrices` (all in `format`) as the cache file `path` for the checkpoint of `key`:
/// to a temporary file in the same directory, renamed into place when complete.
pub fn write(
    path: &Path,
    format: WeightFormat,
    key: &str,
    matrices: &[(String, Arc<PackedMatrix>)],
) -> std::io::Result<()> {
    let dir = path
        .parent()
        .ok_or_else(|| std::io::Error::other("cache path without a directory"))?;
    std::fs::create_dir_all(dir)?;
    // Offsets in the index are relative to the data, which starts at the first aligned
    // position after the index.
    let mut entries = Vec::with_capacity(matrices.len());
    let mut offset = 0u64;
    for (name, m) in matrices {
        if m.format() != format {
            return Err(std::io::Error::other(format!(
                "{name} is {}, the cache holds {format}",
                m.format()
            )));
        }
        let len = m.bytes().len() as u64;
        entries.push(Entry {
            name: name.clone(),
            n_out: m.n_out(),
            n_in: m.n_in(),
            offset,
            len,
        });
        offset = (offset + len).div_ceil(ALIGN) * ALIGN;
    }
    let index = Index {
        format: format.name().to_string(),
        key: key.to_string(),
        entries,
    };
    let json = serde_json::to_vec(&index).map_err(std::io::Error::other)?;
    let header_end = 16 + json.len() as u64;
    let data_start = data_start(json.len());
    static WRITES: AtomicU64 = AtomicU64::new(0);
    let tmp = path.with_extension(format!(
        "partial.{}.{}",
        std::process::id(),
        WRITES.fetch_add(1, Ordering::Relaxed)
    ));
    let result = (|| {
        let mut out = BufWriter::with_capacity(1 << 22, File::create(&tmp)?);
        out.write_all(MAGIC)?;
        out.write_all(&(json.len() as u64).to_le_bytes())?;
        out.write_all(&json)?;
        let mut pos = header_end;
        for ((_, m), e) in matrices.iter().zip(&index.entries) {
            let at = data_start + e.offset;
            out.write_all(&vec![0u8; (at - pos) as usize])?;
            out.write_all(m.bytes().as_slice())?;
            pos = at + e.len;
        }
        out.into_inner().map_err(|e| e.into_error())?.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::Source;

    fn matrix(format: WeightFormat, n_out: usize, n_in: usize, seed: usize) -> PackedMatrix {
        let w: Vec<f32> = (0..n_out * n_in)
            .map(|i| (((i + seed) * 7919 % 1009) as f32 / 1009.0 - 0.5) * 0.1)
            .collect();
        PackedMatrix::pack(format, &Source::f32(&w, n_out, n_in)).expect("pack")
    }

    #[test]
    fn written_matrices_map_back_identically() {
        let dir = tempfile::tempdir().expect("tempdir");
        let ckpt = dir.path().join("model.safetensors");
        std::fs::write(&ckpt, b"checkpoint bytes").expect("write");
        let key = source_key(std::slice::from_ref(&ckpt)).expect("key");
        for format in WeightFormat::ALL {
            let path = cache_path(&WeightCache::Beside, std::slice::from_ref(&ckpt), format)
                .expect("path");
            assert!(path.starts_with(dir.path().join(".btlm-cache")));
            let ms: Vec<(String, Arc<PackedMatrix>)> = [(21, 300), (16, 6826), (3, 5)]
                .iter()
                .enumerate()
                .map(|(i, &(o, k))| (format!("m{i}"), Arc::new(matrix(format, o, k, i))))
                .collect();
            write(&path, format, &key, &ms).expect("write cache");
            let c = CachedWeights::open(&path, format, &key).expect("open");
            assert_eq!(c.len(), 3);
            for (name, m) in &ms {
                let got = c.get(name, m.n_out(), m.n_in()).expect("cached");
                assert!(got.bytes().is_mapped());
                assert_eq!(got.bytes().as_slice().as_ptr() as usize % ALIGN as usize, 0);
                assert_eq!(
                    got.bytes().as_slice(),
                    m.bytes().as_slice(),
                    "{format} {name}"
                );
            }
            // Wrong shape, unknown name.
            assert!(c.get("m0", 22, 300).is_none());
            assert!(c.get("nope", 21, 300).is_none());
            // Another format or another checkpoint: stale.
            let other = if format == WeightFormat::F32 {
                WeightFormat::Q4K
            } else {
                WeightFormat::F32
            };
            assert!(CachedWeights::open(&path, other, &key).is_none());
            assert!(CachedWeights::open(&path, format, "other key").is_none());
        }
    }

    #[test]
    fn the_key_follows_the_checkpoint_content() {
        let dir = tempfile::tempdir().expect("tempdir");
        let ckpt = dir.path().join("model.safetensors");
        let mut big = vec![7u8; 3 << 20];
        std::fs::write(&ckpt, &big).expect("write");
        let files = [ckpt.clone()];
        let a = source_key(&files).expect("key");
        assert_eq!(a, source_key(&files).expect("key"), "stable");
        // A changed header (first MiB) changes the key even with the same size and mtime.
        let mtime = std::fs::metadata(&ckpt)
            .and_then(|m| m.modified())
            .expect("mtime");
        big[10] = 8;
        std::fs::write(&ckpt, &big).expect("write");
        File::options()
            .write(true)
            .open(&ckpt)
            .and_then(|f| f.set_modified(mtime))
            .expect("set mtime");
        assert_ne!(a, source_key(&files).expect("key"));
        assert!(source_key(&[dir.path().join("missing")]).is_err());
    }

    #[test]
    fn garbage_and_truncated_files_are_ignored() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("x.packed");
        std::fs::write(&path, b"not a cache").expect("write");
        assert!(CachedWeights::open(&path, WeightFormat::F32, "k").is_none());
        let ms = vec![(
            "m".to_string(),
            Arc::new(matrix(WeightFormat::Q8_0, 16, 64, 0)),
        )];
        write(&path, WeightFormat::Q8_0, "k", &ms).expect("write");
        let full = std::fs::read(&path).expect("read");
        // A file of the 64-byte aligned version: converted again.
        let mut old = full.clone();
        old[..8].copy_from_slice(b"BTLMPK01");
        std::fs::write(&path, &old).expect("write");
        assert!(CachedWeights::open(&path, WeightFormat::Q8_0, "k").is_none());
        std::fs::write(&path, &full).expect("write");
        assert!(CachedWeights::open(&path, WeightFormat::Q8_0, "k").is_some());
        std::fs::write(&path, &full[..full.len() - 1]).expect("truncate");
        assert!(CachedWeights::open(&path, WeightFormat::Q8_0, "k").is_none());
        assert!(CachedWeights::open(&dir.path().join("none"), WeightFormat::Q8_0, "k").is_none());
    }
}
