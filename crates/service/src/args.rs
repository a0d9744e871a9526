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

use crate::python_compat::{IgnoredFlag, IgnoredUse};

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

/// Default of `--logging.logging_dir` (bittensor's).
pub const DEFAULT_LOGGING_DIR: &str = "~/.bittensor/miners";
/// Default of `--logging.max_file_bytes`: the Python miners rotate at 25 MB.
pub const DEFAULT_LOG_FILE_BYTES: u64 = 25 * 1024 * 1024;
/// Default of `--logging.max_files`.
pub const DEFAULT_LOG_FILES: usize = 10;

/// Log verbosity and the optional log file (bittensor's flags and variables).
#[derive(Debug, Clone, PartialEq, Eq, clap::Args)]
pub struct LoggingArgs {
    /// Log at debug level.
    #[arg(
        id = "logging.debug",
        long = "logging.debug",
        env = "BT_LOGGING_DEBUG",
        value_parser = clap::builder::BoolishValueParser::new()
    )]
    pub debug: bool,
    /// Log at trace level (everything).
    #[arg(
        id = "logging.trace",
        long = "logging.trace",
        env = "BT_LOGGING_TRACE",
        value_parser = clap::builder::BoolishValueParser::new()
    )]
    pub trace: bool,
    /// Also write the log to `<logging_dir>/<wallet.name>/<wallet.hotkey>/netuid<netuid>/miner/logs.log`,
    /// where the Python miners write theirs.
    #[arg(
        id = "logging.record_log",
        long = "logging.record_log",
        env = "BT_LOGGING_RECORD_LOG",
        value_parser = clap::builder::BoolishValueParser::new()
    )]
    pub record_log: bool,
    /// Root folder of the log file of --logging.record_log (`~` is the home directory).
    #[arg(
        id = "logging.logging_dir",
        long = "logging.logging_dir",
        env = "BT_LOGGING_LOGGING_DIR",
        default_value = DEFAULT_LOGGING_DIR,
        value_name = "DIR"
    )]
    pub logging_dir: PathBuf,
    /// Size at which the log file is rotated (`logs.log` becomes `logs.log.1`), in bytes.
    #[arg(
        id = "logging.max_file_bytes",
        long = "logging.max_file_bytes",
        default_value_t = DEFAULT_LOG_FILE_BYTES,
        value_parser = clap::value_parser!(u64).range(4096..)
    )]
    pub max_file_bytes: u64,
    /// Rotated log files kept besides `logs.log` (older ones are deleted).
    #[arg(
        id = "logging.max_files",
        long = "logging.max_files",
        default_value_t = DEFAULT_LOG_FILES
    )]
    pub max_files: usize,
}

impl Default for LoggingArgs {
    fn default() -> Self {
        LoggingArgs {
            debug: false,
            trace: false,
            record_log: false,
            logging_dir: DEFAULT_LOGGING_DIR.into(),
            max_file_bytes: DEFAULT_LOG_FILE_BYTES,
            max_files: DEFAULT_LOG_FILES,
        }
    }
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

    /// Do not start the axon: only the chain duties (metagraph refresh, weights) run. The
    /// backend is not loaded.
    #[arg(id = "miner.no_start_axon", long = "miner.no_start_axon")]
    pub no_start_axon: bool,

    /// The Python miner's mock subtensor: no chain; every caller is treated as a registered
    /// validator (the `--dev` metagraph), but the hotkey must exist and the bind address is
    /// --axon.ip's.
    #[arg(
        id = "miner.mock_subtensor",
        long = "miner.mock_subtensor",
        conflicts_with = "metagraph.file"
    )]
    pub mock_subtensor: bool,

    /// bittensor's `--subtensor._mock true`: the same as --miner.mock_subtensor.
    #[arg(
        id = "subtensor._mock",
        long = "subtensor._mock",
        value_name = "BOOL",
        num_args = 0..=1,
        default_value = "false",
        default_missing_value = "true",
        value_parser = clap::builder::BoolishValueParser::new()
    )]
    pub subtensor_mock: bool,

    /// Development mode, without a chain: the hotkey is created if missing, every caller is
    /// treated as a registered validator, and the axon binds 127.0.0.1 unless --axon.ip is
    /// given. Never use it on a real network.
    #[arg(id = "dev", long = "dev", conflicts_with = "metagraph.file")]
    pub dev: bool,

    /// Read who is registered from this metagraph file (.json or .toml) instead of the
    /// chain.
    #[arg(id = "metagraph.file", long = "metagraph.file", value_name = "PATH")]
    pub metagraph_file: Option<PathBuf>,

    /// A TOML (`.toml`) or bittensor YAML (`.yaml`, `.yml`) file whose keys mirror the flags
    /// (`[axon] port = 8091`, `axon: {port: 8091}`); flags given on the command line (or
    /// through their environment variable) win over it.
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

    /// The Python miners' flags and config-file keys given but ignored here. Filled by
    /// [`crate::parse_args`]; logged by [`CommonArgs::warn_ignored`].
    #[arg(skip)]
    pub ignored: Vec<IgnoredUse>,
}

impl CommonArgs {
    /// Logs one warning per reason naming the ignored Python flags (see
    /// [`crate::python_compat`]).
    pub fn warn_ignored(&self) {
        crate::python_compat::warn_ignored(&self.ignored);
    }

    /// Whether the Python miners' mock subtensor was asked for (`--miner.mock_subtensor` or
    /// `--subtensor._mock true`).
    pub fn mock(&self) -> bool {
        self.mock_subtensor || self.subtensor_mock
    }

    /// The log file of `--logging.record_log`, at the Python miners' place:
    /// `<logging_dir>/<wallet.name>/<wallet.hotkey>/netuid<netuid>/miner/logs.log`.
    pub fn log_file(&self) -> Option<PathBuf> {
        self.logging.record_log.then(|| {
            prompting_keys::wallet::expand_home(&self.logging.logging_dir)
                .join(&self.wallet.name)
                .join(&self.wallet.hotkey)
                .join(format!("netuid{}", self.subtensor.netuid))
                .join("miner")
                .join("logs.log")
        })
    }
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
    /// The binary's own Python flags accepted and ignored (e.g. `--btlm.use_deepspeed`),
    /// besides [`crate::python_compat::COMMON_IGNORED`].
    const PYTHON_IGNORED: &'static [IgnoredFlag] = &[];

    /// The shared flags.
    fn common_mut(&mut self) -> &mut CommonArgs;
}
