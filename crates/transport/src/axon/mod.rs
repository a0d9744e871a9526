//! The axon: the miner's HTTP server.

pub mod config;
pub mod nonce;

pub use config::{AxonArgs, AxonConfigError};
