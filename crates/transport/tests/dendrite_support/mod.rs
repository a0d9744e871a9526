//! Helpers of the dendrite tests: fixtures, recorded HTTP messages, keys.

#![allow(dead_code)]

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

/// One recorded HTTP/1.1 message.
#[derive(Debug, Clone)]
pub struct RawHttp {
    /// The request or status line.
    pub start_line: String,
    /// Headers in wire order.
    pub headers: Vec<(String, String)>,
    /// The body.
    pub body: Vec<u8>,
}

impl RawHttp {
    /// Splits a recorded message (CRLF line ends).
    pub fn parse(raw: &[u8]) -> RawHttp {
        let split = raw
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .expect("head/body separator");
        let head = std::str::from_utf8(&raw[..split]).expect("UTF-8 head");
        let mut lines = head.split("\r\n");
        let start_line = lines.next().expect("start line").to_owned();
        let headers = lines
            .map(|line| {
                let (name, value) = line.split_once(": ").expect("header line");
                (name.to_owned(), value.to_owned())
            })
            .collect();
        RawHttp {
            start_line,
            headers,
            body: raw[split + 4..].to_vec(),
        }
    }

    /// The status of a response.
    pub fn status(&self) -> u16 {
        self.start_line
            .split(' ')
            .nth(1)
            .and_then(|code| code.parse().ok())
            .expect("status line")
    }

    /// The headers as an `http::HeaderMap`.
    pub fn header_map(&self) -> http::HeaderMap {
        let mut map = http::HeaderMap::new();
        for (name, value) in &self.headers {
            map.append(
                http::HeaderName::from_bytes(name.as_bytes()).expect("header name"),
                http::HeaderValue::from_bytes(value.as_bytes()).expect("header value"),
            );
        }
        map
    }

    /// The first value of header `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

pub mod python_axon;
