//! Error types for keys and addresses.

use thiserror::Error;

/// Why an SS58 address could not be decoded or encoded.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum Ss58Error {
    /// The text is not valid base58 (bitcoin alphabet).
    #[error("invalid SS58 address: not base58 ({0})")]
    InvalidBase58(String),
    /// The decoded bytes have a length that no 32-byte account address can have.
    #[error(
        "invalid SS58 address: decodes to {0} bytes, expected 35 (one-byte prefix) or 36 (two-byte prefix)"
    )]
    InvalidLength(usize),
    /// The first byte is in the range SS58 reserves (128..=255).
    #[error("invalid SS58 address: reserved prefix byte {0:#04x}")]
    ReservedPrefix(u8),
    /// A prefix above 16383 cannot be encoded.
    #[error("SS58 prefix {0} is out of range (0..=16383)")]
    PrefixOutOfRange(u16),
    /// The blake2b `SS58PRE` checksum does not match the payload.
    #[error("invalid SS58 address: bad checksum")]
    BadChecksum,
}

/// Why a key, a signature or its text form could not be used.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum KeyError {
    /// The mnemonic is not a valid English BIP-39 phrase.
    #[error("invalid mnemonic: {0}")]
    InvalidMnemonic(String),
    /// The 64-byte secret key is not a valid sr25519 expanded secret.
    #[error("invalid sr25519 secret key: {0}")]
    InvalidSecretKey(String),
    /// A hex string could not be decoded.
    #[error("invalid hex in {what}: {reason}")]
    InvalidHex {
        /// What was being decoded (e.g. "signature").
        what: &'static str,
        /// The decoder's complaint.
        reason: String,
    },
    /// A decoded value has the wrong number of bytes.
    #[error("invalid {what}: {actual} bytes, expected {expected}")]
    InvalidLength {
        /// What was being decoded (e.g. "signature").
        what: &'static str,
        /// The number of bytes required.
        expected: usize,
        /// The number of bytes found.
        actual: usize,
    },
    /// An SS58 address could not be decoded.
    #[error(transparent)]
    Ss58(#[from] Ss58Error),
}
