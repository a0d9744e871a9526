//! Locating the model files: a local directory, the Hugging Face cache, or a download.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use hf_hub::api::sync::{ApiBuilder, ApiRepo};
use hf_hub::{Cache, Repo, RepoType};

use crate::error::{BtlmError, Result};

/// Weight files in order of preference (the hub's BTLM repo has only `pytorch_model.bin`).
const WEIGHT_CANDIDATES: [&str; 4] = [
    "model.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "pytorch_model.bin.index.json",
];

/// How the tokenizer is stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenizerFiles {
    /// A `tokenizers` JSON file.
    Json(PathBuf),
    /// GPT-2 style `vocab.json` and `merges.txt`.
    VocabMerges {
        /// `vocab.json`.
        vocab: PathBuf,
        /// `merges.txt`.
        merges: PathBuf,
    },
}

/// The local paths of everything needed to run the model.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelFiles {
    /// `config.json`.
    pub config: PathBuf,
    /// The tokenizer.
    pub tokenizer: TokenizerFiles,
    /// The weight files (several when sharded).
    pub weights: Vec<PathBuf>,
}

/// Where to look on the hub.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HubOptions {
    /// The hub's address (`HF_ENDPOINT`, default `https://huggingface.co`).
    pub endpoint: Option<String>,
    /// The cache directory (`$HF_HOME/hub`, default `~/.cache/huggingface/hub`).
    pub cache_dir: Option<PathBuf>,
    /// Access token (`HF_TOKEN`, else the token file of `huggingface-cli login`).
    pub token: Option<String>,
    /// Show a progress bar while downloading.
    pub progress: bool,
}

impl HubOptions {
    /// Options from the standard environment variables.
    pub fn from_env() -> Self {
        let nonempty = |k: &str| std::env::var(k).ok().filter(|v| !v.trim().is_empty());
        HubOptions {
            endpoint: nonempty("HF_ENDPOINT"),
            cache_dir: None,
            token: nonempty("HF_TOKEN").or_else(|| nonempty("HUGGING_FACE_HUB_TOKEN")),
            progress: true,
        }
    }

    fn cache(&self) -> Cache {
        match &self.cache_dir {
            Some(d) => Cache::new(d.clone()),
            None => Cache::from_env(),
        }
    }
}

/// Shard file names listed by a `*.index.json` (its `weight_map` values).
fn shards_of_index(index: &Path) -> Result<Vec<String>> {
    let text = std::fs::read_to_string(index).map_err(|source| BtlmError::Io {
        path: index.to_path_buf(),
        source,
    })?;
    let v: serde_json::Value = serde_json::from_str(&text)
        .map_err(|e| BtlmError::Checkpoint(format!("{}: {e}", index.display())))?;
    let map = v
        .get("weight_map")
        .and_then(|m| m.as_object())
        .ok_or_else(|| BtlmError::Checkpoint(format!("{}: no weight_map", index.display())))?;
    let files: BTreeSet<String> = map
        .values()
        .filter_map(|f| f.as_str().map(String::from))
        .collect();
    if files.is_empty() {
        return Err(BtlmError::Checkpoint(format!(
            "{}: empty weight_map",
            index.display()
        )));
    }
    Ok(files.into_iter().collect())
}

/// Finds the model files in a local directory (nothing is downloaded).
pub fn files_in_dir(dir: &Path) -> Result<ModelFiles> {
    if !dir.is_dir() {
        return Err(BtlmError::InvalidArgument {
            name: "--btlm.model_dir",
            reason: format!("{} is not a directory", dir.display()),
        });
    }
    let missing = |what: &str| BtlmError::InvalidArgument {
        name: "--btlm.model_dir",
        reason: format!("{} has no {what}", dir.display()),
    };
    let config = dir.join("config.json");
    if !config.is_file() {
        return Err(missing("config.json"));
    }
    let tokenizer = if dir.join("tokenizer.json").is_file() {
        TokenizerFiles::Json(dir.join("tokenizer.json"))
    } else if dir.join("vocab.json").is_file() && dir.join("merges.txt").is_file() {
        TokenizerFiles::VocabMerges {
            vocab: dir.join("vocab.json"),
            merges: dir.join("merges.txt"),
        }
    } else {
        return Err(missing("tokenizer.json nor vocab.json + merges.txt"));
    };
    let name = WEIGHT_CANDIDATES
        .iter()
        .find(|n| dir.join(n).is_file())
        .ok_or_else(|| missing("model.safetensors nor pytorch_model.bin"))?;
    let weights = if name.ends_with(".index.json") {
        shards_of_index(&dir.join(name))?
            .into_iter()
            .map(|f| dir.join(f))
            .collect()
    } else {
        vec![dir.join(name)]
    };
    Ok(ModelFiles {
        config,
        tokenizer,
        weights,
    })
}

