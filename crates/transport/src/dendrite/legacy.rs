//! The legacy (bittensor 6.x–10.x) synapse protocol, client side: a signed JSON `POST
//! /{Name}` per call, as Python's `Dendrite.call`/`call_stream`/`forward` make it.
//!
//! # The request
//!
//! For a call to `target` with timeout `t`, as Python's `preprocess_synapse_for_request`:
//!
//! * `synapse.timeout = t` (seconds);
//! * `synapse.dendrite` is replaced by `{ip, version: 10005000, nonce: time_ns, uuid,
//!   hotkey}` and `synapse.axon` by `{ip, port, hotkey}` of the target;
//! * `dendrite.signature = 0x` + sr25519 signature (context `substrate`) of
//!   `"{nonce}.{dendrite_hotkey}.{axon_hotkey}.{uuid}.{body_hash}"`;
//! * headers: [`Synapse::to_headers`] (`name`, `timeout`, `bt_header_axon_*`,
//!   `bt_header_dendrite_*`, `bt_header_input_obj_*`, `header_size`, `total_size`,
//!   `computed_body_hash`), then `Content-Type: application/json`; body: the synapse's JSON
//!   (its `computed_body_hash` field stays as given, `""` normally, as in Python).
//!
//! # The timeout
//!
//! One deadline covers connecting, sending, the response head and the whole body (aiohttp's
//! `ClientTimeout(total=t)`); past it the call ends with 408 `Request timeout after {t}
//! seconds`. A connection abandoned mid-response is closed, never reused (6.4.x's
//! aiohttp session could hand a later call the stale answer of a timed-out one).

use std::time::{Duration, Instant};

use futures::{Stream, StreamExt};
use prompting_synapse::signing::request_message;
use prompting_synapse::{StreamPrompting, Synapse, SynapseBody, SynapseHeaders, TerminalInfo};

use crate::dendrite::client::{DENDRITE_VERSION, Dendrite};
use crate::dendrite::error::CallFailure;
use crate::dendrite::response::{DendriteResponse, RawResponse, read_response};
use crate::dendrite::target::AxonTarget;
use crate::dendrite::utf8::Utf8Decoder;

/// A request ready to send: what [`Dendrite::prepare`] makes.
#[derive(Debug, Clone, PartialEq)]
pub struct PreparedRequest {
    /// `http://{ip}:{port}/{Name}`.
    pub url: String,
    /// The headers in sending order, `Content-Type: application/json` last.
    pub headers: Vec<(String, String)>,
    /// The JSON body.
    pub body: String,
}

/// One item of [`Dendrite::call_stream`]: text as it arrives, then the outcome.
#[derive(Debug, Clone, PartialEq)]
pub enum StreamItem {
    /// Text decoded from the response body (a character split across network chunks is
    /// delivered whole, with the chunk that completes it).
    Text(String),
    /// The last item, always present: the filled synapse (its `completion` accumulated as
    /// text-prompting does, newlines dropped) and the status, as for [`Dendrite::call`].
    Done(Box<DendriteResponse<StreamPrompting>>),
}

impl Dendrite {
    /// Fills `synapse` for a call to `target` with `timeout` and builds the request (see
    /// the [module documentation](self)). Each call takes a new nonce.
    pub fn prepare<B: SynapseBody>(
        &self,
        target: &AxonTarget,
        synapse: &mut Synapse<B>,
        timeout: Duration,
    ) -> PreparedRequest {
        let inner = &self.inner;
        synapse.timeout = timeout.as_secs_f64();
        let nonce = inner.nonces.next();
        synapse.dendrite = TerminalInfo {
            ip: Some(inner.ip.clone()),
            version: Some(DENDRITE_VERSION),
            nonce: Some(nonce),
            uuid: Some(inner.uuid.clone()),
            hotkey: Some(inner.hotkey.clone()),
            ..TerminalInfo::default()
        };
        synapse.axon = TerminalInfo {
            ip: Some(target.ip.to_string()),
            port: Some(target.port),
            hotkey: Some(target.hotkey.clone()),
            ..TerminalInfo::default()
        };
        let message = request_message(
            &nonce.to_string(),
            &inner.hotkey,
            &target.hotkey,
            &inner.uuid,
            &synapse.body_hash(),
        );
        synapse.dendrite.signature = Some(inner.keypair.sign_hex(message.as_bytes()));
        let parts = synapse.to_request();
        let mut headers = parts.headers;
        headers.push(("Content-Type".to_owned(), "application/json".to_owned()));
        PreparedRequest {
            url: target.url(B::NAME),
            headers,
            body: parts.body,
        }
    }

