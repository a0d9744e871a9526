//! The server side: checking a request's btauth/1 headers, in bittensor's order.

use std::fmt;
use std::sync::Arc;

use http::{HeaderMap, Method};
use prompting_keys::PublicKey;

use super::address::decode_hotkey;
use super::error::BtAuthError;
use super::payload::{PayloadFields, Scheme, build_payload};
use super::python::{from_hex, int_exceeds, latin1, parse_int};
use super::replay::{Admission, ReplayCounters, ReplayLimits, ReplayStore};
use super::{
    DEFAULT_MAX_AGE_S, DEFAULT_MAX_FUTURE_S, HEADER_CRYPTO, HEADER_HOTKEY, HEADER_NONCE,
    HEADER_RECEIVER, HEADER_SIGNATURE, HEADER_VERSION, VERSION,
};
use crate::caller_class::{ClassifyCaller, NobodyRegistered};
use crate::clock::{Clock, SystemClock};

/// The default number of accepted requests of unregistered keys the replay store remembers.
pub const DEFAULT_REPLAY_CAPACITY: usize = 100_000;

/// The default number of accepted requests remembered for each registered key.
pub const DEFAULT_REPLAY_CAPACITY_PER_KEY: usize = 4096;

/// The default number of registered keys given a replay store of their own.
pub const DEFAULT_REPLAY_MAX_KEYS: usize = 4096;

/// The largest freshness window (either side) a verifier accepts, in seconds.
pub const MAX_WINDOW_S: f64 = 1e9;

/// Extra time, beyond the freshness window, that accepted nonces are remembered.
const RETENTION_MARGIN_NS: u64 = 1_000_000_000;

/// What a verifier accepts.
#[derive(Debug, Clone, PartialEq)]
pub struct BtAuthConfig {
    /// This server's hotkey address: requests must be signed for it.
    pub hotkey: String,
    /// Refuse requests without `X-Bittensor-Receiver` (a receiver that is present must always
    /// be [`BtAuthConfig::hotkey`]).
    pub require_receiver: bool,
    /// How old a nonce may be, in seconds.
    pub max_age_s: f64,
    /// How far ahead of this server's clock a nonce may be, in seconds.
    pub max_future_s: f64,
    /// How many accepted requests of unregistered keys (all together) the replay store
    /// remembers at most.
    pub replay_capacity: usize,
    /// How many accepted requests of each registered key the replay store remembers at most.
    pub replay_capacity_per_key: usize,
    /// How many registered keys get room of their own in the replay store; further keys
    /// share the unregistered keys' room.
    pub replay_max_keys: usize,
}

impl BtAuthConfig {
    /// Bittensor's defaults for a server with hotkey `hotkey`: receiver required, 10 s back,
    /// 2 s ahead, [`DEFAULT_REPLAY_CAPACITY`].
    pub fn new(hotkey: impl Into<String>) -> BtAuthConfig {
        BtAuthConfig {
            hotkey: hotkey.into(),
            require_receiver: true,
            max_age_s: DEFAULT_MAX_AGE_S,
            max_future_s: DEFAULT_MAX_FUTURE_S,
            replay_capacity: DEFAULT_REPLAY_CAPACITY,
            replay_capacity_per_key: DEFAULT_REPLAY_CAPACITY_PER_KEY,
            replay_max_keys: DEFAULT_REPLAY_MAX_KEYS,
        }
    }
}

/// A configuration the verifier cannot work with.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum BtAuthConfigError {
    /// The server's own hotkey is not an address bittensor decodes.
    #[error("btauth hotkey {0:?} is not a valid SS58 address")]
    InvalidHotkey(String),
    /// A freshness window is negative, not finite or too large.
    #[error("--btauth.{flag} must be between 0 and {MAX_WINDOW_S:e} seconds, got {value}")]
    InvalidWindow {
        /// The flag, without `--btauth.`.
        flag: &'static str,
        /// The value given.
        value: f64,
    },
    /// The replay store must hold at least one entry.
    #[error("--btauth.replay_capacity must be at least 1")]
    ZeroReplayCapacity,
    /// Each registered key's room in the replay store must hold at least one entry.
    #[error("--btauth.replay_capacity_per_key must be at least 1")]
    ZeroReplayCapacityPerKey,
}

