//! A chat-completions server on 127.0.0.1 for the openai-miner tests: one scripted
//! `POST /v1/chat/completions` handler, and every request body it received. (Its own file,
//! not part of `support`, because btlm-miner's tests share `support` and have no axum.)

use std::sync::{Arc, Mutex};

use axum::routing::MethodRouter;
use serde_json::Value;

/// The request bodies the upstream received: the handler's axum state.
pub type Requests = Arc<Mutex<Vec<Value>>>;

/// A running upstream.
pub struct Upstream {
    /// Its `--openai.base_url`.
    pub base_url: String,
    requests: Requests,
}

impl Upstream {
    /// Serves `chat_completions` (e.g. `post(handler)`) on a free port.
    pub async fn start(chat_completions: MethodRouter<Requests>) -> Upstream {
        let requests = Requests::default();
        let router = axum::Router::new()
            .route("/v1/chat/completions", chat_completions)
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

    /// The request bodies received so far.
    pub fn requests(&self) -> Vec<Value> {
        self.requests
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
    }
}
