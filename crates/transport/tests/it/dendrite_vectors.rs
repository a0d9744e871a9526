//! The dendrite against recordings of the real Python bittensor: the requests a 10.5
//! `Dendrite` sent (headers, order, body, signature) and the client view of every recorded
//! axon response (10.5, 6.12.4, 6.4.4).

use crate::dendrite_support;

use std::sync::Arc;
use std::time::Duration;

use dendrite_support::{RawHttp, fixture, fixture_json, header_map, key};
use prompting_keys::Keypair;
use prompting_synapse::{
    Prompting, PyStr, RequiredField, Synapse, SynapseBody, python_repr::float_repr,
};
use prompting_transport::clock::ManualClock;
use prompting_transport::dendrite::response::{RawResponse, read_response, verify_axon_signature};
use prompting_transport::dendrite::{AxonTarget, CallFailure, Dendrite, DendriteResponse};
use serde::de::{self, MapAccess, SeqAccess, Visitor};
use serde::{Deserialize, Deserializer, Serialize};
use serde_json::Value;

const AXON_PORT: u16 = 18392;

fn exchanges() -> Value {
    fixture_json("exchanges.json")
}

fn recorded(value: &Value) -> RawHttp {
    RawHttp::parse(value.as_str().expect("recorded message").as_bytes())
}

fn miner_target() -> AxonTarget {
    AxonTarget::new(
        format!("127.0.0.1:{AXON_PORT}").parse().expect("addr"),
        key("miner_hotkey").ss58_address(),
    )
}

/// The keys of a JSON document in document order, nested ones as `outer.inner`.
struct KeyOrder(Vec<String>);

impl<'de> Deserialize<'de> for KeyOrder {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(KeyOrderVisitor)
    }
}

struct KeyOrderVisitor;

