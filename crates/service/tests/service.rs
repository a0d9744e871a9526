//! `Service`: the dev hotkey, the wallet and bind errors, the metagraph file, a served
//! request cycle on loopback, and no connection accepted before the backend is loaded.

#[path = "support/http.rs"]
mod http;

use std::net::{IpAddr, Ipv4Addr, TcpStream};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use prompting_keys::Wallet;
use prompting_service::{CommonArgs, Service, ServiceError};
use prompting_testkit::Echo;
use tokio::sync::oneshot;

fn dev_args(wallet_path: &Path) -> CommonArgs {
    let mut args = CommonArgs {
        dev: true,
        ..CommonArgs::default()
    };
    args.wallet.path = wallet_path.to_path_buf();
    args.wallet.name = "devwallet".into();
    args.wallet.hotkey = "devhotkey".into();
    args.axon.port = 0;
    args.axon.shutdown_grace = 1.0;
    args
}

/// `GET path` over HTTP/1.0 with a bounded wait; the whole response.
#[tokio::test]
async fn dev_mode_creates_a_hotkey_binds_loopback_and_serves() {
    let dir = tempfile::tempdir().expect("tempdir");
    let args = dev_args(dir.path());
    let wallet = Wallet::new(dir.path(), "devwallet", "devhotkey");
    assert!(!wallet.hotkey_path().exists());

    let service = Service::prepare(args.clone()).await.expect("prepare");
    assert!(wallet.hotkey_path().is_file(), "the dev hotkey is created");
    let hotkey = service.hotkey().ss58_address();
    assert_eq!(
        wallet.load_hotkey_public().expect("pub file").to_string(),
        hotkey
    );
    let addr = service.local_addr().expect("an axon");
    assert_eq!(addr.ip(), IpAddr::V4(Ipv4Addr::LOCALHOST));
    assert_ne!(addr.port(), 0);

    let (stop, stopped) = oneshot::channel::<()>();
    let server = tokio::spawn(service.run_until(Arc::new(Echo), async {
        let _ = stopped.await;
    }));
    let health = tokio::task::spawn_blocking(move || http::get(addr, "/healthz"))
        .await
        .expect("client task");
    assert!(
        health.starts_with("HTTP/1.0 200") || health.starts_with("HTTP/1.1 200"),
        "{health}"
    );
    assert!(health.contains(&hotkey), "{health}");
    assert!(health.contains("\"miner\":\"echo\""), "{health}");
    stop.send(()).expect("server still running");
    tokio::time::timeout(Duration::from_secs(10), server)
        .await
        .expect("stops after the shutdown signal")
        .expect("server task")
        .expect("clean shutdown");

    // A second start reuses the same hotkey.
    let again = Service::prepare(args).await.expect("prepare again");
    assert_eq!(again.hotkey().ss58_address(), hotkey);
}

/// A miner binary loads its backend between `prepare` and `run` (the BTLM model: up to
/// minutes). Meanwhile the port is taken but refuses connections, rather than letting them
/// wait in the kernel's backlog for the load; from `run` on it serves.
#[tokio::test]
async fn the_port_refuses_connections_until_the_loaded_backend_is_served() {
    let dir = tempfile::tempdir().expect("tempdir");
    let service = Service::prepare(dev_args(dir.path()))
        .await
        .expect("prepare");
    let addr = service.local_addr().expect("an axon");
    let (loaded, load) = oneshot::channel::<Arc<Echo>>();
    let (stop, stopped) = oneshot::channel::<()>();
    // As the binaries do: load the backend (here: until the test releases it), then run.
    let server = tokio::spawn(async move {
        let backend = load.await.expect("the test releases the load");
        service
            .run_until(backend, async {
                let _ = stopped.await;
            })
            .await
    });
    let early = tokio::task::spawn_blocking(move || {
        TcpStream::connect_timeout(&addr, Duration::from_secs(5))
    })
    .await
    .expect("client task");
    match early {
        Err(e) => assert_eq!(e.kind(), std::io::ErrorKind::ConnectionRefused, "{e}"),
        Ok(_) => panic!("a connection was accepted before the backend was loaded"),
    }
    assert!(loaded.send(Arc::new(Echo)).is_ok(), "the server task waits");
    let health = tokio::task::spawn_blocking(move || http::get(addr, "/healthz"))
        .await
        .expect("client task");
    assert!(health.contains("\"miner\":\"echo\""), "{health}");
    stop.send(()).expect("server still running");
    tokio::time::timeout(Duration::from_secs(10), server)
        .await
        .expect("stops after the shutdown signal")
        .expect("server task")
        .expect("clean shutdown");
}

