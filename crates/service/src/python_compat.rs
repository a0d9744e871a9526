//! The Python miners' flags that have no meaning here: accepted, and named in one warning.
//!
//! The text-prompting v2.1.6 miners (and bittensor 6.1's config) accept flags this project has
//! no use for: Weights & Biases, the validator's `--neuron.*`, `--strict`, ... Operators'
//! scripts carry them, so the miners accept them too (on the command line and as config-file
//! keys) and say once, at start-up, that they are ignored and why. Flags that do have a
//! meaning here (`--miner.no_start_axon`, `--miner.mock_subtensor`, `--logging.record_log`,
//! ...) are ordinary flags of [`crate::CommonArgs`]. A flag that is neither ours nor the
//! Python miners' stays an error.
//!
//! `tests/fixtures/python-v2.1.6-flags.tsv` lists every flag of the Python miners with its
//! source and what it does here; the tests hold this table and the flags to it.

use std::ffi::OsString;

/// How many values a Python flag takes on the command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arity {
    /// An on/off flag (`action="store_true"`): no value.
    Switch,
    /// One value.
    Value,
    /// Any number of values (`nargs="*"`): the following tokens up to the next `-`-prefixed one.
    List,
    /// A namespace whose flags are not all known (`--wandb.*`): the next token is its value
    /// unless it starts with `--`.
    Unknown,
}

/// A flag of the Python miners accepted here without effect.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IgnoredFlag {
    /// The flag without its dashes (`miner.root`), or a namespace ending in `.` (`wandb.`)
    /// covering every flag under it.
    pub name: &'static str,
    /// How many values it takes.
    pub arity: Arity,
    /// The Python default as bittensor's config prints it; a config-file value equal to it
    /// (or null, false, empty) is skipped without a warning.
    pub python_default: Option<&'static str>,
    /// Why it has no effect here.
    pub reason: &'static str,
}

impl IgnoredFlag {
    /// Whether `flag` (without dashes) is this flag or under this namespace.
    pub fn covers(&self, flag: &str) -> bool {
        match self.name.strip_suffix('.') {
            Some(_) => flag.starts_with(self.name) && flag.len() > self.name.len(),
            None => flag == self.name,
        }
    }
}

const WANDB: &str = "Weights & Biases is not used here; the metrics are on /metrics (Prometheus)";
const TRIAL_DIR: &str = "the Python miner's trial folder; with --logging.record_log the log file goes under --logging.logging_dir";

/// The ignored flags every miner binary accepts.
pub const COMMON_IGNORED: &[IgnoredFlag] = &[
    IgnoredFlag {
        name: "miner.root",
        arity: Arity::Value,
        python_default: Some("~/.bittensor/miners/"),
        reason: TRIAL_DIR,
    },
    IgnoredFlag {
        name: "miner.name",
        arity: Arity::Value,
        python_default: Some("Bittensor Miner"),
        reason: TRIAL_DIR,
    },
    IgnoredFlag {
        name: "wandb.on",
        arity: Arity::Switch,
        python_default: None,
        reason: WANDB,
    },
    IgnoredFlag {
        name: "wandb.off",
        arity: Arity::Switch,
        python_default: None,
        reason: WANDB,
    },
    IgnoredFlag {
        name: "wandb.offline",
        arity: Arity::Switch,
        python_default: None,
        reason: WANDB,
    },
    IgnoredFlag {
        name: "wandb.",
        arity: Arity::Unknown,
        python_default: None,
        reason: WANDB,
    },
    IgnoredFlag {
        name: "neuron.",
        arity: Arity::Unknown,
        python_default: None,
        reason: "validator settings; this is a miner",
    },
    IgnoredFlag {
        name: "strict",
        arity: Arity::Switch,
        python_default: None,
        reason: "unknown flags are always refused here",
    },
    IgnoredFlag {
        name: "no_version_checking",
        arity: Arity::Switch,
        python_default: None,
        reason: "no version check is made",
    },
    IgnoredFlag {
        name: "no_prompt",
        arity: Arity::Switch,
        python_default: None,
        reason: "the miners never prompt",
    },
];

/// Config-file keys that bittensor's config prints but that are not settings: folders the
/// Python miner derives from others. Skipped silently.
pub const DERIVED_KEYS: &[&str] = &["full_path", "miner.full_path"];

/// The first entry of `tables` covering `flag`.
pub fn find<'a>(tables: &[&'a [IgnoredFlag]], flag: &str) -> Option<&'a IgnoredFlag> {
    tables
        .iter()
        .flat_map(|table| table.iter())
        .find(|entry| entry.covers(flag))
}

/// One use of an ignored flag, for the start-up warning.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IgnoredUse {
    /// The flag as given, without dashes (`wandb.project_name`).
    pub flag: String,
    /// Why it is ignored.
    pub reason: &'static str,
}

/// An ignored flag given without the value it needs.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("--{0} needs a value (it is accepted for the Python miners and ignored)")]
pub struct MissingValue(pub String);

