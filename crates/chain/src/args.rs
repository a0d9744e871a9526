//! Command-line and configuration-file settings of the chain client.

use std::time::Duration;

use serde::Deserialize;

/// The finney (main network) endpoint.
pub const FINNEY_ENDPOINT: &str = "wss://entrypoint-finney.opentensor.ai:443";
/// The test network endpoint.
pub const TEST_ENDPOINT: &str = "wss://test.finney.opentensor.ai:443";
/// A subtensor node on this machine.
pub const LOCAL_ENDPOINT: &str = "ws://127.0.0.1:9944";

/// Seconds per block on subtensor.
pub const BLOCK_TIME: Duration = Duration::from_secs(12);

/// The archive network endpoint (a node keeping every block's state).
pub const ARCHIVE_ENDPOINT: &str = "wss://archive.chain.opentensor.ai:443";

/// A `--subtensor.network` value, as bittensor accepts it: a network name or a node's
/// `ws://`/`wss://` URL.
#[derive(Debug, Clone, PartialEq, Eq, Default, Deserialize)]
#[serde(try_from = "String")]
pub enum Network {
    /// The main network.
    #[default]
    Finney,
    /// The test network.
    Test,
    /// A node on this machine (`ws://127.0.0.1:9944`).
    Local,
    /// The archive nodes of the main network.
    Archive,
    /// Any node, by its `ws://` or `wss://` URL.
    Url(String),
}

/// A `--subtensor.network` value that is neither a network name nor a WebSocket URL.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown network {0:?}: expected finney, test, local, archive, or a ws:// or wss:// URL")]
pub struct UnknownNetwork(pub String);

impl Network {
    /// The WebSocket endpoint of this network.
    pub fn endpoint(&self) -> &str {
        match self {
            Network::Finney => FINNEY_ENDPOINT,
            Network::Test => TEST_ENDPOINT,
            Network::Local => LOCAL_ENDPOINT,
            Network::Archive => ARCHIVE_ENDPOINT,
            Network::Url(url) => url,
        }
    }
}

impl std::str::FromStr for Network {
    type Err = UnknownNetwork;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let text = text.trim();
        Ok(match text.to_ascii_lowercase().as_str() {
            "finney" => Network::Finney,
            "test" => Network::Test,
            "local" => Network::Local,
            "archive" => Network::Archive,
            lower
                if lower
                    .strip_prefix("ws://")
                    .or_else(|| lower.strip_prefix("wss://"))
                    .is_some_and(|host| !host.is_empty()) =>
            {
                Network::Url(text.to_string())
            }
            _ => return Err(UnknownNetwork(text.to_string())),
        })
    }
}

impl TryFrom<String> for Network {
    type Error = UnknownNetwork;

    fn try_from(text: String) -> Result<Self, Self::Error> {
        text.parse()
    }
}

impl std::fmt::Display for Network {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Network::Finney => "finney",
            Network::Test => "test",
            Network::Local => "local",
            Network::Archive => "archive",
            Network::Url(url) => url,
        })
    }
}

/// How the miner talks to subtensor: which node, which subnet, and what it writes there.
///
/// Flags keep the Python miner's dotted names; in a configuration file the fields use their
/// Rust names (`network`, `chain_endpoint`, `netuid`, ...), all optional.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[cfg_attr(feature = "cli", derive(clap::Args))]
#[serde(default, deny_unknown_fields)]
pub struct SubtensorArgs {
    /// The subtensor network: finney, test, local, archive, or a node's `ws://`/`wss://` URL.
    #[cfg_attr(feature = "cli", arg(long = "subtensor.network", env = "BT_SUBTENSOR_NETWORK", default_value_t = Network::Finney, value_parser = parse_network))]
    pub network: Network,
    /// An explicit endpoint (`ws://` or `wss://`), overriding `--subtensor.network`.
    #[cfg_attr(
        feature = "cli",
        arg(long = "subtensor.chain_endpoint", env = "BT_SUBTENSOR_CHAIN_ENDPOINT")
    )]
    pub chain_endpoint: Option<String>,
    /// The subnet the miner serves.
    #[cfg_attr(feature = "cli", arg(long = "netuid", default_value_t = 1))]
    pub netuid: u16,
    /// Blocks between two metagraph refreshes (and weight settings).
    #[cfg_attr(feature = "cli", arg(long = "miner.blocks_per_epoch", default_value_t = 100, value_parser = clap::value_parser!(u64).range(1..)))]
    pub blocks_per_epoch: u64,
    /// Do not publish the axon's ip:port on chain.
    #[cfg_attr(feature = "cli", arg(long = "miner.no_serve"))]
    pub no_serve: bool,
    /// Set weights every epoch, all on the miner's own uid (as the Python miner did). Off by
    /// default: today's subtensor leaves a miner's self-weight out of consensus (only the
    /// subnet owner's counts), and most subnets have commit-reveal on, where plain
    /// `set_weights` is refused; see docs/chain.md.
    #[cfg_attr(
        feature = "cli",
        arg(long = "miner.set_weights", conflicts_with = "no_set_weights")
    )]
    pub set_weights: bool,
    /// Do not set weights (the default; kept so existing command lines and config files still
    /// work).
    #[cfg_attr(feature = "cli", arg(long = "miner.no_set_weights"))]
    pub no_set_weights: bool,
    /// The `version_key` sent with `set_weights`. Default: the subnet's `WeightsVersionKey`,
    /// read from the chain before each `set_weights`.
    #[cfg_attr(
        feature = "cli",
        arg(long = "miner.weights_version_key", value_name = "N")
    )]
    pub weights_version_key: Option<u64>,
    /// Seconds per block (12 on finney and the test network; a local node built with fast
    /// blocks makes one every 0.25 s). Turns block counts (the epoch, rate limits) into
    /// waits.
    #[cfg_attr(feature = "cli", arg(long = "subtensor.block_time", value_name = "SECONDS", default_value_t = 12.0, value_parser = parse_block_time))]
    pub block_time_secs: f64,
    /// Seconds allowed to open the connection and read the runtime.
    #[cfg_attr(
        feature = "cli",
        arg(long = "subtensor.connect_timeout", default_value_t = 30)
    )]
    pub connect_timeout_secs: u64,
    /// Seconds allowed for one chain call, including waiting for a transaction's inclusion.
    #[cfg_attr(
        feature = "cli",
        arg(long = "subtensor.call_timeout", default_value_t = 60)
    )]
    pub call_timeout_secs: u64,
}

