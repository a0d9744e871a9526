//! The `prompting.v1.Miner` service over the pipeline, and its routes on the axon.

use std::pin::Pin;
use std::sync::Arc;

use axum::Router;
use futures::{Stream, StreamExt};
use prompting_miner::{PromptRequest, Protocol, SamplingOverrides};
use tokio::time::Instant;
use tonic::server::NamedService;
use tonic::{Request, Response, Status};

use super::auth::{Arrival, AuthenticatedService};
use super::proto::miner_server::{Miner, MinerServer};
use super::proto::{self, PromptChunk, PromptResponse};
use super::{METHOD_PROMPT, METHOD_PROMPT_STREAM};
use crate::btauth::VerifiedCaller;
use crate::deadline::{budget, deadline, parse_grpc_timeout};
use crate::edge::{AxonState, Rejection};

/// The handlers of `prompting.v1.Miner`: each call goes through the axon's pipeline as a
/// [`Protocol::Grpc`] request from the btauth/1-verified caller.
///
/// It trusts the [`VerifiedCaller`] its requests carry, so it is only served behind
/// [`AuthenticatedService`] (as [`routes`] does); a call without one is refused
/// `UNAUTHENTICATED`.
struct GrpcMiner {
    state: Arc<AxonState>,
}

impl GrpcMiner {
    /// The pipeline request of a verified call, with its deadline.
    fn pipeline_request(
        &self,
        request: Request<proto::PromptRequest>,
    ) -> Result<PromptRequest, Rejection> {
        let arrival = request
            .extensions()
            .get::<Arrival>()
            .map_or_else(Instant::now, |arrival| arrival.0);
        let caller = request
            .extensions()
            .get::<VerifiedCaller>()
            .map(|caller| caller.hotkey.clone())
            .ok_or(Rejection::Unauthenticated)?;
        let header_limit = match request.metadata().get("grpc-timeout") {
            None => None,
            Some(value) => {
                let value = value
                    .to_str()
                    .map_err(|_| Rejection::Malformed("grpc-timeout is not ASCII".into()))?;
                Some(parse_grpc_timeout(value)?)
            }
        };
        let message = request.into_inner();
        // proto3 cannot tell an unset `timeout` from 0: both mean the default.
        let requested = (message.timeout != 0.0).then_some(message.timeout);
        let mut budget = budget(requested, self.state.limits.max_request_timeout)?;
        if let Some(limit) = header_limit {
            budget = budget.min(limit);
        }
        let sampling = message
            .sampling
            .map(|sampling| SamplingOverrides {
                max_tokens: sampling.max_tokens,
                temperature: sampling.temperature,
                top_p: sampling.top_p,
            })
            .unwrap_or_default();
        Ok(PromptRequest {
            roles: message.roles,
            messages: message.messages,
            caller,
            protocol: Protocol::Grpc,
            deadline: deadline(arrival, budget),
            sampling,
            priority: None,
            report: Default::default(),
        })
    }
}

/// Logs a refused call and makes it a status.
fn refused(method: &str, rejection: Rejection) -> Status {
    let status = Status::from(rejection);
    tracing::debug!(method, code = ?status.code(), message = status.message(), "gRPC call failed");
    status
}

/// The stream of `PromptStream` answers.
type ChunkResults = Pin<Box<dyn Stream<Item = Result<PromptChunk, Status>> + Send + 'static>>;

#[tonic::async_trait]
impl Miner for GrpcMiner {
    async fn prompt(
        &self,
        request: Request<proto::PromptRequest>,
    ) -> Result<Response<PromptResponse>, Status> {
        let request = self
            .pipeline_request(request)
            .map_err(|rejection| refused("Prompt", rejection))?;
        match self.state.pipeline.prompt(request).await {
            Ok(completion) => Ok(Response::new(PromptResponse { completion })),
            Err(error) => Err(refused("Prompt", error.into())),
        }
    }

    type PromptStreamStream = ChunkResults;

    async fn prompt_stream(
        &self,
        request: Request<proto::PromptRequest>,
    ) -> Result<Response<ChunkResults>, Status> {
        let request = self
            .pipeline_request(request)
            .map_err(|rejection| refused("PromptStream", rejection))?;
        let caller = request.caller.clone();
        let failures = Arc::clone(&self.state.stream_failures);
        match self.state.pipeline.prompt_stream(request).await {
            Ok(stream) => {
                let chunks = stream.map(move |chunk| match chunk {
                    Ok(text) => Ok(PromptChunk { text }),
                    Err(error) => {
                        if let Some(suppressed) = failures.admit() {
                            tracing::warn!(caller = %caller, %error, suppressed, "gRPC stream failed midway");
                        }
                        Err(Status::from(Rejection::from(error)))
                    }
                });
                Ok(Response::new(Box::pin(chunks)))
            }
            Err(error) => Err(refused("PromptStream", error.into())),
        }
    }
}

/// The metrics route of a gRPC path: its method, or `unknown` for a path that names none of
/// this service's methods (so callers cannot mint label values).
fn method_label(path: &str) -> &'static str {
    match path {
        METHOD_PROMPT => "Prompt",
        METHOD_PROMPT_STREAM => "PromptStream",
        _ => "unknown",
    }
}

/// The gRPC routes (`/prompting.v1.Miner/{method}`) over `state`'s pipeline behind btauth/1,
/// checked by the axon's verifier (one replay store for every btauth/1 route), each call
/// counted as `grpc`/`{method}`. Merged into the axon's router, gRPC (h2c) and HTTP/1.1 share
/// the axon's port.
pub fn routes(state: Arc<AxonState>) -> Router {
    let path = format!("/{}/{{*method}}", MinerServer::<GrpcMiner>::NAME);
    let server = MinerServer::new(GrpcMiner {
        state: Arc::clone(&state),
    })
    .max_decoding_message_size(state.limits.max_body_bytes);
    let observe = state.metrics.layer_by_path("grpc", method_label);
    let service = tower::ServiceBuilder::new()
        .layer(observe)
        .service(AuthenticatedService::new(server, state));
    Router::new().route_service(&path, service)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_routes_are_the_method_names() {
        assert_eq!(method_label(METHOD_PROMPT), "Prompt");
        assert_eq!(method_label(METHOD_PROMPT_STREAM), "PromptStream");
        assert_eq!(method_label("/prompting.v1.Miner/Other"), "unknown");
    }
}
