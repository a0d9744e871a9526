//! The `main` every miner binary shares: parse the flags (and the config file), start
//! logging, warn about ignored Python flags, run, and turn the outcome into one stderr line
//! and an exit code ([`prompting_cli`]'s rule).

use std::process::ExitCode;

use prompting_cli::Failure;

use crate::{CliError, MinerCli, init_logging, parse_args};

/// Parses the command line into `C`, starts logging, warns about ignored Python flags and
/// calls `run`. Exit codes: 0 when `run` returns `Ok` (after SIGINT/SIGTERM), 2 for a
/// command-line, config-file or settings mistake, 1 for a failure of the environment;
/// failures print one line, `{binary}: error: ...`, on stderr. `--help` and `--version`
/// print as usual.
pub fn cli_main<C: MinerCli>(binary: &str, run: impl FnOnce(C) -> Result<(), Failure>) -> ExitCode {
    let outcome = parse_args::<C, _, _>(std::env::args_os())
        .map_err(|err| match err {
            CliError::Usage(err) if prompting_cli::is_informational(&err) => err.exit(),
            other => Failure::from(other),
        })
        .and_then(|mut cli| {
            let common = cli.common_mut();
            init_logging(common).map_err(Failure::runtime)?;
            common.warn_ignored();
            run(cli)
        });
    prompting_cli::finish(binary, outcome)
}
