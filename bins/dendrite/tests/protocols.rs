//! The `dendrite` binary against a real axon (echo backend) over each protocol it speaks:
//! legacy synapses, btauth/1 and gRPC, with and without streaming.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Command, Output};
use std::sync::Arc;

use prompting_keys::Keypair;
use prompting_miner::{DevMetagraph, MinerConfig, Pipeline};
use prompting_testkit::Echo;
use prompting_transport::axon::{self, AxonArgs, AxonState};

/// Starts an axon on its own runtime thread; returns its address and hotkey.
fn start_axon() -> (SocketAddr, String) {
    let keypair = Keypair::from_mini_secret(&[7; 32]);
    let hotkey = keypair.ss58_address();
    let (ready, address) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("runtime");
        runtime.block_on(async move {
            let pipeline = Pipeline::new(
                MinerConfig::default(),
                Arc::new(DevMetagraph::new()),
                Arc::new(Echo),
            )
            .expect("pipeline");
            let args = AxonArgs {
                ip: [127, 0, 0, 1].into(),
                port: 0,
                ..AxonArgs::default()
            };
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
                .await
                .expect("bind");
            let addr = listener.local_addr().expect("addr");
            let state = AxonState::new(Arc::new(keypair), pipeline, &args).expect("axon");
            let router = axon::router(Arc::new(state));
            ready.send(addr).expect("report address");
            let _ = axon::run(
                listener,
                router,
                args.server_limits(),
                std::future::pending(),
            )
            .await;
        });
    });
    let addr = address.recv().expect("axon started");
    (addr, hotkey)
}

fn wallets() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/wallets")
}

fn dendrite(addr: SocketAddr, hotkey: &str, extra: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_dendrite"))
        .env_remove("BT_WALLET_NAME")
        .env_remove("BT_WALLET_HOTKEY")
        .env_remove("BT_WALLET_PATH")
        .arg("--wallet.path")
        .arg(wallets())
        .args(["--wallet.name", "validator", "--axon.hotkey", hotkey])
        .args([
            "--axon",
            &addr.to_string(),
            "--timeout",
            "10",
            "--system",
            "be brief",
        ])
        .args(extra)
        .output()
        .expect("run the dendrite binary")
}

#[test]
fn every_protocol_gets_the_completion() {
    let (addr, hotkey) = start_axon();
    for protocol in ["legacy", "btauth", "grpc", "openai"] {
        let out = dendrite(addr, &hotkey, &["--protocol", protocol, "hello"]);
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{protocol}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(stdout.trim_end(), "echo: be brief | hello", "{protocol}");
    }
    for protocol in ["legacy", "grpc", "openai"] {
        let out = dendrite(
            addr,
            &hotkey,
            &["--protocol", protocol, "--stream", "streamed"],
        );
        assert!(
            out.status.success(),
            "{protocol} --stream: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(
            String::from_utf8_lossy(&out.stdout).trim_end(),
            "echo: be brief | streamed"
        );
    }
}

#[test]
fn a_wrong_receiver_is_refused_on_every_protocol() {
    let (addr, _) = start_axon();
    let other = Keypair::from_mini_secret(&[8; 32]).ss58_address();
    for (protocol, status) in [
        ("legacy", "401"),
        ("btauth", "401"),
        ("grpc", "401"),
        ("openai", "401"),
    ] {
        let out = dendrite(addr, &other, &["--protocol", protocol, "hello"]);
        assert_eq!(out.status.code(), Some(1), "{protocol}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stderr.starts_with(&format!("dendrite: error: {status}")),
            "{protocol}: {stderr}"
        );
    }
}
