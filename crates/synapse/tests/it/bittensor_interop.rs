//! Our requests and responses read by the real bittensor 10.5.0 (the pinned venv of
//! `prompting-testkit`): the Python `Prompting` class (text-prompting v2.1.6 fields) parses
//! our JSON and headers, computes the same body hash and the same headers, and
//! `Dendrite.process_server_response` reads our responses the way our `apply_response` does.

use prompting_synapse::{Prompting, Synapse, SynapseHeaders, TerminalInfo};
use prompting_testkit::{Venv, run_python};
use serde_json::{Value, json};

const SCRIPT: &str = r#"
import json, sys
from typing import List
import pydantic
import bittensor as bt
from bittensor.core.dendrite import Dendrite

class Prompting(bt.Synapse):
    required_hash_fields: List[str] = pydantic.Field(["messages"], frozen=True)
    roles: List[str] = pydantic.Field(..., frozen=True)
    messages: List[str] = pydantic.Field(..., frozen=True)
    completion: str = ""

class Response:
    def __init__(self, status, headers):
        self.status = status
        self.headers = headers

out = []
for case in json.loads(sys.stdin.buffer.read().decode("utf-8")):
    request_headers = dict(case["request_headers"])
    body = json.loads(case["request_body"])
    sent = Prompting(**body)
    python_headers = {k: v for k, v in sent.to_headers().items() if k != "total_size"}
    received = Prompting.from_headers(request_headers)
    d = received.dendrite
    message = f"{d.nonce}.{d.hotkey}.{case['axon_hotkey']}.{d.uuid}.{received.computed_body_hash}"
    local = Prompting(**body)
    response_body = json.loads(case["response_body"])
    Dendrite.process_server_response(
        None, Response(case["status"], dict(case["response_headers"])), response_body, local)
    out.append({
        "body_hash": sent.body_hash,
        "headers": python_headers,
        "dendrite": received.dendrite.model_dump(),
        "axon": received.axon.model_dump(),
        "timeout": received.timeout,
        "signing_message": message,
        "client": {
            "completion": local.completion,
            "messages": local.messages,
            "dendrite": local.dendrite.model_dump(),
            "axon": local.axon.model_dump(),
        },
    })
print(json.dumps(out))
"#;

const AXON_HOTKEY: &str = "5EHgWw2Af1pnoc7f1A8bfmM97W3DAYW8xr82RfhLL9oAabAe";

fn request(messages: &[&str], timeout: f64) -> Synapse<Prompting> {
    let mut synapse = Synapse::new(Prompting::new(
        messages.iter().map(|_| "user".to_string()).collect(),
        messages.iter().map(|m| m.to_string()).collect(),
    ));
    synapse.timeout = timeout;
    synapse.dendrite = TerminalInfo {
        ip: Some("10.1.2.3".into()),
        version: Some(10005000),
        nonce: Some(1_795_303_299_506_817_297),
        uuid: Some("49c892ca-e602-11f1-86a3-02fc00000001".into()),
        hotkey: Some("5EtaiguVmKZ9Vewv7HkS86hWTS8Lf4twTSADg29PH5rM5Wng".into()),
        signature: Some("0xabcdef".into()),
        ..TerminalInfo::default()
    };
    synapse.axon = TerminalInfo {
        ip: Some("127.0.0.1".into()),
        port: Some(8091),
        hotkey: Some(AXON_HOTKEY.into()),
        ..TerminalInfo::default()
    };
    synapse
}

