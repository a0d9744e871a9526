//! Turns a streamed upstream answer (`text/event-stream` of chat-completion chunks, ended by
//! `data: [DONE]`) into the miner's [`TextStream`], and waits for its first text so that
//! failures before it can be retried (see [`start`]).

use std::collections::VecDeque;
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use futures::stream::BoxStream;
use prompting_miner::{CompletionReport, MinerError, TextStream};
use reqwest::Response;
use reqwest::StatusCode;
use reqwest::header::CONTENT_TYPE;
use tokio::time::{Instant, timeout_at};

use crate::answer::read_completion;
use crate::config::ApiKey;
use crate::failure::{Failure, Retriable, RetryKind, Scrubber};
use crate::sse::{SseEvent, SseParser};
use crate::wire::{ChatChunk, error_message};

/// How long a stream may run and stall.
#[derive(Debug, Clone, Copy)]
pub(crate) struct StreamLimits {
    /// The request's deadline: past it the stream ends with [`MinerError::Timeout`].
    pub deadline: Instant,
    /// The request's whole time budget, reported in the timeout error.
    pub budget_secs: f64,
    /// Longest silence between two chunks of the upstream.
    pub idle: Duration,
}

/// Why a stream failed.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum StreamError {
    /// The upstream answered 200 but ended its event stream, properly or by breaking the
    /// connection, without sending a single byte of it (llama.cpp's Python server does so for
    /// any error raised before the first token, e.g. a prompt longer than its context): the
    /// reason can only be learnt by asking again without streaming.
    Empty,
    /// Any other failure, classified for retrying.
    Failed(Failure),
}

impl StreamError {
    /// The error a caller sees when the stream is not retried.
    pub fn into_miner_error(self) -> MinerError {
        match self {
            StreamError::Empty => MinerError::Backend(
                "the upstream closed its event stream without sending anything".into(),
            ),
            StreamError::Failed(Failure::Fatal(error)) => error,
            StreamError::Failed(Failure::Retriable(failure)) => {
                MinerError::Backend(failure.message)
            }
        }
    }
}

/// A stream whose first text chunk arrived.
pub(crate) struct Started {
    /// The first non-empty chunk, `None` when the upstream finished without text.
    pub first: Option<String>,
    /// The chunks after it.
    pub rest: TextStream,
}

impl Started {
    /// The whole stream, first chunk included.
    pub fn into_stream(self) -> TextStream {
        match self.first {
            Some(first) => {
                Box::pin(futures::stream::once(async move { Ok(first) }).chain(self.rest))
            }
            None => self.rest,
        }
    }
}