#[tokio::test]
async fn a_missing_hotkey_is_one_error_naming_its_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut args = dev_args(dir.path());
    args.dev = false;
    args.metagraph_file = Some(dir.path().join("metagraph.toml"));
    let err = Service::prepare(args).await.expect_err("no hotkey");
    assert!(matches!(err, ServiceError::MissingHotkey { .. }), "{err:?}");
    let message = err.to_string();
    let path = Wallet::new(dir.path(), "devwallet", "devhotkey").hotkey_path();
    assert!(message.contains(&path.display().to_string()), "{message}");
    assert!(message.contains("--dev"), "{message}");
    assert!(!message.contains('\n'), "{message}");
    assert!(
        std::error::Error::source(&err).is_none(),
        "the message says it all"
    );
}

#[tokio::test]
async fn a_corrupt_hotkey_is_an_error_naming_its_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    let wallet = Wallet::new(dir.path(), "devwallet", "devhotkey");
    std::fs::create_dir_all(wallet.hotkeys_dir()).expect("mkdir");
    std::fs::write(wallet.hotkey_path(), "not json").expect("write");
    let mut args = dev_args(dir.path());
    args.dev = false;
    args.metagraph_file = Some(dir.path().join("metagraph.toml"));
    let err = Service::prepare(args).await.expect_err("corrupt hotkey");
    assert!(matches!(err, ServiceError::Wallet(_)), "{err:?}");
    assert!(
        err.to_string()
            .contains(&wallet.hotkey_path().display().to_string()),
        "{err}"
    );
}

#[tokio::test]
async fn a_port_in_use_is_one_error_naming_the_address() {
    let dir = tempfile::tempdir().expect("tempdir");
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = taken.local_addr().expect("addr").port();
    let mut args = dev_args(dir.path());
    args.axon.port = port;
    let err = Service::prepare(args).await.expect_err("port in use");
    match &err {
        ServiceError::Bind { error, .. } => {
            assert_eq!(error.kind(), std::io::ErrorKind::AddrInUse)
        }
        other => panic!("expected a bind error, got {other:?}"),
    }
    let message = err.to_string();
    assert!(
        message.starts_with(&format!("cannot listen on 127.0.0.1:{port}: ")),
        "{message}"
    );
}

#[tokio::test]
async fn a_metagraph_file_replaces_the_chain() {
    let dir = tempfile::tempdir().expect("tempdir");
    let wallet = Wallet::new(dir.path(), "devwallet", "devhotkey");
    let hotkey = wallet
        .create_hotkey_if_missing()
        .expect("hotkey")
        .into_keypair()
        .ss58_address();
    let file = dir.path().join("metagraph.toml");
    std::fs::write(
        &file,
        format!("netuid = 3\n[[neurons]]\nuid = 0\nhotkey = \"{hotkey}\"\n"),
    )
    .expect("write metagraph");
    let mut args = dev_args(dir.path());
    args.dev = false;
    args.axon.ip = IpAddr::V4(Ipv4Addr::LOCALHOST);
    args.metagraph_file = Some(file.clone());
    let service = Service::prepare(args.clone()).await.expect("prepare");
    assert_eq!(service.hotkey().ss58_address(), hotkey);

    args.metagraph_file = Some(dir.path().join("absent.toml"));
    let err = Service::prepare(args).await.expect_err("no metagraph file");
    assert!(matches!(err, ServiceError::Metagraph(_)), "{err:?}");
    assert!(err.to_string().contains("absent.toml"), "{err}");
}

