//! Command-line parsing with a `--config` file underneath: TOML (`.toml`) or bittensor's YAML
//! (`.yaml`, `.yml`), chosen by the file's extension.
//!
//! The file's keys mirror the flags: a table path plus a key spells the flag without its
//! dashes, so `[axon] port = 8091` (TOML) or `axon: {port: 8091}` (YAML, the nested form
//! `bittensor.config` prints) is `--axon.port 8091`; `[miner.blacklist] whitelist =
//! ["5F..."]` is `--miner.blacklist.whitelist 5F...`, and a top-level `netuid = 21` is
//! `--netuid 21`. A YAML key may also be dotted (`axon.port: 8091`). Values are strings,
//! numbers, booleans, null (YAML: the key is skipped) or lists of those (a list gives the flag
//! once per element, for repeatable flags); `true` turns an on/off flag on, `false` leaves it
//! off (YAML 1.1's `yes`/`no`/`on`/`off`, as PyYAML reads them, work too).
//!
//! Precedence, highest first: the command line, the flag's environment variable (e.g.
//! `BT_AXON_PORT`, `OPENAI_API_KEY`), the config file, the built-in default. A flag given on
//! the command line replaces the file's value entirely (lists are not merged). When both
//! `--subtensor.network` and `--subtensor.chain_endpoint` are set, the one from the higher
//! source wins; from the same source, the endpoint.
//!
//! The file's values go through the same parsers and checks as the flags. Keys of the Python
//! miners that have no meaning here ([`crate::python_compat`]) are skipped, and named in one
//! warning when their value would have changed something there; keys bittensor derives
//! (`full_path`, `miner.full_path`, `__is_set`) are skipped silently; any other key that is no flag is an
//! error naming it. A syntax error names the line.

use std::collections::HashSet;
use std::ffi::OsString;
use std::path::{Path, PathBuf};

use clap::parser::ValueSource;
use clap::{Arg, ArgMatches, Command};

use crate::args::MinerCli;
use crate::python_compat::{self, DERIVED_KEYS, IgnoredUse, MissingValue};

/// Why the command line or the config file could not be used.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// The command line itself is wrong, or asks for `--help`/`--version`.
    #[error("{0}")]
    Usage(#[from] clap::Error),
    /// An ignored Python flag lacks its value.
    #[error(transparent)]
    MissingValue(#[from] MissingValue),
    /// The config file cannot be read.
    #[error("cannot read config file {}: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// The operating system's error.
        source: std::io::Error,
    },
    /// The config file is not valid TOML/YAML, has a key that is no flag, or a value the flag
    /// refuses.
    #[error("config file {}: {message}", path.display())]
    Invalid {
        /// The file.
        path: PathBuf,
        /// What is wrong, naming the line, the key or the flag.
        message: String,
    },
}

/// One value of a config file, whatever its format.
#[derive(Debug, Clone, PartialEq)]
pub enum Setting {
    /// YAML `null`/`~` (or an empty value): as if the key were absent.
    Null,
    /// `true` or `false`.
    Bool(bool),
    /// A string or a number, as text.
    Text(String),
    /// A list.
    List(Vec<Setting>),
}

impl Setting {
    /// Whether the value would change nothing in the Python miner: null, false, empty, or
    /// equal to the flag's Python default.
    fn is_inert(&self, python_default: Option<&str>) -> bool {
        match self {
            Setting::Null | Setting::Bool(false) => true,
            Setting::Bool(true) => false,
            Setting::Text(text) => text.is_empty() || Some(text.as_str()) == python_default,
            Setting::List(items) => items.is_empty(),
        }
    }
}

