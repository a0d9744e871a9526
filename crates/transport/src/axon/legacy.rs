//! The legacy synapse protocol (bittensor 6.x–10.x dendrites): `POST /{SynapseName}`.
//!
//! Per request: parse headers → verify (signature, nonce) → read body (size and time
//! limits) → body hash → pipeline (blacklist, priority queue, backend with the deadline) →
//! respond as a Python axon does. Unlike Python, the signature is checked before the
//! blacklist, so nobody can spend another hotkey's rate limit or queue slot, and the
//! request's `timeout` is enforced here.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::Response;
use bytes::Bytes;
use futures::StreamExt;
use prompting_miner::{MinerError, PromptRequest, Protocol};
use prompting_synapse::headers::header_value;
use prompting_synapse::{Prompting, StreamPrompting, Synapse, SynapseBody, SynapseHeaders};
use tokio::time::Instant;

use super::body::read_body;
use super::state::{AxonState, PROTOCOL_VERSION};
use crate::server::PeerAddr;

/// A synapse carrying a chat prompt that the pipeline can answer.
pub trait PromptSynapse: SynapseBody + Default + Send + Sync + 'static {
    /// Whether the completion is streamed as text chunks instead of a JSON synapse.
    const STREAMING: bool;
    /// Roles of the turns.
    fn roles(&self) -> &[String];
    /// Contents of the turns.
    fn messages(&self) -> &[String];
    /// Stores the answer.
    fn set_completion(&mut self, completion: String);
}

impl PromptSynapse for Prompting {
    const STREAMING: bool = false;
    fn roles(&self) -> &[String] {
        &self.roles
    }
    fn messages(&self) -> &[String] {
        &self.messages
    }
    fn set_completion(&mut self, completion: String) {
        self.completion = completion;
    }
}

impl PromptSynapse for StreamPrompting {
    const STREAMING: bool = true;
    fn roles(&self) -> &[String] {
        &self.roles
    }
    fn messages(&self) -> &[String] {
        &self.messages
    }
    fn set_completion(&mut self, completion: String) {
        self.completion = completion;
    }
}

/// The status message of a pipeline error, worded like the Python axon where it has one.
pub fn status_message(error: &MinerError, timeout: f64) -> String {
    match error {
        MinerError::Blacklisted(reason) => format!("Forbidden. Key is blacklisted: {reason}."),
        MinerError::Timeout(_) => {
            format!("Timeout: no answer within the request timeout of {timeout} seconds")
        }
        MinerError::Overloaded(reason) => format!("Service unavailable: {reason}"),
        MinerError::BadRequest(reason) => format!("Bad request: {reason}"),
        MinerError::Backend(reason) => format!("Internal server error with error: {reason}"),
    }
}

/// Serves one legacy request for synapse `B`.
pub async fn handle<B: PromptSynapse>(
    State(state): State<Arc<AxonState>>,
    peer: Option<axum::Extension<PeerAddr>>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let start = Instant::now();
    let response = serve::<B>(&state, peer.map(|p| p.0), &headers, body, start).await;
    state.metrics.observe(
        "legacy",
        B::NAME,
        response.status().as_u16(),
        start.elapsed(),
    );
    response
}

