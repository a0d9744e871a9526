//! The backend against a real OpenAI-compatible server: llama.cpp's (`llama-cpp-python`
//! 0.3.36, the `llama` venv of `scripts/setup-python.sh`) serving a tiny random GGUF.
//! Fails, does not skip, when the venv is missing.

use std::sync::OnceLock;
use std::time::{Duration, Instant};

use futures::StreamExt;
use prompting_miner::{Miner, MinerError, PromptRequest, Protocol, TextStream, TokenUsage};
use prompting_openai_backend::{ApiKey, OpenAiArgs, OpenAiBackend};
use prompting_testkit::LlamaServer;

/// The model's context, in tokens.
const N_CTX: u32 = 256;

/// One server for the tests of this file that leave it running.
fn server() -> &'static LlamaServer {
    static SERVER: OnceLock<LlamaServer> = OnceLock::new();
    SERVER.get_or_init(|| LlamaServer::start(N_CTX))
}

fn args(server: &LlamaServer) -> OpenAiArgs {
    OpenAiArgs {
        base_url: vec![server.base_url()],
        api_key: Some(ApiKey::new(server.api_key())),
        model_name: "tiny-llama".into(),
        retry_backoff: 0.01,
        ..OpenAiArgs::default()
    }
}

fn backend(args: OpenAiArgs) -> OpenAiBackend {
    OpenAiBackend::new(args).expect("valid settings")
}

fn prompt(user: &str, max_tokens: Option<u32>) -> PromptRequest {
    let mut request = PromptRequest::new(
        vec!["system".into(), "user".into()],
        vec!["You are terse.".into(), user.into()],
        "5FHneW46xGXgs5mUiveU4sbTyGBzmstUspZC92UhjJM694ty",
        Protocol::Legacy,
        Duration::from_secs(60),
    );
    request.sampling.max_tokens = max_tokens;
    request
}

async fn collect(stream: TextStream) -> Vec<Result<String, MinerError>> {
    stream.collect().await
}

/// How many requests the server answered with `status` (its access log).
fn answered(server: &LlamaServer, status: &str) -> usize {
    server
        .log()
        .lines()
        .filter(|line| line.contains("POST /v1/chat/completions") && line.contains(status))
        .count()
}

#[tokio::test]
async fn plain_answers_carry_the_upstream_finish_reason_and_usage() {
    let server = server();
    let backend = backend(args(server));
    let request = prompt("Say hello.", Some(5));

    let answer = backend.prompt(&request).await;

    let text = answer.unwrap_or_else(|e| panic!("{e}\n{}", server.log()));
    assert!(!text.is_empty());
    // The tiny model practically never ends on its own: 5 tokens, cut by the limit.
    assert_eq!(request.report.finish_reason().as_deref(), Some("length"));
    let usage = request.report.usage().expect("llama.cpp reports usage");
    assert_eq!(usage.completion_tokens, 5);
    assert!(usage.prompt_tokens > 5, "{usage:?}");
}

#[tokio::test]
async fn streams_arrive_in_pieces_and_end_with_length() {
    let server = server();
    let backend = backend(args(server));
    let request = prompt("Tell me a story.", Some(12));

    let stream = backend
        .prompt_stream(&request)
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", server.log()));
    let items = collect(stream).await;

    assert!(items.iter().all(Result::is_ok), "{items:?}");
    assert!(items.len() > 1, "streamed in pieces: {items:?}");
    assert_eq!(request.report.finish_reason().as_deref(), Some("length"));
    // This server does not report usage in streams (it ignores `stream_options`).
    assert_eq!(request.report.usage(), None::<TokenUsage>);
}

#[tokio::test]
async fn caller_overrides_reach_the_server() {
    let server = server();
    let backend = backend(args(server));
    for max_tokens in [1, 7] {
        let mut request = prompt("Count.", Some(max_tokens));
        request.sampling.temperature = Some(0.0);
        request.sampling.top_p = Some(0.5);
        let answer = backend.prompt(&request).await;
        assert!(answer.is_ok(), "{answer:?}\n{}", server.log());
        let usage = request.report.usage().expect("usage");
        assert_eq!(usage.completion_tokens, u64::from(max_tokens));
    }
    // Temperature 0: the same prompt, the same answer.
    let greedy = || {
        let mut request = prompt("Repeat after me.", Some(6));
        request.sampling.temperature = Some(0.0);
        request
    };
    let first = backend.prompt(&greedy()).await.expect("first");
    let second = backend.prompt(&greedy()).await.expect("second");
    assert_eq!(first, second);
}

