//! The pipeline's settings, with the Python miner's flag names and defaults.
//!
//! [`MinerConfig`] is both a `clap` argument group (feature `cli`; flags such as
//! `--miner.blacklist.whitelist`) and the `[miner]` table of a TOML config file:
//!
//! ```toml
//! [miner]
//! max_concurrent = 8
//! max_queue = 64
//!
//! [miner.blacklist]
//! whitelist = ["5F3sa2TJAWMqDhXG6jhV4N8ko9SxwGy8TpaNS1repo5EYjQX"]
//! force_validator_permit = true
//! minimum_stake_requirement = 1000.0
//!
//! [miner.priority]
//! time_stake_multiplicate = 10
//! ```
//!
//! Every key is optional; a missing key takes the flag's default. Keys this crate does not
//! know are ignored, so binaries may keep their own `miner.*` settings in the same table.

use std::collections::HashSet;

use serde::Deserialize;

pub use crate::admission::AdmissionConfig;
pub use crate::config_error::ConfigError;

/// All settings of the pipeline: worker pool, queue, blacklist and priority.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[cfg_attr(feature = "cli", derive(clap::Args))]
#[serde(default)]
pub struct MinerConfig {
    /// Number of backend calls run at the same time; further requests wait in the priority
    /// queue.
    #[cfg_attr(feature = "cli", arg(long = "miner.max_concurrent", default_value_t = DEFAULT_MAX_CONCURRENT))]
    pub max_concurrent: usize,

    /// Number of requests that may wait for a worker; when full, the lowest-priority request
    /// is refused as overloaded. 0 means no waiting at all.
    #[cfg_attr(feature = "cli", arg(long = "miner.max_queue", default_value_t = DEFAULT_MAX_QUEUE))]
    pub max_queue: usize,

    /// Who may call.
    #[cfg_attr(feature = "cli", command(flatten))]
    pub blacklist: BlacklistConfig,

    /// In which order waiting requests are served.
    #[cfg_attr(feature = "cli", command(flatten))]
    pub priority: PriorityConfig,

    /// How the queue admits requests under load: deadlines, order among equals.
    #[cfg_attr(feature = "cli", command(flatten))]
    pub admission: AdmissionConfig,

    /// A request still being answered this many milliseconds before its deadline is
    /// answered at once with the text generated so far (the rest is dropped), instead of
    /// timing out: its caller's clock started before the request arrived, and the answer
    /// still has to travel back. Applies to backends that stream as they generate (the
    /// BTLM miner); one that has produced nothing yet by then answers with its first text,
    /// or times out at the deadline. 0 turns it off.
    #[cfg_attr(feature = "cli", arg(
        long = "miner.answer_margin_ms",
        default_value_t = DEFAULT_ANSWER_MARGIN_MS
    ))]
    pub answer_margin_ms: u64,
}

/// Default for `--miner.max_concurrent`.
pub const DEFAULT_MAX_CONCURRENT: usize = 8;
/// Default for `--miner.max_queue`.
pub const DEFAULT_MAX_QUEUE: usize = 64;
/// Default for `--miner.answer_margin_ms`: a round trip across continents, with room.
pub const DEFAULT_ANSWER_MARGIN_MS: u64 = 500;

impl Default for MinerConfig {
    fn default() -> Self {
        MinerConfig {
            max_concurrent: DEFAULT_MAX_CONCURRENT,
            max_queue: DEFAULT_MAX_QUEUE,
            blacklist: BlacklistConfig::default(),
            priority: PriorityConfig::default(),
            admission: AdmissionConfig::default(),
            answer_margin_ms: DEFAULT_ANSWER_MARGIN_MS,
        }
    }
}

