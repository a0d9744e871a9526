//! The built `openai-miner` binary end to end: `--dev` in front of a local chat-completions
//! server, queried by a real Python bittensor 10.5 Dendrite (needs the venv made by
//! `scripts/setup-python.sh`; fails, does not skip, without it); and its start-up errors.

mod support;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Json;
use axum::extract::State;
use axum::routing::post;
use serde_json::{Value, json};
use support::{MinerProcess, free_port, hotkey_under, python_dendrite, run_to_exit};

const BIN: &str = env!("CARGO_BIN_EXE_openai-miner");
const ANSWER: &str = "Paris — la capitale 🇫🇷";

/// A chat-completions server on 127.0.0.1 that records the bodies it receives.
struct Upstream {
    base_url: String,
    requests: Arc<Mutex<Vec<Value>>>,
}

async fn chat_completions(
    State(requests): State<Arc<Mutex<Vec<Value>>>>,
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

impl Upstream {
    async fn start() -> Upstream {
        let requests = Arc::new(Mutex::new(Vec::new()));
        let router = axum::Router::new()
            .route("/v1/chat/completions", post(chat_completions))
            .with_state(Arc::clone(&requests));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the upstream");
        let addr = listener.local_addr().expect("upstream addr");
        tokio::spawn(async move {
            let _ = axum::serve(listener, router).await;
        });
        Upstream {
            base_url: format!("http://{addr}/v1"),
            requests,
        }
    }

    fn requests(&self) -> Vec<Value> {
        self.requests
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
    }
}

fn strings(args: &[&str]) -> Vec<String> {
    args.iter().map(|s| s.to_string()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dev_miner_answers_a_python_dendrite_through_the_upstream() {
    let upstream = Upstream::start().await;
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
    assert_eq!(status.code(), Some(1), "{stderr}");
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
    assert_eq!(status.code(), Some(1), "{stderr}");
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
