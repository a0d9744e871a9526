//! An OpenAI-compatible chat-completions endpoint on the axon, authenticated with btauth/1
//! (or, with `--openai_api.key`, a bearer key: [`crate::api_key`]): `POST /v1/chat/completions`
//! (JSON, or Server-Sent Events with `stream: true`) and `GET /v1/models`. Requests go through the same pipeline as every other protocol; errors
//! have OpenAI's shape ([`OpenAiRejection`]).

pub mod schema;
mod sse;

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, Method, Uri, header};
use axum::response::sse::{KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use prompting_miner::{CompletionReport, PromptRequest, Protocol, SamplingOverrides};
use tokio::time::Instant;

use crate::api_key;
use crate::deadline::{budget, deadline};
use crate::edge::auth::{Authenticated, authenticate, is_signed, read};
use crate::edge::{AxonState, OpenAiRejection, Rejection};
use schema::{AssistantMessage, ChatCompletion, ChatRequest, Choice, Usage};

/// The chat-completions route.
pub const CHAT_COMPLETIONS: &str = "/v1/chat/completions";
/// The model list route.
pub const MODELS: &str = "/v1/models";

/// The routes of this protocol over `state`; chat completions are counted as
/// `openai`/`/v1/chat/completions`.
pub fn routes(state: Arc<AxonState>) -> Router {
    let observe = state.metrics.layer("openai", CHAT_COMPLETIONS);
    Router::new()
        .route(CHAT_COMPLETIONS, post(chat_completions).layer(observe))
        .route(MODELS, get(models))
        .with_state(state)
}

fn unix_seconds() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Turns OpenAI messages into the pipeline's roles and messages.
fn to_prompt(request: &ChatRequest) -> Result<(Vec<String>, Vec<String>), Rejection> {
    if request.messages.is_empty() {
        return Err(Rejection::Malformed("messages must not be empty".into()));
    }
    let mut roles = Vec::with_capacity(request.messages.len());
    let mut messages = Vec::with_capacity(request.messages.len());
    for message in &request.messages {
        let text = message.content.text().map_err(Rejection::Malformed)?;
        roles.push(message.role.clone());
        messages.push(text);
    }
    Ok((roles, messages))
}

/// Who is calling: a btauth/1-signed request is verified as such; with `--openai_api.key`
/// set, any other request must carry one of the keys (its caller is
/// [`api_key::API_KEY_CALLER`]), checked before its body is read.
async fn caller(
    state: &AxonState,
    method: &Method,
    uri: &Uri,
    headers: &HeaderMap,
    body: Body,
) -> Result<Authenticated, Rejection> {
    let keys = &state.args.openai_api.keys;
    if keys.is_empty() || is_signed(headers) {
        return authenticate(state, Protocol::OpenAi, method, uri, headers, body).await;
    }
    api_key::check(keys, headers)?;
    Ok(Authenticated {
        caller: api_key::API_KEY_CALLER.to_string(),
        body: read(state, body).await?,
    })
}

/// `POST /v1/chat/completions`.
async fn chat_completions(
    State(state): State<Arc<AxonState>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, OpenAiRejection> {
    let start = Instant::now();
    let auth = match caller(&state, &method, &uri, &headers, body).await {
        Ok(auth) => auth,
        // Refused before its body was (all) read: the server then closes the connection, so
        // the answer says so; a client reusing it would race the close (the `openai` SDK's
        // next request failed with "Server disconnected without sending a response").
        Err(rejection) => {
            let mut response = OpenAiRejection::from(rejection).into_response();
            response
                .headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
            return Ok(response);
        }
    };
    let chat: ChatRequest = serde_json::from_slice(&auth.body)
        .map_err(|e| Rejection::Malformed(format!("invalid chat completions request: {e}")))?;
    let (roles, messages) = to_prompt(&chat)?;
    let budget = budget(chat.timeout, state.limits.max_request_timeout)?;
    let request = PromptRequest {
        roles,
        messages,
        caller: auth.caller,
        protocol: Protocol::OpenAi,
        deadline: deadline(start, budget),
        sampling: SamplingOverrides {
            max_tokens: chat.max_completion_tokens.or(chat.max_tokens),
            temperature: chat.temperature,
            top_p: chat.top_p,
        },
        priority: None,
        report: CompletionReport::default(),
    };
    let report = request.report.clone();
    let model = state.pipeline.miner().name().to_string();
    let id = format!("chatcmpl-{}", uuid::Uuid::new_v4().simple());
    if chat.stream {
        let stream = state.pipeline.prompt_stream(request).await?;
        let events = sse::sse_events(stream, report, id, model, unix_seconds());
        return Ok(Sse::new(events)
            .keep_alive(KeepAlive::default())
            .into_response());
    }
    let completion = state.pipeline.prompt(request).await?;
    let answer = ChatCompletion {
        id,
        object: "chat.completion",
        created: unix_seconds(),
        model,
        choices: vec![Choice {
            index: 0,
            message: AssistantMessage {
                role: "assistant",
                content: completion,
            },
            finish_reason: sse::finish_reason(&report),
        }],
        usage: report.usage().map(|usage| Usage {
            prompt_tokens: usage.prompt_tokens,
            completion_tokens: usage.completion_tokens,
            total_tokens: usage.prompt_tokens.saturating_add(usage.completion_tokens),
        }),
    };
    Ok(Json(answer).into_response())
}

/// `GET /v1/models`: the one model this miner serves. Public (names nothing secret), so
/// OpenAI clients can discover the endpoint before signing.
async fn models(State(state): State<Arc<AxonState>>) -> Response {
    let name = state.pipeline.miner().name();
    Json(serde_json::json!({
        "object": "list",
        "data": [{ "id": name, "object": "model", "created": 0, "owned_by": "prompting-rs" }],
    }))
    .into_response()
}
