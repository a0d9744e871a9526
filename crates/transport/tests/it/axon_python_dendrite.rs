//! A real Python `bittensor.Dendrite` (10.5.0, pinned venv) against our axon: every case
//! a validator meets, with the status the Python client reports. Needs the venv made by
//! `scripts/setup-python.sh` (fails, does not skip, without it).

use crate::common;

use std::sync::Arc;

use common::{AxonSetup, COLDKEY_MNEMONIC, VALIDATOR_MNEMONIC, miner_key, validator_key};
use prompting_keys::Keypair;
use prompting_testkit::{Venv, run_python};
use serde_json::{Value, json};

const STRANGER_MNEMONIC: &str = "zoo zoo zoo zoo zoo zoo zoo zoo zoo zoo zoo wrong";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_dendrite_gets_right_answers_and_statuses() {
    let validator = validator_key().ss58_address();
    let blocked = Keypair::from_mnemonic(COLDKEY_MNEMONIC)
        .expect("mnemonic")
        .ss58_address();
    let mut setup = AxonSetup::new(&[&validator, &blocked]);
    setup.config.blacklist.blacklist = vec![blocked.clone()];
    let axon = setup.start().await;
    let mut slow = AxonSetup::new(&[&validator]);
    slow.args.max_request_timeout = 1.0;
    let slow = slow.start().await;
    let miner = miner_key().ss58_address();

    let spec = json!({
        "axon": {"port": axon.addr.port(), "hotkey": miner},
        "slow_axon": {"port": slow.addr.port(), "hotkey": miner},
        "validator_mnemonic": VALIDATOR_MNEMONIC,
        "stranger_mnemonic": STRANGER_MNEMONIC,
        "blocked_mnemonic": COLDKEY_MNEMONIC,
    });
    let script = include_str!("../python/bt10_dendrite.py");
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
    let case = |name: &str| seen[name].clone();

    let success = case("success");
    assert_eq!(
        success["completion"],
        "echo: What is the capital of France?"
    );
    assert_eq!(success["dendrite_status_code"], 200);
    assert_eq!(success["axon_status_message"], "Success");

    assert_eq!(
        case("unicode")["completion"],
        "echo: é 🙂 \"quoted\" it's\nnewline\ttab \\ back"
    );

    let backend = case("backend_error");
    assert_eq!(backend["dendrite_status_code"], 500);
    assert_eq!(
        backend["dendrite_status_message"],
        "Internal server error with error: kaboom"
    );

    assert_eq!(case("client_timeout")["dendrite_status_code"], 408);
    let server_timeout = case("server_timeout");
    assert_eq!(server_timeout["dendrite_status_code"], 408);
    assert_eq!(server_timeout["axon_status_code"], 408);
    assert!(
        server_timeout["dendrite_status_message"]
            .as_str()
            .is_some_and(|m| m.starts_with("Timeout: no answer within")),
        "{server_timeout}"
    );

    let stream = case("stream");
    assert_eq!(stream["status_code"], 200, "{stream}");
    assert_eq!(stream["completion"], "echo: stream these words please");
    assert!(
        stream["chunks"].as_array().is_some_and(|c| !c.is_empty()),
        "{stream}"
    );

    let unregistered = case("unregistered");
    assert_eq!(unregistered["dendrite_status_code"], 403);
    assert_eq!(
        unregistered["dendrite_status_message"],
        "Forbidden. Key is blacklisted: hotkey not registered."
    );
    let blacklisted = case("blacklisted");
    assert_eq!(blacklisted["dendrite_status_code"], 403);
    assert_eq!(
        blacklisted["dendrite_status_message"],
        "Forbidden. Key is blacklisted: blacklisted hotkey."
    );

    let bad_signature = case("bad_signature");
    assert_eq!(bad_signature["dendrite_status_code"], 401);
    assert!(
        bad_signature["dendrite_status_message"]
            .as_str()
            .is_some_and(|m| m.starts_with("Not Verified with error: Signature mismatch")),
        "{bad_signature}"
    );
    assert_eq!(case("tampered_body")["dendrite_status_code"], 401);
    assert_eq!(case("replay_first")["dendrite_status_code"], 200);
    let replay = case("replay_second");
    assert_eq!(replay["dendrite_status_code"], 401);
    assert_eq!(
        replay["dendrite_status_message"],
        "Not Verified with error: Nonce is too old, a newer one was last processed"
    );
    drop(Arc::clone(&axon.state));
}
