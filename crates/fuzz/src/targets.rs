//! The fuzz targets: every parser of outsider bytes, each with the invariants it must keep.
//!
//! | name | what | invariant beyond "no panic" |
//! | --- | --- | --- |
//! | `bt_headers` | `bt_header_*` decoder ([`SynapseHeaders::parse`]) | headers a synapse writes from what parsed parse again |
//! | `synapse_body` | synapse JSON body ([`Synapse::from_request`]) | `to_json` of what parsed parses to the same body hash |
//! | `btauth` | btauth/1 header set and payload ([`BtAuthVerifier::verify`]) | only the signed seed verifies, once |
//! | `openai_request` | OpenAI chat request JSON ([`ChatRequest`]) | none |
//! | `sse` | SSE parser of upstream streams ([`SseParser`]) | the same bytes in other chunks give the same events |
//! | `grpc_request` | gRPC `PromptRequest` (protobuf) and `grpc-timeout` | a decoded message re-encodes and decodes to itself |
//! | `body_hash` | Python-repr body hash | equal to CPython's wherever CPython computes one |

use std::sync::Arc;

use http::{HeaderMap, HeaderName, HeaderValue, Method};
use prompting_keys::Keypair;
use prompting_openai_backend::sse::{SseEvent, SseParser};
use prompting_synapse::{Prompting, PyStr, StreamPrompting, Synapse, SynapseHeaders, body_hash_of};
use prompting_transport::btauth::{BtAuthConfig, BtAuthVerifier, sign_request};
use prompting_transport::clock::ManualClock;
use prompting_transport::deadline::{budget, parse_grpc_timeout};
use prompting_transport::grpc::proto;
use prompting_transport::openai::schema::ChatRequest;
use prost::Message;

use crate::pyhash::CPython;
use crate::{Outcome, Target, label};

/// Every target's name, in the order `scripts/fuzz.sh all` runs them.
pub const NAMES: [&str; 7] = [
    "bt_headers",
    "synapse_body",
    "btauth",
    "openai_request",
    "sse",
    "grpc_request",
    "body_hash",
];

/// The target called `name`; `python` is the interpreter `body_hash` compares with.
pub fn by_name(name: &str, python: &str) -> Option<Box<dyn Target>> {
    Some(match name {
        "bt_headers" => Box::new(BtHeaders),
        "synapse_body" => Box::new(SynapseBody),
        "btauth" => Box::new(BtAuth::new()),
        "openai_request" => Box::new(OpenAiRequest),
        "sse" => Box::new(Sse),
        "grpc_request" => Box::new(GrpcRequest),
        "body_hash" => Box::new(BodyHash::new(python)),
        _ => return None,
    })
}

fn tokens(list: &[&str]) -> Vec<Vec<u8>> {
    list.iter().map(|t| t.as_bytes().to_vec()).collect()
}

/// `name: value` lines (split at the first `:`) as header pairs.
fn header_lines(input: &[u8]) -> Vec<(String, Vec<u8>)> {
    input
        .split(|&b| b == b'\n')
        .filter_map(|line| {
            let colon = line.iter().position(|&b| b == b':')?;
            let name = String::from_utf8_lossy(&line[..colon]).into_owned();
            let mut value = &line[colon + 1..];
            while value.first() == Some(&b' ') {
                value = &value[1..];
            }
            Some((name, value.to_vec()))
        })
        .collect()
}

