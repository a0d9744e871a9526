//! What every protocol route of the axon shares, whatever its wire: the state, reading a body
//! within the limits, btauth/1 authentication, the rejection type and its renderings, and the
//! request metrics layer (the deadline rule is [`crate::deadline`], shared with the clients).
//!
//! Protocol modules ([`crate::legacy`], [`crate::btauth_json`], [`crate::openai`],
//! [`crate::grpc`]) import this module and expose their `routes`; [`crate::axon`] assembles
//! them. This module imports neither.

pub mod auth;
pub mod body;
pub mod metrics;
pub mod rejection;
pub mod state;

pub use body::{BodyReadError, read_body};
pub use metrics::{Metrics, ObserveLayer};
pub use rejection::{OpenAiRejection, Rejection};
pub use state::{AxonState, RequestLimits};
