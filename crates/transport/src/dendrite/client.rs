//! The dendrite's identity and HTTP client.

use std::sync::Arc;
use std::time::Duration;

use prompting_keys::Keypair;

use crate::clock::Clock;
use crate::dendrite::error::DendriteError;
use crate::nonce::NonceSource;

/// The `bt_header_dendrite_version` this client sends: bittensor 10.5.0's
/// `version_as_int` (`10 * 1000² + 5 * 1000 + 0`).
///
/// The axon only looks at it to choose its nonce rules: from 7002000 (7.2.0) on, a first
/// nonce must be a recent `time.time_ns()` (within 4 s + the timeout), which ours are; older
/// versions only need nonces to increase. No bittensor axon refuses a newer version.
pub const DENDRITE_VERSION: u64 = 10_005_000;

/// What Python sends as `bt_header_dendrite_ip` is its external IP, looked up online at
/// start. Axons overwrite it with the connection's peer address before using it, so this
/// client sends `0.0.0.0` (unspecified) unless told otherwise
/// ([`DendriteBuilder::external_ip`]).
pub const DEFAULT_DENDRITE_IP: &str = "0.0.0.0";

/// Calls in flight at once in [`Dendrite::query_many`] unless configured.
pub const DEFAULT_MAX_CONCURRENCY: usize = 256;

/// The largest response body read, unless configured (a larger one is a payload error).
pub const DEFAULT_MAX_RESPONSE_BYTES: usize = 32 * 1024 * 1024;

/// A client of miners' axons: one hotkey, one uuid1 string and strictly increasing nonces
/// (the `hotkey:uuid` pair is what an axon's replay protection tracks), and one pooled HTTP
/// client. Clones share all of it.
#[derive(Clone, Debug)]
pub struct Dendrite {
    pub(crate) inner: Arc<Inner>,
}

#[derive(Debug)]
pub(crate) struct Inner {
    pub(crate) keypair: Keypair,
    pub(crate) hotkey: String,
    pub(crate) uuid: String,
    pub(crate) ip: String,
    pub(crate) nonces: NonceSource,
    pub(crate) http: reqwest::Client,
    pub(crate) max_concurrency: usize,
    pub(crate) max_response_bytes: usize,
}

/// Configures a [`Dendrite`].
pub struct DendriteBuilder {
    keypair: Keypair,
    uuid: Option<String>,
    clock: Option<Arc<dyn Clock>>,
    external_ip: Option<String>,
    max_concurrency: usize,
    max_response_bytes: usize,
}

impl Dendrite {
    /// A dendrite signing with `keypair`, with the defaults of [`Dendrite::builder`].
    pub fn new(keypair: Keypair) -> Result<Dendrite, DendriteError> {
        Dendrite::builder(keypair).build()
    }

    /// A builder for a dendrite signing with `keypair`.
    pub fn builder(keypair: Keypair) -> DendriteBuilder {
        DendriteBuilder {
            keypair,
            uuid: None,
            clock: None,
            external_ip: None,
            max_concurrency: DEFAULT_MAX_CONCURRENCY,
            max_response_bytes: DEFAULT_MAX_RESPONSE_BYTES,
        }
    }

    /// The SS58 address of the signing hotkey.
    pub fn hotkey(&self) -> &str {
        &self.inner.hotkey
    }

    /// This dendrite's uuid (`bt_header_dendrite_uuid`).
    pub fn uuid(&self) -> &str {
        &self.inner.uuid
    }

    /// The IP address sent as `bt_header_dendrite_ip`.
    pub fn external_ip(&self) -> &str {
        &self.inner.ip
    }
}

impl DendriteBuilder {
    /// The uuid to send instead of a fresh uuid1 (tests and replays; an axon tracks nonces
    /// per `hotkey:uuid`, so two dendrites must not share one).
    pub fn uuid(mut self, uuid: impl Into<String>) -> DendriteBuilder {
        self.uuid = Some(uuid.into());
        self
    }

