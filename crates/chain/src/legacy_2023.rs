//! The 2023 (bittensor 6.x) `get_neurons_lite` answer.
//!
//! Runtimes of 2023 declared the runtime API as returning `Vec<u8>`, inside which the
//! SCALE-encoded `Vec<NeuronInfoLite>` sat, and their metadata (V14) described no runtime
//! APIs at all: the Python SDK carried its own type definitions. This module does the same,
//! as a type registry built from the Rust definitions below (the 2023 field names, order and
//! compact encodings), and decodes through the same by-name reader as current runtimes.

use parity_scale_codec::{Compact, Decode};
use prompting_metagraph::NeuronInfo;
use scale_info::{MetaType, PortableRegistry, Registry, TypeInfo};

use crate::error::ChainError;
use crate::neurons::decode_neurons_lite;

/// `AccountId32` as the 2023 runtime encoded it.
#[derive(TypeInfo)]
#[allow(dead_code)]
struct AccountId([u8; 32]);

/// The axon address published by `serve_axon`.
#[derive(TypeInfo)]
#[allow(dead_code)]
struct AxonInfo {
    block: u64,
    version: u32,
    ip: u128,
    port: u16,
    ip_type: u8,
    protocol: u8,
    placeholder1: u8,
    placeholder2: u8,
}

/// The Prometheus endpoint published by `serve_prometheus`.
#[derive(TypeInfo)]
#[allow(dead_code)]
struct PrometheusInfo {
    block: u64,
    version: u32,
    ip: u128,
    port: u16,
    ip_type: u8,
}

/// `NeuronInfoLite` of subtensor in 2023.
#[derive(TypeInfo)]
#[allow(dead_code)]
struct NeuronInfoLite {
    hotkey: AccountId,
    coldkey: AccountId,
    #[codec(compact)]
    uid: u16,
    #[codec(compact)]
    netuid: u16,
    active: bool,
    axon_info: AxonInfo,
    prometheus_info: PrometheusInfo,
    stake: Vec<(AccountId, Compact<u64>)>,
    #[codec(compact)]
    rank: u16,
    #[codec(compact)]
    emission: u64,
    #[codec(compact)]
    incentive: u16,
    #[codec(compact)]
    consensus: u16,
    #[codec(compact)]
    trust: u16,
    #[codec(compact)]
    validator_trust: u16,
    #[codec(compact)]
    dividends: u16,
    #[codec(compact)]
    last_update: u64,
    validator_permit: bool,
    #[codec(compact)]
    pruning_score: u16,
}

/// The 2023 type registry and the id of `Vec<NeuronInfoLite>` in it.
fn registry() -> (PortableRegistry, u32) {
    let mut registry = Registry::new();
    let id = registry
        .register_type(&MetaType::new::<Vec<NeuronInfoLite>>())
        .id;
    (registry.into(), id)
}

/// Decodes a 2023 `state_call("NeuronInfoRuntimeApi_get_neurons_lite", netuid)` result:
/// a `Vec<u8>` wrapping a SCALE `Vec<NeuronInfoLite>`.
pub fn decode_state_call_2023(result: &[u8]) -> Result<Vec<NeuronInfo>, ChainError> {
    let mut input = result;
    let inner = Vec::<u8>::decode(&mut input).map_err(|e| ChainError::Decode {
        what: "Vec<u8> wrapping of the 2023 runtime API",
        reason: e.to_string(),
    })?;
    if !input.is_empty() {
        return Err(ChainError::Decode {
            what: "Vec<u8> wrapping of the 2023 runtime API",
            reason: format!("{} trailing bytes", input.len()),
        });
    }
    decode_vec_2023(&inner)
}

/// Decodes an unwrapped 2023 SCALE `Vec<NeuronInfoLite>`.
pub fn decode_vec_2023(bytes: &[u8]) -> Result<Vec<NeuronInfo>, ChainError> {
    let (types, id) = registry();
    decode_neurons_lite(&types, id, bytes)
}