/// The blacklist's settings (`--miner.blacklist.*`).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[cfg_attr(feature = "cli", derive(clap::Args))]
#[serde(default)]
pub struct BlacklistConfig {
    /// Hotkeys always allowed: they skip every other blacklist check (the prompt cache, which
    /// is not part of the Python blacklist, still applies). Space- or comma-separated,
    /// repeatable.
    #[cfg_attr(feature = "cli", arg(
        long = "miner.blacklist.whitelist",
        num_args = 0..,
        value_delimiter = ',',
        action = clap::ArgAction::Append
    ))]
    pub whitelist: Vec<String>,

    /// Hotkeys always refused. Space- or comma-separated, repeatable.
    #[cfg_attr(feature = "cli", arg(
        long = "miner.blacklist.blacklist",
        num_args = 0..,
        value_delimiter = ',',
        action = clap::ArgAction::Append
    ))]
    pub blacklist: Vec<String>,

    /// Only serve hotkeys that hold a validator permit.
    #[cfg_attr(feature = "cli", arg(long = "miner.blacklist.force_validator_permit"))]
    pub force_validator_permit: bool,

    /// Serve hotkeys that are not registered on the subnet (a security risk).
    #[cfg_attr(feature = "cli", arg(long = "miner.blacklist.allow_non_registered"))]
    pub allow_non_registered: bool,

    /// Minimum stake a caller must hold, in α of the subnet: its stake weight as bittensor
    /// 10's `metagraph.S` reports it (alpha staked to the hotkey, also through parent/child
    /// keys, plus the chain's TaoWeight × its root τ); unregistered callers hold 0. See
    /// docs/chain.md.
    #[cfg_attr(
        feature = "cli",
        arg(
            long = "miner.blacklist.minimum_stake_requirement",
            default_value_t = 0.0
        )
    )]
    pub minimum_stake_requirement: f64,

    /// Refuse a prompt whose messages were already seen within
    /// `--miner.blacklist.prompt_cache_block_span` blocks.
    #[cfg_attr(feature = "cli", arg(long = "miner.blacklist.use_prompt_cache"))]
    pub use_prompt_cache: bool,

    /// How many blocks a prompt stays in the prompt cache.
    #[cfg_attr(feature = "cli", arg(
        long = "miner.blacklist.prompt_cache_block_span",
        default_value_t = DEFAULT_PROMPT_CACHE_BLOCK_SPAN
    ))]
    pub prompt_cache_block_span: u64,

    /// Most prompts the cache remembers; the oldest is forgotten first.
    #[cfg_attr(feature = "cli", arg(
        long = "miner.blacklist.prompt_cache_size",
        default_value_t = DEFAULT_PROMPT_CACHE_SIZE
    ))]
    pub prompt_cache_size: usize,

    /// Window, in minutes, in which a hotkey may make at most
    /// `--miner.priority.len_request_timestamps` accepted requests. 0 disables the limit.
    #[cfg_attr(feature = "cli", arg(
        long = "miner.blacklist.min_request_period",
        default_value_t = DEFAULT_MIN_REQUEST_PERIOD
    ))]
    pub min_request_period: u64,

    /// Most distinct hotkeys whose request history is kept; the least recently seen is
    /// forgotten first.
    #[cfg_attr(feature = "cli", arg(
        long = "miner.blacklist.max_tracked_hotkeys",
        default_value_t = DEFAULT_MAX_TRACKED_HOTKEYS
    ))]
    pub max_tracked_hotkeys: usize,
}

/// Default for `--miner.blacklist.prompt_cache_block_span` (Python: 7200, about a day).
pub const DEFAULT_PROMPT_CACHE_BLOCK_SPAN: u64 = 7200;
/// Default for `--miner.blacklist.prompt_cache_size`.
pub const DEFAULT_PROMPT_CACHE_SIZE: usize = 65_536;
/// Default for `--miner.blacklist.min_request_period`, in minutes (Python: 5).
pub const DEFAULT_MIN_REQUEST_PERIOD: u64 = 5;
/// Default for `--miner.blacklist.max_tracked_hotkeys`.
pub const DEFAULT_MAX_TRACKED_HOTKEYS: usize = 4096;

impl Default for BlacklistConfig {
    fn default() -> Self {
        BlacklistConfig {
            whitelist: Vec::new(),
            blacklist: Vec::new(),
            force_validator_permit: false,
            allow_non_registered: false,
            minimum_stake_requirement: 0.0,
            use_prompt_cache: false,
            prompt_cache_block_span: DEFAULT_PROMPT_CACHE_BLOCK_SPAN,
            prompt_cache_size: DEFAULT_PROMPT_CACHE_SIZE,
            min_request_period: DEFAULT_MIN_REQUEST_PERIOD,
            max_tracked_hotkeys: DEFAULT_MAX_TRACKED_HOTKEYS,
        }
    }
}

