//! `serve_axon` and `set_weights` against the loopback node: the submitted extrinsics decode
//! back (through the metadata) to the expected calls, signed by the hotkey.

use crate::common;

use std::sync::Arc;
use std::time::Duration;

use blake2::digest::consts::U32;
use blake2::{Blake2b, Digest};
use common::node::{GENESIS, LoopbackNode, NodeConfig, SPEC_VERSION, TX_VERSION, Verdict};
use common::{TestNeuron, keypair, metadata};
use prompting_chain::signer::SIGNING_CONTEXT;
use prompting_chain::{
    ChainError, ExtrinsicSigner, ServeAxon, ServeOutcome, Subtensor, SubtensorArgs, SyncOptions,
    spawn_sync,
};
use prompting_metagraph::{Metagraph, SharedMetagraph};
use prompting_testkit::wait_until;
use subxt::config::PolkadotConfig;
use subxt::ext::scale_value::{Composite, Primitive, Value, ValueDef};

/// The miner's hotkey (uid 1 on the loopback chain).
const MINER_SEED: u8 = 2;

/// A validator (uid 0) and the miner (uid 1, its axon published at `miner_axon` in block 5
/// if given).
fn neurons(miner_axon: Option<&str>) -> Vec<TestNeuron> {
    let mut validator = TestNeuron::new(0, keypair(1).public_key().0);
    validator.validator_permit = true;
    let mut miner = TestNeuron::new(1, keypair(MINER_SEED).public_key().0);
    if let Some(addr) = miner_axon {
        miner = miner.served(addr, 5);
    }
    vec![validator, miner]
}

async fn connect(node: &LoopbackNode) -> Subtensor {
    let args = SubtensorArgs {
        chain_endpoint: Some(node.url.clone()),
        connect_timeout_secs: 10,
        call_timeout_secs: 10,
        ..SubtensorArgs::default()
    };
    prompting_chain::connect(&args).await.expect("connects")
}

async fn setup(miner_axon: Option<&str>) -> (LoopbackNode, Subtensor) {
    setup_with(NodeConfig::new(neurons(miner_axon))).await
}

async fn setup_with(config: NodeConfig) -> (LoopbackNode, Subtensor) {
    let node = LoopbackNode::start_with(config).await;
    let subtensor = connect(&node).await;
    (node, subtensor)
}

/// A subnet with commit-reveal off and the given weights rate limit.
fn plain_weights(limit: u64) -> NodeConfig {
    let mut config = NodeConfig::weights_open(neurons(None));
    config.rules.weights_rate_limit = limit;
    config
}

/// A submitted extrinsic, decoded and checked to be signed by `signer`.
struct Decoded {
    pallet: String,
    call: String,
    nonce: u64,
    fields: Vec<(String, Value<u32>)>,
}

fn blake2_256(data: &[u8]) -> [u8; 32] {
    Blake2b::<U32>::digest(data).into()
}

fn decode_signed(node: &LoopbackNode, bytes: &[u8], signer: &prompting_keys::Keypair) -> Decoded {
    let extrinsics = subxt::ext::subxt_core::blocks::decode_from::<PolkadotConfig>(
        vec![bytes.to_vec()],
        metadata(),
    )
    .expect("the extrinsic decodes with the metadata");
    let ext = extrinsics.iter().next().expect("one extrinsic");
    assert!(ext.is_signed());

    // MultiAddress::Id(account) and MultiSignature::Sr25519(signature).
    let address = ext.address_bytes().expect("signed");
    assert_eq!(address[0], 0, "MultiAddress::Id");
    let account = signer.public_key().0;
    assert_eq!(&address[1..], &account);
    let public = schnorrkel::PublicKey::from_bytes(&account).expect("public key");
    let signature = ext.signature_bytes().expect("signed");
    assert_eq!(signature[0], 1, "MultiSignature::Sr25519");
    let signature = schnorrkel::Signature::from_bytes(&signature[1..]).expect("64 bytes");

    // Signer payload: call ++ extension values ++ implicit data (spec, tx version, genesis,
    // mortality checkpoint, no metadata hash); hashed when longer than 256 bytes. The
    // checkpoint is one of the node's blocks.
    let extensions = ext.transaction_extensions().expect("signed");
    assert_eq!(extensions.tip(), Some(0));
    let verified = node.state.block_hashes().iter().any(|checkpoint| {
        let mut payload = ext.call_bytes().to_vec();
        payload.extend_from_slice(ext.transaction_extensions_bytes().expect("signed"));
        payload.extend_from_slice(&SPEC_VERSION.to_le_bytes());
        payload.extend_from_slice(&TX_VERSION.to_le_bytes());
        payload.extend_from_slice(&GENESIS);
        payload.extend_from_slice(checkpoint);
        payload.push(0);
        let payload = if payload.len() > 256 {
            blake2_256(&payload).to_vec()
        } else {
            payload
        };
        public
            .verify_simple(SIGNING_CONTEXT, &payload, &signature)
            .is_ok()
    });
    assert!(
        verified,
        "the sr25519 signature verifies over the signer payload"
    );

    let Composite::Named(fields) = ext.field_values().expect("fields decode") else {
        panic!("call fields are named");
    };
    Decoded {
        pallet: ext.pallet_name().expect("pallet").to_string(),
        call: ext.variant_name().expect("call").to_string(),
        nonce: extensions.nonce().expect("CheckNonce"),
        fields,
    }
}

