//! Subtensor client for the prompting miners.
//!
//! A miner on the real network reads who is registered and staked (for its blacklist and
//! priority), publishes its axon's ip:port, refuses to start when its hotkey is not registered,
//! and optionally sets weights. This crate does that through [subxt]'s dynamic API against the
//! node's JSON-RPC over WebSocket, with the runtime metadata read from the node at connect:
//!
//! - [`connect`] → [`Subtensor`]; [`Subtensor::fetch_metagraph`] (one
//!   `NeuronInfoRuntimeApi.get_neurons_lite` call decoded by field name),
//!   [`Subtensor::ensure_registered`], [`Subtensor::serve_axon`],
//!   [`Subtensor::set_own_weights`] (both check the subnet's rules at the best block before
//!   sending), [`Subtensor::set_weights`];
//! - [`spawn_sync`] keeps a [`SharedMetagraph`](prompting_metagraph::SharedMetagraph)
//!   fresh in the background, keeps the axon published, sets weights when asked, and reports
//!   a [`SyncStatus`];
//! - refusals carry the chain's reason by name ([`Rejection`]), whether the transaction pool
//!   refused them (RPC error 1010, subtensor's custom codes) or their dispatch failed.
//!
//! See `docs/chain.md` for what is read and written on chain.

pub mod args;
pub mod axon_addr;
pub mod client;
pub mod clock;
pub mod error;
pub mod legacy_2023;
pub mod neurons;
pub mod rejection;
pub mod signer;
pub mod sync;
pub mod weights;

pub use args::{Network, SubtensorArgs};
pub use client::{
    BestBlock, ServeAxon, ServeOutcome, SubnetRules, Subtensor, WeightsOutcome, connect,
    registered_neuron,
};
pub use error::ChainError;
pub use rejection::Rejection;
pub use signer::ExtrinsicSigner;
pub use sync::{EpochStatus, SyncOptions, SyncSnapshot, SyncStatus, spawn_sync};
