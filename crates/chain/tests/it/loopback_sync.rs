//! The client against a loopback node: connect, metagraph sync, refresh failure, registration.

use crate::common;

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use common::node::{FIRST_HEAD, LoopbackNode, NodeConfig};
use common::{TestNeuron, keypair};
use prompting_chain::{
    ChainError, ExtrinsicSigner, Subtensor, SubtensorArgs, SyncOptions, spawn_sync,
};
use prompting_metagraph::{Metagraph, SharedMetagraph};
use prompting_testkit::wait_until;

async fn connect(node: &LoopbackNode) -> Subtensor {
    let args = SubtensorArgs {
        chain_endpoint: Some(node.url.clone()),
        connect_timeout_secs: 10,
        call_timeout_secs: 10,
        ..SubtensorArgs::default()
    };
    prompting_chain::connect(&args)
        .await
        .expect("connects to the loopback node")
}

fn neurons() -> Vec<TestNeuron> {
    let mut validator = TestNeuron::new(0, keypair(1).public_key().0);
    validator.stakes = vec![([5; 32], 2_000_000_000_000)];
    validator.validator_permit = true;
    let mut miner = TestNeuron::new(1, keypair(2).public_key().0);
    miner.ip = 0x0a00_0001;
    miner.ip_type = 4;
    miner.port = 8091;
    vec![validator, miner]
}

#[tokio::test]
async fn fetches_the_metagraph_through_the_runtime_api() {
    // Blocks on demand; finality two blocks behind the best block.
    let node = LoopbackNode::start_with(NodeConfig {
        block_time: None,
        ..NodeConfig::new(neurons())
    })
    .await;
    node.state.produce_blocks(5);
    let subtensor = connect(&node).await;
    let metagraph = subtensor.fetch_metagraph(21).await.expect("metagraph");
    assert_eq!(metagraph.netuid, 21);
    // Read at the finalized block, not the best one.
    assert_eq!(metagraph.block, u64::from(FIRST_HEAD + 3));
    assert_eq!(
        subtensor.best_block().await.expect("best block").number,
        u64::from(FIRST_HEAD + 5)
    );
    assert_eq!(*node.state.netuids_asked.lock().expect("lock"), vec![21]);
    let validator = metagraph
        .neuron(&keypair(1).ss58())
        .expect("validator present");
    assert_eq!((validator.uid, validator.stake), (0, 2000.0));
    assert!(validator.validator_permit);
    let miner = metagraph.neuron(&keypair(2).ss58()).expect("miner present");
    assert_eq!(miner.axon.as_deref(), Some("10.0.0.1:8091"));
}

#[tokio::test]
async fn an_unregistered_hotkey_cannot_start() {
    let node = LoopbackNode::start(neurons()).await;
    let subtensor = connect(&node).await;
    let own = subtensor
        .ensure_registered(&keypair(2).ss58(), 1)
        .await
        .expect("registered");
    assert_eq!(own.uid, 1);
    let stranger = keypair(9).ss58();
    let err = subtensor
        .ensure_registered(&stranger, 1)
        .await
        .expect_err("not registered");
    assert!(matches!(err, ChainError::NotRegistered { netuid: 1, .. }));
    assert_eq!(
        err.to_string(),
        format!(
            "Your hotkey {stranger} is not registered on netuid 1. Please register the hotkey \
             using `btcli subnets register` before trying again"
        )
    );
}

#[tokio::test]
async fn connecting_to_nothing_fails_within_the_timeout() {
    // A port that was just free: nothing listens there.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("ephemeral port")
        .port();
    let args = SubtensorArgs {
        chain_endpoint: Some(format!("ws://127.0.0.1:{port}")),
        connect_timeout_secs: 5,
        ..SubtensorArgs::default()
    };
    let err = prompting_chain::connect(&args)
        .await
        .expect_err("nothing listens");
    assert!(
        matches!(err, ChainError::Connect { .. } | ChainError::Timeout { .. }),
        "{err}"
    );
}

#[tokio::test]
async fn sync_refreshes_and_keeps_the_last_view_on_failure() {
    let node = LoopbackNode::start(neurons()[..1].to_vec()).await;
    let subtensor = connect(&node).await;
    let shared = Arc::new(SharedMetagraph::new(Metagraph::default()));
    let options = SyncOptions {
        netuid: 1,
        epoch: Duration::from_millis(100),
        retry_min: Duration::from_millis(50),
        retry_max: Duration::from_millis(200),
        block_time: Duration::from_millis(20),
        serve: None,
        set_weights: false,
        version_key: None,
    };
    let signer: Arc<dyn ExtrinsicSigner> = Arc::new(keypair(2));
    let (task, status) = spawn_sync(subtensor, Arc::clone(&shared), signer, options);

    wait_until("the first refresh", || shared.load().neurons().len() == 1).await;
    assert!(status.snapshot().last_success.is_some());
    assert!(
        status
            .snapshot()
            .last_block
            .is_some_and(|block| block >= u64::from(FIRST_HEAD))
    );

    // The chain changes: the next epoch sees it.
    node.state.set_neurons(neurons());
    wait_until("the second neuron appears", || {
        shared.load().neurons().len() == 2
    })
    .await;

    // The node fails: the view stays, the status shows the failures.
    node.state.fail_runtime_api.store(true, Ordering::SeqCst);
    wait_until("two failures are recorded", || {
        status.snapshot().consecutive_failures >= 2
    })
    .await;
    let snapshot = status.snapshot();
    assert!(
        snapshot
            .last_error
            .as_deref()
            .is_some_and(|e| e.contains("runtime API unavailable")),
        "{snapshot:?}"
    );
    assert_eq!(shared.load().neurons().len(), 2);
    assert!(shared.load().neuron(&keypair(2).ss58()).is_some());

    // It recovers.
    node.state.fail_runtime_api.store(false, Ordering::SeqCst);
    wait_until("the failures are cleared", || {
        status.snapshot().consecutive_failures == 0
    })
    .await;
    assert!(
        status
            .snapshot()
            .age()
            .is_some_and(|age| age < Duration::from_secs(5))
    );
    task.abort();
}

/// The host's clock against the best block's `Timestamp.Now`: near zero on a node whose
/// author's clock is this host's, the node's offset (reversed) on one whose author runs
/// 90 s behind, and then reported.
#[tokio::test]
async fn the_clock_skew_is_read_from_the_best_block() {
    for offset_ms in [0i64, -90_000] {
        let node = LoopbackNode::start_with(NodeConfig {
            block_time: None,
            clock_offset_ms: offset_ms,
            ..NodeConfig::new(neurons())
        })
        .await;
        node.state.produce_blocks(3);
        let subtensor = connect(&node).await;
        let (skew, block) = subtensor.clock_skew().await.expect("the chain's time");
        assert_eq!(block, u64::from(FIRST_HEAD) + 3);
        let expected = -i128::from(offset_ms);
        // The blocks were built a moment before they were read.
        assert!(
            (expected..expected + 10_000).contains(&skew),
            "offset {offset_ms}: skew {skew} ms"
        );
        let report = prompting_chain::clock::report(skew, block);
        assert_eq!(report.is_some(), offset_ms != 0, "{report:?}");
    }
}
