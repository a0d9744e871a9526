//! btauth/1 in front of the generated service: reads the call's single request message,
//! verifies the signature over it and hands the caller to the handlers.

use std::convert::Infallible;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::Full;
use tokio::time::Instant;
use tonic::Status;
use tonic::body::Body as TonicBody;
use tonic::codegen::{BoxFuture, Service, StdError};
use tonic::server::NamedService;

use prompting_miner::Protocol;

use crate::btauth::VerifiedCaller;
use crate::edge::auth::{read, refuse_claimed, verify};
use crate::edge::{AxonState, Rejection};

/// Length of the gRPC message prefix: compression flag and big-endian length.
const FRAME_PREFIX: usize = 5;

/// When the call arrived: its deadline counts from here.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Arrival(pub(crate) Instant);

/// A gRPC service behind btauth/1: every call must carry exactly one uncompressed request
/// message signed by its sender (see [`crate::grpc`]). Verified calls reach `S` with the
/// [`VerifiedCaller`] in their extensions; others are answered `UNAUTHENTICATED` (or
/// `INVALID_ARGUMENT`, `RESOURCE_EXHAUSTED`, `DEADLINE_EXCEEDED`, `UNIMPLEMENTED` when the
/// message cannot be read) without reaching `S`.
#[derive(Clone)]
pub(crate) struct AuthenticatedService<S> {
    inner: S,
    state: Arc<AxonState>,
}

impl<S> std::fmt::Debug for AuthenticatedService<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuthenticatedService")
            .field("hotkey", &self.state.hotkey())
            .finish_non_exhaustive()
    }
}

impl<S> AuthenticatedService<S> {
    /// `inner` behind the axon's btauth/1 verifier, reading bodies within `state`'s request
    /// limits.
    pub(crate) fn new(inner: S, state: Arc<AxonState>) -> Self {
        AuthenticatedService { inner, state }
    }
}

impl<S: NamedService> NamedService for AuthenticatedService<S> {
    const NAME: &'static str = S::NAME;
}

impl<S, B> Service<Request<B>> for AuthenticatedService<S>
where
    S: Service<Request<Full<Bytes>>, Response = Response<TonicBody>, Error = Infallible>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    B: tonic::codegen::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<StdError>,
{
    type Response = Response<TonicBody>;
    type Error = Infallible;
    type Future = BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        // The clone is the one polled ready; keep it for this call.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let state = Arc::clone(&self.state);
        Box::pin(async move {
            let arrival = Instant::now();
            match authenticate(&state, request).await {
                Ok(mut request) => {
                    request.extensions_mut().insert(Arrival(arrival));
                    inner.call(request).await
                }
                Err((path, rejection)) => {
                    let status = Status::from(rejection);
                    tracing::debug!(path, code = ?status.code(), message = status.message(), "gRPC call refused");
                    Ok(status.into_http())
                }
            }
        })
    }
}

/// Reads the call's message and verifies its signature; on failure, the call's path (for the
/// log) and why.
async fn authenticate<B>(
    state: &AxonState,
    request: Request<B>,
) -> Result<Request<Full<Bytes>>, (String, Rejection)>
where
    B: tonic::codegen::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<StdError>,
{
    let (mut parts, body) = request.into_parts();
    let checked = async {
        refuse_claimed(state, &parts.headers, Protocol::Grpc)?;
        let bytes = read(state, axum::body::Body::new(body)).await?;
        let message = single_message(&bytes)?;
        let caller: VerifiedCaller =
            verify(state, &parts.method, &parts.uri, &parts.headers, message)?;
        Ok::<_, Rejection>((bytes, caller))
    };
    match checked.await {
        Ok((bytes, caller)) => {
            parts.extensions.insert(caller);
            Ok(Request::from_parts(parts, Full::new(bytes)))
        }
        Err(rejection) => Err((parts.uri.path().to_owned(), rejection)),
    }
}

/// The message bytes of a body holding exactly one uncompressed gRPC message.
fn single_message(body: &[u8]) -> Result<&[u8], Rejection> {
    let not_one = || Rejection::Malformed("the call must carry exactly one request message".into());
    let Some((prefix, rest)) = body.split_first_chunk::<FRAME_PREFIX>() else {
        return Err(not_one());
    };
    if prefix[0] != 0 {
        return Err(Rejection::Unsupported(
            "compressed request messages are not supported",
        ));
    }
    let length = u32::from_be_bytes([prefix[1], prefix[2], prefix[3], prefix[4]]);
    if usize::try_from(length).ok() != Some(rest.len()) {
        return Err(not_one());
    }
    Ok(rest)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tonic::Code;

    fn frame(flag: u8, message: &[u8]) -> Vec<u8> {
        let mut body = vec![flag];
        body.extend_from_slice(&(message.len() as u32).to_be_bytes());
        body.extend_from_slice(message);
        body
    }

    #[test]
    fn one_frame_yields_its_message() {
        assert_eq!(single_message(&frame(0, b"abc")).ok(), Some(&b"abc"[..]));
        assert_eq!(single_message(&frame(0, b"")).ok(), Some(&b""[..]));
    }

    #[test]
    fn other_bodies_are_refused() {
        let mut two = frame(0, b"abc");
        two.extend(frame(0, b"def"));
        let truncated = &frame(0, b"abc")[..6];
        for body in [&b""[..], &b"\0\0\0"[..], truncated, &two] {
            let rejection = single_message(body).expect_err("refused");
            assert_eq!(rejection.grpc_code(), Code::InvalidArgument, "{body:?}");
        }
        let rejection = single_message(&frame(1, b"abc")).expect_err("compressed");
        assert_eq!(rejection.grpc_code(), Code::Unimplemented);
    }
}
