//! Reading checkpoint tensors from `.safetensors` or PyTorch `.bin` (pickle) files.
//!
//! Safetensors files are read tensor by tensor with positioned reads (`pread`), not through
//! a memory map: the bytes of a tensor already converted would otherwise stay mapped, and
//! counted in the resident set, until the whole checkpoint is dropped (5.3 GB for the bf16
//! BTLM-3B on top of the converted weights). Only the page cache, which the kernel may
//! reclaim, keeps them.

use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};

use crate::error::{BtlmError, Result};

/// The checkpoint formats this crate reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CheckpointFormat {
    /// `*.safetensors` (memory-mapped).
    Safetensors,
    /// PyTorch `torch.save` zip archives (`pytorch_model.bin`), read lazily tensor by tensor.
    Pickle,
}

impl CheckpointFormat {
    /// Guesses the format from a file name: `.safetensors` or `.bin`/`.pt`/`.pth`.
    pub fn from_path(path: &Path) -> Result<Self> {
        match path.extension().and_then(|e| e.to_str()) {
            Some("safetensors") => Ok(CheckpointFormat::Safetensors),
            Some("bin" | "pt" | "pth") => Ok(CheckpointFormat::Pickle),
            _ => Err(BtlmError::Checkpoint(format!(
                "{}: unknown checkpoint format (expected .safetensors or .bin)",
                path.display()
            ))),
        }
    }
}

enum Source {
    Safetensors(Vec<SafetensorsFile>),
    Pickle(Vec<candle_core::pickle::PthTensors>),
}

/// Where one tensor of a safetensors file is.
#[derive(Debug, Clone)]
struct StEntry {
    dtype: DType,
    shape: Vec<usize>,
    /// Byte offset in the file.
    offset: u64,
    len: usize,
}

/// An open safetensors file and its parsed header.
struct SafetensorsFile {
    path: PathBuf,
    file: File,
    tensors: HashMap<String, StEntry>,
}

/// Largest safetensors header accepted (the format's own limit is 100 MB).
const MAX_HEADER: u64 = 100 << 20;

impl SafetensorsFile {
    fn open(path: &Path) -> Result<Self> {
        use std::os::unix::fs::FileExt;
        let io = |source| BtlmError::Io {
            path: path.to_path_buf(),
            source,
        };
        let bad = |why: String| BtlmError::Checkpoint(format!("{}: {why}", path.display()));
        let file = File::open(path).map_err(io)?;
        let size = file.metadata().map_err(io)?.len();
        let mut len = [0u8; 8];
        file.read_exact_at(&mut len, 0).map_err(io)?;
        let n = u64::from_le_bytes(len);
        if n > MAX_HEADER || n.saturating_add(8) > size {
            return Err(bad(format!("header of {n} bytes in a file of {size}")));
        }
        let mut json = vec![0u8; n as usize];
        file.read_exact_at(&mut json, 8).map_err(io)?;
        let header: HashMap<String, serde_json::Value> = serde_json::from_slice(&json)
            .map_err(|e| bad(format!("unreadable safetensors header: {e}")))?;
        let data_start = 8 + n;
        let mut tensors = HashMap::with_capacity(header.len());
        for (name, v) in header {
            if name == "__metadata__" {
                continue;
            }
            let info: StInfo =
                serde_json::from_value(v).map_err(|e| bad(format!("tensor {name}: {e}")))?;
            let dtype = st_dtype(&info.dtype)
                .ok_or_else(|| bad(format!("tensor {name}: unsupported dtype {}", info.dtype)))?;
            let [start, end] = info.data_offsets;
            let count = info.shape.iter().try_fold(1usize, |a, &d| a.checked_mul(d));
            let expect = count.and_then(|c| c.checked_mul(dtype.size_in_bytes()));
            if end < start
                || expect != Some((end - start) as usize)
                || data_start.saturating_add(end) > size
            {
                return Err(bad(format!(
                    "tensor {name}: bytes {start}..{end} do not hold {:?} {:?}",
                    info.dtype, info.shape
                )));
            }
            tensors.insert(
                name,
                StEntry {
                    dtype,
                    shape: info.shape,
                    offset: data_start + start,
                    len: (end - start) as usize,
                },
            );
        }
        Ok(SafetensorsFile {
            path: path.to_path_buf(),
            file,
            tensors,
        })
    }

