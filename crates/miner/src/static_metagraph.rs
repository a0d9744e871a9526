//! A metagraph read from a file, for local networks and tests.
//!
//! The file is JSON (`.json`) or TOML (`.toml`), chosen by its extension:
//!
//! ```toml
//! netuid = 1      # optional, default 0
//! block = 0       # optional, default 0; the prompt cache's span counts from it
//!
//! [[neurons]]
//! uid = 0
//! hotkey = "5F3sa2TJAWMqDhXG6jhV4N8ko9SxwGy8TpaNS1repo5EYjQX"
//! stake = 1000.0            # τ, optional, default 0
//! validator_permit = true   # optional, default false
//! ```
//!
//! The JSON form has the same keys: `{"netuid": 1, "neurons": [{"uid": 0, ...}]}`.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::metagraph::{Metagraph, NeuronInfo, SharedMetagraph};

/// Why a metagraph file could not be used. Every message names the file.
#[derive(Debug, thiserror::Error)]
pub enum MetagraphError {
    /// The file could not be read.
    #[error("cannot read metagraph file {}: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// The operating system's error.
        source: std::io::Error,
    },
    /// The extension is neither `.json` nor `.toml`.
    #[error("metagraph file {}: unsupported format, expected a .json or .toml file", path.display())]
    UnsupportedFormat {
        /// The file.
        path: PathBuf,
    },
    /// The file is not valid JSON/TOML or does not have the expected shape.
    #[error("metagraph file {} is not a valid {format} metagraph: {reason}", path.display())]
    Parse {
        /// The file.
        path: PathBuf,
        /// `JSON` or `TOML`.
        format: &'static str,
        /// The parser's explanation.
        reason: String,
    },
    /// The neurons contradict each other or hold impossible values.
    #[error("metagraph file {}: {problem}", path.display())]
    Invalid {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        problem: String,
    },
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct MetagraphFile {
    #[serde(default)]
    netuid: u16,
    #[serde(default)]
    block: u64,
    #[serde(default)]
    neurons: Vec<NeuronInfo>,
}

/// Loads metagraphs from JSON or TOML files (see the module docs for the format).
#[derive(Debug, Clone, Copy)]
pub struct StaticMetagraph;

impl StaticMetagraph {
    /// Reads and checks the metagraph in `path`.
    pub fn load(path: impl AsRef<Path>) -> Result<Metagraph, MetagraphError> {
        let path = path.as_ref();
        let format = match path.extension().and_then(|e| e.to_str()) {
            Some(e) if e.eq_ignore_ascii_case("json") => "JSON",
            Some(e) if e.eq_ignore_ascii_case("toml") => "TOML",
            _ => {
                return Err(MetagraphError::UnsupportedFormat {
                    path: path.to_path_buf(),
                });
            }
        };
        let text = std::fs::read_to_string(path).map_err(|source| MetagraphError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let parsed: Result<MetagraphFile, String> = if format == "JSON" {
            serde_json::from_str(&text).map_err(|e| e.to_string())
        } else {
            toml::from_str(&text).map_err(|e| e.message().to_string())
        };
        let file = parsed.map_err(|reason| MetagraphError::Parse {
            path: path.to_path_buf(),
            format,
            reason,
        })?;
        check(&file.neurons).map_err(|problem| MetagraphError::Invalid {
            path: path.to_path_buf(),
            problem,
        })?;
        Ok(Metagraph::new(file.netuid, file.block, file.neurons))
    }

    /// Reads the metagraph in `path` into a [`SharedMetagraph`] the pipeline can read.
    pub fn shared(path: impl AsRef<Path>) -> Result<SharedMetagraph, MetagraphError> {
        Self::load(path).map(SharedMetagraph::new)
    }
}

fn check(neurons: &[NeuronInfo]) -> Result<(), String> {
    let mut hotkeys = HashSet::new();
    let mut uids = HashSet::new();
    for n in neurons {
        if n.hotkey.trim().is_empty() {
            return Err(format!("neuron uid {} has an empty hotkey", n.uid));
        }
        if !hotkeys.insert(n.hotkey.as_str()) {
            return Err(format!("hotkey {} is listed twice", n.hotkey));
        }
        if !uids.insert(n.uid) {
            return Err(format!("uid {} is listed twice", n.uid));
        }
        if !n.stake.is_finite() || n.stake < 0.0 {
            return Err(format!(
                "hotkey {} has stake {}, expected a finite number of α ≥ 0",
                n.hotkey, n.stake
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metagraph::MetagraphView;

    fn write(dir: &tempfile::TempDir, name: &str, text: &str) -> PathBuf {
        let path = dir.path().join(name);
        std::fs::write(&path, text).expect("write");
        path
    }

    #[test]
    fn loads_toml_and_json() {
        let dir = tempfile::tempdir().expect("tempdir");
        let toml = write(
            &dir,
            "m.toml",
            r#"
            netuid = 1
            block = 42
            [[neurons]]
            uid = 0
            hotkey = "v"
            stake = 1000.0
            validator_permit = true
            [[neurons]]
            uid = 3
            hotkey = "m"
            "#,
        );
        let m = StaticMetagraph::load(&toml).expect("valid");
        assert_eq!((m.netuid, m.block, m.neurons().len()), (1, 42, 2));
        let v = m.caller("v").expect("registered");
        assert_eq!((v.uid, v.stake, v.validator_permit), (0, 1000.0, true));
        let miner = m.caller("m").expect("registered");
        assert_eq!(
            (miner.uid, miner.stake, miner.validator_permit),
            (3, 0.0, false)
        );

        let json = write(
            &dir,
            "m.json",
            r#"{"netuid": 2, "neurons": [{"uid": 1, "hotkey": "v", "stake": 5.5}]}"#,
        );
        let shared = StaticMetagraph::shared(&json).expect("valid");
        assert_eq!(shared.block(), 0);
        assert_eq!(shared.caller("v").map(|c| c.stake), Some(5.5));
    }

    #[test]
    fn errors_name_the_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let cases = [
            (dir.path().join("missing.json"), "cannot read"),
            (write(&dir, "m.yaml", ""), "unsupported format"),
            (write(&dir, "bad.json", "{"), "not a valid JSON"),
            (write(&dir, "extra.toml", "neuron = []"), "not a valid TOML"),
            (
                write(
                    &dir,
                    "dup.toml",
                    "[[neurons]]\nuid = 0\nhotkey = \"a\"\n[[neurons]]\nuid = 1\nhotkey = \"a\"\n",
                ),
                "hotkey a is listed twice",
            ),
            (
                write(
                    &dir,
                    "uid.toml",
                    "[[neurons]]\nuid = 0\nhotkey = \"a\"\n[[neurons]]\nuid = 0\nhotkey = \"b\"\n",
                ),
                "uid 0 is listed twice",
            ),
            (
                write(
                    &dir,
                    "neg.json",
                    r#"{"neurons": [{"uid": 0, "hotkey": "a", "stake": -1}]}"#,
                ),
                "stake -1",
            ),
        ];
        for (path, expected) in cases {
            let message = StaticMetagraph::load(&path).unwrap_err().to_string();
            assert!(message.contains(expected), "{message}");
            let name = path.file_name().and_then(|n| n.to_str()).expect("name");
            assert!(message.contains(name), "{message}");
        }
    }
}
