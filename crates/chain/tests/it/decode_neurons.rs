//! Decoding `get_neurons_lite` results: synthetic neurons through the finney metadata's types,
//! and the 2023 vector captured from bittensor 6.4.4.

use crate::common;

use common::{TestNeuron, encode_neurons, encode_subnet_state, metadata, neuron_value};
use prompting_chain::ChainError;
use prompting_chain::legacy_2023::{decode_state_call_2023, decode_vec_2023};
use prompting_chain::neurons::{
    decode_neurons_lite, decode_subnet_state_stakes, neuron_from_value, neurons_lite_output_type,
    subnet_state_output_type,
};
use subxt::ext::scale_value::{Composite, Value, ValueDef};
use subxt::utils::AccountId32;

fn fixture() -> serde_json::Value {
    serde_json::from_str(include_str!("../fixtures/neurons_lite_2023.json"))
        .expect("fixture is JSON")
}

fn hex_field(fixture: &serde_json::Value, key: &str) -> Vec<u8> {
    let text = fixture[key].as_str().expect("hex string");
    hex::decode(text.trim_start_matches("0x")).expect("valid hex")
}

#[test]
fn synthetic_neurons_round_trip_through_the_finney_types() {
    let metadata = metadata();
    let mut staked = TestNeuron::new(0, [1; 32]);
    staked.stakes = vec![([7; 32], 1_500_000_000), ([8; 32], 2_500_000_000)];
    staked.validator_permit = true;
    staked.ip = 0x7f00_0001;
    staked.ip_type = 4;
    staked.port = 8091;
    (
        staked.rank,
        staked.trust,
        staked.consensus,
        staked.incentive,
    ) = (65535, 32768, 1, 13107);
    staked.emission = 2_500_000_000;
    let mut v6 = TestNeuron::new(1, [2; 32]);
    v6.ip = u128::from(
        "2001:db8::7"
            .parse::<std::net::Ipv6Addr>()
            .expect("literal"),
    );
    v6.ip_type = 6;
    v6.port = 443;
    let bare = TestNeuron::new(65535, [3; 32]);

    let bytes = encode_neurons(&metadata, &[staked, v6, bare]);
    let ty = neurons_lite_output_type(&metadata).expect("runtime API");
    let neurons = decode_neurons_lite(metadata.types(), ty, &bytes).expect("decodes");

    assert_eq!(neurons.len(), 3);
    assert_eq!(neurons[0].uid, 0);
    assert_eq!(neurons[0].hotkey, AccountId32([1; 32]).to_string());
    assert_eq!(neurons[0].coldkey, AccountId32([0xcc; 32]).to_string());
    assert_eq!(neurons[0].stake, 4.0);
    assert!(neurons[0].validator_permit);
    assert_eq!(neurons[0].axon.as_deref(), Some("127.0.0.1:8091"));
    // The scores as bittensor's metagraph reports them: u16 / 65535, emission in 1e9 units.
    assert_eq!(neurons[0].rank, 1.0);
    assert_eq!(neurons[0].trust, 32768.0 / 65535.0);
    assert_eq!(neurons[0].consensus, 1.0 / 65535.0);
    assert_eq!(neurons[0].incentive, 0.2);
    assert_eq!(neurons[0].emission, 2.5);
    assert_eq!((neurons[1].rank, neurons[1].emission), (0.0, 0.0));
    assert_eq!(neurons[1].axon.as_deref(), Some("[2001:db8::7]:443"));
    assert_eq!(neurons[1].stake, 0.0);
    assert!(!neurons[1].validator_permit);
    assert_eq!(neurons[2].uid, 65535);
    assert_eq!(neurons[2].axon, None);

    // Truncated or padded data is refused rather than half-read.
    assert!(decode_neurons_lite(metadata.types(), ty, &bytes[..bytes.len() - 1]).is_err());
    let mut padded = bytes.clone();
    padded.push(0);
    assert!(matches!(
        decode_neurons_lite(metadata.types(), ty, &padded),
        Err(ChainError::Decode { .. })
    ));
}

