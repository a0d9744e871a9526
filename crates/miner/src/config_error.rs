//! The error of an unusable pipeline configuration, apart from `config` so that the
//! settings' own modules (`admission`) can return it without importing `config`.

/// Why a configuration cannot be used. Each message names the flag at fault.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ConfigError {
    /// A flag holds a value the pipeline cannot work with.
    #[error("--{flag}: {reason}")]
    Invalid {
        /// The flag, without its leading dashes (e.g. `miner.max_concurrent`).
        flag: &'static str,
        /// What is wrong with its value.
        reason: String,
    },
    /// The same hotkey is both whitelisted and blacklisted.
    #[error("hotkey {0} is in both --miner.blacklist.whitelist and --miner.blacklist.blacklist")]
    WhitelistedAndBlacklisted(String),
}
