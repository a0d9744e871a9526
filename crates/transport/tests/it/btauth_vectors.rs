//! btauth/1 against the vectors bittensor 11.3.0 recorded (`tests/fixtures/btauth.json`, a copy
//! of `../shared/vectors/btauth/btauth.json`): payload bytes, header sets, and the outcome of
//! every verification case, with the verifier's clock set to the vector's time.

use std::collections::BTreeMap;
use std::sync::Arc;

use http::{HeaderMap, HeaderName, HeaderValue, Method};
use prompting_keys::Keypair;
use prompting_transport::btauth::{
    BtAuthConfig, BtAuthError, BtAuthVerifier, HEADER_SIGNATURE, HEADER_VERSION, PayloadFields,
    Scheme, build_payload, sign_request,
};
use prompting_transport::clock::ManualClock;
use serde::Deserialize;

/// The sender of the vectors: `validator_hotkey` of `../shared/vectors/legacy/keys.json`.
const SENDER_MNEMONIC: &str =
    "letter advice cage absurd amount doctor acoustic avoid letter advice cage above";
const SECOND: i64 = 1_000_000_000;

#[derive(Debug, Deserialize)]
struct Vectors {
    bittensor_version: String,
    protocol: String,
    defaults: Defaults,
    sign_cases: Vec<SignedRequest>,
    verify_cases: VerifyCases,
}

#[derive(Debug, Deserialize)]
struct Defaults {
    max_age_s: f64,
    allowed_skew_s: f64,
}

#[derive(Debug, Clone, Deserialize)]
struct SignedRequest {
    method: String,
    path: String,
    body_utf8: String,
    nonce_ns: i64,
    sender_ss58: String,
    receiver_ss58: Option<String>,
    payload_utf8: String,
    headers: BTreeMap<String, String>,
}

#[derive(Debug, Deserialize)]
struct VerifyCases {
    request: SignedRequest,
    outcomes: BTreeMap<String, Outcome>,
}

#[derive(Debug, Deserialize)]
struct Outcome {
    ok: bool,
    caller: Option<String>,
    error: Option<String>,
    message: Option<String>,
}

fn vectors() -> Vectors {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/btauth.json");
    let text = std::fs::read_to_string(path).expect("read btauth.json");
    serde_json::from_str(&text).expect("parse btauth.json")
}

fn header_map(headers: &BTreeMap<String, String>) -> HeaderMap {
    headers
        .iter()
        .map(|(name, value)| {
            (
                HeaderName::from_bytes(name.as_bytes()).expect("header name"),
                HeaderValue::from_str(value).expect("header value"),
            )
        })
        .collect()
}

fn method(text: &str) -> Method {
    Method::from_bytes(text.as_bytes()).expect("method")
}

fn payload_of(case: &SignedRequest) -> Vec<u8> {
    build_payload(
        &PayloadFields {
            scheme: Scheme::Sr25519,
            method: &case.method,
            target: &case.path,
            nonce_ns: case.nonce_ns,
            sender: &case.sender_ss58,
            receiver: case.receiver_ss58.as_deref(),
        },
        case.body_utf8.as_bytes(),
    )
}

/// A verifier for `hotkey` with bittensor's defaults, its clock at `now_ns`.
fn verifier_at(hotkey: &str, require_receiver: bool, now_ns: i64) -> BtAuthVerifier {
    let mut config = BtAuthConfig::new(hotkey);
    config.require_receiver = require_receiver;
    BtAuthVerifier::with_clock(config, Arc::new(ManualClock::new(now_ns))).expect("config")
}

#[test]
fn the_vectors_are_btauth_1_from_bittensor_11_3_0_with_the_default_window() {
    let vectors = vectors();
    assert_eq!(vectors.bittensor_version, "11.3.0");
    assert_eq!(vectors.protocol, prompting_transport::btauth::PROTOCOL);
    let defaults = BtAuthConfig::new("");
    assert_eq!(vectors.defaults.max_age_s, defaults.max_age_s);
    assert_eq!(vectors.defaults.allowed_skew_s, defaults.max_future_s);
    assert!(!vectors.sign_cases.is_empty());
}

#[test]
fn payloads_are_byte_for_byte_bittensors() {
    let vectors = vectors();
    for case in vectors
        .sign_cases
        .iter()
        .chain([&vectors.verify_cases.request])
    {
        assert_eq!(
            String::from_utf8(payload_of(case)).expect("utf-8"),
            case.payload_utf8,
            "{} {}",
            case.method,
            case.path
        );
    }
}