const HEADER_SEED: &str = "name: Prompting\ntimeout: 12.0\ntotal_size: 1234\nheader_size: 0\n\
computed_body_hash: a7ffc6f8bf1ed76651c14756a061d662f580ff4de43b49fa82d80a4b80f8434a\n\
bt_header_dendrite_ip: 127.0.0.1\nbt_header_dendrite_port: 8091\n\
bt_header_dendrite_version: 1005000\nbt_header_dendrite_nonce: 1733000000000000000\n\
bt_header_dendrite_uuid: 1b4e28ba-2fa1-11d2-883f-0016d3cca427\n\
bt_header_dendrite_hotkey: 5GrwvaEF5zXb26Fz9rcQpDWS57CtERHpNehXCPcNoHGKutQY\n\
bt_header_dendrite_signature: 0xdeadbeef\n\
bt_header_axon_ip: 127.0.0.1\nbt_header_axon_port: 8091\n\
bt_header_axon_hotkey: 5FHneW46xGXgs5mUiveU4sbTyGBzmstUspZC92UhjJM694ty\n\
bt_header_axon_status_code: 200\nbt_header_axon_process_time: 0.5\n\
bt_header_input_obj_messages: W10=\n";

const HEADER_TOKENS: &[&str] = &[
    "bt_header_dendrite_",
    "bt_header_axon_",
    "bt_header_input_obj_",
    "nonce",
    "version",
    "timeout",
    "status_code",
    "process_time",
    "port",
    "ip",
    "uuid",
    "hotkey",
    "signature",
    "computed_body_hash",
    "total_size",
    "header_size",
    "name",
    "::",
    ": ",
    "\n",
    "None",
    "inf",
    "nan",
    "1e500",
    "-5",
    "W10=",
    "=",
];

/// `bt_header_*` and the synapse's other headers, as the legacy axon reads them.
struct BtHeaders;

impl Target for BtHeaders {
    fn name(&self) -> &'static str {
        "bt_headers"
    }
    fn seeds(&self) -> Vec<Vec<u8>> {
        vec![
            HEADER_SEED.as_bytes().to_vec(),
            b"timeout: 1e-3\nbt_header_dendrite_nonce: 18446744073709551615\n".to_vec(),
        ]
    }
    fn dictionary(&self) -> Vec<Vec<u8>> {
        tokens(HEADER_TOKENS)
    }
    fn run(&mut self, input: &[u8]) -> Outcome {
        let pairs = header_lines(input);
        match SynapseHeaders::parse(pairs.iter().map(|(n, v)| (n.as_str(), v.as_slice()))) {
            Err(err) => Ok(label(&format!("err {}", error_kind(&err.to_string())))),
            Ok(parsed) => {
                // What a synapse built from these headers writes must parse again.
                let mut synapse = Synapse::new(Prompting::default());
                synapse.apply_headers(&parsed);
                let written = synapse.to_headers();
                if let Err(err) =
                    SynapseHeaders::parse(written.iter().map(|(n, v)| (n.as_str(), v.as_bytes())))
                {
                    return Err(format!(
                        "headers written from parsed ones do not parse: {err} ({written:?})"
                    ));
                }
                let mut fields: Vec<&str> = pairs.iter().map(|(n, _)| n.as_str()).collect();
                fields.sort_unstable();
                fields.dedup();
                Ok(label(&format!("ok {}", fields.len())))
            }
        }
    }
}

/// The first words of an error message (its kind, without the values).
fn error_kind(message: &str) -> String {
    message
        .split_whitespace()
        .take(4)
        .collect::<Vec<_>>()
        .join(" ")
}

const BODY_SEED: &str = r#"{"name": "Prompting", "timeout": 12.0, "total_size": 0, "header_size": 0, "dendrite": {"status_code": null, "status_message": null, "process_time": null, "ip": "127.0.0.1", "port": null, "version": 1005000, "nonce": 1733000000000000000, "uuid": "u", "hotkey": "5Grw", "signature": "0x00"}, "axon": {}, "computed_body_hash": "", "required_hash_fields": ["messages"], "roles": ["system", "user"], "messages": ["You are helpful.", "it's \"quoted\" \u00e9\n"], "completion": ""}"#;