fn uint(decoded: &Decoded, name: &str) -> u128 {
    let value = &decoded
        .fields
        .iter()
        .find(|(n, _)| n == name)
        .unwrap_or_else(|| panic!("field {name}"))
        .1;
    match &value.value {
        ValueDef::Primitive(Primitive::U128(n)) => *n,
        other => panic!("{name} is not an integer: {other:?}"),
    }
}

fn list(decoded: &Decoded, name: &str) -> Vec<u128> {
    let value = &decoded
        .fields
        .iter()
        .find(|(n, _)| n == name)
        .unwrap_or_else(|| panic!("field {name}"))
        .1;
    let ValueDef::Composite(items) = &value.value else {
        panic!("{name} is not a list");
    };
    items
        .values()
        .map(|v| match &v.value {
            ValueDef::Primitive(Primitive::U128(n)) => *n,
            other => panic!("{name} item is not an integer: {other:?}"),
        })
        .collect()
}

#[tokio::test]
async fn serve_axon_submits_the_signed_call() {
    let (node, subtensor) = setup(None).await;
    let hotkey = keypair(MINER_SEED);
    let external = "203.0.113.5:8091".parse().expect("literal");
    let outcome = subtensor
        .serve_axon(&hotkey, &ServeAxon::new(1, external))
        .await
        .expect("served");
    assert!(matches!(outcome, ServeOutcome::Included { .. }));

    let submitted = node.state.submitted();
    assert_eq!(submitted.len(), 1);
    let call = decode_signed(&node, &submitted[0], &hotkey);
    assert_eq!(
        (call.pallet.as_str(), call.call.as_str()),
        ("SubtensorModule", "serve_axon")
    );
    assert_eq!(uint(&call, "netuid"), 1);
    assert_eq!(uint(&call, "version"), 644);
    assert_eq!(uint(&call, "ip"), 0xcb00_7105);
    assert_eq!(uint(&call, "port"), 8091);
    assert_eq!(uint(&call, "ip_type"), 4);
    assert_eq!(uint(&call, "protocol"), 4);
    assert_eq!(uint(&call, "placeholder1"), 0);
    assert_eq!(uint(&call, "placeholder2"), 0);
}

#[tokio::test]
async fn serve_axon_publishes_ipv6() {
    let (node, subtensor) = setup(None).await;
    let hotkey = keypair(MINER_SEED);
    let external: std::net::SocketAddr = "[2001:db8::5]:9000".parse().expect("literal");
    subtensor
        .serve_axon(&hotkey, &ServeAxon::new(3, external))
        .await
        .expect("served");
    let call = decode_signed(&node, &node.state.submitted()[0], &hotkey);
    let v6: std::net::Ipv6Addr = "2001:db8::5".parse().expect("literal");
    assert_eq!(uint(&call, "ip"), u128::from(v6));
    assert_eq!((uint(&call, "ip_type"), uint(&call, "port")), (6, 9000));
    assert_eq!(uint(&call, "netuid"), 3);
}

#[tokio::test]
async fn serve_axon_is_skipped_when_the_chain_has_the_same_address() {
    let (node, subtensor) = setup(Some("203.0.113.5:8091")).await;
    let hotkey = keypair(MINER_SEED);
    let same = "203.0.113.5:8091".parse().expect("literal");
    let outcome = subtensor
        .serve_axon(&hotkey, &ServeAxon::new(1, same))
        .await
        .expect("nothing to do");
    assert_eq!(outcome, ServeOutcome::AlreadyServed);
    assert!(node.state.submitted().is_empty());

    // A new port is served.
    let moved = "203.0.113.5:8092".parse().expect("literal");
    let outcome = subtensor
        .serve_axon(&hotkey, &ServeAxon::new(1, moved))
        .await
        .expect("served");
    assert!(matches!(outcome, ServeOutcome::Included { .. }));
    assert_eq!(node.state.submitted().len(), 1);
}

#[tokio::test]
async fn serve_axon_refuses_an_unregistered_hotkey() {
    let (node, subtensor) = setup(None).await;
    let err = subtensor
        .serve_axon(
            &keypair(7),
            &ServeAxon::new(1, "203.0.113.5:8091".parse().expect("literal")),
        )
        .await
        .expect_err("not registered");
    assert!(matches!(err, ChainError::NotRegistered { .. }));
    assert!(node.state.submitted().is_empty());
}

