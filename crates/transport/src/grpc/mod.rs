//! gRPC transport: the `prompting.v1.Miner` service (`proto/prompting/v1/miner.proto`) over
//! the same [`Pipeline`](prompting_miner::Pipeline) as the legacy axon, and a client for it.
//!
//! Every call is authenticated with btauth/1 ([`crate::btauth`]) over the call itself: the
//! signed method is `POST`, the target is the gRPC method path (e.g.
//! `/prompting.v1.Miner/Prompt`) and the body is the protobuf encoding of the request
//! message (the bytes of its gRPC frame, without the 5-byte prefix). The `x-bittensor-*`
//! values travel as request metadata.
//!
//! Serving: [`routes`] gives the gRPC routes (all under `/prompting.v1.Miner/`) as an
//! [`axum::Router`] without a fallback, which the axon merges so one port serves HTTP/1.1
//! and gRPC (h2c).
//!
//! Refusals map to gRPC codes as [`Rejection::grpc_code`](crate::edge::Rejection::grpc_code)
//! says; the pipeline's:
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

#[cfg(feature = "server")]
mod auth;
#[cfg(feature = "client")]
mod client;
pub mod proto;
#[cfg(feature = "server")]
mod service;

#[cfg(feature = "client")]
pub use client::{ChunkStream, GrpcClient, GrpcClientError};
#[cfg(feature = "server")]
pub use service::routes;

/// The signed target of `Prompt` calls.
pub const METHOD_PROMPT: &str = "/prompting.v1.Miner/Prompt";
/// The signed target of `PromptStream` calls.
pub const METHOD_PROMPT_STREAM: &str = "/prompting.v1.Miner/PromptStream";
