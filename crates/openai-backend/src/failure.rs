//! What went wrong with one upstream call, whether it is worth another attempt, and the
//! caller-safe message for it (never the API key, never the upstream's URL).

use std::time::{Duration, SystemTime};

use prompting_miner::MinerError;
use reqwest::StatusCode;
use reqwest::header::HeaderMap;

use crate::retry::retry_after;
use crate::wire::error_message;

/// Longest upstream message passed on to the caller, in characters.
const MAX_MESSAGE_CHARS: usize = 300;

/// Why a call is worth retrying.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum RetryKind {
    /// 429 Too Many Requests.
    RateLimited,
    /// 5xx.
    ServerError,
    /// The connection could not be made or broke.
    Connection,
    /// The upstream did not answer within `--openai.timeout`.
    Timeout,
}

/// A failed call that another attempt may fix.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Retriable {
    pub kind: RetryKind,
    /// Caller-safe description.
    pub message: String,
    /// How long the upstream asked us to wait.
    pub retry_after: Option<Duration>,
}

impl Retriable {
    /// The error the caller gets when no further attempt is made; `why` says why not.
    pub fn give_up(self, why: &str) -> MinerError {
        let message = format!("{} ({why})", self.message);
        match self.kind {
            RetryKind::RateLimited => MinerError::Overloaded(message),
            _ => MinerError::Backend(message),
        }
    }
}

/// The outcome of a failed call.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Failure {
    /// Try again, maybe on another upstream.
    Retriable(Retriable),
    /// Give up at once with this error.
    Fatal(MinerError),
}

/// Makes upstream text safe to show: the API key is replaced, control characters become
/// spaces, and the text is cut to a reasonable length.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Scrubber<'a> {
    pub api_key: Option<&'a str>,
}

impl Scrubber<'_> {
    pub fn scrub(&self, text: &str) -> String {
        let text = match self.api_key {
            Some(key) if !key.is_empty() => text.replace(key, "<redacted>"),
            _ => text.to_owned(),
        };
        let mut clean: String = text
            .trim()
            .chars()
            .map(|c| if c.is_control() { ' ' } else { c })
            .take(MAX_MESSAGE_CHARS + 1)
            .collect();
        if clean.chars().count() > MAX_MESSAGE_CHARS {
            clean = clean.chars().take(MAX_MESSAGE_CHARS).collect();
            clean.push('…');
        }
        clean
    }
}

/// Classifies a non-2xx answer; `body` is (the start of) its body.
pub(crate) fn from_status(
    status: StatusCode,
    headers: &HeaderMap,
    body: &[u8],
    scrubber: Scrubber<'_>,
) -> Failure {
    let detail = serde_json::from_slice::<serde_json::Value>(body)
        .ok()
        .and_then(|json| error_message(&json))
        .unwrap_or_else(|| String::from_utf8_lossy(body).into_owned());
    let detail = scrubber.scrub(&detail);
    let mut message = format!("upstream returned {status}");
    if !detail.is_empty() {
        message.push_str(": ");
        message.push_str(&detail);
    }
    let retriable = |kind| {
        Failure::Retriable(Retriable {
            kind,
            message: message.clone(),
            retry_after: retry_after(headers, SystemTime::now()),
        })
    };
    match status {
        StatusCode::TOO_MANY_REQUESTS => retriable(RetryKind::RateLimited),
        s if s.is_server_error() && is_validation_failure(&detail) => {
            Failure::Fatal(MinerError::BadRequest(message))
        }
        s if s.is_server_error() => retriable(RetryKind::ServerError),
        StatusCode::BAD_REQUEST
        | StatusCode::PAYLOAD_TOO_LARGE
        | StatusCode::UNPROCESSABLE_ENTITY => Failure::Fatal(MinerError::BadRequest(message)),
        s if s.is_redirection() => Failure::Fatal(MinerError::Backend(format!(
            "{message} (redirects are not followed: check --openai.base_url)"
        ))),
        _ => Failure::Fatal(MinerError::Backend(message)),
    }
}

/// Whether an upstream's 5xx message says it refused the request as invalid rather than
/// failed: llama.cpp's Python server answers 500 with pydantic's "N validation errors: ..."
/// for requests it cannot parse (e.g. an unknown role). Sending the same request again
/// cannot succeed, so such failures are not retried.
fn is_validation_failure(detail: &str) -> bool {
    let detail = detail.to_ascii_lowercase();
    detail.contains("validation error") || detail.contains("validationerror")
}

