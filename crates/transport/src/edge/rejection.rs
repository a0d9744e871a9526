//! Why the axon refuses a request, whatever its protocol, and how each wire shows it: the one
//! place where errors become responses.
//!
//! Every protocol route returns a [`Rejection`]; the wire decides its shape:
//!
//! | wire | shape | where |
//! | --- | --- | --- |
//! | btauth/1 JSON (`POST /Prompting`, bittensor 11) | `{"message", "class"?}`, status as HTTP code | [`IntoResponse`] |
//! | OpenAI-compatible | `{"error": {"message", "type", "code"}}` | [`OpenAiRejection`] |
//! | gRPC | a status code and message | [`Rejection::grpc_code`], `From<Rejection> for Status` |
//! | legacy synapse | the signed synapse with `bt_header_axon_status_*` | [`Rejection::legacy_message`] (the envelope is the legacy module's answer, errors or not) |
//!
//! Every message is safe to show the caller: none echoes a secret, and the pipeline's and the
//! btauth/1 verifier's messages are written for callers.

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use prompting_miner::MinerError;
use serde::Serialize;
use tonic::{Code, Status};

use super::body::BodyReadError;
use crate::api_key::ApiKeyError;
use crate::btauth::{BtAuthError, ErrorClass};
use crate::deadline::TimeoutError;

