//! Operator flags of the axon, with bittensor's names where it has them.

use std::net::IpAddr;
use std::time::Duration;

use crate::api_key::OpenAiApiArgs;
use crate::btauth::BtAuthArgs;
use crate::server::ServerLimits;

/// Where the axon listens, what it publishes, and its limits.
#[derive(Debug, Clone, serde::Deserialize)]
#[cfg_attr(feature = "cli", derive(clap::Args))]
#[serde(default, deny_unknown_fields)]
pub struct AxonArgs {
    /// Address to bind (IPv6 may be bracketed, as bittensor's default `[::]`).
    #[cfg_attr(feature = "cli", arg(long = "axon.ip", default_value = "0.0.0.0", env = "BT_AXON_IP", value_parser = parse_ip))]
    pub ip: IpAddr,
    /// Port to bind.
    #[cfg_attr(
        feature = "cli",
        arg(long = "axon.port", default_value_t = 8091, env = "BT_AXON_PORT")
    )]
    pub port: u16,
    /// IP published on chain (defaults to the bind address).
    #[cfg_attr(feature = "cli", arg(long = "axon.external_ip", env = "BT_AXON_EXTERNAL_IP", value_parser = parse_ip))]
    pub external_ip: Option<IpAddr>,
    /// Port published on chain (defaults to the bind port).
    #[cfg_attr(
        feature = "cli",
        arg(long = "axon.external_port", env = "BT_AXON_EXTERNAL_PORT")
    )]
    pub external_port: Option<u16>,
    /// Tokio worker threads serving requests (default: one per core).
    #[cfg_attr(
        feature = "cli",
        arg(long = "axon.max_workers", env = "BT_AXON_MAX_WORKERS")
    )]
    pub max_workers: Option<usize>,
    /// Connections served at once. At the limit, the idle connection of the lowest-ranked
    /// caller gives way to a new one.
    #[cfg_attr(
        feature = "cli",
        arg(long = "axon.max_connections", default_value_t = 1024)
    )]
    pub max_connections: usize,
    /// Largest request body accepted, in bytes (larger: 413).
    #[cfg_attr(feature = "cli", arg(long = "axon.max_body_bytes", default_value_t = 1024 * 1024))]
    pub max_body_bytes: usize,
    /// Largest request head (request line and headers) accepted, in bytes.
    #[cfg_attr(feature = "cli", arg(long = "axon.max_header_bytes", default_value_t = 64 * 1024))]
    pub max_header_bytes: usize,
    /// Seconds a new connection has to deliver its first request (and any client a request
    /// head, and again the body).
    #[cfg_attr(
        feature = "cli",
        arg(long = "axon.read_timeout", default_value_t = 10.0)
    )]
    pub read_timeout: f64,
    /// Seconds a connection may stay open with no request in flight (HTTP/1.1 keep-alive,
    /// HTTP/2).
    #[cfg_attr(
        feature = "cli",
        arg(long = "axon.idle_timeout", default_value_t = 60.0)
    )]
    pub idle_timeout: f64,
    /// Seconds between two log lines of one kind that callers can cause (refusals,
    /// evictions, failed connections); the events in between are counted in the next line
    /// and in /metrics.
    #[cfg_attr(
        feature = "cli",
        arg(long = "axon.log_interval", default_value_t = 10.0)
    )]
    pub log_interval: f64,
    /// Largest request `timeout` honoured, in seconds (longer ones are capped).
    #[cfg_attr(
        feature = "cli",
        arg(long = "axon.max_request_timeout", default_value_t = 300.0)
    )]
    pub max_request_timeout: f64,
    /// Seconds in-flight requests get to finish on shutdown.
    #[cfg_attr(
        feature = "cli",
        arg(long = "axon.shutdown_grace", default_value_t = 30.0)
    )]
    pub shutdown_grace: f64,
    /// Legacy endpoints (`hotkey:uuid`) of unregistered keys whose nonces are remembered,
    /// all such keys together.
    #[cfg_attr(
        feature = "cli",
        arg(long = "axon.nonce_capacity", default_value_t = 100_000)
    )]
    pub nonce_capacity: usize,
    /// Legacy endpoints (`uuid`s) remembered for each registered or whitelisted key.
    #[cfg_attr(
        feature = "cli",
        arg(long = "axon.nonce_capacity_per_key", default_value_t = 256)
    )]
    pub nonce_capacity_per_key: usize,
    /// Registered or whitelisted keys given a nonce table of their own (more than a subnet
    /// has uids); further keys share the unregistered keys' table.
    #[cfg_attr(
        feature = "cli",
        arg(long = "axon.nonce_max_keys", default_value_t = 4096)
    )]
    pub nonce_max_keys: usize,
    /// Seconds below an endpoint's highest nonce within which an unseen nonce is still
    /// accepted (concurrent requests arrive out of order); 0 is bittensor's strict rule.
    #[cfg_attr(
        feature = "cli",
        arg(long = "axon.nonce_reorder_window", default_value_t = 1.0)
    )]
    pub nonce_reorder_window: f64,
    /// btauth/1 verification (bittensor 11 validators, the OpenAI-compatible routes).
    #[cfg_attr(feature = "cli", command(flatten))]
    pub btauth: BtAuthArgs,
    /// Bearer keys plain OpenAI clients may use on `/v1/*` (`--openai_api.*`).
    #[cfg_attr(feature = "cli", command(flatten))]
    #[serde(skip)]
    pub openai_api: OpenAiApiArgs,
}

