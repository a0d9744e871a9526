//! Issue 12: no registered validator's honest request fails under the floods outsiders can
//! send. A real bittensor 10.5 Dendrite (pinned venv, made by `scripts/setup-python.sh`;
//! fails, does not skip, without it) is the validator; between its requests an unregistered
//! key fills the legacy nonce table, a registered low-stake key fills its own, and silent
//! sockets take every connection slot. Capacities are small (`--axon.nonce_capacity 100`,
//! `--axon.nonce_capacity_per_key 16`, `--axon.max_connections 8`) so that each flood
//! overflows its bound with a few hundred requests, not a hundred thousand.

use std::sync::Arc;

use crate::common::{AxonSetup, VALIDATOR_MNEMONIC, miner_key, validator_key};
use prompting_keys::Keypair;
use prompting_miner::{Metagraph, NeuronInfo, SharedMetagraph};
use prompting_testkit::{Venv, run_python};
use serde_json::{Value, json};

const STRANGER_MNEMONIC: &str = "zoo zoo zoo zoo zoo zoo zoo zoo zoo zoo zoo wrong";
const LOWSTAKE_MNEMONIC: &str =
    "abandon abandon abandon abandon abandon abandon abandon abandon abandon abandon abandon about";

fn neuron(uid: u16, hotkey: String, stake: f64, validator_permit: bool) -> NeuronInfo {
    NeuronInfo {
        uid,
        hotkey,
        coldkey: String::new(),
        stake,
        validator_permit,
        axon: None,
        ..NeuronInfo::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn validators_are_served_through_every_flood() {
    let validator = validator_key().ss58_address();
    let lowstake = Keypair::from_mnemonic(LOWSTAKE_MNEMONIC)
        .expect("mnemonic")
        .ss58_address();
    let mut setup = AxonSetup::new(&[]);
    setup.metagraph = Arc::new(SharedMetagraph::new(Metagraph::new(
        1,
        100,
        vec![
            neuron(0, validator.clone(), 1000.0, true),
            neuron(1, lowstake, 0.001, false),
        ],
    )));
    setup.args.nonce_capacity = 100;
    setup.args.nonce_capacity_per_key = 16;
    setup.args.max_connections = 8;
    setup.args.read_timeout = 30.0;
    let axon = setup.start().await;

    let spec = json!({
        "axon": {"port": axon.addr.port(), "hotkey": miner_key().ss58_address()},
        "validator_mnemonic": VALIDATOR_MNEMONIC,
        "stranger_mnemonic": STRANGER_MNEMONIC,
        "lowstake_mnemonic": LOWSTAKE_MNEMONIC,
        "nonce_flood": 150,
        "lowstake_flood": 40,
        "sockets": 12,
    });
    let script = include_str!("../python/bt10_flood.py");
    let out = tokio::task::spawn_blocking(move || {
        run_python(Venv::Bt10, script, &[], spec.to_string().as_bytes())
    })
    .await
    .expect("python task");
    let seen: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "python output is not JSON ({e}):\n{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    });

    let served = |answer: &Value, text: &str| {
        assert_eq!(answer["status_code"], 200, "{text}: {answer}");
        assert_eq!(answer["completion"], format!("echo: {text}"), "{answer}");
    };
    served(&seen["before"], "before");
    // The floods did what they should: the stranger is refused (403) before its request is
    // verified (its nonces never reach the table), the low-stake key is served.
    assert_eq!(seen["nonce_flood_statuses"], json!({"403": 150}), "{seen}");
    assert_eq!(
        seen["lowstake_flood_statuses"],
        json!({"200": 40}),
        "{seen}"
    );
    for flood in [
        "after_nonce_flood",
        "after_lowstake_flood",
        "with_idle_sockets",
    ] {
        served(&seen[flood]["kept"], &format!("{flood}: kept"));
        served(&seen[flood]["fresh"], &format!("{flood}: fresh"));
    }
    let waited = seen["with_idle_sockets"]["seconds"]
        .as_f64()
        .expect("seconds");
    assert!(
        waited < 10.0,
        "the validator waited {waited} s behind idle sockets"
    );

    // The tables did overflow.
    let page = reqwest::get(format!("http://{}/metrics", axon.addr))
        .await
        .expect("metrics")
        .text()
        .await
        .expect("metrics page");
    let sample = |name: &str| {
        page.lines()
            .find_map(|line| line.strip_prefix(name))
            .and_then(|rest| rest.trim().parse::<u64>().ok())
            .unwrap_or_else(|| panic!("{name} not in {page}"))
    };
    assert_eq!(
        sample("prompting_nonce_table_early_evictions_total{class=\"unregistered\"}"),
        0
    );
    assert!(sample("prompting_nonce_table_early_evictions_total{class=\"registered\"}") >= 24);
    assert!(sample("prompting_connections_closed_total{reason=\"gave_way\"}") >= 4);
}
