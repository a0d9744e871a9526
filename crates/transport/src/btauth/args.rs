//! The `--btauth.*` flags (and the `[btauth]` table of a config file).

use serde::Deserialize;

use super::verify::{
    BtAuthConfig, DEFAULT_REPLAY_CAPACITY, DEFAULT_REPLAY_CAPACITY_PER_KEY, DEFAULT_REPLAY_MAX_KEYS,
};
use super::{DEFAULT_MAX_AGE_S, DEFAULT_MAX_FUTURE_S};

/// Operator settings of btauth/1 verification. Every key is optional in a config file.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[cfg_attr(feature = "cli", derive(clap::Args))]
#[serde(default, deny_unknown_fields)]
pub struct BtAuthArgs {
    /// How old a request's nonce may be, in seconds.
    #[cfg_attr(feature = "cli", arg(long = "btauth.max_age", default_value_t = DEFAULT_MAX_AGE_S))]
    pub max_age: f64,
    /// How far ahead of this server's clock a request's nonce may be, in seconds.
    #[cfg_attr(feature = "cli", arg(long = "btauth.max_future", default_value_t = DEFAULT_MAX_FUTURE_S))]
    pub max_future: f64,
    /// Also accept requests not bound to a receiver (no `X-Bittensor-Receiver`); a receiver
    /// that is present must still be this server's hotkey.
    #[cfg_attr(
        feature = "cli",
        arg(long = "btauth.allow_any_receiver", default_value_t = false)
    )]
    pub allow_any_receiver: bool,
    /// How many accepted requests of unregistered keys (all together) are remembered to
    /// refuse replays.
    #[cfg_attr(feature = "cli", arg(long = "btauth.replay_capacity", default_value_t = DEFAULT_REPLAY_CAPACITY))]
    pub replay_capacity: usize,
    /// How many accepted requests of each registered or whitelisted key are remembered.
    #[cfg_attr(feature = "cli", arg(
        long = "btauth.replay_capacity_per_key",
        default_value_t = DEFAULT_REPLAY_CAPACITY_PER_KEY
    ))]
    pub replay_capacity_per_key: usize,
    /// How many registered or whitelisted keys get room of their own in the replay store
    /// (more than a subnet has uids); further keys share the unregistered keys' room.
    #[cfg_attr(feature = "cli", arg(long = "btauth.replay_max_keys", default_value_t = DEFAULT_REPLAY_MAX_KEYS))]
    pub replay_max_keys: usize,
}

impl Default for BtAuthArgs {
    fn default() -> Self {
        BtAuthArgs {
            max_age: DEFAULT_MAX_AGE_S,
            max_future: DEFAULT_MAX_FUTURE_S,
            allow_any_receiver: false,
            replay_capacity: DEFAULT_REPLAY_CAPACITY,
            replay_capacity_per_key: DEFAULT_REPLAY_CAPACITY_PER_KEY,
            replay_max_keys: DEFAULT_REPLAY_MAX_KEYS,
        }
    }
}

impl BtAuthArgs {
    /// The verifier configuration for a server whose hotkey is `hotkey` (checked when the
    /// verifier is built).
    pub fn config(&self, hotkey: impl Into<String>) -> BtAuthConfig {
        BtAuthConfig {
            hotkey: hotkey.into(),
            require_receiver: !self.allow_any_receiver,
            max_age_s: self.max_age,
            max_future_s: self.max_future,
            replay_capacity: self.replay_capacity,
            replay_capacity_per_key: self.replay_capacity_per_key,
            replay_max_keys: self.replay_max_keys,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_file_keys_are_optional_and_checked() {
        let args: BtAuthArgs = serde_json::from_str(r#"{"max_age": 5.0}"#).expect("partial table");
        assert_eq!(args.max_age, 5.0);
        assert_eq!(args.max_future, DEFAULT_MAX_FUTURE_S);
        assert!(serde_json::from_str::<BtAuthArgs>(r#"{"max_agee": 5.0}"#).is_err());
    }
}

#[cfg(all(test, feature = "cli"))]
mod cli_tests {
    use super::*;
    use clap::Parser;

    #[derive(Debug, Parser)]
    struct Cli {
        #[command(flatten)]
        btauth: BtAuthArgs,
    }

    #[test]
    fn flag_defaults_match_bittensor_and_the_serde_defaults() {
        let cli = Cli::try_parse_from(["miner"]).expect("no flags");
        assert_eq!(cli.btauth, BtAuthArgs::default());
        let config = cli.btauth.config("5H");
        assert!(config.require_receiver);
        assert_eq!((config.max_age_s, config.max_future_s), (10.0, 2.0));
        assert_eq!(config.replay_capacity, DEFAULT_REPLAY_CAPACITY);
    }

    #[test]
    fn flags_set_every_field() {
        let cli = Cli::try_parse_from([
            "miner",
            "--btauth.max_age",
            "30",
            "--btauth.max_future",
            "0.5",
            "--btauth.allow_any_receiver",
            "--btauth.replay_capacity",
            "7",
        ])
        .expect("flags");
        let config = cli.btauth.config("5H");
        assert!(!config.require_receiver);
        assert_eq!((config.max_age_s, config.max_future_s), (30.0, 0.5));
        assert_eq!(config.replay_capacity, 7);
    }
}
