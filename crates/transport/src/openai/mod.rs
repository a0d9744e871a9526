//! An OpenAI-compatible chat-completions endpoint on the axon, authenticated with btauth/1:
//! `POST /v1/chat/completions` (JSON, or Server-Sent Events with `stream: true`) and
//! `GET /v1/models`. Requests go through the same pipeline as every other protocol.

pub mod schema;

use std::convert::Infallible;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures::{Stream, StreamExt};
use prompting_miner::{CompletionReport, PromptRequest, Protocol, SamplingOverrides, TextStream};
use tokio::time::Instant;

use crate::axon::AxonState;
use crate::axon::signed::{Refused, authenticate, deadline};
use schema::{
    AssistantMessage, ChatChunk, ChatCompletion, ChatRequest, Choice, ChunkChoice, Delta,
    ErrorBody, ErrorDetail, Usage,
};

fn unix_seconds() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn error_kind(status: u16) -> &'static str {
    match status {
        400 | 413 => "invalid_request_error",
        401 => "authentication_error",
        403 => "permission_error",
        408 => "timeout",
        503 => "rate_limit_error",
        _ => "server_error",
    }
}

fn openai_error(refused: &Refused) -> Response {
    let status = StatusCode::from_u16(refused.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let body = ErrorBody {
        error: ErrorDetail {
            message: refused.message.clone(),
            kind: error_kind(refused.status),
            code: refused.class,
        },
    };
    (status, axum::Json(body)).into_response()
}

/// Turns OpenAI messages into the pipeline's roles and messages.
fn to_prompt(request: &ChatRequest) -> Result<(Vec<String>, Vec<String>), Refused> {
    if request.messages.is_empty() {
        return Err(Refused {
            status: 400,
            message: "messages must not be empty".into(),
            class: None,
        });
    }
    let mut roles = Vec::with_capacity(request.messages.len());
    let mut messages = Vec::with_capacity(request.messages.len());
    for message in &request.messages {
        let text = message.content.text().map_err(|message| Refused {
            status: 400,
            message,
            class: None,
        })?;
        roles.push(message.role.clone());
        messages.push(text);
    }
    Ok((roles, messages))
}

/// `POST /v1/chat/completions`.
pub async fn chat_completions(
    State(state): State<Arc<AxonState>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let start = Instant::now();
    let response = match serve(&state, method, uri, headers, body, start).await {
        Ok(response) => response,
        Err(refused) => openai_error(&refused),
    };
    state.metrics.observe(
        "openai",
        "/v1/chat/completions",
        response.status().as_u16(),
        start.elapsed(),
    );
    response
}

async fn serve(
    state: &AxonState,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Body,
    start: Instant,
) -> Result<Response, Refused> {
    let auth = authenticate(state, &method, &uri, &headers, body).await?;
    let chat: ChatRequest = serde_json::from_slice(&auth.body).map_err(|e| Refused {
        status: 400,
        message: format!("invalid chat completions request: {e}"),
        class: None,
    })?;
    let (roles, messages) = to_prompt(&chat)?;
    let request = PromptRequest {
        roles,
        messages,
        caller: auth.caller,
        protocol: Protocol::OpenAi,
        deadline: deadline(state, start, chat.timeout)?,
        sampling: SamplingOverrides {
            max_tokens: chat.max_completion_tokens.or(chat.max_tokens),
            temperature: chat.temperature,
            top_p: chat.top_p,
        },
        report: CompletionReport::default(),
    };
    let report = request.report.clone();
    let model = state.pipeline.miner().name().to_string();
    let id = format!("chatcmpl-{}", uuid::Uuid::new_v4().simple());
    if chat.stream {
        let stream = state.pipeline.prompt_stream(request).await?;
        let events = sse_events(stream, report, id, model, unix_seconds());
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
            finish_reason: finish_reason(&report),
        }],
        usage: report.usage().map(|usage| Usage {
            prompt_tokens: usage.prompt_tokens,
            completion_tokens: usage.completion_tokens,
            total_tokens: usage.prompt_tokens.saturating_add(usage.completion_tokens),
        }),
    };
    Ok(axum::Json(answer).into_response())
}

/// Why the backend stopped generating; `stop` when it did not say.
fn finish_reason(report: &CompletionReport) -> String {
    report.finish_reason().unwrap_or_else(|| "stop".to_owned())
}

fn chunk(id: &str, model: &str, created: u64, delta: Delta, finish: Option<String>) -> Event {
    let chunk = ChatChunk {
        id: id.to_string(),
        object: "chat.completion.chunk",
        created,
        model: model.to_string(),
        choices: vec![ChunkChoice {
            index: 0,
            delta,
            finish_reason: finish,
        }],
    };
    Event::default().data(serde_json::to_string(&chunk).unwrap_or_default())
}

/// The SSE stream of an answer: a role chunk, one chunk per text piece, a final chunk with
/// the backend's `finish_reason` (read from `report` once the text ended; `stop` when the
/// backend did not say), then `[DONE]`. A backend failure midway sends an error event and
/// ends the stream without `[DONE]`.
fn sse_events(
    text: TextStream,
    report: CompletionReport,
    id: String,
    model: String,
    created: u64,
) -> impl Stream<Item = Result<Event, Infallible>> + Send {
    let first = chunk(
        &id,
        &model,
        created,
        Delta {
            role: Some("assistant"),
            content: None,
        },
        None,
    );
    let (body_id, body_model) = (id.clone(), model.clone());
    let body = text.scan(false, move |failed, piece| {
        if *failed {
            return futures::future::ready(None);
        }
        let event = match piece {
            Ok(content) => chunk(
                &body_id,
                &body_model,
                created,
                Delta {
                    role: None,
                    content: Some(content),
                },
                None,
            ),
            Err(error) => {
                *failed = true;
                let status = error.status_code();
                let body = ErrorBody {
                    error: ErrorDetail {
                        message: error.to_string(),
                        kind: error_kind(status),
                        code: None,
                    },
                };
                Event::default().data(serde_json::to_string(&body).unwrap_or_default())
            }
        };
        futures::future::ready(Some((event, *failed)))
    });
    let failed = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let seen = failed.clone();
    let body = body.map(move |(event, failed_now)| {
        if failed_now {
            seen.store(true, std::sync::atomic::Ordering::Relaxed);
        }
        event
    });
    let tail = futures::stream::once(async move {
        (!failed.load(std::sync::atomic::Ordering::Relaxed)).then(|| {
            vec![
                chunk(
                    &id,
                    &model,
                    created,
                    Delta::default(),
                    Some(finish_reason(&report)),
                ),
                Event::default().data("[DONE]"),
            ]
        })
    })
    .flat_map(|events| futures::stream::iter(events.unwrap_or_default()));
    futures::stream::once(async move { first })
        .chain(body)
        .chain(tail)
        .map(Ok)
}

/// `GET /v1/models`: the one model this miner serves. Public (names nothing secret), so
/// OpenAI clients can discover the endpoint before signing.
pub async fn models(State(state): State<Arc<AxonState>>) -> Response {
    let name = state.pipeline.miner().name();
    axum::Json(serde_json::json!({
        "object": "list",
        "data": [{ "id": name, "object": "model", "created": 0, "owned_by": "prompting-rs" }],
    }))
    .into_response()
}
