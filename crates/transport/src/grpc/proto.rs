//! Code generated from `proto/prompting/v1/miner.proto` (package `prompting.v1`): the
//! messages, [`miner_server`] and [`miner_client`].

#![allow(missing_docs, clippy::all, clippy::pedantic)]

tonic::include_proto!("prompting.v1");
