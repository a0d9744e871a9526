//! The flags every miner binary shares ([`CommonArgs`]), flattened next to its backend's.

use std::path::PathBuf;

use prompting_chain::SubtensorArgs;
use prompting_keys::Wallet;
use prompting_keys::wallet::{
    DEFAULT_HOTKEY_NAME, DEFAULT_WALLET_NAME, DEFAULT_WALLET_PATH, ENV_WALLET_HOTKEY,
    ENV_WALLET_NAME, ENV_WALLET_PATH,
};
use prompting_miner::MinerConfig;
use prompting_transport::axon::AxonArgs;

/// Which wallet's hotkey the miner signs with (bittensor's flags, variables and defaults).
#[derive(Debug, Clone, PartialEq, Eq, clap::Args)]
pub struct WalletArgs {
    /// Wallet (coldkey) name.
    #[arg(
        id = "wallet.name",
        long = "wallet.name",
        env = ENV_WALLET_NAME,
        default_value = DEFAULT_WALLET_NAME
    )]
    pub name: String,
    /// Hotkey name.
    #[arg(
        id = "wallet.hotkey",
        long = "wallet.hotkey",
        env = ENV_WALLET_HOTKEY,
        default_value = DEFAULT_HOTKEY_NAME
    )]
    pub hotkey: String,
    /// Folder holding the wallets (`~` is the home directory).
    #[arg(
        id = "wallet.path",
        long = "wallet.path",
        env = ENV_WALLET_PATH,
        default_value = DEFAULT_WALLET_PATH
    )]
    pub path: PathBuf,
}

impl Default for WalletArgs {
    fn default() -> Self {
        WalletArgs {
            name: DEFAULT_WALLET_NAME.into(),
            hotkey: DEFAULT_HOTKEY_NAME.into(),
            path: DEFAULT_WALLET_PATH.into(),
        }
    }
}

impl WalletArgs {
    /// The wallet these flags select (`~` expanded).
    pub fn wallet(&self) -> Wallet {
        Wallet::new(&self.path, self.name.clone(), self.hotkey.clone())
    }
}

/// Log verbosity.
#[derive(Debug, Clone, Default, PartialEq, Eq, clap::Args)]
pub struct LoggingArgs {
    /// Log at debug level.
    #[arg(id = "logging.debug", long = "logging.debug")]
    pub debug: bool,
    /// Log at trace level (everything).
    #[arg(id = "logging.trace", long = "logging.trace")]
    pub trace: bool,
}

/// The flags shared by every miner binary: wallet, axon, pipeline, chain, mode and logging.
///
/// Parse it (flattened into the binary's parser) with [`crate::parse_args`], which also reads
/// `--config` and records which flags were given.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct CommonArgs {
    /// The wallet.
    #[command(flatten)]
    pub wallet: WalletArgs,

    /// The axon (HTTP server).
    #[command(flatten)]
    pub axon: AxonArgs,

    /// Blacklist, priority queue and workers.
    #[command(flatten)]
    pub miner: MinerConfig,

    /// The chain.
    #[command(flatten)]
    pub subtensor: SubtensorArgs,

    /// Development mode, without a chain: the hotkey is created if missing, every caller is
    /// treated as a registered validator, and the axon binds 127.0.0.1 unless --axon.ip is
    /// given. Never use it on a real network.
    #[arg(id = "dev", long = "dev", conflicts_with = "metagraph.file")]
    pub dev: bool,

    /// Read who is registered from this metagraph file (.json or .toml) instead of the
    /// chain.
    #[arg(id = "metagraph.file", long = "metagraph.file", value_name = "PATH")]
    pub metagraph_file: Option<PathBuf>,

    /// A TOML file whose keys mirror the flags (e.g. `[axon] port = 8091`); flags given on
    /// the command line (or through their environment variable) win over it.
    #[arg(id = "config", long = "config", value_name = "FILE")]
    pub config: Option<PathBuf>,

    /// Log verbosity.
    #[command(flatten)]
    pub logging: LoggingArgs,

    /// Whether `--axon.ip` was set (command line, environment or config file). Filled by
    /// [`crate::parse_args`]; when false, `--dev` binds 127.0.0.1 instead of the default
    /// 0.0.0.0.
    #[arg(skip)]
    pub axon_ip_given: bool,
}

/// A miner binary's parser: [`CommonArgs`] flattened next to the backend's flags.
///
/// ```
/// use clap::Parser;
/// use prompting_service::{CommonArgs, MinerCli};
///
/// #[derive(Parser)]
/// struct Cli {
///     #[command(flatten)]
///     common: CommonArgs,
/// }
///
/// impl MinerCli for Cli {
///     fn common_mut(&mut self) -> &mut CommonArgs {
///         &mut self.common
///     }
/// }
/// ```
pub trait MinerCli: clap::Parser {
    /// The shared flags.
    fn common_mut(&mut self) -> &mut CommonArgs;
}
