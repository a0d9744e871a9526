//! The client side: btauth/1 headers for a request, and nonces for them.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};

use http::Method;
use http::header::{HeaderMap, HeaderName, HeaderValue};
use prompting_keys::Keypair;

use super::clock::{BtAuthClock, SystemClock};
use super::payload::{PayloadFields, Scheme, build_payload};
use super::{HEADER_HOTKEY, HEADER_RECEIVER, HEADER_SIGNATURE, VERSION};

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

/// Nonces for signed requests: the wall clock in nanoseconds, made strictly increasing so two
/// requests signed in the same nanosecond (or across a clock step back) never share one.
pub struct NonceSource {
    last: AtomicI64,
    clock: Arc<dyn BtAuthClock>,
}

impl fmt::Debug for NonceSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NonceSource")
            .field("last", &self.last.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

impl Default for NonceSource {
    fn default() -> Self {
        NonceSource::new()
    }
}

impl NonceSource {
    /// Nonces from the system clock.
    pub fn new() -> NonceSource {
        NonceSource::with_clock(Arc::new(SystemClock))
    }

    /// Nonces from `clock`.
    pub fn with_clock(clock: Arc<dyn BtAuthClock>) -> NonceSource {
        NonceSource {
            last: AtomicI64::new(i64::MIN),
            clock,
        }
    }

    /// The next nonce: the current time, or one more than the previous nonce if the clock has
    /// not moved past it.
    pub fn next_nonce(&self) -> i64 {
        let now = self.clock.now_ns();
        let previous = self
            .last
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |last| {
                Some(now.max(last.saturating_add(1)))
            })
            .unwrap_or_else(|last| last);
        now.max(previous.saturating_add(1))
    }
}

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
        sign_request(
            &self.key,
            method,
            target,
            body,
            receiver,
            self.nonces.next_nonce(),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::btauth::{HEADER_CRYPTO, HEADER_NONCE, HEADER_VERSION, ManualClock};

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
    fn nonces_follow_the_clock_and_never_repeat() {
        let clock = Arc::new(ManualClock::new(1_000));
        let nonces = NonceSource::with_clock(clock.clone());
        assert_eq!(nonces.next_nonce(), 1_000);
        assert_eq!(nonces.next_nonce(), 1_001);
        assert_eq!(nonces.next_nonce(), 1_002);
        clock.set_now_ns(5_000);
        assert_eq!(nonces.next_nonce(), 5_000);
        clock.set_now_ns(10);
        assert_eq!(nonces.next_nonce(), 5_001);
    }

    #[test]
    fn nonces_are_unique_across_threads() {
        let nonces = Arc::new(NonceSource::with_clock(Arc::new(ManualClock::new(7))));
        let handles: Vec<_> = (0..4)
            .map(|_| {
                let nonces = Arc::clone(&nonces);
                std::thread::spawn(move || {
                    (0..500).map(|_| nonces.next_nonce()).collect::<Vec<_>>()
                })
            })
            .collect();
        let mut all: Vec<i64> = handles
            .into_iter()
            .flat_map(|handle| handle.join().expect("thread"))
            .collect();
        all.sort_unstable();
        all.dedup();
        assert_eq!(all.len(), 2_000);
        assert_eq!(all.first(), Some(&7));
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
