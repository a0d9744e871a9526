//! Helpers shared by the integration tests: the finney metadata, synthetic neurons encoded
//! through its own type registry, test keys, and the loopback node ([`node`]).

// crates/service/tests includes this module by `#[path]` and uses only part of it.
#![allow(dead_code)]

use parity_scale_codec::Decode;
use scale_info::{PortableRegistry, TypeDef};
use subxt::ext::scale_encode::EncodeAsType;
use subxt::ext::scale_value::{Composite, Value, ValueDef};

/// The real finney runtime metadata (`meta` magic + versioned metadata; spec 365).
pub const METADATA_BYTES: &[u8] = include_bytes!("../../fixtures/finney-metadata.scale");

/// The decoded finney metadata.
pub fn metadata() -> subxt::Metadata {
    subxt::Metadata::decode(&mut &METADATA_BYTES[..]).expect("fixture metadata decodes")
}

/// An sr25519 keypair from a 32-byte seed, as substrate-interface derives it.
pub fn keypair(seed: u8) -> prompting_keys::Keypair {
    prompting_keys::Keypair::from_mini_secret(&[seed; 32])
}

/// A neuron to put on the synthetic chain.
#[derive(Debug, Clone, PartialEq)]
pub struct TestNeuron {
    pub uid: u16,
    pub hotkey: [u8; 32],
    pub coldkey: [u8; 32],
    /// `(coldkey, rao)` entries of `NeuronInfoLite.stake` (the hotkey's own alpha).
    pub stakes: Vec<([u8; 32], u64)>,
    /// `get_subnet_state`'s `total_stake` (the stake weight), in rao; `None`: the sum of
    /// `stakes`.
    pub stake_weight: Option<u64>,
    pub validator_permit: bool,
    pub ip: u128,
    pub ip_type: u8,
    pub port: u16,
    pub protocol: u8,
    /// Block of the last `serve_axon` (0: never).
    pub axon_block: u64,
    /// Block of the last weights (`LastUpdate`; 0: never).
    pub last_update: u64,
    /// `rank`, `trust`, `consensus`, `incentive`: u16 fractions of 65535.
    pub rank: u16,
    pub trust: u16,
    pub consensus: u16,
    pub incentive: u16,
    /// `emission`, in rao.
    pub emission: u64,
}

impl TestNeuron {
    /// A neuron with no stake and no axon.
    pub fn new(uid: u16, hotkey: [u8; 32]) -> Self {
        TestNeuron {
            uid,
            hotkey,
            coldkey: [0xcc; 32],
            stakes: Vec::new(),
            stake_weight: None,
            validator_permit: false,
            ip: 0,
            ip_type: 0,
            port: 0,
            protocol: 0,
            axon_block: 0,
            last_update: 0,
            rank: 0,
            trust: 0,
            consensus: 0,
            incentive: 0,
            emission: 0,
        }
    }

    /// Its axon published at `addr` (protocol 4) in block `block`.
    pub fn served(mut self, addr: &str, block: u64) -> Self {
        let addr: std::net::SocketAddr = addr.parse().expect("socket address literal");
        let (ip, ip_type) = prompting_chain::axon_addr::encode_ip(addr.ip());
        (self.ip, self.ip_type, self.port, self.protocol) = (ip, ip_type, addr.port(), 4);
        self.axon_block = block;
        self
    }

