//! The legacy synapse protocol (bittensor 6.x–10.x dendrites): `POST /{SynapseName}`.
//!
//! Per request: parse headers → the blacklist's identity steps for the claimed hotkey
//! (registration, permit, stake: public data) → verify (signature, nonce: `verify`) → read
//! body (size and time limits) → body hash → pipeline (blacklist, priority queue, backend
//! with the deadline) → answer as a Python axon does (`reply`). Python runs the whole
//! blacklist before the signature check; here only its identity steps come first (a flood
//! of keys refused whatever they sign costs no verification and never reaches the nonce
//! table), and the rest of the blacklist comes after, so nobody can spend another hotkey's
//! rate limit or queue slot. The request's `timeout` is enforced here.

pub mod nonce_table;
mod reply;
mod verify;

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, Request};
use axum::response::{IntoResponse, Response};
use axum::routing::{MethodRouter, get};
use prompting_miner::{PromptRequest, Protocol};
use prompting_synapse::{
    Prompting, PromptingBody, StreamPrompting, Synapse, SynapseBody, SynapseHeaders,
};
use tokio::time::Instant;

use crate::caller_class::{CallerClass, caller_rank};
use crate::deadline::{budget, deadline};
use crate::edge::auth::read;
use crate::edge::{AxonState, Rejection};
use crate::server::{ConnectionHandle, PeerAddr};
use nonce_table::{NonceLimits, NonceTable};
use reply::Reply;

/// The version this axon reports in `bt_header_axon_version`: the bittensor protocol level
/// it speaks (10.5.0, as `version_as_int`).
pub const PROTOCOL_VERSION: u64 = 10_005_000;

/// The synapse routes this axon serves.
pub const SYNAPSES: &[&str] = &[Prompting::NAME, StreamPrompting::NAME];

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

