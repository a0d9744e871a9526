//! The crate's error type.

use std::path::PathBuf;

/// Everything that can go wrong while loading or running BTLM.
#[derive(Debug, thiserror::Error)]
pub enum BtlmError {
    /// `config.json` is unreadable, inconsistent, or asks for something unsupported.
    #[error("invalid model config: {0}")]
    Config(String),
    /// A command-line or config-file setting is invalid.
    #[error("invalid setting {name}: {reason}")]
    InvalidArgument {
        /// The setting's name, e.g. `--btlm.dtype`.
        name: &'static str,
        /// Why it was refused.
        reason: String,
    },
    /// A checkpoint lacks a tensor, has one of the wrong shape, or disagrees with the config.
    #[error("invalid checkpoint: {0}")]
    Checkpoint(String),
    /// The tokenizer files are missing or malformed, or encoding/decoding failed.
    #[error("tokenizer: {0}")]
    Tokenizer(String),
    /// A file could not be read.
    #[error("cannot read {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// The model files could not be obtained from the Hugging Face hub.
    #[error("{0}")]
    Hub(String),
    /// The requested device is unavailable in this build or on this machine.
    #[error("device: {0}")]
    Device(String),
    /// A batched model step failed (every sequence of that step fails with it).
    #[error("engine: {0}")]
    Engine(String),
    /// A tensor operation failed.
    #[error("tensor error: {0}")]
    Candle(#[from] candle_core::Error),
}

/// Shorthand for results of this crate.
pub type Result<T, E = BtlmError> = std::result::Result<T, E>;