/// Gets files of one repo: from the cache when there, else from the hub (listing the repo
/// once to learn which optional files exist). When the hub cannot be reached, only cached
/// files are used.
struct HubFetcher {
    repo: ApiRepo,
    cache: hf_hub::CacheRepo,
    /// The repo's file names, once listed.
    siblings: Option<Vec<String>>,
    /// Why the hub could not be listed (then only the cache is used).
    offline: Option<String>,
    what: String,
    cache_path: PathBuf,
}

impl HubFetcher {
    fn offline_error(&self, detail: impl std::fmt::Display) -> BtlmError {
        BtlmError::Hub(format!(
            "cannot get {} from the Hugging Face hub ({detail}) and it is not in the cache {}; \
             without network access, download the model elsewhere and pass --btlm.model_dir DIR \
             (config.json, vocab.json + merges.txt, pytorch_model.bin or model.safetensors)",
            self.what,
            self.cache_path.display()
        ))
    }

    /// Lists the repo; `None` when the hub is unreachable.
    fn siblings(&mut self) -> Option<&[String]> {
        if self.siblings.is_none() && self.offline.is_none() {
            match self.repo.info() {
                Ok(info) => {
                    self.siblings = Some(info.siblings.into_iter().map(|s| s.rfilename).collect())
                }
                Err(e) => {
                    tracing::warn!("cannot reach the hub ({e}); using cached files only");
                    self.offline = Some(e.to_string());
                }
            }
        }
        self.siblings.as_deref()
    }

    /// The file if the repo has it (cached, or downloaded now); `None` if the repo lacks it
    /// or, offline, if it is not cached.
    fn optional(&mut self, name: &str) -> Result<Option<PathBuf>> {
        if let Some(p) = self.cache.get(name) {
            return Ok(Some(p));
        }
        match self.siblings() {
            None => return Ok(None),
            Some(list) if !list.iter().any(|s| s == name) => return Ok(None),
            Some(_) => {}
        }
        tracing::info!("downloading {name} of {}", self.what);
        let p = self
            .repo
            .download(name)
            .map_err(|e| self.offline_error(format!("{name}: {e}")))?;
        Ok(Some(p))
    }

    fn required(&mut self, name: &str) -> Result<PathBuf> {
        match self.optional(name)? {
            Some(p) => Ok(p),
            None => Err(self.missing(name)),
        }
    }

    fn missing(&self, name: &str) -> BtlmError {
        match &self.offline {
            Some(e) => self.offline_error(format!("{name}: {e}")),
            None => BtlmError::Hub(format!("{} has no {name}", self.what)),
        }
    }
}

