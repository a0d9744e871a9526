//! The service on a chain: a loopback subtensor node (the chain crate's test node) with the
//! real finney metadata and subtensor's rules. Registration check at start-up, loopback
//! addresses refused at start-up, `serve_axon` published in the background (a rate-limited
//! re-serve waits for the limit without stopping the miner), and the metagraph age on
//! `/metrics`.

#[path = "../../chain/tests/it/common/mod.rs"]
mod common;

#[path = "support/http.rs"]
mod http;

use std::net::{IpAddr, Ipv4Addr, TcpStream};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::node::{FIRST_HEAD, LoopbackNode, NodeConfig, Verdict};
use common::{TestNeuron, keypair};
use prompting_keys::Wallet;
use prompting_service::{CommonArgs, Service, ServiceError};
use prompting_testkit::Echo;
use tokio::sync::oneshot;

/// Validator uid 0 (seed 1) and our miner uid 1 (seed 2), its axon published at
/// 10.0.0.1:8091 `served_ago` blocks before the node's first head.
fn neurons(served_ago: u64) -> Vec<TestNeuron> {
    let mut validator = TestNeuron::new(0, keypair(1).public_key().0);
    validator.stakes = vec![([5; 32], 2_000_000_000_000)];
    validator.validator_permit = true;
    let miner = TestNeuron::new(1, keypair(2).public_key().0)
        .served("10.0.0.1:8091", u64::from(FIRST_HEAD) - served_ago);
    vec![validator, miner]
}

/// The node, the miner's axon served long ago.
async fn node() -> LoopbackNode {
    LoopbackNode::start(neurons(1000)).await
}

/// Chain settings for `node`, with the hotkey of `seed` written into a wallet under `dir`.
fn chain_args(node: &LoopbackNode, dir: &std::path::Path, seed: u8) -> CommonArgs {
    Wallet::new(dir, "default", "default")
        .write_hotkey(&keypair(seed))
        .expect("write hotkey");
    let mut args = CommonArgs::default();
    args.wallet.path = dir.to_path_buf();
    args.axon.ip = IpAddr::V4(Ipv4Addr::LOCALHOST);
    // Subtensor refuses 127.0.0.1; the address validators dial is a public one.
    args.axon.external_ip = Some(EXTERNAL_IP.parse().expect("literal"));
    args.axon.port = 0;
    args.axon.shutdown_grace = 1.0;
    args.subtensor.chain_endpoint = Some(node.url.clone());
    args.subtensor.netuid = 1;
    // The node makes a block every 20 ms.
    args.subtensor.block_time_secs = 0.02;
    args.subtensor.connect_timeout_secs = 10;
    args.subtensor.call_timeout_secs = 10;
    args
}

