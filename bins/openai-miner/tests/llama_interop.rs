//! The built `openai-miner --dev` in front of a real OpenAI-compatible server: llama.cpp's
//! (`llama-cpp-python` 0.3.36, the `llama` venv of `scripts/setup-python.sh`) serving a tiny
//! random GGUF, called on every route by signed validators. Fails, does not skip, when the
//! venv is missing.

mod callers;
mod support;

use std::time::Duration;

use callers::{Answer, Caller, metrics, sample};
use prompting_testkit::LlamaServer;
use serde_json::{Value, json};
use support::{MinerProcess, free_port, hotkey_under};

const BIN: &str = env!("CARGO_BIN_EXE_openai-miner");
const TIMEOUT: Duration = Duration::from_secs(60);

fn chat(messages: &[(&str, &str)], extra: Value) -> Value {
    let mut body = json!({
        "model": "tiny-llama",
        "messages": messages
            .iter()
            .map(|(role, content)| json!({"role": role, "content": content}))
            .collect::<Vec<_>>(),
    });
    if let (Some(body), Some(extra)) = (body.as_object_mut(), extra.as_object()) {
        body.extend(extra.clone());
    }
    body
}

/// The chunks of an SSE answer (every `data:` payload but `[DONE]`), parsed.
fn chunks(answer: &Answer) -> Vec<Value> {
    let events = answer.events();
    assert_eq!(
        events.last().map(String::as_str),
        Some("[DONE]"),
        "{answer:?}"
    );
    events[..events.len() - 1]
        .iter()
        .map(|event| serde_json::from_str(event).expect("a JSON chunk"))
        .collect()
}

