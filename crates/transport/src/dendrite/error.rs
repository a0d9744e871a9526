//! What can go wrong on the client side, and how Python's dendrite reports it.
//!
//! Python's `Dendrite.call` catches every exception of a call and turns it into a status
//! code and message in `synapse.dendrite` (`process_error_message`, bittensor 10.5):
//!
//! | failure (aiohttp exception) | code | message |
//! | --- | --- | --- |
//! | total timeout (`asyncio.TimeoutError`) | 408 | `Request timeout after {timeout} seconds` |
//! | cannot connect (`ClientConnectorError`) | 503 | `Service unavailable at {ip}:{port}/{Name}` |
//! | closed without response (`ServerDisconnectedError`) | 503 | `Service disconnected: Server disconnected` |
//! | body cut short (`ClientPayloadError`) | 400 | `Payload error: {details}` |
//! | anything else, e.g. a body that is not JSON | 422 | `Failed to parse response: {details}` |
//!
//! [`CallFailure`] is that list; [`CallFailure::status_code`] and
//! [`CallFailure::status_message`] give Python's code and message (the `{details}` are
//! this client's wording, except for an unexpected content type, which reproduces aiohttp's).

use prompting_synapse::python_repr::float_repr;

/// A call that got no usable answer: the client-side failures Python's dendrite turns into
/// a status code and message.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum CallFailure {
    /// The whole call (connect, send, response, body) took longer than its timeout.
    #[error("no complete response within {} seconds", float_repr(*seconds))]
    Timeout {
        /// The call's timeout in seconds (the synapse's `timeout`).
        seconds: f64,
    },
    /// No connection could be made (refused, unreachable, reset during the handshake).
    #[error("cannot connect to {ip}:{port}: {reason}")]
    Connect {
        /// The axon's IP address as text.
        ip: String,
        /// The axon's port.
        port: u16,
        /// The synapse route (`Prompting`).
        route: String,
        /// What the connector said.
        reason: String,
    },
    /// The axon closed the connection without sending a response (a 6.x axon does this
    /// for a body missing a required field).
    #[error("the axon closed the connection without a response")]
    Disconnected,
    /// The response body was cut short or could not be read.
    #[error("the response body could not be read: {reason}")]
    Payload {
        /// What went wrong.
        reason: String,
    },
    /// A response that must be JSON has another content type (e.g. a 6.x axon's
    /// `text/plain` "Internal Server Error" for an unknown route).
    #[error("the response (HTTP {status}) has content type {content_type:?}, not JSON")]
    UnexpectedContentType {
        /// The HTTP status.
        status: u16,
        /// The `Content-Type` (lower case, possibly empty).
        content_type: String,
        /// The URL called.
        url: String,
    },
    /// The response could not be read as a synapse: not JSON, missing fields, bad headers.
    #[error("the response is not a valid synapse: {reason}")]
    InvalidResponse {
        /// What is wrong with it.
        reason: String,
    },
    /// The request could not be made for another reason.
    #[error("the request failed: {reason}")]
    Request {
        /// What went wrong.
        reason: String,
    },
}

impl CallFailure {
    /// The status code Python's dendrite reports for this failure (`dendrite.status_code`).
    pub fn status_code(&self) -> u16 {
        match self {
            CallFailure::Timeout { .. } => 408,
            CallFailure::Connect { .. } | CallFailure::Disconnected => 503,
            CallFailure::Payload { .. } => 400,
            CallFailure::UnexpectedContentType { .. }
            | CallFailure::InvalidResponse { .. }
            | CallFailure::Request { .. } => 422,
        }
    }

    /// The status message Python's dendrite reports for this failure
    /// (`dendrite.status_message`).
    ///
    /// ```
    /// use prompting_transport::dendrite::CallFailure;
    ///
    /// let timeout = CallFailure::Timeout { seconds: 1.0 };
    /// assert_eq!(timeout.status_code(), 408);
    /// assert_eq!(timeout.status_message(), "Request timeout after 1.0 seconds");
    /// ```
    pub fn status_message(&self) -> String {
        match self {
            CallFailure::Timeout { seconds } => {
                format!("Request timeout after {} seconds", float_repr(*seconds))
            }
            CallFailure::Connect {
                ip, port, route, ..
            } => format!("Service unavailable at {ip}:{port}/{route}"),
            CallFailure::Disconnected => "Service disconnected: Server disconnected".to_owned(),
            CallFailure::Payload { reason } => format!("Payload error: {reason}"),
            CallFailure::UnexpectedContentType {
                status,
                content_type,
                url,
            } => format!(
                "Failed to parse response: {status}, message='Attempt to decode JSON with \
                 unexpected mimetype: {content_type}', url='{url}'"
            ),
            CallFailure::InvalidResponse { reason } | CallFailure::Request { reason } => {
                format!("Failed to parse response: {reason}")
            }
        }
    }
}

/// An error of the dendrite itself (not of one call: those are [`CallFailure`]s inside a
/// [`crate::dendrite::DendriteResponse`]).
#[derive(Debug, thiserror::Error)]
pub enum DendriteError {
    /// The HTTP client could not be built (TLS backend initialisation).
    #[error("cannot build the HTTP client: {0}")]
    HttpClient(#[source] reqwest::Error),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_match_python_10_5() {
        let cases = [
            (
                CallFailure::Timeout { seconds: 12.0 },
                408,
                "Request timeout after 12.0 seconds",
            ),
            (
                CallFailure::Timeout { seconds: 0.5 },
                408,
                "Request timeout after 0.5 seconds",
            ),
            (
                CallFailure::Connect {
                    ip: "127.0.0.1".into(),
                    port: 18099,
                    route: "Prompting".into(),
                    reason: "connection refused".into(),
                },
                503,
                "Service unavailable at 127.0.0.1:18099/Prompting",
            ),
            (
                CallFailure::Disconnected,
                503,
                "Service disconnected: Server disconnected",
            ),
            (
                CallFailure::UnexpectedContentType {
                    status: 500,
                    content_type: "text/plain; charset=utf-8".into(),
                    url: "http://127.0.0.1:18093/Nope".into(),
                },
                422,
                "Failed to parse response: 500, message='Attempt to decode JSON with unexpected \
                 mimetype: text/plain; charset=utf-8', url='http://127.0.0.1:18093/Nope'",
            ),
            (
                CallFailure::Payload {
                    reason: "body cut".into(),
                },
                400,
                "Payload error: body cut",
            ),
        ];
        for (failure, code, message) in cases {
            assert_eq!(failure.status_code(), code, "{failure:?}");
            assert_eq!(failure.status_message(), message, "{failure:?}");
        }
    }
}
