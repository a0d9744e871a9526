//! The `main` every miner binary shares: parse the flags (and the config file), start
//! logging, run, and turn the outcome into one stderr line and an exit code.

use std::process::ExitCode;

use crate::{CliError, MinerCli, init_logging, one_line, parse_args};

/// Parses the command line into `C`, starts logging, and calls `run`. Exit codes: 0 when
/// `run` returns `Ok` (after SIGINT/SIGTERM), 1 when it fails, 2 for a command-line or
/// config-file mistake; failures print one line, `{binary}: error: ...`, on stderr.
pub fn cli_main<C, E>(binary: &str, run: impl FnOnce(C) -> Result<(), E>) -> ExitCode
where
    C: MinerCli,
    E: AsRef<dyn std::error::Error + Send + Sync + 'static>,
{
    let mut cli: C = match parse_args(std::env::args_os()) {
        Ok(cli) => cli,
        Err(CliError::Usage(err)) => err.exit(),
        Err(err) => {
            eprintln!("{binary}: error: {}", one_line(&err));
            return ExitCode::from(2);
        }
    };
    init_logging(&cli.common_mut().logging);
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            let err: &(dyn std::error::Error + 'static) = err.as_ref();
            eprintln!("{binary}: error: {}", one_line(err));
            ExitCode::FAILURE
        }
    }
}
