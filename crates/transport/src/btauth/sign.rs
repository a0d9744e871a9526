//! The client side: btauth/1 headers for a request, signed with a fresh nonce.

use std::fmt;

use http::Method;
use http::header::{HeaderMap, HeaderName, HeaderValue};
use prompting_keys::Keypair;

use super::payload::{PayloadFields, Scheme, build_payload};
use super::{HEADER_HOTKEY, HEADER_RECEIVER, HEADER_SIGNATURE, VERSION};
use crate::nonce::NonceSource;

/// A hotkey that can sign btauth/1 requests.
pub trait BtAuthKey {
    /// The scheme its signatures use.
    fn scheme(&self) -> Scheme;
    /// Its address, sent in `X-Bittensor-Hotkey` and signed.
    fn ss58_address(&self) -> String;
    /// A 64-byte signature over `payload`.
    fn sign(&self, payload: &[u8]) -> [u8; 64];
}

impl BtAuthKey for Keypair {
    fn scheme(&self) -> Scheme {
        Scheme::Sr25519
    }

    fn ss58_address(&self) -> String {
        Keypair::ss58_address(self)
    }

    fn sign(&self, payload: &[u8]) -> [u8; 64] {
        Keypair::sign(self, payload)
    }
}

/// Headers that could not be made.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BtAuthSignError {
    /// A value (the receiver, or a custom key's address) holds characters an HTTP header
    /// cannot carry, such as a line break.
    #[error("{header} cannot be sent as an HTTP header value")]
    InvalidHeaderValue {
        /// The header's wire name.
        header: &'static str,
    },
}

fn header_value(header: &'static str, text: &str) -> Result<HeaderValue, BtAuthSignError> {
    HeaderValue::from_str(text).map_err(|_| BtAuthSignError::InvalidHeaderValue { header })
}

/// The btauth/1 headers for one request (bittensor's `http_auth.sign`): `X-Bittensor-Version`,
/// `-Hotkey`, `-Nonce`, `-Signature` (`0x` + hex), `-Crypto` only for a scheme other than
/// sr25519, and `-Receiver` when `receiver` is given.
///
/// `target` must be the request target exactly as it will be sent (path plus `?query`) and
/// `body` the exact body bytes. Each request, retries included, needs a fresh `nonce_ns`
/// (see [`NonceSource`]).
pub fn sign_request<K: BtAuthKey + ?Sized>(
    key: &K,
    method: &Method,
    target: &str,
    body: &[u8],
    receiver: Option<&str>,
    nonce_ns: i64,
) -> Result<HeaderMap, BtAuthSignError> {
    let receiver_value = receiver
        .map(|receiver| header_value(HEADER_RECEIVER, receiver))
        .transpose()?;
    let scheme = key.scheme();
    let sender = key.ss58_address();
    let payload = build_payload(
        &PayloadFields {
            scheme,
            method: method.as_str(),
            target,
            nonce_ns,
            sender: &sender,
            receiver,
        },
        body,
    );
    let hotkey_value = header_value(HEADER_HOTKEY, &sender)?;
    let signature = format!("0x{}", hex::encode(key.sign(&payload)));
    let signature_value = header_value(HEADER_SIGNATURE, &signature)?;

    let mut headers = HeaderMap::with_capacity(6);
    let mut put = |name: &'static str, value: HeaderValue| {
        headers.insert(HeaderName::from_static(name), value);
    };
    put(HEADER_VERSION_LOWER, HeaderValue::from_static(VERSION));
    put(HEADER_HOTKEY_LOWER, hotkey_value);
    put(HEADER_NONCE_LOWER, HeaderValue::from(nonce_ns));
    put(HEADER_SIGNATURE_LOWER, signature_value);
    if scheme != Scheme::Sr25519 {
        put(
            HEADER_CRYPTO_LOWER,
            HeaderValue::from_static(scheme.as_str()),
        );
    }
    if let Some(value) = receiver_value {
        put(HEADER_RECEIVER_LOWER, value);
    }
    Ok(headers)
}

// `HeaderName::from_static` wants lower case; the wire names are case-insensitive.
const HEADER_VERSION_LOWER: &str = "x-bittensor-version";
const HEADER_HOTKEY_LOWER: &str = "x-bittensor-hotkey";
const HEADER_NONCE_LOWER: &str = "x-bittensor-nonce";
const HEADER_SIGNATURE_LOWER: &str = "x-bittensor-signature";
const HEADER_CRYPTO_LOWER: &str = "x-bittensor-crypto";
const HEADER_RECEIVER_LOWER: &str = "x-bittensor-receiver";

/// A hotkey with its nonce source: signs requests with fresh nonces.
pub struct BtAuthSigner<K> {
    key: K,
    nonces: NonceSource,
}

impl<K: BtAuthKey> fmt::Debug for BtAuthSigner<K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BtAuthSigner")
            .field("hotkey", &self.key.ss58_address())
            .field("nonces", &self.nonces)
            .finish()
    }
}

impl<K: BtAuthKey> BtAuthSigner<K> {
    /// A signer for `key` with nonces from `nonces`.
    pub fn new(key: K, nonces: NonceSource) -> BtAuthSigner<K> {
        BtAuthSigner { key, nonces }
    }

    /// The signing key.
    pub fn key(&self) -> &K {
        &self.key
    }

    /// [`sign_request`] with the next nonce.
    pub fn sign(
        &self,
        method: &Method,
        target: &str,
        body: &[u8],
        receiver: Option<&str>,
    ) -> Result<HeaderMap, BtAuthSignError> {
        // Nonces fit in an i64 until the year 2262.
        let nonce = i64::try_from(self.nonces.next()).unwrap_or(i64::MAX);
        sign_request(&self.key, method, target, body, receiver, nonce)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::btauth::{HEADER_CRYPTO, HEADER_NONCE, HEADER_VERSION};

    #[test]
    fn header_constants_are_the_lower_case_wire_names() {
        for (wire, lower) in [
            (HEADER_VERSION, HEADER_VERSION_LOWER),
            (HEADER_HOTKEY, HEADER_HOTKEY_LOWER),
            (HEADER_NONCE, HEADER_NONCE_LOWER),
            (HEADER_SIGNATURE, HEADER_SIGNATURE_LOWER),
            (HEADER_CRYPTO, HEADER_CRYPTO_LOWER),
            (HEADER_RECEIVER, HEADER_RECEIVER_LOWER),
        ] {
            assert_eq!(wire.to_ascii_lowercase(), lower);
        }
    }

    #[test]
    fn signers_take_a_new_nonce_for_every_request() {
        use std::sync::Arc;

        use crate::clock::ManualClock;

        let clock = Arc::new(ManualClock::new(1_000));
        let signer = BtAuthSigner::new(
            Keypair::from_mini_secret(&[1u8; 32]),
            NonceSource::with_clock(clock),
        );
        let nonces: Vec<_> = (0..3)
            .map(|_| {
                let headers = signer
                    .sign(&Method::POST, "/Prompting", b"{}", None)
                    .expect("signed");
                headers[HEADER_NONCE_LOWER]
                    .to_str()
                    .expect("ascii")
                    .to_owned()
            })
            .collect();
        assert_eq!(nonces, ["1000", "1001", "1002"]);
    }

    #[test]
    fn receivers_that_cannot_be_headers_are_refused() {
        let keypair = Keypair::from_mini_secret(&[1u8; 32]);
        assert_eq!(
            sign_request(&keypair, &Method::GET, "/", b"", Some("a\nb"), 1),
            Err(BtAuthSignError::InvalidHeaderValue {
                header: HEADER_RECEIVER
            })
        );
    }
}