/// A refused request.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum Rejection {
    /// The request cannot be read: a header, the JSON body, a gRPC frame (400,
    /// `INVALID_ARGUMENT`).
    #[error("{0}")]
    Malformed(String),
    /// Something this server does not implement, e.g. a compressed gRPC message (400,
    /// `UNIMPLEMENTED`).
    #[error("{0}")]
    Unsupported(&'static str),
    /// The body is too large, too slow or broken (413, 408 or 400).
    #[error(transparent)]
    Body(#[from] BodyReadError),
    /// The request's timeout is unusable (400, `INVALID_ARGUMENT`).
    #[error(transparent)]
    Timeout(#[from] TimeoutError),
    /// A legacy request whose signature, nonce or body hash does not verify (401), with
    /// bittensor's reason.
    #[error("Not Verified with error: {0}")]
    NotVerified(String),
    /// A btauth/1 request that does not verify (401, `UNAUTHENTICATED`).
    #[error(transparent)]
    BtAuth(#[from] BtAuthError),
    /// A call that reached a handler without a verified caller (401, `UNAUTHENTICATED`).
    #[error("btauth/1 verification is required")]
    Unauthenticated,
    /// An OpenAI-compatible request without a valid `--openai_api.key` bearer key (401).
    #[error(transparent)]
    ApiKey(#[from] ApiKeyError),
    /// The pipeline's answer: blacklisted, overloaded, timed out, backend failure, bad request.
    #[error(transparent)]
    Miner(#[from] MinerError),
    /// No synapse of that name (404).
    #[error(
        "Synapse name '{name}' not found. Available synapses [{}]",
        quoted(available)
    )]
    UnknownSynapse {
        /// The requested name (the path without its `/`).
        name: String,
        /// The synapses served.
        available: &'static [&'static str],
    },
}

/// `['A', 'B']` without the brackets, as Python prints a list of strings.
fn quoted(names: &[&str]) -> String {
    names
        .iter()
        .map(|name| format!("'{name}'"))
        .collect::<Vec<_>>()
        .join(", ")
}

impl Rejection {
    /// The HTTP status (the legacy and JSON wires send it as the HTTP code; gRPC's metrics
    /// count it).
    pub fn status(&self) -> u16 {
        match self {
            Rejection::Malformed(_) | Rejection::Unsupported(_) | Rejection::Timeout(_) => 400,
            Rejection::Body(error) => error.status(),
            Rejection::NotVerified(_)
            | Rejection::BtAuth(_)
            | Rejection::Unauthenticated
            | Rejection::ApiKey(_) => 401,
            Rejection::Miner(error) => error.status_code(),
            Rejection::UnknownSynapse { .. } => 404,
        }
    }

    /// The bittensor error class of a btauth/1 failure.
    pub fn class(&self) -> Option<ErrorClass> {
        match self {
            Rejection::BtAuth(error) => Some(error.class()),
            _ => None,
        }
    }

    /// The status message of the legacy wire, worded like the Python axon where it has one;
    /// `request_timeout` is the synapse's own `timeout`, which its timeout message names.
    pub fn legacy_message(&self, request_timeout: f64) -> String {
        match self {
            Rejection::Miner(error) => match error {
                MinerError::Blacklisted(reason) => {
                    format!("Forbidden. Key is blacklisted: {reason}.")
                }
                MinerError::Timeout(_) => format!(
                    "Timeout: no answer within the request timeout of {request_timeout} seconds"
                ),
                MinerError::Overloaded(reason) => format!("Service unavailable: {reason}"),
                MinerError::Preempted => format!("Service unavailable: {error}"),
                MinerError::BadRequest(reason) => format!("Bad request: {reason}"),
                MinerError::Backend(reason) => {
                    format!("Internal server error with error: {reason}")
                }
            },
            other => other.to_string(),
        }
    }

    /// The legacy wire's answer when no synapse could be built (an unknown route): the
    /// status as HTTP code and in `bt_header_axon_status_code`, the message in
    /// `bt_header_axon_status_message` and the body's `"message"`, unsigned.
    pub fn into_legacy_unsigned(self) -> Response {
        let message = self.to_string();
        let status = self.status();
        (
            http_status(status),
            [
                ("bt_header_axon_status_code", status.to_string()),
                ("bt_header_axon_status_message", message.clone()),
            ],
            Json(serde_json::json!({ "message": message })),
        )
            .into_response()
    }

    /// The gRPC code of this refusal.
    pub fn grpc_code(&self) -> Code {
        match self {
            Rejection::Malformed(_) | Rejection::Timeout(_) => Code::InvalidArgument,
            Rejection::Unsupported(_) => Code::Unimplemented,
            Rejection::Body(BodyReadError::TooLarge { .. }) => Code::ResourceExhausted,
            Rejection::Body(BodyReadError::TimedOut { .. }) => Code::DeadlineExceeded,
            Rejection::Body(BodyReadError::Broken(_)) => Code::InvalidArgument,
            Rejection::NotVerified(_)
            | Rejection::BtAuth(_)
            | Rejection::Unauthenticated
            | Rejection::ApiKey(_) => Code::Unauthenticated,
            Rejection::Miner(error) => match error {
                MinerError::BadRequest(_) => Code::InvalidArgument,
                MinerError::Blacklisted(_) => Code::PermissionDenied,
                MinerError::Timeout(_) => Code::DeadlineExceeded,
                MinerError::Backend(_) => Code::Internal,
                MinerError::Overloaded(_) | MinerError::Preempted => Code::ResourceExhausted,
            },
            Rejection::UnknownSynapse { .. } => Code::NotFound,
        }
    }
}

/// The gRPC status of a refusal: [`Rejection::grpc_code`] with the refusal's message.
impl From<Rejection> for Status {
    fn from(rejection: Rejection) -> Status {
        Status::new(rejection.grpc_code(), rejection.to_string())
    }
}

/// The HTTP status a gRPC code stands for in the request metrics: the inverse of
/// [`Rejection::grpc_code`] for the pipeline's codes, `OK` → 200, `UNAUTHENTICATED` → 401,
/// `UNIMPLEMENTED` → 400, and 500 for the others.
pub fn http_status_of_grpc(code: Code) -> u16 {
    match code {
        Code::Ok => 200,
        Code::InvalidArgument | Code::Unimplemented => 400,
        Code::Unauthenticated => 401,
        Code::PermissionDenied => 403,
        Code::NotFound => 404,
        Code::DeadlineExceeded => 408,
        Code::ResourceExhausted => 503,
        _ => 500,
    }
}

fn http_status(status: u16) -> StatusCode {
    StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
}

/// The btauth/1 JSON wire (bittensor 11's `POST /Prompting`): `{"message": …}` plus
/// `"class"` for authentication failures, with the status as HTTP code.
impl IntoResponse for Rejection {
    fn into_response(self) -> Response {
        let status = http_status(self.status());
        let message = self.to_string();
        let body = match self.class() {
            Some(class) => serde_json::json!({ "message": message, "class": class.as_str() }),
            None => serde_json::json!({ "message": message }),
        };
        (status, Json(body)).into_response()
    }
}

/// A refusal on the OpenAI-compatible routes: OpenAI's error shape.
#[derive(Debug)]
pub struct OpenAiRejection(pub Rejection);

impl<E: Into<Rejection>> From<E> for OpenAiRejection {
    fn from(error: E) -> Self {
        OpenAiRejection(error.into())
    }
}

/// OpenAI's error body: `{"error": {"message", "type", "code"}}`.
#[derive(Debug, Serialize)]
pub struct OpenAiErrorBody {
    /// The error.
    pub error: OpenAiErrorDetail,
}

/// The inside of [`OpenAiErrorBody`].
#[derive(Debug, Serialize)]
pub struct OpenAiErrorDetail {
    /// What went wrong.
    pub message: String,
    /// OpenAI's error type for the status (`invalid_request_error`, ...).
    #[serde(rename = "type")]
    pub kind: &'static str,
    /// The btauth/1 error class of an authentication failure, `invalid_api_key` for a
    /// missing or wrong `--openai_api.key` bearer key, else `null`.
    pub code: Option<&'static str>,
}

impl OpenAiRejection {
    /// The error body.
    pub fn body(&self) -> OpenAiErrorBody {
        let status = self.0.status();
        OpenAiErrorBody {
            error: OpenAiErrorDetail {
                message: self.0.to_string(),
                kind: openai_error_type(status),
                code: match &self.0 {
                    Rejection::ApiKey(_) => Some("invalid_api_key"),
                    other => other.class().map(ErrorClass::as_str),
                },
            },
        }
    }
}

impl IntoResponse for OpenAiRejection {
    fn into_response(self) -> Response {
        (http_status(self.0.status()), Json(self.body())).into_response()
    }
}

/// OpenAI's error type for an HTTP status.
fn openai_error_type(status: u16) -> &'static str {
    match status {
        400 | 413 => "invalid_request_error",
        401 => "authentication_error",
        403 => "permission_error",
        408 => "timeout",
        503 => "rate_limit_error",
        _ => "server_error",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn miner_errors() -> [(MinerError, u16, Code); 6] {
        [
            (
                MinerError::BadRequest("x".into()),
                400,
                Code::InvalidArgument,
            ),
            (
                MinerError::Blacklisted("x".into()),
                403,
                Code::PermissionDenied,
            ),
            (MinerError::Timeout(1.0), 408, Code::DeadlineExceeded),
            (MinerError::Backend("x".into()), 500, Code::Internal),
            (
                MinerError::Overloaded("x".into()),
                503,
                Code::ResourceExhausted,
            ),
            (MinerError::Preempted, 503, Code::ResourceExhausted),
        ]
    }

    #[test]
    fn pipeline_errors_keep_their_status_and_map_to_grpc_codes() {
        for (error, http, code) in miner_errors() {
            let rejection = Rejection::from(error.clone());
            assert_eq!(rejection.status(), http, "{error:?}");
            let status = Status::from(rejection);
            assert_eq!(status.code(), code);
            assert_eq!(status.message(), error.to_string());
            assert_eq!(http_status_of_grpc(code), http);
        }
    }

    #[test]
    fn legacy_messages_are_pythons() {
        let message = |error: MinerError| Rejection::from(error).legacy_message(12.5);
        assert_eq!(
            message(MinerError::Blacklisted(
                "Hotkey 5X is not registered".into()
            )),
            "Forbidden. Key is blacklisted: Hotkey 5X is not registered."
        );
        assert_eq!(
            message(MinerError::Timeout(3.0)),
            "Timeout: no answer within the request timeout of 12.5 seconds"
        );
        assert_eq!(
            message(MinerError::Backend("kaboom".into())),
            "Internal server error with error: kaboom"
        );
        let unknown = Rejection::UnknownSynapse {
            name: "Nope".into(),
            available: &["Prompting", "StreamPrompting"],
        };
        assert_eq!(
            unknown.legacy_message(12.0),
            "Synapse name 'Nope' not found. Available synapses ['Prompting', 'StreamPrompting']"
        );
        assert_eq!(unknown.status(), 404);
    }

    #[tokio::test]
    async fn json_and_openai_shapes() {
        use http_body_util::BodyExt;

        async fn json(response: Response) -> (u16, serde_json::Value) {
            let status = response.status().as_u16();
            let body = response
                .into_body()
                .collect()
                .await
                .expect("body")
                .to_bytes();
            (status, serde_json::from_slice(&body).expect("JSON"))
        }
        let replayed = Rejection::BtAuth(BtAuthError::Replayed);
        assert_eq!(
            json(replayed.clone().into_response()).await,
            (
                401,
                serde_json::json!({
                    "message": "this nonce was already accepted from this hotkey",
                    "class": "ReplayedRequest",
                })
            )
        );
        assert_eq!(
            json(OpenAiRejection(replayed).into_response()).await,
            (
                401,
                serde_json::json!({"error": {
                    "message": "this nonce was already accepted from this hotkey",
                    "type": "authentication_error",
                    "code": "ReplayedRequest",
                }})
            )
        );
        let overloaded = Rejection::from(MinerError::Overloaded("queue full".into()));
        assert_eq!(
            json(OpenAiRejection(overloaded).into_response()).await,
            (
                503,
                serde_json::json!({"error": {
                    "message": "overloaded: queue full",
                    "type": "rate_limit_error",
                    "code": null,
                }})
            )
        );
    }

    #[test]
    fn body_and_frame_failures_have_grpc_codes() {
        let code = |rejection: Rejection| rejection.grpc_code();
        assert_eq!(
            code(BodyReadError::TooLarge { limit: 1 }.into()),
            Code::ResourceExhausted
        );
        assert_eq!(
            code(BodyReadError::TimedOut { seconds: 1.0 }.into()),
            Code::DeadlineExceeded
        );
        assert_eq!(code(Rejection::Unsupported("x")), Code::Unimplemented);
        assert_eq!(
            code(TimeoutError::NotPositive(-1.0).into()),
            Code::InvalidArgument
        );
        assert_eq!(code(Rejection::Unauthenticated), Code::Unauthenticated);
    }
}
