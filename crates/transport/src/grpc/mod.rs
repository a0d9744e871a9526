//! gRPC transport: the `prompting.v1.Miner` service (`proto/prompting/v1/miner.proto`) over
//! the same [`Pipeline`](prompting_miner::Pipeline) as the legacy axon, and a client for it.
//!
//! Every call is authenticated with btauth/1 ([`crate::btauth`]) over the call itself: the
//! signed method is `POST`, the target is the gRPC method path (e.g.
//! `/prompting.v1.Miner/Prompt`) and the body is the protobuf encoding of the request
//! message (the bytes of its gRPC frame, without the 5-byte prefix). The `x-bittensor-*`
//! values travel as request metadata.
//!
//! Serving: [`router`] gives the gRPC routes (all under `/prompting.v1.Miner/`) as an
//! [`axum::Router`] without a fallback, to merge into the axon's router so one port serves
//! HTTP/1.1 and gRPC (h2c); [`GrpcArgs`] adds an optional separate `--grpc.port` listener.
//!
//! Pipeline errors map to gRPC codes (see [`status_of`]):
//!
//! | miner error | HTTP | gRPC |
//! |---|---|---|
//! | bad request | 400 | `INVALID_ARGUMENT` |
//! | blacklisted | 403 | `PERMISSION_DENIED` |
//! | timeout | 408 | `DEADLINE_EXCEEDED` |
//! | backend error | 500 | `INTERNAL` |
//! | overloaded | 503 | `RESOURCE_EXHAUSTED` |
//!
//! A request that fails btauth/1 gets `UNAUTHENTICATED` with the verifier's message.

mod args;
mod auth;
mod client;
mod deadline;
pub mod proto;
mod service;
mod status;

pub use args::GrpcArgs;
pub use auth::{AuthenticatedService, METHOD_PROMPT, METHOD_PROMPT_STREAM};
pub use client::{ChunkStream, GrpcClient, GrpcClientError};
pub use deadline::{DEFAULT_TIMEOUT_S, parse_grpc_timeout};
pub use service::{GrpcMiner, router, serve, service};
pub use status::{code_of, status_of};
