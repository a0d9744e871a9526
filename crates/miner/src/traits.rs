//! The trait backends implement, and the errors they may return.

use std::pin::Pin;

use async_trait::async_trait;
use futures::Stream;

use crate::backend_metrics::BackendMetric;
use crate::request::PromptRequest;

/// A stream of completion text chunks, in order.
pub type TextStream = Pin<Box<dyn Stream<Item = Result<String, MinerError>> + Send + 'static>>;

/// Why a request could not be answered. The transport maps each variant to a status code;
/// every message is safe to show the caller (no secrets, no stack traces).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum MinerError {
    /// The request itself is unusable (e.g. no messages). HTTP 400.
    #[error("bad request: {0}")]
    BadRequest(String),
    /// The caller is refused by the blacklist. HTTP 403.
    #[error("{0}")]
    Blacklisted(String),
    /// No capacity: the priority queue is full and this request ranks lowest. HTTP 503.
    #[error("overloaded: {0}")]
    Overloaded(String),
    /// The request's deadline passed before an answer was ready. HTTP 408.
    #[error("timed out after {0:.3} seconds")]
    Timeout(f64),
    /// A higher-priority request took this request's worker slot while it ran
    /// (`--miner.priority.preempt`); its work was dropped. HTTP 503.
    #[error("preempted: a higher-priority request took this request's worker slot")]
    Preempted,
    /// The backend failed; the message is safe to show the caller. HTTP 500.
    #[error("backend error: {0}")]
    Backend(String),
}

impl MinerError {
    /// The HTTP status code the transport answers this error with.
    pub fn status_code(&self) -> u16 {
        match self {
            MinerError::BadRequest(_) => 400,
            MinerError::Blacklisted(_) => 403,
            MinerError::Timeout(_) => 408,
            MinerError::Backend(_) => 500,
            MinerError::Overloaded(_) | MinerError::Preempted => 503,
        }
    }
}

/// A model (or upstream API) that completes chat prompts.
///
/// Backends implement [`Miner::prompt`]; [`Miner::prompt_stream`] defaults to one chunk with
/// the whole completion. Who may call, and in which order, is the pipeline's job, not the
/// backend's: a backend with a fixed number of slots says so with [`Miner::capacity`].
///
/// ```
/// use async_trait::async_trait;
/// use prompting_miner::{Miner, MinerError, PromptRequest};
///
/// struct Echo;
///
/// #[async_trait]
/// impl Miner for Echo {
///     fn name(&self) -> &str { "echo" }
///     async fn prompt(&self, request: &PromptRequest) -> Result<String, MinerError> {
///         let last = request.messages.last().ok_or_else(|| MinerError::BadRequest("no messages".into()))?;
///         Ok(format!("echo: {last}"))
///     }
/// }
/// ```
#[async_trait]
pub trait Miner: Send + Sync + 'static {
    /// A short name for logs and `/v1/models` (e.g. the model id).
    fn name(&self) -> &str;

    /// How many requests the backend runs at once, when it has a fixed number of slots (e.g.
    /// the batch slots of a batching model engine). The pipeline then grants at most this
    /// many worker slots (`min(--miner.max_concurrent, capacity)`), so requests wait in its
    /// priority queue rather than in a queue of the backend: the highest-priority waiting
    /// request always takes the next free slot. `None` (the default): no limit of its own.
    fn capacity(&self) -> Option<usize> {
        None
    }

    /// The backend's own figures (e.g. a model engine's steps and batch gauges), read at
    /// every scrape of `/metrics` and rendered after the pipeline's. Cheap: it runs on the
    /// scrape's task. The default: none. See [`crate::backend_metrics`] for the naming.
    fn metrics(&self) -> Vec<BackendMetric> {
        Vec::new()
    }

    /// Whether [`Miner::prompt_stream`] yields the completion while it is being generated
    /// (e.g. token by token), so that the text streamed so far is an answer worth sending
    /// when time runs short. The pipeline then answers a request still running
    /// `--miner.answer_margin_ms` before its deadline with that text instead of letting it
    /// time out, and runs non-streaming requests through the stream to have it. The
    /// default: `false` (nothing to send before the whole completion is ready).
    fn streams_as_generated(&self) -> bool {
        false
    }

    /// Answers the prompt with a full completion.
    async fn prompt(&self, request: &PromptRequest) -> Result<String, MinerError>;

    /// Answers the prompt as a stream of text chunks. The default yields one chunk, the
    /// result of [`Miner::prompt`].
    async fn prompt_stream(&self, request: &PromptRequest) -> Result<TextStream, MinerError> {
        let completion = self.prompt(request).await?;
        Ok(Box::pin(futures::stream::once(
            async move { Ok(completion) },
        )))
    }
}
