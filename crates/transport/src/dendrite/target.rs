//! The axon a dendrite calls: address and hotkey, and the URL of a synapse route on it.

use std::fmt;
use std::net::{IpAddr, SocketAddr};

/// An axon to call: where it listens and the hotkey it signs with.
///
/// The hotkey goes into the signed request message: an axon refuses a request signed for
/// another hotkey (`401 Not Verified ... Signature mismatch`).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct AxonTarget {
    /// The axon's IP address.
    pub ip: IpAddr,
    /// The axon's port.
    pub port: u16,
    /// The SS58 address of the axon's hotkey.
    pub hotkey: String,
}

impl AxonTarget {
    /// The axon at `addr` with hotkey `hotkey` (SS58).
    pub fn new(addr: SocketAddr, hotkey: impl Into<String>) -> AxonTarget {
        AxonTarget {
            ip: addr.ip(),
            port: addr.port(),
            hotkey: hotkey.into(),
        }
    }

    /// The axon's socket address.
    pub fn socket_addr(&self) -> SocketAddr {
        SocketAddr::new(self.ip, self.port)
    }

    /// `http://{ip}:{port}/{route}`, an IPv6 address in brackets.
    ///
    /// Python's dendrite puts `0.0.0.0` in place of the ip when the target's ip equals the
    /// dendrite's own external ip (so that a validator reaches a miner on the same machine
    /// through its local interface); this client always connects to the address given —
    /// pass a loopback address to reach a local axon.
    ///
    /// ```
    /// use prompting_transport::dendrite::AxonTarget;
    ///
    /// let v4 = AxonTarget::new("127.0.0.1:8091".parse().unwrap(), "5Axon");
    /// assert_eq!(v4.url("Prompting"), "http://127.0.0.1:8091/Prompting");
    /// let v6 = AxonTarget::new("[::1]:8091".parse().unwrap(), "5Axon");
    /// assert_eq!(v6.url("Prompting"), "http://[::1]:8091/Prompting");
    /// ```
    pub fn url(&self, route: &str) -> String {
        format!("http://{}/{route}", self.socket_addr())
    }
}

impl fmt::Display for AxonTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.socket_addr(), self.hotkey)
    }
}
