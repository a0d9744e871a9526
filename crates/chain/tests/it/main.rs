//! The chain crate's integration tests, one binary (ripgrep-style): each module is one former
//! test file; `common` holds their shared helpers (the finney metadata, synthetic neurons, test
//! keys) and the loopback subtensor node (`common::node`, also used by crates/service's tests).

mod common;

mod decode_neurons;
mod loopback_extrinsics;
mod loopback_sync;
mod runtime_rules;