/// The authenticated sender of a verified request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedCaller {
    /// The `X-Bittensor-Hotkey` address exactly as sent (and signed).
    pub hotkey: String,
    /// The sender's public key (its prefix-42 address is `public_key.to_ss58()`).
    pub public_key: PublicKey,
    /// The scheme the signature was checked under.
    pub scheme: Scheme,
    /// The request's nonce, in nanoseconds since the Unix epoch.
    pub nonce: i64,
}

/// Checks btauth/1 requests for one server hotkey, with its own replay store.
///
/// Independent of any HTTP framework: give it the method, the request target (path and query
/// as received), the headers and the raw body bytes.
pub struct BtAuthVerifier {
    config: BtAuthConfig,
    clock: Arc<dyn Clock>,
    replay: ReplayStore,
    classify: Arc<dyn ClassifyCaller>,
}

impl fmt::Debug for BtAuthVerifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BtAuthVerifier")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl BtAuthVerifier {
    /// A verifier on the system clock.
    pub fn new(config: BtAuthConfig) -> Result<BtAuthVerifier, BtAuthConfigError> {
        BtAuthVerifier::with_clock(config, Arc::new(SystemClock))
    }

    /// A verifier reading the time from `clock`.
    pub fn with_clock(
        config: BtAuthConfig,
        clock: Arc<dyn Clock>,
    ) -> Result<BtAuthVerifier, BtAuthConfigError> {
        if decode_hotkey(&config.hotkey).is_none() {
            return Err(BtAuthConfigError::InvalidHotkey(config.hotkey));
        }
        for (flag, value) in [
            ("max_age", config.max_age_s),
            ("max_future", config.max_future_s),
        ] {
            if !(0.0..=MAX_WINDOW_S).contains(&value) {
                return Err(BtAuthConfigError::InvalidWindow { flag, value });
            }
        }
        if config.replay_capacity == 0 {
            return Err(BtAuthConfigError::ZeroReplayCapacity);
        }
        if config.replay_capacity_per_key == 0 {
            return Err(BtAuthConfigError::ZeroReplayCapacityPerKey);
        }
        // Python requires the store to keep entries at least `max_age + allowed_skew`.
        let window_ns = ((config.max_age_s + config.max_future_s) * 1e9).ceil() as u64;
        let replay = ReplayStore::new(ReplayLimits {
            shared_capacity: config.replay_capacity,
            per_key_capacity: config.replay_capacity_per_key,
            max_keys: config.replay_max_keys,
            retention_ns: window_ns.saturating_add(RETENTION_MARGIN_NS),
        });
        Ok(BtAuthVerifier {
            config,
            clock,
            replay,
            classify: Arc::new(NobodyRegistered),
        })
    }

    /// Tells the replay store which callers are registered (see [`crate::caller_class::CallerClass`]): each of
    /// those gets room of its own, which no other key's requests can take. Without it every
    /// caller shares one room.
    pub fn with_classifier(mut self, classify: Arc<dyn ClassifyCaller>) -> BtAuthVerifier {
        self.classify = classify;
        self
    }

    /// The replay store's counters (for `/metrics`).
    pub fn replay_counters(&self) -> Arc<ReplayCounters> {
        self.replay.counters()
    }

    /// The configuration.
    pub fn config(&self) -> &BtAuthConfig {
        &self.config
    }

    /// Authenticates a request, in bittensor's order: header shape, receiver, freshness, the
    /// signature under the declared scheme only, then the replay store (written only once the
    /// signature verifies).
    ///
    /// `target` is the request target as received (path plus `?query`); `body` the raw bytes.
    /// Header names are case-insensitive; when a header is repeated, the last value counts
    /// (as a Python dict built from the header list does).
    pub fn verify(
        &self,
        method: &Method,
        target: &str,
        headers: &HeaderMap,
        body: &[u8],
    ) -> Result<VerifiedCaller, BtAuthError> {
        let header = |name: &str| last_header(headers, name);

        if header(HEADER_VERSION).as_deref() != Some(VERSION) {
            return Err(BtAuthError::UnsupportedVersion);
        }
        let sender = header(HEADER_HOTKEY)
            .filter(|sender| !sender.is_empty())
            .ok_or(BtAuthError::MissingHotkey)?;
        let raw_nonce = header(HEADER_NONCE).ok_or(BtAuthError::MissingNonce)?;
        let nonce = parse_int(&raw_nonce).ok_or(BtAuthError::NonceNotInteger)?.0;
        let scheme = match header(HEADER_CRYPTO) {
            None => Scheme::Sr25519,
            Some(value) => Scheme::parse(&value).ok_or(BtAuthError::UnsupportedCrypto)?,
        };
        let raw_signature = header(HEADER_SIGNATURE).ok_or(BtAuthError::MissingSignature)?;
        let signature = from_hex(raw_signature.strip_prefix("0x").unwrap_or(&raw_signature))
            .ok_or(BtAuthError::SignatureNotHex)?;

        let receiver = header(HEADER_RECEIVER);
        match &receiver {
            None if self.config.require_receiver => return Err(BtAuthError::MissingReceiver),
            Some(receiver) if *receiver != self.config.hotkey => {
                return Err(BtAuthError::OtherReceiver);
            }
            _ => {}
        }

        let nonce = self.check_freshness(nonce)?;

        let payload = build_payload(
            &PayloadFields {
                scheme,
                method: method.as_str(),
                target,
                nonce_ns: nonce,
                sender: &sender,
                receiver: receiver.as_deref(),
            },
            body,
        );
        let public_key = decode_hotkey(&sender).ok_or(BtAuthError::InvalidEncoding)?;
        let signature: [u8; 64] = signature
            .try_into()
            .map_err(|_| BtAuthError::InvalidEncoding)?;
        let valid = match scheme {
            Scheme::Sr25519 => prompting_keys::verify(&public_key, &payload, &signature),
            Scheme::Ed25519 => prompting_keys::verify_ed25519(&public_key, &payload, &signature),
        };
        if !valid {
            return Err(BtAuthError::BadSignature);
        }

        let class = self.classify.class_of(&public_key.to_ss58());
        match self
            .replay
            .check_and_store(&sender, nonce, class, self.clock.monotonic_ns())
        {
            Admission::Fresh => Ok(VerifiedCaller {
                hotkey: sender,
                public_key,
                scheme,
                nonce,
            }),
            Admission::Replayed => Err(BtAuthError::Replayed),
            Admission::BelowForgotten => Err(BtAuthError::ReplayWindowExceeded),
        }
    }

    /// Python's `now - nonce > max_age * 1e9` and `nonce - now > allowed_skew * 1e9`, exact
    /// on integers of any size; returns the nonce, now known to be near the clock.
    fn check_freshness(&self, nonce: i128) -> Result<i64, BtAuthError> {
        let now = i128::from(self.clock.now_ns());
        let too_old = BtAuthError::TooOld {
            max_age_s: self.config.max_age_s,
        };
        let too_far_ahead = BtAuthError::TooFarAhead {
            max_future_s: self.config.max_future_s,
        };
        // A difference that overflows i128 is far beyond any window this verifier allows, on
        // the side of the nonce's sign.
        let older = match now.checked_sub(nonce) {
            Some(age) => int_exceeds(age, self.config.max_age_s * 1e9),
            None => nonce < 0,
        };
        if older {
            return Err(too_old);
        }
        let ahead = match nonce.checked_sub(now) {
            Some(ahead) => int_exceeds(ahead, self.config.max_future_s * 1e9),
            None => nonce > 0,
        };
        if ahead {
            return Err(too_far_ahead);
        }
        // Inside a window of at most 1e18 ns around an i64 clock: outside i64 only for clocks
        // within 31 years of the i64 range's ends.
        i64::try_from(nonce).map_err(|_| if nonce < 0 { too_old } else { too_far_ahead })
    }
}

/// The hotkey a btauth/1 request claims to be signed by (its `X-Bittensor-Hotkey`, the last
/// one when repeated, as [`BtAuthVerifier::verify`] reads it), SS58 with prefix 42 as the
/// metagraph lists it; `None` when absent or not an address the verifier accepts. Not
/// authenticated: only for decisions that any claim of that key gets alike.
pub fn claimed_sender(headers: &HeaderMap) -> Option<String> {
    let sender = last_header(headers, HEADER_HOTKEY)?;
    decode_hotkey(&sender).map(|key| key.to_ss58())
}

/// A header's last value, each byte a Latin-1 character (as Python's `http` reads it).
fn last_header(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get_all(name)
        .iter()
        .next_back()
        .map(|value| latin1(value.as_bytes()))
}
