//! A local server that behaves like a chat-completions API, scripted per test, recording
//! every request it receives.

#![allow(dead_code)] // each test file uses a different part

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes, to_bytes};
use axum::extract::{Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use futures::future::BoxFuture;
use futures::{FutureExt, StreamExt};
use prompting_miner::{PromptRequest, Protocol};
use prompting_openai_backend::{ApiKey, OpenAiArgs, OpenAiBackend};
use serde_json::{Value, json};
use tokio::net::TcpListener;

/// One request as the upstream saw it.
#[derive(Debug, Clone)]
pub struct Recorded {
    pub method: String,
    pub path: String,
    pub headers: HeaderMap,
    pub body: Value,
}

type Handler = Arc<dyn Fn(usize, Value) -> BoxFuture<'static, Response> + Send + Sync>;

#[derive(Clone)]
struct Shared {
    handler: Handler,
    recorded: Arc<Mutex<Vec<Recorded>>>,
}

/// A running scripted upstream.
pub struct MockUpstream {
    /// `http://127.0.0.1:<port>/v1`
    pub base_url: String,
    recorded: Arc<Mutex<Vec<Recorded>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for MockUpstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl MockUpstream {
    /// Serves every request with `handler(hit_index, json_body)` (hits count from 0).
    pub async fn start<F>(handler: F) -> MockUpstream
    where
        F: Fn(usize, Value) -> BoxFuture<'static, Response> + Send + Sync + 'static,
    {
        let recorded = Arc::new(Mutex::new(Vec::new()));
        let shared = Shared {
            handler: Arc::new(handler),
            recorded: recorded.clone(),
        };
        let app = Router::new().fallback(serve).with_state(shared);
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind loopback");
        let address = listener.local_addr().expect("local address");
        let task = tokio::spawn(async move {
            axum::serve(listener, app)
                .await
                .expect("mock upstream serves");
        });
        MockUpstream {
            base_url: format!("http://{address}/v1"),
            recorded,
            task,
        }
    }

    /// Every request received so far.
    pub fn requests(&self) -> Vec<Recorded> {
        self.recorded.lock().expect("not poisoned").clone()
    }

    /// How many requests were received.
    pub fn hits(&self) -> usize {
        self.recorded.lock().expect("not poisoned").len()
    }
}

async fn serve(State(shared): State<Shared>, request: Request) -> Response {
    let (parts, body) = request.into_parts();
    let bytes = to_bytes(body, 1 << 20).await.expect("request body");
    let body: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    let hit = {
        let mut recorded = shared.recorded.lock().expect("not poisoned");
        recorded.push(Recorded {
            method: parts.method.to_string(),
            path: parts.uri.path().to_owned(),
            headers: parts.headers.clone(),
            body: body.clone(),
        });
        recorded.len() - 1
    };
    (shared.handler)(hit, body).await
}

/// An upstream address nobody listens on (connections are refused).
pub async fn dead_base_url() -> String {
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind loopback");
    let address = listener.local_addr().expect("local address");
    drop(listener);
    format!("http://{address}/v1")
}

/// A successful completion whose first choice says `text`.
pub fn completion(text: &str) -> Response {
    json_reply(
        StatusCode::OK,
        json!({
            "id": "chatcmpl-1",
            "object": "chat.completion",
            "created": 1_700_000_000,
            "model": "gpt-3.5-turbo",
            "choices": [{
                "index": 0,
                "message": {"role": "assistant", "content": text},
                "finish_reason": "stop"
            }],
            "usage": {"prompt_tokens": 5, "completion_tokens": 2, "total_tokens": 7}
        }),
    )
}

/// An OpenAI-style error answer.
pub fn api_error(status: StatusCode, message: &str) -> Response {
    json_reply(
        status,
        json!({"error": {"message": message, "type": "test_error", "code": null}}),
    )
}

/// Any JSON answer.
pub fn json_reply(status: StatusCode, body: Value) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "application/json")],
        body.to_string(),
    )
        .into_response()
}

/// A `text/event-stream` answer sent as the given raw chunks, `pause` apart.
pub fn sse_reply(chunks: Vec<String>, pause: Duration) -> Response {
    let stream =
        futures::stream::iter(chunks.into_iter().enumerate()).then(move |(i, chunk)| async move {
            if i > 0 {
                tokio::time::sleep(pause).await;
            }
            Ok::<_, std::io::Error>(Bytes::from(chunk))
        });
    Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, "text/event-stream")
        .body(Body::from_stream(stream))
        .expect("valid response")
}