/// The priority's settings (`--miner.priority.*`).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[cfg_attr(feature = "cli", derive(clap::Args))]
#[serde(default)]
pub struct PriorityConfig {
    /// Priority of unregistered callers and of a hotkey's first request.
    #[cfg_attr(
        feature = "cli",
        arg(long = "miner.priority.default", default_value_t = 0.0)
    )]
    pub default: f64,

    /// Minutes of quiet after which a caller's stake counts twice as much (the period is
    /// measured back to its 10th most recent request).
    #[cfg_attr(feature = "cli", arg(
        long = "miner.priority.time_stake_multiplicate",
        default_value_t = DEFAULT_TIME_STAKE_MULTIPLICATE
    ))]
    pub time_stake_multiplicate: u64,

    /// Request timestamps kept per hotkey; also the number of requests allowed per
    /// `--miner.blacklist.min_request_period`.
    #[cfg_attr(feature = "cli", arg(
        long = "miner.priority.len_request_timestamps",
        default_value_t = DEFAULT_LEN_REQUEST_TIMESTAMPS
    ))]
    pub len_request_timestamps: usize,

    /// Minutes after its last request when a hotkey's history is forgotten (its next
    /// request then counts as its first).
    #[cfg_attr(feature = "cli", arg(
        long = "miner.priority.history_retention",
        default_value_t = DEFAULT_HISTORY_RETENTION
    ))]
    pub history_retention: u64,

    /// Priority preemption: when every worker slot is busy, a waiting request whose
    /// priority exceeds that of the lowest-priority running request by more than
    /// `--miner.priority.preempt_margin` takes its slot; the preempted caller is answered
    /// 503 (a higher-priority request took its slot), or, when answers are cut short
    /// (--miner.answer_margin_ms) and it has text already, that text.
    /// `--miner.priority.preempt false` turns it off.
    #[cfg_attr(feature = "cli", arg(
        long = "miner.priority.preempt",
        default_value_t = true,
        num_args = 0..=1,
        default_missing_value = "true",
        action = clap::ArgAction::Set
    ))]
    pub preempt: bool,

    /// How much higher (in priority units, α for a busy caller) a waiting request's priority
    /// must be than a running request's for it to preempt that one.
    #[cfg_attr(
        feature = "cli",
        arg(long = "miner.priority.preempt_margin", default_value_t = 0.0)
    )]
    pub preempt_margin: f64,
}

/// Default for `--miner.priority.time_stake_multiplicate`, in minutes (Python: 10).
pub const DEFAULT_TIME_STAKE_MULTIPLICATE: u64 = 10;
/// Default for `--miner.priority.len_request_timestamps` (Python: 50).
pub const DEFAULT_LEN_REQUEST_TIMESTAMPS: usize = 50;
/// Default for `--miner.priority.history_retention`, in minutes (one day).
pub const DEFAULT_HISTORY_RETENTION: u64 = 24 * 60;

impl Default for PriorityConfig {
    fn default() -> Self {
        PriorityConfig {
            default: 0.0,
            time_stake_multiplicate: DEFAULT_TIME_STAKE_MULTIPLICATE,
            len_request_timestamps: DEFAULT_LEN_REQUEST_TIMESTAMPS,
            history_retention: DEFAULT_HISTORY_RETENTION,
            preempt: true,
            preempt_margin: 0.0,
        }
    }
}

fn invalid(flag: &'static str, reason: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        flag,
        reason: reason.into(),
    }
}

