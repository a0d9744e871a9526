//! The built `openai-miner` binary end to end: `--dev` in front of a local chat-completions
//! server, queried by a real Python bittensor 10.5 Dendrite (needs the venv made by
//! `scripts/setup-python.sh`; fails, does not skip, without it); and its start-up errors.

mod support;
#[path = "support/upstream.rs"]
mod upstream;

use std::time::Duration;

use axum::Json;
use axum::extract::State;
use axum::routing::post;
use serde_json::{Value, json};
use support::{
    MinerProcess, PYTHON_V216_WARNINGS, assert_warned, free_port, hotkey_under, python_dendrite,
    python_v216_flags, run_to_exit, warnings_only,
};
use upstream::{Requests, Upstream};

const BIN: &str = env!("CARGO_BIN_EXE_openai-miner");
const ANSWER: &str = "Paris — la capitale 🇫🇷";

async fn chat_completions(
    State(requests): State<Requests>,
    Json(body): Json<Value>,
) -> Json<Value> {
    requests
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
        .push(body);
    Json(json!({
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "created": 1_700_000_000,
        "model": "test-model",
        "choices": [{
            "index": 0,
            "message": {"role": "assistant", "content": ANSWER},
            "finish_reason": "stop"
        }],
        "usage": {"prompt_tokens": 5, "completion_tokens": 2, "total_tokens": 7}
    }))
}

fn strings(args: &[&str]) -> Vec<String> {
    args.iter().map(|s| s.to_string()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dev_miner_answers_a_python_dendrite_through_the_upstream() {
    let upstream = Upstream::start(post(chat_completions)).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let wallets = dir.path().join("wallets");
    let port = free_port();
    let args = strings(&[
        "--dev",
        "--wallet.path",
        &wallets.display().to_string(),
        "--axon.port",
        &port.to_string(),
        "--openai.base_url",
        &upstream.base_url,
        "--openai.model_name",
        "test-model",
    ]);
    let mut miner = MinerProcess::spawn(BIN, &args, port, &dir.path().join("miner.log"));
    miner.wait_ready(Duration::from_secs(60)).await;
    let hotkey = hotkey_under(&wallets);
    assert!(
        miner.log().contains(&format!(
            "serving on 127.0.0.1:{port} as hotkey {hotkey} (miner: test-model)"
        )),
        "{}",
        miner.log()
    );

    let roles: &[&str] = &["system", "user"];
    let messages: &[&str] = &["You are terse.", "What is the capital of France?"];
    let seen = python_dendrite(port, &hotkey, &[(roles, messages)], 12.0).await;
    let answer = &seen[0];
    assert_eq!(
        answer["dendrite_status_code"],
        200,
        "{answer}\n{}",
        miner.log()
    );
    assert_eq!(answer["completion"], ANSWER, "{answer}");
    assert_eq!(answer["axon_hotkey"], hotkey.as_str(), "{answer}");

    let requests = upstream.requests();
    assert_eq!(requests.len(), 1, "{requests:?}");
    assert_eq!(requests[0]["model"], "test-model");
    assert_eq!(
        requests[0]["messages"],
        json!([
            {"role": "system", "content": "You are terse."},
            {"role": "user", "content": "What is the capital of France?"}
        ])
    );

    let status = miner.terminate(Duration::from_secs(30));
    assert!(status.success(), "{status}\n{}", miner.log());
    assert!(miner.log().contains("SIGTERM received"), "{}", miner.log());
}

#[test]
fn a_port_in_use_is_one_line_and_a_failure_exit() {
    let dir = tempfile::tempdir().expect("tempdir");
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = taken.local_addr().expect("addr").port();
    let args = strings(&[
        "--dev",
        "--wallet.path",
        &dir.path().display().to_string(),
        "--axon.port",
        &port.to_string(),
        "--openai.base_url",
        "http://127.0.0.1:9/v1",
    ]);
    let (status, stderr) = run_to_exit(BIN, &args, Duration::from_secs(30));
    assert!(!status.success(), "{stderr}");
    let errors: Vec<&str> = stderr
        .lines()
        .filter(|line| line.starts_with("openai-miner: error:"))
        .collect();
    assert_eq!(errors.len(), 1, "{stderr}");
    let prefix = format!("openai-miner: error: cannot listen on 127.0.0.1:{port}: ");
    assert!(errors[0].starts_with(&prefix), "{stderr}");
    assert!(errors[0].contains("in use"), "{stderr}");
}

#[test]
fn an_invalid_base_url_or_a_missing_key_stops_before_anything_else() {
    let dir = tempfile::tempdir().expect("tempdir");
    let wallets = dir.path().display().to_string();
    let args = strings(&[
        "--dev",
        "--wallet.path",
        &wallets,
        "--openai.base_url",
        "ftp://127.0.0.1/v1",
    ]);
    let (status, stderr) = run_to_exit(BIN, &args, Duration::from_secs(30));
    assert_eq!(status.code(), Some(2), "a flag mistake: {stderr}");
    assert_eq!(
        stderr.trim(),
        "openai-miner: error: cannot set up the OpenAI backend: invalid --openai.base_url \
         \"ftp://127.0.0.1/v1\": the scheme must be http or https"
    );
    assert!(
        std::fs::read_dir(dir.path())
            .expect("read dir")
            .next()
            .is_none(),
        "no hotkey was created"
    );

    // The default upstream is api.openai.com, which needs a key (OPENAI_API_KEY is removed).
    let args = strings(&["--dev", "--wallet.path", &wallets]);
    let (status, stderr) = run_to_exit(BIN, &args, Duration::from_secs(30));
    assert_eq!(status.code(), Some(2), "a missing setting: {stderr}");
    assert!(
        stderr.trim().ends_with(
            "upstream https://api.openai.com/v1 needs an API key: pass --openai.api_key or set OPENAI_API_KEY"
        ),
        "{stderr}"
    );
}

#[test]
fn a_missing_wallet_names_the_hotkey_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    let metagraph = dir.path().join("metagraph.toml");
    std::fs::write(&metagraph, "netuid = 1\n").expect("write metagraph");
    let args = strings(&[
        "--wallet.path",
        &dir.path().display().to_string(),
        "--wallet.name",
        "miner",
        "--metagraph.file",
        &metagraph.display().to_string(),
        "--openai.base_url",
        "http://127.0.0.1:9/v1",
    ]);
    let (status, stderr) = run_to_exit(BIN, &args, Duration::from_secs(30));
    assert_eq!(status.code(), Some(1), "{stderr}");
    let expected = format!(
        "openai-miner: error: hotkey file {} does not exist",
        dir.path().join("miner/hotkeys/default").display()
    );
    assert!(stderr.contains(&expected), "{stderr}");
}

#[test]
fn a_bad_config_file_is_a_usage_failure() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("miner.toml");
    std::fs::write(&config, "[openai]\nbase_urls = \"http://127.0.0.1:9/v1\"\n")
        .expect("write config");
    let args = strings(&["--config", &config.display().to_string()]);
    let (status, stderr) = run_to_exit(BIN, &args, Duration::from_secs(30));
    assert_eq!(status.code(), Some(2), "{stderr}");
    assert_eq!(
        stderr.trim(),
        format!(
            "openai-miner: error: config file {}: unknown key `openai.base_urls` (there is no --openai.base_urls)",
            config.display()
        )
    );
}

