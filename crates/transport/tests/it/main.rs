//! The transport's integration tests, one binary (ripgrep-style): each module is one former
//! test file; `common` and `dendrite_support` are their shared helpers.

mod common;
mod dendrite_support;

mod axon_btauth;
mod axon_python_dendrite;
mod axon_replay;
mod btauth_python;
mod btauth_vectors;
mod dendrite_python_axon;
mod dendrite_vectors;
mod grpc_pipeline;
mod hardening;
mod proto_generated;
