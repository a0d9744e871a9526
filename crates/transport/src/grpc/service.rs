//! The `prompting.v1.Miner` service over the pipeline, and how it is served.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use axum::Router;
use futures::{Stream, StreamExt};
use prompting_miner::{PromptRequest, Protocol, SamplingOverrides};
use tokio::net::TcpListener;
use tokio::time::Instant;
use tonic::server::NamedService;
use tonic::{Request, Response, Status};

use super::auth::{Arrival, AuthenticatedService};
use super::deadline::budget;
use super::proto::miner_server::{Miner, MinerServer};
use super::proto::{self, PromptChunk, PromptResponse};
use super::status::{http_status_of, status_of};
use crate::axon::AxonState;
use crate::btauth::{BtAuthVerifier, VerifiedCaller};
use crate::server::ServerLimits;

/// The handlers of `prompting.v1.Miner`: each call goes through the axon's pipeline as a
/// [`Protocol::Grpc`] request from the btauth/1-verified caller.
///
/// It trusts the [`VerifiedCaller`] its requests carry, so serve it only behind
/// [`AuthenticatedService`] (as [`service`] and [`router`] do); a call without one is
/// refused `UNAUTHENTICATED`.
pub struct GrpcMiner {
    state: Arc<AxonState>,
}

impl GrpcMiner {
    /// Handlers over `state`'s pipeline.
    pub fn new(state: Arc<AxonState>) -> Self {
        GrpcMiner { state }
    }

    /// The pipeline request of a verified call, with its deadline.
    fn pipeline_request(
        &self,
        request: Request<proto::PromptRequest>,
        arrival: Instant,
    ) -> Result<PromptRequest, Status> {
        let caller = request
            .extensions()
            .get::<VerifiedCaller>()
            .map(|caller| caller.hotkey.clone())
            .ok_or_else(|| Status::unauthenticated("btauth/1 verification is required"))?;
        let grpc_timeout = match request.metadata().get("grpc-timeout") {
            None => None,
            Some(value) => Some(
                value
                    .to_str()
                    .map_err(|_| Status::invalid_argument("grpc-timeout is not ASCII"))?
                    .to_string(),
            ),
        };
        let message = request.into_inner();
        let budget = budget(
            message.timeout,
            grpc_timeout.as_deref(),
            self.state.limits.max_request_timeout,
        )
        .map_err(Status::invalid_argument)?;
        let sampling = message
            .sampling
            .map(|sampling| SamplingOverrides {
                max_tokens: sampling.max_tokens,
                temperature: sampling.temperature,
                top_p: sampling.top_p,
            })
            .unwrap_or_default();
        let request = PromptRequest {
            roles: message.roles,
            messages: message.messages,
            caller,
            protocol: Protocol::Grpc,
            deadline: arrival + budget,
            sampling,
            report: Default::default(),
        };
        Ok(request)
    }

    fn observe(&self, route: &str, status: Option<&Status>, arrival: Instant) {
        let code = status.map_or(tonic::Code::Ok, Status::code);
        self.state
            .metrics
            .observe("grpc", route, http_status_of(code), arrival.elapsed());
    }

    fn refused(&self, route: &str, status: Status, arrival: Instant) -> Status {
        tracing::debug!(route, code = ?status.code(), message = status.message(), "gRPC call failed");
        self.observe(route, Some(&status), arrival);
        status
    }
}

/// When the call arrived (set by [`AuthenticatedService`]), else now.
fn arrival_of<T>(request: &Request<T>) -> Instant {
    request
        .extensions()
        .get::<Arrival>()
        .map_or_else(Instant::now, |arrival| arrival.0)
}

/// The stream of `PromptStream` answers.
type ChunkResults = Pin<Box<dyn Stream<Item = Result<PromptChunk, Status>> + Send + 'static>>;

#[tonic::async_trait]
impl Miner for GrpcMiner {
    async fn prompt(
        &self,
        request: Request<proto::PromptRequest>,
    ) -> Result<Response<PromptResponse>, Status> {
        let arrival = arrival_of(&request);
        let request = self
            .pipeline_request(request, arrival)
            .map_err(|status| self.refused("Prompt", status, arrival))?;
        match self.state.pipeline.prompt(request).await {
            Ok(completion) => {
                self.observe("Prompt", None, arrival);
                Ok(Response::new(PromptResponse { completion }))
            }
            Err(error) => Err(self.refused("Prompt", status_of(&error), arrival)),
        }
    }

    type PromptStreamStream = ChunkResults;

    async fn prompt_stream(
        &self,
        request: Request<proto::PromptRequest>,
    ) -> Result<Response<ChunkResults>, Status> {
        let arrival = arrival_of(&request);
        let request = self
            .pipeline_request(request, arrival)
            .map_err(|status| self.refused("PromptStream", status, arrival))?;
        let caller = request.caller.clone();
        match self.state.pipeline.prompt_stream(request).await {
            Ok(stream) => {
                self.observe("PromptStream", None, arrival);
                let chunks = stream.map(move |chunk| match chunk {
                    Ok(text) => Ok(PromptChunk { text }),
                    Err(error) => {
                        tracing::warn!(caller = %caller, %error, "gRPC stream failed midway");
                        Err(status_of(&error))
                    }
                });
                Ok(Response::new(Box::pin(chunks)))
            }
            Err(error) => Err(self.refused("PromptStream", status_of(&error), arrival)),
        }
    }
}

/// The `prompting.v1.Miner` service over `state`'s pipeline behind btauth/1, checked by the
/// axon's verifier (one replay store for every btauth/1 route). A tower service of `http`
/// requests, usable with `tonic::transport::Server` too.
pub fn service(state: Arc<AxonState>) -> AuthenticatedService<MinerServer<GrpcMiner>> {
    let verifier: Arc<BtAuthVerifier> = Arc::clone(&state.btauth);
    let max_message = state.limits.max_body_bytes;
    let server =
        MinerServer::new(GrpcMiner::new(Arc::clone(&state))).max_decoding_message_size(max_message);
    AuthenticatedService::new(server, state, verifier)
}

/// The gRPC routes (`/prompting.v1.Miner/{method}`) of [`service`], without a fallback:
/// `axon::router` merges them, so gRPC (h2c) and HTTP/1.1 share the axon's port.
pub fn router(state: Arc<AxonState>) -> Router {
    let path = format!("/{}/{{*method}}", MinerServer::<GrpcMiner>::NAME);
    Router::new().route_service(&path, service(state))
}

/// Serves only the gRPC routes on `listener` (the `--grpc.port` listener) with `limits` until
/// `shutdown` resolves.
pub async fn serve(
    listener: TcpListener,
    state: Arc<AxonState>,
    limits: ServerLimits,
    shutdown: impl Future<Output = ()> + Send,
) -> std::io::Result<()> {
    crate::server::serve(listener, router(state), limits, shutdown).await
}