const JSON_TOKENS: &[&str] = &[
    "\"roles\"",
    "\"messages\"",
    "\"completion\"",
    "\"timeout\"",
    "\"dendrite\"",
    "\"axon\"",
    "\"nonce\"",
    "\"status_code\"",
    "\"required_hash_fields\"",
    "\"model\"",
    "\"content\"",
    "\"role\"",
    "\"type\"",
    "\"text\"",
    "\"stream\"",
    "\"max_tokens\"",
    "\"temperature\"",
    ":",
    ",",
    "[",
    "]",
    "{",
    "}",
    "\"",
    "\\\"",
    "\\u00e9",
    "\\ud83d\\ude00",
    "\\ud800",
    "null",
    "true",
    "1e400",
    "-0.0",
    "\u{0378}",
    "\u{00ad}",
    "\u{200b}",
    "\u{1f600}",
];

/// The legacy synapse JSON body, as both synapses read it.
struct SynapseBody;

impl Target for SynapseBody {
    fn name(&self) -> &'static str {
        "synapse_body"
    }
    fn seeds(&self) -> Vec<Vec<u8>> {
        vec![
            BODY_SEED.as_bytes().to_vec(),
            br#"{"roles":["user"],"messages":["hi"]}"#.to_vec(),
        ]
    }
    fn dictionary(&self) -> Vec<Vec<u8>> {
        tokens(JSON_TOKENS)
    }
    fn run(&mut self, input: &[u8]) -> Outcome {
        let headers = SynapseHeaders::default();
        let plain = round_trip::<Prompting>(&headers, input)?;
        let stream = round_trip::<StreamPrompting>(&headers, input)?;
        Ok(label(&format!("{plain} {stream}")))
    }
}

/// Parses `input` as a `B` synapse; what parsed must survive `to_json` with its hash.
fn round_trip<B: prompting_synapse::SynapseBody>(
    headers: &SynapseHeaders,
    input: &[u8],
) -> Result<String, String> {
    match Synapse::<B>::from_request(headers, input) {
        Err(err) => Ok(format!("err {}", error_kind(&err.to_string()))),
        Ok(synapse) => {
            let hash = synapse.body_hash();
            let json = synapse.to_json();
            match Synapse::<B>::from_json(json.as_bytes()) {
                Err(err) => Err(format!("to_json of a parsed body does not parse: {err}")),
                Ok(again) if again.body_hash() != hash => {
                    Err("to_json of a parsed body changes its hash".to_owned())
                }
                Ok(_) => Ok("ok".to_owned()),
            }
        }
    }
}

/// Validator (sender) and miner (receiver) keys of the test vectors.
const SENDER_MNEMONIC: &str =
    "letter advice cage absurd amount doctor acoustic avoid letter advice cage above";
const RECEIVER_MNEMONIC: &str =
    "legal winner thank year wave sausage worth useful legal winner thank yellow";
/// The verifier's clock: a fixed time.
const NOW_NS: i64 = 1_764_000_000_000_000_000;

/// btauth/1: the request line, the header set and the body, through the whole verifier
/// (header shape, receiver, freshness, payload, signature, replay store).
struct BtAuth {
    verifier: BtAuthVerifier,
    seed: Vec<u8>,
    /// Inputs that verified (only the seed may, and only once).
    verified: u64,
}

impl BtAuth {
    fn new() -> BtAuth {
        let sender = Keypair::from_mnemonic(SENDER_MNEMONIC).expect("test vector mnemonic");
        let receiver = Keypair::from_mnemonic(RECEIVER_MNEMONIC)
            .expect("test vector mnemonic")
            .ss58_address();
        let body = br#"{"roles":["user"],"messages":["hi"]}"#;
        let headers = sign_request(
            &sender,
            &Method::POST,
            "/Prompting",
            body,
            Some(&receiver),
            NOW_NS,
        )
        .expect("sign the seed");
        let mut seed = b"POST /Prompting\n".to_vec();
        for (name, value) in &headers {
            seed.extend_from_slice(name.as_str().as_bytes());
            seed.extend_from_slice(b": ");
            seed.extend_from_slice(value.as_bytes());
            seed.push(b'\n');
        }
        seed.push(b'\n');
        seed.extend_from_slice(body);
        let verifier = BtAuthVerifier::with_clock(
            BtAuthConfig::new(receiver),
            Arc::new(ManualClock::new(NOW_NS)),
        )
        .expect("receiver is a valid hotkey");
        BtAuth {
            verifier,
            seed,
            verified: 0,
        }
    }
}