/// The config file's settings as `(dotted.key, value)`.
pub fn read_settings(path: &Path) -> Result<Vec<(String, Setting)>, CliError> {
    let text = std::fs::read_to_string(path).map_err(|source| CliError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    let extension = path
        .extension()
        .and_then(|e| e.to_str())
        .map(str::to_ascii_lowercase);
    match extension.as_deref() {
        Some("toml") => toml_settings(&text),
        Some("yaml" | "yml") => yaml_settings(&text),
        _ => Err(
            "unknown format: name the file *.toml, or *.yaml / *.yml for bittensor's YAML"
                .to_string(),
        ),
    }
    .map_err(|message| invalid(path, message))
}

/// Parses `argv` (program name first) into the binary's flags, filling flags not given on the
/// command line (nor by their environment variable) from the `--config` file. Records whether
/// `--axon.ip` was set and which Python flags were ignored.
pub fn parse_args<C, I, T>(argv: I) -> Result<C, CliError>
where
    C: MinerCli,
    I: IntoIterator<Item = T>,
    T: Into<OsString>,
{
    let tables = [python_compat::COMMON_IGNORED, C::PYTHON_IGNORED];
    let argv: Vec<OsString> = argv.into_iter().map(Into::into).collect();
    let (argv, mut ignored) = python_compat::strip_ignored(argv, &tables)?;
    let mut command = C::command();
    command.build();
    let first = command.clone().try_get_matches_from(&argv)?;
    let mut file_keys = HashSet::new();
    let matches = match first.get_one::<PathBuf>("config") {
        None => first.clone(),
        Some(path) => {
            let path = path.clone();
            let settings = read_settings(&path)?;
            let file_args = file_arguments(
                &command,
                &first,
                &path,
                settings,
                &tables,
                &mut ignored,
                &mut file_keys,
            )?;
            let mut merged = Vec::with_capacity(argv.len() + file_args.len());
            merged.extend(argv.first().cloned());
            merged.extend(file_args);
            merged.extend(argv.iter().skip(1).cloned());
            command
                .clone()
                .try_get_matches_from(merged)
                .map_err(|e| invalid(&path, prompting_cli::clap_error_line(&e)))?
        }
    };
    let mut cli =
        C::from_arg_matches(&matches).map_err(|e| match &matches.get_one::<PathBuf>("config") {
            Some(path) => invalid(path, prompting_cli::clap_error_line(&e)),
            None => CliError::Usage(e),
        })?;
    let source_rank = |long: &str| -> u8 {
        let Some(arg) = arg_by_long(&command, long) else {
            return 0;
        };
        match first.value_source(arg.get_id().as_str()) {
            Some(ValueSource::CommandLine) => 3,
            Some(ValueSource::EnvVariable) => 2,
            _ if file_keys.contains(long) => 1,
            _ => 0,
        }
    };
    let network_rank = source_rank("subtensor.network");
    let endpoint_rank = source_rank("subtensor.chain_endpoint");
    let common = cli.common_mut();
    if network_rank > endpoint_rank {
        common.subtensor.chain_endpoint = None;
    }
    common.axon_ip_given = source_rank("axon.ip") > 0;
    common.ignored = ignored;
    Ok(cli)
}

fn invalid(path: &Path, message: impl Into<String>) -> CliError {
    CliError::Invalid {
        path: path.to_path_buf(),
        message: message.into(),
    }
}

fn arg_by_long<'a>(command: &'a Command, long: &str) -> Option<&'a Arg> {
    command
        .get_arguments()
        .find(|arg| arg.get_long() == Some(long))
}

/// The file's settings as `--flag=value` arguments, leaving out flags `matches` got from the
/// command line or the environment; ignored Python keys go to `ignored`, the keys that set a
/// flag to `file_keys`.
fn file_arguments(
    command: &Command,
    matches: &ArgMatches,
    path: &Path,
    settings: Vec<(String, Setting)>,
    tables: &[&[python_compat::IgnoredFlag]],
    ignored: &mut Vec<IgnoredUse>,
    file_keys: &mut HashSet<String>,
) -> Result<Vec<OsString>, CliError> {
    let mut out = Vec::new();
    for (key, value) in settings {
        if DERIVED_KEYS.contains(&key.as_str()) {
            continue;
        }
        if key == "config" {
            if !value.is_inert(None) {
                ignored.push(IgnoredUse {
                    flag: key,
                    reason: "a config file does not load another config file",
                });
            }
            continue;
        }
        let Some(arg) = arg_by_long(command, &key).filter(|arg| is_setting(arg)) else {
            match python_compat::find(tables, &key) {
                Some(entry) => {
                    if !value.is_inert(entry.python_default) {
                        ignored.push(IgnoredUse {
                            flag: key,
                            reason: entry.reason,
                        });
                    }
                    continue;
                }
                None => {
                    return Err(invalid(
                        path,
                        format!("unknown key `{key}` (there is no --{key})"),
                    ));
                }
            }
        };
        let given = matches
            .value_source(arg.get_id().as_str())
            .is_some_and(|source| source != ValueSource::DefaultValue);
        let words = tokens(arg, &key, &value)
            .map_err(|reason| invalid(path, format!("`{key}`: {reason}")))?;
        if !words.is_empty() {
            file_keys.insert(key);
        }
        if !given {
            out.extend(words.into_iter().map(OsString::from));
        }
    }
    Ok(out)
}

