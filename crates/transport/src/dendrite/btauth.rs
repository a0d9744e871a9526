//! The client side of btauth/1 (bittensor 11 validators): `POST /Prompting` with a JSON
//! body, signed for the miner's hotkey, answering `{"completion"}`.

use std::time::Duration;

use http::Method;
use prompting_keys::Keypair;
use serde_json::{Value, json};

use crate::btauth::{BtAuthSignError, BtAuthSigner};
use crate::dendrite::AxonTarget;
use crate::nonce::NonceSource;

/// Why a btauth/1 call gave no completion.
#[derive(Debug, thiserror::Error)]
pub enum BtAuthCallError {
    /// The request could not be signed (e.g. a receiver that is not a header value).
    #[error("cannot sign the request: {0}")]
    Sign(#[from] BtAuthSignError),
    /// No answer within the timeout.
    #[error("Request timeout after {seconds} seconds")]
    Timeout {
        /// The timeout, seconds.
        seconds: f64,
    },
    /// The miner could not be reached or the connection broke.
    #[error("Service unavailable at {url}: {reason}")]
    Unavailable {
        /// The URL called.
        url: String,
        /// What failed.
        reason: String,
    },
    /// The miner refused or failed (its status and message).
    #[error("{status} {message}")]
    Refused {
        /// HTTP status.
        status: u16,
        /// The miner's message (and the btauth error class, when an authentication failure).
        message: String,
    },
    /// A 200 whose body is not `{"completion": "..."}`.
    #[error("invalid answer: {0}")]
    InvalidAnswer(String),
}

impl BtAuthCallError {
    /// The status code a caller reports (Python dendrite conventions for client failures).
    pub fn status_code(&self) -> u16 {
        match self {
            BtAuthCallError::Sign(_) => 400,
            BtAuthCallError::Timeout { .. } => 408,
            BtAuthCallError::Unavailable { .. } => 503,
            BtAuthCallError::Refused { status, .. } => *status,
            BtAuthCallError::InvalidAnswer(_) => 422,
        }
    }
}

/// Signs and sends btauth/1 prompts as one hotkey.
#[derive(Debug)]
pub struct BtAuthClient {
    http: reqwest::Client,
    signer: BtAuthSigner<Keypair>,
}

impl BtAuthClient {
    /// A client signing as `keypair`, with strictly increasing nanosecond nonces.
    pub fn new(keypair: Keypair) -> Result<BtAuthClient, crate::dendrite::DendriteError> {
        let http = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(crate::dendrite::DendriteError::HttpClient)?;
        Ok(BtAuthClient {
            http,
            signer: BtAuthSigner::new(keypair, NonceSource::new()),
        })
    }

    /// Asks `target` to complete the conversation; waits at most `timeout`.
    pub async fn prompt(
        &self,
        target: &AxonTarget,
        roles: Vec<String>,
        messages: Vec<String>,
        timeout: Duration,
    ) -> Result<String, BtAuthCallError> {
        let path = "/Prompting";
        let body = json!({"roles": roles, "messages": messages, "timeout": timeout.as_secs_f64()})
            .to_string()
            .into_bytes();
        let headers = self
            .signer
            .sign(&Method::POST, path, &body, Some(&target.hotkey))?;
        let url = target.url("Prompting");
        let exchange = async {
            let response = self
                .http
                .post(&url)
                .headers(headers)
                .header(http::header::CONTENT_TYPE, "application/json")
                .body(body)
                .send()
                .await?;
            let status = response.status().as_u16();
            let bytes = response.bytes().await?;
            Ok::<_, reqwest::Error>((status, bytes))
        };
        let (status, bytes) = match tokio::time::timeout(timeout, exchange).await {
            Err(_) => {
                return Err(BtAuthCallError::Timeout {
                    seconds: timeout.as_secs_f64(),
                });
            }
            Ok(Err(error)) => {
                return Err(BtAuthCallError::Unavailable {
                    url,
                    reason: error.to_string(),
                });
            }
            Ok(Ok(answer)) => answer,
        };
        let value: Value = serde_json::from_slice(&bytes).map_err(|e| {
            BtAuthCallError::InvalidAnswer(format!("status {status}, body is not JSON: {e}"))
        })?;
        if status != 200 {
            let mut message = value["message"]
                .as_str()
                .unwrap_or("no message")
                .to_string();
            if let Some(class) = value["class"].as_str() {
                message = format!("{message} ({class})");
            }
            return Err(BtAuthCallError::Refused { status, message });
        }
        value["completion"]
            .as_str()
            .map(str::to_owned)
            .ok_or_else(|| BtAuthCallError::InvalidAnswer("no \"completion\" string".into()))
    }
}
