//! The built `openai-miner` in front of an upstream whose event streams break before their
//! first text: every streaming route answers with an error status (issue 12, D5), never a
//! 200 that carries no text.

mod callers;
mod support;

use std::time::Duration;

use callers::Caller;
use serde_json::json;
use support::{MinerProcess, free_port, hotkey_under};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const BIN: &str = env!("CARGO_BIN_EXE_openai-miner");

/// What the broken upstream sends: a 200 event stream that promises more than it sends,
/// a role-only chunk, half of a JSON chunk, then the connection closes.
const BROKEN_STREAM: &str = "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ncontent-length: 4096\r\n\r\ndata: {\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\"}}]}\n\ndata: {\"choices\":[{\"ind";

/// An upstream on 127.0.0.1 that answers every request with [`BROKEN_STREAM`]; its base URL.
async fn broken_upstream() -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind the upstream");
    let addr = listener.local_addr().expect("upstream addr");
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            tokio::spawn(async move {
                // Read the request head and whatever body came with it, then answer.
                let mut seen = Vec::new();
                let mut buf = [0u8; 8192];
                while !seen.windows(4).any(|w| w == b"\r\n\r\n") {
                    match socket.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => seen.extend_from_slice(&buf[..n]),
                    }
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
                let _ = socket.write_all(BROKEN_STREAM.as_bytes()).await;
                let _ = socket.shutdown().await;
            });
        }
    });
    format!("http://{addr}/v1")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_broken_before_its_first_text_is_an_error_on_every_route() {
    let base_url = broken_upstream().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let wallets = dir.path().join("wallets");
    let port = free_port();
    let args: Vec<String> = [
        "--dev",
        "--wallet.path",
        &wallets.display().to_string(),
        "--axon.port",
        &port.to_string(),
        "--openai.base_url",
        &base_url,
        "--openai.model_name",
        "test-model",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let mut miner = MinerProcess::spawn(BIN, &args, port, &dir.path().join("miner.log"));
    miner.wait_ready(Duration::from_secs(60)).await;
    let caller = Caller::new(miner.addr, &hotkey_under(&wallets));

    // Legacy /StreamPrompting: the error status, no text (it was 200 and no chunk).
    let streamed = caller
        .stream(&["tell me a story"], Duration::from_secs(20))
        .await;
    assert!(streamed.texts.is_empty(), "{streamed:?}");
    assert_eq!(streamed.done.status_code, 500, "{streamed:?}");
    assert_eq!(streamed.done.synapse.axon.status_code, Some(500));
    assert!(
        streamed
            .done
            .status_message
            .starts_with("Internal server error with error: "),
        "{streamed:?}"
    );

    // btauth/1 /v1/chat/completions with "stream": a JSON error, not an event stream.
    let answer = caller
        .chat(&json!({"model": "test-model", "stream": true,
                      "messages": [{"role": "user", "content": "tell me a story"}]}))
        .await;
    assert_eq!(answer.status, 500, "{answer:?}");
    assert!(
        answer.content_type.starts_with("application/json"),
        "{answer:?}"
    );
    assert!(answer.json()["error"]["message"].is_string(), "{answer:?}");

    let log = miner.log();
    assert!(!log.contains("panicked"), "{log}");
    let status = miner.terminate(Duration::from_secs(30));
    assert!(status.success(), "{status}\n{}", miner.log());
}