async fn serve<B: PromptSynapse>(
    state: &AxonState,
    peer: Option<PeerAddr>,
    headers: &HeaderMap,
    body: Body,
    start: Instant,
) -> Response {
    // What Python's preprocess builds: a synapse from the headers alone. Error responses
    // carry its headers (so their computed_body_hash is that of empty inputs, as in Python).
    let mut from_headers = Synapse::<B>::new(B::default());
    let parsed = match SynapseHeaders::from_header_map(headers) {
        Ok(parsed) => parsed,
        Err(err) => return error(state, &mut from_headers, 400, err.to_string(), start),
    };
    from_headers.apply_headers(&parsed);
    set_peer(&mut from_headers, peer);

    let caller = match verify(state, &from_headers) {
        Ok(caller) => caller,
        Err(reason) => {
            let message = format!("Not Verified with error: {reason}");
            return error(state, &mut from_headers, 401, message, start);
        }
    };

    if let Some(length) = content_length(headers)
        && length > state.limits.max_body_bytes
    {
        let message = format!(
            "request body is larger than {} bytes",
            state.limits.max_body_bytes
        );
        return error(state, &mut from_headers, 413, message, start);
    }
    let bytes = match read_body(body, state.limits.max_body_bytes, state.limits.read_timeout).await
    {
        Ok(bytes) => bytes,
        Err(err) => {
            return error(
                state,
                &mut from_headers,
                err.status(),
                err.to_string(),
                start,
            );
        }
    };
    let mut synapse = match Synapse::<B>::from_request(&parsed, &bytes) {
        Ok(synapse) => synapse,
        Err(err) => return error(state, &mut from_headers, 400, err.to_string(), start),
    };
    set_peer(&mut synapse, peer);
    let claimed = parsed.computed_body_hash.as_deref().unwrap_or_default();
    if let Err(mismatch) = synapse.verify_body_hash(claimed) {
        let message = format!("Not Verified with error: {mismatch}");
        return error(state, &mut from_headers, 401, message, start);
    }
    // Verified equal to the body's hash: the answer's header reuses it.
    let body_hash = claimed.to_owned();
    let timeout = synapse.timeout;
    if !(timeout.is_finite() && timeout > 0.0) {
        let message = format!("timeout must be a positive number of seconds, got {timeout}");
        return error(state, &mut from_headers, 400, message, start);
    }
    let budget = Duration::from_secs_f64(timeout.min(state.limits.max_request_timeout));
    let request = PromptRequest {
        roles: synapse.body.roles().to_vec(),
        messages: synapse.body.messages().to_vec(),
        caller,
        protocol: Protocol::Legacy,
        deadline: start + budget,
        sampling: Default::default(),
        report: Default::default(),
    };

    if B::STREAMING {
        return match state.pipeline.prompt_stream(request).await {
            Ok(stream) => stream_response(state, &mut synapse, body_hash, stream, start),
            Err(err) => {
                let status = err.status_code();
                error(
                    state,
                    &mut from_headers,
                    status,
                    status_message(&err, timeout),
                    start,
                )
            }
        };
    }
    match state.pipeline.prompt(request).await {
        Ok(completion) => {
            synapse.body.set_completion(completion);
            synapse.axon.status_code = Some(200);
            synapse.axon.status_message = Some("Success".into());
            stamp_axon(state, &mut synapse, start);
            json_response(synapse.to_response_with_hash(body_hash))
        }
        Err(err) => {
            let status = err.status_code();
            error(
                state,
                &mut from_headers,
                status,
                status_message(&err, timeout),
                start,
            )
        }
    }
}

/// Checks the dendrite's signature and nonce like bittensor's `default_verify`, against
/// this axon's own hotkey (not the one the headers name). Returns the caller's hotkey.
fn verify<B: PromptSynapse>(state: &AxonState, synapse: &Synapse<B>) -> Result<String, String> {
    let hotkey = synapse
        .dendrite
        .hotkey
        .as_deref()
        .filter(|h| !h.is_empty())
        .ok_or("Missing dendrite hotkey")?;
    let nonce = synapse.dendrite.nonce.ok_or("Missing Nonce")?;
    let uuid = synapse.dendrite.uuid.as_deref().unwrap_or("None");
    let endpoint = format!("{hotkey}:{uuid}");
    // The nonce table counts in unsigned nanoseconds; a clock before 1970 reads as 0.
    let now = u128::try_from(state.clock.now_ns()).unwrap_or(0);
    state
        .nonces
        .check(
            &endpoint,
            nonce,
            synapse.dendrite.version,
            synapse.timeout,
            now,
        )
        .map_err(|e| e.to_string())?;
    let signature = synapse
        .dendrite
        .signature
        .as_deref()
        .filter(|s| !s.is_empty())
        .ok_or("Missing Signature")?;
    let message = synapse.request_signing_message(&state.hotkey);
    match prompting_keys::verify_hex(hotkey, message.as_bytes(), signature) {
        Ok(true) => {}
        Ok(false) => return Err(format!("Signature mismatch with {message} and {signature}")),
        Err(err) => return Err(format!("Invalid signature: {err}")),
    }
    state
        .nonces
        .record(&endpoint, nonce, now)
        .map_err(|e| e.to_string())?;
    Ok(hotkey.to_string())
}

