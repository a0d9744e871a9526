//! Transports in front of the miner pipeline: the axon (HTTP server) and dendrite (client)
//! of the legacy synapse protocol, btauth/1, an OpenAI-compatible endpoint and gRPC.

pub mod axon;
pub mod btauth;
pub mod clock;
pub mod dendrite;
pub mod grpc;
pub mod metrics;
pub mod nonce;
pub mod openai;
pub mod server;
