//! The hot paths of a legacy request, one by one and whole:
//! header parse, body hash, sr25519 verify, and one request through the axon router
//! (parse + verify + hash + pipeline + echo + signed response), in process; and one request
//! from an unregistered hotkey, refused 403 (parse + blacklist + signed refusal).
//!
//! `cargo bench -p prompting-benches --bench hot_paths`

use std::sync::Arc;

use criterion::{BatchSize, Criterion, criterion_group, criterion_main};
use prompting_benches::{EchoMiner, hotkeys, legacy_prompt_request, metagraph_of};
use prompting_miner::{MinerConfig, Pipeline};
use prompting_synapse::{Prompting, Synapse, SynapseHeaders};
use prompting_transport::axon::{self, AxonArgs, AxonState};
use prompting_transport::dendrite::{AxonTarget, Dendrite};
use serde_json::Value;
use tower::ServiceExt;

fn recorded_request() -> (Vec<(String, String)>, String) {
    let data: Value = serde_json::from_str(include_str!("exchanges.json")).expect("fixture");
    let raw = data["exchanges"][0]["request"].as_str().expect("request");
    let (head, body) = raw
        .split_once("\r\n\r\n")
        .or_else(|| raw.split_once("\n\n"))
        .expect("blank line");
    let headers = head
        .lines()
        .skip(1)
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect();
    (headers, body.to_string())
}

fn header_value<'a>(headers: &'a [(String, String)], name: &str) -> &'a str {
    headers
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
        .expect("header present")
}

fn pieces(c: &mut Criterion) {
    let (headers, body) = recorded_request();
    c.bench_function("header_parse", |b| {
        b.iter(|| SynapseHeaders::parse(headers.iter().map(|(k, v)| (k.as_str(), v.as_bytes()))))
    });
    let synapse = Synapse::<Prompting>::from_json(body.as_bytes()).expect("body");
    c.bench_function("body_parse", |b| {
        b.iter(|| Synapse::<Prompting>::from_json(body.as_bytes()))
    });
    c.bench_function("body_hash", |b| b.iter(|| synapse.body_hash()));
    let long = Synapse::new(Prompting::new(
        vec!["system".into(), "user".into()],
        vec![
            "You are a helpful assistant.".into(),
            "é 🙂 long question ".repeat(200),
        ],
    ));
    c.bench_function("body_hash_4kb", |b| b.iter(|| long.body_hash()));
    let hotkey = header_value(&headers, "bt_header_dendrite_hotkey");
    let signature = header_value(&headers, "bt_header_dendrite_signature");
    let message = format!(
        "{}.{}.{}.{}.{}",
        header_value(&headers, "bt_header_dendrite_nonce"),
        hotkey,
        header_value(&headers, "bt_header_axon_hotkey"),
        header_value(&headers, "bt_header_dendrite_uuid"),
        header_value(&headers, "computed_body_hash"),
    );
    assert_eq!(
        prompting_keys::verify_hex(hotkey, message.as_bytes(), signature).ok(),
        Some(true)
    );
    c.bench_function("sr25519_verify", |b| {
        b.iter(|| prompting_keys::verify_hex(hotkey, message.as_bytes(), signature))
    });
}

fn whole_request(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let keys = hotkeys(3);
    let (miner_key, client_key) = (keys[0].clone(), keys[1].clone());
    // Not in the metagraph: refused 403.
    let stranger_key = keys[2].clone();
    let config = MinerConfig {
        // The rate limit would refuse a benchmark's thousands of calls from one hotkey.
        blacklist: prompting_miner::BlacklistConfig {
            min_request_period: 0,
            ..Default::default()
        },
        ..MinerConfig::default()
    };
    let metagraph = metagraph_of(&keys[..2], |_| 1000.0);
    let pipeline = Pipeline::new(config, metagraph, Arc::new(EchoMiner)).expect("pipeline");
    let args = AxonArgs {
        ip: [127, 0, 0, 1].into(),
        ..AxonArgs::default()
    };
    let state =
        Arc::new(AxonState::new(Arc::new(miner_key.clone()), pipeline, &args).expect("axon args"));
    let router = axon::router(state);
    let target = AxonTarget::new(([127, 0, 0, 1], 8091).into(), miner_key.ss58_address());
    for (name, key, status) in [
        ("axon_request_in_process", client_key, 200),
        ("axon_refusal_in_process", stranger_key, 403),
    ] {
        let dendrite = Dendrite::new(key).expect("dendrite");
        c.bench_function(name, |b| {
            b.to_async(&runtime).iter_batched(
                || legacy_prompt_request(&dendrite, &target).expect("request"),
                |request| {
                    let router = router.clone();
                    async move {
                        let response = router.oneshot(request).await.expect("infallible");
                        assert_eq!(response.status(), status);
                    }
                },
                BatchSize::SmallInput,
            )
        });
    }
}

criterion_group!(benches, pieces, whole_request);
criterion_main!(benches);