fn set_peer<B>(synapse: &mut Synapse<B>, peer: Option<PeerAddr>) {
    if let Some(PeerAddr(addr)) = peer {
        synapse.dendrite.ip = Some(addr.ip().to_string());
        synapse.dendrite.port = Some(addr.port());
    }
}

fn content_length(headers: &HeaderMap) -> Option<usize> {
    headers
        .get(header::CONTENT_LENGTH)?
        .to_str()
        .ok()?
        .parse()
        .ok()
}

/// Fills the axon terminal as the Python axon does, and signs it.
fn stamp_axon<B: PromptSynapse>(state: &AxonState, synapse: &mut Synapse<B>, start: Instant) {
    let nonce = state.next_axon_nonce();
    let axon = &mut synapse.axon;
    axon.process_time = Some(start.elapsed().as_secs_f64());
    axon.ip = Some(state.external_ip.clone());
    axon.port = Some(state.external_port);
    axon.version = Some(PROTOCOL_VERSION);
    axon.nonce = Some(nonce);
    axon.uuid = Some(state.uuid.clone());
    axon.hotkey = Some(state.hotkey.clone());
    let message = synapse.axon_signing_message();
    synapse.axon.signature = Some(state.keypair.sign_hex(message.as_bytes()));
}

fn error<B: PromptSynapse>(
    state: &AxonState,
    synapse: &mut Synapse<B>,
    status: u16,
    message: String,
    start: Instant,
) -> Response {
    tracing::debug!(
        synapse = B::NAME,
        caller = synapse.dendrite.hotkey.as_deref().unwrap_or("-"),
        status,
        %message,
        "request refused"
    );
    synapse.axon.status_code = Some(status);
    synapse.axon.status_message = Some(message);
    finish(state, synapse, start)
}

fn finish<B: PromptSynapse>(
    state: &AxonState,
    synapse: &mut Synapse<B>,
    start: Instant,
) -> Response {
    stamp_axon(state, synapse, start);
    json_response(synapse.to_response())
}

fn json_response(parts: prompting_synapse::ResponseParts) -> Response {
    let mut response = Response::new(Body::from(parts.body));
    *response.status_mut() =
        StatusCode::from_u16(parts.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    put_headers(response.headers_mut(), &parts.headers);
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

fn put_headers(map: &mut HeaderMap, pairs: &[(String, String)]) {
    for (name, value) in pairs {
        if let Ok(name) = http::HeaderName::from_bytes(name.as_bytes()) {
            map.insert(name, header_value(value));
        }
    }
}

fn stream_response<B: PromptSynapse>(
    state: &AxonState,
    synapse: &mut Synapse<B>,
    body_hash: String,
    stream: prompting_miner::TextStream,
    start: Instant,
) -> Response {
    synapse.axon.status_code = Some(200);
    synapse.axon.status_message = Some("Success".into());
    stamp_axon(state, synapse, start);
    let headers = synapse.to_headers_with_hash(body_hash);
    let caller = synapse.dendrite.hotkey.clone().unwrap_or_default();
    let body = stream.map(move |chunk| match chunk {
        Ok(text) => Ok(Bytes::from(text)),
        Err(err) => {
            // Headers are gone already: abort the body so the client sees an incomplete
            // response instead of a completion that silently stopped.
            tracing::warn!(caller = %caller, error = %err, "stream failed midway");
            Err(std::io::Error::other(err.to_string()))
        }
    });
    let mut response = Response::new(Body::from_stream(body));
    put_headers(response.headers_mut(), &headers);
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    response
}
