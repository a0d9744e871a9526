//! Verifier behaviour beyond the recorded vectors: every refusal, in order, and the edges of
//! the window and of the replay store.

use std::sync::Arc;

use ed25519_dalek::Signer;
use http::{HeaderMap, HeaderValue, Method};
use prompting_keys::{Keypair, PublicKey, ss58};

use super::*;
use crate::clock::ManualClock;

const NOW: i64 = 1_795_300_000_000_000_000;
const SECOND: i64 = 1_000_000_000;
const BODY: &[u8] = br#"{"roles": ["user"], "messages": ["hi"]}"#;

struct Ed25519Key(ed25519_dalek::SigningKey);

impl BtAuthKey for Ed25519Key {
    fn scheme(&self) -> Scheme {
        Scheme::Ed25519
    }
    fn ss58_address(&self) -> String {
        ss58::encode(self.0.verifying_key().as_bytes(), 42)
    }
    fn sign(&self, payload: &[u8]) -> [u8; 64] {
        self.0.sign(payload).to_bytes()
    }
}

/// A key that signs with another address than its own (a custom prefix, or garbage).
struct Renamed<'a>(&'a Keypair, String);

impl BtAuthKey for Renamed<'_> {
    fn scheme(&self) -> Scheme {
        Scheme::Sr25519
    }
    fn ss58_address(&self) -> String {
        self.1.clone()
    }
    fn sign(&self, payload: &[u8]) -> [u8; 64] {
        self.0.sign(payload)
    }
}

fn sender() -> Keypair {
    Keypair::from_mini_secret(&[1u8; 32])
}

fn server_hotkey() -> String {
    Keypair::from_mini_secret(&[2u8; 32]).ss58_address()
}

fn verifier_with(config: BtAuthConfig) -> (BtAuthVerifier, Arc<ManualClock>) {
    let clock = Arc::new(ManualClock::new(NOW));
    let verifier = BtAuthVerifier::with_clock(config, clock.clone()).expect("valid config");
    (verifier, clock)
}

fn default_verifier() -> (BtAuthVerifier, Arc<ManualClock>) {
    verifier_with(BtAuthConfig::new(server_hotkey()))
}

fn signed(nonce: i64) -> HeaderMap {
    sign_request(
        &sender(),
        &Method::POST,
        "/Prompting",
        BODY,
        Some(&server_hotkey()),
        nonce,
    )
    .expect("sign")
}

fn check(verifier: &BtAuthVerifier, headers: &HeaderMap) -> Result<VerifiedCaller, BtAuthError> {
    verifier.verify(&Method::POST, "/Prompting", headers, BODY)
}

fn set(headers: &mut HeaderMap, name: &str, value: &str) {
    let name = http::HeaderName::from_bytes(name.as_bytes()).expect("name");
    headers.insert(name, HeaderValue::from_str(value).expect("value"));
}

fn remove(headers: &mut HeaderMap, name: &str) {
    headers.remove(name);
}

#[test]
fn a_signed_request_verifies_and_names_its_sender() {
    let (verifier, _) = default_verifier();
    let caller = check(&verifier, &signed(NOW)).expect("valid");
    assert_eq!(caller.hotkey, sender().ss58_address());
    assert_eq!(caller.public_key, sender().public_key());
    assert_eq!(caller.scheme, Scheme::Sr25519);
    assert_eq!(caller.nonce, NOW);
}

#[test]
fn signed_headers_have_the_wire_names_and_no_default_crypto() {
    let headers = signed(NOW);
    let names: Vec<&str> = headers.keys().map(|name| name.as_str()).collect();
    assert_eq!(
        names,
        [
            "x-bittensor-version",
            "x-bittensor-hotkey",
            "x-bittensor-nonce",
            "x-bittensor-signature",
            "x-bittensor-receiver",
        ]
    );
    let signature = headers[HEADER_SIGNATURE].to_str().expect("ascii");
    assert!(signature.starts_with("0x") && signature.len() == 130);
    assert_eq!(headers[HEADER_NONCE], NOW.to_string().as_str());
}

