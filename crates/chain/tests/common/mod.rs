//! Helpers shared by the integration tests: the finney metadata, synthetic neurons encoded
//! through its own type registry, and test keys.

#![allow(dead_code)]

use parity_scale_codec::Decode;
use subxt::ext::scale_encode::EncodeAsType;
use subxt::ext::scale_value::Value;

/// The real finney runtime metadata (`meta` magic + versioned metadata).
pub const METADATA_BYTES: &[u8] = include_bytes!("../fixtures/finney-metadata.scale");

/// The decoded finney metadata.
pub fn metadata() -> subxt::Metadata {
    subxt::Metadata::decode(&mut &METADATA_BYTES[..]).expect("fixture metadata decodes")
}

/// An sr25519 keypair from a 32-byte seed, as substrate-interface derives it.
pub fn keypair(seed: u8) -> prompting_keys::Keypair {
    prompting_keys::Keypair::from_mini_secret(&[seed; 32])
}

/// A neuron to put on the synthetic chain.
#[derive(Debug, Clone)]
pub struct TestNeuron {
    pub uid: u16,
    pub hotkey: [u8; 32],
    pub coldkey: [u8; 32],
    /// `(coldkey, rao)` entries.
    pub stakes: Vec<([u8; 32], u64)>,
    pub validator_permit: bool,
    pub ip: u128,
    pub ip_type: u8,
    pub port: u16,
}

impl TestNeuron {
    /// A neuron with no stake and no axon.
    pub fn new(uid: u16, hotkey: [u8; 32]) -> Self {
        TestNeuron {
            uid,
            hotkey,
            coldkey: [0xcc; 32],
            stakes: Vec::new(),
            validator_permit: false,
            ip: 0,
            ip_type: 0,
            port: 0,
        }
    }
}

fn account(bytes: &[u8; 32]) -> Value {
    Value::unnamed_composite([Value::unnamed_composite(
        bytes.iter().map(|&b| Value::u128(u128::from(b))),
    )])
}

fn u(n: impl Into<u128>) -> Value {
    Value::u128(n.into())
}

/// A `NeuronInfoLite` value with every field of the finney type.
pub fn neuron_value(n: &TestNeuron) -> Value {
    Value::named_composite([
        ("hotkey", account(&n.hotkey)),
        ("coldkey", account(&n.coldkey)),
        ("uid", u(n.uid)),
        ("netuid", u(1u16)),
        ("active", Value::bool(true)),
        (
            "axon_info",
            Value::named_composite([
                ("block", u(5u64)),
                ("version", u(644u32)),
                ("ip", u(n.ip)),
                ("port", u(n.port)),
                ("ip_type", u(n.ip_type)),
                ("protocol", u(4u8)),
                ("placeholder1", u(0u8)),
                ("placeholder2", u(0u8)),
            ]),
        ),
        (
            "prometheus_info",
            Value::named_composite([
                ("block", u(0u64)),
                ("version", u(0u32)),
                ("ip", u(0u8)),
                ("port", u(0u8)),
                ("ip_type", u(0u8)),
            ]),
        ),
        (
            "stake",
            Value::unnamed_composite(
                n.stakes
                    .iter()
                    .map(|(ck, rao)| Value::unnamed_composite([account(ck), u(*rao)])),
            ),
        ),
        ("rank", u(0u8)),
        ("emission", u(0u8)),
        ("incentive", u(0u8)),
        ("consensus", u(0u8)),
        ("trust", u(0u8)),
        ("validator_trust", u(0u8)),
        ("dividends", u(0u8)),
        ("last_update", u(0u8)),
        ("validator_permit", Value::bool(n.validator_permit)),
        ("pruning_score", u(0u8)),
    ])
}

/// `get_neurons_lite`'s result for `neurons`, encoded with the metadata's own output type.
pub fn encode_neurons(metadata: &subxt::Metadata, neurons: &[TestNeuron]) -> Vec<u8> {
    let ty = prompting_chain::neurons::neurons_lite_output_type(metadata).expect("runtime API");
    Value::unnamed_composite(neurons.iter().map(neuron_value))
        .encode_as_type(ty, metadata.types())
        .expect("synthetic neurons encode with the metadata's types")
}

pub mod node;
