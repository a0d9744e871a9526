//! The signed bytes of btauth/1 and the signature schemes.

use std::fmt;

use sha2::{Digest, Sha256};

use super::{NO_RECEIVER, PROTOCOL};

/// A signature scheme of btauth/1, named in `X-Bittensor-Crypto` (absent: sr25519).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Scheme {
    /// Schnorrkel sr25519 with signing context `substrate` (bittensor crypto type 1).
    #[default]
    Sr25519,
    /// Ed25519 (bittensor crypto type 0).
    Ed25519,
}

impl Scheme {
    /// The canonical name, as signed in the payload and sent in `X-Bittensor-Crypto`.
    pub fn as_str(self) -> &'static str {
        match self {
            Scheme::Sr25519 => "sr25519",
            Scheme::Ed25519 => "ed25519",
        }
    }

    /// Bittensor's numeric crypto type (`CRYPTO_ED25519` = 0, `CRYPTO_SR25519` = 1).
    pub fn crypto_type(self) -> u8 {
        match self {
            Scheme::Ed25519 => 0,
            Scheme::Sr25519 => 1,
        }
    }

    /// Reads an `X-Bittensor-Crypto` value as bittensor's `parse_crypto_type` does: surrounding
    /// whitespace and case are ignored, and the numeric crypto types `0`/`1` (leading zeros
    /// allowed) are accepted too. `None` for anything else.
    pub fn parse(value: &str) -> Option<Scheme> {
        let normalized = value
            .trim_matches(|c: char| c.is_whitespace() || ('\u{1c}'..='\u{1f}').contains(&c))
            .to_lowercase();
        match normalized.as_str() {
            "sr25519" => return Some(Scheme::Sr25519),
            "ed25519" => return Some(Scheme::Ed25519),
            _ => {}
        }
        let digits = normalized.as_bytes();
        // `int()` refuses more than 4300 digits, even when they are leading zeros.
        if digits.is_empty() || digits.len() > 4300 || !digits.iter().all(u8::is_ascii_digit) {
            return None;
        }
        match normalized.trim_start_matches('0') {
            "" => Some(Scheme::Ed25519),
            "1" => Some(Scheme::Sr25519),
            _ => None,
        }
    }
}

impl fmt::Display for Scheme {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Lowercase hex of the sha256 of the raw body bytes.
pub fn body_sha256_hex(body: &[u8]) -> String {
    hex::encode(Sha256::digest(body))
}

/// What a btauth/1 signature covers, besides the body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PayloadFields<'a> {
    /// The signature scheme.
    pub scheme: Scheme,
    /// The HTTP method (upper-cased in the payload).
    pub method: &'a str,
    /// The request target exactly as sent: path plus `?query`.
    pub target: &'a str,
    /// The nonce, nanoseconds since the Unix epoch.
    pub nonce_ns: i64,
    /// The sender's hotkey address.
    pub sender: &'a str,
    /// The receiver's hotkey address; `None` or empty signs `-` (not bound to a receiver).
    pub receiver: Option<&'a str>,
}

/// The exact bytes that are signed (bittensor's `http_auth.build_payload`): the UTF-8 lines
/// `btauth/1`, scheme, upper-case method, request target, `sha256(body)` in lowercase hex,
/// decimal nonce, sender address and receiver address (or `-`), joined by `\n` with no
/// trailing newline.
pub fn build_payload(fields: &PayloadFields<'_>, body: &[u8]) -> Vec<u8> {
    let receiver = match fields.receiver {
        Some(receiver) if !receiver.is_empty() => receiver,
        _ => NO_RECEIVER,
    };
    let nonce = fields.nonce_ns.to_string();
    let lines = [
        PROTOCOL,
        fields.scheme.as_str(),
        &fields.method.to_uppercase(),
        fields.target,
        &body_sha256_hex(body),
        &nonce,
        fields.sender,
        receiver,
    ];
    lines.join("\n").into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crypto_header_values_parse_like_bittensor() {
        let cases = [
            ("sr25519", Some(Scheme::Sr25519)),
            (" SR25519\t", Some(Scheme::Sr25519)),
            ("Ed25519", Some(Scheme::Ed25519)),
            ("1", Some(Scheme::Sr25519)),
            ("0", Some(Scheme::Ed25519)),
            ("0001", Some(Scheme::Sr25519)),
            ("000", Some(Scheme::Ed25519)),
            ("\u{a0}0\u{85}", Some(Scheme::Ed25519)),
            ("2", None),
            ("ecdsa", None),
            ("", None),
            ("sr 25519", None),
            ("²", None),
            ("-1", None),
        ];
        for (value, scheme) in cases {
            assert_eq!(Scheme::parse(value), scheme, "{value:?}");
        }
        assert_eq!(Scheme::parse(&"0".repeat(4301)), None);
        assert_eq!(Scheme::parse(&"0".repeat(4300)), Some(Scheme::Ed25519));
    }

    #[test]
    fn empty_receiver_signs_the_placeholder() {
        let mut fields = PayloadFields {
            scheme: Scheme::Ed25519,
            method: "get",
            target: "/x",
            nonce_ns: 5,
            sender: "a",
            receiver: Some(""),
        };
        let expected = "btauth/1\ned25519\nGET\n/x\n\
            e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855\n5\na\n-";
        assert_eq!(build_payload(&fields, b""), expected.as_bytes());
        fields.receiver = None;
        assert_eq!(build_payload(&fields, b""), expected.as_bytes());
    }
}