/// `what`, with both logs.
fn context(what: &dyn std::fmt::Debug, miner: &MinerProcess, server: &LlamaServer) -> String {
    format!(
        "{what:?}\nminer log:\n{}\nllama log:\n{}",
        miner.log(),
        server.log()
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_miner_serves_every_route_through_llama_cpp() {
    let mut server = LlamaServer::start(256);
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
        &server.base_url(),
        "--openai.api_key",
        server.api_key(),
        "--openai.model_name",
        "tiny-llama",
        "--openai.max_tokens",
        "8",
        "--openai.retry_backoff",
        "0.05",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let mut miner = MinerProcess::spawn(BIN, &args, port, &dir.path().join("miner.log"));
    miner.wait_ready(TIMEOUT).await;
    let caller = Caller::new(miner.addr, &hotkey_under(&wallets));

    // Legacy, plain and streamed.
    let answer = caller.prompt(&["Say hello."], TIMEOUT).await;
    assert_eq!(
        answer.status_code,
        200,
        "{}",
        context(&answer, &miner, &server)
    );
    assert!(!answer.synapse.body.completion.is_empty());
    let streamed = caller.stream(&["Tell me a story."], TIMEOUT).await;
    assert_eq!(
        streamed.done.status_code,
        200,
        "{}",
        context(&streamed, &miner, &server)
    );
    assert!(streamed.texts.len() > 1, "in pieces: {streamed:?}");
    assert_eq!(
        streamed.done.synapse.body.completion,
        streamed.texts.concat()
    );

    // Chat completions, JSON, with the caller's limits: finish_reason and usage are the
    // server's.
    let mut completion_tokens = 8.0;
    for (limit, expected) in [
        (json!({"max_tokens": 3}), 3),
        (json!({"max_completion_tokens": 2, "max_tokens": 50}), 2),
    ] {
        let answer = caller.chat(&chat(&[("user", "Count.")], limit)).await;
        assert_eq!(answer.status, 200, "{}", context(&answer, &miner, &server));
        let body = answer.json();
        assert_eq!(body["choices"][0]["finish_reason"], "length", "{body}");
        assert_eq!(body["usage"]["completion_tokens"], expected, "{body}");
        let prompt = body["usage"]["prompt_tokens"]
            .as_u64()
            .expect("prompt tokens");
        assert!(prompt > 3, "{body}");
        assert_eq!(
            body["usage"]["total_tokens"].as_u64(),
            Some(prompt + expected)
        );
        completion_tokens += expected as f64;
    }
    let greedy = chat(
        &[("system", "You are terse."), ("user", "Repeat after me.")],
        json!({"max_tokens": 6, "temperature": 0.0, "top_p": 0.5}),
    );
    let first = caller.chat(&greedy).await.json();
    let second = caller.chat(&greedy).await.json();
    assert_eq!(
        first["choices"][0]["message"]["content"], second["choices"][0]["message"]["content"],
        "temperature 0 reached the server"
    );
    completion_tokens += 12.0;

    // Chat completions, SSE: "length" stays "length".
    let answer = caller
        .chat(&chat(
            &[("user", "Stream a story.")],
            json!({"stream": true, "max_tokens": 4}),
        ))
        .await;
    assert_eq!(answer.status, 200, "{}", context(&answer, &miner, &server));
    assert!(
        answer.content_type.starts_with("text/event-stream"),
        "{answer:?}"
    );
    let chunks = chunks(&answer);
    let text: String = chunks
        .iter()
        .filter_map(|chunk| chunk["choices"][0]["delta"]["content"].as_str())
        .collect();
    assert!(!text.is_empty(), "{answer:?}");
    let reasons: Vec<&Value> = chunks
        .iter()
        .map(|chunk| &chunk["choices"][0]["finish_reason"])
        .filter(|reason| !reason.is_null())
        .collect();
    assert_eq!(reasons, [&json!("length")], "{answer:?}");

    // A prompt longer than the context: a clear 400 on every route, streams included.
    let long = "many words to overflow the context ".repeat(64);
    let expected =
        "upstream returned 400 Bad Request: This model's maximum context length is 256 tokens";
    let answer = caller.prompt(&[&long], TIMEOUT).await;
    assert_eq!(answer.status_code, 400, "{answer:?}");
    assert!(
        answer
            .status_message
            .starts_with(&format!("Bad request: {expected}")),
        "{answer:?}"
    );
    let streamed = caller.stream(&[&long], TIMEOUT).await;
    assert_eq!(streamed.done.status_code, 400, "{streamed:?}");
    assert!(streamed.texts.is_empty(), "{streamed:?}");
    assert!(
        streamed
            .done
            .status_message
            .starts_with(&format!("Bad request: {expected}")),
        "{streamed:?}"
    );
    for stream in [false, true] {
        let answer = caller
            .chat(&chat(&[("user", &long)], json!({"stream": stream})))
            .await;
        assert_eq!(answer.status, 400, "{answer:?}");
        assert!(
            answer.content_type.starts_with("application/json"),
            "{answer:?}"
        );
        let message = answer.json()["error"]["message"]
            .as_str()
            .map(str::to_owned);
        assert!(
            message.as_deref().is_some_and(|m| m.contains(expected)),
            "{answer:?}"
        );
    }

    // The server's token counts, on /metrics (streams report none).
    let text = metrics(miner.addr).await;
    assert_eq!(
        sample(&text, "prompting_backend_tokens_total{kind=\"completion\"}"),
        Some(completion_tokens),
        "{text}"
    );
    assert!(
        sample(&text, "prompting_backend_tokens_total{kind=\"prompt\"}")
            .is_some_and(|tokens| tokens > completion_tokens),
        "{text}"
    );

    // The server goes away and comes back: errors while it is down, served at once after.
    server.kill();
    let down = caller.prompt(&["Anyone there?"], TIMEOUT).await;
    assert_ne!(down.status_code, 200, "{down:?}");
    server.restart();
    let back = caller.prompt(&["Hello again."], TIMEOUT).await;
    assert_eq!(back.status_code, 200, "{}", context(&back, &miner, &server));

    let status = miner.terminate(Duration::from_secs(30));
    assert!(status.success(), "{status}\n{}", miner.log());
}