/// Finds the model files of `model_id@revision` in the Hugging Face cache, downloading what
/// is missing.
pub fn files_from_hub(model_id: &str, revision: &str, opts: &HubOptions) -> Result<ModelFiles> {
    let cache = opts.cache();
    let mut builder = ApiBuilder::from_cache(cache.clone()).with_progress(opts.progress);
    if let Some(e) = &opts.endpoint {
        builder = builder.with_endpoint(e.clone());
    }
    if opts.token.is_some() {
        builder = builder.with_token(opts.token.clone());
    }
    let api = builder
        .build()
        .map_err(|e| BtlmError::Hub(format!("cannot set up the hub client: {e}")))?;
    let repo = Repo::with_revision(model_id.to_string(), RepoType::Model, revision.to_string());
    let mut f = HubFetcher {
        repo: api.repo(repo.clone()),
        cache: cache.repo(repo),
        siblings: None,
        offline: None,
        what: format!("{model_id}@{revision}"),
        cache_path: cache.path().clone(),
    };
    let config = f.required("config.json")?;
    let tokenizer = match f.optional("tokenizer.json")? {
        Some(p) => TokenizerFiles::Json(p),
        None => TokenizerFiles::VocabMerges {
            vocab: f.required("vocab.json")?,
            merges: f.required("merges.txt")?,
        },
    };
    let mut weights = Vec::new();
    for name in WEIGHT_CANDIDATES {
        if let Some(p) = f.optional(name)? {
            weights = if name.ends_with(".index.json") {
                let mut shards = Vec::new();
                for s in shards_of_index(&p)? {
                    shards.push(f.required(&s)?);
                }
                shards
            } else {
                vec![p]
            };
            break;
        }
    }
    if weights.is_empty() {
        return Err(f.missing("model.safetensors nor pytorch_model.bin"));
    }
    Ok(ModelFiles {
        config,
        tokenizer,
        weights,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixture() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/btlm-tiny")
    }

    /// An address on this machine where nothing listens: every request fails fast.
    fn unreachable() -> HubOptions {
        HubOptions {
            endpoint: Some("http://127.0.0.1:9".into()),
            cache_dir: None,
            token: None,
            progress: false,
        }
    }

    #[test]
    fn local_dir_prefers_safetensors_and_vocab_merges() {
        let f = files_in_dir(&fixture()).expect("fixture dir");
        assert_eq!(f.weights, vec![fixture().join("model.safetensors")]);
        assert!(matches!(f.tokenizer, TokenizerFiles::VocabMerges { .. }));
    }

    #[test]
    fn local_dir_errors_name_the_missing_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let err = files_in_dir(dir.path()).expect_err("empty").to_string();
        assert!(err.contains("config.json"), "{err}");
        std::fs::copy(
            fixture().join("config.json"),
            dir.path().join("config.json"),
        )
        .expect("copy");
        let err = files_in_dir(dir.path())
            .expect_err("no tokenizer")
            .to_string();
        assert!(err.contains("vocab.json"), "{err}");
        for f in ["vocab.json", "merges.txt"] {
            std::fs::copy(fixture().join(f), dir.path().join(f)).expect("copy");
        }
        let err = files_in_dir(dir.path())
            .expect_err("no weights")
            .to_string();
        assert!(err.contains("pytorch_model.bin"), "{err}");
        assert!(files_in_dir(&dir.path().join("nope")).is_err());
    }

    #[test]
    fn sharded_index_lists_shards() {
        let dir = tempfile::tempdir().expect("tempdir");
        let idx = dir.path().join("model.safetensors.index.json");
        std::fs::write(
            &idx,
            r#"{"metadata":{},"weight_map":{"a":"m-2.safetensors","b":"m-1.safetensors","c":"m-2.safetensors"}}"#,
        )
        .expect("write");
        assert_eq!(
            shards_of_index(&idx).expect("index"),
            vec!["m-1.safetensors".to_string(), "m-2.safetensors".to_string()]
        );
        std::fs::write(&idx, "{}").expect("write");
        assert!(shards_of_index(&idx).is_err());
    }

    #[test]
    fn no_network_and_no_cache_is_one_clear_error() {
        let cache = tempfile::tempdir().expect("tempdir");
        let opts = HubOptions {
            cache_dir: Some(cache.path().to_path_buf()),
            ..unreachable()
        };
        let err = files_from_hub("cerebras/btlm-3b-8k-base", "main", &opts)
            .expect_err("offline")
            .to_string();
        assert!(err.contains("--btlm.model_dir"), "{err}");
        assert!(err.contains("cerebras/btlm-3b-8k-base@main"), "{err}");
    }

    #[test]
    fn cached_files_are_used_offline() {
        // Lay the fixture out like the hub cache: refs/main → snapshots/<commit>/...
        let cache = tempfile::tempdir().expect("tempdir");
        let repo = cache.path().join("models--cerebras--btlm-tiny");
        let commit = "0123456789abcdef0123456789abcdef01234567";
        let snap = repo.join("snapshots").join(commit);
        std::fs::create_dir_all(&snap).expect("mkdir");
        std::fs::create_dir_all(repo.join("refs")).expect("mkdir");
        std::fs::write(repo.join("refs/main"), commit).expect("ref");
        for f in [
            "config.json",
            "vocab.json",
            "merges.txt",
            "pytorch_model.bin",
        ] {
            std::fs::copy(fixture().join(f), snap.join(f)).expect("copy");
        }
        let opts = HubOptions {
            cache_dir: Some(cache.path().to_path_buf()),
            ..unreachable()
        };
        // Like the real repo: no tokenizer.json, only pytorch_model.bin.
        let files = files_from_hub("cerebras/btlm-tiny", "main", &opts).expect("cached");
        assert_eq!(files.config, snap.join("config.json"));
        assert_eq!(
            files.tokenizer,
            TokenizerFiles::VocabMerges {
                vocab: snap.join("vocab.json"),
                merges: snap.join("merges.txt")
            }
        );
        assert_eq!(files.weights, vec![snap.join("pytorch_model.bin")]);
        // Cached preferred formats win.
        std::fs::copy(
            fixture().join("tokenizer.json.reference"),
            snap.join("tokenizer.json"),
        )
        .expect("copy");
        std::fs::copy(
            fixture().join("model.safetensors"),
            snap.join("model.safetensors"),
        )
        .expect("copy");
        let files = files_from_hub("cerebras/btlm-tiny", "main", &opts).expect("cached");
        assert_eq!(
            files.tokenizer,
            TokenizerFiles::Json(snap.join("tokenizer.json"))
        );
        assert_eq!(files.weights, vec![snap.join("model.safetensors")]);
    }
}
