//! `--openai_api.key`: the official `openai` Python SDK (pinned venv `target/py/openai`, made
//! by `scripts/setup-python.sh`; fails, does not skip, without it) against the built
//! `openai-miner` in front of a local chat-completions upstream: plain and streamed chat
//! completions, the model list, and the 401 of a wrong or missing key. Also: btauth/1 still
//! works beside the keys, keys come from the environment and the YAML config file, the
//! blacklist judges the key's caller (`openai_api.key`) like any other, keys never reach the
//! log, and without keys the routes refuse a bearer key as before (btauth/1 only).

mod callers;
mod support;
#[path = "support/upstream.rs"]
mod upstream;

use std::time::Duration;

use axum::Json;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use callers::Caller;
use prompting_testkit::{Venv, run_python};
use serde_json::{Value, json};
use support::{MinerProcess, free_port, hotkey_under};
use upstream::{Requests, Upstream};

const BIN: &str = env!("CARGO_BIN_EXE_openai-miner");
const PIECES: [&str; 3] = ["Paris", " — la capitale", " 🇫🇷"];
const FIRST_KEY: &str = "sk-test-first-0123456789";
const SECOND_KEY: &str = "sk-test-second-abcdefghij";

async fn chat_completions(State(requests): State<Requests>, Json(body): Json<Value>) -> Response {
    requests
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
        .push(body.clone());
    let usage = json!({"prompt_tokens": 5, "completion_tokens": 3, "total_tokens": 8});
    if body["stream"] != json!(true) {
        return Json(json!({
            "id": "chatcmpl-up", "object": "chat.completion", "created": 1_700_000_000,
            "model": "test-model",
            "choices": [{"index": 0, "finish_reason": "stop",
                         "message": {"role": "assistant", "content": PIECES.concat()}}],
            "usage": usage,
        }))
        .into_response();
    }
    let chunk = |delta: Value, finish: Value| {
        json!({"id": "chatcmpl-up", "object": "chat.completion.chunk", "created": 1_700_000_000,
               "model": "test-model",
               "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]})
    };
    let mut events = vec![chunk(json!({"role": "assistant"}), Value::Null)];
    events.extend(
        PIECES
            .iter()
            .map(|piece| chunk(json!({"content": piece}), Value::Null)),
    );
    events.push(chunk(json!({}), json!("stop")));
    if body["stream_options"]["include_usage"] == json!(true) {
        events.push(
            json!({"id": "chatcmpl-up", "object": "chat.completion.chunk",
                           "created": 1_700_000_000, "model": "test-model", "choices": [],
                           "usage": usage}),
        );
    }
    let mut text: String = events
        .iter()
        .map(|event| format!("data: {event}\n\n"))
        .collect();
    text.push_str("data: [DONE]\n\n");
    ([("content-type", "text/event-stream")], text).into_response()
}

/// Starts the miner with `flags` (plus the upstream and a fresh port) and `env`.
async fn miner(
    dir: &std::path::Path,
    upstream: &Upstream,
    flags: &[&str],
    env: &[(&str, &str)],
) -> MinerProcess {
    let port = free_port();
    let mut args: Vec<String> = [
        "--wallet.path",
        &dir.join("wallets").display().to_string(),
        "--axon.port",
        &port.to_string(),
        "--openai.base_url",
        &upstream.base_url,
        "--openai.model_name",
        "test-model",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    args.extend(flags.iter().map(|s| s.to_string()));
    let log = dir.join(format!("miner-{port}.log"));
    let mut miner = MinerProcess::spawn_with_env(BIN, &args, env, port, &log);
    miner.wait_ready(Duration::from_secs(60)).await;
    miner
}

/// What the SDK saw, as the script reports it.
async fn sdk(miner: &MinerProcess, key: &str) -> Value {
    let spec = json!({
        "base_url": format!("http://{}/v1", miner.addr),
        "key": key,
        "wrong_key": "sk-test-wrong-0123456789",
        "model": "any-model",
    });
    let script = include_str!("python/openai_sdk.py");
    let output = tokio::task::spawn_blocking(move || {
        run_python(Venv::OpenAi, script, &[], spec.to_string().as_bytes())
    })
    .await
    .expect("python task");
    serde_json::from_slice(&output.stdout).unwrap_or_else(|e| {
        panic!(
            "python output is not JSON ({e}):\n{}\n{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        )
    })
}

/// `POST /v1/chat/completions` with `authorization` (if any) and no btauth/1 headers. A
/// refusal (401), sent before the body is read, must close the connection and say so.
async fn plain_post(miner: &MinerProcess, authorization: Option<&str>) -> (u16, Value) {
    let mut request = reqwest::Client::new()
        .post(format!("http://{}/v1/chat/completions", miner.addr))
        .json(&json!({"messages": [{"role": "user", "content": "hi"}]}));
    if let Some(value) = authorization {
        request = request.header("authorization", value);
    }
    let response = request.send().await.expect("send");
    let status = response.status().as_u16();
    let connection = response.headers().get("connection").cloned();
    if status == 401 {
        assert_eq!(
            connection.as_ref().and_then(|v| v.to_str().ok()),
            Some("close")
        );
    }
    (status, response.json().await.expect("a JSON body"))
}

fn texts(chunks: &Value) -> String {
    chunks
        .as_array()
        .expect("chunks")
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_openai_sdk_chats_plain_and_streamed_with_a_key_from_the_environment() {
    let upstream = Upstream::start(post(chat_completions)).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let keys = format!("{FIRST_KEY},{SECOND_KEY}");
    let miner = miner(
        dir.path(),
        &upstream,
        &["--dev", "--logging.trace"],
        &[("PROMPTING_OPENAI_API_KEY", &keys)],
    )
    .await;
    let seen = sdk(&miner, SECOND_KEY).await;

    // Plain: the upstream's answer, in the SDK's ChatCompletion.
    let plain = &seen["plain"];
    assert_eq!(plain["object"], "chat.completion", "{seen:#}");
    assert_eq!(plain["choices"][0]["message"]["content"], PIECES.concat());
    assert_eq!(plain["choices"][0]["message"]["role"], "assistant");
    assert_eq!(plain["choices"][0]["finish_reason"], "stop");
    assert_eq!(plain["usage"]["total_tokens"], 8, "{plain:#}");
    assert!(
        plain["id"]
            .as_str()
            .is_some_and(|id| id.starts_with("chatcmpl-")),
        "{plain:#}"
    );
    // Differences: the answer names the miner's model, not the one asked for; no
    // system_fingerprint, service_tier, logprobs or refusal.
    assert_eq!(plain["model"], "test-model");
    for absent in [
        &plain["system_fingerprint"],
        &plain["service_tier"],
        &plain["choices"][0]["logprobs"],
        &plain["choices"][0]["message"]["refusal"],
    ] {
        assert!(absent.is_null(), "{plain:#}");
    }
    // The request reached the upstream with the sampling asked for, as the miner's model.
    let sent = upstream.requests();
    assert_eq!(sent[0]["model"], "test-model");
    assert_eq!(sent[0]["max_tokens"], 16, "{:#}", sent[0]);
    assert_eq!(sent[0]["temperature"], 0.5, "{:#}", sent[0]);
    assert_eq!(
        sent[0]["messages"][1],
        json!({"role": "user", "content": "What is the capital of France?"})
    );

    // Streamed: the same text in chunks, a role chunk first and a finish_reason last.
    let stream = &seen["stream"];
    let chunks = stream.as_array().expect("chunks");
    assert_eq!(texts(stream), PIECES.concat(), "{stream:#}");
    assert!(
        chunks
            .iter()
            .all(|c| c["object"] == "chat.completion.chunk"),
        "{stream:#}"
    );
    assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
    let last = chunks.last().expect("a last chunk");
    assert_eq!(last["choices"][0]["finish_reason"], "stop", "{stream:#}");
    // Difference: `stream_options.include_usage` gets no usage chunk.
    let with_usage = &seen["stream_with_usage"];
    assert_eq!(texts(with_usage), PIECES.concat());
    assert!(
        with_usage
            .as_array()
            .expect("chunks")
            .iter()
            .all(|c| c["usage"].is_null()),
        "{with_usage:#}"
    );

    // The model list: the one model.
    let models = seen["models"].as_array().expect("models");
    assert_eq!(models.len(), 1, "{models:?}");
    assert_eq!(models[0]["id"], "test-model");
    assert_eq!(models[0]["created"], 0);
    assert_eq!(models[0]["owned_by"], "prompting-rs");

    // A wrong key: 401, OpenAI's error shape, the SDK's AuthenticationError; streamed too.
    for case in ["wrong_key", "wrong_key_stream"] {
        let refused = &seen[case];
        assert_eq!(
            refused["class"], "AuthenticationError",
            "{case}: {refused:#}"
        );
        assert_eq!(refused["status"], 401);
        assert_eq!(refused["code"], "invalid_api_key");
        assert_eq!(refused["type"], "authentication_error");
        assert_eq!(refused["body"]["message"], "incorrect API key provided");
        // Difference: no `param` in the error body.
        assert!(refused["body"].get("param").is_none(), "{refused:#}");
        assert!(
            !refused.to_string().contains("sk-test-wrong"),
            "{refused:#}"
        );
    }

    // No key at all, or another scheme: 401 in the same shape.
    for authorization in [None, Some(format!("Basic {FIRST_KEY}"))] {
        let (status, body) = plain_post(&miner, authorization.as_deref()).await;
        assert_eq!(status, 401, "{body}");
        assert_eq!(body["error"]["code"], "invalid_api_key", "{body}");
        assert_eq!(body["error"]["type"], "authentication_error", "{body}");
        assert!(body["error"]["message"].is_string(), "{body}");
    }
    // The first key works as well.
    let (status, body) = plain_post(&miner, Some(&format!("Bearer {FIRST_KEY}"))).await;
    assert_eq!(status, 200, "{body}");

    // btauth/1 keeps working beside the keys.
    let caller = Caller::new(miner.addr, &hotkey_under(&dir.path().join("wallets")));
    let signed = caller
        .chat(&json!({"messages": [{"role": "user", "content": "signed"}]}))
        .await;
    assert_eq!(signed.status, 200, "{signed:?}");

    // The keys never reach the log, even at trace level; the start-up line counts them.
    let log = miner.log();
    assert!(log.contains("with 2 --openai_api.key key(s)"), "{log}");
    for key in [FIRST_KEY, SECOND_KEY, "sk-test-wrong"] {
        assert!(!log.contains(key), "{key} is in the log:\n{log}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_from_the_yaml_config_is_judged_by_the_blacklist_as_openai_api_key() {
    let upstream = Upstream::start(post(chat_completions)).await;
    let dir = tempfile::tempdir().expect("tempdir");
    // A metagraph where nobody calling here is registered.
    let metagraph = dir.path().join("metagraph.json");
    std::fs::write(
        &metagraph,
        json!({"netuid": 1, "neurons": [{"uid": 0, "hotkey":
            "5F3sa2TJAWMqDhXG6jhV4N8ko9SxwGy8TpaNS1repo5EYjQX", "stake": 10.0}]})
        .to_string(),
    )
    .expect("write the metagraph");
    std::fs::create_dir_all(dir.path().join("wallets")).expect("wallets dir");
    support_hotkey(&dir.path().join("wallets"));
    let metagraph = metagraph.display().to_string();

    // Not whitelisted: the key is right (no 401), the blacklist refuses its caller (403),
    // and the start-up said so.
    let config = dir.path().join("keys.yaml");
    std::fs::write(&config, format!("openai_api:\n  key:\n  - {FIRST_KEY}\n"))
        .expect("write the config");
    let refused = miner(
        dir.path(),
        &upstream,
        &[
            "--metagraph.file",
            &metagraph,
            "--axon.ip",
            "127.0.0.1",
            "--config",
            &config.display().to_string(),
        ],
        &[],
    )
    .await;
    let (status, body) = plain_post(&refused, Some(&format!("Bearer {FIRST_KEY}"))).await;
    assert_eq!(status, 403, "{body}");
    assert_eq!(body["error"]["type"], "permission_error", "{body}");
    assert!(
        refused
            .log()
            .contains("add `--miner.blacklist.whitelist openai_api.key`"),
        "{}",
        refused.log()
    );
    drop(refused);

    // Whitelisted in the same YAML file: served, through the SDK.
    std::fs::write(
        &config,
        format!(
            "openai_api:\n  key:\n  - {FIRST_KEY}\nminer:\n  blacklist:\n    whitelist:\n    - openai_api.key\n"
        ),
    )
    .expect("write the config");
    let served = miner(
        dir.path(),
        &upstream,
        &[
            "--metagraph.file",
            &metagraph,
            "--axon.ip",
            "127.0.0.1",
            "--config",
            &config.display().to_string(),
        ],
        &[],
    )
    .await;
    let seen = sdk(&served, FIRST_KEY).await;
    assert_eq!(
        seen["plain"]["choices"][0]["message"]["content"],
        PIECES.concat(),
        "{seen:#}"
    );
    assert_eq!(texts(&seen["stream"]), PIECES.concat(), "{seen:#}");
    assert_eq!(seen["wrong_key"]["status"], 401, "{seen:#}");
    assert!(!served.log().contains(FIRST_KEY), "{}", served.log());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_keys_a_bearer_key_is_refused_as_before() {
    let upstream = Upstream::start(post(chat_completions)).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let miner = miner(dir.path(), &upstream, &["--dev"], &[]).await;
    let (status, body) = plain_post(&miner, Some(&format!("Bearer {FIRST_KEY}"))).await;
    assert_eq!(status, 401, "{body}");
    // btauth/1's refusal (its error class), not the key check's.
    assert_ne!(body["error"]["code"], "invalid_api_key", "{body}");
    assert!(body["error"]["code"].is_string(), "{body}");
    assert!(upstream.requests().is_empty());
    assert!(!miner.log().contains("--openai_api.key"), "{}", miner.log());
}

/// Writes the default hotkey under `wallets` (the miner needs one outside `--dev`).
fn support_hotkey(wallets: &std::path::Path) {
    prompting_keys::Wallet::new(wallets, "default", "default")
        .write_hotkey(&prompting_keys::Keypair::generate().0)
        .expect("write a hotkey");
}
