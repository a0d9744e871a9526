//! Command-line parsing with a `--config` TOML file underneath.
//!
//! The file's keys mirror the flags: a table path plus a key spells the flag without its
//! dashes, so `[axon] port = 8091` is `--axon.port 8091`, `[miner.blacklist] whitelist =
//! ["5F..."]` is `--miner.blacklist.whitelist 5F...`, and a top-level `netuid = 21` is
//! `--netuid 21`. Values are strings, numbers, booleans or arrays of those (an array gives the
//! flag once per element, for repeatable flags); `true` turns an on/off flag on, `false` leaves
//! it off.
//!
//! Precedence, highest first: the command line, the flag's environment variable (e.g.
//! `BT_AXON_PORT`, `OPENAI_API_KEY`), the config file, the built-in default. A flag given on
//! the command line replaces the file's value entirely (lists are not merged).
//!
//! The file's values go through the same parsers and checks as the flags; a key that is no
//! flag is an error naming it.

use std::ffi::OsString;
use std::path::{Path, PathBuf};

use clap::parser::ValueSource;
use clap::{Arg, ArgMatches, Command};

use crate::args::MinerCli;

/// Why the command line or the config file could not be used.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// The command line itself is wrong, or asks for `--help`/`--version`: print it with
    /// [`clap::Error::exit`].
    #[error("{0}")]
    Usage(#[from] clap::Error),
    /// The config file cannot be read.
    #[error("cannot read config file {}: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// The operating system's error.
        source: std::io::Error,
    },
    /// The config file is not valid TOML, has a key that is no flag, or a value the flag
    /// refuses.
    #[error("config file {}: {message}", path.display())]
    Invalid {
        /// The file.
        path: PathBuf,
        /// What is wrong, naming the key or flag.
        message: String,
    },
}

/// Parses `argv` (program name first) into the binary's flags, filling flags not given on the
/// command line (nor by their environment variable) from the `--config` file, and records
/// whether `--axon.ip` was set.
pub fn parse_args<C, I, T>(argv: I) -> Result<C, CliError>
where
    C: MinerCli,
    I: IntoIterator<Item = T>,
    T: Into<OsString>,
{
    let argv: Vec<OsString> = argv.into_iter().map(Into::into).collect();
    let mut command = C::command();
    command.build();
    let first = command.clone().try_get_matches_from(&argv)?;
    let matches = match first.get_one::<PathBuf>("config") {
        None => first,
        Some(path) => {
            let path = path.clone();
            let file_args = file_arguments(&command, &first, &path)?;
            let mut merged = Vec::with_capacity(argv.len() + file_args.len());
            merged.extend(argv.first().cloned());
            merged.extend(file_args);
            merged.extend(argv.iter().skip(1).cloned());
            command
                .clone()
                .try_get_matches_from(merged)
                .map_err(|e| invalid(&path, first_line(&e)))?
        }
    };
    let mut cli =
        C::from_arg_matches(&matches).map_err(|e| match &matches.get_one::<PathBuf>("config") {
            Some(path) => invalid(path, first_line(&e)),
            None => CliError::Usage(e),
        })?;
    cli.common_mut().axon_ip_given = arg_by_long(&command, "axon.ip")
        .and_then(|arg| matches.value_source(arg.get_id().as_str()))
        .is_some_and(|source| source != ValueSource::DefaultValue);
    Ok(cli)
}

fn invalid(path: &Path, message: impl Into<String>) -> CliError {
    CliError::Invalid {
        path: path.to_path_buf(),
        message: message.into(),
    }
}

/// The first line of a clap error, without its `error: ` prefix.
fn first_line(err: &clap::Error) -> String {
    let rendered = err.render().to_string();
    let line = rendered.lines().next().unwrap_or_default();
    line.strip_prefix("error: ").unwrap_or(line).to_string()
}

fn arg_by_long<'a>(command: &'a Command, long: &str) -> Option<&'a Arg> {
    command
        .get_arguments()
        .find(|arg| arg.get_long() == Some(long))
}

/// The file's settings as `--flag=value` arguments, leaving out flags `matches` got from the
/// command line or the environment.
fn file_arguments(
    command: &Command,
    matches: &ArgMatches,
    path: &Path,
) -> Result<Vec<OsString>, CliError> {
    let text = std::fs::read_to_string(path).map_err(|source| CliError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    let table: toml::Table = toml::from_str(&text).map_err(|e| invalid(path, e.message()))?;
    let root = toml::Value::Table(table);
    let mut settings = Vec::new();
    flatten("", &root, &mut settings);
    let mut out = Vec::new();
    for (key, value) in settings {
        let arg = arg_by_long(command, &key)
            .filter(|arg| arg.get_id() != "config" && is_setting(arg))
            .ok_or_else(|| invalid(path, format!("unknown key `{key}` (there is no --{key})")))?;
        let given = matches
            .value_source(arg.get_id().as_str())
            .is_some_and(|source| source != ValueSource::DefaultValue);
        if given {
            continue;
        }
        out.extend(
            tokens(arg, &key, value)
                .map_err(|reason| invalid(path, format!("`{key}`: {reason}")))?
                .into_iter()
                .map(OsString::from),
        );
    }
    Ok(out)
}

/// Whether an argument is a setting (not `--help`/`--version`).
fn is_setting(arg: &Arg) -> bool {
    !matches!(
        arg.get_action(),
        clap::ArgAction::Help
            | clap::ArgAction::HelpShort
            | clap::ArgAction::HelpLong
            | clap::ArgAction::Version
    )
}

/// `(dotted.key, value)` for every non-table value under `value`.
fn flatten<'a>(prefix: &str, value: &'a toml::Value, out: &mut Vec<(String, &'a toml::Value)>) {
    match value {
        toml::Value::Table(table) => {
            for (key, inner) in table {
                let path = if prefix.is_empty() {
                    key.clone()
                } else {
                    format!("{prefix}.{key}")
                };
                flatten(&path, inner, out);
            }
        }
        other => out.push((prefix.to_string(), other)),
    }
}

/// The command-line arguments saying `key = value`.
fn tokens(arg: &Arg, key: &str, value: &toml::Value) -> Result<Vec<String>, String> {
    let takes_values = arg.get_action().takes_values();
    let flag = format!("--{key}");
    match value {
        toml::Value::Boolean(on) if !takes_values => Ok(if *on { vec![flag] } else { Vec::new() }),
        _ if !takes_values => Err("expected true or false".into()),
        toml::Value::Array(items) if items.is_empty() => {
            let bare_allowed = arg.get_num_args().is_some_and(|n| n.min_values() == 0);
            Ok(vec![if bare_allowed {
                flag
            } else {
                format!("{flag}=")
            }])
        }
        toml::Value::Array(items) => items
            .iter()
            .map(|item| scalar(item).map(|text| format!("{flag}={text}")))
            .collect(),
        other => scalar(other).map(|text| vec![format!("{flag}={text}")]),
    }
}

fn scalar(value: &toml::Value) -> Result<String, String> {
    match value {
        toml::Value::String(text) => Ok(text.clone()),
        toml::Value::Integer(n) => Ok(n.to_string()),
        toml::Value::Float(x) => Ok(x.to_string()),
        toml::Value::Boolean(b) => Ok(b.to_string()),
        toml::Value::Datetime(d) => Ok(d.to_string()),
        toml::Value::Array(_) | toml::Value::Table(_) => {
            Err("expected a string, a number, a boolean or a list of those".into())
        }
    }
}
