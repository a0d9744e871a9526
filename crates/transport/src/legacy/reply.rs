//! The legacy wire's answers, as a Python axon gives them: the synapse (JSON, or the streamed
//! completion) with its headers, the axon terminal filled and signed. Refusals are the synapse
//! built from the request's headers alone, with the [`Rejection`]'s status and its
//! [`legacy message`](Rejection::legacy_message).

use axum::body::Body;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::Response;
use bytes::Bytes;
use futures::StreamExt;
use prompting_synapse::headers::header_value;
use prompting_synapse::{ResponseParts, Synapse};
use tokio::time::Instant;

use super::{PROTOCOL_VERSION, PromptSynapse};
use crate::edge::{AxonState, Rejection};

/// The answer to one legacy request in the making.
pub(super) struct Reply<'a, B> {
    state: &'a AxonState,
    /// The synapse built from the request's headers (what refusals answer with).
    pub(super) synapse: Synapse<B>,
    /// When the request arrived.
    pub(super) start: Instant,
    /// The request's `timeout`, once its body is read (the timeout message names it).
    pub(super) timeout: f64,
}

impl<'a, B: PromptSynapse> Reply<'a, B> {
    /// An answer for a request that arrived at `start`.
    pub(super) fn new(state: &'a AxonState, start: Instant) -> Self {
        let synapse = Synapse::<B>::new(B::default());
        let timeout = synapse.timeout;
        Reply {
            state,
            synapse,
            start,
            timeout,
        }
    }

    /// The refusal: the headers' synapse with the rejection's status and message.
    pub(super) fn refuse(mut self, rejection: Rejection) -> Response {
        let status = rejection.status();
        let message = rejection.legacy_message(self.timeout);
        tracing::debug!(
            synapse = B::NAME,
            caller = self.synapse.dendrite.hotkey.as_deref().unwrap_or("-"),
            status,
            %message,
            "request refused"
        );
        self.synapse.axon.status_code = Some(status);
        self.synapse.axon.status_message = Some(message);
        stamp_axon(self.state, &mut self.synapse, self.start);
        json_response(self.synapse.to_response())
    }

    /// The JSON answer: `synapse` with its completion; `body_hash` is the request's verified
    /// body hash (the answer's `computed_body_hash` header).
    pub(super) fn answer(&self, mut synapse: Synapse<B>, body_hash: String) -> Response {
        synapse.axon.status_code = Some(200);
        synapse.axon.status_message = Some("Success".into());
        stamp_axon(self.state, &mut synapse, self.start);
        json_response(synapse.to_response_with_hash(body_hash))
    }

    /// The streamed answer: the synapse's headers, then the completion's chunks as they come.
    pub(super) fn stream(
        &self,
        mut synapse: Synapse<B>,
        body_hash: String,
        stream: prompting_miner::TextStream,
    ) -> Response {
        synapse.axon.status_code = Some(200);
        synapse.axon.status_message = Some("Success".into());
        stamp_axon(self.state, &mut synapse, self.start);
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

fn json_response(parts: ResponseParts) -> Response {
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
