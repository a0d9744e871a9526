//! The dendrite: the client side of the legacy synapse protocol, what a validator uses to
//! query miners' axons, wire-compatible with the Python `bittensor` 10.5 `Dendrite`.
//!
//! * [`Dendrite`]: one identity (an sr25519 hotkey, a uuid1 string, a strictly increasing
//!   nonce) and one pooled HTTP client, cheap to clone.
//! * [`legacy`]: the calls — [`Dendrite::call`] (one JSON response),
//!   [`Dendrite::call_stream`] (`StreamPrompting`, text chunks) and
//!   [`Dendrite::query_many`] (fan-out, order kept, bounded concurrency).
//! * [`DendriteResponse`]: what the caller learns, as Python's client view: the filled
//!   synapse, the status code and message (the axon's, or the client-side failure's
//!   translated as Python's `process_error_message` does), the round-trip time and whether
//!   the axon's response signature verified.
//!
//! ```no_run
//! use std::time::Duration;
//! use prompting_keys::Keypair;
//! use prompting_synapse::{Prompting, Synapse};
//! use prompting_transport::dendrite::{AxonTarget, Dendrite};
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let dendrite = Dendrite::new(Keypair::generate().0)?;
//! let target = AxonTarget::new(
//!     "127.0.0.1:8091".parse()?,
//!     "5EHgWw2Af1pnoc7f1A8bfmM97W3DAYW8xr82RfhLL9oAabAe",
//! );
//! let synapse = Synapse::new(Prompting::new(vec!["user".into()], vec!["hi".into()]));
//! let response = dendrite.call(&target, synapse, Duration::from_secs(12)).await;
//! println!("{} {}: {}", response.status_code, response.status_message,
//!     response.synapse.body.completion);
//! # Ok(())
//! # }
//! ```

pub mod btauth;
mod client;
pub mod error;
pub mod legacy;
pub mod response;
pub mod target;
mod utf8;

pub use btauth::{BtAuthCallError, BtAuthClient};
pub use client::{
    DEFAULT_DENDRITE_IP, DEFAULT_MAX_CONCURRENCY, DEFAULT_MAX_RESPONSE_BYTES, DENDRITE_VERSION,
    Dendrite, DendriteBuilder,
};
pub use error::{CallFailure, DendriteError};
pub use legacy::StreamItem;
pub use response::DendriteResponse;
pub use target::AxonTarget;