impl Target for BtAuth {
    fn name(&self) -> &'static str {
        "btauth"
    }
    fn seeds(&self) -> Vec<Vec<u8>> {
        vec![self.seed.clone()]
    }
    fn dictionary(&self) -> Vec<Vec<u8>> {
        tokens(&[
            "x-bittensor-",
            "version",
            "hotkey",
            "nonce",
            "signature",
            "crypto",
            "receiver",
            "btauth/1",
            "sr25519",
            "ed25519",
            "0x",
            "\n\n",
            ": ",
            "1764000000000000000",
            "1763999990000000000",
            "-1764000000000000000",
            "GET",
            "POST",
            "/Prompting?a=b",
            "%2F",
        ])
    }
    fn run(&mut self, input: &[u8]) -> Outcome {
        // "METHOD TARGET\n" headers "\n\n" body
        let (head, body) = match input.windows(2).position(|w| w == b"\n\n") {
            Some(at) => (&input[..at], &input[at + 2..]),
            None => (input, &[][..]),
        };
        let mut lines = head.splitn(2, |&b| b == b'\n');
        let request_line = lines.next().unwrap_or_default();
        let mut parts = request_line.splitn(2, |&b| b == b' ');
        let method = Method::from_bytes(parts.next().unwrap_or_default())
            .map_err(|_| ())
            .unwrap_or(Method::POST);
        let target = String::from_utf8_lossy(parts.next().unwrap_or(b"/")).into_owned();
        let mut headers = HeaderMap::new();
        for (name, value) in header_lines(lines.next().unwrap_or_default()) {
            // Only what an HTTP server would hand over.
            if let (Ok(name), Ok(value)) = (
                HeaderName::from_bytes(name.as_bytes()),
                HeaderValue::from_bytes(&value),
            ) {
                headers.append(name, value);
            }
        }
        match self.verifier.verify(&method, &target, &headers, body) {
            Ok(_) => {
                self.verified += 1;
                if self.verified > 1 {
                    return Err(format!(
                        "a second request verified (replay or forgery): {:?}",
                        String::from_utf8_lossy(input)
                    ));
                }
                Ok(label("verified"))
            }
            Err(err) => Ok(label(&format!("{:?}", err.class()))),
        }
    }
    fn notes(&self) -> Vec<String> {
        vec![format!("requests verified: {}", self.verified)]
    }
}

/// The OpenAI-compatible route's request JSON.
struct OpenAiRequest;

impl Target for OpenAiRequest {
    fn name(&self) -> &'static str {
        "openai_request"
    }
    fn seeds(&self) -> Vec<Vec<u8>> {
        vec![
            br#"{"model":"m","messages":[{"role":"system","content":"be brief"},{"role":"user","content":[{"type":"text","text":"hi"},{"type":"text","text":" there"}]}],"max_tokens":16,"temperature":0.5,"top_p":0.9,"stream":true,"timeout":12}"#.to_vec(),
            br#"{"messages":[{"role":"user","content":"x"}],"max_completion_tokens":4294967295}"#.to_vec(),
        ]
    }
    fn dictionary(&self) -> Vec<Vec<u8>> {
        tokens(JSON_TOKENS)
    }
    fn run(&mut self, input: &[u8]) -> Outcome {
        match serde_json::from_slice::<ChatRequest>(input) {
            Err(err) => Ok(label(&format!("err {:?}", err.classify()))),
            Ok(request) => {
                let mut texts = 0;
                for message in &request.messages {
                    if message.content.text().is_ok() {
                        texts += 1;
                    }
                }
                let _ = budget(request.timeout, 300.0);
                Ok(label(&format!(
                    "ok {} {} {}",
                    request.messages.len().min(4),
                    texts.min(4),
                    request.stream
                )))
            }
        }
    }
}