    /// The clock nonces come from, instead of the system clock (tests and replays).
    pub fn clock(mut self, clock: Arc<dyn Clock>) -> DendriteBuilder {
        self.clock = Some(clock);
        self
    }

    /// The address sent as `bt_header_dendrite_ip` (default [`DEFAULT_DENDRITE_IP`]).
    pub fn external_ip(mut self, ip: impl Into<String>) -> DendriteBuilder {
        self.external_ip = Some(ip.into());
        self
    }

    /// Calls in flight at once in [`Dendrite::query_many`] (at least 1).
    pub fn max_concurrency(mut self, calls: usize) -> DendriteBuilder {
        self.max_concurrency = calls.max(1);
        self
    }

    /// The largest response body read; a larger one ends the call with a payload error.
    pub fn max_response_bytes(mut self, bytes: usize) -> DendriteBuilder {
        self.max_response_bytes = bytes;
        self
    }

    /// The dendrite.
    ///
    /// Its HTTP client speaks HTTP/1.1 like aiohttp, keeps idle connections for reuse, and
    /// ignores proxy environment variables (aiohttp's session does not read them either).
    pub fn build(self) -> Result<Dendrite, DendriteError> {
        let http = reqwest::Client::builder()
            .http1_only()
            .no_proxy()
            .tcp_nodelay(true)
            .pool_idle_timeout(Duration::from_secs(60))
            .user_agent(concat!("prompting-rs-dendrite/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(DendriteError::HttpClient)?;
        let hotkey = self.keypair.ss58_address();
        Ok(Dendrite {
            inner: Arc::new(Inner {
                hotkey,
                keypair: self.keypair,
                uuid: self.uuid.unwrap_or_else(uuid1_string),
                ip: self
                    .external_ip
                    .unwrap_or_else(|| DEFAULT_DENDRITE_IP.to_owned()),
                nonces: self
                    .clock
                    .map_or_else(NonceSource::new, NonceSource::with_clock),
                http,
                max_concurrency: self.max_concurrency,
                max_response_bytes: self.max_response_bytes,
            }),
        })
    }
}

/// A fresh time-based (version 1) UUID string, as Python's `str(uuid.uuid1())`. The node id
/// is random with the multicast bit set (what Python does when it finds no MAC address),
/// so that dendrites started in the same 100 ns on different machines still differ.
fn uuid1_string() -> String {
    let random = uuid::Uuid::new_v4();
    let mut node = [0u8; 6];
    node.copy_from_slice(&random.as_bytes()[..6]);
    node[0] |= 0x01;
    uuid::Uuid::now_v1(&node).hyphenated().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uuids_are_version_1_and_distinct() {
        let first = uuid1_string();
        let second = uuid1_string();
        assert_ne!(first, second);
        let parsed = uuid::Uuid::parse_str(&first).expect("a uuid");
        assert_eq!(parsed.get_version_num(), 1);
        assert_eq!(first.len(), 36);
        assert_eq!(first, first.to_lowercase());
    }

    #[test]
    fn builder_settings_are_kept() {
        let (keypair, _) = Keypair::generate();
        let address = keypair.ss58_address();
        let dendrite = Dendrite::builder(keypair)
            .uuid("49c892ca-e602-11f1-86a3-02fc00000001")
            .external_ip("127.0.0.1")
            .max_concurrency(0)
            .build()
            .expect("client");
        assert_eq!(dendrite.hotkey(), address);
        assert_eq!(dendrite.uuid(), "49c892ca-e602-11f1-86a3-02fc00000001");
        assert_eq!(dendrite.external_ip(), "127.0.0.1");
        assert_eq!(dendrite.inner.max_concurrency, 1);
        let clone = dendrite.clone();
        assert_eq!(clone.uuid(), dendrite.uuid());
    }
}