    /// Reads tensor `e` into a CPU tensor of its dtype (one copy: straight into the
    /// tensor's own buffer).
    fn read(&self, e: &StEntry) -> Result<Tensor> {
        fn typed<T: candle_core::WithDType + Default + Clone>(
            f: &SafetensorsFile,
            e: &StEntry,
        ) -> Result<Tensor> {
            use std::os::unix::fs::FileExt;
            let mut v = vec![T::default(); e.len / std::mem::size_of::<T>()];
            // SAFETY: `v` owns `e.len` initialized bytes (its elements are plain numbers
            // with no padding, so every byte pattern read into them is a valid value).
            let bytes =
                unsafe { std::slice::from_raw_parts_mut(v.as_mut_ptr().cast::<u8>(), e.len) };
            f.file
                .read_exact_at(bytes, e.offset)
                .map_err(|source| BtlmError::Io {
                    path: f.path.clone(),
                    source,
                })?;
            // Safetensors data is little endian, like every target this crate runs on.
            #[cfg(target_endian = "big")]
            compile_error!("checkpoint reading assumes a little-endian target");
            Ok(Tensor::from_vec(v, e.shape.as_slice(), &Device::Cpu)?)
        }
        match e.dtype {
            DType::F32 => typed::<f32>(self, e),
            DType::BF16 => typed::<half::bf16>(self, e),
            DType::F16 => typed::<half::f16>(self, e),
            DType::F64 => typed::<f64>(self, e),
            DType::I64 => typed::<i64>(self, e),
            DType::U32 => typed::<u32>(self, e),
            DType::U8 => typed::<u8>(self, e),
            other => Err(BtlmError::Checkpoint(format!(
                "{}: tensors of dtype {other:?} are not read",
                self.path.display()
            ))),
        }
    }
}

/// A tensor's entry in a safetensors header.
#[derive(serde::Deserialize)]
struct StInfo {
    dtype: String,
    shape: Vec<usize>,
    data_offsets: [u64; 2],
}

/// The candle dtype of a safetensors dtype name (`BOOL` is read as `U8`).
fn st_dtype(name: &str) -> Option<DType> {
    Some(match name {
        "F32" => DType::F32,
        "BF16" => DType::BF16,
        "F16" => DType::F16,
        "F64" => DType::F64,
        "I64" => DType::I64,
        "U32" => DType::U32,
        "U8" | "BOOL" => DType::U8,
        _ => return None,
    })
}

/// The tensors of a checkpoint, possibly sharded over several files of one format.
pub struct Checkpoint {
    source: Source,
    /// Tensor name → index of the shard holding it.
    shard_index: HashMap<String, usize>,
    names: Vec<String>,
    files: Vec<PathBuf>,
}

impl std::fmt::Debug for Checkpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Checkpoint")
            .field("files", &self.files)
            .field("tensors", &self.names.len())
            .finish()
    }
}

impl Checkpoint {
    /// Opens checkpoint files, all of the same format (several files are shards).
    pub fn open(files: &[PathBuf]) -> Result<Self> {
        let first = files
            .first()
            .ok_or_else(|| BtlmError::Checkpoint("no checkpoint file given".into()))?;
        let format = CheckpointFormat::from_path(first)?;
        for f in files {
            if CheckpointFormat::from_path(f)? != format {
                return Err(BtlmError::Checkpoint(
                    "checkpoint shards mix .safetensors and .bin files".into(),
                ));
            }
            if !f.is_file() {
                return Err(BtlmError::Io {
                    path: f.clone(),
                    source: std::io::Error::new(std::io::ErrorKind::NotFound, "no such file"),
                });
            }
        }
        match format {
            CheckpointFormat::Safetensors => {
                let mut shards = Vec::with_capacity(files.len());
                let mut index = HashMap::new();
                for (i, f) in files.iter().enumerate() {
                    let st = SafetensorsFile::open(f)?;
                    for name in st.tensors.keys() {
                        index.insert(name.clone(), i);
                    }
                    shards.push(st);
                }
                let mut names: Vec<String> = index.keys().cloned().collect();
                names.sort();
                Ok(Checkpoint {
                    source: Source::Safetensors(shards),
                    shard_index: index,
                    names,
                    files: files.to_vec(),
                })
            }
            CheckpointFormat::Pickle => {
                let mut shards = Vec::with_capacity(files.len());
                let mut index = HashMap::new();
                for (i, f) in files.iter().enumerate() {
                    let pth = candle_core::pickle::PthTensors::new(f, None).map_err(|e| {
                        BtlmError::Checkpoint(format!("cannot read {}: {e}", f.display()))
                    })?;
                    for name in pth.tensor_infos().keys() {
                        index.insert(name.clone(), i);
                    }
                    shards.push(pth);
                }
                let mut names: Vec<String> = index.keys().cloned().collect();
                names.sort();
                Ok(Checkpoint {
                    source: Source::Pickle(shards),
                    shard_index: index,
                    names,
                    files: files.to_vec(),
                })
            }
        }
    }

    /// The checkpoint files.
    pub fn files(&self) -> &[PathBuf] {
        &self.files
    }

    /// The names of all tensors, sorted.
    pub fn names(&self) -> &[String] {
        &self.names
    }

    /// Whether the checkpoint has a tensor of this name.
    pub fn contains(&self, name: &str) -> bool {
        self.names
            .binary_search_by(|n| n.as_str().cmp(name))
            .is_ok()
    }