#[test]
fn ed25519_requests_declare_their_scheme_and_verify_under_it_only() {
    let key = Ed25519Key(ed25519_dalek::SigningKey::from_bytes(&[3u8; 32]));
    let hotkey = server_hotkey();
    let mut headers =
        sign_request(&key, &Method::GET, "/v1/models", b"", Some(&hotkey), NOW).expect("sign");
    assert_eq!(headers[HEADER_CRYPTO], "ed25519");
    let (verifier, _) = default_verifier();
    let caller = verifier
        .verify(&Method::GET, "/v1/models", &headers, b"")
        .expect("valid ed25519");
    assert_eq!(caller.scheme, Scheme::Ed25519);
    // Declared as sr25519 (the default), the same signature is not tried as ed25519.
    remove(&mut headers, HEADER_CRYPTO);
    assert_eq!(
        verifier.verify(&Method::GET, "/v1/models", &headers, b""),
        Err(BtAuthError::BadSignature)
    );
    // And an sr25519 signature declared as ed25519 fails too.
    let mut sr = signed(NOW + 1);
    set(&mut sr, HEADER_CRYPTO, "ed25519");
    assert_eq!(check(&verifier, &sr), Err(BtAuthError::BadSignature));
    // The numeric crypto type and any case are read like bittensor reads them.
    let mut numeric = signed(NOW + 2);
    set(&mut numeric, HEADER_CRYPTO, " SR25519 ");
    assert!(check(&verifier, &numeric).is_ok());
    let mut numeric = signed(NOW + 3);
    set(&mut numeric, HEADER_CRYPTO, "1");
    assert!(check(&verifier, &numeric).is_ok());
    let mut unknown = signed(NOW + 4);
    set(&mut unknown, HEADER_CRYPTO, "ecdsa");
    assert_eq!(
        check(&verifier, &unknown),
        Err(BtAuthError::UnsupportedCrypto)
    );
}

#[test]
fn header_shape_errors_come_first_in_bittensors_order() {
    let (verifier, _) = default_verifier();
    let base = signed(NOW - 60 * SECOND);
    let cases: [(&str, Option<&str>, BtAuthError); 10] = [
        (HEADER_VERSION, None, BtAuthError::UnsupportedVersion),
        (HEADER_VERSION, Some("2"), BtAuthError::UnsupportedVersion),
        (HEADER_VERSION, Some(" 1"), BtAuthError::UnsupportedVersion),
        (HEADER_HOTKEY, None, BtAuthError::MissingHotkey),
        (HEADER_HOTKEY, Some(""), BtAuthError::MissingHotkey),
        (HEADER_NONCE, None, BtAuthError::MissingNonce),
        (HEADER_NONCE, Some("12.5"), BtAuthError::NonceNotInteger),
        (HEADER_CRYPTO, Some(""), BtAuthError::UnsupportedCrypto),
        (HEADER_SIGNATURE, None, BtAuthError::MissingSignature),
        (HEADER_SIGNATURE, Some("0X00"), BtAuthError::SignatureNotHex),
    ];
    for (name, value, expected) in cases {
        let mut headers = base.clone();
        // The receiver is also wrong and the nonce stale: shape is checked before both.
        set(&mut headers, HEADER_RECEIVER, "someone else");
        match value {
            Some(value) => set(&mut headers, name, value),
            None => remove(&mut headers, name),
        }
        assert_eq!(
            check(&verifier, &headers),
            Err(expected),
            "{name}={value:?}"
        );
    }
}

#[test]
fn the_receiver_must_be_this_server() {
    let (verifier, _) = default_verifier();
    let mut headers = signed(NOW - 60 * SECOND);
    remove(&mut headers, HEADER_RECEIVER);
    // Receiver before freshness.
    assert_eq!(
        check(&verifier, &headers),
        Err(BtAuthError::MissingReceiver)
    );
    let other = sign_request(
        &sender(),
        &Method::POST,
        "/Prompting",
        BODY,
        Some(&sender().ss58_address()),
        NOW,
    )
    .expect("sign");
    assert_eq!(check(&verifier, &other), Err(BtAuthError::OtherReceiver));
}