impl<'de> Visitor<'de> for KeyOrderVisitor {
    type Value = KeyOrder;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("JSON")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<KeyOrder, A::Error> {
        let mut keys = Vec::new();
        while let Some(key) = map.next_key::<String>()? {
            let inner: KeyOrder = map.next_value()?;
            keys.extend(inner.0.iter().map(|k| format!("{key}.{k}")));
            keys.insert(keys.len() - inner.0.len(), key);
        }
        Ok(KeyOrder(keys))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<KeyOrder, A::Error> {
        while seq.next_element::<de::IgnoredAny>()?.is_some() {}
        Ok(KeyOrder(Vec::new()))
    }

    fn visit_unit<E>(self) -> Result<KeyOrder, E> {
        Ok(KeyOrder(Vec::new()))
    }
    fn visit_bool<E>(self, _: bool) -> Result<KeyOrder, E> {
        Ok(KeyOrder(Vec::new()))
    }
    fn visit_i64<E>(self, _: i64) -> Result<KeyOrder, E> {
        Ok(KeyOrder(Vec::new()))
    }
    fn visit_u64<E>(self, _: u64) -> Result<KeyOrder, E> {
        Ok(KeyOrder(Vec::new()))
    }
    fn visit_f64<E>(self, _: f64) -> Result<KeyOrder, E> {
        Ok(KeyOrder(Vec::new()))
    }
    fn visit_str<E>(self, _: &str) -> Result<KeyOrder, E> {
        Ok(KeyOrder(Vec::new()))
    }
}

fn key_order(json: &[u8]) -> Vec<String> {
    serde_json::from_slice::<KeyOrder>(json).expect("JSON").0
}

/// Builds, with our dendrite, the request Python recorded: same keys, uuid, nonce, target,
/// timeout and messages.
fn rebuild(python: &RawHttp) -> (Dendrite, Synapse<Prompting>, Vec<(String, String)>, String) {
    let body: Value = serde_json::from_slice(&python.body).expect("JSON body");
    let hotkey = python.header("bt_header_dendrite_hotkey").expect("hotkey");
    let keypair = [key("validator_hotkey"), key("coldkey")]
        .into_iter()
        .find(|k| k.ss58_address() == hotkey)
        .expect("a known dendrite key");
    let nonce: i64 = python
        .header("bt_header_dendrite_nonce")
        .and_then(|n| n.parse().ok())
        .expect("nonce");
    let dendrite = Dendrite::builder(keypair)
        .uuid(python.header("bt_header_dendrite_uuid").expect("uuid"))
        .external_ip(python.header("bt_header_dendrite_ip").expect("ip"))
        .clock(Arc::new(ManualClock::new(nonce)))
        .build()
        .expect("dendrite");
    let strings = |field: &str| -> Vec<String> {
        serde_json::from_value(body[field].clone()).expect("list of strings")
    };
    let mut synapse = Synapse::new(Prompting::new(strings("roles"), strings("messages")));
    let timeout = body["timeout"].as_f64().expect("timeout");
    let request = dendrite.prepare(
        &miner_target(),
        &mut synapse,
        Duration::from_secs_f64(timeout),
    );
    assert_eq!(
        request.url,
        format!("http://127.0.0.1:{AXON_PORT}/Prompting")
    );
    (dendrite, synapse, request.headers, request.body)
}

/// Headers aiohttp adds on its own (not the synapse's).
const AIOHTTP_HEADERS: [&str; 5] = [
    "Host",
    "Accept",
    "Accept-Encoding",
    "User-Agent",
    "Content-Length",
];

#[test]
fn requests_match_what_python_sent() {
    for (index, exchange) in exchanges()["exchanges"]
        .as_array()
        .expect("exchanges")
        .iter()
        .enumerate()
    {
        let python = recorded(&exchange["request"]);
        assert_eq!(python.start_line, "POST /Prompting HTTP/1.1");
        let (dendrite, synapse, ours, body) = rebuild(&python);

        let theirs: Vec<&(String, String)> = python
            .headers
            .iter()
            .filter(|(name, _)| !AIOHTTP_HEADERS.contains(&name.as_str()))
            .collect();
        let names = |headers: &[&(String, String)]| -> Vec<String> {
            headers.iter().map(|(n, _)| n.clone()).collect()
        };
        let ours_ref: Vec<&(String, String)> = ours.iter().collect();
        assert_eq!(
            names(&ours_ref),
            names(&theirs),
            "exchange {index}: header order"
        );
        for ((name, mine), (_, python_value)) in ours.iter().zip(theirs) {
            match name.as_str() {
                // Randomized signatures: ours must verify instead (below).
                "bt_header_dendrite_signature" => {}
                // Python's get_size() estimate; ours is the body length (no Python code reads it).
                "total_size" => assert!(mine.parse::<u64>().is_ok()),
                _ => assert_eq!(mine, python_value, "exchange {index}: header {name}"),
            }
        }

        // The signature covers what Python signs, with the body hash Python computed.
        let signed = format!(
            "{}.{}.{}.{}.{}",
            python.header("bt_header_dendrite_nonce").expect("nonce"),
            dendrite.hotkey(),
            miner_target().hotkey,
            dendrite.uuid(),
            python.header("computed_body_hash").expect("hash"),
        );
        let signature = synapse.dendrite.signature.as_deref().expect("signed");
        assert!(
            prompting_keys::verify_hex(dendrite.hotkey(), signed.as_bytes(), signature)
                .expect("well-formed"),
            "exchange {index}: signature"
        );

        // The body: the same fields in the same order, the same values.
        let mut ours_json: Value = serde_json::from_str(&body).expect("our body is JSON");
        let mut python_json: Value = serde_json::from_slice(&python.body).expect("JSON");
        assert_eq!(
            key_order(body.as_bytes()),
            key_order(&python.body),
            "exchange {index}: body field order"
        );
        for json in [&mut ours_json, &mut python_json] {
            json["total_size"] = Value::Null;
            json["dendrite"]["signature"] = Value::Null;
        }
        assert_eq!(ours_json, python_json, "exchange {index}: body");
    }
}

/// Reads a recorded 10.5 response to the recorded request it answers.
fn client_view_of(request: &RawHttp, response: &RawHttp) -> DendriteResponse<Prompting> {
    let (_, mut synapse, _, _) = rebuild(request);
    let raw = RawResponse {
        status: response.status(),
        headers: header_map(response),
        body: response.body.clone(),
        url: format!("http://127.0.0.1:{AXON_PORT}/Prompting"),
    };
    read_response(&mut synapse, &raw).expect("a readable response");
    DendriteResponse::answered(synapse, raw.status, &miner_target().hotkey, Duration::ZERO)
}

#[test]
fn responses_of_bittensor_10_5_give_pythons_client_view() {
    let exchanges = exchanges();
    for name in ["success", "unicode", "forward_error", "blacklisted"] {
        let result = &exchanges["results"][name];
        let index = result["exchange_index"].as_u64().expect("index") as usize;
        let exchange = &exchanges["exchanges"][index];
        let view = &result["client_view"];
        let response = client_view_of(
            &recorded(&exchange["request"]),
            &recorded(&exchange["response"]),
        );
        assert_eq!(
            Some(u64::from(response.status_code)),
            view["dendrite.status_code"].as_u64(),
            "{name}"
        );
        assert_eq!(
            Some(response.status_message.as_str()),
            view["dendrite.status_message"].as_str(),
            "{name}"
        );
        assert_eq!(
            response.synapse.axon.status_code.map(u64::from),
            view["axon.status_code"].as_u64(),
            "{name}"
        );
        assert_eq!(
            response.synapse.axon.status_message.as_deref(),
            view["axon.status_message"].as_str(),
            "{name}"
        );
        assert_eq!(
            Some(response.synapse.body.completion.as_str()),
            view["completion"].as_str(),
            "{name}"
        );
        // 10.5 signs its error responses, not its successes.
        let expected_signature = if response.status_code == 200 {
            None
        } else {
            Some(true)
        };
        assert_eq!(
            response.axon_signature_verified, expected_signature,
            "{name}"
        );
    }
}

#[test]
fn client_timeout_message_is_pythons() {
    let exchanges = exchanges();
    let view = &exchanges["results"]["timeout"]["client_view"];
    let request = recorded(&exchanges["exchanges"][3]["request"]);
    let (_, synapse, _, _) = rebuild(&request);
    let failure = CallFailure::Timeout {
        seconds: synapse.timeout,
    };
    let response = DendriteResponse::from_failure(synapse, failure);
    assert_eq!(
        Some(u64::from(response.status_code)),
        view["dendrite.status_code"].as_u64()
    );
    assert_eq!(
        Some(response.status_message.as_str()),
        view["dendrite.status_message"].as_str()
    );
    assert_eq!(response.synapse.axon.status_code, None);
    assert_eq!(response.synapse.body.completion, "");
    assert_eq!(float_repr(response.synapse.timeout), "1.0");
}

#[test]
fn raw_replays_of_10_5_read_with_the_axons_status() {
    let exchanges = exchanges();
    let results = &exchanges["results"];
    let cases = [
        ("fresh_unaltered", 200),
        ("signed_for_other_axon", 200),
        ("tampered_body", 500),
        ("corrupted_signature", 401),
    ];
    for (name, status) in cases {
        let response = recorded(&results[name]["response"]);
        let view = client_view_of(&recorded(&results[name]["request"]), &response);
        assert_eq!(view.status_code, status, "{name}");
        assert_eq!(
            Some(view.status_message.as_str()),
            response.header("bt_header_axon_status_message"),
            "{name}"
        );
    }
    // The replayed success request: refused for its nonce.
    let replay = recorded(&results["replayed_success_request"]["response"]);
    let view = client_view_of(&recorded(&exchanges["exchanges"][0]["request"]), &replay);
    assert_eq!(view.status_code, 401);
    assert!(
        view.status_message
            .starts_with("Not Verified with error: Nonce is too old"),
        "{}",
        view.status_message
    );
}

#[test]
fn a_tampered_axon_signature_does_not_verify() {
    let exchanges = exchanges();
    let exchange = &exchanges["exchanges"][4];
    let mut view = client_view_of(
        &recorded(&exchange["request"]),
        &recorded(&exchange["response"]),
    );
    assert_eq!(view.axon_signature_verified, Some(true));
    let target = miner_target();
    // Another axon's hotkey, another nonce, a malformed signature: all refused.
    let other = key("validator_hotkey").ss58_address();
    assert_eq!(verify_axon_signature(&view.synapse, &other), Some(false));
    view.synapse.axon.nonce = view.synapse.axon.nonce.map(|n| n + 1);
    assert_eq!(
        verify_axon_signature(&view.synapse, &target.hotkey),
        Some(false)
    );
    view.synapse.axon.signature = Some("0x1234".into());
    assert_eq!(
        verify_axon_signature(&view.synapse, &target.hotkey),
        Some(false)
    );
    view.synapse.axon.signature = None;
    assert_eq!(verify_axon_signature(&view.synapse, &target.hotkey), None);
}

/// The v6 vectors' synapse: `class Dummy(bt.Synapse): input: int; text: str = "hello";
/// items: List[int] = [1, 2]; output: Optional[int] = None;
/// required_hash_fields = ["input", "text", "items"]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Dummy {
    input: i64,
    #[serde(default = "hello")]
    text: String,
    #[serde(default = "one_two")]
    items: Vec<i64>,
    #[serde(default)]
    output: Option<i64>,
}

