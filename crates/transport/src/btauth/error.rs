//! Why a request failed btauth/1 verification, with bittensor's exact messages.

use super::python::format_g;

/// The `http_auth.AuthError` subclass an outcome belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorClass {
    /// A required header is missing or unparseable (`MalformedAuth`).
    MalformedAuth,
    /// Signed for a different (or no) receiving hotkey (`WrongReceiver`).
    WrongReceiver,
    /// The nonce is outside the freshness window (`StaleRequest`).
    StaleRequest,
    /// The signature does not verify (`BadSignature`).
    BadSignature,
    /// This (hotkey, nonce) pair was already accepted (`ReplayedRequest`).
    ReplayedRequest,
}

impl ErrorClass {
    /// The Python class name.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorClass::MalformedAuth => "MalformedAuth",
            ErrorClass::WrongReceiver => "WrongReceiver",
            ErrorClass::StaleRequest => "StaleRequest",
            ErrorClass::BadSignature => "BadSignature",
            ErrorClass::ReplayedRequest => "ReplayedRequest",
        }
    }
}

/// A refused request. Messages are bittensor 11.3.0's, word for word, and never echo the
/// signature, the payload or any other caller-supplied value, so they are safe to return to
/// the (unauthenticated) caller.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum BtAuthError {
    /// `X-Bittensor-Version` is absent or not exactly `1`.
    #[error("missing or unsupported X-Bittensor-Version (expected '1')")]
    UnsupportedVersion,
    /// `X-Bittensor-Hotkey` is absent or empty.
    #[error("missing X-Bittensor-Hotkey")]
    MissingHotkey,
    /// `X-Bittensor-Nonce` is absent.
    #[error("missing X-Bittensor-Nonce")]
    MissingNonce,
    /// `X-Bittensor-Nonce` is not what Python's `int()` reads.
    #[error("X-Bittensor-Nonce is not a decimal integer")]
    NonceNotInteger,
    /// `X-Bittensor-Crypto` names no supported scheme.
    #[error("unsupported X-Bittensor-Crypto")]
    UnsupportedCrypto,
    /// `X-Bittensor-Signature` is absent.
    #[error("missing X-Bittensor-Signature")]
    MissingSignature,
    /// `X-Bittensor-Signature` is not hex (after an optional `0x`).
    #[error("X-Bittensor-Signature is not hex")]
    SignatureNotHex,
    /// No `X-Bittensor-Receiver`, and this verifier requires one.
    #[error("missing X-Bittensor-Receiver: this server requires receiver-bound requests")]
    MissingReceiver,
    /// `X-Bittensor-Receiver` is not this server's hotkey.
    #[error("request was signed for a different receiving hotkey")]
    OtherReceiver,
    /// The nonce is more than `max_age_s` seconds old.
    #[error("nonce is older than the {}s freshness window", format_g(*max_age_s))]
    TooOld {
        /// The window, in seconds.
        max_age_s: f64,
    },
    /// The nonce is more than `max_future_s` seconds ahead of this server's clock.
    #[error("nonce is more than {}s in the future", format_g(*max_future_s))]
    TooFarAhead {
        /// The allowed clock drift, in seconds.
        max_future_s: f64,
    },
    /// The hotkey is not an address bittensor decodes, or the signature is not 64 bytes.
    #[error("invalid hotkey address or signature encoding")]
    InvalidEncoding,
    /// The signature does not verify under the declared scheme.
    #[error("signature does not verify against the claimed hotkey")]
    BadSignature,
    /// This hotkey's nonce was already accepted inside the window.
    #[error("this nonce was already accepted from this hotkey")]
    Replayed,
    /// The replay store was full and had to forget requests at least as new as this nonce,
    /// so it cannot tell whether this one is a replay (not in Python, whose store is unbounded).
    #[error("nonce is too old for the replay window of this server: resend with a fresh nonce")]
    ReplayWindowExceeded,
}

impl BtAuthError {
    /// The Python exception class of this outcome.
    pub fn class(&self) -> ErrorClass {
        match self {
            BtAuthError::UnsupportedVersion
            | BtAuthError::MissingHotkey
            | BtAuthError::MissingNonce
            | BtAuthError::NonceNotInteger
            | BtAuthError::UnsupportedCrypto
            | BtAuthError::MissingSignature
            | BtAuthError::SignatureNotHex
            | BtAuthError::InvalidEncoding => ErrorClass::MalformedAuth,
            BtAuthError::MissingReceiver | BtAuthError::OtherReceiver => ErrorClass::WrongReceiver,
            BtAuthError::TooOld { .. } | BtAuthError::TooFarAhead { .. } => {
                ErrorClass::StaleRequest
            }
            BtAuthError::BadSignature => ErrorClass::BadSignature,
            BtAuthError::Replayed | BtAuthError::ReplayWindowExceeded => {
                ErrorClass::ReplayedRequest
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn window_messages_print_seconds_like_python() {
        assert_eq!(
            BtAuthError::TooOld { max_age_s: 10.0 }.to_string(),
            "nonce is older than the 10s freshness window"
        );
        assert_eq!(
            BtAuthError::TooFarAhead { max_future_s: 2.5 }.to_string(),
            "nonce is more than 2.5s in the future"
        );
        assert_eq!(
            BtAuthError::TooOld { max_age_s: 1e6 }.to_string(),
            "nonce is older than the 1e+06s freshness window"
        );
    }

    #[test]
    fn classes_group_outcomes_like_the_python_exceptions() {
        assert_eq!(
            BtAuthError::InvalidEncoding.class(),
            ErrorClass::MalformedAuth
        );
        assert_eq!(
            BtAuthError::MissingReceiver.class(),
            ErrorClass::WrongReceiver
        );
        assert_eq!(
            BtAuthError::TooFarAhead { max_future_s: 2.0 }.class(),
            ErrorClass::StaleRequest
        );
        assert_eq!(
            BtAuthError::ReplayWindowExceeded.class().as_str(),
            "ReplayedRequest"
        );
    }
}