/// Splits `argv` (program name first) into the arguments for clap and the uses of ignored
/// flags (with their values), in order. Stops looking after a bare `--`.
pub fn strip_ignored(
    argv: Vec<OsString>,
    tables: &[&[IgnoredFlag]],
) -> Result<(Vec<OsString>, Vec<IgnoredUse>), MissingValue> {
    let mut kept = Vec::with_capacity(argv.len());
    let mut ignored = Vec::new();
    let mut tokens = argv.into_iter().peekable();
    kept.extend(tokens.next());
    while let Some(token) = tokens.next() {
        if token == "--" {
            kept.push(token);
            kept.extend(tokens);
            break;
        }
        let Some(flag) = token.to_str().and_then(|t| t.strip_prefix("--")) else {
            kept.push(token);
            continue;
        };
        let (name, inline_value) = match flag.split_once('=') {
            Some((name, _)) => (name, true),
            None => (flag, false),
        };
        let Some(entry) = find(tables, name) else {
            kept.push(token);
            continue;
        };
        let is_flag = |next: &OsString| next.to_str().is_some_and(|t| t.starts_with("--"));
        let is_option = |next: &OsString| next.to_str().is_some_and(|t| t.starts_with('-'));
        if !inline_value {
            match entry.arity {
                Arity::Switch => {}
                Arity::Value => {
                    if tokens.next_if(|next| !is_flag(next)).is_none() {
                        return Err(MissingValue(name.to_string()));
                    }
                }
                Arity::List => while tokens.next_if(|next| !is_option(next)).is_some() {},
                Arity::Unknown => {
                    tokens.next_if(|next| !is_flag(next));
                }
            }
        }
        ignored.push(IgnoredUse {
            flag: name.to_string(),
            reason: entry.reason,
        });
    }
    Ok((kept, ignored))
}

/// Logs one warning per reason, naming the flags ignored for it (each once), in the order
/// they were first given.
pub fn warn_ignored(uses: &[IgnoredUse]) {
    for line in warning_lines(uses) {
        tracing::warn!("{line}");
    }
}

/// The warning lines of [`warn_ignored`].
pub fn warning_lines(uses: &[IgnoredUse]) -> Vec<String> {
    let mut groups: Vec<(&'static str, Vec<&str>)> = Vec::new();
    for item in uses {
        let group = match groups.iter_mut().find(|(reason, _)| *reason == item.reason) {
            Some(group) => group,
            None => {
                groups.push((item.reason, Vec::new()));
                groups.last_mut().expect("just pushed")
            }
        };
        if !group.1.contains(&item.flag.as_str()) {
            group.1.push(&item.flag);
        }
    }
    groups
        .into_iter()
        .map(|(reason, flags)| {
            let flags: Vec<String> = flags.iter().map(|f| format!("--{f}")).collect();
            format!("ignored {}: {reason}", flags.join(", "))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strip(args: &[&str]) -> Result<(Vec<String>, Vec<String>), MissingValue> {
        let argv = std::iter::once("miner")
            .chain(args.iter().copied())
            .map(OsString::from)
            .collect();
        let (kept, ignored) = strip_ignored(argv, &[COMMON_IGNORED])?;
        Ok((
            kept.into_iter()
                .skip(1)
                .map(|t| t.into_string().expect("utf-8"))
                .collect(),
            ignored.into_iter().map(|u| u.flag).collect(),
        ))
    }

    #[test]
    fn ignored_flags_and_their_values_are_taken_out() {
        let (kept, ignored) = strip(&[
            "--wandb.on",
            "--axon.port",
            "9",
            "--miner.name",
            "my miner",
            "--wandb.project_name",
            "proj",
            "--neuron.device=cuda",
            "--strict",
            "--wandb.tags",
            "--netuid",
            "1",
        ])
        .expect("strip");
        assert_eq!(kept, ["--axon.port", "9", "--netuid", "1"]);
        assert_eq!(
            ignored,
            [
                "wandb.on",
                "miner.name",
                "wandb.project_name",
                "neuron.device",
                "strict",
                "wandb.tags"
            ]
        );
    }

    #[test]
    fn ours_and_unknown_flags_are_left_to_clap() {
        let (kept, ignored) = strip(&[
            "--miner.blocks_per_epoch",
            "5",
            "--wandb",
            "--vicuna.device",
            "cuda",
        ])
        .expect("strip");
        assert_eq!(
            kept,
            [
                "--miner.blocks_per_epoch",
                "5",
                "--wandb",
                "--vicuna.device",
                "cuda"
            ]
        );
        assert!(ignored.is_empty());
        let (kept, ignored) = strip(&["--", "--strict"]).expect("strip");
        assert_eq!(kept, ["--", "--strict"]);
        assert!(ignored.is_empty());
    }

    #[test]
    fn a_missing_value_is_an_error() {
        assert_eq!(
            strip(&["--miner.root"]).expect_err("no value"),
            MissingValue("miner.root".into())
        );
        assert!(strip(&["--miner.root", "--netuid", "1"]).is_err());
    }

    #[test]
    fn one_warning_per_reason() {
        let uses = [
            ("wandb.on", WANDB),
            ("strict", "unknown flags are always refused here"),
            ("wandb.entity", WANDB),
            ("wandb.on", WANDB),
        ]
        .map(|(flag, reason)| IgnoredUse {
            flag: flag.into(),
            reason,
        });
        assert_eq!(
            warning_lines(&uses),
            [
                format!("ignored --wandb.on, --wandb.entity: {WANDB}"),
                "ignored --strict: unknown flags are always refused here".to_string(),
            ]
        );
    }

    #[test]
    fn namespaces_cover_their_flags_only() {
        let wandb = find(&[COMMON_IGNORED], "wandb.anything").expect("namespace");
        assert_eq!(wandb.reason, WANDB);
        assert!(find(&[COMMON_IGNORED], "wandb.").is_none());
        assert!(find(&[COMMON_IGNORED], "wandb").is_none());
        assert!(find(&[COMMON_IGNORED], "miner.rootx").is_none());
    }
}
