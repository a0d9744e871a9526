//! The `Miner` trait every backend implements, and the pipeline that decides who is
//! served and in which order (blacklist, priority queue, deadlines).
//!
//! Data flows: transport (verified caller) → [`PromptRequest`] → [`Pipeline`] → [`Miner`].
//!
//! - A backend implements [`Miner::prompt`] (and optionally [`Miner::prompt_stream`]).
//! - The [`Pipeline`] refuses callers the blacklist rejects ([`MinerError::Blacklisted`],
//!   reasons in [`Refusal`]), ranks the rest by [`priority()`] in a bounded queue in front of
//!   `--miner.max_concurrent` workers, and runs the backend under the request's deadline.
//! - What it knows of callers comes from a [`MetagraphView`]: [`SharedMetagraph`] (refreshed
//!   from the chain), a file loaded with [`StaticMetagraph`], or [`DevMetagraph`] (local use).
//! - Its settings are a [`MinerConfig`], from flags (`--miner.blacklist.whitelist`, ...) or a
//!   TOML `[miner]` table.
//!
//! ```
//! use std::{sync::Arc, time::Duration};
//! use async_trait::async_trait;
//! use prompting_miner::{
//!     DevMetagraph, Miner, MinerConfig, MinerError, Pipeline, PromptRequest, Protocol,
//! };
//!
//! struct Shout;
//!
//! #[async_trait]
//! impl Miner for Shout {
//!     fn name(&self) -> &str { "shout" }
//!     async fn prompt(&self, request: &PromptRequest) -> Result<String, MinerError> {
//!         let last = request.messages.last()
//!             .ok_or_else(|| MinerError::BadRequest("no messages".into()))?;
//!         Ok(last.to_uppercase())
//!     }
//! }
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let pipeline = Pipeline::new(MinerConfig::default(), Arc::new(DevMetagraph::new()), Arc::new(Shout))?;
//! let request = PromptRequest::new(
//!     vec!["user".into()], vec!["hello".into()], "5AnyHotkey", Protocol::Legacy,
//!     Duration::from_secs(12),
//! );
//! assert_eq!(pipeline.prompt(request).await?, "HELLO");
//! # Ok(())
//! # }
//! ```
//!
//! See `docs/pipeline.md` for the policies, their order, reason strings and flags.

pub mod admission;
pub mod backend_metrics;
pub mod blacklist;
mod bounded_stream;
pub mod config;
mod config_error;
pub mod dev_metagraph;
pub mod log_limit;
pub mod pipeline;
mod preemption;
pub mod priority;
pub mod prompt_cache;
mod rank;
pub mod report;
pub mod request;
pub mod request_history;
mod scheduler;
mod service_time;
pub mod static_metagraph;
pub mod stats;
pub mod traits;

/// The subnet snapshots the policies read (the `prompting-metagraph` crate, re-exported).
pub use prompting_metagraph as metagraph;

pub use backend_metrics::{BackendMetric, MetricKind, MetricSample};
pub use blacklist::{Refusal, RefusalKind};
pub use config::{AdmissionConfig, BlacklistConfig, ConfigError, MinerConfig, PriorityConfig};
pub use dev_metagraph::DevMetagraph;
pub use metagraph::{CallerInfo, Metagraph, MetagraphView, NeuronInfo, SharedMetagraph};
pub use pipeline::Pipeline;
pub use priority::priority;
pub use report::{CompletionInfo, CompletionReport, TokenUsage};
pub use request::{PromptRequest, Protocol, SamplingOverrides};
pub use static_metagraph::{MetagraphError, StaticMetagraph};
pub use stats::{Outcome, PipelineStats, QueueRefusal, QueueWait};
pub use traits::{Miner, MinerError, TextStream};
