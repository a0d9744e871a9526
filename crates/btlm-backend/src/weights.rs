//! Reading checkpoint tensors from `.safetensors` or PyTorch `.bin` (pickle) files.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::safetensors::MmapedSafetensors;
use candle_core::{Device, Tensor};

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
    Safetensors(MmapedSafetensors),
    Pickle(Vec<candle_core::pickle::PthTensors>),
}

/// The tensors of a checkpoint, possibly sharded over several files of one format.
pub struct Checkpoint {
    source: Source,
    /// Tensor name → index of the shard holding it (pickle only).
    pickle_index: HashMap<String, usize>,
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
        let ctx = |e: candle_core::Error| {
            BtlmError::Checkpoint(format!("cannot open {}: {e}", first.display()))
        };
        match format {
            CheckpointFormat::Safetensors => {
                // SAFETY: the files are memory-mapped read-only; like every mmap-based loader
                // we rely on them not being modified while the model is loading.
                let st = unsafe { MmapedSafetensors::multi(files) }.map_err(ctx)?;
                let mut names: Vec<String> = st.tensors().into_iter().map(|(n, _)| n).collect();
                names.sort();
                Ok(Checkpoint {
                    source: Source::Safetensors(st),
                    pickle_index: HashMap::new(),
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
                    pickle_index: index,
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
        let t = match &self.source {
            Source::Safetensors(st) => st.load(name, device).map_err(err)?,
            Source::Pickle(shards) => {
                let Some(&i) = self.pickle_index.get(name) else {
                    return Ok(None);
                };
                match shards[i].get(name).map_err(err)? {
                    Some(t) => t.to_device(device)?,
                    None => return Ok(None),
                }
            }
        };
        Ok(Some(t))
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