/// Whether an argument is a setting (not `--help`/`--version`/`--config`).
fn is_setting(arg: &Arg) -> bool {
    arg.get_id() != "config"
        && !matches!(
            arg.get_action(),
            clap::ArgAction::Help
                | clap::ArgAction::HelpShort
                | clap::ArgAction::HelpLong
                | clap::ArgAction::Version
        )
}

/// A YAML 1.1 / TOML boolean spelled as text (`yes`, `off`, ...).
fn boolish(text: &str) -> Option<bool> {
    match text.trim().to_ascii_lowercase().as_str() {
        "true" | "yes" | "on" | "y" | "1" => Some(true),
        "false" | "no" | "off" | "n" | "0" => Some(false),
        _ => None,
    }
}

/// The command-line arguments saying `key = value`.
fn tokens(arg: &Arg, key: &str, value: &Setting) -> Result<Vec<String>, String> {
    let takes_values = arg.get_action().takes_values();
    let flag = format!("--{key}");
    if !takes_values {
        let on = match value {
            Setting::Null => false,
            Setting::Bool(on) => *on,
            Setting::Text(text) => boolish(text).ok_or("expected true or false")?,
            Setting::List(_) => return Err("expected true or false".into()),
        };
        return Ok(if on { vec![flag] } else { Vec::new() });
    }
    match value {
        Setting::Null => Ok(Vec::new()),
        Setting::List(items) if items.is_empty() => {
            let bare_allowed = arg.get_num_args().is_some_and(|n| n.min_values() == 0);
            Ok(vec![if bare_allowed {
                flag
            } else {
                format!("{flag}=")
            }])
        }
        Setting::List(items) => items
            .iter()
            .map(|item| scalar(item).map(|text| format!("{flag}={text}")))
            .collect(),
        other => scalar(other).map(|text| vec![format!("{flag}={text}")]),
    }
}

fn scalar(value: &Setting) -> Result<String, String> {
    match value {
        Setting::Text(text) => Ok(text.clone()),
        Setting::Bool(on) => Ok(on.to_string()),
        Setting::Null | Setting::List(_) => {
            Err("expected a string, a number, a boolean or a list of those".into())
        }
    }
}

/// `line L, column C` of a byte offset.
fn position(text: &str, offset: usize) -> String {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let column = before
        .rsplit('\n')
        .next()
        .map_or(0, |last| last.chars().count())
        + 1;
    format!("line {line}, column {column}")
}

fn toml_settings(text: &str) -> Result<Vec<(String, Setting)>, String> {
    let table: toml::Table = toml::from_str(text).map_err(|e| match e.span() {
        Some(span) => format!("{}: {}", position(text, span.start), e.message()),
        None => e.message().to_string(),
    })?;
    let mut out = Vec::new();
    flatten_toml("", &toml::Value::Table(table), &mut out);
    Ok(out)
}

fn dotted(prefix: &str, key: &str) -> String {
    if prefix.is_empty() {
        key.to_string()
    } else {
        format!("{prefix}.{key}")
    }
}

fn flatten_toml(prefix: &str, value: &toml::Value, out: &mut Vec<(String, Setting)>) {
    match value {
        toml::Value::Table(table) => {
            for (key, inner) in table {
                flatten_toml(&dotted(prefix, key), inner, out);
            }
        }
        other => out.push((prefix.to_string(), toml_setting(other))),
    }
}

fn toml_setting(value: &toml::Value) -> Setting {
    match value {
        toml::Value::String(text) => Setting::Text(text.clone()),
        toml::Value::Integer(n) => Setting::Text(n.to_string()),
        toml::Value::Float(x) => Setting::Text(x.to_string()),
        toml::Value::Boolean(on) => Setting::Bool(*on),
        toml::Value::Datetime(d) => Setting::Text(d.to_string()),
        toml::Value::Array(items) => Setting::List(items.iter().map(toml_setting).collect()),
        // Tables inside arrays: refused by `scalar` when the key is used.
        toml::Value::Table(_) => Setting::List(vec![Setting::Null]),
    }
}

fn yaml_settings(text: &str) -> Result<Vec<(String, Setting)>, String> {
    use yaml_rust2::{Yaml, YamlLoader};
    let documents = YamlLoader::load_from_str(text).map_err(|e| {
        let mark = e.marker();
        format!(
            "line {}, column {}: {}",
            mark.line(),
            mark.col() + 1,
            e.info()
        )
    })?;
    let mut out = Vec::new();
    match documents.as_slice() {
        [] | [Yaml::Null] => {}
        [root @ Yaml::Hash(_)] => flatten_yaml("", root, &mut out)?,
        [_] => return Err("expected a mapping of settings (`key: value` lines)".into()),
        _ => return Err("expected one YAML document, found several (`---`)".into()),
    }
    Ok(out)
}

