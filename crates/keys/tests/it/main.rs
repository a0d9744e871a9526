//! The keys crate's integration tests, one binary (ripgrep-style): each module is one former
//! test file; `support` holds their shared helpers (fixture paths, a tiny HTTP message splitter).

mod support;

mod nacl_vectors;
mod python_interop;
mod signature_vectors;
mod wallet_vectors;
