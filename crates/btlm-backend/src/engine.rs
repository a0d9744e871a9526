//! The inference worker: one thread owns the model and runs requests one at a time from a
//! bounded queue, off the async runtime.

use std::ops::ControlFlow;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{SyncSender, TrySendError};
use std::time::Instant;

use tokio::sync::mpsc::{UnboundedReceiver, UnboundedSender, unbounded_channel};

use crate::error::{BtlmError, Result};
use crate::generation::{FinishReason, Generation, GenerationConfig, generate};
use crate::model::Btlm;
use crate::tokenizer::BtlmTokenizer;

/// What the worker reports about one request, in order: text pieces, then one `Done`.
#[derive(Debug)]
pub enum Event {
    /// A final piece of the completion.
    Text(String),
    /// The request ended (see [`Generation::finish`]) or failed.
    Done(Result<Generation>),
}

/// Why a request was not queued.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SubmitError {
    /// The queue is full.
    #[error("the model queue is full")]
    QueueFull,
    /// The worker thread is gone.
    #[error("the model worker has stopped")]
    WorkerGone,
}

/// Counters of what the worker did (for logs, metrics and tests).
#[derive(Debug, Default)]
pub struct EngineStats {
    /// Requests that ran to eos, a stop string or the token limit.
    pub completed: AtomicU64,
    /// Requests abandoned because the receiver went away.
    pub cancelled: AtomicU64,
    /// Requests stopped by their deadline (queued or running).
    pub timed_out: AtomicU64,
    /// Requests that failed.
    pub failed: AtomicU64,
    /// Requests refused because the queue was full.
    pub rejected: AtomicU64,
    /// Tokens generated.
    pub tokens: AtomicU64,
}

struct Job {
    prompt: String,
    config: GenerationConfig,
    deadline: Option<Instant>,
    events: UnboundedSender<Event>,
}

/// A handle to the worker thread. Cloning shares the same worker; the worker stops once every
/// handle is dropped and its current request ended.
#[derive(Clone)]
pub struct Engine {
    jobs: SyncSender<Job>,
    stats: Arc<EngineStats>,
    tokenizer: Arc<BtlmTokenizer>,
    context: usize,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("context", &self.context)
            .finish_non_exhaustive()
    }
}

impl Engine {
    /// Starts the worker thread with room for `queue_size` waiting requests.
    pub fn start(model: Btlm, tokenizer: BtlmTokenizer, queue_size: usize) -> Result<Self> {
        let (tx, rx) = std::sync::mpsc::sync_channel::<Job>(queue_size.max(1));
        let stats = Arc::new(EngineStats::default());
        let tokenizer = Arc::new(tokenizer);
        let context = model.config().n_positions;
        let (worker_stats, worker_tok) = (stats.clone(), tokenizer.clone());
        std::thread::Builder::new()
            .name("btlm-inference".into())
            .spawn(move || {
                for job in rx {
                    run_job(&model, &worker_tok, &worker_stats, job);
                }
                tracing::debug!("btlm worker: all handles dropped, stopping");
            })
            .map_err(|e| BtlmError::Device(format!("cannot start the inference thread: {e}")))?;
        Ok(Engine {
            jobs: tx,
            stats,
            tokenizer,
            context,
        })
    }

    /// Queues a request; its events arrive on the returned receiver. Dropping the receiver
    /// cancels the request (before the next token).
    pub fn submit(
        &self,
        prompt: String,
        config: GenerationConfig,
        deadline: Option<Instant>,
    ) -> std::result::Result<UnboundedReceiver<Event>, SubmitError> {
        let (events, rx) = unbounded_channel();
        let job = Job {
            prompt,
            config,
            deadline,
            events,
        };
        match self.jobs.try_send(job) {
            Ok(()) => Ok(rx),
            Err(TrySendError::Full(_)) => {
                self.stats.rejected.fetch_add(1, Ordering::Relaxed);
                Err(SubmitError::QueueFull)
            }
            Err(TrySendError::Disconnected(_)) => Err(SubmitError::WorkerGone),
        }
    }

    /// The worker's counters.
    pub fn stats(&self) -> &EngineStats {
        &self.stats
    }

    /// The tokenizer the worker uses.
    pub fn tokenizer(&self) -> &BtlmTokenizer {
        &self.tokenizer
    }

    /// The model's context length in tokens.
    pub fn context(&self) -> usize {
        self.context
    }
}

fn run_job(model: &Btlm, tokenizer: &BtlmTokenizer, stats: &EngineStats, job: Job) {
    let Job {
        prompt,
        config,
        deadline,
        events,
    } = job;
    let expired = || deadline.is_some_and(|d| Instant::now() >= d);
    let count = |c: &AtomicU64| {
        c.fetch_add(1, Ordering::Relaxed);
    };
    if events.is_closed() {
        count(&stats.cancelled);
        return;
    }
    let run = || -> Result<Generation> {
        let ids = tokenizer.encode(&prompt)?;
        let interrupt = || {
            if events.is_closed() {
                Some(FinishReason::Cancelled)
            } else if expired() {
                Some(FinishReason::Deadline)
            } else {
                None
            }
        };
        generate(
            model,
            tokenizer,
            &ids,
            &config,
            interrupt,
            |text| match events.send(Event::Text(text.to_string())) {
                Ok(()) => ControlFlow::Continue(()),
                Err(_) => ControlFlow::Break(()),
            },
        )
    };
    // A panic in a tensor operation must not take the worker (and every later request) down.
    let result = std::panic::catch_unwind(AssertUnwindSafe(run)).unwrap_or_else(|panic| {
        let msg = panic
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| panic.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "unknown panic".into());
        tracing::error!("btlm worker: generation panicked: {msg}");
        Err(BtlmError::Candle(candle_core::Error::Msg(format!(
            "generation panicked: {msg}"
        ))))
    });
    match &result {
        Ok(g) => {
            stats
                .tokens
                .fetch_add(g.tokens.len() as u64, Ordering::Relaxed);
            match g.finish {
                FinishReason::Cancelled => count(&stats.cancelled),
                FinishReason::Deadline => count(&stats.timed_out),
                FinishReason::Eos | FinishReason::Stop | FinishReason::Length => {
                    count(&stats.completed)
                }
            }
        }
        Err(e) => {
            tracing::warn!("btlm worker: request failed: {e}");
            count(&stats.failed);
        }
    }
    // The receiver may be gone; nothing to do then.
    let _ = events.send(Event::Done(result));
}