/// Classifies an error of the HTTP client (connection, TLS, broken body...).
pub(crate) fn from_transport(error: &reqwest::Error, scrubber: Scrubber<'_>) -> Failure {
    // The innermost cause says what happened ("Connection refused", "invalid peer
    // certificate") without the URL that reqwest's own message carries.
    let mut cause: &dyn std::error::Error = error;
    while let Some(source) = cause.source() {
        cause = source;
    }
    let cause = scrubber.scrub(&cause.to_string());
    let (kind, what) = if error.is_timeout() {
        (RetryKind::Timeout, "the upstream call timed out")
    } else if error.is_connect() {
        (RetryKind::Connection, "could not connect to the upstream")
    } else if error.is_body() || error.is_decode() {
        (RetryKind::Connection, "the upstream answer broke off")
    } else {
        (RetryKind::Connection, "the upstream call failed")
    };
    Failure::Retriable(Retriable {
        kind,
        message: format!("{what}: {cause}"),
        retry_after: None,
    })
}

#[cfg(test)]
mod tests {
    use reqwest::header::HeaderValue;

    use super::*;

    const NO_KEY: Scrubber<'static> = Scrubber { api_key: None };

    fn fatal(status: u16, body: &str) -> MinerError {
        let status = StatusCode::from_u16(status).expect("status");
        match from_status(status, &HeaderMap::new(), body.as_bytes(), NO_KEY) {
            Failure::Fatal(error) => error,
            other => panic!("{status} should be fatal, got {other:?}"),
        }
    }

    fn retriable(status: u16, headers: HeaderMap) -> Retriable {
        let status = StatusCode::from_u16(status).expect("status");
        match from_status(
            status,
            &headers,
            b"{\"error\":{\"message\":\"busy\"}}",
            NO_KEY,
        ) {
            Failure::Retriable(retriable) => retriable,
            other => panic!("{status} should be retriable, got {other:?}"),
        }
    }

    #[test]
    fn client_errors_are_fatal_with_the_upstream_message() {
        assert_eq!(
            fatal(401, r#"{"error":{"message":"Incorrect API key provided"}}"#),
            MinerError::Backend(
                "upstream returned 401 Unauthorized: Incorrect API key provided".into()
            )
        );
        assert_eq!(
            fatal(403, "forbidden here"),
            MinerError::Backend("upstream returned 403 Forbidden: forbidden here".into())
        );
        assert_eq!(
            fatal(400, r#"{"error":{"message":"context too long"}}"#),
            MinerError::BadRequest("upstream returned 400 Bad Request: context too long".into())
        );
        assert_eq!(
            fatal(404, ""),
            MinerError::Backend("upstream returned 404 Not Found".into())
        );
        assert!(
            fatal(301, "")
                .to_string()
                .contains("redirects are not followed")
        );
    }

    #[test]
    fn rate_limits_and_server_errors_are_retriable() {
        let mut headers = HeaderMap::new();
        headers.insert("retry-after", HeaderValue::from_static("3"));
        let limited = retriable(429, headers);
        assert_eq!(limited.kind, RetryKind::RateLimited);
        assert_eq!(limited.retry_after, Some(Duration::from_secs(3)));
        assert_eq!(
            limited.message,
            "upstream returned 429 Too Many Requests: busy"
        );
        assert_eq!(
            limited.give_up("gave up after 3 attempts"),
            MinerError::Overloaded(
                "upstream returned 429 Too Many Requests: busy (gave up after 3 attempts)".into()
            )
        );
        for status in [500, 502, 503, 504] {
            let failure = retriable(status, HeaderMap::new());
            assert_eq!(failure.kind, RetryKind::ServerError);
            assert!(matches!(failure.give_up("x"), MinerError::Backend(_)));
        }
    }

    #[test]
    fn server_errors_that_are_validation_failures_are_fatal_bad_requests() {
        // What llama-cpp-python 0.3.36 answers for a message with an unknown role.
        let body = r#"{"error":{"message":"7 validation errors:\n  {'type': 'literal_error', 'loc': ('body', 'messages', 0, 'ChatCompletionRequestSystemMessage', 'role'), 'msg': \"Input should be 'system'\"}","type":"internal_server_error","param":null,"code":null}}"#;
        let error = fatal(500, body);
        assert!(
            matches!(&error, MinerError::BadRequest(m)
                if m.starts_with("upstream returned 500 Internal Server Error: 7 validation errors:")),
            "{error:?}"
        );
        assert!(matches!(
            fatal(503, "1 validation error for ChatCompletionRequest"),
            MinerError::BadRequest(_)
        ));
        // Other server errors stay retriable.
        assert_eq!(
            retriable(500, HeaderMap::new()).kind,
            RetryKind::ServerError
        );
    }

    #[test]
    fn scrubbing_removes_the_key_control_characters_and_length() {
        let scrubber = Scrubber {
            api_key: Some("sk-secret"),
        };
        assert_eq!(
            scrubber.scrub(" bad key sk-secret\nsee\tdocs "),
            "bad key <redacted> see docs"
        );
        let long = "é".repeat(1000);
        let cut = scrubber.scrub(&long);
        assert_eq!(cut.chars().count(), MAX_MESSAGE_CHARS + 1);
        assert!(cut.ends_with('…'));
    }
}