#[test]
fn unbound_requests_pass_only_when_receivers_are_optional() {
    let mut config = BtAuthConfig::new(server_hotkey());
    config.require_receiver = false;
    let (verifier, _) = verifier_with(config);
    let unbound =
        sign_request(&sender(), &Method::POST, "/Prompting", BODY, None, NOW).expect("sign");
    assert!(check(&verifier, &unbound).is_ok());
    // A receiver that is present must still match, even an empty one.
    let empty = sign_request(
        &sender(),
        &Method::POST,
        "/Prompting",
        BODY,
        Some(""),
        NOW + 1,
    )
    .expect("sign");
    assert_eq!(check(&verifier, &empty), Err(BtAuthError::OtherReceiver));
    let (strict, _) = default_verifier();
    assert_eq!(check(&strict, &unbound), Err(BtAuthError::MissingReceiver));
}

#[test]
fn the_window_is_inclusive_to_the_nanosecond() {
    let (verifier, clock) = default_verifier();
    let oldest = NOW - 10 * SECOND;
    assert!(check(&verifier, &signed(oldest)).is_ok());
    assert_eq!(
        check(&verifier, &signed(oldest - 1)),
        Err(BtAuthError::TooOld { max_age_s: 10.0 })
    );
    let newest = NOW + 2 * SECOND;
    assert!(check(&verifier, &signed(newest)).is_ok());
    assert_eq!(
        check(&verifier, &signed(newest + 1)),
        Err(BtAuthError::TooFarAhead { max_future_s: 2.0 })
    );
    clock.set_now_ns(newest + 1 + 2 * SECOND);
    assert!(check(&verifier, &signed(newest + 1)).is_ok());
}

#[test]
fn nonces_are_read_like_python_ints() {
    let (verifier, _) = default_verifier();
    // Signed over the canonical decimal; sent with a sign, zeros and underscores.
    let mut headers = signed(NOW);
    let sent = format!("+00{}_{}", &NOW.to_string()[..4], &NOW.to_string()[4..]);
    set(&mut headers, HEADER_NONCE, &sent);
    assert_eq!(check(&verifier, &headers).map(|c| c.nonce), Ok(NOW));
    for (nonce, expected) in [
        (
            "9".repeat(80),
            BtAuthError::TooFarAhead { max_future_s: 2.0 },
        ),
        (
            format!("-{}", "9".repeat(80)),
            BtAuthError::TooOld { max_age_s: 10.0 },
        ),
        ("-1".to_owned(), BtAuthError::TooOld { max_age_s: 10.0 }),
        ("1".repeat(4301), BtAuthError::NonceNotInteger),
        ("0x10".to_owned(), BtAuthError::NonceNotInteger),
    ] {
        let mut headers = signed(NOW + 1);
        set(&mut headers, HEADER_NONCE, &nonce);
        assert_eq!(check(&verifier, &headers), Err(expected));
    }
}

#[test]
fn encoding_errors_come_after_freshness() {
    let (verifier, _) = default_verifier();
    let mut short = signed(NOW);
    set(&mut short, HEADER_SIGNATURE, "0x1234");
    assert_eq!(check(&verifier, &short), Err(BtAuthError::InvalidEncoding));
    let mut empty = signed(NOW);
    set(&mut empty, HEADER_SIGNATURE, "0x");
    assert_eq!(check(&verifier, &empty), Err(BtAuthError::InvalidEncoding));
    let mut stale = signed(NOW - 11 * SECOND);
    set(&mut stale, HEADER_SIGNATURE, "0x1234");
    assert_eq!(
        check(&verifier, &stale),
        Err(BtAuthError::TooOld { max_age_s: 10.0 })
    );
    // Spaces between byte pairs and upper case are hex to Python too.
    let mut spaced = signed(NOW + 1);
    let signature = spaced[HEADER_SIGNATURE].to_str().expect("ascii").to_owned();
    let spaced_signature = format!("0x{} {}", &signature[2..66], signature[66..].to_uppercase());
    set(&mut spaced, HEADER_SIGNATURE, &spaced_signature);
    assert!(check(&verifier, &spaced).is_ok());
}