impl Default for AxonArgs {
    fn default() -> Self {
        AxonArgs {
            ip: IpAddr::from([0, 0, 0, 0]),
            port: 8091,
            external_ip: None,
            external_port: None,
            max_workers: None,
            max_connections: 1024,
            max_body_bytes: 1024 * 1024,
            max_header_bytes: 64 * 1024,
            read_timeout: 10.0,
            idle_timeout: 60.0,
            log_interval: 10.0,
            max_request_timeout: 300.0,
            shutdown_grace: 30.0,
            nonce_capacity: 100_000,
            nonce_capacity_per_key: 256,
            nonce_max_keys: 4096,
            nonce_reorder_window: 1.0,
            btauth: BtAuthArgs::default(),
            openai_api: OpenAiApiArgs::default(),
        }
    }
}

/// An IP address, IPv6 optionally in brackets (`[::]`, bittensor's default `--axon.ip`).
pub fn parse_ip(text: &str) -> Result<IpAddr, String> {
    let text = text.trim();
    let bare = text
        .strip_prefix('[')
        .and_then(|inner| inner.strip_suffix(']'))
        .unwrap_or(text);
    bare.parse()
        .map_err(|_| format!("{text:?} is not an IP address"))
}

/// A flag value that makes no sense.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("invalid --axon.{flag}: {reason}")]
pub struct AxonConfigError {
    /// The flag, without its `--axon.` prefix.
    pub flag: &'static str,
    /// What is wrong with it.
    pub reason: String,
}