#[test]
fn python_signatures_verify_here_at_their_time() {
    for case in vectors().sign_cases {
        let hotkey = case
            .receiver_ss58
            .clone()
            .unwrap_or_else(|| Keypair::from_mini_secret(&[5u8; 32]).ss58_address());
        let verifier = verifier_at(&hotkey, case.receiver_ss58.is_some(), case.nonce_ns);
        let caller = verifier
            .verify(
                &method(&case.method),
                &case.path,
                &header_map(&case.headers),
                case.body_utf8.as_bytes(),
            )
            .unwrap_or_else(|err| panic!("{} {}: {err}", case.method, case.path));
        assert_eq!(caller.hotkey, case.sender_ss58);
        assert_eq!(caller.nonce, case.nonce_ns);
        assert_eq!(caller.scheme, Scheme::Sr25519);
    }
}

#[test]
fn our_headers_match_pythons_except_the_randomized_signature() {
    let keypair = Keypair::from_mnemonic(SENDER_MNEMONIC).expect("mnemonic");
    for case in vectors().sign_cases {
        assert_eq!(keypair.ss58_address(), case.sender_ss58);
        let ours = sign_request(
            &keypair,
            &method(&case.method),
            &case.path,
            case.body_utf8.as_bytes(),
            case.receiver_ss58.as_deref(),
            case.nonce_ns,
        )
        .expect("sign");
        let theirs = header_map(&case.headers);
        let names = |headers: &HeaderMap| {
            let mut names: Vec<String> = headers.keys().map(|n| n.to_string()).collect();
            names.sort();
            names
        };
        assert_eq!(names(&ours), names(&theirs), "{}", case.path);
        for (name, value) in &theirs {
            if name.as_str() != HEADER_SIGNATURE.to_ascii_lowercase() {
                assert_eq!(ours.get(name), Some(value), "{name}");
            }
        }
        // sr25519 signatures are randomized: ours differs from Python's but verifies the same.
        let hotkey = case
            .receiver_ss58
            .clone()
            .unwrap_or_else(|| Keypair::from_mini_secret(&[5u8; 32]).ss58_address());
        let verifier = verifier_at(&hotkey, case.receiver_ss58.is_some(), case.nonce_ns);
        verifier
            .verify(
                &method(&case.method),
                &case.path,
                &ours,
                case.body_utf8.as_bytes(),
            )
            .expect("our signature verifies");
    }
}

/// Runs the verification case `name` the way the vectors describe it.
fn run_case(name: &str, request: &SignedRequest) -> Vec<Result<String, BtAuthError>> {
    let receiver = request.receiver_ss58.clone().expect("bound request");
    let nonce = request.nonce_ns;
    let mut headers = header_map(&request.headers);
    let mut body = request.body_utf8.as_bytes().to_vec();
    let mut path = request.path.clone();
    let mut hotkey = receiver.clone();
    let mut now = nonce + SECOND;
    let mut attempts = 1;
    match name {
        "valid_1s_later" | "replay_first" => {}
        "replay_second" => attempts = 2,
        "stale_11s_later" => now = nonce + 11 * SECOND,
        "from_future_3s" => now = nonce - 3 * SECOND,
        "tampered_body" => body.extend_from_slice(b" "),
        "other_path" => path = "/Other".to_owned(),
        "other_receiver" => hotkey = Keypair::from_mini_secret(&[6u8; 32]).ss58_address(),
        "missing_version" => {
            headers.remove(HEADER_VERSION);
        }
        "bad_signature_hex" => {
            headers.insert(HEADER_SIGNATURE, HeaderValue::from_static("0xnot-hex"));
        }
        "corrupted_signature" => {
            let signature = headers[HEADER_SIGNATURE]
                .to_str()
                .expect("ascii")
                .to_owned();
            let flipped = if signature.ends_with('0') { '1' } else { '0' };
            let corrupted = format!("{}{flipped}", &signature[..signature.len() - 1]);
            headers.insert(
                HEADER_SIGNATURE,
                HeaderValue::from_str(&corrupted).expect("value"),
            );
        }
        other => panic!("verification case {other:?} is not known to this test"),
    }
    let verifier = verifier_at(&hotkey, true, now);
    (0..attempts)
        .map(|_| {
            verifier
                .verify(&method(&request.method), &path, &headers, &body)
                .map(|caller| caller.hotkey)
        })
        .collect()
}

#[test]
fn every_verification_outcome_matches_bittensor() {
    let vectors = vectors();
    let cases = &vectors.verify_cases;
    assert!(cases.outcomes.len() >= 11);
    for (name, expected) in &cases.outcomes {
        let outcome = run_case(name, &cases.request)
            .pop()
            .expect("at least one attempt");
        match outcome {
            Ok(caller) => {
                assert!(expected.ok, "{name}: accepted, bittensor refused");
                assert_eq!(Some(&caller), expected.caller.as_ref(), "{name}");
            }
            Err(err) => {
                assert!(!expected.ok, "{name}: refused ({err}), bittensor accepted");
                assert_eq!(
                    Some(err.class().as_str()),
                    expected.error.as_deref(),
                    "{name}"
                );
                assert_eq!(Some(err.to_string()), expected.message, "{name}");
            }
        }
    }
}