/// The SSE parser of upstream streams: whole, and cut into chunks.
struct Sse;

/// Events until the end, or `Err` at the first error.
fn sse_events(limit: usize, chunks: &[&[u8]]) -> Result<Vec<SseEvent>, String> {
    let mut parser = SseParser::with_limit(limit);
    let mut events = Vec::new();
    for chunk in chunks {
        events.extend(parser.push(chunk).map_err(|e| e.to_string())?);
    }
    events.extend(parser.finish().map_err(|e| e.to_string())?);
    Ok(events)
}

impl Target for Sse {
    fn name(&self) -> &'static str {
        "sse"
    }
    fn seeds(&self) -> Vec<Vec<u8>> {
        vec![
            b"\x40data: {\"choices\":[{\"delta\":{\"content\":\"Hel\"}}]}\n\n: keep-alive\r\n\r\nevent: message\rid: 7\rdata: lo\rdata: x\r\rdata: [DONE]".to_vec(),
            b"\x08\xef\xbb\xbfretry: 10\nid\ndata\n\n".to_vec(),
        ]
    }
    fn dictionary(&self) -> Vec<Vec<u8>> {
        tokens(&[
            "data: ", "data:", "event: ", "id: ", "retry: ", ": ", "\r\n", "\r", "\n", "\n\n",
            "[DONE]", "\u{feff}", "\0",
        ])
    }
    fn run(&mut self, input: &[u8]) -> Outcome {
        let Some((&control, stream)) = input.split_first() else {
            return Ok(label("empty"));
        };
        // The first byte: the event size limit (small ones reach the limit), and where to
        // cut the stream into chunks.
        let limit = 1 + usize::from(control & 0x3f) * 4;
        let limit = if control & 0x40 != 0 { 1 << 20 } else { limit };
        let whole = sse_events(limit, &[stream]);
        let step = 1 + usize::from(control >> 7) * 2 + (stream.len() % 5);
        let chunks: Vec<&[u8]> = stream.chunks(step).collect();
        let chunked = sse_events(limit, &chunks);
        let bytes: Vec<&[u8]> = stream.chunks(1).collect();
        let bytewise = sse_events(limit, &bytes);
        match (&whole, &chunked, &bytewise) {
            (Ok(a), Ok(b), Ok(c)) if a == b && a == c => {
                Ok(label(&format!("ok {}", a.len().min(8))))
            }
            (Err(a), Err(b), Err(c)) if a == b && a == c => {
                Ok(label(&format!("err {}", error_kind(a))))
            }
            _ => Err(format!(
                "the same stream parses differently by chunks (limit {limit}, step {step}): whole {whole:?}, chunked {chunked:?}, byte by byte {bytewise:?}"
            )),
        }
    }
}

/// The gRPC `PromptRequest` message and the `grpc-timeout` header.
struct GrpcRequest;

