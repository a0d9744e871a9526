//! The rule every prompting-rs binary follows when it cannot do its job: exactly one line on
//! stderr, `<binary>: error: <what is wrong>`, and an exit code saying whose fault it is.
//!
//! | exit | meaning |
//! | --- | --- |
//! | 0 | done (a miner: stopped by SIGINT/SIGTERM) |
//! | 1 | the environment: port in use, wallet file, chain, upstream, a refused request |
//! | 2 | the user: an unknown or invalid flag, a config-file mistake, an invalid setting |
//!
//! clap's own errors are reformatted to that one line; `--help` and `--version` print as
//! usual and exit 0.
//!
//! ```
//! use std::process::ExitCode;
//! use prompting_cli::{Failure, finish};
//!
//! fn run() -> Result<(), Failure> {
//!     Err(Failure::usage("--axon.port: expected a number"))
//! }
//!
//! let code: ExitCode = finish("my-binary", run());
//! # let _ = code;
//! ```

use std::error::Error;
use std::ffi::OsString;
use std::fmt;
use std::process::ExitCode;

/// An error of any type, as binaries pass them around.
pub type BoxError = Box<dyn Error + Send + Sync + 'static>;

/// Exit code for a failure of the environment.
pub const EXIT_RUNTIME: u8 = 1;
/// Exit code for a mistake in what the user typed (flags, config file, settings).
pub const EXIT_USAGE: u8 = 2;

/// Why a binary stops with an error, sorted by whose fault it is.
#[derive(Debug)]
pub enum Failure {
    /// Something the user typed is wrong: exit 2.
    Usage(BoxError),
    /// The environment failed (port, files, network, chain): exit 1.
    Runtime(BoxError),
}

impl Failure {
    /// A mistake in the flags, config file or settings.
    pub fn usage(error: impl Into<BoxError>) -> Self {
        Failure::Usage(error.into())
    }

    /// A failure of the environment.
    pub fn runtime(error: impl Into<BoxError>) -> Self {
        Failure::Runtime(error.into())
    }

    /// The process exit code: 2 for [`Failure::Usage`], 1 for [`Failure::Runtime`].
    pub fn exit_code(&self) -> u8 {
        match self {
            Failure::Usage(_) => EXIT_USAGE,
            Failure::Runtime(_) => EXIT_RUNTIME,
        }
    }

    /// The error, without its classification.
    pub fn error(&self) -> &(dyn Error + Send + Sync + 'static) {
        match self {
            Failure::Usage(error) | Failure::Runtime(error) => error.as_ref(),
        }
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&one_line(self.error()))
    }
}

impl From<clap::Error> for Failure {
    fn from(error: clap::Error) -> Self {
        Failure::Usage(Box::new(ClapLine(clap_error_line(&error))))
    }
}

/// A clap error reduced to its one line.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct ClapLine(String);

