//! [`OpenAiBackend`]: the [`Miner`] that forwards prompts to chat-completions upstreams, with
//! retries, failover and the request's deadline.

use std::fmt;
use std::future::Future;
use std::time::Duration;

use async_trait::async_trait;
use prompting_miner::{CompletionReport, Miner, MinerError, PromptRequest, TextStream};
use reqwest::header::{ACCEPT, AUTHORIZATION};
use reqwest::{Client, Response, redirect};
use tokio::time::{Instant, sleep_until, timeout_at};

use crate::answer::{Answer, MAX_ERROR_BODY_BYTES, read_completion, read_limited};
use crate::config::{
    ApiKey, OpenAiArgs, Settings, check_max_tokens, check_temperature, check_top_p,
};
use crate::error::OpenAiError;
use crate::failure::{self, Failure, Retriable, RetryKind, Scrubber};
use crate::retry::backoff;
use crate::stream::{self, StreamError, StreamLimits};
use crate::upstream::{Plan, Upstream, UpstreamPool};
use crate::wire::{ChatMessage, ChatRequest, StreamOptions};

/// Longest wait for a TCP/TLS connection to be set up (shorter when `--openai.timeout` is).
const MAX_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// A [`Miner`] answering prompts through OpenAI-compatible chat-completions APIs.
///
/// One pooled HTTP client (HTTP/2 when the upstream offers it over TLS) is shared by all
/// requests. Each request starts at the next upstream (round-robin); a 429, a 5xx, a
/// connection error or a `--openai.timeout` moves the next attempt to the next upstream, with
/// exponential backoff when an upstream is tried again and `Retry-After` honoured, all within
/// the request's deadline.
pub struct OpenAiBackend {
    settings: Settings,
    client: Client,
    upstreams: UpstreamPool,
}

impl fmt::Debug for OpenAiBackend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OpenAiBackend")
            .field("model", &self.settings.model_name)
            .field("upstreams", &self.upstreams)
            .field("api_key", &self.settings.api_key)
            .finish_non_exhaustive()
    }
}

impl OpenAiBackend {
    /// Validates `args` and sets up the HTTP client.
    pub fn new(args: OpenAiArgs) -> Result<OpenAiBackend, OpenAiError> {
        if args.suffix.is_some() {
            tracing::warn!("--openai.suffix is ignored: chat models take no suffix");
        }
        if args.n > 1 {
            tracing::warn!(
                n = args.n,
                "--openai.n > 1: only the first choice is used, the others are paid for and dropped"
            );
        }
        let settings = args.into_settings()?;
        let client = Client::builder()
            .use_rustls_tls()
            .user_agent(concat!("prompting-rs/", env!("CARGO_PKG_VERSION")))
            .redirect(redirect::Policy::none())
            .connect_timeout(settings.timeout.min(MAX_CONNECT_TIMEOUT))
            .pool_idle_timeout(Duration::from_secs(90))
            .tcp_keepalive(Duration::from_secs(60))
            .tcp_nodelay(true)
            .build()
            .map_err(|e| OpenAiError::Client(e.to_string()))?;
        let upstreams = UpstreamPool::new(settings.upstreams.clone(), settings.probe_interval);
        tracing::info!(
            model = %settings.model_name,
            upstreams = ?settings.upstreams.iter().map(|(label, _)| label).collect::<Vec<_>>(),
            api_key = settings.api_key.is_some(),
            "OpenAI backend ready"
        );
        Ok(OpenAiBackend {
            settings,
            client,
            upstreams,
        })
    }

    /// The model asked of the upstreams.
    pub fn model_name(&self) -> &str {
        &self.settings.model_name
    }

