//! Decoding `NeuronInfoRuntimeApi.get_neurons_lite` results into [`NeuronInfo`]s.
//!
//! Decoding goes through a type registry (the runtime metadata's, or the one of
//! [`crate::legacy_2023`]) into dynamic values, and fields are then read by name, so a runtime
//! that adds or reorders fields still decodes, and one that drops a field we need gives an
//! error naming it.

use prompting_keys::ss58::{BITTENSOR_PREFIX, encode};
use prompting_metagraph::NeuronInfo;
use scale_info::PortableRegistry;
use subxt::ext::scale_value::{self, Composite, Primitive, Value, ValueDef};

use crate::axon_addr::format_axon;
use crate::error::ChainError;

/// Rao per τ.
pub const RAO_PER_TAO: f64 = 1e9;

/// The runtime-API trait the per-uid stake weights are read from.
pub const SUBNET_INFO_API: &str = "SubnetInfoRuntimeApi";
/// Its method returning a subnet's per-uid state, with the stake weights.
pub const GET_SUBNET_STATE: &str = "get_subnet_state";

/// The runtime-API trait the neurons are read from.
pub const NEURON_INFO_API: &str = "NeuronInfoRuntimeApi";
/// Its method returning every neuron of a subnet, without weights and bonds.
pub const GET_NEURONS_LITE: &str = "get_neurons_lite";

const NEURON: &str = "NeuronInfoLite";
const AXON: &str = "AxonInfo";

/// The type id of `get_neurons_lite`'s result (a `Vec<NeuronInfoLite>`) in `metadata`.
pub fn neurons_lite_output_type(metadata: &subxt::Metadata) -> Result<u32, ChainError> {
    let api = metadata
        .runtime_api_trait_by_name(NEURON_INFO_API)
        .ok_or_else(|| ChainError::MissingInMetadata(format!("runtime API {NEURON_INFO_API}")))?;
    let method = api.method_by_name(GET_NEURONS_LITE).ok_or_else(|| {
        ChainError::MissingInMetadata(format!("method {NEURON_INFO_API}.{GET_NEURONS_LITE}"))
    })?;
    Ok(method.output_ty())
}

/// The type id of `get_subnet_state`'s result (an `Option<SubnetState>`) in `metadata`, or
/// `None` when the runtime has no such method (before dynamic TAO).
pub fn subnet_state_output_type(metadata: &subxt::Metadata) -> Option<u32> {
    metadata
        .runtime_api_trait_by_name(SUBNET_INFO_API)?
        .method_by_name(GET_SUBNET_STATE)
        .map(|method| method.output_ty())
}

/// Each hotkey's stake as bittensor 10's `metagraph.S` reads it, in units of 1e9 (α on a
/// subnet), from a SCALE `Option<SubnetState>`: `total_stake` (the runtime's stake weight:
/// the hotkey's alpha, inherited through parent/child keys, plus `TaoWeight` × its root τ),
/// or `tao_stake` on the root subnet (netuid 0), as bittensor does. `None` when the subnet
/// does not exist.
pub fn decode_subnet_state_stakes(
    types: &PortableRegistry,
    ty: u32,
    bytes: &[u8],
    netuid: u16,
) -> Result<Option<Vec<(String, f64)>>, ChainError> {
    const STATE: &str = "SubnetState";
    let mut input = bytes;
    let value = scale_value::scale::decode_as_type(&mut input, ty, types).map_err(|e| {
        ChainError::Decode {
            what: "Option<SubnetState>",
            reason: e.to_string(),
        }
    })?;
    if !input.is_empty() {
        return Err(ChainError::Decode {
            what: "Option<SubnetState>",
            reason: format!("{} trailing bytes", input.len()),
        });
    }
    let state = match &value.value {
        ValueDef::Variant(variant) if variant.name == "None" => return Ok(None),
        ValueDef::Variant(variant) if variant.name == "Some" => {
            variant.values.values().next().ok_or(ChainError::Decode {
                what: "Option<SubnetState>",
                reason: "Some without a value".into(),
            })?
        }
        _ => {
            return Err(ChainError::Decode {
                what: "Option<SubnetState>",
                reason: "not an Option".into(),
            });
        }
    };
    let fields = named(state, STATE)?;
    let stake_field = if netuid == 0 {
        "tao_stake"
    } else {
        "total_stake"
    };
    let list = |name: &'static str| match &field(fields, STATE, name)?.value {
        ValueDef::Composite(items) => Ok(items.values().collect::<Vec<_>>()),
        _ => Err(ChainError::FieldType {
            ty: STATE,
            field: name,
            expected: "a list",
        }),
    };
    let hotkeys = list("hotkeys")?;
    let stakes = list(stake_field)?;
    if hotkeys.len() != stakes.len() {
        return Err(ChainError::Decode {
            what: "SubnetState",
            reason: format!(
                "{} hotkeys but {} {stake_field} entries",
                hotkeys.len(),
                stakes.len()
            ),
        });
    }
    hotkeys
        .into_iter()
        .zip(stakes)
        .map(|(hotkey, stake)| {
            let mut bytes = Vec::with_capacity(32);
            let raw: Option<[u8; 32]> = collect_bytes(hotkey, &mut bytes)
                .then(|| bytes.try_into().ok())
                .flatten();
            let raw = raw.ok_or(ChainError::FieldType {
                ty: STATE,
                field: "hotkeys",
                expected: "32-byte account ids",
            })?;
            let rao = unsigned(stake).ok_or(ChainError::FieldType {
                ty: STATE,
                field: stake_field,
                expected: "amounts",
            })?;
            Ok((encode(&raw, BITTENSOR_PREFIX), rao as f64 / RAO_PER_TAO))
        })
        .collect::<Result<Vec<_>, _>>()
        .map(Some)
}

