//! Transports in front of the miner pipeline: the axon (HTTP server) and dendrite (client)
//! of the legacy synapse protocol, btauth/1, an OpenAI-compatible endpoint and gRPC.
//!
//! Shared by both sides: [`clock`], [`nonce`], [`deadline`], [`btauth`]. Client side:
//! [`dendrite`], the gRPC client in [`grpc`]. Server side: the protocols ([`legacy`],
//! [`btauth_json`], [`openai`], [`grpc`]), what their routes share ([`edge`]), the
//! [`axon`] that assembles them, its flags ([`config`]) and the HTTP [`server`] loop.

//!
//! Cargo features: `client` and `server` (both by default) select the sides; `cli` adds clap
//! `Args` to the server's flag types. A validator that only calls miners depends on
//! `default-features = false, features = ["client"]` and builds no HTTP server, no miner
//! pipeline and no clap (`examples/validator.rs`).

pub mod btauth;
pub mod clock;
pub mod deadline;
pub mod grpc;
pub mod nonce;

#[cfg(feature = "client")]
pub mod dendrite;

#[cfg(feature = "server")]
pub mod api_key;
#[cfg(feature = "server")]
pub mod axon;
#[cfg(feature = "server")]
pub mod btauth_json;
#[cfg(feature = "server")]
pub mod caller_class;
#[cfg(feature = "server")]
pub mod config;
#[cfg(feature = "server")]
pub mod edge;
#[cfg(feature = "server")]
pub mod legacy;
#[cfg(feature = "server")]
pub mod openai;
#[cfg(feature = "server")]
pub mod server;
