//! Helpers of the dendrite tests: fixtures, recorded HTTP messages, keys.

use std::path::PathBuf;

use prompting_keys::Keypair;

/// A file under `tests/fixtures/dendrite/`.
pub fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/dendrite")
        .join(name)
}

/// A fixture parsed as JSON.
pub fn fixture_json(name: &str) -> serde_json::Value {
    let path = fixture(name);
    let text =
        std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{} is not JSON: {e}", path.display()))
}

/// The keypair of a key in `keys.json` (`miner_hotkey`, `validator_hotkey`, `coldkey`).
pub fn key(name: &str) -> Keypair {
    let keys = fixture_json("keys.json");
    let mnemonic = keys[name]["mnemonic"].as_str().expect("mnemonic");
    let keypair = Keypair::from_mnemonic(mnemonic).expect("valid mnemonic");
    assert_eq!(
        keypair.ss58_address(),
        keys[name]["ss58"].as_str().expect("ss58")
    );
    keypair
}

pub use prompting_testkit::RawHttp;

/// The headers of a recorded message as an `http::HeaderMap`.
pub fn header_map(message: &RawHttp) -> http::HeaderMap {
    let mut map = http::HeaderMap::new();
    for (name, value) in &message.headers {
        map.append(
            http::HeaderName::from_bytes(name.as_bytes()).expect("header name"),
            http::HeaderValue::from_bytes(value.as_bytes()).expect("header value"),
        );
    }
    map
}

pub mod python_axon;
