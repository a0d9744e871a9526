//! Transports in front of the miner pipeline: the axon (HTTP server) and dendrite (client)
//! of the legacy synapse protocol, btauth/1, an OpenAI-compatible endpoint and gRPC.
//!
//! Shared by both sides: [`clock`], [`nonce`], [`deadline`], [`btauth`]. Client side:
//! [`dendrite`], the gRPC client in [`grpc`]. Server side: the protocols ([`legacy`],
//! [`btauth_json`], [`openai`], [`grpc`]), what their routes share ([`edge`]), the
//! [`axon`] that assembles them, its flags ([`config`]) and the HTTP [`server`] loop.

pub mod axon;
pub mod btauth;
pub mod btauth_json;
pub mod caller_class;
pub mod clock;
pub mod config;
pub mod deadline;
pub mod dendrite;
pub mod edge;
pub mod grpc;
pub mod legacy;
pub mod nonce;
pub mod openai;
pub mod server;