#[test]
fn subnet_state_stake_weights_decode_by_hotkey() {
    let metadata = metadata();
    let ty = subnet_state_output_type(&metadata).expect("get_subnet_state at spec 365");
    let mut validator = TestNeuron::new(0, [1; 32]);
    validator.stakes = vec![([7; 32], 1_000_000_000_000)];
    validator.stake_weight = Some(1_180_000_000_000);
    let mut miner = TestNeuron::new(1, [2; 32]);
    miner.stakes = vec![([8; 32], 5_000_000_000)];
    let neurons = [validator, miner];

    // A subnet: total_stake, the stake weight.
    let bytes = encode_subnet_state(&metadata, 3, &neurons);
    let stakes = decode_subnet_state_stakes(metadata.types(), ty, &bytes, 3)
        .expect("decodes")
        .expect("the subnet exists");
    assert_eq!(
        stakes,
        vec![
            (AccountId32([1; 32]).to_string(), 1180.0),
            (AccountId32([2; 32]).to_string(), 5.0),
        ]
    );
    // The root subnet: tao_stake, as bittensor reads it there (here the part of the weight
    // that is not own alpha).
    let stakes = decode_subnet_state_stakes(metadata.types(), ty, &bytes, 0)
        .expect("decodes")
        .expect("exists");
    assert_eq!(stakes[0].1, 180.0);
    assert_eq!(stakes[1].1, 0.0);
    // No such subnet: None; truncated: an error.
    assert_eq!(
        decode_subnet_state_stakes(metadata.types(), ty, &[0], 3).expect("None decodes"),
        None
    );
    assert!(
        decode_subnet_state_stakes(metadata.types(), ty, &bytes[..bytes.len() - 1], 3).is_err()
    );
}

#[test]
fn a_missing_field_is_named_in_the_error() {
    let value = neuron_value(&TestNeuron::new(5, [9; 32]));
    let ValueDef::Composite(Composite::Named(fields)) = value.value else {
        panic!("neuron is a struct");
    };
    let without_permit = Value::named_composite(
        fields
            .into_iter()
            .filter(|(name, _)| name != "validator_permit"),
    );
    let err = neuron_from_value(&without_permit).expect_err("field missing");
    assert!(matches!(
        err,
        ChainError::MissingField {
            field: "validator_permit",
            ..
        }
    ));
    assert!(err.to_string().contains("`validator_permit`"), "{err}");
}

fn check_2023_neuron(neurons: &[prompting_metagraph::NeuronInfo], fixture: &serde_json::Value) {
    let expected = &fixture["scale_decoded"];
    assert_eq!(neurons.len(), 1);
    let n = &neurons[0];
    assert_eq!(n.hotkey, expected["hotkey"].as_str().expect("hotkey"));
    assert_eq!(n.coldkey, expected["coldkey"].as_str().expect("coldkey"));
    assert_eq!(n.uid.to_string(), expected["uid"].as_str().expect("uid"));
    // "τ10.000000000"
    assert_eq!(n.stake, 10.0);
    assert!(
        expected["stake"]
            .as_str()
            .expect("stake")
            .contains("10.000000000")
    );
    assert_eq!(expected["validator_permit"].as_str(), Some("True"));
    assert!(n.validator_permit);
    // "AxonInfo( /ipv4/1.2.3.4:8091, ..."
    assert!(
        expected["axon_info"]
            .as_str()
            .expect("axon")
            .contains("/ipv4/1.2.3.4:8091")
    );
    assert_eq!(n.axon.as_deref(), Some("1.2.3.4:8091"));
    // The scores equal what bittensor 6.4.4 decoded (rank 1.0, emission τ1.0, incentive
    // 0.5000076295109483, ...).
    let score = |key: &str| -> f64 {
        expected[key]
            .as_str()
            .and_then(|text| text.parse().ok())
            .unwrap_or_else(|| panic!("{key} in the fixture"))
    };
    assert_eq!(n.rank, score("rank"));
    assert_eq!(n.trust, score("trust"));
    assert_eq!(n.consensus, score("consensus"));
    assert_eq!(n.incentive, score("incentive"));
    assert_eq!(n.emission, score("emission"));
    assert_eq!((n.rank, n.emission), (1.0, 1.0));
    assert!(n.incentive > 0.5 && n.incentive < 0.5001);
}

#[test]
fn the_2023_vector_decodes_with_its_own_registry() {
    let fixture = fixture();
    let wrapped = hex_field(&fixture, "state_call_result_hex(Vec<u8> wrapping)");
    check_2023_neuron(
        &decode_state_call_2023(&wrapped).expect("wrapped form"),
        &fixture,
    );
    let raw = hex_field(&fixture, "scale_vec_neuroninfolite_hex");
    check_2023_neuron(&decode_vec_2023(&raw).expect("raw form"), &fixture);
    // The wrapping is required, and must be exact.
    assert!(decode_state_call_2023(&raw).is_err());
    assert!(decode_vec_2023(&wrapped).is_err());
}

#[test]
fn the_2023_bytes_still_match_todays_type() {
    // The NeuronInfoLite layout has not changed since 2023; only the Vec<u8> wrapping of the
    // runtime-API result went away.
    let fixture = fixture();
    let metadata = metadata();
    let ty = neurons_lite_output_type(&metadata).expect("runtime API");
    let raw = hex_field(&fixture, "scale_vec_neuroninfolite_hex");
    check_2023_neuron(
        &decode_neurons_lite(metadata.types(), ty, &raw).expect("decodes"),
        &fixture,
    );
    // And the netuid argument encodes as the 2023 state_call data did.
    assert_eq!(
        hex_field(&fixture, "state_call_data_for_netuid_1"),
        1u16.to_le_bytes()
    );
}
