//! The miner process shared by the miner binaries (`openai-miner`, `btlm-miner`): a binary
//! parses its flags, builds its backend (a [`prompting_miner::Miner`]) and hands both here.
//!
//! - [`CommonArgs`]: the shared flags — wallet (`--wallet.*`), axon (`--axon.*`), pipeline
//!   (`--miner.*`), chain (`--subtensor.*`, `--netuid`), `--dev`, `--metagraph.file`,
//!   `--config`, `--logging.*` — flattened into the binary's parser ([`MinerCli`]).
//! - [`parse_args`]: clap parsing with a `--config` TOML or bittensor YAML file underneath
//!   (see [`config_file`] for the format and precedence), accepting the Python miners' flags
//!   that mean nothing here with a warning ([`python_compat`]).
//! - [`cli_main`]: the whole `main` of a miner binary, with the error-line and exit-code rule
//!   of [`prompting_cli`].
//! - [`Service`]: [`Service::prepare`] checks the settings, loads the hotkey, binds the port
//!   and reads the metagraph (dev, file, or chain with the registration check); then, once
//!   the binary loaded its backend, [`Service::run`] listens (connections are refused until
//!   then) and serves the backend behind the pipeline and the axon until SIGINT or SIGTERM,
//!   and drains.
//!
//! ```no_run
//! use std::sync::Arc;
//!
//! use clap::Parser;
//! use prompting_service::{CliError, CommonArgs, MinerCli, Service};
//!
//! #[derive(Parser)]
//! struct Cli {
//!     #[command(flatten)]
//!     common: CommonArgs,
//! }
//!
//! impl MinerCli for Cli {
//!     fn common_mut(&mut self) -> &mut CommonArgs {
//!         &mut self.common
//!     }
//! }
//!
//! # fn backend() -> Arc<dyn prompting_miner::Miner> { unimplemented!() }
//! fn main() -> Result<(), Box<dyn std::error::Error>> {
//!     let cli: Cli = match prompting_service::parse_args(std::env::args_os()) {
//!         Ok(cli) => cli,
//!         Err(CliError::Usage(e)) => e.exit(),
//!         Err(e) => return Err(e.into()),
//!     };
//!     prompting_service::init_logging(&cli.common)?;
//!     cli.common.warn_ignored();
//!     let runtime = prompting_service::runtime(&cli.common)?;
//!     runtime.block_on(async {
//!         let service = Service::prepare(cli.common).await?;
//!         service.run(backend()).await
//!     })?;
//!     Ok(())
//! }
//! ```

pub mod args;
mod cli_main;
pub mod config_file;
pub mod error;
pub mod logging;
pub mod python_compat;
pub mod service;

pub use args::{CommonArgs, LoggingArgs, MinerCli, WalletArgs};
pub use cli_main::cli_main;
pub use config_file::{CliError, parse_args};
pub use error::ServiceError;
pub use logging::init_logging;
pub use prompting_cli::{Failure, one_line};
pub use service::{Service, run, runtime};