impl<const STREAMING: bool> PromptSynapse for PromptingBody<STREAMING> {
    const STREAMING: bool = STREAMING;
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

/// What the legacy routes share: the axon's state and the nonces seen per endpoint.
pub(crate) struct Legacy {
    pub(crate) edge: Arc<AxonState>,
    pub(crate) nonces: NonceTable,
}

/// The synapse routes (`GET`/`POST /Prompting`, `/StreamPrompting`) over `state`, each
/// request counted as `legacy`/`{SynapseName}`, with a replay table of their own.
pub fn routes(state: Arc<AxonState>) -> Router {
    let args = &state.args;
    let nonces = NonceTable::new(NonceLimits {
        shared_capacity: args.nonce_capacity,
        per_key_capacity: args.nonce_capacity_per_key,
        max_keys: args.nonce_max_keys,
        reorder_window: Duration::from_secs_f64(args.nonce_reorder_window.clamp(0.0, 60.0)),
        max_request_timeout: Duration::try_from_secs_f64(args.max_request_timeout)
            .unwrap_or(Duration::MAX),
    })
    .with_log_interval(Duration::try_from_secs_f64(args.log_interval).unwrap_or(Duration::MAX));
    let counters = nonces.counters();
    state.metrics.add_counter_source(
        "nonce_table_early_evictions",
        "Legacy endpoints forgotten while a replay of them was still possible (their table was full: --axon.nonce_capacity for unregistered keys, --axon.nonce_capacity_per_key for each registered key), by class of caller",
        "class",
        Arc::new(move || {
            vec![
                (
                    CallerClass::Unregistered.as_str(),
                    counters.early_evictions_unregistered.load(Ordering::Relaxed),
                ),
                (
                    CallerClass::Registered.as_str(),
                    counters.early_evictions_registered.load(Ordering::Relaxed),
                ),
            ]
        }),
    );
    let legacy = Arc::new(Legacy {
        edge: state,
        nonces,
    });
    Router::new()
        .route(
            &format!("/{}", Prompting::NAME),
            route::<Prompting>(&legacy),
        )
        .route(
            &format!("/{}", StreamPrompting::NAME),
            route::<StreamPrompting>(&legacy),
        )
        .with_state(legacy)
}

fn route<B: PromptSynapse>(legacy: &Legacy) -> MethodRouter<Arc<Legacy>> {
    get(handle::<B>)
        .post(handle::<B>)
        .layer(legacy.edge.metrics.layer("legacy", B::NAME))
}

/// The answer to a route that is no synapse: 404 `Synapse name 'X' not found...`, unsigned,
/// counted as `legacy`/`unknown`.
pub fn unknown_synapse(state: &AxonState) -> Router {
    Router::new().fallback_service(
        tower::ServiceBuilder::new()
            .layer(state.metrics.layer("legacy", "unknown"))
            .service_fn(|request: Request<Body>| async move {
                let rejection = Rejection::UnknownSynapse {
                    name: request.uri().path().trim_start_matches('/').to_owned(),
                    available: SYNAPSES,
                };
                Ok::<_, std::convert::Infallible>(rejection.into_legacy_unsigned())
            }),
    )
}

/// Serves one legacy request for synapse `B`.
async fn handle<B: PromptSynapse>(
    State(legacy): State<Arc<Legacy>>,
    request: Request<Body>,
) -> Response {
    let start = Instant::now();
    // The whole request rather than a `HeaderMap` extractor, which would copy the headers.
    let (parts, body) = request.into_parts();
    let peer = parts.extensions.get::<PeerAddr>().copied();
    // What Python's preprocess builds: a synapse from the headers alone. Error responses
    // carry its headers (so their computed_body_hash is that of empty inputs, as in Python).
    let mut reply = Reply::<B>::new(&legacy.edge, start);
    let connection = parts.extensions.get::<ConnectionHandle>().cloned();
    let outcome = serve::<B>(
        &legacy,
        &mut reply,
        peer,
        connection.as_ref(),
        &parts.headers,
        body,
    )
    .await;
    match outcome {
        Ok(response) => response,
        Err(rejection) => reply.refuse(rejection),
    }
    .into_response()
}

async fn serve<B: PromptSynapse>(
    legacy: &Legacy,
    reply: &mut Reply<'_, B>,
    peer: Option<PeerAddr>,
    connection: Option<&ConnectionHandle>,
    headers: &HeaderMap,
    body: Body,
) -> Result<Response, Rejection> {
    let state = &legacy.edge;
    let parsed = SynapseHeaders::from_header_map(headers)
        .map_err(|err| Rejection::Malformed(err.to_string()))?;
    reply.synapse.apply_headers(&parsed);
    set_peer(&mut reply.synapse, peer);

    // A key the blacklist refuses whatever it signs is refused before its signature is
    // checked: it costs no verification and takes no room in the nonce table.
    if let Some(claimed) = reply
        .synapse
        .dendrite
        .hotkey
        .as_deref()
        .filter(|h| !h.is_empty())
    {
        state.pipeline.check_identity(claimed, Protocol::Legacy)?;
    }
    let caller = verify::verify(legacy, &reply.synapse).map_err(Rejection::NotVerified)?;
    if let Some(connection) = connection {
        connection.rank_caller(caller_rank(&state.pipeline, &caller));
    }

    let bytes = read(state, body).await?;
    let mut synapse = Synapse::<B>::from_request(&parsed, &bytes)
        .map_err(|err| Rejection::Malformed(err.to_string()))?;
    set_peer(&mut synapse, peer);
    let claimed = parsed.computed_body_hash.as_deref().unwrap_or_default();
    synapse
        .verify_body_hash(claimed)
        .map_err(|mismatch| Rejection::NotVerified(mismatch.to_string()))?;
    // Verified equal to the body's hash: the answer's header reuses it.
    let body_hash = claimed.to_owned();
    let timeout = synapse.timeout;
    reply.timeout = timeout;
    let budget = budget(Some(timeout), state.limits.max_request_timeout)?;
    let request = PromptRequest {
        roles: synapse.body.roles().to_vec(),
        messages: synapse.body.messages().to_vec(),
        caller,
        protocol: Protocol::Legacy,
        deadline: deadline(reply.start, budget),
        sampling: Default::default(),
        priority: None,
        report: Default::default(),
    };
    if B::STREAMING {
        let stream = state.pipeline.prompt_stream(request).await?;
        return Ok(reply.stream(synapse, body_hash, stream));
    }
    let completion = state.pipeline.prompt(request).await?;
    synapse.body.set_completion(completion);
    Ok(reply.answer(synapse, body_hash))
}

fn set_peer<B>(synapse: &mut Synapse<B>, peer: Option<PeerAddr>) {
    if let Some(PeerAddr(addr)) = peer {
        synapse.dendrite.ip = Some(addr.ip().to_string());
        synapse.dendrite.port = Some(addr.port());
    }
}