    fn scrubber(&self) -> Scrubber<'_> {
        Scrubber {
            api_key: self.settings.api_key.as_ref().map(ApiKey::expose),
        }
    }

    /// The body sent upstream: `zip(roles, messages)` and the configured sampling, overridden
    /// by the caller's.
    fn chat_request<'a>(
        &'a self,
        request: &'a PromptRequest,
        stream: bool,
    ) -> Result<ChatRequest<'a>, MinerError> {
        if request.roles.len() != request.messages.len() {
            tracing::warn!(
                roles = request.roles.len(),
                messages = request.messages.len(),
                "roles and messages differ in length: the turns beyond the shorter list are dropped"
            );
        }
        let messages: Vec<ChatMessage<'a>> = request
            .roles
            .iter()
            .zip(&request.messages)
            .map(|(role, content)| ChatMessage { role, content })
            .collect();
        if messages.is_empty() {
            return Err(MinerError::BadRequest(
                "the request has no (role, message) pair".into(),
            ));
        }
        fn checked<T: Copy + fmt::Display>(
            name: &str,
            value: Option<T>,
            default: T,
            check: fn(T) -> Result<T, &'static str>,
        ) -> Result<T, MinerError> {
            match value {
                None => Ok(default),
                Some(value) => check(value).map_err(|expected| {
                    MinerError::BadRequest(format!("{name} {value}: expected {expected}"))
                }),
            }
        }
        let defaults = &self.settings.sampling;
        let overrides = &request.sampling;
        Ok(ChatRequest {
            model: &self.settings.model_name,
            messages,
            temperature: checked(
                "temperature",
                overrides.temperature,
                defaults.temperature,
                check_temperature,
            )?,
            max_tokens: checked(
                "max_tokens",
                overrides.max_tokens,
                defaults.max_tokens,
                check_max_tokens,
            )?,
            top_p: checked("top_p", overrides.top_p, defaults.top_p, check_top_p)?,
            n: defaults.n,
            presence_penalty: defaults.presence_penalty,
            frequency_penalty: defaults.frequency_penalty,
            stream,
            stream_options: (stream && self.settings.stream_usage).then_some(StreamOptions {
                include_usage: true,
            }),
        })
    }

    /// One call to one upstream, up to a 2xx response (whose body is left unread).
    async fn send_once(
        &self,
        upstream: &Upstream,
        body: &ChatRequest<'_>,
    ) -> Result<Response, Failure> {
        let accept = if body.stream {
            "text/event-stream"
        } else {
            "application/json"
        };
        let mut call = self
            .client
            .post(upstream.endpoint.clone())
            .header(ACCEPT, accept)
            .json(body);
        if let Some(authorization) = &self.settings.authorization {
            call = call.header(AUTHORIZATION, authorization.clone());
        }
        let response = call
            .send()
            .await
            .map_err(|e| failure::from_transport(&e, self.scrubber()))?;
        let status = response.status();
        if status.is_success() {
            return Ok(response);
        }
        let headers = response.headers().clone();
        // An error body that cannot be read still leaves the status to report.
        let (error_body, _) = read_limited(response, MAX_ERROR_BODY_BYTES)
            .await
            .unwrap_or_default();
        Err(failure::from_status(
            status,
            &headers,
            &error_body,
            self.scrubber(),
        ))
    }

    /// One full (non-streamed) completion from one upstream.
    async fn complete_once(
        &self,
        upstream: &Upstream,
        body: &ChatRequest<'_>,
    ) -> Result<Answer, Failure> {
        let response = self.send_once(upstream, body).await?;
        read_completion(response, self.scrubber()).await
    }

    /// One streamed completion from one upstream, up to its first text chunk. An upstream
    /// that closes its event stream without a single event is asked once more without
    /// streaming, which answers the same failure with a status (or the completion, served
    /// as one chunk).
    async fn stream_once(
        &self,
        upstream: &Upstream,
        body: &ChatRequest<'_>,
        plain: &ChatRequest<'_>,
        limits: StreamLimits,
        report: &CompletionReport,
    ) -> Result<TextStream, Failure> {
        let response = self.send_once(upstream, body).await?;
        let api_key = self.settings.api_key.clone();
        match stream::start(response, limits, api_key, report.clone()).await {
            Ok(started) => Ok(started.into_stream()),
            Err(StreamError::Failed(failure)) => Err(failure),
            Err(StreamError::Empty) => {
                tracing::info!(
                    upstream = %upstream.label,
                    "the upstream sent an empty event stream: asking again without streaming to learn why"
                );
                // The server may close the connection of the empty stream right after it,
                // while the client's pool already hands it out again: a request on it gets no
                // answer. Such a failure is asked again at once, on a new connection.
                let answer = match self.complete_once(upstream, plain).await {
                    Err(Failure::Retriable(failure)) if failure.kind == RetryKind::Connection => {
                        self.complete_once(upstream, plain).await
                    }
                    answer => answer,
                };
                let text = answer?.record(report);
                Ok(Box::pin(futures::stream::once(async move { Ok(text) })))
            }
        }
    }

    /// Calls upstreams with `attempt` until one succeeds, a failure is not worth retrying,
    /// the retries run out, or the deadline passes. Each attempt runs within
    /// `--openai.timeout`.
    async fn with_retries<'a, T, F, Fut>(
        &'a self,
        request: &PromptRequest,
        attempt: F,
    ) -> Result<T, MinerError>
    where
        F: Fn(&'a Upstream) -> Fut,
        Fut: Future<Output = Result<T, Failure>>,
    {
        let started = Instant::now();
        let deadline = request.deadline;
        let budget_secs = deadline.saturating_duration_since(started).as_secs_f64();
        let pool = &self.upstreams;
        let mut tried = vec![false; pool.len()];
        let mut backoffs = 0u32;
        let mut attempts = 0u32;
        let mut cursor = pool.next_start();
        let mut last_failure: Option<Retriable> = None;
        let give_up_waiting = |last_failure: Option<Retriable>, attempts: u32, wait: f64| {
            match last_failure {
                Some(failure) => failure.give_up(&format!(
                    "gave up after {attempts} attempt(s): the next one would start past the request deadline"
                )),
                None => MinerError::Overloaded(format!(
                    "the upstream asked to wait {wait:.1} more seconds, past the request deadline"
                )),
            }
        };
        loop {
            let now = Instant::now();
            if now >= deadline {
                return Err(MinerError::Timeout(budget_secs));
            }
            // Registered before planning, so a probe ending meanwhile is not missed.
            let probe_ended = pool.probe_ended();
            let (index, mut ready) = match pool.plan(cursor, now) {
                Plan::Call { index, at } => (index, at),
                Plan::Wait { until } => {
                    if until >= deadline {
                        // Only a probe in flight can free an upstream in time.
                        if timeout_at(deadline, probe_ended).await.is_err() {
                            let wait = until.saturating_duration_since(now).as_secs_f64();
                            return Err(give_up_waiting(last_failure, attempts, wait));
                        }
                    } else {
                        let _ = timeout_at(until, probe_ended).await;
                    }
                    continue;
                }
            };
            if tried[index] {
                ready = ready.max(now + backoff(self.settings.retry_backoff, backoffs));
            }
            if ready >= deadline {
                let wait = ready.saturating_duration_since(now).as_secs_f64();
                return Err(give_up_waiting(last_failure, attempts, wait));
            }
            if ready > now {
                sleep_until(ready).await;
            }
            let Some(claim) = pool.claim(index, Instant::now()) else {
                // Another request took the probe meanwhile: plan again.
                continue;
            };
            if tried[index] {
                backoffs += 1;
            }
            let upstream = pool.get(index);
            attempts += 1;
            tried[index] = true;
            let call_deadline = (Instant::now() + self.settings.timeout).min(deadline);
            let outcome = timeout_at(call_deadline, attempt(upstream)).await;
            let failure = match outcome {
                Ok(Ok(value)) => {
                    pool.recovered(index);
                    tracing::debug!(
                        upstream = %upstream.label,
                        attempts,
                        probe = claim.is_probe(),
                        elapsed_ms = started.elapsed().as_millis() as u64,
                        "upstream answered"
                    );
                    return Ok(value);
                }
                Ok(Err(Failure::Fatal(error))) => {
                    tracing::warn!(upstream = %upstream.label, %error, "upstream call failed, not retried");
                    return Err(error);
                }
                Ok(Err(Failure::Retriable(failure))) => failure,
                Err(_) if call_deadline >= deadline => {
                    tracing::warn!(upstream = %upstream.label, attempts, "request deadline passed during the upstream call");
                    return Err(MinerError::Timeout(budget_secs));
                }
                Err(_) => Retriable {
                    kind: RetryKind::Timeout,
                    message: format!(
                        "the upstream did not answer within {:.1} seconds",
                        self.settings.timeout.as_secs_f64()
                    ),
                    retry_after: None,
                },
            };
            tracing::warn!(
                upstream = %upstream.label,
                attempt = attempts,
                probe = claim.is_probe(),
                error = %failure.message,
                retry_after_ms = failure.retry_after.map(|d| d.as_millis() as u64),
                "upstream call failed"
            );
            if let Some(wait) = failure.retry_after {
                let now = Instant::now();
                pool.cool_down(claim.index(), now, now + wait);
            }
            drop(claim);
            if attempts > self.settings.max_retries {
                return Err(failure.give_up(&format!("gave up after {attempts} attempt(s)")));
            }
            last_failure = Some(failure);
            cursor = index + 1;
        }
    }
}

