//! btauth/1 on the axon: the signed `POST /Prompting` route and the OpenAI-compatible
//! routes, from our signer and from a real bittensor 11.3 validator (`http_auth.sign`).

use crate::common;

use common::{AxonSetup, VALIDATOR_MNEMONIC, miner_key, validator_key};
use futures::StreamExt;
use http::Method;
use prompting_keys::Keypair;
use prompting_testkit::{Venv, run_python};
use prompting_transport::btauth::sign_request;
use serde_json::{Value, json};

const STRANGER_MNEMONIC: &str = "zoo zoo zoo zoo zoo zoo zoo zoo zoo zoo zoo wrong";

fn now_ns() -> i64 {
    i64::try_from(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("clock after 1970")
            .as_nanos(),
    )
    .expect("nanoseconds fit i64")
}

async fn signed_post(
    addr: std::net::SocketAddr,
    key: &Keypair,
    path: &str,
    body: &Value,
) -> reqwest::Response {
    let body = serde_json::to_vec(body).expect("json");
    let receiver = miner_key().ss58_address();
    let headers =
        sign_request(key, &Method::POST, path, &body, Some(&receiver), now_ns()).expect("sign");
    reqwest::Client::new()
        .post(format!("http://{addr}{path}"))
        .headers(headers)
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .expect("send")
}

#[tokio::test]
async fn signed_prompting_and_openai_routes() {
    let validator = validator_key();
    let axon = AxonSetup::new(&[&validator.ss58_address()]).start().await;
    let prompt = json!({"roles": ["user"], "messages": ["hi there"], "timeout": 5.0});

    let response = signed_post(axon.addr, &validator, "/Prompting", &prompt).await;
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.expect("json");
    assert_eq!(body, json!({"completion": "echo: hi there"}));

    // An unregistered signer is authenticated, then refused by the blacklist.
    let stranger = Keypair::from_mnemonic(STRANGER_MNEMONIC).expect("mnemonic");
    let response = signed_post(axon.addr, &stranger, "/Prompting", &prompt).await;
    assert_eq!(response.status(), 403);
    let body: Value = response.json().await.expect("json");
    assert_eq!(body["message"], "hotkey not registered");

    // Chat completions, JSON.
    let chat = json!({"model": "x", "messages": [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": [{"type": "text", "text": "pa"}, {"type": "text", "text": "ris"}]}
    ], "max_tokens": 7});
    let response = signed_post(axon.addr, &validator, "/v1/chat/completions", &chat).await;
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.expect("json");
    assert_eq!(body["object"], "chat.completion");
    assert_eq!(body["model"], "echo");
    assert_eq!(body["choices"][0]["message"]["content"], "echo: paris");
    assert_eq!(body["choices"][0]["finish_reason"], "stop");

    // Chat completions, Server-Sent Events.
    let mut streamed = chat.clone();
    streamed["stream"] = json!(true);
    streamed["messages"][1]["content"] = json!("stream me please");
    let response = signed_post(axon.addr, &validator, "/v1/chat/completions", &streamed).await;
    assert_eq!(response.status(), 200);
    assert!(
        response.headers()["content-type"]
            .to_str()
            .is_ok_and(|ct| ct.starts_with("text/event-stream"))
    );
    let mut bytes = response.bytes_stream();
    let mut text = String::new();
    while let Some(chunk) = bytes.next().await {
        text.push_str(&String::from_utf8_lossy(&chunk.expect("chunk")));
    }
    let data: Vec<&str> = text
        .lines()
        .filter_map(|line| line.strip_prefix("data: "))
        .collect();
    assert_eq!(data.last(), Some(&"[DONE]"), "{text}");
    let chunks: Vec<Value> = data[..data.len() - 1]
        .iter()
        .map(|d| serde_json::from_str(d).expect("chunk json"))
        .collect();
    assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
    let content: String = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
        .collect();
    assert_eq!(content, "echo: stream me please");
    assert!(chunks.len() >= 4, "role, several pieces, stop: {text}");
    assert_eq!(
        chunks.last().expect("last")["choices"][0]["finish_reason"],
        "stop"
    );

    // Unsigned chat requests are refused in OpenAI's error shape.
    let response = reqwest::Client::new()
        .post(format!("http://{}/v1/chat/completions", axon.addr))
        .json(&chat)
        .send()
        .await
        .expect("send");
    assert_eq!(response.status(), 401);
    let body: Value = response.json().await.expect("json");
    assert_eq!(body["error"]["type"], "authentication_error");

    // Models is public.
    let models: Value = reqwest::get(format!("http://{}/v1/models", axon.addr))
        .await
        .expect("get")
        .json()
        .await
        .expect("json");
    assert_eq!(models["data"][0]["id"], "echo");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bittensor_11_validator_over_http() {
    let validator = validator_key();
    let axon = AxonSetup::new(&[&validator.ss58_address()]).start().await;
    let spec = json!({
        "url": format!("http://{}", axon.addr),
        "miner": miner_key().ss58_address(),
        "validator_mnemonic": VALIDATOR_MNEMONIC,
        "stranger_mnemonic": STRANGER_MNEMONIC,
    });
    let script = include_str!("../python/bt11_http_client.py");
    let out = tokio::task::spawn_blocking(move || {
        run_python(Venv::Bt11, script, &[], spec.to_string().as_bytes())
    })
    .await
    .expect("python task");
    let seen: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "python output is not JSON ({e}):\n{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    });
    assert_eq!(seen["valid"]["status"], 200, "{seen}");
    assert_eq!(
        seen["valid"]["body"]["completion"],
        "echo: What is the capital of France?"
    );
    for (case, class) in [
        ("replayed", "ReplayedRequest"),
        ("stale", "StaleRequest"),
        ("tampered", "BadSignature"),
        ("wrong_receiver", "WrongReceiver"),
    ] {
        assert_eq!(seen[case]["status"], 401, "{case}: {}", seen[case]);
        assert_eq!(seen[case]["body"]["class"], class, "{case}: {}", seen[case]);
        let message = seen[case]["body"]["message"].as_str().unwrap_or_default();
        assert!(
            !message.is_empty() && !message.contains("0x"),
            "{case}: {message}"
        );
    }
    assert_eq!(seen["unregistered"]["status"], 403, "{seen}");
    assert_eq!(seen["chat"]["status"], 200, "{seen}");
    assert_eq!(
        seen["chat"]["body"]["choices"][0]["message"]["content"],
        "echo: hello from bittensor 11"
    );
}
