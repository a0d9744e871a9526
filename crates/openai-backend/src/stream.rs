//! Turns a streamed upstream answer (`text/event-stream` of chat-completion chunks, ended by
//! `data: [DONE]`) into the miner's [`TextStream`].

use std::collections::VecDeque;
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use futures::stream::BoxStream;
use prompting_miner::{MinerError, TextStream};
use reqwest::Response;
use reqwest::header::CONTENT_TYPE;
use tokio::time::{Instant, timeout_at};

use crate::answer::read_completion;
use crate::config::ApiKey;
use crate::failure::{Failure, Scrubber};
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

/// The completion text of `response`, chunk by chunk. An upstream that answered with plain
/// JSON instead of an event stream gives one chunk with the whole completion.
pub(crate) fn completion_stream(
    response: Response,
    limits: StreamLimits,
    api_key: Option<ApiKey>,
) -> TextStream {
    let is_json = response
        .headers()
        .get(CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .is_some_and(|value| value.trim_start().starts_with("application/json"));
    if is_json {
        return Box::pin(futures::stream::once(async move {
            let scrubber = Scrubber {
                api_key: api_key.as_ref().map(ApiKey::expose),
            };
            match timeout_at(limits.deadline, read_completion(response, scrubber)).await {
                Err(_) => Err(MinerError::Timeout(limits.budget_secs)),
                Ok(Ok(text)) => Ok(text),
                Ok(Err(Failure::Fatal(error))) => Err(error),
                Ok(Err(Failure::Retriable(failure))) => Err(MinerError::Backend(failure.message)),
            }
        }));
    }
    let state = SseCompletion {
        body: response.bytes_stream().boxed(),
        parser: SseParser::new(),
        ready: VecDeque::new(),
        ended: false,
        saw_choice: false,
        saw_finish: false,
        limits,
        api_key,
    };
    Box::pin(futures::stream::unfold(state, |mut state| async move {
        state.next_item().await.map(|item| (item, state))
    }))
}

struct SseCompletion {
    body: BoxStream<'static, reqwest::Result<Bytes>>,
    parser: SseParser,
    /// Items decoded but not yet handed out, in order.
    ready: VecDeque<Result<String, MinerError>>,
    /// No more items will be added to `ready`.
    ended: bool,
    /// A chunk with a choice of index 0 was seen.
    saw_choice: bool,
    /// That choice got a `finish_reason`.
    saw_finish: bool,
    limits: StreamLimits,
    api_key: Option<ApiKey>,
}

impl SseCompletion {
    fn scrubber(&self) -> Scrubber<'_> {
        Scrubber {
            api_key: self.api_key.as_ref().map(ApiKey::expose),
        }
    }

    async fn next_item(&mut self) -> Option<Result<String, MinerError>> {
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
                    self.fail(MinerError::Timeout(self.limits.budget_secs));
                }
                Err(_) => self.fail(MinerError::Backend(format!(
                    "the upstream stream stalled: nothing received for {:.1} seconds",
                    self.limits.idle.as_secs_f64()
                ))),
                Ok(Some(Ok(bytes))) => match self.parser.push(&bytes) {
                    Ok(events) => events.into_iter().for_each(|event| self.handle(event)),
                    Err(e) => self.fail(MinerError::Backend(format!(
                        "the upstream stream is malformed: {e}"
                    ))),
                },
                Ok(Some(Err(error))) => {
                    let message = match crate::failure::from_transport(&error, self.scrubber()) {
                        Failure::Retriable(failure) => failure.message,
                        Failure::Fatal(error) => error.to_string(),
                    };
                    self.fail(MinerError::Backend(format!(
                        "the upstream stream broke off: {message}"
                    )));
                }
                Ok(None) => {
                    match self.parser.finish() {
                        Ok(Some(event)) => self.handle(event),
                        Ok(None) => {}
                        Err(e) => self.fail(MinerError::Backend(format!(
                            "the upstream stream is malformed: {e}"
                        ))),
                    }
                    if !self.ended {
                        if self.saw_finish {
                            self.done();
                        } else {
                            self.fail(MinerError::Backend(
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
        let data = event.data.trim();
        if event.event == "error" {
            let message = serde_json::from_str(data)
                .ok()
                .and_then(|json| error_message(&json))
                .unwrap_or_else(|| data.to_owned());
            let message = self.scrubber().scrub(&message);
            return self.fail(MinerError::Backend(format!(
                "the upstream stream failed: {message}"
            )));
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
                return self.fail(MinerError::Backend(format!(
                    "the upstream sent a malformed stream chunk: {detail}"
                )));
            }
        };
        if let Some(error) = chunk.error {
            let message = error_message(&serde_json::json!({ "error": error }))
                .unwrap_or_else(|| "unknown error".to_owned());
            let message = self.scrubber().scrub(&message);
            return self.fail(MinerError::Backend(format!(
                "the upstream stream failed: {message}"
            )));
        }
        // With `n > 1` the choices interleave; only the first is the completion.
        for choice in chunk.choices.into_iter().filter(|c| c.index == 0) {
            self.saw_choice = true;
            if let Some(text) = choice.delta.content.filter(|text| !text.is_empty()) {
                self.ready.push_back(Ok(text));
            }
            if choice.finish_reason.is_some() {
                self.saw_finish = true;
            }
        }
    }

    fn done(&mut self) {
        self.ended = true;
        if !self.saw_choice {
            self.ready.push_back(Err(MinerError::Backend(
                "the upstream stream has no choices".into(),
            )));
        }
    }

    fn fail(&mut self, error: MinerError) {
        self.ended = true;
        self.ready.push_back(Err(error));
    }
}