/// Reads `response` up to its first non-empty text chunk (or its proper end without text).
/// A failure before then is returned classified, so the caller can retry: nothing has been
/// passed on yet. `report` receives the upstream's `finish_reason` and token usage as they
/// arrive (it is cleared first, so a retried attempt starts afresh).
pub(crate) async fn start(
    response: Response,
    limits: StreamLimits,
    api_key: Option<ApiKey>,
    report: CompletionReport,
) -> Result<Started, StreamError> {
    report.clear();
    let is_json = response
        .headers()
        .get(CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .is_some_and(|value| value.trim_start().starts_with("application/json"));
    if is_json {
        // An upstream that answered with plain JSON instead of an event stream: one chunk
        // with the whole completion.
        let scrubber = Scrubber {
            api_key: api_key.as_ref().map(ApiKey::expose),
        };
        let answer = match timeout_at(limits.deadline, read_completion(response, scrubber)).await {
            Err(_) => Err(Failure::Fatal(MinerError::Timeout(limits.budget_secs))),
            Ok(answer) => answer,
        }
        .map_err(StreamError::Failed)?;
        let text = answer.record(&report);
        return Ok(Started {
            first: (!text.is_empty()).then_some(text),
            rest: Box::pin(futures::stream::empty()),
        });
    }
    let mut state = SseCompletion {
        body: response.bytes_stream().boxed(),
        parser: SseParser::new(),
        ready: VecDeque::new(),
        ended: false,
        saw_bytes: false,
        saw_event: false,
        saw_choice: false,
        saw_finish: false,
        limits,
        api_key,
        report,
    };
    let first = loop {
        match state.next_item().await {
            Some(Ok(text)) if text.is_empty() => continue,
            Some(Ok(text)) => break Some(text),
            Some(Err(error)) => return Err(error),
            None => break None,
        }
    };
    let rest = futures::stream::unfold(state, |mut state| async move {
        state
            .next_item()
            .await
            .map(|item| (item.map_err(StreamError::into_miner_error), state))
    });
    Ok(Started {
        first,
        rest: Box::pin(rest),
    })
}

struct SseCompletion {
    body: BoxStream<'static, reqwest::Result<Bytes>>,
    parser: SseParser,
    /// Items decoded but not yet handed out, in order.
    ready: VecDeque<Result<String, StreamError>>,
    /// No more items will be added to `ready`.
    ended: bool,
    /// At least one byte of the body arrived.
    saw_bytes: bool,
    /// At least one event (of any kind) arrived.
    saw_event: bool,
    /// A chunk with a choice of index 0 was seen.
    saw_choice: bool,
    /// That choice got a `finish_reason`.
    saw_finish: bool,
    limits: StreamLimits,
    api_key: Option<ApiKey>,
    report: CompletionReport,
}

/// A stream failure worth another attempt when it happens before the first chunk.
fn retriable(kind: RetryKind, message: String) -> StreamError {
    StreamError::Failed(Failure::Retriable(Retriable {
        kind,
        message,
        retry_after: None,
    }))
}

/// A stream failure that another attempt cannot fix.
fn fatal(error: MinerError) -> StreamError {
    StreamError::Failed(Failure::Fatal(error))
}

impl SseCompletion {
    fn scrubber(&self) -> Scrubber<'_> {
        Scrubber {
            api_key: self.api_key.as_ref().map(ApiKey::expose),
        }
    }

    async fn next_item(&mut self) -> Option<Result<String, StreamError>> {
        loop {
            if let Some(item) = self.ready.pop_front() {
                return Some(item);
            }
            if self.ended {
                return None;
            }
            let wait_until = (Instant::now() + self.limits.idle).min(self.limits.deadline);
            match timeout_at(wait_until, self.body.next()).await {
                Err(_) if wait_until >= self.limits.deadline => {
                    self.fail(fatal(MinerError::Timeout(self.limits.budget_secs)));
                }
                Err(_) => self.fail(retriable(
                    RetryKind::Timeout,
                    format!(
                        "the upstream stream stalled: nothing received for {:.1} seconds",
                        self.limits.idle.as_secs_f64()
                    ),
                )),
                Ok(Some(Ok(bytes))) => {
                    self.saw_bytes |= !bytes.is_empty();
                    let pushed = self.parser.push(&bytes);
                    match pushed {
                        Ok(events) => events.into_iter().for_each(|event| self.handle(event)),
                        Err(e) => self.fail(retriable(
                            RetryKind::Connection,
                            format!("the upstream stream is malformed: {e}"),
                        )),
                    }
                }

                Ok(Some(Err(_))) if !self.saw_bytes => self.fail(StreamError::Empty),
                Ok(Some(Err(error))) => {
                    let message = match crate::failure::from_transport(&error, self.scrubber()) {
                        Failure::Retriable(failure) => failure.message,
                        Failure::Fatal(error) => error.to_string(),
                    };
                    self.fail(retriable(
                        RetryKind::Connection,
                        format!("the upstream stream broke off: {message}"),
                    ));
                }
                Ok(None) => {
                    match self.parser.finish() {
                        Ok(Some(event)) => self.handle(event),
                        Ok(None) => {}
                        Err(e) => self.fail(retriable(
                            RetryKind::Connection,
                            format!("the upstream stream is malformed: {e}"),
                        )),
                    }
                    if !self.ended {
                        if self.saw_finish {
                            self.done();
                        } else if !self.saw_event {
                            self.fail(StreamError::Empty);
                        } else {
                            self.fail(retriable(
                                RetryKind::Connection,
                                "the upstream stream ended before [DONE]".into(),
                            ));
                        }
                    }
                }
            }
        }
    }

    /// Decodes one event; events after the end are ignored.
    fn handle(&mut self, event: SseEvent) {
        if self.ended {
            return;
        }
        self.saw_event = true;
        let data = event.data.trim();
        if event.event == "error" {
            let json = serde_json::from_str(data).ok();
            let message = json
                .as_ref()
                .and_then(error_message)
                .unwrap_or_else(|| data.to_owned());
            let code = json.as_ref().and_then(error_code);
            return self.upstream_error(&message, code);
        }
        if event.event != "message" {
            return;
        }
        if data == "[DONE]" {
            return self.done();
        }
        let chunk: ChatChunk = match serde_json::from_str(data) {
            Ok(chunk) => chunk,
            Err(e) => {
                let detail = self.scrubber().scrub(&e.to_string());
                return self.fail(retriable(
                    RetryKind::Connection,
                    format!("the upstream sent a malformed stream chunk: {detail}"),
                ));
            }
        };
        if let Some(error) = chunk.error {
            let wrapped = serde_json::json!({ "error": error });
            let message = error_message(&wrapped).unwrap_or_else(|| "unknown error".to_owned());
            return self.upstream_error(&message, error_code(&wrapped));
        }
        if let Some(usage) = chunk.usage {
            self.report.set_usage(usage.into());
        }
        // With `n > 1` the choices interleave; only the first is the completion.
        for choice in chunk.choices.into_iter().filter(|c| c.index == 0) {
            self.saw_choice = true;
            if let Some(text) = choice.delta.content.filter(|text| !text.is_empty()) {
                self.ready.push_back(Ok(text));
            }
            if let Some(reason) = choice.finish_reason {
                self.saw_finish = true;
                if !self.report.set_finish_reason(&reason) {
                    tracing::debug!(reason = %reason, "ignoring an unusual finish_reason from the upstream");
                }
            }
        }
    }

    /// An error the upstream reported inside its stream (vLLM sends `{"error": {...,
    /// "code": 400}}`): a 4xx code means the request itself is refused.
    fn upstream_error(&mut self, message: &str, code: Option<u16>) {
        let message = format!(
            "the upstream stream failed: {}",
            self.scrubber().scrub(message)
        );
        let error = match code.and_then(|code| StatusCode::from_u16(code).ok()) {
            Some(status) if status.is_client_error() && status != StatusCode::TOO_MANY_REQUESTS => {
                fatal(MinerError::BadRequest(message))
            }
            _ => retriable(RetryKind::ServerError, message),
        };
        self.fail(error);
    }

    fn done(&mut self) {
        self.ended = true;
        if !self.saw_choice {
            self.ready.push_back(Err(fatal(MinerError::Backend(
                "the upstream stream has no choices".into(),
            ))));
        }
    }

    fn fail(&mut self, error: StreamError) {
        self.ended = true;
        self.ready.push_back(Err(error));
    }
}

/// The numeric `error.code` of an error body, when it is an HTTP status.
fn error_code(body: &serde_json::Value) -> Option<u16> {
    let code = body.get("error")?.get("code")?;
    code.as_u64()
        .or_else(|| code.as_str()?.parse().ok())
        .and_then(|code| u16::try_from(code).ok())
}