impl Target for GrpcRequest {
    fn name(&self) -> &'static str {
        "grpc_request"
    }
    fn seeds(&self) -> Vec<Vec<u8>> {
        let message = proto::PromptRequest {
            roles: vec!["system".into(), "user".into()],
            messages: vec!["be brief".into(), "hi".into()],
            timeout: 12.0,
            sampling: Some(proto::Sampling {
                max_tokens: Some(16),
                ..Default::default()
            }),
        };
        let mut seed = vec![0u8];
        seed.extend(message.encode_to_vec());
        vec![seed, b"\x0130S".to_vec(), b"\x0199999999H".to_vec()]
    }
    fn dictionary(&self) -> Vec<Vec<u8>> {
        vec![
            vec![0x0a],
            vec![0x12],
            vec![0x19],
            vec![0x22],
            vec![0xff, 0xff, 0xff, 0xff, 0x0f],
            vec![0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x01],
            b"H".to_vec(),
            b"M".to_vec(),
            b"S".to_vec(),
            b"m".to_vec(),
            b"u".to_vec(),
            b"n".to_vec(),
            f64::NAN.to_le_bytes().to_vec(),
            f64::INFINITY.to_le_bytes().to_vec(),
            (-1.0f64).to_le_bytes().to_vec(),
        ]
    }
    fn run(&mut self, input: &[u8]) -> Outcome {
        let Some((&kind, rest)) = input.split_first() else {
            return Ok(label("empty"));
        };
        if kind & 1 == 1 {
            let text = String::from_utf8_lossy(rest);
            return Ok(match parse_grpc_timeout(&text) {
                Ok(_) => label("timeout ok"),
                Err(_) => label("timeout err"),
            });
        }
        match proto::PromptRequest::decode(rest) {
            Err(_) => Ok(label("decode err")),
            Ok(message) => {
                // Compared as bytes: NaN fields are not equal to themselves.
                let encoded = message.encode_to_vec();
                let again = proto::PromptRequest::decode(encoded.as_slice())
                    .map_err(|e| format!("a decoded message does not re-decode: {e}"))?;
                if again.encode_to_vec() != encoded {
                    return Err("a decoded message re-encodes to another".to_owned());
                }
                let requested = (message.timeout != 0.0).then_some(message.timeout);
                let ok = budget(requested, 300.0).is_ok();
                Ok(label(&format!(
                    "ok {} {} {ok}",
                    message.messages.len().min(4),
                    message.sampling.is_some()
                )))
            }
        }
    }
}

/// The legacy body hash against CPython's: on synapse bodies (JSON as received) and on
/// message lists made of arbitrary code points.
pub struct BodyHash {
    python: Option<CPython>,
    python_error: Option<String>,
    /// Lines for CPython, with the input and Rust's hash (`None`: Rust refused the body).
    pending: Vec<(Vec<u8>, String, Option<String>)>,
    /// Inputs compared with CPython.
    pub compared: u64,
    /// Inputs both hashed (and agreed on, or a finding was recorded).
    pub both_hashed: u64,
    /// Bodies CPython hashes and Rust refuses (the Rust axon is stricter: 400).
    pub rust_only_refused: u64,
    /// Bodies Rust hashes and CPython refuses.
    pub python_only_refused: u64,
}

impl BodyHash {
    /// A target comparing with `python` (no comparison when it cannot start).
    pub fn new(python: &str) -> BodyHash {
        let (python, python_error) = match CPython::start(python) {
            Ok(child) => (Some(child), None),
            Err(err) => (None, Some(err.to_string())),
        };
        BodyHash {
            python,
            python_error,
            pending: Vec::new(),
            compared: 0,
            both_hashed: 0,
            rust_only_refused: 0,
            python_only_refused: 0,
        }
    }
}

/// Code points from bytes, three at a time (any scalar value, surrogates skipped); `0xFF
/// 0xFF 0xFF` starts a new message.
fn messages_of(bytes: &[u8]) -> Vec<String> {
    let mut messages = vec![String::new()];
    for triple in bytes.chunks(3) {
        let mut cp = 0u32;
        for &b in triple {
            cp = cp << 8 | u32::from(b);
        }
        if cp == 0xFF_FFFF {
            messages.push(String::new());
            continue;
        }
        // Mostly the planes in use, sometimes anything.
        let cp = if cp & 0x80_0000 == 0 {
            cp % 0x3_0000
        } else {
            cp % 0x11_0000
        };
        if let (Some(ch), Some(last)) = (char::from_u32(cp), messages.last_mut()) {
            last.push(ch);
        }
    }
    messages
}