/// Decodes a SCALE `Vec<NeuronInfoLite>` of type `ty` in `types` into neurons.
///
/// Every byte must be consumed: trailing bytes mean the type does not match the data.
pub fn decode_neurons_lite(
    types: &PortableRegistry,
    ty: u32,
    bytes: &[u8],
) -> Result<Vec<NeuronInfo>, ChainError> {
    let mut input = bytes;
    let value = scale_value::scale::decode_as_type(&mut input, ty, types).map_err(|e| {
        ChainError::Decode {
            what: "Vec<NeuronInfoLite>",
            reason: e.to_string(),
        }
    })?;
    if !input.is_empty() {
        return Err(ChainError::Decode {
            what: "Vec<NeuronInfoLite>",
            reason: format!("{} trailing bytes", input.len()),
        });
    }
    let items = match &value.value {
        ValueDef::Composite(composite) => composite.values(),
        _ => {
            return Err(ChainError::Decode {
                what: "Vec<NeuronInfoLite>",
                reason: "the result is not a sequence".into(),
            });
        }
    };
    items.map(neuron_from_value).collect()
}

/// Reads one decoded `NeuronInfoLite` by field name.
pub fn neuron_from_value<T>(value: &Value<T>) -> Result<NeuronInfo, ChainError> {
    let fields = named(value, NEURON)?;
    let uid = uint(fields, NEURON, "uid")?;
    let uid = u16::try_from(uid).map_err(|_| ChainError::FieldType {
        ty: NEURON,
        field: "uid",
        expected: "a u16",
    })?;
    let axon = named(field(fields, NEURON, "axon_info")?, AXON)?;
    let ip = uint(axon, AXON, "ip")?;
    let ip_type =
        u8::try_from(uint(axon, AXON, "ip_type")?).map_err(|_| ChainError::FieldType {
            ty: AXON,
            field: "ip_type",
            expected: "a u8",
        })?;
    let port = u16::try_from(uint(axon, AXON, "port")?).map_err(|_| ChainError::FieldType {
        ty: AXON,
        field: "port",
        expected: "a u16",
    })?;
    Ok(NeuronInfo {
        uid,
        hotkey: account(fields, NEURON, "hotkey")?,
        coldkey: account(fields, NEURON, "coldkey")?,
        stake: total_stake_rao(field(fields, NEURON, "stake")?)? as f64 / RAO_PER_TAO,
        validator_permit: boolean(fields, NEURON, "validator_permit")?,
        axon: format_axon(ip, ip_type, port),
        rank: u16_normalized(fields, "rank")?,
        trust: u16_normalized(fields, "trust")?,
        consensus: u16_normalized(fields, "consensus")?,
        incentive: u16_normalized(fields, "incentive")?,
        emission: uint(fields, NEURON, "emission")? as f64 / RAO_PER_TAO,
    })
}