/// An upstream on 127.0.0.1 written at the byte level, for answers a proper HTTP server
/// does not give. `answer(body, n)` gets the JSON body of the `n`th request (from 0) on its
/// connection and returns the raw bytes to send back and whether to close the connection
/// after them, or `None` to close it without answering. Its base URL and the bodies read.
pub async fn raw_upstream<F>(answer: F) -> (String, Arc<Mutex<Vec<Value>>>)
where
    F: Fn(&Value, usize) -> Option<(Vec<u8>, bool)> + Send + Sync + 'static,
{
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("local addr");
    let seen = Arc::new(Mutex::new(Vec::new()));
    let (answer, record) = (Arc::new(answer), Arc::clone(&seen));
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            let (answer, record) = (Arc::clone(&answer), Arc::clone(&record));
            tokio::spawn(async move {
                let mut data = Vec::new();
                let mut buf = [0u8; 8192];
                for n in 0.. {
                    let body = loop {
                        if let Some(end) = data.windows(4).position(|w| w == b"\r\n\r\n") {
                            let head = String::from_utf8_lossy(&data[..end]).to_ascii_lowercase();
                            let length: usize = head
                                .lines()
                                .find_map(|line| line.strip_prefix("content-length:"))
                                .and_then(|value| value.trim().parse().ok())
                                .unwrap_or(0);
                            if data.len() >= end + 4 + length {
                                let body = data[end + 4..end + 4 + length].to_vec();
                                data.drain(..end + 4 + length);
                                break body;
                            }
                        }
                        match socket.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(read) => data.extend_from_slice(&buf[..read]),
                        }
                    };
                    let body: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
                    let reply = answer(&body, n);
                    record.lock().unwrap_or_else(|p| p.into_inner()).push(body);
                    let Some((bytes, close)) = reply else { return };
                    if socket.write_all(&bytes).await.is_err() || close {
                        let _ = socket.shutdown().await;
                        return;
                    }
                }
            });
        }
    });
    (format!("http://{addr}/v1"), seen)
}

/// The head of a `200 text/event-stream` answer, chunked (close the connection after it
/// for a body that breaks off before its first byte).
pub const BROKEN_SSE_HEAD: &[u8] =
    b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n";

/// A raw HTTP/1.1 answer with a JSON body.
pub fn raw_json(status_line: &str, body: &Value) -> Vec<u8> {
    let body = body.to_string();
    format!(
        "HTTP/1.1 {status_line}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

/// The `data:` JSON of a stream chunk carrying `content` for choice `index`.
pub fn delta(index: u32, content: &str) -> String {
    json!({
        "id": "chatcmpl-1",
        "object": "chat.completion.chunk",
        "choices": [{"index": index, "delta": {"content": content}, "finish_reason": null}]
    })
    .to_string()
}

/// The `data:` JSON of the last chunk of choice 0.
pub fn finish() -> String {
    json!({
        "id": "chatcmpl-1",
        "object": "chat.completion.chunk",
        "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]
    })
    .to_string()
}

/// Wraps a handler body as the boxed future [`MockUpstream::start`] wants.
pub fn reply(response: Response) -> BoxFuture<'static, Response> {
    async move { response }.boxed()
}

/// Settings pointing at `base_urls`, with fast retries.
pub fn args(base_urls: &[&str]) -> OpenAiArgs {
    OpenAiArgs {
        base_url: base_urls.iter().map(|s| s.to_string()).collect(),
        retry_backoff: 0.01,
        ..OpenAiArgs::default()
    }
}

/// Settings pointing at `base_urls`, with fast retries and an API key.
pub fn args_with_key(base_urls: &[&str], key: &str) -> OpenAiArgs {
    OpenAiArgs {
        api_key: Some(ApiKey::new(key)),
        ..args(base_urls)
    }
}

/// A backend, or the test fails.
pub fn backend(args: OpenAiArgs) -> OpenAiBackend {
    OpenAiBackend::new(args).expect("valid settings")
}

/// A system + user prompt with `timeout` to answer.
pub fn prompt(timeout: Duration) -> PromptRequest {
    PromptRequest::new(
        vec!["system".into(), "user".into()],
        vec!["You are terse.".into(), "Say hello.".into()],
        "5FHneW46xGXgs5mUiveU4sbTyGBzmstUspZC92UhjJM694ty",
        Protocol::Legacy,
        timeout,
    )
}