#[test]
fn sender_addresses_are_decoded_like_bittensor() {
    let (verifier, _) = default_verifier();
    let keypair = sender();
    let hotkey = server_hotkey();
    let sign_as = |address: String, nonce: i64| {
        sign_request(
            &Renamed(&keypair, address),
            &Method::POST,
            "/Prompting",
            BODY,
            Some(&hotkey),
            nonce,
        )
        .expect("sign")
    };
    let account = keypair.public_key().0;
    // A registered prefix (Polkadot, 0): accepted, reported as sent.
    let polkadot = ss58::encode(&account, 0);
    let caller = check(&verifier, &sign_as(polkadot.clone(), NOW)).expect("prefix 0");
    assert_eq!(caller.hotkey, polkadot);
    assert_eq!(caller.public_key, PublicKey(account));
    // An unregistered or reserved prefix, or no address at all: malformed.
    for address in [
        ss58::encode(&account, 64),
        ss58::encode(&account, 46),
        "not-an-address".to_owned(),
    ] {
        assert_eq!(
            check(&verifier, &sign_as(address.clone(), NOW + 1)),
            Err(BtAuthError::InvalidEncoding),
            "{address}"
        );
    }
}

#[test]
fn signatures_cover_method_target_body_and_addresses() {
    let (verifier, _) = default_verifier();
    let headers = signed(NOW);
    let bad = Err(BtAuthError::BadSignature);
    assert_eq!(
        verifier.verify(&Method::PUT, "/Prompting", &headers, BODY),
        bad
    );
    assert_eq!(
        verifier.verify(&Method::POST, "/Prompting?x=1", &headers, BODY),
        bad
    );
    assert_eq!(
        verifier.verify(&Method::POST, "/Prompting", &headers, b"{}"),
        bad
    );
    let mut other_sender = headers.clone();
    set(
        &mut other_sender,
        HEADER_HOTKEY,
        &Keypair::from_mini_secret(&[9u8; 32]).ss58_address(),
    );
    assert_eq!(check(&verifier, &other_sender), bad);
    // The method is upper-cased before signing, as Python does.
    let lower = Method::from_bytes(b"post").expect("extension method");
    assert!(
        verifier
            .verify(&lower, "/Prompting", &headers, BODY)
            .is_ok()
    );
}

#[test]
fn a_signature_over_the_bytes_wrapped_payload_verifies() {
    let (verifier, _) = default_verifier();
    let keypair = sender();
    let hotkey = server_hotkey();
    let fields = PayloadFields {
        scheme: Scheme::Sr25519,
        method: "POST",
        target: "/Prompting",
        nonce_ns: NOW,
        sender: &keypair.ss58_address(),
        receiver: Some(&hotkey),
    };
    let mut wrapped = b"<Bytes>".to_vec();
    wrapped.extend(build_payload(&fields, BODY));
    wrapped.extend(b"</Bytes>");
    let mut headers = signed(NOW);
    set(&mut headers, HEADER_SIGNATURE, &keypair.sign_hex(&wrapped));
    assert!(check(&verifier, &headers).is_ok());
}

#[test]
fn the_last_of_repeated_headers_counts() {
    let (verifier, _) = default_verifier();
    let mut headers = signed(NOW);
    let good = headers[HEADER_SIGNATURE].clone();
    headers.insert(HEADER_SIGNATURE, HeaderValue::from_static("0xzz"));
    headers.append(HEADER_SIGNATURE, good);
    assert!(check(&verifier, &headers).is_ok());
}