#[tokio::test]
async fn a_wrong_api_key_is_refused_once_and_not_retried() {
    let server = server();
    let before = answered(server, " 401");
    let backend = backend(OpenAiArgs {
        api_key: Some(ApiKey::new("sk-wrong")),
        ..args(server)
    });

    let answer = backend.prompt(&prompt("Say hello.", Some(3))).await;

    assert!(
        matches!(&answer, Err(MinerError::Backend(m)) if m.starts_with("upstream returned 401 Unauthorized")),
        "{answer:?}"
    );
    let stream = backend.prompt_stream(&prompt("Say hello.", Some(3))).await;
    assert!(
        matches!(&stream, Err(MinerError::Backend(m)) if m.starts_with("upstream returned 401 Unauthorized")),
        "{:?}",
        stream.err()
    );
    assert_eq!(answered(server, " 401") - before, 2, "{}", server.log());
}

#[tokio::test]
async fn a_prompt_longer_than_the_context_is_a_clear_bad_request_plain_and_streamed() {
    let server = server();
    let backend = backend(args(server));
    let long = "many words to overflow the context ".repeat(64);

    let plain = backend.prompt(&prompt(&long, Some(4))).await;
    let streamed = backend.prompt_stream(&prompt(&long, Some(4))).await.err();

    for error in [plain.err(), streamed] {
        assert!(
            matches!(&error, Some(MinerError::BadRequest(m))
                if m.starts_with("upstream returned 400 Bad Request")
                && m.contains("maximum context length is 256 tokens")),
            "{error:?}\n{}",
            server.log()
        );
    }
}

#[tokio::test]
async fn a_message_the_server_rejects_as_invalid_is_not_retried() {
    let server = server();
    let before = answered(server, " 500");
    let backend = backend(args(server));
    let request = PromptRequest::new(
        vec!["wizard".into()],
        vec!["abracadabra".into()],
        "5FHneW46xGXgs5mUiveU4sbTyGBzmstUspZC92UhjJM694ty",
        Protocol::Legacy,
        Duration::from_secs(60),
    );

    let answer = backend.prompt(&request).await;

    assert!(
        matches!(&answer, Err(MinerError::BadRequest(m)) if m.contains("validation error")),
        "{answer:?}"
    );
    assert_eq!(answered(server, " 500") - before, 1, "{}", server.log());
}

#[tokio::test]
async fn a_server_killed_mid_stream_breaks_the_stream_and_serves_again_once_restarted() {
    let mut server = LlamaServer::start(2048);
    let backend = backend(OpenAiArgs {
        max_retries: 0,
        ..args(&server)
    });

    let request = prompt("Tell me a very long story.", Some(1900));
    let mut stream = backend
        .prompt_stream(&request)
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", server.log()));
    assert!(matches!(stream.next().await, Some(Ok(_))));
    server.kill();
    let mut rest = Vec::new();
    let ended = tokio::time::timeout(Duration::from_secs(30), async {
        while let Some(item) = stream.next().await {
            rest.push(item);
        }
    })
    .await;
    assert!(ended.is_ok(), "the broken stream ends");
    assert!(
        matches!(rest.last(), Some(Err(MinerError::Backend(_)))),
        "the stream ends with an error, not as if complete: {:?}",
        rest.last()
    );

    // Down: a clear error, at once.
    let started = Instant::now();
    let down = backend.prompt(&prompt("Anyone there?", Some(3))).await;
    assert!(matches!(&down, Err(MinerError::Backend(_))), "{down:?}");
    assert!(started.elapsed() < Duration::from_secs(5));

    // Back: served at once.
    server.restart();
    let back = backend.prompt(&prompt("Hello again.", Some(3))).await;
    assert!(back.is_ok(), "{back:?}\n{}", server.log());
}
