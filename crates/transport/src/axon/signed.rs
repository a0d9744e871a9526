//! btauth/1-signed requests (bittensor 11 validators): authentication shared by the signed
//! routes, and `POST /Prompting` with a plain JSON body answering `{"completion": ...}`.

use std::time::Duration;

use axum::body::Body;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use prompting_miner::{MinerError, PromptRequest, Protocol, SamplingOverrides};
use serde::Deserialize;
use tokio::time::Instant;

use super::body::read_body;
use super::state::AxonState;
use crate::btauth::HEADER_VERSION;

/// Whether a request carries btauth/1 headers (and so is not a legacy synapse request).
pub fn is_signed(headers: &HeaderMap) -> bool {
    headers.contains_key(HEADER_VERSION)
}

/// A refused signed request: status and a message safe to show.
#[derive(Debug, Clone, PartialEq)]
pub struct Refused {
    /// HTTP status.
    pub status: u16,
    /// Why.
    pub message: String,
    /// The bittensor error class, for authentication failures.
    pub class: Option<&'static str>,
}

impl Refused {
    fn new(status: u16, message: impl Into<String>) -> Self {
        Refused {
            status,
            message: message.into(),
            class: None,
        }
    }
}

impl From<MinerError> for Refused {
    fn from(error: MinerError) -> Self {
        Refused::new(error.status_code(), error.to_string())
    }
}

/// A signed request whose body is read and whose signature verified.
pub struct Authenticated {
    /// The caller's hotkey, SS58 with prefix 42 (as the metagraph lists it).
    pub caller: String,
    /// The raw body.
    pub body: bytes::Bytes,
}

/// Reads the body within the limits, then verifies the btauth/1 headers over it.
pub async fn authenticate(
    state: &AxonState,
    method: &Method,
    uri: &Uri,
    headers: &HeaderMap,
    body: Body,
) -> Result<Authenticated, Refused> {
    let body = read_body(body, state.limits.max_body_bytes, state.limits.read_timeout)
        .await
        .map_err(|e| Refused::new(e.status(), e.to_string()))?;
    let target = uri.path_and_query().map_or(uri.path(), |pq| pq.as_str());
    match state.btauth.verify(method, target, headers, &body) {
        Ok(caller) => Ok(Authenticated {
            caller: caller.public_key.to_ss58(),
            body,
        }),
        Err(err) => Err(Refused {
            status: 401,
            message: err.to_string(),
            class: Some(err.class().as_str()),
        }),
    }
}

/// The deadline of a request asking for `timeout` seconds (default 12), capped by the axon.
pub fn deadline(
    state: &AxonState,
    start: Instant,
    timeout: Option<f64>,
) -> Result<Instant, Refused> {
    let timeout = timeout.unwrap_or(prompting_synapse::DEFAULT_TIMEOUT);
    if !(timeout.is_finite() && timeout > 0.0) {
        return Err(Refused::new(
            400,
            format!("timeout must be a positive number of seconds, got {timeout}"),
        ));
    }
    let budget = timeout.min(state.limits.max_request_timeout);
    Ok(start + Duration::from_secs_f64(budget))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PromptBody {
    roles: Vec<String>,
    messages: Vec<String>,
    #[serde(default)]
    timeout: Option<f64>,
}

/// `POST /Prompting` signed with btauth/1: `{"roles", "messages", "timeout"?}` →
/// `{"completion"}`; errors are `{"message", "class"?}` with the status as HTTP code.
pub async fn prompting(
    state: &AxonState,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let start = Instant::now();
    let result = async {
        let auth = authenticate(state, &method, &uri, &headers, body).await?;
        let request: PromptBody = serde_json::from_slice(&auth.body)
            .map_err(|e| Refused::new(400, format!("invalid JSON body: {e}")))?;
        let request = PromptRequest {
            roles: request.roles,
            messages: request.messages,
            caller: auth.caller,
            protocol: Protocol::BtAuth,
            deadline: deadline(state, start, request.timeout)?,
            sampling: SamplingOverrides::default(),
            report: Default::default(),
        };
        Ok::<_, Refused>(state.pipeline.prompt(request).await?)
    }
    .await;
    let response = match result {
        Ok(completion) => {
            axum::Json(serde_json::json!({ "completion": completion })).into_response()
        }
        Err(refused) => refusal(&refused),
    };
    state.metrics.observe(
        "btauth",
        "Prompting",
        response.status().as_u16(),
        start.elapsed(),
    );
    response
}

/// The JSON response of a refusal.
pub fn refusal(refused: &Refused) -> Response {
    let status = StatusCode::from_u16(refused.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let body = match refused.class {
        Some(class) => serde_json::json!({ "message": refused.message, "class": class }),
        None => serde_json::json!({ "message": refused.message }),
    };
    (status, axum::Json(body)).into_response()
}
