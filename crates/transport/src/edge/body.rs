//! Reading a request body within the operator's size and time limits.

use std::time::Duration;

use axum::body::{Body, HttpBody};
use bytes::Bytes;
use http_body_util::{BodyExt, LengthLimitError, Limited};

/// Why a body could not be read.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum BodyReadError {
    /// Larger than the limit (HTTP 413).
    #[error("request body is larger than {limit} bytes")]
    TooLarge {
        /// The limit, bytes.
        limit: usize,
    },
    /// Not received in time (HTTP 408).
    #[error("request body not received within {seconds} seconds")]
    TimedOut {
        /// The read timeout, seconds.
        seconds: f64,
    },
    /// The connection failed while reading (HTTP 400).
    #[error("request body could not be read: {0}")]
    Broken(String),
}

impl BodyReadError {
    /// The HTTP status this error is answered with.
    pub fn status(&self) -> u16 {
        match self {
            BodyReadError::TooLarge { .. } => 413,
            BodyReadError::TimedOut { .. } => 408,
            BodyReadError::Broken(_) => 400,
        }
    }
}

/// Reads all of `body`, at most `limit` bytes, within `timeout`. A body whose declared
/// length (`Content-Length`) is over the limit is refused before anything is read.
pub async fn read_body(
    body: Body,
    limit: usize,
    timeout: Duration,
) -> Result<Bytes, BodyReadError> {
    if usize::try_from(body.size_hint().lower()).map_or(true, |declared| declared > limit) {
        return Err(BodyReadError::TooLarge { limit });
    }
    let limited = Limited::new(body, limit);
    match tokio::time::timeout(timeout, limited.collect()).await {
        Err(_) => Err(BodyReadError::TimedOut {
            seconds: timeout.as_secs_f64(),
        }),
        Ok(Err(err)) => {
            if err.downcast_ref::<LengthLimitError>().is_some() {
                Err(BodyReadError::TooLarge { limit })
            } else {
                Err(BodyReadError::Broken(err.to_string()))
            }
        }
        Ok(Ok(collected)) => Ok(collected.to_bytes()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn limits_size() {
        let ok = read_body(Body::from("hello"), 5, Duration::from_secs(1)).await;
        assert_eq!(ok.unwrap(), Bytes::from("hello"));
        let big = read_body(Body::from("hello!"), 5, Duration::from_secs(1)).await;
        assert!(matches!(big, Err(BodyReadError::TooLarge { limit: 5 })));
        // A stream of unknown length is cut at the limit.
        let chunks = ["hel", "lo!"].map(|chunk| Ok::<_, std::io::Error>(Bytes::from(chunk)));
        let streamed = Body::from_stream(futures::stream::iter(chunks));
        let big = read_body(streamed, 5, Duration::from_secs(1)).await;
        assert!(matches!(big, Err(BodyReadError::TooLarge { limit: 5 })));
    }

    #[tokio::test(start_paused = true)]
    async fn declared_lengths_over_the_limit_are_refused_unread() {
        // Nothing arrives: only the declared length can refuse it, and at once.
        let declared = SizedPending(6);
        let err = read_body(Body::new(declared), 5, Duration::from_secs(3))
            .await
            .unwrap_err();
        assert!(matches!(err, BodyReadError::TooLarge { limit: 5 }));
    }

    /// A body that declares `.0` bytes and never sends any.
    struct SizedPending(u64);

    impl HttpBody for SizedPending {
        type Data = Bytes;
        type Error = std::io::Error;

        fn poll_frame(
            self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
        ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, std::io::Error>>> {
            std::task::Poll::Pending
        }

        fn size_hint(&self) -> http_body::SizeHint {
            http_body::SizeHint::with_exact(self.0)
        }
    }

    #[tokio::test(start_paused = true)]
    async fn limits_time() {
        let stalled =
            Body::from_stream(futures::stream::pending::<Result<Bytes, std::io::Error>>());
        let err = read_body(stalled, 5, Duration::from_secs(3))
            .await
            .unwrap_err();
        assert_eq!(err.status(), 408);
        assert_eq!(
            err.to_string(),
            "request body not received within 3 seconds"
        );
    }
}