impl Default for SubtensorArgs {
    fn default() -> Self {
        SubtensorArgs {
            network: Network::Finney,
            chain_endpoint: None,
            netuid: 1,
            blocks_per_epoch: 100,
            no_serve: false,
            set_weights: false,
            no_set_weights: false,
            weights_version_key: None,
            block_time_secs: BLOCK_TIME.as_secs_f64(),
            connect_timeout_secs: 30,
            call_timeout_secs: 60,
        }
    }
}

fn parse_network(text: &str) -> Result<Network, UnknownNetwork> {
    text.parse()
}

impl SubtensorArgs {
    /// The endpoint to connect to: the explicit one if given, else the network's.
    pub fn endpoint(&self) -> &str {
        match &self.chain_endpoint {
            Some(endpoint) if !endpoint.trim().is_empty() => endpoint.trim(),
            _ => self.network.endpoint(),
        }
    }

    /// Deadline for connecting and reading the runtime.
    pub fn connect_timeout(&self) -> Duration {
        Duration::from_secs(self.connect_timeout_secs.max(1))
    }

    /// Deadline for one chain call.
    pub fn call_timeout(&self) -> Duration {
        Duration::from_secs(self.call_timeout_secs.max(1))
    }

    /// Whether weights are set every epoch: `--miner.set_weights` and not
    /// `--miner.no_set_weights`.
    pub fn sets_weights(&self) -> bool {
        self.set_weights && !self.no_set_weights
    }

    /// The chain's block time (`--subtensor.block_time`; 12 s when the value is unusable,
    /// which the flag's parser refuses anyway).
    pub fn block_time(&self) -> Duration {
        Duration::try_from_secs_f64(self.block_time_secs)
            .ok()
            .filter(|d| !d.is_zero())
            .unwrap_or(BLOCK_TIME)
    }

    /// Time between two refreshes: `blocks_per_epoch` blocks.
    pub fn epoch(&self) -> Duration {
        self.block_time()
            .saturating_mul(u32::try_from(self.blocks_per_epoch.max(1)).unwrap_or(u32::MAX))
    }
}

/// Longest accepted `--subtensor.block_time`.
#[cfg_attr(not(feature = "cli"), allow(dead_code))]
const MAX_BLOCK_TIME_SECS: f64 = 3600.0;