#[tokio::test]
async fn publishing_on_chain_needs_an_external_ip_when_binding_everywhere() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut args = dev_args(dir.path());
    args.dev = false;
    // The wallet is checked first: its error is the real one.
    let err = Service::prepare(args.clone()).await.expect_err("no hotkey");
    assert!(matches!(err, ServiceError::MissingHotkey { .. }), "{err:?}");
    assert!(!err.is_usage());

    Wallet::new(dir.path(), "devwallet", "devhotkey")
        .create_hotkey_if_missing()
        .expect("hotkey");
    let err = Service::prepare(args.clone())
        .await
        .expect_err("no external ip");
    assert!(matches!(err, ServiceError::Config(_)), "{err:?}");
    assert!(err.is_usage());
    assert!(err.to_string().contains("--axon.external_ip"), "{err}");

    args.axon.max_connections = 0;
    args.subtensor.no_serve = true;
    let err = Service::prepare(args).await.expect_err("bad axon flag");
    assert!(err.to_string().contains("--axon.max_connections"), "{err}");
}

#[tokio::test]
async fn the_mock_subtensor_trusts_everyone_with_an_existing_hotkey() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut args = dev_args(dir.path());
    args.dev = false;
    args.mock_subtensor = true;
    // Unlike --dev, the hotkey is not created, and no external ip is needed.
    let err = Service::prepare(args.clone()).await.expect_err("no hotkey");
    assert!(matches!(err, ServiceError::MissingHotkey { .. }), "{err:?}");
    let hotkey = Wallet::new(dir.path(), "devwallet", "devhotkey")
        .create_hotkey_if_missing()
        .expect("hotkey")
        .keypair()
        .ss58_address();
    args.axon.ip = IpAddr::V4(Ipv4Addr::LOCALHOST);
    let service = Service::prepare(args).await.expect("prepare");
    assert_eq!(service.hotkey().ss58_address(), hotkey);
    let addr = service.local_addr().expect("an axon");
    let (stop, stopped) = oneshot::channel::<()>();
    let server = tokio::spawn(service.run_until(Arc::new(Echo), async {
        let _ = stopped.await;
    }));
    let health = tokio::task::spawn_blocking(move || http::get(addr, "/healthz"))
        .await
        .expect("client task");
    assert!(
        health.starts_with("HTTP/1.0 200") || health.starts_with("HTTP/1.1 200"),
        "{health}"
    );
    stop.send(()).expect("server still running");
    tokio::time::timeout(Duration::from_secs(10), server)
        .await
        .expect("stops")
        .expect("server task")
        .expect("clean shutdown");

    // bittensor's --subtensor._mock is the same switch.
    let args = CommonArgs {
        dev: false,
        subtensor_mock: true,
        ..dev_args(dir.path())
    };
    assert!(args.mock() && !args.uses_chain());
}

#[tokio::test]
async fn no_start_axon_needs_a_chain() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut args = dev_args(dir.path());
    args.no_start_axon = true;
    let err = Service::prepare(args).await.expect_err("nothing to do");
    assert!(err.is_usage(), "{err:?}");
    assert!(err.to_string().contains("--miner.no_start_axon"), "{err}");
}

#[tokio::test]
async fn an_unreachable_chain_is_one_error_naming_the_endpoint() {
    let dir = tempfile::tempdir().expect("tempdir");
    Wallet::new(dir.path(), "devwallet", "devhotkey")
        .create_hotkey_if_missing()
        .expect("hotkey");
    // A port nothing listens on.
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port();
    let endpoint = format!("ws://127.0.0.1:{closed}");
    let mut args = dev_args(dir.path());
    args.dev = false;
    args.axon.ip = IpAddr::V4(Ipv4Addr::LOCALHOST);
    // 127.0.0.1 cannot be published on chain (refused at start-up); this test is about the
    // connection.
    args.subtensor.no_serve = true;
    args.subtensor.chain_endpoint = Some(endpoint.clone());
    args.subtensor.connect_timeout_secs = 5;
    let err = tokio::time::timeout(Duration::from_secs(30), Service::prepare(args))
        .await
        .expect("bounded by the connect timeout")
        .expect_err("no chain");
    assert!(matches!(err, ServiceError::Chain { .. }), "{err:?}");
    let message = err.to_string();
    assert!(message.starts_with("subtensor: connecting: "), "{message}");
    assert!(message.contains(&endpoint), "{message}");
}
