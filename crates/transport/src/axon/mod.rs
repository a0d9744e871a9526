//! The axon: the miner's server. It assembles the protocols' routes on one port: the legacy
//! synapse routes ([`crate::legacy`]), btauth/1-signed `/Prompting` ([`crate::btauth_json`]),
//! the OpenAI-compatible `/v1/*` routes ([`crate::openai`]), gRPC over h2c ([`crate::grpc`]),
//! `/metrics` and `/healthz` ([`ops`]); [`run`] serves them with the connection limits of
//! [`crate::server`].

mod divert;
pub mod ops;

use std::sync::Arc;

use axum::Router;
use tokio::net::TcpListener;

pub use crate::config::{AxonArgs, AxonConfigError};
pub use crate::edge::AxonState;
pub use crate::legacy::{PROTOCOL_VERSION, PromptSynapse, SYNAPSES};

use crate::server::{ServerLimits, serve};
use crate::{btauth_json, grpc, legacy, openai};
use divert::Divert;

/// The axon's routes over `state`: legacy synapses, btauth/1, OpenAI-compatible, gRPC,
/// metrics and health; any other path is answered as an unknown synapse.
///
/// `POST /Prompting` is both the legacy synapse and bittensor 11's btauth/1 JSON: requests
/// carrying `X-Bittensor-Version` go to the latter ([`btauth_json::claims`]).
pub fn router(state: Arc<AxonState>) -> Router {
    let signed = btauth_json::routes(Arc::clone(&state));
    Router::new()
        .merge(
            legacy::routes(Arc::clone(&state))
                .route_layer(Divert::new(btauth_json::claims, signed)),
        )
        .merge(openai::routes(Arc::clone(&state)))
        .merge(grpc::routes(Arc::clone(&state)))
        .merge(ops::routes(Arc::clone(&state)))
        .fallback_service(legacy::unknown_synapse(&state))
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
