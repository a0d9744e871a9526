//! Test-only helpers: fixture paths and a tiny HTTP message splitter (the real header codec
//! lives in `prompting-synapse`; these tests must not depend on it).

use std::path::PathBuf;

/// `tests/fixtures/<relative>`.
pub fn fixture(relative: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(relative)
}

/// Reads and parses a JSON fixture.
pub fn json_fixture(relative: &str) -> serde_json::Value {
    let path = fixture(relative);
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|err| panic!("read {}: {err}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|err| panic!("parse {}: {err}", path.display()))
}

/// A raw HTTP/1.1 request or response split into start line, headers and body.
#[derive(Debug)]
pub struct HttpMessage {
    /// `POST /Prompting HTTP/1.1` or `HTTP/1.1 200 OK`.
    pub start_line: String,
    /// Header names and values in wire order.
    pub headers: Vec<(String, String)>,
    /// Everything after the blank line.
    pub body: String,
}

impl HttpMessage {
    /// Splits `raw` (CRLF or LF line endings).
    pub fn parse(raw: &str) -> HttpMessage {
        let normalized = raw.replace("\r\n", "\n");
        let (head, body) = normalized
            .split_once("\n\n")
            .unwrap_or((normalized.as_str(), ""));
        let mut lines = head.lines();
        let start_line = lines.next().unwrap_or_default().to_owned();
        let headers = lines
            .map(|line| {
                let (name, value) = line
                    .split_once(':')
                    .unwrap_or_else(|| panic!("header line without ':': {line:?}"));
                (name.trim().to_owned(), value.trim().to_owned())
            })
            .collect();
        HttpMessage {
            start_line,
            headers,
            body: body.to_owned(),
        }
    }

    /// Headers from a `{name: value}` JSON object (how some vectors store them).
    pub fn from_header_object(start_line: &str, object: &serde_json::Value) -> HttpMessage {
        let headers = object
            .as_object()
            .expect("headers object")
            .iter()
            .map(|(name, value)| {
                (
                    name.clone(),
                    value.as_str().expect("header string").to_owned(),
                )
            })
            .collect();
        HttpMessage {
            start_line: start_line.to_owned(),
            headers,
            body: String::new(),
        }
    }

    /// The value of header `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(key, _)| key.eq_ignore_ascii_case(name))
            .map(|(_, value)| value.as_str())
    }

    /// The value of header `name`, which the test requires.
    pub fn required(&self, name: &str) -> &str {
        self.header(name)
            .unwrap_or_else(|| panic!("{}: missing header {name}", self.start_line))
    }

    /// The message a dendrite signs for a request:
    /// `{nonce}.{dendrite_hotkey}.{axon_hotkey}.{uuid}.{computed_body_hash}`.
    pub fn dendrite_signed_message(&self) -> String {
        format!(
            "{}.{}.{}.{}.{}",
            self.required("bt_header_dendrite_nonce"),
            self.required("bt_header_dendrite_hotkey"),
            self.required("bt_header_axon_hotkey"),
            self.required("bt_header_dendrite_uuid"),
            self.required("computed_body_hash"),
        )
    }

    /// The message an axon signs for a response:
    /// `{axon_nonce}.{dendrite_hotkey}.{axon_hotkey}.{axon_uuid}`.
    pub fn axon_signed_message(&self) -> String {
        format!(
            "{}.{}.{}.{}",
            self.required("bt_header_axon_nonce"),
            self.required("bt_header_dendrite_hotkey"),
            self.required("bt_header_axon_hotkey"),
            self.required("bt_header_axon_uuid"),
        )
    }
}

#[test]
fn splits_start_line_headers_and_body() {
    let message = HttpMessage::parse("POST /x HTTP/1.1\r\nName: a:b\r\nempty:\r\n\r\n{\"k\": 1}");
    assert_eq!(message.start_line, "POST /x HTTP/1.1");
    assert_eq!(message.header("name"), Some("a:b"));
    assert_eq!(message.header("EMPTY"), Some(""));
    assert_eq!(message.header("missing"), None);
    assert_eq!(message.body, "{\"k\": 1}");
}
