//! The gRPC client: `prompting.v1.Miner` calls signed with btauth/1.

use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use futures::{Stream, StreamExt};
use http::Method;
use prompting_keys::Keypair;
use prost::Message;
use tokio::time::Instant;
use tonic::Code;
use tonic::metadata::MetadataMap;
use tonic::transport::{Channel, Endpoint};

use super::proto::miner_client::MinerClient;
use super::proto::{self, PromptChunk};
use super::{METHOD_PROMPT, METHOD_PROMPT_STREAM};
use crate::btauth::{BtAuthSignError, BtAuthSigner};
use crate::deadline::{DEFAULT_TIMEOUT_S, TimeoutError, budget, deadline};
use crate::nonce::NonceSource;

/// Time the client waits past a call's own timeout for the server's answer (its
/// `DEADLINE_EXCEEDED` included) before giving up itself.
const GRACE: Duration = Duration::from_secs(2);

/// Time to open the connection.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Why a call failed.
#[derive(Debug, thiserror::Error)]
pub enum GrpcClientError {
    /// The endpoint is not a usable address.
    #[error("invalid gRPC endpoint {endpoint:?}: {reason}")]
    InvalidEndpoint {
        /// The endpoint given.
        endpoint: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The connection could not be opened.
    #[error("cannot connect to the gRPC endpoint: {0}")]
    Connect(#[source] tonic::transport::Error),
    /// The request could not be signed.
    #[error("cannot sign the request: {0}")]
    Sign(#[from] BtAuthSignError),
    /// The timeout is negative or not finite.
    #[error(transparent)]
    InvalidTimeout(#[from] TimeoutError),
    /// The server (or the connection) answered with a status other than `OK`.
    #[error("gRPC status {:?}: {}", .0.code(), .0.message())]
    Status(#[from] tonic::Status),
    /// No answer arrived within the timeout (plus a grace period).
    #[error("no answer within {0} seconds")]
    TimedOut(f64),
}

impl GrpcClientError {
    /// The gRPC code of a [`GrpcClientError::Status`] error.
    pub fn code(&self) -> Option<Code> {
        match self {
            GrpcClientError::Status(status) => Some(status.code()),
            _ => None,
        }
    }
}

/// The text chunks of a streamed completion, in order; an error ends the stream.
pub type ChunkStream = Pin<Box<dyn Stream<Item = Result<String, GrpcClientError>> + Send>>;

/// A connection to one miner's `prompting.v1.Miner` service, signing every call as one
/// hotkey for that miner's hotkey. Cheap to clone; clones share the connection and nonces.
#[derive(Clone)]
pub struct GrpcClient {
    client: MinerClient<Channel>,
    signer: Arc<BtAuthSigner<Keypair>>,
    receiver: String,
}

impl std::fmt::Debug for GrpcClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GrpcClient")
            .field("signer", &self.signer)
            .field("receiver", &self.receiver)
            .finish_non_exhaustive()
    }
}

impl GrpcClient {
    /// Connects (h2c) to `endpoint` (`host:port` or `http://host:port`), to call the miner
    /// whose hotkey is `receiver_hotkey` as `keypair`.
    pub async fn connect(
        endpoint: &str,
        keypair: Keypair,
        receiver_hotkey: impl Into<String>,
    ) -> Result<GrpcClient, GrpcClientError> {
        let uri = if endpoint.contains("://") {
            endpoint.to_string()
        } else {
            format!("http://{endpoint}")
        };
        let invalid = |reason: String| GrpcClientError::InvalidEndpoint {
            endpoint: endpoint.to_string(),
            reason,
        };
        let channel = Endpoint::from_shared(uri)
            .map_err(|error| invalid(error.to_string()))?
            .connect_timeout(CONNECT_TIMEOUT)
            .connect()
            .await
            .map_err(GrpcClientError::Connect)?;
        Ok(GrpcClient {
            client: MinerClient::new(channel),
            signer: Arc::new(BtAuthSigner::new(keypair, NonceSource::new())),
            receiver: receiver_hotkey.into(),
        })
    }

    /// The completion of the conversation (`roles` aligned with `messages`), waiting up to
    /// `timeout` (zero: the server's default of 12 s).
    pub async fn prompt(
        &self,
        roles: Vec<String>,
        messages: Vec<String>,
        timeout: Duration,
    ) -> Result<String, GrpcClientError> {
        self.send(request(roles, messages, timeout)).await
    }

    /// Like [`GrpcClient::prompt`], as text chunks. A refusal (authentication, blacklist,
    /// overload) is the `Err`; a failure after the first chunk ends the stream with an error.
    pub async fn prompt_stream(
        &self,
        roles: Vec<String>,
        messages: Vec<String>,
        timeout: Duration,
    ) -> Result<ChunkStream, GrpcClientError> {
        self.send_stream(request(roles, messages, timeout)).await
    }

    /// Calls `Prompt` with a request of your own (e.g. with sampling settings).
    pub async fn send(&self, request: proto::PromptRequest) -> Result<String, GrpcClientError> {
        let deadline = local_deadline(request.timeout)?;
        let signed = self.sign(METHOD_PROMPT, request)?;
        let mut client = self.client.clone();
        match tokio::time::timeout_at(deadline.at, client.prompt(signed)).await {
            Ok(Ok(response)) => Ok(response.into_inner().completion),
            Ok(Err(status)) => Err(GrpcClientError::Status(status)),
            Err(_) => Err(GrpcClientError::TimedOut(deadline.seconds)),
        }
    }

    /// Calls `PromptStream` with a request of your own.
    pub async fn send_stream(
        &self,
        request: proto::PromptRequest,
    ) -> Result<ChunkStream, GrpcClientError> {
        let deadline = local_deadline(request.timeout)?;
        let signed = self.sign(METHOD_PROMPT_STREAM, request)?;
        let mut client = self.client.clone();
        let chunks = match tokio::time::timeout_at(deadline.at, client.prompt_stream(signed)).await
        {
            Ok(Ok(response)) => response.into_inner(),
            Ok(Err(status)) => return Err(GrpcClientError::Status(status)),
            Err(_) => return Err(GrpcClientError::TimedOut(deadline.seconds)),
        };
        Ok(bounded(chunks, deadline))
    }

    /// The request with its btauth/1 metadata over the message's protobuf encoding (the
    /// exact bytes the call sends: prost's encoding is deterministic).
    fn sign(
        &self,
        method: &str,
        message: proto::PromptRequest,
    ) -> Result<tonic::Request<proto::PromptRequest>, GrpcClientError> {
        let body = message.encode_to_vec();
        let headers = self
            .signer
            .sign(&Method::POST, method, &body, Some(&self.receiver))?;
        Ok(tonic::Request::from_parts(
            MetadataMap::from_headers(headers),
            tonic::Extensions::default(),
            message,
        ))
    }
}

fn request(roles: Vec<String>, messages: Vec<String>, timeout: Duration) -> proto::PromptRequest {
    proto::PromptRequest {
        roles,
        messages,
        timeout: timeout.as_secs_f64(),
        sampling: None,
    }
}

/// When the client stops waiting for a call with `timeout_s` seconds.
#[derive(Debug, Clone, Copy)]
struct LocalDeadline {
    at: Instant,
    seconds: f64,
}

/// The deadline rule of the server ([`crate::deadline`]: 0 is the default) without its cap,
/// plus [`GRACE`].
fn local_deadline(timeout_s: f64) -> Result<LocalDeadline, GrpcClientError> {
    let requested = (timeout_s != 0.0).then_some(timeout_s);
    let wait = budget(requested, f64::INFINITY)?;
    let at = deadline(Instant::now(), wait.saturating_add(GRACE));
    Ok(LocalDeadline {
        at,
        seconds: requested.unwrap_or(DEFAULT_TIMEOUT_S),
    })
}

/// `chunks` as text, ending with [`GrpcClientError::TimedOut`] at `deadline` and after the
/// first error.
fn bounded(chunks: tonic::Streaming<PromptChunk>, deadline: LocalDeadline) -> ChunkStream {
    let stream = futures::stream::unfold(Some(chunks), move |chunks| async move {
        let mut chunks = chunks?;
        match tokio::time::timeout_at(deadline.at, chunks.next()).await {
            Ok(Some(Ok(chunk))) => Some((Ok(chunk.text), Some(chunks))),
            Ok(Some(Err(status))) => Some((Err(GrpcClientError::Status(status)), None)),
            Ok(None) => None,
            Err(_) => Some((Err(GrpcClientError::TimedOut(deadline.seconds)), None)),
        }
    });
    Box::pin(stream)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zero_timeouts_wait_for_the_server_default() {
        let before = Instant::now();
        let deadline = local_deadline(0.0).expect("zero is the default");
        assert_eq!(deadline.seconds, DEFAULT_TIMEOUT_S);
        assert!(deadline.at >= before + Duration::from_secs(12) + GRACE);
        let deadline = local_deadline(1.5).expect("positive");
        assert_eq!(deadline.seconds, 1.5);
        assert!(deadline.at < before + Duration::from_secs(12));
    }

    #[test]
    fn signed_bodies_are_the_documented_encoding() {
        // The example of the "gRPC" section of docs/protocols.md.
        let message = request(
            vec!["user".into()],
            vec!["What is the capital of France?".into()],
            Duration::from_secs(12),
        );
        let body = message.encode_to_vec();
        assert_eq!(
            hex::encode(&body),
            "0a0475736572121e5768617420697320746865206361706974616c206f66204672616e63653f190000000000002840"
        );
        assert_eq!(
            crate::btauth::body_sha256_hex(&body),
            "345b50158a54df8f049435192d9eb8f21447a556eba5fa71663fe14568dcbfde"
        );
    }

    #[test]
    fn unusable_timeouts_are_refused() {
        for timeout in [-1.0, f64::NAN, f64::INFINITY] {
            assert!(matches!(
                local_deadline(timeout),
                Err(GrpcClientError::InvalidTimeout(TimeoutError::NotPositive(
                    _
                )))
            ));
        }
        assert!(local_deadline(1e300).is_ok());
    }
}
