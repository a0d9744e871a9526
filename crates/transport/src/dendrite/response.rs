//! Reading an axon's answer the way Python's dendrite does, for every axon version:
//!
//! * bittensor 6.4.x answers errors with HTTP 500, body `{}` and the real code and message
//!   in `bt_header_axon_status_code`/`_message`;
//! * 6.5+ answers with the code as the HTTP status and `{"message": ...}`;
//! * 10.x success responses carry the whole synapse but no axon nonce, uuid or signature
//!   in their headers, while its error responses do.

use std::time::Duration;

use http::HeaderMap;
use prompting_synapse::{Synapse, SynapseBody, SynapseHeaders};
use serde_json::Value;

use crate::dendrite::error::CallFailure;

/// What one call gave, as Python's dendrite leaves it in the synapse: the status code and
/// message are `synapse.dendrite.status_code`/`status_message` — the axon's when it
/// answered, the client-side failure's otherwise.
#[derive(Debug, Clone, PartialEq)]
pub struct DendriteResponse<B> {
    /// The synapse as sent, filled with the answer: the body's mutable fields (e.g.
    /// `completion`), the terminals' fields and status.
    pub synapse: Synapse<B>,
    /// The status code: 200 on success, the axon's code for its refusals and errors, or
    /// the code Python gives a client-side failure (see [`CallFailure`]).
    pub status_code: u16,
    /// The status message that goes with [`DendriteResponse::status_code`].
    pub status_message: String,
    /// How long the call took, when the axon answered (Python's `dendrite.process_time`,
    /// which it leaves unset after a client-side failure).
    pub process_time: Option<Duration>,
    /// Whether the response's `bt_header_axon_signature` verified against the called
    /// axon's hotkey; `None` when the response carries no axon signature (a 10.x axon signs
    /// only its error responses).
    pub axon_signature_verified: Option<bool>,
    /// The client-side failure, when there was one.
    pub failure: Option<CallFailure>,
}

impl<B: SynapseBody> DendriteResponse<B> {
    /// Whether the call succeeded (status 200).
    pub fn is_success(&self) -> bool {
        self.status_code == 200
    }

    /// The response to a call that ended with `failure`: the code and message Python
    /// gives it are set in `synapse.dendrite`.
    pub fn from_failure(mut synapse: Synapse<B>, failure: CallFailure) -> DendriteResponse<B> {
        let status_code = failure.status_code();
        let status_message = failure.status_message();
        synapse.dendrite.status_code = Some(status_code);
        synapse.dendrite.status_message = Some(status_message.clone());
        DendriteResponse {
            synapse,
            status_code,
            status_message,
            process_time: None,
            axon_signature_verified: None,
            failure: Some(failure),
        }
    }

    /// The response to a call the axon answered, `synapse` already filled by
    /// [`read_response`] (or the streaming equivalent). The signature of the axon's answer
    /// is checked against `axon_hotkey`, the hotkey of the axon that was called.
    pub fn answered(
        mut synapse: Synapse<B>,
        http_status: u16,
        axon_hotkey: &str,
        elapsed: Duration,
    ) -> DendriteResponse<B> {
        synapse.dendrite.process_time = Some(elapsed.as_secs_f64());
        let axon_signature_verified = verify_axon_signature(&synapse, axon_hotkey);
        DendriteResponse {
            status_code: synapse.dendrite.status_code.unwrap_or(http_status),
            status_message: synapse.dendrite.status_message.clone().unwrap_or_default(),
            synapse,
            process_time: Some(elapsed),
            axon_signature_verified,
            failure: None,
        }
    }
}

/// A response as received: what [`read_response`] interprets.
#[derive(Debug, Clone)]
pub struct RawResponse {
    /// The HTTP status.
    pub status: u16,
    /// The response headers.
    pub headers: HeaderMap,
    /// The whole body.
    pub body: Vec<u8>,
    /// The URL that was called (it appears in one of Python's error messages).
    pub url: String,
}

/// Folds `raw`, the answer to `synapse`, into `synapse` as Python's dendrite does
/// (`response.json()` then `process_server_response`): the body must be a JSON object
/// (content type `application/json` or `application/*+json`); on HTTP 200 it is the
/// axon's synapse, otherwise its `"message"` is the error; the response headers' terminal
/// fields then overwrite (which is how a 6.4.x error's real code replaces its HTTP 500),
/// and the dendrite's status becomes the axon's.
///
/// Errors are the failures Python reports with 422 `Failed to parse response: ...`;
/// `synapse` is unchanged then.
pub fn read_response<B: SynapseBody>(
    synapse: &mut Synapse<B>,
    raw: &RawResponse,
) -> Result<(), CallFailure> {
    let content_type = raw
        .headers
        .get(http::header::CONTENT_TYPE)
        .map(|value| String::from_utf8_lossy(value.as_bytes()).to_lowercase())
        .unwrap_or_default();
    if !is_json_content_type(&content_type) {
        return Err(CallFailure::UnexpectedContentType {
            status: raw.status,
            content_type,
            url: raw.url.clone(),
        });
    }
    let invalid = |reason: String| CallFailure::InvalidResponse { reason };
    if raw.body.trim_ascii().is_empty() {
        return Err(invalid("the body is empty".to_owned()));
    }
    match serde_json::from_slice::<Value>(&raw.body) {
        Ok(Value::Object(_)) => {}
        Ok(_) => return Err(invalid("the body is not a JSON object".to_owned())),
        Err(error) => return Err(invalid(format!("the body is not JSON: {error}"))),
    }
    let headers = SynapseHeaders::from_header_map(&raw.headers)
        .map_err(|error| invalid(error.to_string()))?;
    let mut filled = synapse.clone();
    filled
        .apply_response(raw.status, &headers, &raw.body)
        .map_err(|error| invalid(error.to_string()))?;
    *synapse = filled;
    Ok(())
}