fn flatten_yaml(
    prefix: &str,
    value: &yaml_rust2::Yaml,
    out: &mut Vec<(String, Setting)>,
) -> Result<(), String> {
    use yaml_rust2::Yaml;
    match value {
        Yaml::Hash(map) => {
            for (key, inner) in map {
                let key = match key {
                    Yaml::String(text) => text.clone(),
                    Yaml::Integer(n) => n.to_string(),
                    // PyYAML (YAML 1.1) prints `on`/`off`/`yes`/`no` keys quoted; an unquoted
                    // one reads as a boolean there and a string here.
                    Yaml::Boolean(on) => on.to_string(),
                    other => {
                        return Err(format!(
                            "under `{prefix}`: a key must be a name, not {other:?}"
                        ));
                    }
                };
                // bittensor's config prints its bookkeeping (`__is_set: {}`) in every table.
                if key == "__is_set" {
                    continue;
                }
                flatten_yaml(&dotted(prefix, &key), inner, out)?;
            }
            Ok(())
        }
        other => {
            out.push((prefix.to_string(), yaml_setting(prefix, other)?));
            Ok(())
        }
    }
}

fn yaml_setting(key: &str, value: &yaml_rust2::Yaml) -> Result<Setting, String> {
    use yaml_rust2::Yaml;
    Ok(match value {
        Yaml::Null => Setting::Null,
        Yaml::Boolean(on) => Setting::Bool(*on),
        Yaml::Integer(n) => Setting::Text(n.to_string()),
        Yaml::Real(text) | Yaml::String(text) => Setting::Text(text.clone()),
        Yaml::Array(items) => Setting::List(
            items
                .iter()
                .map(|item| yaml_setting(key, item))
                .collect::<Result<_, _>>()?,
        ),
        // A mapping inside a list: refused by `scalar` when the key is used.
        Yaml::Hash(_) => Setting::List(vec![Setting::Null]),
        Yaml::Alias(_) | Yaml::BadValue => {
            return Err(format!("`{key}`: aliases are not supported"));
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_count_lines_and_columns_from_one() {
        let text = "a = 1\nbb = [\n";
        assert_eq!(position(text, 0), "line 1, column 1");
        assert_eq!(position(text, 8), "line 2, column 3");
        assert_eq!(position(text, 999), "line 3, column 1");
    }

    #[test]
    fn yaml_and_toml_flatten_alike() {
        let mut toml = toml_settings(
            "netuid = 3\n[axon]\nport = 9\n[miner.blacklist]\nwhitelist = [\"a\", \"b\"]\n",
        )
        .expect("toml");
        let mut yaml = yaml_settings(
            "netuid: 3\naxon:\n  port: 9\nminer:\n  blacklist:\n    whitelist: [a, b]\n",
        )
        .expect("yaml");
        toml.sort_by(|a, b| a.0.cmp(&b.0));
        yaml.sort_by(|a, b| a.0.cmp(&b.0));
        assert_eq!(toml, yaml);
        assert_eq!(
            yaml_settings("axon.port: 9\nwandb:\n  'on': false\n  entity: null\n").expect("yaml"),
            vec![
                ("axon.port".to_string(), Setting::Text("9".into())),
                ("wandb.on".to_string(), Setting::Bool(false)),
                ("wandb.entity".to_string(), Setting::Null),
            ]
        );
        assert!(yaml_settings("").expect("empty").is_empty());
    }

    #[test]
    fn syntax_errors_name_the_line() {
        let err = yaml_settings("axon:\n  port: 9\n  ip: [1\n").expect_err("unclosed");
        assert!(err.starts_with("line 4, column 1: "), "{err}");
        let err = toml_settings("[axon]\nport = 9\nip = \n").expect_err("no value");
        assert!(err.starts_with("line 3, column "), "{err}");
        assert!(yaml_settings("- a\n- b\n").is_err());
        assert!(yaml_settings("a: 1\n---\nb: 2\n").is_err());
    }

    #[test]
    fn yaml_11_booleans_turn_switches_on_and_off() {
        assert_eq!(boolish("Yes"), Some(true));
        assert_eq!(boolish("off"), Some(false));
        assert_eq!(boolish("maybe"), None);
    }
}