    /// Calls `target` with `synapse` and waits at most `timeout` for the whole answer.
    /// Never fails: client-side failures are in the response, as in Python.
    pub async fn call<B: SynapseBody>(
        &self,
        target: &AxonTarget,
        mut synapse: Synapse<B>,
        timeout: Duration,
    ) -> DendriteResponse<B> {
        let started = Instant::now();
        let request = self.prepare(target, &mut synapse, timeout);
        let exchange = async {
            let mut response = self.send(target, B::NAME, &request).await?;
            let body = read_body(&mut response, self.inner.max_response_bytes).await?;
            Ok::<_, CallFailure>(RawResponse {
                status: response.status().as_u16(),
                headers: response.headers().clone(),
                body,
                url: request.url.clone(),
            })
        };
        let raw = match tokio::time::timeout(timeout, exchange).await {
            Err(_elapsed) => Err(CallFailure::Timeout {
                seconds: synapse.timeout,
            }),
            Ok(result) => result,
        };
        let outcome = raw.and_then(|raw| read_response(&mut synapse, &raw).map(|()| raw.status));
        let response = match outcome {
            Ok(status) => {
                DendriteResponse::answered(synapse, status, &target.hotkey, started.elapsed())
            }
            Err(failure) => DendriteResponse::from_failure(synapse, failure),
        };
        log_response(target, &response);
        response
    }

    /// Calls every target with a copy of `synapse`, at most
    /// [`max_concurrency`](crate::dendrite::DendriteBuilder::max_concurrency) at once, each
    /// call with its own `timeout` (counted from its start); the responses are in the order
    /// of `targets`. This is what a validator's `dendrite(axons, synapse, timeout)` does.
    pub async fn query_many<B: SynapseBody>(
        &self,
        targets: &[AxonTarget],
        synapse: &Synapse<B>,
        timeout: Duration,
    ) -> Vec<DendriteResponse<B>> {
        futures::stream::iter(targets)
            .map(|target| self.call(target, synapse.clone(), timeout))
            .buffered(self.inner.max_concurrency)
            .collect()
            .await
    }

    /// Calls `target` with a `StreamPrompting` synapse and yields the response body as
    /// text while it arrives, then [`StreamItem::Done`]. The `timeout` bounds the whole
    /// call, streaming included: past it the stream ends with 408 and the text received so
    /// far stays in the synapse's `completion`.
    ///
    /// A non-200 answer is read as [`Dendrite::call`] reads it (no text items). A 200
    /// answer's status comes from its `bt_header_axon_*` headers, as in Python, or is 200
    /// `Success` when the axon sent none.
    pub fn call_stream(
        &self,
        target: &AxonTarget,
        synapse: Synapse<StreamPrompting>,
        timeout: Duration,
    ) -> impl Stream<Item = StreamItem> + Send + 'static {
        let state = StreamState::Start {
            dendrite: self.clone(),
            target: target.clone(),
            synapse: Box::new(synapse),
            timeout,
        };
        futures::stream::unfold(state, StreamState::advance)
    }

    /// Sends `request`, mapping connection errors as Python does.
    async fn send(
        &self,
        target: &AxonTarget,
        route: &str,
        request: &PreparedRequest,
    ) -> Result<reqwest::Response, CallFailure> {
        let mut builder = self.inner.http.post(&request.url);
        for (name, value) in &request.headers {
            builder = builder.header(
                name.as_str(),
                prompting_synapse::headers::header_value(value),
            );
        }
        builder
            .body(request.body.clone())
            .send()
            .await
            .map_err(|error| send_failure(target, route, &error))
    }
}

/// The stages of a streamed call.
enum StreamState {
    Start {
        dendrite: Dendrite,
        target: AxonTarget,
        synapse: Box<Synapse<StreamPrompting>>,
        timeout: Duration,
    },
    Body(Box<Streaming>),
    Finished,
}

/// A streamed 200 response being read.
struct Streaming {
    response: reqwest::Response,
    synapse: Synapse<StreamPrompting>,
    target: AxonTarget,
    started: Instant,
    deadline: tokio::time::Instant,
    decoder: Utf8Decoder,
}

type Step = Option<(StreamItem, StreamState)>;

impl StreamState {
    async fn advance(self) -> Step {
        match self {
            StreamState::Start {
                dendrite,
                target,
                synapse,
                timeout,
            } => start_stream(dendrite, target, *synapse, timeout).await,
            StreamState::Body(streaming) => streaming.next_item().await,
            StreamState::Finished => None,
        }
    }
}

fn done(response: DendriteResponse<StreamPrompting>) -> Step {
    Some((StreamItem::Done(Box::new(response)), StreamState::Finished))
}

