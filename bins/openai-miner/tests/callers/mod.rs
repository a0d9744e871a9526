//! Signed callers of a running miner (a fresh validator key; `--dev` trusts every caller):
//! the legacy `/Prompting` and `/StreamPrompting` routes through our Dendrite, btauth/1
//! `POST /v1/chat/completions`, and the operator's `/metrics`.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::time::Duration;

use futures::StreamExt;
use http::Method;
use prompting_keys::Keypair;
use prompting_synapse::{Prompting, StreamPrompting, Synapse};
use prompting_transport::btauth::sign_request;
use prompting_transport::dendrite::{AxonTarget, Dendrite, DendriteResponse, StreamItem};
use serde_json::Value;

/// A validator calling one miner.
pub struct Caller {
    key: Keypair,
    dendrite: Dendrite,
    target: AxonTarget,
    http: reqwest::Client,
}

/// What a legacy stream delivered: its text pieces and the outcome.
#[derive(Debug)]
pub struct Streamed {
    /// The text items, in order.
    pub texts: Vec<String>,
    /// The outcome (status, filled synapse).
    pub done: DendriteResponse<StreamPrompting>,
}

/// A status and the body of an HTTP answer.
#[derive(Debug)]
pub struct Answer {
    /// The HTTP status.
    pub status: u16,
    /// The `content-type` header.
    pub content_type: String,
    /// The body, whole.
    pub body: String,
}

impl Answer {
    /// The body as JSON (panics with the body when it is not).
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {self:?}"))
    }

    /// The `data:` payloads of an event stream, in order.
    pub fn events(&self) -> Vec<String> {
        self.body
            .lines()
            .filter_map(|line| line.strip_prefix("data: "))
            .map(str::to_owned)
            .collect()
    }
}

impl Caller {
    /// A caller with a new key, for the miner serving on `miner` as `hotkey`.
    pub fn new(miner: SocketAddr, hotkey: &str) -> Caller {
        let (key, _) = Keypair::generate();
        let dendrite = Dendrite::builder(key.clone())
            .external_ip("127.0.0.1")
            .build()
            .expect("dendrite");
        Caller {
            key,
            dendrite,
            target: AxonTarget::new(miner, hotkey),
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(120))
                .build()
                .expect("http client"),
        }
    }

    /// A legacy `/Prompting` call.
    pub async fn prompt(
        &self,
        messages: &[&str],
        timeout: Duration,
    ) -> DendriteResponse<Prompting> {
        let synapse = Synapse::new(Prompting::new(
            messages.iter().map(|_| "user".to_owned()).collect(),
            messages.iter().map(|m| (*m).to_owned()).collect(),
        ));
        self.dendrite.call(&self.target, synapse, timeout).await
    }

    /// A legacy `/StreamPrompting` call, collected.
    pub async fn stream(&self, messages: &[&str], timeout: Duration) -> Streamed {
        let synapse = Synapse::new(StreamPrompting::new(
            messages.iter().map(|_| "user".to_owned()).collect(),
            messages.iter().map(|m| (*m).to_owned()).collect(),
        ));
        let mut items: Vec<StreamItem> = self
            .dendrite
            .call_stream(&self.target, synapse, timeout)
            .collect()
            .await;
        let Some(StreamItem::Done(done)) = items.pop() else {
            panic!("a stream ends with its outcome: {items:?}")
        };
        let texts = items
            .into_iter()
            .map(|item| match item {
                StreamItem::Text(text) => text,
                StreamItem::Done(_) => panic!("an outcome before the end"),
            })
            .collect();
        Streamed { texts, done: *done }
    }

    /// A btauth/1-signed `POST /v1/chat/completions` with `body`, read whole.
    pub async fn chat(&self, body: &Value) -> Answer {
        let path = "/v1/chat/completions";
        let bytes = serde_json::to_vec(body).expect("json");
        let nonce = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("clock after 1970")
            .as_nanos();
        let headers = sign_request(
            &self.key,
            &Method::POST,
            path,
            &bytes,
            Some(&self.target.hotkey),
            i64::try_from(nonce).expect("nanoseconds fit i64"),
        )
        .expect("sign");
        let response = self
            .http
            .post(format!(
                "http://{}:{}{path}",
                self.target.ip, self.target.port
            ))
            .headers(headers)
            .header("content-type", "application/json")
            .body(bytes)
            .send()
            .await
            .expect("send the chat request");
        let status = response.status().as_u16();
        let content_type = response
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned();
        let body = match response.text().await {
            Ok(body) => body,
            Err(error) => format!("<body broke off: {error}>"),
        };
        Answer {
            status,
            content_type,
            body,
        }
    }
}

/// The miner's `/metrics` text.
pub async fn metrics(miner: SocketAddr) -> String {
    reqwest::get(format!("http://{miner}/metrics"))
        .await
        .expect("GET /metrics")
        .text()
        .await
        .expect("metrics body")
}

/// The value of the sample `name` (with its labels, exactly as printed) in `metrics`.
pub fn sample(metrics: &str, name: &str) -> Option<f64> {
    metrics.lines().find_map(|line| {
        let value = line.strip_prefix(name)?.strip_prefix(' ')?;
        value.trim().parse().ok()
    })
}