#[async_trait]
impl Miner for OpenAiBackend {
    fn name(&self) -> &str {
        &self.settings.model_name
    }

    async fn prompt(&self, request: &PromptRequest) -> Result<String, MinerError> {
        let body = self.chat_request(request, false)?;
        let answer = self
            .with_retries(request, |upstream| self.complete_once(upstream, &body))
            .await?;
        Ok(answer.record(&request.report))
    }

    /// Streams the completion. Returns once the first text chunk arrived: failures before it
    /// (refusals, connection errors, streams that break off or stall) are retried like
    /// [`Miner::prompt`]'s, so no caller is told "success" for an answer that never starts.
    async fn prompt_stream(&self, request: &PromptRequest) -> Result<TextStream, MinerError> {
        let started = Instant::now();
        let body = self.chat_request(request, true)?;
        let plain = self.chat_request(request, false)?;
        let limits = StreamLimits {
            deadline: request.deadline,
            budget_secs: request
                .deadline
                .saturating_duration_since(started)
                .as_secs_f64(),
            idle: self.settings.timeout,
        };
        self.with_retries(request, |upstream| {
            self.stream_once(upstream, &body, &plain, limits, &request.report)
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use prompting_miner::{Protocol, SamplingOverrides};
    use serde_json::json;

    use super::*;

    fn backend() -> OpenAiBackend {
        OpenAiBackend::new(OpenAiArgs {
            base_url: vec!["http://127.0.0.1:9/v1".into()],
            ..OpenAiArgs::default()
        })
        .expect("valid settings")
    }

    fn request(roles: &[&str], messages: &[&str]) -> PromptRequest {
        PromptRequest::new(
            roles.iter().map(|s| s.to_string()).collect(),
            messages.iter().map(|s| s.to_string()).collect(),
            "5caller",
            Protocol::Legacy,
            Duration::from_secs(5),
        )
    }

    #[tokio::test]
    async fn body_zips_roles_and_messages_and_drops_the_extra_turns() {
        let backend = backend();
        let request = request(&["system", "user", "assistant"], &["be brief", "hi"]);
        let body = backend.chat_request(&request, false).expect("body");
        assert_eq!(
            serde_json::to_value(&body).expect("json")["messages"],
            json!([
                {"role": "system", "content": "be brief"},
                {"role": "user", "content": "hi"}
            ])
        );
    }

    #[tokio::test]
    async fn caller_overrides_win_and_are_checked() {
        let backend = backend();
        let mut request = request(&["user"], &["hi"]);
        request.sampling = SamplingOverrides {
            max_tokens: Some(7),
            temperature: Some(1.5),
            top_p: Some(0.25),
        };
        let body = backend.chat_request(&request, true).expect("body");
        assert_eq!(
            (body.max_tokens, body.temperature, body.top_p),
            (7, 1.5, 0.25)
        );
        assert!(body.stream);

        request.sampling.temperature = Some(-1.0);
        assert!(matches!(
            backend.chat_request(&request, false),
            Err(MinerError::BadRequest(m)) if m.contains("temperature")
        ));
        request.sampling.temperature = None;
        request.sampling.max_tokens = Some(0);
        assert!(matches!(
            backend.chat_request(&request, false),
            Err(MinerError::BadRequest(m)) if m.contains("max_tokens")
        ));
    }

    #[tokio::test]
    async fn a_request_without_pairs_is_a_bad_request() {
        let backend = backend();
        assert!(matches!(
            backend.chat_request(&request(&[], &["orphan"]), false),
            Err(MinerError::BadRequest(_))
        ));
    }
}