async fn start_stream(
    dendrite: Dendrite,
    target: AxonTarget,
    mut synapse: Synapse<StreamPrompting>,
    timeout: Duration,
) -> Step {
    let started = Instant::now();
    let deadline = tokio::time::Instant::now() + timeout;
    let request = dendrite.prepare(&target, &mut synapse, timeout);
    let timed_out = |synapse: Synapse<StreamPrompting>| {
        let seconds = synapse.timeout;
        DendriteResponse::from_failure(synapse, CallFailure::Timeout { seconds })
    };
    let sent = tokio::time::timeout_at(
        deadline,
        dendrite.send(&target, StreamPrompting::NAME, &request),
    )
    .await;
    let mut response = match sent {
        Err(_elapsed) => return done(timed_out(synapse)),
        Ok(Err(failure)) => return done(DendriteResponse::from_failure(synapse, failure)),
        Ok(Ok(response)) => response,
    };
    let status = response.status().as_u16();
    if status != 200 {
        let limit = dendrite.inner.max_response_bytes;
        let body = match tokio::time::timeout_at(deadline, read_body(&mut response, limit)).await {
            Err(_elapsed) => return done(timed_out(synapse)),
            Ok(Err(failure)) => return done(DendriteResponse::from_failure(synapse, failure)),
            Ok(Ok(body)) => body,
        };
        let raw = RawResponse {
            status,
            headers: response.headers().clone(),
            body,
            url: request.url,
        };
        let answer = match read_response(&mut synapse, &raw) {
            Ok(()) => {
                DendriteResponse::answered(synapse, status, &target.hotkey, started.elapsed())
            }
            Err(failure) => DendriteResponse::from_failure(synapse, failure),
        };
        log_response(&target, &answer);
        return done(answer);
    }
    Box::new(Streaming {
        response,
        synapse,
        target,
        started,
        deadline,
        decoder: Utf8Decoder::default(),
    })
    .next_item()
    .await
}

impl Streaming {
    /// The next text item, or the outcome at the end of the body.
    async fn next_item(mut self: Box<Self>) -> Step {
        loop {
            match tokio::time::timeout_at(self.deadline, self.response.chunk()).await {
                Err(_elapsed) => {
                    let seconds = self.synapse.timeout;
                    return done(DendriteResponse::from_failure(
                        self.synapse,
                        CallFailure::Timeout { seconds },
                    ));
                }
                Ok(Err(error)) => {
                    let failure = CallFailure::Payload {
                        reason: error_chain(&error),
                    };
                    return done(DendriteResponse::from_failure(self.synapse, failure));
                }
                Ok(Ok(Some(bytes))) => {
                    let text = self.decoder.push(&bytes);
                    if !text.is_empty() {
                        self.synapse.body.absorb_chunk(&text);
                        return Some((StreamItem::Text(text), StreamState::Body(self)));
                    }
                }
                Ok(Ok(None)) => {
                    let rest = self.decoder.finish();
                    if !rest.is_empty() {
                        self.synapse.body.absorb_chunk(&rest);
                        return Some((StreamItem::Text(rest), StreamState::Body(self)));
                    }
                    return done(self.finish());
                }
            }
        }
    }

    /// The outcome of a completely read 200 stream: the response headers' terminal fields
    /// over the request's (Python's `extract_response_json` + `process_server_response`).
    fn finish(self) -> DendriteResponse<StreamPrompting> {
        let Streaming {
            response,
            mut synapse,
            target,
            started,
            ..
        } = self;
        let headers = match SynapseHeaders::from_header_map(response.headers()) {
            Ok(headers) => headers,
            Err(error) => {
                let failure = CallFailure::InvalidResponse {
                    reason: error.to_string(),
                };
                return DendriteResponse::from_failure(synapse, failure);
            }
        };
        if let Some(timeout) = headers.timeout {
            synapse.timeout = timeout;
        }
        synapse.dendrite.merge_from(&headers.dendrite);
        synapse.axon.merge_from(&headers.axon);
        if synapse.axon.status_code.is_none() {
            synapse.axon.status_code = Some(200);
            synapse.axon.status_message = Some("Success".to_owned());
        }
        synapse.dendrite.status_code = synapse.axon.status_code;
        synapse.dendrite.status_message = synapse.axon.status_message.clone();
        let answer = DendriteResponse::answered(synapse, 200, &target.hotkey, started.elapsed());
        log_response(&target, &answer);
        answer
    }
}

