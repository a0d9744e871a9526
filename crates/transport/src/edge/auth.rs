//! btauth/1 authentication of a request, for every route that uses it (bittensor 11's
//! `POST /Prompting`, the OpenAI-compatible routes, gRPC): a hotkey the blacklist refuses
//! whatever it signs is refused first, then the body is read within the limits and the
//! headers are verified over it by the axon's one verifier.

use axum::body::Body;
use axum::http::{HeaderMap, Method, Uri};
use bytes::Bytes;

use super::body::read_body;
use super::rejection::Rejection;
use super::state::AxonState;
use prompting_miner::Protocol;

use crate::btauth::{HEADER_VERSION, VerifiedCaller, claimed_sender};

/// Whether a request carries btauth/1 headers (and so is not a legacy synapse request).
pub fn is_signed(headers: &HeaderMap) -> bool {
    headers.contains_key(HEADER_VERSION)
}

/// A signed request whose body is read and whose signature verified.
#[derive(Debug)]
pub struct Authenticated {
    /// The caller's hotkey, SS58 with prefix 42 (as the metagraph lists it).
    pub caller: String,
    /// The raw body.
    pub body: Bytes,
}

/// Refuses the claimed hotkey if the blacklist would whatever it signs ([`refuse_claimed`]),
/// then reads the body within the limits and verifies the btauth/1 headers over it.
pub async fn authenticate(
    state: &AxonState,
    protocol: Protocol,
    method: &Method,
    uri: &Uri,
    headers: &HeaderMap,
    body: Body,
) -> Result<Authenticated, Rejection> {
    refuse_claimed(state, headers, protocol)?;
    let body = read(state, body).await?;
    let caller = verify(state, method, uri, headers, &body)?;
    Ok(Authenticated {
        caller: caller.public_key.to_ss58(),
        body,
    })
}

/// The blacklist's identity steps ([`Pipeline::check_identity`]) for the hotkey a btauth/1
/// request claims to come from, before its body is read or its signature checked: a key
/// refused whatever it signs costs neither and takes no room in the replay store. A claim
/// that is not a valid address is left to the verifier, which refuses it with its reason.
///
/// [`Pipeline::check_identity`]: prompting_miner::Pipeline::check_identity
pub fn refuse_claimed(
    state: &AxonState,
    headers: &HeaderMap,
    protocol: Protocol,
) -> Result<(), Rejection> {
    if let Some(claimed) = claimed_sender(headers) {
        state.pipeline.check_identity(&claimed, protocol)?;
    }
    Ok(())
}

/// Reads a body within the axon's size and time limits.
pub async fn read(state: &AxonState, body: Body) -> Result<Bytes, Rejection> {
    Ok(read_body(body, state.limits.max_body_bytes, state.limits.read_timeout).await?)
}

/// Verifies the btauth/1 headers of a request to `uri` over `signed` (the bytes the
/// signature covers: the body, or a gRPC call's message).
pub fn verify(
    state: &AxonState,
    method: &Method,
    uri: &Uri,
    headers: &HeaderMap,
    signed: &[u8],
) -> Result<VerifiedCaller, Rejection> {
    let target = uri.path_and_query().map_or(uri.path(), |pq| pq.as_str());
    Ok(state.btauth.verify(method, target, headers, signed)?)
}