fn hello() -> String {
    "hello".into()
}

fn one_two() -> Vec<i64> {
    vec![1, 2]
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
            _ => None,
        }
    }
}

fn dummy_request() -> Synapse<Dummy> {
    Synapse::new(Dummy {
        input: 21,
        text: hello(),
        items: one_two(),
        output: None,
    })
}

/// One case of `raw_errors_v6.*.json` as an HTTP response.
fn v6_case(case: &Value) -> RawResponse {
    let mut headers = http::HeaderMap::new();
    let mut add = |name: &'static str, field: &str| {
        if let Some(value) = case[field].as_str() {
            headers.insert(name, value.parse().expect("header value"));
        }
    };
    add("content-type", "content_type");
    add("bt_header_axon_status_code", "bt_header_axon_status_code");
    add(
        "bt_header_axon_status_message",
        "bt_header_axon_status_message",
    );
    let mut body = case["body"].as_str().expect("body").to_owned();
    if serde_json::from_str::<Value>(&body).is_err() && body.chars().count() == RECORDED_BODY_CHARS
    {
        // Cut by the recording: a 6.5+ error body is `{"message": <the header's message>}`
        // (compact), which the recorded prefix must begin.
        let message = case["bt_header_axon_status_message"]
            .as_str()
            .expect("message");
        let whole = serde_json::json!({ "message": message }).to_string();
        assert!(
            whole.starts_with(&body),
            "{body} is not a prefix of {whole}"
        );
        body = whole;
    }
    RawResponse {
        status: case["http_status"].as_u64().expect("status") as u16,
        headers,
        body: body.into_bytes(),
        url: "http://127.0.0.1:18092/Dummy".into(),
    }
}

