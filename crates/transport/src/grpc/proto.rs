//! Code generated from `proto/prompting/v1/miner.proto` (package `prompting.v1`): the
//! messages, `miner_client` (feature `client`) and `miner_server` (feature `server`).
//!
//! The generated file is committed, so building needs no `protoc`;
//! `tests/it/proto_generated.rs` checks it is what `tonic-prost-build` makes of the proto
//! today.

#![allow(missing_docs, clippy::all, clippy::pedantic)]

include!("generated/prompting.v1.rs");
