//! A miner backend that answers prompts by calling an OpenAI-compatible chat-completions API
//! (OpenAI itself, vLLM, TGI, a llama.cpp server, or another miner's `/v1/chat/completions`).
//!
//! It re-implements the `OpenAIMiner` of text-prompting v2.1.6 (same `--openai.*` flags and
//! defaults, messages built from `zip(roles, messages)`, completion taken from
//! `choices[0].message.content`) and adds what an operator needs in production: several
//! upstreams with round-robin and failover, retries with exponential backoff honouring
//! `Retry-After` within each request's deadline, SSE streaming, and an API key that never
//! leaves the `Authorization` header.
//!
//! ```no_run
//! use clap::Parser;
//! use prompting_openai_backend::{OpenAiArgs, OpenAiBackend};
//!
//! #[derive(Parser)]
//! struct Cli {
//!     #[command(flatten)]
//!     openai: OpenAiArgs,
//! }
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let backend = OpenAiBackend::new(Cli::parse().openai)?;
//! # let _ = backend;
//! # Ok(())
//! # }
//! ```

mod answer;
mod backend;
pub mod config;
mod error;
mod failure;
mod retry;
pub mod sse;
mod stream;
mod upstream;
mod wire;

pub use backend::OpenAiBackend;
pub use config::{ApiKey, OpenAiArgs};
pub use error::OpenAiError;
