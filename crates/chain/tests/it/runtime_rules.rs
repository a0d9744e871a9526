//! The chain's own rules, against a loopback node that enforces them as subtensor's runtime
//! (spec 365) does: serving and weights rate limits, commit-reveal, version keys, the stake
//! threshold, loopback ips, per-account nonces with finality lagging behind the best block,
//! and pool refusals with their custom codes. One test per defect of issue 18.

use crate::common;

use std::sync::Arc;
use std::time::Duration;

use common::node::{LoopbackNode, NodeConfig, Verdict};
use common::{TestNeuron, keypair};
use prompting_chain::{
    ChainError, ExtrinsicSigner, Rejection, ServeAxon, ServeOutcome, Subtensor, SubtensorArgs,
    SyncOptions, SyncStatus, WeightsOutcome, spawn_sync,
};
use prompting_metagraph::{Metagraph, SharedMetagraph};
use prompting_testkit::wait_until;
use subxt::config::PolkadotConfig;
use subxt::ext::scale_value::{Composite, Value};

const MINER_SEED: u8 = 2;

fn neurons() -> Vec<TestNeuron> {
    let mut validator = TestNeuron::new(0, keypair(1).public_key().0);
    validator.validator_permit = true;
    validator.stakes = vec![([5; 32], 1_000_000_000_000)];
    let mut miner = TestNeuron::new(1, keypair(MINER_SEED).public_key().0);
    miner.stakes = vec![([6; 32], 2_000_000_000)];
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

async fn start(config: NodeConfig) -> (LoopbackNode, Subtensor) {
    let node = LoopbackNode::start_with(config).await;
    let subtensor = connect(&node).await;
    (node, subtensor)
}

/// The miner's neuron with its axon at `addr`, served `blocks_ago` blocks before the node's
/// first head.
fn served_miner(addr: &str, blocks_ago: u64) -> Vec<TestNeuron> {
    let head = u64::from(common::node::FIRST_HEAD);
    let mut neurons = neurons();
    neurons[1] = neurons[1].clone().served(addr, head - blocks_ago);
    neurons
}

fn sync_options(serve: Option<ServeAxon>, set_weights: bool) -> SyncOptions {
    SyncOptions {
        netuid: 1,
        epoch: Duration::from_millis(100),
        block_time: Duration::from_millis(20),
        retry_min: Duration::from_millis(50),
        retry_max: Duration::from_millis(200),
        serve,
        set_weights,
        version_key: None,
    }
}

fn spawn(
    subtensor: Subtensor,
    options: SyncOptions,
) -> (tokio::task::JoinHandle<()>, Arc<SyncStatus>) {
    let shared = Arc::new(SharedMetagraph::new(Metagraph::default()));
    let signer: Arc<dyn ExtrinsicSigner> = Arc::new(keypair(MINER_SEED));
    spawn_sync(subtensor, shared, signer, options)
}

/// The calls the node included, with their block and dispatch error.
fn included(node: &LoopbackNode) -> Vec<(String, u32, Option<&'static str>)> {
    node.state
        .submissions()
        .into_iter()
        .filter_map(|s| match s.verdict {
            Verdict::Included { number, failure } => {
                Some((s.call.expect("decoded").name, number, failure))
            }
            _ => None,
        })
        .collect()
}

// Defect 1: a restart within ServingRateLimit with a changed address is not sent into the
// pool (where it is refused with custom code 12) but waits for the block the limit allows;
// loopback addresses are refused before sending (the pool refuses 127.0.0.1 with code 11).

#[tokio::test]
async fn a_reserve_within_the_serving_rate_limit_waits_for_the_allowed_block() {
    // Served 5 blocks ago at another port; ServingRateLimit 50 blocks (the default).
    let (node, subtensor) = start(NodeConfig::new(served_miner("203.0.113.5:8091", 5))).await;
    let wanted = ServeAxon::new(1, "203.0.113.5:9000".parse().expect("literal"));
    let outcome = subtensor
        .serve_axon(&keypair(MINER_SEED), &wanted)
        .await
        .expect("a rate limit is not an error");
    let head = u64::from(common::node::FIRST_HEAD);
    let ServeOutcome::RateLimited { allowed_at, .. } = outcome else {
        panic!("expected RateLimited, got {outcome:?}");
    };
    assert_eq!(allowed_at, head - 5 + 50);
    assert!(node.state.submitted().is_empty(), "nothing sent early");

    // The sync task retries at that block, and the serve then dispatches.
    let (task, status) = spawn(subtensor, sync_options(Some(wanted), false));
    wait_until("the axon is served", || {
        status.snapshot().last_served.is_some()
    })
    .await;
    task.abort();
    let included = included(&node);
    assert_eq!(included.len(), 1, "{included:?}");
    let (call, block, failure) = &included[0];
    assert_eq!((call.as_str(), *failure), ("serve_axon", None));
    assert!(u64::from(*block) >= allowed_at, "included at {block}");
    let miner = node.state.best_state().neurons[1].clone();
    assert_eq!((miner.port, u64::from(*block)), (9000, miner.axon_block));
    assert!(
        node.state
            .submissions()
            .iter()
            .all(|s| !matches!(s.verdict, Verdict::PoolRejected { .. })),
        "no submission ran into the pool's rate limit"
    );
}

#[tokio::test]
async fn loopback_addresses_are_refused_before_sending_as_the_pool_would() {
    let (node, subtensor) = start(NodeConfig::new(neurons())).await;
    let hotkey = keypair(MINER_SEED);

    // The node refuses 127.0.0.1 in the pool, with subtensor's InvalidIpAddress code (11),
    // as RPC error 1010: submitted here straight through subxt, without our client's check.
    let api = subxt::OnlineClient::<PolkadotConfig>::from_insecure_url(&node.url)
        .await
        .expect("subxt connects");
    let call = subxt::dynamic::tx(
        "SubtensorModule",
        "serve_axon",
        Composite::named([
            ("netuid", Value::u128(1)),
            ("version", Value::u128(644)),
            ("ip", Value::u128(0x7f00_0001)),
            ("port", Value::u128(8091)),
            ("ip_type", Value::u128(4)),
            ("protocol", Value::u128(4)),
            ("placeholder1", Value::u128(0)),
            ("placeholder2", Value::u128(0)),
        ]),
    );
    struct Raw<'a>(&'a prompting_keys::Keypair);
    impl subxt::tx::Signer<PolkadotConfig> for Raw<'_> {
        fn account_id(&self) -> subxt::utils::AccountId32 {
            subxt::utils::AccountId32(self.0.public_key().0)
        }
        fn sign(&self, payload: &[u8]) -> subxt::utils::MultiSignature {
            subxt::utils::MultiSignature::Sr25519(self.0.sign(payload))
        }
    }
    let err = api
        .tx()
        .sign_and_submit_then_watch_default(&call, &Raw(&hotkey))
        .await
        .expect_err("the pool refuses 127.0.0.1");
    let rejection = Rejection::from_subxt(&err);
    assert_eq!(rejection, Rejection::PoolCustom { code: 11 });
    assert_eq!(rejection.name(), Some("InvalidIpAddress"));
    assert_eq!(node.state.submitted().len(), 1);

    // Our client refuses it (and every loopback address) without sending anything.
    for addr in ["127.0.0.1:8091", "[::1]:8091", "[::ffff:127.0.0.1]:8091"] {
        let err = subtensor
            .serve_axon(&hotkey, &ServeAxon::new(1, addr.parse().expect("literal")))
            .await
            .expect_err("loopback refused");
        assert!(
            matches!(err, ChainError::UnservableAddress { .. }),
            "{addr}: {err}"
        );
        assert!(err.to_string().contains("loopback"), "{err}");
    }
    assert_eq!(node.state.submitted().len(), 1, "nothing more was sent");
}