impl Target for BodyHash {
    fn name(&self) -> &'static str {
        "body_hash"
    }
    fn seeds(&self) -> Vec<Vec<u8>> {
        let mut body = vec![b'b'];
        body.extend_from_slice(BODY_SEED.as_bytes());
        let mut points = vec![b'm'];
        for cp in [
            0x27u32, 0x22, 0x5c, 0x0a, 0x7f, 0xad, 0x378, 0xe9, 0x1f600, 0xffffff, 0x200b, 0x10ffff,
        ] {
            points.extend_from_slice(&cp.to_be_bytes()[1..]);
        }
        vec![body, points]
    }
    fn dictionary(&self) -> Vec<Vec<u8>> {
        tokens(JSON_TOKENS)
    }
    fn run(&mut self, input: &[u8]) -> Outcome {
        let Some((&mode, rest)) = input.split_first() else {
            return Ok(label("empty"));
        };
        let (line, rust) = if mode & 1 == 0 {
            let messages = messages_of(rest);
            let hash = body_hash_of(&[&messages as &dyn PyStr]);
            let json = serde_json::to_string(&messages).map_err(|e| e.to_string())?;
            (format!("m {json}"), Some(hash))
        } else {
            let hash = Synapse::<Prompting>::from_json(rest)
                .ok()
                .map(|synapse| synapse.body_hash());
            (format!("b {}", hex::encode(rest)), hash)
        };
        let outcome = label(if rust.is_some() { "hashed" } else { "refused" });
        // Compared in batches by flush(), which the fuzzer calls every few thousand inputs.
        if self.python.is_some() {
            self.pending.push((input.to_vec(), line, rust));
        }
        Ok(outcome)
    }
    fn flush(&mut self) -> Vec<(Vec<u8>, String)> {
        let Some(python) = self.python.as_mut() else {
            return Vec::new();
        };
        if self.pending.is_empty() {
            return Vec::new();
        }
        let pending = std::mem::take(&mut self.pending);
        let lines: Vec<String> = pending.iter().map(|(_, line, _)| line.clone()).collect();
        let answers = match python.ask(&lines) {
            Ok(answers) => answers,
            Err(err) => {
                self.python_error = Some(err.to_string());
                self.python = None;
                return vec![(Vec::new(), format!("CPython stopped answering: {err}"))];
            }
        };
        let mut violations = Vec::new();
        for ((input, _, rust), python) in pending.into_iter().zip(answers) {
            self.compared += 1;
            match (rust, python) {
                (Some(rust), Some(python)) => {
                    self.both_hashed += 1;
                    if rust != python {
                        violations.push((
                            input,
                            format!(
                                "body hash differs from CPython's: rust {rust}, CPython {python}"
                            ),
                        ));
                    }
                }
                (None, Some(_)) => self.rust_only_refused += 1,
                (Some(_), None) => {
                    self.python_only_refused += 1;
                    if input.first().is_some_and(|m| m & 1 == 0) {
                        violations.push((input, "CPython refused a list of strings".to_owned()));
                    }
                }
                (None, None) => {}
            }
        }
        violations
    }
    fn notes(&self) -> Vec<String> {
        let mut notes = vec![format!(
            "compared with CPython {}: {} inputs, {} hashed by both, {} bodies refused by Rust only, {} by CPython only",
            self.python
                .as_ref()
                .map_or("(not running)", |p| p.version.as_str()),
            self.compared,
            self.both_hashed,
            self.rust_only_refused,
            self.python_only_refused
        )];
        if let Some(err) = &self.python_error {
            notes.push(format!("CPython: {err}"));
        }
        notes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_seed_runs_clean() {
        for name in NAMES {
            let mut target = by_name(name, "python3").expect("known target");
            for seed in target.seeds() {
                assert!(target.run(&seed).is_ok(), "{name}");
            }
            assert!(target.flush().is_empty(), "{name}");
        }
    }

    #[test]
    fn the_signed_btauth_seed_verifies() {
        let mut target = BtAuth::new();
        let seed = target.seed.clone();
        assert_eq!(target.run(&seed), Ok(label("verified")));
        assert_eq!(target.verified, 1);
    }
}