/// Reads the whole body, at most `limit` bytes.
async fn read_body(response: &mut reqwest::Response, limit: usize) -> Result<Vec<u8>, CallFailure> {
    let mut body = Vec::new();
    while let Some(chunk) = response
        .chunk()
        .await
        .map_err(|error| CallFailure::Payload {
            reason: error_chain(&error),
        })?
    {
        if body.len() + chunk.len() > limit {
            return Err(CallFailure::Payload {
                reason: format!("the response body exceeds {limit} bytes"),
            });
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

/// The failure of sending a request (before any response), as Python classifies it.
fn send_failure(target: &AxonTarget, route: &str, error: &reqwest::Error) -> CallFailure {
    if error.is_connect() {
        return CallFailure::Connect {
            ip: target.ip.to_string(),
            port: target.port,
            route: route.to_owned(),
            reason: error_chain(error),
        };
    }
    if closed_without_response(error) {
        return CallFailure::Disconnected;
    }
    CallFailure::Request {
        reason: error_chain(error),
    }
}

/// Whether hyper saw the connection close before a complete response.
fn closed_without_response(error: &reqwest::Error) -> bool {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(error);
    while let Some(current) = source {
        if let Some(hyper_error) = current.downcast_ref::<hyper::Error>() {
            return hyper_error.is_incomplete_message() || hyper_error.is_closed();
        }
        source = current.source();
    }
    false
}

/// An error and its causes, `": "`-separated.
fn error_chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

fn log_response<B: SynapseBody>(target: &AxonTarget, response: &DendriteResponse<B>) {
    tracing::debug!(
        synapse = B::NAME,
        axon = %target,
        status = response.status_code,
        message = %response.status_message,
        "dendrite <--"
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    use prompting_keys::Keypair;
    use prompting_synapse::Prompting;

    use crate::clock::ManualClock;

    fn dendrite() -> Dendrite {
        Dendrite::builder(Keypair::from_mini_secret(&[1; 32]))
            .uuid("49c892ca-e602-11f1-86a3-02fc00000001")
            .external_ip("127.0.0.1")
            .clock(Arc::new(ManualClock::new(1_795_303_292_740_406_005)))
            .build()
            .expect("client")
    }

    fn target() -> AxonTarget {
        AxonTarget::new(
            "127.0.0.1:18392".parse().expect("addr"),
            "5EHgWw2Af1pnoc7f1A8bfmM97W3DAYW8xr82RfhLL9oAabAe",
        )
    }

    #[test]
    fn prepare_signs_the_python_message() {
        let dendrite = dendrite();
        let mut synapse = Synapse::new(Prompting::new(vec!["user".into()], vec!["hi".into()]));
        let request = dendrite.prepare(&target(), &mut synapse, Duration::from_secs(5));
        assert_eq!(request.url, "http://127.0.0.1:18392/Prompting");
        assert_eq!(synapse.timeout, 5.0);
        assert_eq!(synapse.computed_body_hash, "");
        let message = format!(
            "1795303292740406005.{}.5EHgWw2Af1pnoc7f1A8bfmM97W3DAYW8xr82RfhLL9oAabAe.\
             49c892ca-e602-11f1-86a3-02fc00000001.{}",
            dendrite.hotkey(),
            synapse.body_hash()
        );
        let signature = synapse.dendrite.signature.clone().expect("signed");
        assert!(
            prompting_keys::verify_hex(dendrite.hotkey(), message.as_bytes(), &signature)
                .expect("well-formed")
        );
        assert_eq!(
            request.headers.last(),
            Some(&("Content-Type".to_owned(), "application/json".to_owned()))
        );
        let header = |name: &str| {
            request
                .headers
                .iter()
                .find(|(n, _)| n == name)
                .map(|(_, v)| v.as_str())
        };
        assert_eq!(
            header("bt_header_dendrite_signature"),
            Some(signature.as_str())
        );
        assert_eq!(header("bt_header_dendrite_version"), Some("10005000"));
        assert_eq!(
            header("computed_body_hash"),
            Some(synapse.body_hash().as_str())
        );
    }

    #[test]
    fn each_prepare_takes_a_new_nonce() {
        let dendrite = dendrite();
        let mut synapse = Synapse::new(Prompting::new(vec!["user".into()], vec!["hi".into()]));
        let mut previous = 0;
        for _ in 0..5 {
            dendrite.prepare(&target(), &mut synapse, Duration::from_secs(1));
            let nonce = synapse.dendrite.nonce.expect("nonce");
            assert!(nonce > previous);
            previous = nonce;
        }
    }

    #[test]
    fn error_chains_skip_repeated_causes() {
        #[derive(Debug)]
        struct Outer(std::io::Error);
        impl std::fmt::Display for Outer {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                write!(f, "send failed")
            }
        }
        impl std::error::Error for Outer {
            fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
                Some(&self.0)
            }
        }
        let error = Outer(std::io::Error::other("refused"));
        assert_eq!(error_chain(&error), "send failed: refused");
    }
}
