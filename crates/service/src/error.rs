//! Why the miner could not start or stopped.

use std::net::SocketAddr;
use std::path::PathBuf;

use prompting_chain::ChainError;
use prompting_keys::wallet::WalletError;

/// Every way the service can fail; each message is one line naming what to fix, and already
/// includes its cause (no variant has a separate `source()`, so printing an error chain
/// repeats nothing).
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    /// The hotkey file does not exist.
    #[error(
        "hotkey file {} does not exist: create it with `btcli wallet new_hotkey --wallet.name {name} --wallet.hotkey {hotkey}`, choose another with --wallet.path/--wallet.name/--wallet.hotkey, or run with --dev",
        path.display()
    )]
    MissingHotkey {
        /// The hotkey file looked for.
        path: PathBuf,
        /// The wallet name.
        name: String,
        /// The hotkey name.
        hotkey: String,
    },
    /// The hotkey file exists but cannot be read or used (the message names the file).
    #[error("cannot load the wallet hotkey: {0}")]
    Wallet(WalletError),
    /// A setting is invalid or settings contradict each other.
    #[error("invalid configuration: {0}")]
    Config(String),
    /// The metagraph file cannot be used (the message names the file).
    #[error("{0}")]
    Metagraph(prompting_miner::MetagraphError),
    /// The listening socket cannot be opened.
    #[error("cannot listen on {addr}: {error}")]
    Bind {
        /// The address asked for.
        addr: SocketAddr,
        /// The operating system's error (e.g. address already in use).
        error: std::io::Error,
    },
    /// Talking to subtensor failed.
    #[error("subtensor: {what}: {error}")]
    Chain {
        /// What the service was doing.
        what: &'static str,
        /// The chain client's error.
        error: ChainError,
    },
    /// The hotkey is not registered on the subnet (the Python miner's start-up check).
    #[error("{0}")]
    NotRegistered(ChainError),
    /// The server stopped with an error.
    #[error("the server failed: {0}")]
    Serve(std::io::Error),
}

impl ServiceError {
    /// The error for a failed chain call, keeping "not registered" apart.
    pub(crate) fn chain(what: &'static str, error: ChainError) -> Self {
        match error {
            ChainError::NotRegistered { .. } => ServiceError::NotRegistered(error),
            error => ServiceError::Chain { what, error },
        }
    }
}

impl ServiceError {
    /// Whether the user can fix this by changing what they typed (flags, config file,
    /// settings): exit 2, rather than 1 for the environment.
    pub fn is_usage(&self) -> bool {
        matches!(self, ServiceError::Config(_))
    }
}

impl From<ServiceError> for prompting_cli::Failure {
    fn from(error: ServiceError) -> Self {
        if error.is_usage() {
            prompting_cli::Failure::usage(error)
        } else {
            prompting_cli::Failure::runtime(error)
        }
    }
}

impl From<crate::config_file::CliError> for prompting_cli::Failure {
    /// Every command-line and config-file error is the user's to fix (exit 2); clap's own
    /// errors become its one line.
    fn from(error: crate::config_file::CliError) -> Self {
        match error {
            crate::config_file::CliError::Usage(clap) => clap.into(),
            other => prompting_cli::Failure::usage(other),
        }
    }
}
