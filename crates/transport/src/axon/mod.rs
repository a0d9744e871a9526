//! The axon: the miner's server. One port serves the legacy synapse routes, btauth/1-signed
//! `/Prompting`, the OpenAI-compatible `/v1/*` routes, gRPC (h2c), `/metrics` and `/healthz`.

pub mod body;
pub mod config;
pub mod legacy;
pub mod nonce;
pub mod signed;
pub mod state;

use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, Method};
use axum::http::{StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use prompting_synapse::{Prompting, StreamPrompting, SynapseBody};
use tokio::net::TcpListener;

pub use config::{AxonArgs, AxonConfigError};
pub use legacy::PromptSynapse;
pub use state::{AxonState, PROTOCOL_VERSION};

use crate::server::{ServerLimits, serve};

/// The synapse routes this axon serves.
pub const SYNAPSES: [&str; 2] = [Prompting::NAME, StreamPrompting::NAME];

/// The axon's routes over `state`: legacy synapses, btauth/1, OpenAI-compatible, gRPC,
/// metrics and health.
pub fn router(state: Arc<AxonState>) -> Router {
    Router::new()
        .route(
            &format!("/{}", Prompting::NAME),
            get(legacy::handle::<Prompting>).post(prompting_post),
        )
        .route(
            &format!("/{}", StreamPrompting::NAME),
            get(legacy::handle::<StreamPrompting>).post(legacy::handle::<StreamPrompting>),
        )
        .route(
            "/v1/chat/completions",
            post(crate::openai::chat_completions),
        )
        .route("/v1/models", get(crate::openai::models))
        .route("/metrics", get(metrics))
        .route("/healthz", get(healthz))
        .fallback(not_found)
        .with_state(state.clone())
        .merge(crate::grpc::router(state))
}

/// Serves `router` on `listener` with `limits` until `shutdown` resolves.
pub async fn run(
    listener: TcpListener,
    router: Router,
    limits: ServerLimits,
    shutdown: impl std::future::Future<Output = ()> + Send,
) -> std::io::Result<()> {
    serve(listener, router, limits, shutdown).await
}

/// `POST /Prompting`: btauth/1-signed JSON when the btauth headers are present, the legacy
/// synapse protocol otherwise.
async fn prompting_post(
    state: State<Arc<AxonState>>,
    peer: Option<axum::Extension<crate::server::PeerAddr>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Body,
) -> Response {
    if signed::is_signed(&headers) {
        signed::prompting(&state, method, uri, headers, body).await
    } else {
        legacy::handle::<Prompting>(state, peer, headers, body).await
    }
}

async fn metrics(State(state): State<Arc<AxonState>>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        state.metrics.render(&state.pipeline),
    )
        .into_response()
}

async fn healthz(State(state): State<Arc<AxonState>>) -> Response {
    let stats = state.pipeline.stats();
    axum::Json(serde_json::json!({
        "status": "ok",
        "hotkey": state.hotkey,
        "miner": state.pipeline.miner().name(),
        "queue_depth": stats.queue_depth,
        "in_flight": stats.in_flight,
    }))
    .into_response()
}

async fn not_found(State(state): State<Arc<AxonState>>, uri: Uri) -> Response {
    let name = uri.path().trim_start_matches('/');
    let available: Vec<String> = SYNAPSES.iter().map(|s| format!("'{s}'")).collect();
    let message = format!(
        "Synapse name '{name}' not found. Available synapses [{}]",
        available.join(", ")
    );
    state
        .metrics
        .observe("legacy", "unknown", 404, std::time::Duration::ZERO);
    (
        StatusCode::NOT_FOUND,
        [
            ("bt_header_axon_status_code", "404".to_string()),
            ("bt_header_axon_status_message", message.clone()),
        ],
        axum::Json(serde_json::json!({ "message": message })),
    )
        .into_response()
}