#[tokio::test]
async fn set_weights_submits_the_signed_call() {
    let (node, subtensor) = setup_with(plain_weights(100)).await;
    let hotkey = keypair(MINER_SEED);
    subtensor
        .set_weights(&hotkey, 1, &[1], &[65535], 1)
        .await
        .expect("weights set");
    let call = decode_signed(&node, &node.state.submitted()[0], &hotkey);
    assert_eq!(
        (call.pallet.as_str(), call.call.as_str()),
        ("SubtensorModule", "set_weights")
    );
    assert_eq!(uint(&call, "netuid"), 1);
    assert_eq!(list(&call, "dests"), vec![1]);
    assert_eq!(list(&call, "weights"), vec![65535]);
    assert_eq!(uint(&call, "version_key"), 1);

    assert!(matches!(
        subtensor.set_weights(&hotkey, 1, &[1, 2], &[1], 1).await,
        Err(ChainError::InvalidArgument(_))
    ));
}

#[tokio::test]
async fn sync_sets_weights_on_its_own_uid_within_the_rate_limit_and_survives_failures() {
    // Epochs of 50 ms, blocks of 20 ms, a limit of 5 blocks: the task waits out the limit
    // instead of sending into it.
    let (node, subtensor) = setup_with(plain_weights(5)).await;
    let shared = Arc::new(SharedMetagraph::new(Metagraph::default()));
    let options = SyncOptions {
        netuid: 1,
        epoch: Duration::from_millis(50),
        block_time: Duration::from_millis(20),
        retry_min: Duration::from_millis(50),
        retry_max: Duration::from_millis(200),
        serve: None,
        set_weights: true,
        version_key: None,
    };
    let hotkey = Arc::new(keypair(MINER_SEED));
    let signer: Arc<dyn ExtrinsicSigner> = hotkey.clone();
    let (task, status) = spawn_sync(subtensor, Arc::clone(&shared), signer, options);

    wait_until("weights were set three times", || {
        status.snapshot().weights_set_total >= 3
    })
    .await;
    // The stake threshold rises above the miner's stake: the pool refuses set_weights
    // (StakeAmountTooLow); the failure is recorded and the task goes on.
    node.state
        .modify(|rt| rt.rules.stake_threshold = 1_000_000_000);
    wait_until("the pool refusal is recorded", || {
        status
            .snapshot()
            .last_weights_error
            .is_some_and(|e| e.contains("StakeAmountTooLow"))
    })
    .await;
    node.state.modify(|rt| rt.rules.stake_threshold = 0);
    let before = status.snapshot().weights_set_total;
    wait_until("weights are set again", || {
        status.snapshot().weights_set_total > before
    })
    .await;
    task.abort();

    assert_eq!(shared.load().neurons().len(), 2);
    let submissions = node.state.submissions();
    let mut included_at = Vec::new();
    for (index, submission) in submissions.iter().enumerate() {
        let call = decode_signed(&node, &submission.bytes, &hotkey);
        assert_eq!(call.call, "set_weights");
        assert_eq!(list(&call, "dests"), vec![1]);
        assert_eq!(list(&call, "weights"), vec![65535]);
        // A refused transaction does not use its nonce: the next one takes it again.
        assert_eq!(call.nonce, included_at.len() as u64, "submission {index}");
        match &submission.verdict {
            Verdict::Included { number, failure } => {
                assert_eq!(*failure, None, "submission {index} failed on chain");
                included_at.push(*number);
            }
            Verdict::PoolRejected { code, data } => {
                assert_eq!((*code, data.as_str()), (1010, "Custom error: 1"));
            }
            other => panic!("submission {index}: {other:?}"),
        }
    }
    assert!(
        included_at.windows(2).all(|w| w[1] - w[0] >= 5),
        "every set_weights respects the 5-block limit: {included_at:?}"
    );
}

#[tokio::test]
async fn sync_does_not_set_weights_when_disabled() {
    let (node, subtensor) = setup(None).await;
    let shared = Arc::new(SharedMetagraph::new(Metagraph::default()));
    let options = SyncOptions {
        netuid: 1,
        epoch: Duration::from_millis(50),
        retry_min: Duration::from_millis(50),
        retry_max: Duration::from_millis(50),
        block_time: Duration::from_millis(20),
        serve: None,
        set_weights: false,
        version_key: None,
    };
    let signer: Arc<dyn ExtrinsicSigner> = Arc::new(keypair(MINER_SEED));
    let (task, _status) = spawn_sync(subtensor, Arc::clone(&shared), signer, options);
    wait_until("three refreshes", || {
        node.state
            .runtime_api_calls
            .load(std::sync::atomic::Ordering::SeqCst)
            >= 3
    })
    .await;
    assert!(node.state.submitted().is_empty());
    task.abort();
}