    /// Reads one tensor (in its stored dtype) onto `device`; `None` if absent.
    pub fn get(&self, name: &str, device: &Device) -> Result<Option<Tensor>> {
        if !self.contains(name) {
            return Ok(None);
        }
        let err = |e: candle_core::Error| BtlmError::Checkpoint(format!("tensor {name}: {e}"));
        let Some(&i) = self.shard_index.get(name) else {
            return Ok(None);
        };
        let t = match &self.source {
            Source::Safetensors(shards) => {
                let Some(e) = shards[i].tensors.get(name) else {
                    return Ok(None);
                };
                shards[i].read(e)?
            }
            Source::Pickle(shards) => match shards[i].get(name).map_err(err)? {
                Some(t) => t,
                None => return Ok(None),
            },
        };
        Ok(Some(if device.is_cpu() {
            t
        } else {
            t.to_device(device)?
        }))
    }

    /// Reads a tensor that must exist and have the given shape.
    pub fn require(&self, name: &str, shape: &[usize], device: &Device) -> Result<Tensor> {
        let t = self
            .get(name, device)?
            .ok_or_else(|| BtlmError::Checkpoint(format!("missing tensor {name}")))?;
        if t.dims() != shape {
            return Err(BtlmError::Checkpoint(format!(
                "tensor {name} has shape {:?}, the config implies {shape:?}",
                t.dims()
            )));
        }
        Ok(t)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn format_from_extension() {
        assert_eq!(
            CheckpointFormat::from_path(Path::new("a/model.safetensors")).ok(),
            Some(CheckpointFormat::Safetensors)
        );
        assert_eq!(
            CheckpointFormat::from_path(Path::new("pytorch_model.bin")).ok(),
            Some(CheckpointFormat::Pickle)
        );
        assert!(CheckpointFormat::from_path(Path::new("model.gguf")).is_err());
    }

    #[test]
    fn safetensors_tensors_read_back_in_their_dtype() {
        let dir = tempfile::tempdir().expect("tempdir");
        let dev = Device::Cpu;
        let a = Tensor::arange(0f32, 12.0, &dev)
            .and_then(|t| t.reshape((3, 4)))
            .expect("a");
        let b = a.to_dtype(DType::BF16).expect("bf16");
        let c = Tensor::new(&[1i64, -2, 3], &dev).expect("c");
        let p1 = dir.path().join("m-1.safetensors");
        let p2 = dir.path().join("m-2.safetensors");
        candle_core::safetensors::save(&HashMap::from([("a", a.clone()), ("b", b)]), &p1)
            .expect("save");
        candle_core::safetensors::save(&HashMap::from([("c", c)]), &p2).expect("save");
        let ck = Checkpoint::open(&[p1, p2]).expect("open");
        assert_eq!(ck.names(), &["a", "b", "c"]);
        let ra = ck.require("a", &[3, 4], &dev).expect("a");
        assert_eq!(
            ra.flatten_all()
                .and_then(|t| t.to_vec1::<f32>())
                .expect("v"),
            (0..12).map(|v| v as f32).collect::<Vec<_>>()
        );
        let rb = ck.require("b", &[3, 4], &dev).expect("b");
        assert_eq!(rb.dtype(), DType::BF16);
        let rb = rb
            .to_dtype(DType::F32)
            .and_then(|t| t.flatten_all()?.to_vec1::<f32>());
        assert_eq!(rb.expect("b").last(), Some(&11.0));
        let rc = ck.require("c", &[3], &dev).expect("c");
        assert_eq!(rc.to_vec1::<i64>().expect("c"), vec![1, -2, 3]);
        assert!(ck.get("d", &dev).expect("absent").is_none());
        assert!(ck.require("a", &[4, 3], &dev).is_err());
    }

    #[test]
    fn malformed_safetensors_are_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("bad.safetensors");
        // Header longer than the file.
        std::fs::write(&p, 1000u64.to_le_bytes()).expect("write");
        assert!(Checkpoint::open(std::slice::from_ref(&p)).is_err());
        // Data range past the end of the file.
        let json = br#"{"w":{"dtype":"F32","shape":[4],"data_offsets":[0,16]}}"#;
        let mut bytes = (json.len() as u64).to_le_bytes().to_vec();
        bytes.extend_from_slice(json);
        bytes.extend_from_slice(&[0u8; 8]);
        std::fs::write(&p, &bytes).expect("write");
        let err = Checkpoint::open(std::slice::from_ref(&p)).expect_err("short");
        assert!(err.to_string().contains("tensor w"), "{err}");
        // Shape and byte range disagree.
        bytes.extend_from_slice(&[0u8; 8]);
        let json2 = br#"{"w":{"dtype":"F32","shape":[3],"data_offsets":[0,16]}}"#;
        let mut b2 = (json2.len() as u64).to_le_bytes().to_vec();
        b2.extend_from_slice(json2);
        b2.extend_from_slice(&[0u8; 16]);
        std::fs::write(&p, &b2).expect("write");
        assert!(Checkpoint::open(std::slice::from_ref(&p)).is_err());
    }

    #[test]
    fn missing_file_is_a_clear_error() {
        let err = Checkpoint::open(&[PathBuf::from("/nonexistent/model.safetensors")])
            .expect_err("must fail");
        assert!(
            err.to_string().contains("/nonexistent/model.safetensors"),
            "{err}"
        );
        assert!(Checkpoint::open(&[]).is_err());
    }
}
