//! The `Miner` trait every backend implements, and the pipeline that decides who is
//! served and in which order (blacklist, priority queue, deadlines).
//!
//! Data flows: transport (verified caller) → [`PromptRequest`] → pipeline → [`Miner`].

pub mod metagraph;
pub mod request;
pub mod traits;

pub use metagraph::{CallerInfo, Metagraph, MetagraphView, NeuronInfo, SharedMetagraph};
pub use request::{PromptRequest, Protocol, SamplingOverrides};
pub use traits::{Miner, MinerError, TextStream};