/// `err` and its causes on one line, `: `-separated, leaving out a cause whose text the line
/// already ends with (errors that print their cause and also return it from `source()`).
/// Line breaks inside a message become spaces.
pub fn one_line(err: &(dyn Error + 'static)) -> String {
    let mut line = String::new();
    let mut next = Some(err);
    while let Some(cause) = next {
        let text = cause.to_string();
        let text = text.trim();
        if !text.is_empty() && !line.ends_with(text) {
            if !line.is_empty() {
                line.push_str(": ");
            }
            line.push_str(text);
        }
        next = cause.source();
    }
    squash_lines(&line)
}

fn squash_lines(text: &str) -> String {
    text.lines()
        .map(str::trim)
        .filter(|line| !line.is_empty())
        .collect::<Vec<_>>()
        .join(" ")
}

/// A clap error as one line: its message without the `error: ` prefix, followed by clap's
/// tip when it has one (`tip: a similar argument exists: '--axon.port'`) and a pointer to
/// `--help`.
pub fn clap_error_line(err: &clap::Error) -> String {
    let rendered = err.render().to_string();
    let mut lines = rendered.lines().map(str::trim).filter(|l| !l.is_empty());
    let first = lines.next().unwrap_or("invalid command line");
    let mut line = first.strip_prefix("error: ").unwrap_or(first).to_string();
    for tip in lines.filter(|l| l.starts_with("tip: ")) {
        line.push_str(" (");
        line.push_str(tip);
        line.push(')');
    }
    line.push_str("; see --help");
    line
}

/// Parses `argv` with `C`; on `--help`/`--version` prints them and exits 0, on a mistake
/// prints the one error line and exits 2.
pub fn parse_or_exit<C, I, T>(binary: &str, argv: I) -> C
where
    C: clap::Parser,
    I: IntoIterator<Item = T>,
    T: Into<OsString> + Clone,
{
    match C::try_parse_from(argv) {
        Ok(parsed) => parsed,
        Err(err) => exit_on_clap_error(binary, err),
    }
}

/// Ends the process for a clap error: `--help`/`--version` (and clap's other
/// informational displays) print normally and exit 0; a mistake prints the one error line
/// and exits 2.
pub fn exit_on_clap_error(binary: &str, err: clap::Error) -> ! {
    if is_informational(&err) {
        err.exit()
    }
    eprintln!("{binary}: error: {}", clap_error_line(&err));
    std::process::exit(i32::from(EXIT_USAGE))
}

/// Whether a clap "error" is really a requested display (`--help`, `--version`).
pub fn is_informational(err: &clap::Error) -> bool {
    use clap::error::ErrorKind;
    matches!(
        err.kind(),
        ErrorKind::DisplayHelp
            | ErrorKind::DisplayVersion
            | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand
    )
}

/// Prints the failure, if any, as the one error line and returns the exit code.
pub fn finish(binary: &str, outcome: Result<(), Failure>) -> ExitCode {
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(failure) => {
            eprintln!("{binary}: error: {failure}");
            ExitCode::from(failure.exit_code())
        }
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("cannot read f.toml: {source}")]
    struct Repeats {
        source: std::io::Error,
    }

    #[derive(Debug, thiserror::Error)]
    #[error("starting")]
    struct Context {
        source: Repeats,
    }

    #[test]
    fn causes_are_joined_without_repetition() {
        let err = Context {
            source: Repeats {
                source: std::io::Error::other("gone\nfor good"),
            },
        };
        assert_eq!(
            one_line(&err),
            "starting: cannot read f.toml: gone for good"
        );
    }

    #[derive(Debug, Parser)]
    #[command(name = "tool")]
    struct Cli {
        #[arg(long = "axon.port")]
        port: u16,
    }

    #[test]
    fn clap_errors_become_one_line_usage_failures() {
        let err = Cli::try_parse_from(["tool", "--axon.prot", "1"]).expect_err("unknown flag");
        let line = clap_error_line(&err);
        assert!(!line.contains('\n'), "{line}");
        assert!(
            line.starts_with("unexpected argument '--axon.prot' found"),
            "{line}"
        );
        assert!(line.contains("'--axon.port'"), "the tip is kept: {line}");
        assert!(line.ends_with("; see --help"), "{line}");

        let err = Cli::try_parse_from(["tool", "--axon.port", "x"]).expect_err("not a number");
        let failure = Failure::from(err);
        assert_eq!(failure.exit_code(), EXIT_USAGE);
        let text = failure.to_string();
        assert!(
            text.starts_with("invalid value 'x' for '--axon.port <PORT>'"),
            "{text}"
        );
        assert!(!text.contains('\n'));

        let help = Cli::try_parse_from(["tool", "--help"]).expect_err("help");
        assert!(is_informational(&help));
        assert!(!is_informational(
            &Cli::try_parse_from(["tool"]).expect_err("missing")
        ));
    }

    #[test]
    fn exit_codes_follow_whose_fault_it_is() {
        assert_eq!(Failure::usage("bad flag").exit_code(), 2);
        assert_eq!(Failure::runtime("port in use").exit_code(), 1);
        assert_eq!(Failure::runtime("a\nb").to_string(), "a b");
    }
}