    /// The stake weight in rao: `stake_weight`, or the sum of `stakes`.
    pub fn total_stake(&self) -> u64 {
        self.stake_weight
            .unwrap_or_else(|| self.stakes.iter().map(|(_, rao)| rao).sum())
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

/// The `AxonInfo` value of a neuron.
pub fn axon_value(n: &TestNeuron) -> Value {
    Value::named_composite([
        ("block", u(n.axon_block)),
        ("version", u(644u32)),
        ("ip", u(n.ip)),
        ("port", u(n.port)),
        ("ip_type", u(n.ip_type)),
        ("protocol", u(n.protocol)),
        ("placeholder1", u(0u8)),
        ("placeholder2", u(0u8)),
    ])
}

/// A `NeuronInfoLite` value with every field of the finney type.
pub fn neuron_value(n: &TestNeuron) -> Value {
    Value::named_composite([
        ("hotkey", account(&n.hotkey)),
        ("coldkey", account(&n.coldkey)),
        ("uid", u(n.uid)),
        ("netuid", u(1u16)),
        ("active", Value::bool(true)),
        ("axon_info", axon_value(n)),
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
        ("rank", u(n.rank)),
        ("emission", u(n.emission)),
        ("incentive", u(n.incentive)),
        ("consensus", u(n.consensus)),
        ("trust", u(n.trust)),
        ("validator_trust", u(0u8)),
        ("dividends", u(0u8)),
        ("last_update", u(n.last_update)),
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

/// `get_subnet_state`'s result (`Some(SubnetState)`) for `neurons` on `netuid`: hotkeys,
/// coldkeys and stakes from the neurons (`alpha_stake` = their own stake, `total_stake` =
/// their stake weight, `tao_stake` = the difference), every other field empty.
pub fn encode_subnet_state(
    metadata: &subxt::Metadata,
    netuid: u16,
    neurons: &[TestNeuron],
) -> Vec<u8> {
    let ty = prompting_chain::neurons::subnet_state_output_type(metadata)
        .expect("get_subnet_state in the metadata");
    let types = metadata.types();
    let TypeDef::Variant(option) = &types.resolve(ty).expect("output type").type_def else {
        panic!("get_subnet_state returns an Option");
    };
    let state_ty = option
        .variants
        .iter()
        .find(|v| v.name == "Some")
        .and_then(|v| v.fields.first())
        .expect("Some(SubnetState)")
        .ty
        .id;
    let mut sorted: Vec<&TestNeuron> = neurons.iter().collect();
    sorted.sort_by_key(|n| n.uid);
    let own = |n: &TestNeuron| n.stakes.iter().map(|(_, rao)| rao).sum::<u64>();
    let amounts =
        |f: &dyn Fn(&TestNeuron) -> u64| Value::unnamed_composite(sorted.iter().map(|n| u(f(n))));
    let overrides = vec![
        ("netuid", u(netuid)),
        (
            "hotkeys",
            Value::unnamed_composite(sorted.iter().map(|n| account(&n.hotkey))),
        ),
        (
            "coldkeys",
            Value::unnamed_composite(sorted.iter().map(|n| account(&n.coldkey))),
        ),
        ("alpha_stake", amounts(&own)),
        (
            "tao_stake",
            amounts(&|n| n.total_stake().saturating_sub(own(n))),
        ),
        ("total_stake", amounts(&|n| n.total_stake())),
    ];
    let state = struct_value(state_ty, types, overrides);
    Value::variant("Some", Composite::unnamed([state]))
        .encode_as_type(ty, types)
        .expect("synthetic subnet state encodes with the metadata's types")
}

/// A value of the struct type `ty` with the given fields, every other field empty/zero.
pub fn struct_value(ty: u32, types: &PortableRegistry, overrides: Vec<(&str, Value)>) -> Value {
    let TypeDef::Composite(composite) = &types.resolve(ty).expect("type").type_def else {
        panic!("type {ty} is not a struct");
    };
    let mut overrides = overrides;
    Value::named_composite(composite.fields.iter().map(|f| {
        let name = f.name.clone().expect("named field");
        let value = match overrides.iter().position(|(n, _)| *n == name) {
            Some(i) => overrides.remove(i).1,
            None => build(f.ty.id, types, &|_| Choice::Default),
        };
        (name, value)
    }))
}

/// Builds a value of type `ty` with zeros, empty lists and first variants, except where
/// `choose` names a variant (by the type's last path segment) or gives a whole value.
pub fn build(ty: u32, types: &PortableRegistry, choose: &dyn Fn(&str) -> Choice) -> Value {
    let t = types.resolve(ty).expect("type in registry");
    let name = t.path.segments.last().map(String::as_str).unwrap_or("");
    let chosen = choose(name);
    if let Choice::Value(v) = chosen {
        return v;
    }
    let fields_value = |fields: &[scale_info::Field<scale_info::form::PortableForm>]| {
        if fields.iter().all(|f| f.name.is_some()) && !fields.is_empty() {
            Composite::named(fields.iter().map(|f| {
                (
                    f.name.clone().expect("named"),
                    build(f.ty.id, types, choose),
                )
            }))
        } else {
            Composite::unnamed(fields.iter().map(|f| build(f.ty.id, types, choose)))
        }
    };
    match &t.type_def {
        TypeDef::Composite(c) => Value {
            value: ValueDef::Composite(fields_value(&c.fields)),
            context: (),
        },
        TypeDef::Variant(v) => {
            let variant = match chosen {
                Choice::Variant(wanted) => v
                    .variants
                    .iter()
                    .find(|var| var.name == wanted)
                    .expect("chosen variant exists"),
                _ => v.variants.first().expect("enum has variants"),
            };
            Value::variant(variant.name.clone(), fields_value(&variant.fields))
        }
        TypeDef::Sequence(_) => Value::unnamed_composite([]),
        TypeDef::Array(a) => {
            Value::unnamed_composite((0..a.len).map(|_| build(a.type_param.id, types, choose)))
        }
        TypeDef::Tuple(tuple) => {
            Value::unnamed_composite(tuple.fields.iter().map(|f| build(f.id, types, choose)))
        }
        TypeDef::Primitive(scale_info::TypeDefPrimitive::Bool) => Value::bool(false),
        TypeDef::Primitive(scale_info::TypeDefPrimitive::Str) => Value::string(""),
        TypeDef::Primitive(_) | TypeDef::Compact(_) => Value::u128(0),
        TypeDef::BitSequence(_) => Value::unnamed_composite([]),
    }
}

/// How [`build`] fills one type.
pub enum Choice {
    Default,
    Variant(&'static str),
    Value(Value),
}

pub mod node;
