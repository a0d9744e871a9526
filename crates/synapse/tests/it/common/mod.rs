//! Helpers shared by the integration tests: raw HTTP messages, the v6 `Dummy` synapse,
//! and running `python3`.

use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Stdio};

use prompting_synapse::{PyStr, RequiredField, SynapseBody};
use serde::{Deserialize, Serialize};

/// A fixture file's path.
pub fn fixture(path: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(path)
}

/// A fixture file parsed as JSON.
pub fn fixture_json(path: &str) -> serde_json::Value {
    let text = std::fs::read_to_string(fixture(path)).expect("fixture exists");
    serde_json::from_str(&text).expect("fixture is JSON")
}

pub use prompting_testkit::RawHttp;

/// The headers of `message` that `Synapse.to_headers()` makes (the rest are HTTP's own).
pub fn synapse_headers(message: &RawHttp) -> Vec<(String, String)> {
    message
        .headers
        .iter()
        .filter(|(name, _)| {
            name.starts_with("bt_header_")
                || [
                    "name",
                    "timeout",
                    "header_size",
                    "total_size",
                    "computed_body_hash",
                ]
                .contains(&name.as_str())
        })
        .cloned()
        .collect()
}

fn default_text() -> String {
    "hello".to_owned()
}

fn default_items() -> Vec<i64> {
    vec![1, 2]
}

/// The v6 vectors' synapse: `input: int`, `text: str = "hello"`, `items: List[int] = [1, 2]`,
/// `output: Optional[int] = None`, `required_hash_fields = ["input", "text", "items"]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Dummy {
    pub input: i64,
    #[serde(default = "default_text")]
    pub text: String,
    #[serde(default = "default_items")]
    pub items: Vec<i64>,
    #[serde(default)]
    pub output: Option<i64>,
}

impl SynapseBody for Dummy {
    const NAME: &'static str = "Dummy";
    const HASH_FIELDS: &'static [&'static str] = &["input", "text", "items"];
    const REQUIRED_FIELDS: &'static [RequiredField] = &[RequiredField {
        name: "input",
        empty_json: "0",
    }];

    fn hash_field(&self, name: &str) -> Option<&dyn PyStr> {
        match name {
            "input" => Some(&self.input),
            "text" => Some(&self.text),
            "items" => Some(&self.items),
            "output" => Some(&self.output),
            _ => None,
        }
    }
}

/// Runs `python3 -c script` with `stdin`; returns stdout. Panics (with stderr) on failure:
/// these tests must not pass silently without Python.
pub fn python3(script: &str, stdin: &[u8]) -> String {
    let mut child = Command::new("python3")
        .arg("-c")
        .arg(script)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("python3 (CPython 3.11) must be on PATH for this test");
    child
        .stdin
        .take()
        .expect("stdin is piped")
        .write_all(stdin)
        .expect("write python3 stdin");
    let output = child.wait_with_output().expect("wait for python3");
    assert!(
        output.status.success(),
        "python3 failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).expect("python3 prints UTF-8")
}