// Defect 2: set_weights reads the subnet's hyperparameters first.

#[tokio::test]
async fn commit_reveal_subnets_get_no_set_weights_and_one_warning() {
    // The runtime default: CommitRevealWeightsEnabled = true.
    let (node, subtensor) = start(NodeConfig::new(neurons())).await;
    let outcome = subtensor
        .set_own_weights(&keypair(MINER_SEED), 1, None)
        .await
        .expect("checked");
    assert_eq!(outcome, WeightsOutcome::CommitReveal);

    let (task, status) = spawn(subtensor, sync_options(None, true));
    wait_until("three epochs", || {
        node.state
            .runtime_api_calls
            .load(std::sync::atomic::Ordering::SeqCst)
            >= 3
    })
    .await;
    task.abort();
    assert!(node.state.submitted().is_empty(), "nothing was sent");
    let snapshot = status.snapshot();
    assert!(
        snapshot
            .weights_skipped
            .as_deref()
            .is_some_and(|why| why.contains("commit-reveal") && why.contains("CommitRevealEnabled")),
        "{snapshot:?}"
    );
    assert_eq!(snapshot.weights_set_total, 0);
}

#[tokio::test]
async fn the_version_key_comes_from_the_chain_unless_given() {
    let mut config = NodeConfig::weights_open(neurons());
    config.rules.weights_version_key = 2_001_000;
    config.rules.weights_rate_limit = 1;
    let (node, subtensor) = start(config).await;
    let hotkey = keypair(MINER_SEED);
    let outcome = subtensor
        .set_own_weights(&hotkey, 1, None)
        .await
        .expect("weights set");
    let WeightsOutcome::Set {
        version_key, uid, ..
    } = outcome
    else {
        panic!("expected Set, got {outcome:?}");
    };
    assert_eq!((version_key, uid), (2_001_000, 1));

    // A key below the subnet's is refused at dispatch, by name.
    node.wait_for_block(node.state.best_number() + 2, Duration::from_secs(5))
        .await;
    let err = subtensor
        .set_own_weights(&hotkey, 1, Some(7))
        .await
        .expect_err("outdated key");
    assert_eq!(
        err.rejection().and_then(Rejection::name),
        Some("IncorrectWeightVersionKey"),
        "{err}"
    );
    let included = included(&node);
    assert_eq!(
        included.iter().map(|(_, _, f)| *f).collect::<Vec<_>>(),
        vec![None, Some("IncorrectWeightVersionKey")]
    );
}