impl MinerConfig {
    /// Checks the settings make sense together; the pipeline refuses to start otherwise.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.max_concurrent == 0 {
            return Err(invalid(
                "miner.max_concurrent",
                "at least one worker is needed",
            ));
        }
        let b = &self.blacklist;
        for (flag, keys) in [
            ("miner.blacklist.whitelist", &b.whitelist),
            ("miner.blacklist.blacklist", &b.blacklist),
        ] {
            if keys.iter().any(|k| k.trim().is_empty()) {
                return Err(invalid(flag, "contains an empty hotkey"));
            }
        }
        let whitelist: HashSet<&str> = b.whitelist.iter().map(String::as_str).collect();
        if let Some(both) = b.blacklist.iter().find(|k| whitelist.contains(k.as_str())) {
            return Err(ConfigError::WhitelistedAndBlacklisted(both.clone()));
        }
        let stake = b.minimum_stake_requirement;
        if !stake.is_finite() || stake < 0.0 {
            return Err(invalid(
                "miner.blacklist.minimum_stake_requirement",
                format!("must be a finite number of α ≥ 0, got {stake}"),
            ));
        }
        if b.use_prompt_cache && b.prompt_cache_size == 0 {
            return Err(invalid(
                "miner.blacklist.prompt_cache_size",
                "must be at least 1 when --miner.blacklist.use_prompt_cache is on",
            ));
        }
        if b.max_tracked_hotkeys == 0 {
            return Err(invalid(
                "miner.blacklist.max_tracked_hotkeys",
                "must be at least 1",
            ));
        }
        let p = &self.priority;
        if !p.default.is_finite() {
            return Err(invalid(
                "miner.priority.default",
                format!("must be a finite number, got {}", p.default),
            ));
        }
        if p.time_stake_multiplicate == 0 {
            return Err(invalid(
                "miner.priority.time_stake_multiplicate",
                "must be at least 1 minute",
            ));
        }
        if p.len_request_timestamps == 0 {
            return Err(invalid(
                "miner.priority.len_request_timestamps",
                "must be at least 1",
            ));
        }
        if !p.preempt_margin.is_finite() || p.preempt_margin < 0.0 {
            return Err(invalid(
                "miner.priority.preempt_margin",
                format!("must be a finite number ≥ 0, got {}", p.preempt_margin),
            ));
        }
        if p.history_retention < b.min_request_period {
            return Err(invalid(
                "miner.priority.history_retention",
                format!(
                    "{} minutes is shorter than --miner.blacklist.min_request_period ({} minutes): \
                     the rate limit would forget requests inside its window",
                    p.history_retention, b.min_request_period
                ),
            ));
        }
        self.admission.validate()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_file_tables_fill_nested_settings_and_keep_defaults() {
        let c: MinerConfig = toml::from_str(
            r#"
            max_concurrent = 3
            name = "binaries may keep their own keys here"

            [blacklist]
            whitelist = ["w"]
            minimum_stake_requirement = 10.0

            [priority]
            default = 2.0
            "#,
        )
        .expect("valid toml");
        assert_eq!(c.max_concurrent, 3);
        assert_eq!(c.max_queue, DEFAULT_MAX_QUEUE);
        assert_eq!(c.blacklist.whitelist, ["w"]);
        assert_eq!(c.blacklist.minimum_stake_requirement, 10.0);
        assert_eq!(c.blacklist.prompt_cache_block_span, 7200);
        assert_eq!(c.priority.default, 2.0);
        assert_eq!(c.priority.len_request_timestamps, 50);
        assert_eq!(
            toml::from_str::<MinerConfig>("").expect("empty"),
            MinerConfig::default()
        );
    }

    fn flag_of(err: ConfigError) -> &'static str {
        match err {
            ConfigError::Invalid { flag, .. } => flag,
            other => panic!("unexpected {other}"),
        }
    }

    #[test]
    fn nonsense_is_refused_naming_the_flag() {
        let check = |edit: fn(&mut MinerConfig)| {
            let mut c = MinerConfig::default();
            edit(&mut c);
            flag_of(c.validate().unwrap_err())
        };
        assert_eq!(check(|c| c.max_concurrent = 0), "miner.max_concurrent");
        assert_eq!(
            check(|c| c.blacklist.minimum_stake_requirement = -1.0),
            "miner.blacklist.minimum_stake_requirement"
        );
        assert_eq!(
            check(|c| c.blacklist.minimum_stake_requirement = f64::NAN),
            "miner.blacklist.minimum_stake_requirement"
        );
        assert_eq!(
            check(|c| {
                c.blacklist.use_prompt_cache = true;
                c.blacklist.prompt_cache_size = 0;
            }),
            "miner.blacklist.prompt_cache_size"
        );
        assert_eq!(
            check(|c| c.blacklist.max_tracked_hotkeys = 0),
            "miner.blacklist.max_tracked_hotkeys"
        );
        assert_eq!(
            check(|c| c.blacklist.whitelist = vec![" ".into()]),
            "miner.blacklist.whitelist"
        );
        assert_eq!(
            check(|c| c.priority.default = f64::INFINITY),
            "miner.priority.default"
        );
        assert_eq!(
            check(|c| c.priority.time_stake_multiplicate = 0),
            "miner.priority.time_stake_multiplicate"
        );
        assert_eq!(
            check(|c| c.priority.len_request_timestamps = 0),
            "miner.priority.len_request_timestamps"
        );
        assert_eq!(
            check(|c| c.priority.history_retention = 1),
            "miner.priority.history_retention"
        );
        let mut c = MinerConfig::default();
        c.blacklist.whitelist = vec!["k".into()];
        c.blacklist.blacklist = vec!["k".into()];
        assert_eq!(
            c.validate().unwrap_err(),
            ConfigError::WhitelistedAndBlacklisted("k".into())
        );
        // A queue of zero is a valid choice: no waiting at all.
        let c = MinerConfig {
            max_queue: 0,
            ..MinerConfig::default()
        };
        c.validate().expect("valid");
    }
}

