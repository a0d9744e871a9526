//! The synapse crate's integration tests, one binary (ripgrep-style): each module is one former
//! test file; `common` holds their shared helpers (raw HTTP messages, the v6 `Dummy` synapse,
//! running `python3`).

mod common;

mod against_cpython;
mod bittensor_interop;
mod body_hash_vectors;
mod legacy_exchanges;
mod v6_wire;