// Defect 3: the nonce of a transaction sent right after another one was included (but not
// yet finalized) follows the best block and the pool, not the finalized block.

#[tokio::test]
async fn set_weights_right_after_serving_gets_the_next_nonce() {
    let mut config = NodeConfig::weights_open(neurons());
    config.finality_lag = 5;
    let (node, subtensor) = start(config).await;
    let hotkey = keypair(MINER_SEED);
    subtensor
        .serve_axon(
            &hotkey,
            &ServeAxon::new(1, "203.0.113.5:8091".parse().expect("literal")),
        )
        .await
        .expect("served");
    assert!(
        node.state.finalized_number() < node.state.best_number(),
        "the serve is not finalized yet"
    );
    subtensor
        .set_own_weights(&hotkey, 1, None)
        .await
        .expect("weights set with the next nonce");
    let submissions = node.state.submissions();
    let nonces: Vec<u64> = submissions
        .iter()
        .map(|s| s.call.as_ref().expect("decoded").nonce)
        .collect();
    assert_eq!(nonces, vec![0, 1]);
    assert_eq!(
        included(&node)
            .iter()
            .map(|(name, _, failure)| (name.as_str(), *failure))
            .collect::<Vec<_>>(),
        vec![("serve_axon", None), ("set_weights", None)]
    );
}

// Defect 4: the 100-block epoch on the 100-block WeightsSetRateLimit: the task checks the
// blocks since the last update against the chain's limit before sending.

#[tokio::test]
async fn weights_wait_for_the_rate_limit_instead_of_failing() {
    // Weights set 5 blocks before the head, a limit of 30 blocks, an epoch of 5 blocks.
    let head = u64::from(common::node::FIRST_HEAD);
    let mut neurons = neurons();
    neurons[1].last_update = head - 5;
    let mut config = NodeConfig::weights_open(neurons);
    config.rules.weights_rate_limit = 30;
    let (node, subtensor) = start(config).await;
    let (task, status) = spawn(subtensor, sync_options(None, true));
    wait_until("weights were set twice", || {
        status.snapshot().weights_set_total >= 2
    })
    .await;
    task.abort();
    let snapshot = status.snapshot();
    assert_eq!(snapshot.last_weights_error, None, "{snapshot:?}");
    let blocks: Vec<u64> = included(&node)
        .into_iter()
        .map(|(name, block, failure)| {
            assert_eq!((name.as_str(), failure), ("set_weights", None));
            u64::from(block)
        })
        .collect();
    assert!(blocks[0] >= head + 25, "first weights at {}", blocks[0]);
    assert!(blocks.windows(2).all(|w| w[1] - w[0] >= 30), "{blocks:?}");
}