#[test]
fn replays_are_refused_and_failures_do_not_poison_the_store() {
    let (verifier, clock) = default_verifier();
    let headers = signed(NOW);
    // A forged request reusing the nonce is refused without being remembered...
    let mut forged = headers.clone();
    set(
        &mut forged,
        HEADER_SIGNATURE,
        &format!("0x{}", "00".repeat(64)),
    );
    assert_eq!(check(&verifier, &forged), Err(BtAuthError::BadSignature));
    // ...so the real one still passes, once.
    assert!(check(&verifier, &headers).is_ok());
    assert_eq!(check(&verifier, &headers), Err(BtAuthError::Replayed));
    clock.advance_ns(5 * SECOND as u64);
    assert_eq!(check(&verifier, &headers), Err(BtAuthError::Replayed));
    // Past the window the replay is stale (the store may have forgotten it by then).
    clock.advance_ns(6 * SECOND as u64);
    assert_eq!(
        check(&verifier, &headers),
        Err(BtAuthError::TooOld { max_age_s: 10.0 })
    );
}

#[test]
fn a_full_replay_store_refuses_what_it_forgot() {
    let mut config = BtAuthConfig::new(server_hotkey());
    config.replay_capacity = 2;
    let (verifier, _) = verifier_with(config);
    for nonce in [NOW, NOW + 1, NOW + 2] {
        assert!(check(&verifier, &signed(nonce)).is_ok());
    }
    assert_eq!(
        check(&verifier, &signed(NOW)),
        Err(BtAuthError::ReplayWindowExceeded)
    );
    assert_eq!(
        check(&verifier, &signed(NOW + 2)),
        Err(BtAuthError::Replayed)
    );
    assert!(check(&verifier, &signed(NOW + 3)).is_ok());
}

#[test]
fn messages_never_echo_caller_input() {
    let (verifier, _) = default_verifier();
    let headers = signed(NOW);
    let signature = headers[HEADER_SIGNATURE]
        .to_str()
        .expect("ascii")
        .to_owned();
    let mut refusals = Vec::new();
    for (name, value) in [
        (HEADER_NONCE, "x1795"),
        (HEADER_CRYPTO, "sr25519-evil"),
        (HEADER_SIGNATURE, "0xevil"),
        (HEADER_RECEIVER, "5Evil"),
        (HEADER_HOTKEY, "5Evil"),
    ] {
        let mut variant = headers.clone();
        set(&mut variant, name, value);
        refusals.push(check(&verifier, &variant).expect_err("refused").to_string());
    }
    refusals.push(
        verifier
            .verify(&Method::POST, "/evil", &headers, BODY)
            .expect_err("refused")
            .to_string(),
    );
    for message in refusals {
        for secret in [signature.as_str(), "evil", "Evil", "x1795", "/Prompting"] {
            assert!(!message.contains(secret), "{message:?} echoes {secret:?}");
        }
    }
}

#[test]
fn nonsense_configurations_are_refused() {
    let clock = Arc::new(ManualClock::new(NOW));
    let build = |config: BtAuthConfig| BtAuthVerifier::with_clock(config, clock.clone()).err();
    assert_eq!(
        build(BtAuthConfig::new("not-an-address")),
        Some(BtAuthConfigError::InvalidHotkey("not-an-address".into()))
    );
    for (max_age_s, max_future_s) in [(-1.0, 2.0), (10.0, f64::NAN), (f64::INFINITY, 2.0)] {
        let mut config = BtAuthConfig::new(server_hotkey());
        config.max_age_s = max_age_s;
        config.max_future_s = max_future_s;
        assert!(matches!(
            build(config),
            Some(BtAuthConfigError::InvalidWindow { .. })
        ));
    }
    let mut config = BtAuthConfig::new(server_hotkey());
    config.replay_capacity = 0;
    assert_eq!(build(config), Some(BtAuthConfigError::ZeroReplayCapacity));
    let mut config = BtAuthConfig::new(server_hotkey());
    config.replay_capacity_per_key = 0;
    assert_eq!(
        build(config),
        Some(BtAuthConfigError::ZeroReplayCapacityPerKey)
    );
    let mut config = BtAuthConfig::new(server_hotkey());
    config.max_age_s = 0.0;
    config.max_future_s = 0.0;
    assert_eq!(build(config), None);
}
