//! bittensor 11 validators' prompts: `POST /Prompting` signed with btauth/1, a plain JSON
//! body `{"roles", "messages", "timeout"?}` answered `{"completion"}`; errors are
//! `{"message", "class"?}` with the status as HTTP code.
//!
//! The legacy protocol uses the same route; [`claims`] tells this protocol's requests apart
//! by their `X-Bittensor-Version` header.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, Method, Request, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use prompting_miner::{PromptRequest, Protocol, SamplingOverrides};
use serde::Deserialize;
use tokio::time::Instant;

use crate::caller_class::caller_rank;
use crate::deadline::{budget, deadline};
use crate::edge::auth::{authenticate, is_signed};
use crate::edge::{AxonState, Rejection};
use crate::server::ConnectionHandle;

/// The route this protocol serves.
pub const PATH: &str = "/Prompting";

/// The routes of this protocol over `state`, each request counted as `btauth`/`Prompting`.
pub fn routes(state: Arc<AxonState>) -> Router {
    let observe = state.metrics.layer("btauth", "Prompting");
    Router::new()
        .route(PATH, post(prompting).layer(observe))
        .with_state(state)
}

/// Whether `request` is one of this protocol's: a `POST /Prompting` with btauth/1 headers.
pub fn claims<B>(request: &Request<B>) -> bool {
    request.method() == Method::POST && request.uri().path() == PATH && is_signed(request.headers())
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PromptBody {
    roles: Vec<String>,
    messages: Vec<String>,
    #[serde(default)]
    timeout: Option<f64>,
}

/// `POST /Prompting` signed with btauth/1.
async fn prompting(
    State(state): State<Arc<AxonState>>,
    method: Method,
    uri: Uri,
    connection: Option<axum::Extension<ConnectionHandle>>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, Rejection> {
    let start = Instant::now();
    let auth = authenticate(&state, Protocol::BtAuth, &method, &uri, &headers, body).await?;
    if let Some(connection) = connection {
        connection.rank_caller(caller_rank(&state.pipeline, &auth.caller));
    }
    let request: PromptBody = serde_json::from_slice(&auth.body)
        .map_err(|e| Rejection::Malformed(format!("invalid JSON body: {e}")))?;
    let budget = budget(request.timeout, state.limits.max_request_timeout)?;
    let request = PromptRequest {
        roles: request.roles,
        messages: request.messages,
        caller: auth.caller,
        protocol: Protocol::BtAuth,
        deadline: deadline(start, budget),
        sampling: SamplingOverrides::default(),
        priority: None,
        report: Default::default(),
    };
    let completion = state.pipeline.prompt(request).await?;
    Ok(Json(serde_json::json!({ "completion": completion })).into_response())
}
