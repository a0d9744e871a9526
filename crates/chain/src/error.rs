//! Everything that can go wrong talking to subtensor.

use std::time::Duration;

use crate::rejection::Rejection;

/// Errors of the chain client.
#[derive(Debug, thiserror::Error)]
pub enum ChainError {
    /// The endpoint could not be reached or the connection handshake failed.
    #[error("cannot connect to subtensor at {endpoint}: {reason}")]
    Connect {
        /// The endpoint tried.
        endpoint: String,
        /// What went wrong.
        reason: String,
    },
    /// A network wait exceeded its deadline.
    #[error("{what} timed out after {after:?}")]
    Timeout {
        /// The operation that timed out.
        what: &'static str,
        /// The deadline that was exceeded.
        after: Duration,
    },
    /// An RPC call, runtime-API call or submission failed.
    #[error("{what} failed: {reason}")]
    Rpc {
        /// The operation that failed.
        what: &'static str,
        /// The client's error text.
        reason: String,
    },
    /// The runtime metadata lacks something this client relies on.
    #[error("runtime metadata has no {0}")]
    MissingInMetadata(String),
    /// A runtime-API result could not be decoded with the metadata's types.
    #[error("cannot decode {what}: {reason}")]
    Decode {
        /// What was being decoded.
        what: &'static str,
        /// Why it failed.
        reason: String,
    },
    /// A decoded structure lacks a field this client reads (the runtime changed shape).
    #[error("{ty} has no field `{field}` (did the runtime change its shape?)")]
    MissingField {
        /// The structure that was decoded.
        ty: &'static str,
        /// The field that is missing.
        field: &'static str,
    },
    /// A decoded field does not have the expected kind of value.
    #[error("field `{field}` of {ty} is not {expected}")]
    FieldType {
        /// The structure that was decoded.
        ty: &'static str,
        /// The field in question.
        field: &'static str,
        /// What was expected (e.g. "an unsigned integer").
        expected: &'static str,
    },
    /// The miner's hotkey is not registered on the subnet.
    #[error(
        "Your hotkey {hotkey} is not registered on netuid {netuid}. Please register the hotkey using `btcli subnets register` before trying again"
    )]
    NotRegistered {
        /// SS58 address of the hotkey.
        hotkey: String,
        /// The subnet.
        netuid: u16,
    },
    /// A transaction was rejected by the pool or failed when dispatched.
    #[error("{call} was rejected: {reason}")]
    Rejected {
        /// The call (`serve_axon`, `set_weights`).
        call: &'static str,
        /// Why, in the chain's terms (pool code or pallet error, by name).
        reason: Rejection,
    },
    /// The axon address cannot be published: subtensor or validators would refuse it.
    #[error("cannot publish the axon address {addr} on chain: {why}")]
    UnservableAddress {
        /// The address.
        addr: std::net::SocketAddr,
        /// Why.
        why: &'static str,
    },
    /// Arguments that cannot be turned into a valid call.
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
}

impl ChainError {
    /// The chain's reason when a transaction was refused.
    pub fn rejection(&self) -> Option<&Rejection> {
        match self {
            ChainError::Rejected { reason, .. } => Some(reason),
            _ => None,
        }
    }

    /// Builds an [`ChainError::Rpc`] from any displayable client error.
    pub(crate) fn rpc(what: &'static str, err: impl std::fmt::Display) -> Self {
        ChainError::Rpc {
            what,
            reason: err.to_string(),
        }
    }
}

/// Runs `fut` with a deadline, turning an elapsed deadline into [`ChainError::Timeout`].
pub(crate) async fn with_timeout<T>(
    what: &'static str,
    after: Duration,
    fut: impl std::future::Future<Output = Result<T, ChainError>>,
) -> Result<T, ChainError> {
    match tokio::time::timeout(after, fut).await {
        Ok(result) => result,
        Err(_) => Err(ChainError::Timeout { what, after }),
    }
}
