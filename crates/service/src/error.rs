//! Why the miner could not start or stopped.

use std::net::SocketAddr;
use std::path::PathBuf;

use prompting_chain::ChainError;
use prompting_keys::wallet::WalletError;

/// Every way the service can fail; each message is one line naming what to fix.
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
    Wallet(#[source] WalletError),
    /// A setting is invalid or settings contradict each other.
    #[error("invalid configuration: {0}")]
    Config(String),
    /// The metagraph file cannot be used (the message names the file).
    #[error("{0}")]
    Metagraph(#[from] prompting_miner::MetagraphError),
    /// The listening socket cannot be opened.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address asked for.
        addr: SocketAddr,
        /// The operating system's error (e.g. address already in use).
        source: std::io::Error,
    },
    /// Talking to subtensor failed.
    #[error("subtensor: {what}: {source}")]
    Chain {
        /// What the service was doing.
        what: &'static str,
        /// The chain client's error.
        source: ChainError,
    },
    /// The hotkey is not registered on the subnet (the Python miner's start-up check).
    #[error("{0}")]
    NotRegistered(ChainError),
    /// The server stopped with an error.
    #[error("the server failed: {0}")]
    Serve(#[source] std::io::Error),
}

impl ServiceError {
    /// The error for a failed chain call, keeping "not registered" apart.
    pub(crate) fn chain(what: &'static str, source: ChainError) -> Self {
        match source {
            ChainError::NotRegistered { .. } => ServiceError::NotRegistered(source),
            source => ServiceError::Chain { what, source },
        }
    }
}