/// `raw_errors_v6.*.json` keep the first 400 characters of each body.
const RECORDED_BODY_CHARS: usize = 400;

#[test]
fn error_responses_of_6_4_4_and_6_12_4_give_the_axons_status() {
    for file in ["raw_errors_v6.4.4.json", "raw_errors_v6.12.4.json"] {
        let cases = fixture_json(file);
        for (name, case) in cases.as_object().expect("cases") {
            if name == "success" {
                // Recorded with its body cut at 400 characters; the whole 6.4.4 success
                // response is `response_raw_200.http` (see `signed_6_4_4_responses_verify`).
                continue;
            }
            let raw = v6_case(case);
            let mut synapse = dummy_request();
            let outcome = read_response(&mut synapse, &raw);
            let is_text = case["content_type"]
                .as_str()
                .is_some_and(|t| t.starts_with("text/plain"));
            if is_text {
                // 6.4.4's starlette "Internal Server Error" page: aiohttp refuses the JSON decode.
                let failure = outcome.expect_err("not JSON");
                let response = DendriteResponse::from_failure(synapse, failure);
                assert_eq!(response.status_code, 422, "{file} {name}");
                assert_eq!(
                    response.status_message,
                    "Failed to parse response: 500, message='Attempt to decode JSON with \
                     unexpected mimetype: text/plain; charset=utf-8', \
                     url='http://127.0.0.1:18092/Dummy'",
                    "{file} {name}"
                );
                continue;
            }
            outcome.unwrap_or_else(|e| panic!("{file} {name}: {e}"));
            assert_eq!(synapse.body.output, None, "{file} {name}");
            let response = DendriteResponse::answered(synapse, raw.status, "5Axon", Duration::ZERO);
            let code: u16 = case["bt_header_axon_status_code"]
                .as_str()
                .and_then(|c| c.parse().ok())
                .expect("code header");
            // Python's client view: the header's code and message, whatever the HTTP status
            // (6.4.4: always 500; a FastAPI 422 for a non-JSON body carries "200 Success").
            assert_eq!(response.status_code, code, "{file} {name}");
            assert_eq!(
                Some(response.status_message.as_str()),
                case["bt_header_axon_status_message"].as_str(),
                "{file} {name}"
            );
        }
    }
}

#[test]
fn signed_6_4_4_responses_verify() {
    let axon = Keypair::from_mini_secret(&[2; 32]);
    for (file, status, message) in [
        ("response_raw_200.http", 200, "Success"),
        (
            "response_raw_replay.http",
            401,
            "Not Verified with error: Nonce is too small",
        ),
    ] {
        let bytes = std::fs::read(fixture(file)).expect("fixture");
        let recorded = RawHttp::parse(&bytes);
        let mut synapse = dummy_request();
        synapse.dendrite.hotkey = recorded.header("bt_header_dendrite_hotkey").map(Into::into);
        let raw = RawResponse {
            status: recorded.status(),
            headers: header_map(&recorded),
            body: recorded.body.clone(),
            url: "http://127.0.0.1:18092/Dummy".into(),
        };
        read_response(&mut synapse, &raw).expect("readable");
        let response =
            DendriteResponse::answered(synapse, raw.status, &axon.ss58_address(), Duration::ZERO);
        assert_eq!(response.status_code, status, "{file}");
        assert_eq!(response.status_message, message, "{file}");
        assert_eq!(response.axon_signature_verified, Some(true), "{file}");
        let expected_output = (status == 200).then_some(42);
        assert_eq!(response.synapse.body.output, expected_output, "{file}");
    }
}