/// `--subtensor.block_time`: seconds, more than 0 and at most an hour.
#[cfg_attr(not(feature = "cli"), allow(dead_code))]
fn parse_block_time(text: &str) -> Result<f64, String> {
    let secs: f64 = text
        .trim()
        .parse()
        .map_err(|_| format!("`{text}` is not a number of seconds"))?;
    if secs.is_finite() && secs > 0.0 && secs <= MAX_BLOCK_TIME_SECS {
        Ok(secs)
    } else {
        Err(format!(
            "must be more than 0 and at most {MAX_BLOCK_TIME_SECS} seconds, got {text}"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        subtensor: SubtensorArgs,
    }

    fn parse(args: &[&str]) -> Result<SubtensorArgs, clap::Error> {
        Cli::try_parse_from(std::iter::once("miner").chain(args.iter().copied()))
            .map(|cli| cli.subtensor)
    }

    #[test]
    fn defaults_match_the_python_miner() {
        // The variables may be set in a developer's shell; only check when they are not.
        if std::env::var_os("BT_SUBTENSOR_NETWORK").is_some()
            || std::env::var_os("BT_SUBTENSOR_CHAIN_ENDPOINT").is_some()
        {
            return;
        }
        let args = parse(&[]).expect("defaults parse");
        assert_eq!(args, SubtensorArgs::default());
        assert_eq!(args.endpoint(), FINNEY_ENDPOINT);
        assert_eq!(args.epoch(), Duration::from_secs(1200));
    }

    #[test]
    fn flags_select_network_and_endpoint() {
        let args = parse(&[
            "--subtensor.network",
            "test",
            "--netuid",
            "8",
            "--miner.blocks_per_epoch",
            "5",
            "--miner.no_serve",
            "--miner.no_set_weights",
        ])
        .expect("parse");
        assert_eq!(args.endpoint(), TEST_ENDPOINT);
        assert_eq!((args.netuid, args.blocks_per_epoch), (8, 5));
        assert!(args.no_serve && args.no_set_weights);
        assert!(!args.sets_weights());

        let args = parse(&[
            "--subtensor.network",
            "local",
            "--subtensor.chain_endpoint",
            "ws://127.0.0.1:1234",
        ])
        .expect("parse");
        assert_eq!(args.endpoint(), "ws://127.0.0.1:1234");
        assert!(parse(&["--miner.blocks_per_epoch", "0"]).is_err());
        assert!(parse(&["--miner.blocks_per_epoch", "1.5"]).is_err());
        assert!(parse(&["--subtensor.network", "mainnet"]).is_err());
        assert!(parse(&["--subtensor.network", "ws://"]).is_err());
        assert!(parse(&["--subtensor.network", "http://127.0.0.1:9944"]).is_err());
        let fast = parse(&[
            "--subtensor.block_time",
            "0.25",
            "--miner.blocks_per_epoch",
            "4",
        ])
        .expect("parse");
        assert_eq!(fast.block_time(), Duration::from_millis(250));
        assert_eq!(fast.epoch(), Duration::from_secs(1));
        for bad in ["0", "-1", "NaN", "inf", "7200", "soon"] {
            assert!(parse(&["--subtensor.block_time", bad]).is_err(), "{bad}");
        }
    }

    #[test]
    fn setting_weights_is_opt_in() {
        let args = parse(&[]).expect("defaults parse");
        assert!(!args.sets_weights(), "off by default");
        assert_eq!(args.weights_version_key, None);
        let args = parse(&[
            "--miner.set_weights",
            "--miner.weights_version_key",
            "2001000",
        ])
        .expect("parse");
        assert!(args.sets_weights());
        assert_eq!(args.weights_version_key, Some(2_001_000));
        // The old opt-out is still accepted, and contradicting it is an error.
        assert!(
            !parse(&["--miner.no_set_weights"])
                .expect("parse")
                .sets_weights()
        );
        assert!(parse(&["--miner.set_weights", "--miner.no_set_weights"]).is_err());
        assert!(parse(&["--miner.weights_version_key", "-1"]).is_err());
        let args: SubtensorArgs =
            serde_json::from_str(r#"{"set_weights": true, "weights_version_key": 7}"#)
                .expect("deserialize");
        assert!(args.sets_weights());
        assert_eq!(args.weights_version_key, Some(7));
    }

    #[test]
    fn network_takes_what_bittensor_takes() {
        for (value, endpoint) in [
            ("finney", FINNEY_ENDPOINT),
            ("test", TEST_ENDPOINT),
            ("local", LOCAL_ENDPOINT),
            ("archive", ARCHIVE_ENDPOINT),
            ("Archive", ARCHIVE_ENDPOINT),
            ("ws://10.0.0.5:9944", "ws://10.0.0.5:9944"),
            ("wss://node.example:443/", "wss://node.example:443/"),
        ] {
            let args = parse(&["--subtensor.network", value]).expect(value);
            assert_eq!(args.endpoint(), endpoint, "{value}");
        }
        let args: SubtensorArgs =
            serde_json::from_str(r#"{"network": "ws://127.0.0.1:1"}"#).expect("deserialize");
        assert_eq!(args.endpoint(), "ws://127.0.0.1:1");
        let err = parse(&["--subtensor.network", "mainnet"]).expect_err("unknown");
        assert!(
            err.to_string()
                .contains("expected finney, test, local, archive"),
            "{err}"
        );
    }

    #[test]
    fn deserializes_from_a_config_file() {
        let args: SubtensorArgs =
            serde_json::from_str(r#"{"network": "local", "netuid": 21, "no_serve": true}"#)
                .expect("deserialize");
        assert_eq!(args.endpoint(), LOCAL_ENDPOINT);
        assert_eq!(args.netuid, 21);
        assert!(args.no_serve);
        assert_eq!(args.blocks_per_epoch, 100);
        assert!(serde_json::from_str::<SubtensorArgs>(r#"{"netwrk": "local"}"#).is_err());
    }
}