#[cfg(all(test, feature = "cli"))]
mod cli_tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        miner: MinerConfig,
    }

    fn parse(args: &[&str]) -> MinerConfig {
        let argv = std::iter::once("miner").chain(args.iter().copied());
        Cli::try_parse_from(argv).expect("valid flags").miner
    }

    #[test]
    fn flag_defaults_equal_struct_defaults_and_python_defaults() {
        let parsed = parse(&[]);
        assert_eq!(parsed, MinerConfig::default());
        assert_eq!(parsed.blacklist.prompt_cache_block_span, 7200);
        assert_eq!(parsed.blacklist.min_request_period, 5);
        assert_eq!(parsed.priority.time_stake_multiplicate, 10);
        assert_eq!(parsed.priority.len_request_timestamps, 50);
        assert_eq!(parsed.priority.default, 0.0);
        assert!(!parsed.blacklist.force_validator_permit);
        assert!(!parsed.blacklist.allow_non_registered);
        assert!(!parsed.blacklist.use_prompt_cache);
        assert!(!parsed.admission.ignore_deadlines && !parsed.admission.fifo);
        assert_eq!(parsed.answer_margin_ms, 500);
        parsed.validate().expect("defaults are valid");
    }

    #[test]
    fn python_flag_names_parse() {
        let c = parse(&[
            "--miner.blacklist.whitelist",
            "a",
            "b",
            "--miner.blacklist.blacklist",
            "c,d",
            "--miner.blacklist.blacklist",
            "e",
            "--miner.blacklist.force_validator_permit",
            "--miner.blacklist.allow_non_registered",
            "--miner.blacklist.minimum_stake_requirement",
            "12.5",
            "--miner.blacklist.use_prompt_cache",
            "--miner.blacklist.prompt_cache_block_span",
            "10",
            "--miner.blacklist.prompt_cache_size",
            "3",
            "--miner.blacklist.min_request_period",
            "2",
            "--miner.blacklist.max_tracked_hotkeys",
            "7",
            "--miner.priority.default",
            "1.5",
            "--miner.priority.time_stake_multiplicate",
            "3",
            "--miner.priority.len_request_timestamps",
            "20",
            "--miner.priority.history_retention",
            "60",
            "--miner.max_concurrent",
            "2",
            "--miner.max_queue",
            "4",
            "--miner.admission.ignore_deadlines",
            "--miner.admission.margin",
            "1.5",
            "--miner.admission.service_quantile",
            "0.5",
            "--miner.admission.service_samples",
            "9",
            "--miner.admission.lifo_after_ms",
            "200",
            "--miner.admission.fifo",
            "--miner.answer_margin_ms",
            "250",
        ]);
        assert_eq!(c.answer_margin_ms, 250);
        assert_eq!(c.blacklist.whitelist, ["a", "b"]);
        assert_eq!(c.blacklist.blacklist, ["c", "d", "e"]);
        assert!(c.blacklist.force_validator_permit);
        assert!(c.blacklist.allow_non_registered);
        assert_eq!(c.blacklist.minimum_stake_requirement, 12.5);
        assert!(c.blacklist.use_prompt_cache);
        assert_eq!(c.blacklist.prompt_cache_block_span, 10);
        assert_eq!(c.blacklist.prompt_cache_size, 3);
        assert_eq!(c.blacklist.min_request_period, 2);
        assert_eq!(c.blacklist.max_tracked_hotkeys, 7);
        assert_eq!(c.priority.default, 1.5);
        assert_eq!(c.priority.time_stake_multiplicate, 3);
        assert_eq!(c.priority.len_request_timestamps, 20);
        assert_eq!(c.priority.history_retention, 60);
        assert_eq!((c.max_concurrent, c.max_queue), (2, 4));
        let a = &c.admission;
        assert!(a.ignore_deadlines && a.fifo);
        assert_eq!((a.margin, a.service_quantile), (1.5, 0.5));
        assert_eq!((a.service_samples, a.lifo_after_ms), (9, 200));
        c.validate().expect("valid");
    }

    #[test]
    fn preemption_flags_and_keys() {
        let on = parse(&[]);
        assert!(on.priority.preempt, "on by default");
        assert_eq!(on.priority.preempt_margin, 0.0);
        let off = parse(&["--miner.priority.preempt", "false"]);
        assert!(!off.priority.preempt);
        let bare = parse(&[
            "--miner.priority.preempt",
            "--miner.priority.preempt_margin",
            "50",
        ]);
        assert!(bare.priority.preempt);
        assert_eq!(bare.priority.preempt_margin, 50.0);
        let file: MinerConfig =
            toml::from_str("[priority]\npreempt = false\npreempt_margin = 2.5\n").expect("toml");
        assert!(!file.priority.preempt);
        assert_eq!(file.priority.preempt_margin, 2.5);
        for margin in [-1.0, f64::NAN] {
            let mut c = MinerConfig::default();
            c.priority.preempt_margin = margin;
            assert!(matches!(
                c.validate(),
                Err(ConfigError::Invalid {
                    flag: "miner.priority.preempt_margin",
                    ..
                })
            ));
        }
    }
}
