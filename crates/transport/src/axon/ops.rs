//! The operator's routes: `GET /metrics` (Prometheus) and `GET /healthz`.

use std::sync::Arc;

use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};

use crate::edge::AxonState;

/// `/metrics` and `/healthz` over `state` (not counted in the request metrics).
pub fn routes(state: Arc<AxonState>) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(healthz))
        .with_state(state)
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
    Json(serde_json::json!({
        "status": "ok",
        "hotkey": state.hotkey,
        "miner": state.pipeline.miner().name(),
        "queue_depth": stats.queue_depth,
        "in_flight": stats.in_flight,
    }))
    .into_response()
}
