//! The service on a chain: a loopback subtensor node (the chain crate's test node) with the
//! real finney metadata. Registration check at start-up, `serve_axon` before serving, and the
//! metagraph age on `/metrics`.

#[path = "../../chain/tests/common/mod.rs"]
mod common;

use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, TcpStream};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::node::LoopbackNode;
use common::{TestNeuron, encode_neurons, keypair, metadata};
use prompting_keys::Wallet;
use prompting_service::{CommonArgs, Service, ServiceError};
use prompting_testkit::Echo;
use tokio::sync::oneshot;

/// Validator uid 0 (seed 1) and our miner uid 1 (seed 2), its axon published at
/// 10.0.0.1:8091.
async fn node() -> LoopbackNode {
    let mut validator = TestNeuron::new(0, keypair(1).public_key().0);
    validator.stakes = vec![([5; 32], 2_000_000_000_000)];
    validator.validator_permit = true;
    let mut miner = TestNeuron::new(1, keypair(2).public_key().0);
    miner.ip = 0x0a00_0001;
    miner.ip_type = 4;
    miner.port = 8091;
    LoopbackNode::start(encode_neurons(&metadata(), &[validator, miner])).await
}

/// Chain settings for `node`, with the hotkey of `seed` written into a wallet under `dir`.
fn chain_args(node: &LoopbackNode, dir: &std::path::Path, seed: u8) -> CommonArgs {
    Wallet::new(dir, "default", "default")
        .write_hotkey(&keypair(seed))
        .expect("write hotkey");
    let mut args = CommonArgs::default();
    args.wallet.path = dir.to_path_buf();
    args.axon.ip = IpAddr::V4(Ipv4Addr::LOCALHOST);
    args.axon.port = 0;
    args.axon.shutdown_grace = 1.0;
    args.subtensor.chain_endpoint = Some(node.url.clone());
    args.subtensor.netuid = 1;
    args.subtensor.no_set_weights = true;
    args.subtensor.connect_timeout_secs = 10;
    args.subtensor.call_timeout_secs = 10;
    args
}

fn http_get(addr: std::net::SocketAddr, path: &str) -> String {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("read timeout");
    write!(stream, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").expect("send");
    let mut response = String::new();
    stream.read_to_string(&mut response).expect("read response");
    response
}

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
    // serve_axon is submitted (the chain had 10.0.0.1:8091, we serve 127.0.0.1:port),
    // then the server answers.
    let started = Instant::now();
    let metrics = loop {
        let metrics = tokio::task::spawn_blocking(move || {
            TcpStream::connect_timeout(&addr, Duration::from_millis(200))
                .ok()
                .map(|_| http_get(addr, "/metrics"))
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
    let node = node().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let mut args = chain_args(&node, dir.path(), 2);
    // Binding everywhere without --axon.external_ip is fine: nothing is published.
    args.axon.ip = IpAddr::V4(Ipv4Addr::UNSPECIFIED);
    args.no_start_axon = true;
    args.subtensor.no_set_weights = false;
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
