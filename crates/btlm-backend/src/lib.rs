//! Native BTLM backend: Cerebras `btlm-3b-8k-base` run with candle.
#![warn(missing_docs)]

pub mod error;
pub mod generation;
pub mod model;
pub mod options;
pub mod tokenizer;
pub mod weights;

pub use error::{BtlmError, Result};