/// The external address the tests publish (TEST-NET-3).
const EXTERNAL_IP: &str = "203.0.113.9";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unregistered_hotkey_stops_with_the_registration_message() {
    let node = node().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let args = chain_args(&node, dir.path(), 9);
    let err = Service::prepare(args).await.expect_err("not registered");
    assert!(matches!(err, ServiceError::NotRegistered(_)), "{err:?}");
    assert_eq!(
        err.to_string(),
        format!(
            "Your hotkey {} is not registered on netuid 1. Please register the hotkey using \
             `btcli subnets register` before trying again",
            keypair(9).ss58_address()
        )
    );
    assert!(node.state.submitted().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_registered_miner_publishes_its_axon_and_reports_the_metagraph_age() {
    let node = node().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let args = chain_args(&node, dir.path(), 2);
    let service = Service::prepare(args).await.expect("prepare");
    let addr = service.local_addr().expect("an axon");
    assert!(
        node.state.submitted().is_empty(),
        "nothing is written before run"
    );

    let (stop, stopped) = oneshot::channel::<()>();
    let server = tokio::spawn(service.run_until(Arc::new(Echo), async {
        let _ = stopped.await;
    }));
    // The server answers; serve_axon is submitted in the background (the chain had
    // 10.0.0.1:8091, we serve 203.0.113.9:port).
    let started = Instant::now();
    let metrics = loop {
        let metrics = tokio::task::spawn_blocking(move || {
            TcpStream::connect_timeout(&addr, Duration::from_millis(200))
                .ok()
                .map(|_| http::get(addr, "/metrics"))
        })
        .await
        .expect("client task");
        if let Some(metrics) = metrics
            && metrics.contains("prompting_metagraph_age_seconds ")
        {
            break metrics;
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "no metagraph age on /metrics"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let started = Instant::now();
    while node.state.best_state().neurons[1].port != addr.port() {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "the axon was not published: {:?}",
            node.state.submissions()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(node.state.submitted().len(), 1, "one serve_axon extrinsic");
    let age: f64 = metrics
        .lines()
        .find_map(|line| line.strip_prefix("prompting_metagraph_age_seconds "))
        .and_then(|value| value.trim().parse().ok())
        .expect("an age value");
    assert!((0.0..30.0).contains(&age), "{age}");

    stop.send(()).expect("server still running");
    tokio::time::timeout(Duration::from_secs(10), server)
        .await
        .expect("stops after the shutdown signal")
        .expect("server task")
        .expect("clean shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_start_axon_runs_the_chain_duties_without_binding_or_publishing() {
    let config = NodeConfig::weights_open(neurons(1000));
    let node = LoopbackNode::start_with(config).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let mut args = chain_args(&node, dir.path(), 2);
    // Binding everywhere without --axon.external_ip is fine: nothing is published.
    args.axon.ip = IpAddr::V4(Ipv4Addr::UNSPECIFIED);
    args.no_start_axon = true;
    args.subtensor.set_weights = true;
    let service = Service::prepare(args).await.expect("prepare");
    assert!(!service.starts_axon());
    assert_eq!(service.local_addr(), None);

    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(service.run_without_axon_until(async {
        let _ = stopped.await;
    }));
    // The sync task refreshes the metagraph and sets weights: one extrinsic, no serve_axon.
    let started = Instant::now();
    while node.state.submitted().is_empty() {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "no weights were set"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    stop.send(()).expect("still running");
    tokio::time::timeout(Duration::from_secs(10), task)
        .await
        .expect("stops after the shutdown signal")
        .expect("task")
        .expect("clean shutdown");
    assert_eq!(
        node.state.submitted().len(),
        1,
        "set_weights only, no serve_axon"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_loopback_external_address_is_refused_at_start_up() {
    let node = node().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let mut args = chain_args(&node, dir.path(), 2);
    args.axon.external_ip = None;
    let err = Service::prepare(args.clone())
        .await
        .expect_err("127.0.0.1 cannot be published");
    assert!(matches!(err, ServiceError::Config(_)), "{err:?}");
    let text = err.to_string();
    assert!(
        text.contains("cannot publish the axon at 127.0.0.1 on chain")
            && text.contains("InvalidIpAddress")
            && text.contains("--axon.external_ip")
            && !text.contains('\n'),
        "{text}"
    );
    args.axon.external_ip = Some("::1".parse().expect("literal"));
    assert!(Service::prepare(args.clone()).await.is_err());
    // Without publishing, a loopback axon is fine.
    args.subtensor.no_serve = true;
    Service::prepare(args).await.expect("--miner.no_serve");
    assert!(node.state.submitted().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rate_limited_serve_does_not_stop_the_miner_and_is_retried() {
    // Served 5 blocks ago at another address: ServingRateLimit (50 blocks, the runtime's
    // default) refuses a new serve_axon until 45 blocks from the first head.
    let node = LoopbackNode::start_with(NodeConfig::new(neurons(5))).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let args = chain_args(&node, dir.path(), 2);
    let service = Service::prepare(args).await.expect("prepare");
    let addr = service.local_addr().expect("an axon");
    let (stop, stopped) = oneshot::channel::<()>();
    let server = tokio::spawn(service.run_until(Arc::new(Echo), async {
        let _ = stopped.await;
    }));

    // The miner serves meanwhile.
    let health = tokio::task::spawn_blocking(move || {
        let started = Instant::now();
        loop {
            if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
                return http::get(addr, "/healthz");
            }
            assert!(started.elapsed() < Duration::from_secs(30), "no server");
            std::thread::sleep(Duration::from_millis(50));
        }
    })
    .await
    .expect("client task");
    assert!(
        health.starts_with("HTTP/1.1 200") || health.starts_with("HTTP/1.0 200"),
        "{health}"
    );
    assert!(!server.is_finished(), "the miner keeps running");

    // The serve is sent once the limit allows it, and dispatches.
    let allowed_at = FIRST_HEAD + 45;
    let started = Instant::now();
    let included_at = loop {
        let included = node
            .state
            .submissions()
            .into_iter()
            .find_map(|s| match s.verdict {
                Verdict::Included { number, failure } => Some((number, failure)),
                _ => None,
            });
        if let Some(included) = included {
            break included;
        }
        assert!(started.elapsed() < Duration::from_secs(30), "never served");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(included_at.1, None);
    assert!(
        included_at.0 >= allowed_at,
        "served at {} < {allowed_at}",
        included_at.0
    );
    assert!(
        node.state
            .submissions()
            .iter()
            .all(|s| !matches!(s.verdict, Verdict::PoolRejected { .. })),
        "nothing was sent into the rate limit: {:?}",
        node.state.submissions()
    );
    let miner = node.state.best_state().neurons[1].clone();
    assert_eq!(miner.port, addr.port());

    stop.send(()).expect("server still running");
    tokio::time::timeout(Duration::from_secs(10), server)
        .await
        .expect("stops after the shutdown signal")
        .expect("server task")
        .expect("clean shutdown");
}
