//! The per-epoch status line (the Python miners' `Step:.. | Block:.. | Stake:.. | ...`) and the
//! same figures on `/metrics`, with the weights-set counter, against the loopback subtensor
//! node (the chain crate's test node), and the start-up warning of a clock far from the
//! chain's. Its own test binary: the log is captured through a global subscriber, which the
//! chain duties' task (on any worker thread) writes to.

#[path = "../../chain/tests/it/common/mod.rs"]
mod common;

#[path = "support/http.rs"]
mod http;

use std::io::Write;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use common::node::{LoopbackNode, NodeConfig};
use common::{TestNeuron, keypair};
use prompting_keys::Wallet;
use prompting_service::{CommonArgs, Service};
use prompting_testkit::Echo;
use tokio::sync::oneshot;

/// Everything logged, for the test to read.
static LOG: Mutex<Vec<u8>> = Mutex::new(Vec::new());

struct Capture;

impl Write for Capture {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        LOG.lock()
            .unwrap_or_else(PoisonError::into_inner)
            .extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn logged() -> String {
    String::from_utf8_lossy(&LOG.lock().unwrap_or_else(PoisonError::into_inner)).into_owned()
}

/// The lines logged so far that contain `text`.
fn lines_with(text: &str) -> Vec<String> {
    logged()
        .lines()
        .filter(|line| line.contains(text))
        .map(str::to_string)
        .collect()
}

/// The epoch lines logged so far.
fn epoch_lines() -> Vec<String> {
    lines_with("Step:")
}

async fn metrics(addr: SocketAddr) -> String {
    tokio::task::spawn_blocking(move || http::get(addr, "/metrics"))
        .await
        .expect("client task")
}

/// The value of the sample `name` (with its labels) on a `/metrics` page.
fn sample(page: &str, name: &str) -> Option<f64> {
    page.lines()
        .find_map(|line| line.strip_prefix(name)?.strip_prefix(' '))
        .and_then(|value| value.trim().parse().ok())
}

/// Polls `/metrics` until `ready` accepts it (30 s at most).
async fn metrics_until(addr: SocketAddr, what: &str, ready: impl Fn(&str) -> bool) -> String {
    let started = Instant::now();
    loop {
        let page = metrics(addr).await;
        if ready(&page) {
            return page;
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "{what} never showed on /metrics:\n{page}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

const WEIGHTS_SET: &str = "prompting_weights_set_total{extrinsic=\"set_weights\"}";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_epoch_logs_the_miners_figures_and_metrics_show_them() {
    tracing_subscriber::fmt()
        .with_max_level(tracing::Level::INFO)
        .with_ansi(false)
        .with_writer(|| Capture)
        .init();

    // Validator uid 0 with figures of its own, our miner uid 1 (seed 2) with known ones.
    let mut validator = TestNeuron::new(0, keypair(1).public_key().0);
    validator.stakes = vec![([5; 32], 2_000_000_000_000)];
    validator.validator_permit = true;
    (validator.rank, validator.trust, validator.incentive) = (100, 200, 300);
    validator.emission = 9_000_000_000;
    let mut miner = TestNeuron::new(1, keypair(2).public_key().0);
    miner.stakes = vec![([6; 32], 3_000_000_000)];
    (miner.rank, miner.trust, miner.consensus, miner.incentive) = (65535, 16384, 32768, 13107);
    miner.emission = 2_500_000_000;
    // Weights are only set where commit-reveal is off; 20 blocks (0.4 s) between two.
    let mut config = NodeConfig::weights_open(vec![validator, miner]);
    config.rules.weights_rate_limit = 20;
    // The blocks' author runs two minutes behind this host: the miner warns at start.
    config.clock_offset_ms = -120_000;
    let node = LoopbackNode::start_with(config).await;

    let dir = tempfile::tempdir().expect("tempdir");
    Wallet::new(dir.path(), "default", "default")
        .write_hotkey(&keypair(2))
        .expect("write hotkey");
    let mut args = CommonArgs::default();
    args.wallet.path = dir.path().to_path_buf();
    args.axon.ip = IpAddr::V4(Ipv4Addr::LOCALHOST);
    args.axon.port = 0;
    args.axon.shutdown_grace = 1.0;
    args.subtensor.chain_endpoint = Some(node.url.clone());
    args.subtensor.netuid = 1;
    args.subtensor.no_serve = true;
    args.subtensor.set_weights = true;
    // A block every 20 ms; an epoch of 5 blocks (0.1 s).
    args.subtensor.block_time_secs = 0.02;
    args.subtensor.blocks_per_epoch = 5;
    args.subtensor.connect_timeout_secs = 10;
    args.subtensor.call_timeout_secs = 10;
    let service = Service::prepare(args).await.expect("prepare");
    let addr = service.local_addr().expect("an axon");
    let (stop, stopped) = oneshot::channel::<()>();
    let server = tokio::spawn(service.run_until(Arc::new(Echo), async {
        let _ = stopped.await;
    }));

    // The gauges read the miner's neuron (uid 1), not the validator's.
    let page = metrics_until(addr, "the weights set", |page| {
        sample(page, WEIGHTS_SET).is_some_and(|n| n >= 1.0)
    })
    .await;
    assert_eq!(sample(&page, "prompting_neuron_uid"), Some(1.0), "{page}");
    assert_eq!(sample(&page, "prompting_neuron_stake"), Some(3.0));
    assert_eq!(sample(&page, "prompting_neuron_rank"), Some(1.0));
    assert_eq!(
        sample(&page, "prompting_neuron_trust"),
        Some(16384.0 / 65535.0)
    );
    assert_eq!(
        sample(&page, "prompting_neuron_consensus"),
        Some(32768.0 / 65535.0)
    );
    assert_eq!(sample(&page, "prompting_neuron_incentive"), Some(0.2));
    assert_eq!(sample(&page, "prompting_neuron_emission"), Some(2.5));
    let block = sample(&page, "prompting_metagraph_block").expect("metagraph block");
    assert!(block >= f64::from(common::node::FIRST_HEAD), "{block}");

    // The clock's warning at the first refresh, and its skew on /metrics.
    let clock = clock_warnings();
    assert_eq!(clock.len(), 1, "{clock:?}");
    let seconds: f64 = clock[0]
        .split("this host's clock reads ")
        .nth(1)
        .and_then(|rest| rest.split(" s later than the chain's best block").next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("the skew in: {}", clock[0]));
    assert!(clock[0].contains(" WARN "), "{}", clock[0]);
    // The best block was built a moment before it was read.
    assert!((120.0..130.0).contains(&seconds), "{}", clock[0]);
    let skew = sample(&page, "prompting_clock_skew_seconds").expect("clock skew");
    assert!((120.0..130.0).contains(&skew), "{skew}");

    // The first epoch's line, Step 0, with the same figures.
    let lines = epoch_lines();
    let first = lines.first().expect("an epoch line");
    assert!(
        first.contains(" INFO ")
            && first.contains(&format!(
                "Step:0 | Block:{} | Stake:3.0 | Rank:1.0 | Trust:{:?} | Consensus:{:?} | \
                 Incentive:0.2 | Emission:2.5",
                first_block(first),
                16384.0 / 65535.0,
                32768.0 / 65535.0
            )),
        "{first}"
    );

    // The chain changes: the next epochs read the new figures, the step counts up, and the
    // weights are set again once the rate limit allows.
    node.state.modify(|rt| {
        let ours = &mut rt.neurons[1];
        (ours.rank, ours.incentive, ours.emission) = (0, 65535, 7_000_000_000);
        ours.stakes = vec![([6; 32], 4_500_000_000)];
    });
    let page = metrics_until(addr, "the new figures and a second weights", |page| {
        sample(page, "prompting_neuron_emission") == Some(7.0)
            && sample(page, WEIGHTS_SET).is_some_and(|n| n >= 2.0)
    })
    .await;
    assert_eq!(sample(&page, "prompting_neuron_rank"), Some(0.0));
    assert_eq!(sample(&page, "prompting_neuron_incentive"), Some(1.0));
    assert_eq!(sample(&page, "prompting_neuron_stake"), Some(4.5));
    let lines = epoch_lines();
    let changed = lines
        .iter()
        .find(|line| line.contains("Emission:7.0"))
        .expect("an epoch line with the new figures");
    assert!(
        changed.contains("| Stake:4.5 | Rank:0.0 |") && changed.contains("| Incentive:1.0 |"),
        "{changed}"
    );
    // One line per epoch, steps 0, 1, 2, ... in order, blocks never going back.
    let steps: Vec<u64> = lines.iter().map(|line| field(line, "Step:")).collect();
    assert_eq!(
        steps,
        (0..steps.len() as u64).collect::<Vec<_>>(),
        "{lines:#?}"
    );
    assert!(steps.len() >= 2);
    // The clock stayed as far off through every epoch: still the one warning.
    assert_eq!(clock_warnings().len(), 1, "{:?}", clock_warnings());
    // The author's clock set right: the next refreshes say so once, and /metrics follows.
    node.state
        .clock_offset_ms
        .store(0, std::sync::atomic::Ordering::Relaxed);
    let page = metrics_until(addr, "a clock skew near zero", |page| {
        sample(page, "prompting_clock_skew_seconds").is_some_and(|s| s.abs() < 10.0)
    })
    .await;
    assert!(sample(&page, "prompting_clock_skew_seconds").is_some());
    let agreed = lines_with("this host's clock agrees with the chain's again");
    assert_eq!(agreed.len(), 1, "{}", logged());
    assert_eq!(clock_warnings().len(), 1);
    let blocks: Vec<u64> = lines.iter().map(|line| first_block(line)).collect();
    assert!(blocks.windows(2).all(|w| w[0] <= w[1]), "{blocks:?}");
    // Each weights-set extrinsic sent is counted once it is in a block, no more: the count
    // lies between the extrinsics sent before the scrape (less the one possibly in flight)
    // and those sent after it.
    let sent_before = node.state.submitted().len() as f64;
    let counted = sample(&metrics(addr).await, WEIGHTS_SET).expect("counter");
    let sent_after = node.state.submitted().len() as f64;
    assert!(
        sent_before - 1.0 <= counted && counted <= sent_after,
        "{counted} counted, {sent_before}..{sent_after} sent"
    );

    stop.send(()).expect("server still running");
    tokio::time::timeout(Duration::from_secs(10), server)
        .await
        .expect("stops after the shutdown signal")
        .expect("server task")
        .expect("clean shutdown");
}

/// The clock's warnings logged so far.
fn clock_warnings() -> Vec<String> {
    lines_with("this host's clock reads ")
}

/// The number after `label` in an epoch line.
fn field(line: &str, label: &str) -> u64 {
    line.split(label)
        .nth(1)
        .and_then(|rest| rest.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no {label} in {line}"))
}

fn first_block(line: &str) -> u64 {
    field(line, "Block:")
}