/// A `NeuronInfoLite` score stored as a u16 fraction of 65535, as a float in [0, 1] (what
/// bittensor's `u16_normalized_float` gives).
fn u16_normalized<T>(fields: &Composite<T>, name: &'static str) -> Result<f64, ChainError> {
    let raw = u16::try_from(uint(fields, NEURON, name)?).map_err(|_| ChainError::FieldType {
        ty: NEURON,
        field: name,
        expected: "a u16",
    })?;
    Ok(f64::from(raw) / f64::from(u16::MAX))
}

/// The named fields of a struct value.
pub(crate) fn named<'a, T>(
    value: &'a Value<T>,
    ty: &'static str,
) -> Result<&'a Composite<T>, ChainError> {
    match &value.value {
        ValueDef::Composite(composite @ Composite::Named(_)) => Ok(composite),
        _ => Err(ChainError::Decode {
            what: ty,
            reason: "not a struct with named fields".into(),
        }),
    }
}

pub(crate) fn field<'a, T>(
    fields: &'a Composite<T>,
    ty: &'static str,
    name: &'static str,
) -> Result<&'a Value<T>, ChainError> {
    match fields {
        Composite::Named(pairs) => pairs
            .iter()
            .find(|(key, _)| key == name)
            .map(|(_, value)| value)
            .ok_or(ChainError::MissingField { ty, field: name }),
        Composite::Unnamed(_) => Err(ChainError::MissingField { ty, field: name }),
    }
}

pub(crate) fn uint<T>(
    fields: &Composite<T>,
    ty: &'static str,
    name: &'static str,
) -> Result<u128, ChainError> {
    unsigned(field(fields, ty, name)?).ok_or(ChainError::FieldType {
        ty,
        field: name,
        expected: "an unsigned integer",
    })
}

pub(crate) fn boolean<T>(
    fields: &Composite<T>,
    ty: &'static str,
    name: &'static str,
) -> Result<bool, ChainError> {
    match &field(fields, ty, name)?.value {
        ValueDef::Primitive(Primitive::Bool(b)) => Ok(*b),
        _ => Err(ChainError::FieldType {
            ty,
            field: name,
            expected: "a bool",
        }),
    }
}

pub(crate) fn account<T>(
    fields: &Composite<T>,
    ty: &'static str,
    name: &'static str,
) -> Result<String, ChainError> {
    let mut bytes = Vec::with_capacity(32);
    let wrong = ChainError::FieldType {
        ty,
        field: name,
        expected: "a 32-byte account id",
    };
    if !collect_bytes(field(fields, ty, name)?, &mut bytes) {
        return Err(wrong);
    }
    let raw: [u8; 32] = bytes.try_into().map_err(|_| wrong)?;
    Ok(encode(&raw, BITTENSOR_PREFIX))
}

/// An unsigned integer, looking through single-field wrappers (`NetUid(u16)`, compacts...).
pub(crate) fn unsigned<T>(value: &Value<T>) -> Option<u128> {
    match &value.value {
        ValueDef::Primitive(Primitive::U128(n)) => Some(*n),
        ValueDef::Composite(composite) if composite.len() == 1 => {
            composite.values().next().and_then(unsigned)
        }
        _ => None,
    }
}

/// Flattens a byte array (possibly wrapped, as `AccountId32([u8; 32])`) into `out`.
fn collect_bytes<T>(value: &Value<T>, out: &mut Vec<u8>) -> bool {
    match &value.value {
        ValueDef::Primitive(Primitive::U128(n)) => match u8::try_from(*n) {
            Ok(byte) => {
                out.push(byte);
                true
            }
            Err(_) => false,
        },
        ValueDef::Composite(composite) => composite.values().all(|v| collect_bytes(v, out)),
        _ => false,
    }
}

/// Total stake in rao: either a plain amount, or a list of `(coldkey, amount)` to sum.
fn total_stake_rao<T>(stake: &Value<T>) -> Result<u128, ChainError> {
    if let Some(amount) = unsigned(stake) {
        return Ok(amount);
    }
    let wrong = || ChainError::FieldType {
        ty: NEURON,
        field: "stake",
        expected: "an amount or a list of (coldkey, amount)",
    };
    let ValueDef::Composite(entries) = &stake.value else {
        return Err(wrong());
    };
    entries.values().try_fold(0u128, |sum, entry| {
        let ValueDef::Composite(pair) = &entry.value else {
            return Err(wrong());
        };
        let amount = pair.values().last().and_then(unsigned).ok_or_else(wrong)?;
        Ok(sum.saturating_add(amount))
    })
}
