//! btauth/1: hotkey-signed HTTP requests, wire-compatible with bittensor 11.3.0's
//! `bittensor.http_auth`.
//!
//! A client signs a request with [`sign_request`] (or a [`BtAuthSigner`]) and sends the
//! returned headers with the exact body; a server checks it with [`BtAuthVerifier::verify`]
//! over the method, request target, headers and raw body. The signed payload is
//! [`build_payload`]; `docs/protocols.md` describes the wire format, the order of the checks
//! and the error messages.

mod address;
#[cfg(feature = "server")]
mod args;
mod error;
mod payload;
mod python;
mod replay;
mod sign;
mod verify;

pub use address::ACCEPTED_SS58_PREFIXES;
#[cfg(feature = "server")]
pub use args::BtAuthArgs;
pub use error::{BtAuthError, ErrorClass};
pub use payload::{PayloadFields, Scheme, body_sha256_hex, build_payload};
pub use replay::ReplayCounters;
pub use sign::{BtAuthKey, BtAuthSignError, BtAuthSigner, sign_request};
pub use verify::{
    BtAuthConfig, BtAuthConfigError, BtAuthVerifier, DEFAULT_REPLAY_CAPACITY,
    DEFAULT_REPLAY_CAPACITY_PER_KEY, DEFAULT_REPLAY_MAX_KEYS, MAX_WINDOW_S, VerifiedCaller,
    claimed_sender,
};

/// The protocol line that starts every payload.
pub const PROTOCOL: &str = "btauth/1";
/// The value of `X-Bittensor-Version`.
pub const VERSION: &str = "1";

/// Protocol version header (`1`).
pub const HEADER_VERSION: &str = "X-Bittensor-Version";
/// Sender hotkey address header.
pub const HEADER_HOTKEY: &str = "X-Bittensor-Hotkey";
/// Receiver hotkey address header (absent: not bound to a receiver).
pub const HEADER_RECEIVER: &str = "X-Bittensor-Receiver";
/// Nonce header: decimal nanoseconds since the Unix epoch.
pub const HEADER_NONCE: &str = "X-Bittensor-Nonce";
/// Signature scheme header (absent: sr25519).
pub const HEADER_CRYPTO: &str = "X-Bittensor-Crypto";
/// Signature header: `0x` + 128 hex digits.
pub const HEADER_SIGNATURE: &str = "X-Bittensor-Signature";

/// Bittensor's default freshness window back, in seconds.
pub const DEFAULT_MAX_AGE_S: f64 = 10.0;
/// Bittensor's default allowed clock drift forward, in seconds.
pub const DEFAULT_MAX_FUTURE_S: f64 = 2.0;

/// The payload's receiver line of a request not bound to a receiver.
const NO_RECEIVER: &str = "-";

#[cfg(test)]
mod tests;
