//! An OpenAI-compatible chat-completions upstream that answers at once (for measuring the
//! miner itself). Prints `listening <addr> -` once serving on 127.0.0.1.

use anyhow::Context;
use axum::Json;
use axum::routing::post;
use serde_json::{Value, json};

async fn complete(Json(request): Json<Value>) -> Json<Value> {
    let last = request["messages"]
        .as_array()
        .and_then(|m| m.last())
        .and_then(|m| m["content"].as_str())
        .unwrap_or_default()
        .to_string();
    Json(json!({
        "id": "chatcmpl-bench",
        "object": "chat.completion",
        "created": 0,
        "model": request["model"],
        "choices": [{"index": 0, "message": {"role": "assistant", "content": format!("echo: {last}")}, "finish_reason": "stop"}],
    }))
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .context("bind 127.0.0.1")?;
    println!("listening {} -", listener.local_addr()?);
    let app = axum::Router::new().route("/v1/chat/completions", post(complete));
    axum::serve(listener, app).await.context("serve")
}