impl AxonArgs {
    /// Checks every value; the first nonsense one is the error.
    pub fn validate(&self) -> Result<(), AxonConfigError> {
        let positive = |flag: &'static str, value: f64| {
            if value.is_finite() && value > 0.0 {
                Ok(())
            } else {
                Err(AxonConfigError {
                    flag,
                    reason: format!("must be a positive number of seconds, got {value}"),
                })
            }
        };
        let nonzero = |flag: &'static str, value: usize| {
            if value > 0 {
                Ok(())
            } else {
                Err(AxonConfigError {
                    flag,
                    reason: "must be at least 1".into(),
                })
            }
        };
        positive("read_timeout", self.read_timeout)?;
        positive("idle_timeout", self.idle_timeout)?;
        if !(self.log_interval.is_finite() && self.log_interval >= 0.0) {
            return Err(AxonConfigError {
                flag: "log_interval",
                reason: format!("must be zero or more seconds, got {}", self.log_interval),
            });
        }
        positive("max_request_timeout", self.max_request_timeout)?;
        if !(self.shutdown_grace.is_finite() && self.shutdown_grace >= 0.0) {
            return Err(AxonConfigError {
                flag: "shutdown_grace",
                reason: format!("must be zero or more seconds, got {}", self.shutdown_grace),
            });
        }
        if !(self.nonce_reorder_window.is_finite()
            && (0.0..=60.0).contains(&self.nonce_reorder_window))
        {
            return Err(AxonConfigError {
                flag: "nonce_reorder_window",
                reason: format!("must be 0 to 60 seconds, got {}", self.nonce_reorder_window),
            });
        }
        nonzero("max_connections", self.max_connections)?;
        nonzero("max_body_bytes", self.max_body_bytes)?;
        nonzero("nonce_capacity", self.nonce_capacity)?;
        nonzero("nonce_capacity_per_key", self.nonce_capacity_per_key)?;
        if let Some(workers) = self.max_workers {
            nonzero("max_workers", workers)?;
        }
        if self.max_header_bytes < 1024 {
            return Err(AxonConfigError {
                flag: "max_header_bytes",
                reason: format!("must be at least 1024, got {}", self.max_header_bytes),
            });
        }
        if self.port == 0 && self.external_port.is_none() {
            // Port 0 binds an ephemeral port: fine locally, but nothing sensible to publish.
            tracing::warn!("--axon.port 0 binds an ephemeral port");
        }
        Ok(())
    }

    /// The connection limits for [`crate::server::serve`] (without counters: the axon's
    /// [`crate::edge::AxonState::server_limits`] adds its own).
    pub fn server_limits(&self) -> ServerLimits {
        let seconds = |s: f64| Duration::try_from_secs_f64(s).unwrap_or(Duration::MAX);
        let read_timeout = seconds(self.read_timeout);
        ServerLimits {
            max_connections: self.max_connections,
            max_header_bytes: self.max_header_bytes,
            header_read_timeout: read_timeout,
            idle_timeout: seconds(self.idle_timeout),
            // Reading the body, the longest request, then writing the answer.
            request_lifetime: seconds(self.max_request_timeout)
                .saturating_add(read_timeout.saturating_mul(2)),
            shutdown_grace: seconds(self.shutdown_grace),
            log_interval: seconds(self.log_interval),
            stats: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nonsense_is_refused() {
        let args = AxonArgs {
            read_timeout: 0.0,
            ..AxonArgs::default()
        };
        assert_eq!(args.validate().unwrap_err().flag, "read_timeout");
        let args = AxonArgs {
            max_connections: 0,
            ..AxonArgs::default()
        };
        assert_eq!(args.validate().unwrap_err().flag, "max_connections");
    }
}

#[cfg(all(test, feature = "cli"))]
mod cli_tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        axon: AxonArgs,
    }

    #[test]
    fn python_flag_names_and_defaults() {
        let cli = Cli::parse_from(["x", "--axon.port", "9000", "--axon.external_ip", "1.2.3.4"]);
        assert_eq!(cli.axon.port, 9000);
        assert_eq!(cli.axon.external_ip, Some(IpAddr::from([1, 2, 3, 4])));
        assert_eq!(cli.axon.ip, IpAddr::from([0, 0, 0, 0]));
        assert!(cli.axon.validate().is_ok());
        let defaults = Cli::parse_from(["x"]).axon;
        assert_eq!(defaults.max_body_bytes, AxonArgs::default().max_body_bytes);
    }

    #[test]
    fn bracketed_ipv6_is_accepted() {
        let cli = Cli::parse_from(["x", "--axon.ip", "[::]", "--axon.external_ip", "[::1]"]);
        assert_eq!(cli.axon.ip, IpAddr::from([0u16; 8]));
        assert_eq!(
            cli.axon.external_ip,
            Some(IpAddr::from([0, 0, 0, 0, 0, 0, 0, 1u16]))
        );
        assert!(parse_ip("[1.2.3.4").is_err());
        assert!(parse_ip("host").is_err());
    }

    #[test]
    fn nonsense_is_refused() {
        let args = AxonArgs {
            read_timeout: 0.0,
            ..AxonArgs::default()
        };
        assert_eq!(args.validate().unwrap_err().flag, "read_timeout");
        let args = AxonArgs {
            max_connections: 0,
            ..AxonArgs::default()
        };
        assert_eq!(args.validate().unwrap_err().flag, "max_connections");
    }
}