// Defect 5: pool refusals are shown by name, with their code.

#[tokio::test]
async fn pool_refusals_are_named() {
    // The miner's stake weight (2 α) is below the chain's StakeThreshold (10 α): spec 365's
    // pool refuses set_weights with custom code 1.
    let mut config = NodeConfig::weights_open(neurons());
    config.rules.stake_threshold = 10_000_000_000;
    let (node, subtensor) = start(config).await;
    let hotkey = keypair(MINER_SEED);
    let err = subtensor
        .set_own_weights(&hotkey, 1, None)
        .await
        .expect_err("below the stake threshold");
    assert_eq!(
        err.rejection(),
        Some(&Rejection::PoolCustom { code: 1 }),
        "{err}"
    );
    let text = err.to_string();
    assert!(
        text.starts_with(
            "set_weights was rejected: StakeAmountTooLow (transaction pool: \
             InvalidTransaction::Custom(1), RPC error 1010)"
        ),
        "{text}"
    );
    assert!(included(&node).is_empty());

    // Spec 425 also checks the weights rate limit in the pool (RateLimitExceeded, 6);
    // spec 365 at dispatch (SettingWeightsTooFast). Both are named.
    node.state.modify(|rt| {
        rt.rules.stake_threshold = 0;
        rt.rules.weights_rate_limit = 1000;
        rt.neurons[1].last_update = u64::from(common::node::FIRST_HEAD);
    });
    let err = subtensor
        .set_weights(&hotkey, 1, &[1], &[65535], 0)
        .await
        .expect_err("too fast");
    assert_eq!(
        err.rejection(),
        Some(&Rejection::Dispatch {
            pallet: "SubtensorModule".into(),
            error: "SettingWeightsTooFast".into()
        }),
        "{err}"
    );
    node.state
        .modify(|rt| rt.rules.weights_rate_limit_in_pool = true);
    let err = subtensor
        .set_weights(&hotkey, 1, &[1], &[65535], 0)
        .await
        .expect_err("too fast");
    let rejection = err.rejection().expect("rejected");
    assert_eq!(rejection, &Rejection::PoolCustom { code: 6 });
    assert_eq!(rejection.name(), Some("RateLimitExceeded"));
    assert!(rejection.is_rate_limit());
}

// Defect 6: the stake the blacklist and priority read is bittensor 10's `metagraph.S`.

#[tokio::test]
async fn the_metagraph_stake_is_the_subnet_stake_weight() {
    // NeuronInfoLite reports the validator's own alpha (1000 α); the runtime's stake weight
    // (alpha inherited through child keys plus TaoWeight × root τ) is 4200 α.
    let mut neurons = neurons();
    neurons[0].stake_weight = Some(4_200_000_000_000);
    let (_node, subtensor) = start(NodeConfig::new(neurons)).await;
    let metagraph = subtensor.fetch_metagraph(1).await.expect("metagraph");
    let stake = |seed: u8| {
        metagraph
            .neuron(&keypair(seed).ss58())
            .expect("registered")
            .stake
    };
    assert_eq!(stake(1), 4200.0);
    assert_eq!(stake(MINER_SEED), 2.0);
}

// Defect 7: an IPv4-mapped external address is compared as the IPv4 address it is
// published as.

#[tokio::test]
async fn a_mapped_ipv4_address_already_served_is_not_served_again() {
    let (node, subtensor) = start(NodeConfig::new(served_miner("203.0.113.5:8091", 5))).await;
    let mapped = ServeAxon::new(1, "[::ffff:203.0.113.5]:8091".parse().expect("literal"));
    let outcome = subtensor
        .serve_axon(&keypair(MINER_SEED), &mapped)
        .await
        .expect("checked");
    assert_eq!(outcome, ServeOutcome::AlreadyServed);

    // Nor by the sync task, which compares the metagraph's address the same way.
    let (task, status) = spawn(subtensor, sync_options(Some(mapped), false));
    wait_until("two refreshes", || {
        node.state
            .runtime_api_calls
            .load(std::sync::atomic::Ordering::SeqCst)
            >= 2
    })
    .await;
    task.abort();
    assert!(status.snapshot().last_served.is_some());
    assert!(node.state.submitted().is_empty());
}
