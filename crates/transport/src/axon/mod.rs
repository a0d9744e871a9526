//! The axon: the miner's HTTP server. One port serves the legacy synapse routes,
//! `/metrics` and `/healthz`.

pub mod body;
pub mod config;
pub mod legacy;
pub mod nonce;
pub mod state;

use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use prompting_synapse::{Prompting, StreamPrompting, SynapseBody};
use tokio::net::TcpListener;

pub use config::{AxonArgs, AxonConfigError};
pub use legacy::PromptSynapse;
pub use state::{AxonState, PROTOCOL_VERSION};

use crate::server::{ServerLimits, serve};

/// The synapse routes this axon serves.
pub const SYNAPSES: [&str; 2] = [Prompting::NAME, StreamPrompting::NAME];

/// The axon's routes over `state`.
pub fn router(state: Arc<AxonState>) -> Router {
    Router::new()
        .route(
            &format!("/{}", Prompting::NAME),
            get(legacy::handle::<Prompting>).post(legacy::handle::<Prompting>),
        )
        .route(
            &format!("/{}", StreamPrompting::NAME),
            get(legacy::handle::<StreamPrompting>).post(legacy::handle::<StreamPrompting>),
        )
        .route("/metrics", get(metrics))
        .route("/healthz", get(healthz))
        .fallback(not_found)
        .with_state(state)
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