/// Messages, timeout, and the axon's error (status code, message) if it refuses.
type Input = (&'static [&'static str], f64, Option<(u16, &'static str)>);

struct Case {
    sent: Synapse<Prompting>,
    request_headers: Vec<(String, String)>,
    request_body: String,
    status: u16,
    response_headers: Vec<(String, String)>,
    response_body: String,
}

fn cases() -> Vec<Case> {
    let inputs: [Input; 5] = [
        (&["What is the capital of France?"], 12.0, None),
        (&["é 🙂 \"quoted\" it's\nnewline", "tab\there"], 5.0, None),
        (
            &["bell\u{7} \u{85} \u{200b} \u{e0001}", "back\\slash", ""],
            0.5,
            None,
        ),
        (
            &[],
            30.25,
            Some((403, "Forbidden. Key is blacklisted: not registered.")),
        ),
        (&["x"], 1.0, Some((500, "Internal Server Error #2831e035"))),
    ];
    inputs
        .into_iter()
        .map(|(messages, timeout, error)| {
            let mut sent = request(messages, timeout);
            let request = sent.to_request();
            // The axon's side: parse what was sent, answer.
            let headers = SynapseHeaders::parse(request.headers.iter().map(|(n, v)| (n, v)))
                .expect("our headers parse");
            let mut answer =
                Synapse::<Prompting>::from_request(&headers, request.body.as_bytes()).unwrap();
            answer.dendrite.port = Some(40512);
            answer.axon.version = Some(10005000);
            answer.axon.nonce = Some(1_795_303_299_600_000_000);
            answer.axon.uuid = Some("4890ded0-e602-11f1-86a3-02fc00000001".into());
            answer.axon.signature = Some("0x1234".into());
            answer.axon.process_time = Some(5.698204040527344e-05);
            match error {
                None => answer.body.completion = format!("echo: {}", messages.join("|")),
                Some((code, message)) => {
                    answer.axon.status_code = Some(code);
                    answer.axon.status_message = Some(message.into());
                }
            }
            let response = answer.to_response();
            Case {
                sent,
                request_headers: request.headers,
                request_body: request.body,
                status: response.status,
                response_headers: response.headers,
                response_body: response.body,
            }
        })
        .collect()
}

#[test]
fn bittensor_10_5_reads_our_requests_and_responses() {
    let cases = cases();
    let input: Vec<Value> = cases
        .iter()
        .map(|c| {
            json!({
                "request_headers": c.request_headers,
                "request_body": c.request_body,
                "axon_hotkey": AXON_HOTKEY,
                "status": c.status,
                "response_headers": c.response_headers,
                "response_body": c.response_body,
            })
        })
        .collect();
    let output = run_python(
        Venv::Bt10,
        SCRIPT,
        &[],
        serde_json::to_string(&input).unwrap().as_bytes(),
    );
    let python: Vec<Value> = serde_json::from_slice(&output.stdout).expect("python JSON");
    assert_eq!(python.len(), cases.len());

    for (case, python) in cases.iter().zip(&python) {
        let label = &case.sent.body.messages;
        assert_eq!(python["body_hash"], case.sent.body_hash(), "{label:?}");

        let ours: serde_json::Map<String, Value> = case
            .request_headers
            .iter()
            .filter(|(name, _)| name != "total_size")
            .map(|(n, v)| (n.clone(), Value::String(v.clone())))
            .collect();
        assert_eq!(python["headers"], Value::Object(ours), "{label:?}");

        let dendrite: TerminalInfo = serde_json::from_value(python["dendrite"].clone()).unwrap();
        assert_eq!(dendrite, case.sent.dendrite, "{label:?}");
        let axon: TerminalInfo = serde_json::from_value(python["axon"].clone()).unwrap();
        assert_eq!(axon, case.sent.axon, "{label:?}");
        assert_eq!(python["timeout"], case.sent.timeout, "{label:?}");

        let mut received = case.sent.clone();
        received.computed_body_hash = case.sent.body_hash();
        assert_eq!(
            python["signing_message"],
            received.request_signing_message(AXON_HOTKEY),
            "{label:?}"
        );

        // The dendrite's view after the response, ours vs Python's.
        let mut local = case.sent.clone();
        let headers =
            SynapseHeaders::parse(case.response_headers.iter().map(|(n, v)| (n, v))).unwrap();
        local
            .apply_response(case.status, &headers, case.response_body.as_bytes())
            .unwrap();
        let client = &python["client"];
        assert_eq!(client["completion"], local.body.completion, "{label:?}");
        assert_eq!(client["messages"], json!(local.body.messages), "{label:?}");
        let py_dendrite: TerminalInfo = serde_json::from_value(client["dendrite"].clone()).unwrap();
        assert_eq!(py_dendrite, local.dendrite, "{label:?}");
        let py_axon: TerminalInfo = serde_json::from_value(client["axon"].clone()).unwrap();
        assert_eq!(py_axon, local.axon, "{label:?}");
    }
}
