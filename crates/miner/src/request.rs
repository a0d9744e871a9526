//! What a backend is asked: the prompt, who asked, how, and until when.

use std::fmt;
use tokio::time::Instant;

use crate::report::CompletionReport;

/// The wire protocol a request arrived by.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Protocol {
    /// Legacy axon/synapse HTTP (bittensor 6.x–10.x dendrites).
    Legacy,
    /// `btauth/1` signed HTTP (bittensor 11 `http_auth`).
    BtAuth,
    /// OpenAI-compatible `/v1/chat/completions` (authenticated with btauth/1).
    OpenAi,
    /// gRPC (`prompting.v1.Miner`).
    Grpc,
}

impl Protocol {
    /// A short lower-case label, used in logs and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Legacy => "legacy",
            Protocol::BtAuth => "btauth",
            Protocol::OpenAi => "openai",
            Protocol::Grpc => "grpc",
        }
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Per-request generation settings a caller may override (OpenAI-style callers send these).
/// `None` means "use the backend's configured default".
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SamplingOverrides {
    /// Maximum number of new tokens.
    pub max_tokens: Option<u32>,
    /// Sampling temperature.
    pub temperature: Option<f32>,
    /// Nucleus sampling probability mass.
    pub top_p: Option<f32>,
}

/// One prompt to answer, from a caller whose identity the transport has already verified.
#[derive(Debug, Clone)]
pub struct PromptRequest {
    /// Roles of the conversation turns (`system`, `user`, `assistant`, ...).
    pub roles: Vec<String>,
    /// Contents of the conversation turns, aligned with `roles`.
    pub messages: Vec<String>,
    /// SS58 address of the verified caller hotkey.
    pub caller: String,
    /// The protocol the request came by.
    pub protocol: Protocol,
    /// When the caller stops waiting; work past it is wasted and is cancelled.
    pub deadline: Instant,
    /// Caller-provided generation settings.
    pub sampling: SamplingOverrides,
    /// The caller's priority (see [`priority`](crate::priority::priority)): `None` when the
    /// request is built; the [`Pipeline`](crate::Pipeline) sets it once the blacklist
    /// admitted the request, before the backend sees it. A backend that queues requests
    /// itself (e.g. a batching engine waiting for memory) serves the highest first.
    pub priority: Option<f64>,
    /// How the answer ended and what it cost, filled in by the backend (shared by clones of
    /// the request: keep a clone to read it after the pipeline consumed the request).
    pub report: CompletionReport,
}

impl PromptRequest {
    /// A request with no sampling overrides whose deadline is `timeout` from now.
    pub fn new(
        roles: Vec<String>,
        messages: Vec<String>,
        caller: impl Into<String>,
        protocol: Protocol,
        timeout: std::time::Duration,
    ) -> Self {
        PromptRequest {
            roles,
            messages,
            caller: caller.into(),
            protocol,
            deadline: Instant::now() + timeout,
            sampling: SamplingOverrides::default(),
            priority: None,
            report: CompletionReport::default(),
        }
    }

    /// Time left until the deadline (zero once it has passed).
    pub fn remaining(&self) -> std::time::Duration {
        self.deadline.saturating_duration_since(Instant::now())
    }
}