/// Creates the hotkey `name`/default under `wallets`; its SS58 address.
fn make_hotkey(wallets: &std::path::Path, name: &str) -> String {
    prompting_keys::Wallet::new(wallets, name, "default")
        .create_hotkey_if_missing()
        .expect("create a hotkey")
        .keypair()
        .ss58_address()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_python_v216_command_line_starts_with_warnings_only() {
    let upstream = Upstream::start(post(chat_completions)).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let wallets = dir.path().join("wallets");
    let hotkey = make_hotkey(&wallets, "default");
    let logs = dir.path().join("logs");
    let port = free_port();
    let mut args = python_v216_flags(&logs);
    args.extend(strings(&[
        "--wallet.path",
        &wallets.display().to_string(),
        "--axon.ip",
        "127.0.0.1",
        "--axon.port",
        &port.to_string(),
        "--openai.base_url",
        &upstream.base_url,
        "--openai.model_name",
        "test-model",
    ]));
    let mut miner = MinerProcess::spawn(BIN, &args, port, &dir.path().join("miner.log"));
    miner.wait_ready(Duration::from_secs(60)).await;
    let roles: &[&str] = &["user"];
    let messages: &[&str] = &["What is the capital of France?"];
    let seen = python_dendrite(port, &hotkey, &[(roles, messages)], 12.0).await;
    assert_eq!(
        seen[0]["completion"],
        ANSWER,
        "{}\n{}",
        seen[0],
        miner.log()
    );

    let status = miner.terminate(Duration::from_secs(30));
    assert!(status.success(), "{status}\n{}", miner.log());
    let log = miner.log();
    let warnings = warnings_only(&log);
    assert_warned(&warnings, PYTHON_V216_WARNINGS);
    // --logging.record_log: the same lines in the Python miner's log file.
    let file = logs.join("default/default/netuid1/miner/logs.log");
    let recorded = std::fs::read_to_string(&file).expect("the log file");
    assert!(
        recorded.contains(&format!("serving on 127.0.0.1:{port} as hotkey {hotkey}")),
        "{recorded}"
    );
    assert!(!recorded.contains('\u{1b}'), "no colours in the file");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_yaml_config_bittensor_prints_starts_the_miner_with_warnings_only() {
    let upstream = Upstream::start(post(chat_completions)).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let wallets = dir.path().join("wallets");
    // The file names wallet `miner` (and binds [::]:8091; the command line moves it).
    let hotkey = make_hotkey(&wallets, "miner");
    let config = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../crates/service/tests/fixtures/bittensor-6.1-openai-miner.yaml"
    );
    let port = free_port();
    let args = strings(&[
        "--config",
        config,
        "--wallet.path",
        &wallets.display().to_string(),
        "--axon.ip",
        "127.0.0.1",
        "--axon.port",
        &port.to_string(),
        "--openai.base_url",
        &upstream.base_url,
    ]);
    let mut miner = MinerProcess::spawn(BIN, &args, port, &dir.path().join("miner.log"));
    miner.wait_ready(Duration::from_secs(60)).await;
    let roles: &[&str] = &["user"];
    let messages: &[&str] = &["What is the capital of France?"];
    let seen = python_dendrite(port, &hotkey, &[(roles, messages)], 12.0).await;
    assert_eq!(
        seen[0]["completion"],
        ANSWER,
        "{}\n{}",
        seen[0],
        miner.log()
    );
    assert_eq!(upstream.requests()[0]["model"], "my-model", "from the file");
    let status = miner.terminate(Duration::from_secs(30));
    assert!(status.success(), "{status}\n{}", miner.log());
    let warnings = warnings_only(&miner.log());
    assert_warned(
        &warnings,
        &[
            "ignored --strict",
            "--wandb.on",
            "--wandb.entity",
            "--miner.mock_subtensor: no chain.",
        ],
    );
}

#[test]
fn every_start_up_mistake_is_one_line_with_the_exit_code_of_its_kind() {
    let dir = tempfile::tempdir().expect("tempdir");
    let wallets = dir.path().join("wallets");
    make_hotkey(&wallets, "default");
    let wallets = wallets.display().to_string();
    let base = [
        "--wallet.path",
        &wallets,
        "--openai.base_url",
        "http://127.0.0.1:9/v1",
    ];
    let yaml = dir.path().join("bad.yaml");
    std::fs::write(&yaml, "axon:\n  port: 1\n ip: x\n").expect("write");
    let yaml = yaml.display().to_string();
    for (extra, code, expected) in [
        (
            &["--vicuna.device", "cuda"][..],
            2,
            "openai-miner: error: unexpected argument '--vicuna.device' found",
        ),
        (
            &["--axon.port", "many"][..],
            2,
            "openai-miner: error: invalid value 'many' for '--axon.port <PORT>'",
        ),
        (
            &["--subtensor.network", "mainnet"][..],
            2,
            "openai-miner: error: invalid value 'mainnet' for '--subtensor.network <NETWORK>': unknown network",
        ),
        (
            &["--config", &yaml][..],
            2,
            "openai-miner: error: config file ",
        ),
        (
            &["--miner.mock_subtensor", "--miner.no_start_axon"][..],
            2,
            "openai-miner: error: invalid configuration: --miner.no_start_axon leaves nothing to do",
        ),
        (
            &["--subtensor.network", "test", "--miner.root"][..],
            2,
            "openai-miner: error: --miner.root needs a value",
        ),
        // On a chain binding 0.0.0.0 without --axon.external_ip: a settings mistake.
        (
            &["--subtensor.chain_endpoint", "ws://127.0.0.1:9"][..],
            2,
            "openai-miner: error: invalid configuration: --axon.external_ip is needed",
        ),
        // The environment: the chain is unreachable.
        (
            &[
                "--subtensor.chain_endpoint",
                "ws://127.0.0.1:9",
                "--subtensor.connect_timeout",
                "5",
                "--axon.ip",
                "127.0.0.1",
                "--axon.port",
                "0",
                // A loopback axon is not publishable (subtensor's InvalidIpAddress).
                "--axon.external_ip",
                "10.0.0.1",
            ][..],
            1,
            "openai-miner: error: subtensor: connecting: ",
        ),
    ] {
        let args = strings(&[&base[..], extra].concat());
        let (status, stderr) = run_to_exit(BIN, &args, Duration::from_secs(60));
        assert_eq!(status.code(), Some(code), "{extra:?}: {stderr}");
        let errors: Vec<&str> = stderr.lines().filter(|l| l.contains("error")).collect();
        assert_eq!(errors.len(), 1, "{extra:?}: {stderr}");
        assert!(errors[0].starts_with(expected), "{extra:?}: {stderr}");
        assert!(
            stderr.trim_end().ends_with(errors[0]),
            "the error line is the last line: {stderr}"
        );
    }
    // The wallet comes before the external-address rule.
    let args = strings(&[
        "--wallet.path",
        &dir.path().join("nowhere").display().to_string(),
        "--openai.base_url",
        "http://127.0.0.1:9/v1",
        "--subtensor.chain_endpoint",
        "ws://127.0.0.1:9",
    ]);
    let (status, stderr) = run_to_exit(BIN, &args, Duration::from_secs(30));
    assert_eq!(status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("openai-miner: error: hotkey file "),
        "{stderr}"
    );
}