/// aiohttp's test for a JSON response: the content type matches
/// `^application/(?:[\w.+-]+?\+)?json` (a prefix match: parameters may follow).
pub fn is_json_content_type(content_type: &str) -> bool {
    let Some(subtype) = content_type.strip_prefix("application/") else {
        return false;
    };
    if subtype.starts_with("json") {
        return true;
    }
    let is_word = |c: char| c.is_alphanumeric() || matches!(c, '_' | '.' | '+' | '-');
    subtype
        .char_indices()
        .take_while(|&(_, c)| is_word(c))
        .any(|(index, c)| c == '+' && index > 0 && subtype[index..].starts_with("+json"))
}

/// Whether the axon's signature in `synapse` (over [`Synapse::axon_signing_message`])
/// verifies against `axon_hotkey`; `None` without a signature. A malformed signature or
/// hotkey does not verify.
pub fn verify_axon_signature<B: SynapseBody>(
    synapse: &Synapse<B>,
    axon_hotkey: &str,
) -> Option<bool> {
    let signature = synapse.axon.signature.as_deref()?;
    let message = synapse.axon_signing_message();
    Some(prompting_keys::verify_hex(axon_hotkey, message.as_bytes(), signature).unwrap_or(false))
}

#[cfg(test)]
mod tests {
    use super::*;
    use prompting_synapse::Prompting;

    fn raw(status: u16, content_type: Option<&str>, body: &str) -> RawResponse {
        let mut headers = HeaderMap::new();
        if let Some(content_type) = content_type {
            headers.insert(
                http::header::CONTENT_TYPE,
                content_type.parse().expect("header value"),
            );
        }
        RawResponse {
            status,
            headers,
            body: body.as_bytes().to_vec(),
            url: "http://127.0.0.1:1/Prompting".to_owned(),
        }
    }

    fn request() -> Synapse<Prompting> {
        Synapse::new(Prompting::new(vec!["user".into()], vec!["hi".into()]))
    }

    #[test]
    fn json_content_types_as_aiohttp() {
        for yes in [
            "application/json",
            "application/json; charset=utf-8",
            "application/problem+json",
            "application/vnd.api+json; x=1",
        ] {
            assert!(is_json_content_type(yes), "{yes}");
        }
        for no in [
            "",
            "text/plain; charset=utf-8",
            "text/event-stream",
            "application/+json",
            "application/x json",
            "application/octet-stream",
        ] {
            assert!(!is_json_content_type(no), "{no}");
        }
    }

    #[test]
    fn not_json_bodies_fail_like_python() {
        let cases = [
            raw(
                500,
                Some("text/plain; charset=utf-8"),
                "Internal Server Error",
            ),
            raw(200, Some("application/json"), "  "),
            raw(200, Some("application/json"), "[1]"),
            raw(403, Some("application/json"), "nope"),
            raw(200, Some("application/json"), r#"{"roles": ["user"]}"#),
        ];
        for case in cases {
            let mut synapse = request();
            let before = synapse.clone();
            let failure = read_response(&mut synapse, &case).expect_err("must fail");
            assert_eq!(failure.status_code(), 422, "{failure:?}");
            assert!(
                failure
                    .status_message()
                    .starts_with("Failed to parse response: "),
                "{failure:?}"
            );
            assert_eq!(synapse, before, "unchanged on failure");
        }
    }

    #[test]
    fn error_status_takes_the_message() {
        let mut synapse = request();
        read_response(
            &mut synapse,
            &raw(429, Some("application/json"), r#"{"message": "slow down"}"#),
        )
        .expect("read");
        assert_eq!(synapse.dendrite.status_code, Some(429));
        assert_eq!(
            synapse.dendrite.status_message.as_deref(),
            Some("slow down")
        );
        let response = DendriteResponse::answered(synapse, 429, "5Axon", Duration::ZERO);
        assert_eq!(response.status_code, 429);
        assert_eq!(response.axon_signature_verified, None);
        assert!(!response.is_success());
    }

    #[test]
    fn failures_fill_the_dendrite_terminal() {
        let response =
            DendriteResponse::from_failure(request(), CallFailure::Timeout { seconds: 2.5 });
        assert_eq!(response.status_code, 408);
        assert_eq!(response.status_message, "Request timeout after 2.5 seconds");
        assert_eq!(response.synapse.dendrite.status_code, Some(408));
        assert_eq!(response.process_time, None);
    }
}
