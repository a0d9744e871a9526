//! Reading a successful upstream answer: bounded body reads and the full-completion parse.

use prompting_miner::{CompletionReport, MinerError, TokenUsage};
use reqwest::Response;

use crate::failure::{Failure, Scrubber, from_transport};
use crate::wire::{ChatCompletion, Usage};

/// Largest full completion accepted, in bytes.
pub(crate) const MAX_COMPLETION_BYTES: usize = 16 << 20;

/// Largest part of an error body read for its message, in bytes.
pub(crate) const MAX_ERROR_BODY_BYTES: usize = 64 << 10;

/// Reads at most `limit` bytes of the body; the flag tells whether more was left unread.
pub(crate) async fn read_limited(
    mut response: Response,
    limit: usize,
) -> Result<(Vec<u8>, bool), reqwest::Error> {
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await? {
        let room = limit - body.len();
        if chunk.len() > room {
            body.extend_from_slice(&chunk[..room]);
            return Ok((body, true));
        }
        body.extend_from_slice(&chunk);
    }
    Ok((body, false))
}

/// A full completion: the first choice's text, why it ended, what it cost.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Answer {
    pub text: String,
    pub finish_reason: Option<String>,
    pub usage: Option<TokenUsage>,
}

impl Answer {
    /// Writes the finish reason and usage into `report`; returns the text.
    pub fn record(self, report: &CompletionReport) -> String {
        report.clear();
        if let Some(reason) = &self.finish_reason
            && !report.set_finish_reason(reason)
        {
            tracing::debug!(reason = %reason, "ignoring an unusual finish_reason from the upstream");
        }
        if let Some(usage) = self.usage {
            report.set_usage(usage);
        }
        self.text
    }
}

/// Reads a full chat completion.
pub(crate) async fn read_completion(
    response: Response,
    scrubber: Scrubber<'_>,
) -> Result<Answer, Failure> {
    let (body, truncated) = read_limited(response, MAX_COMPLETION_BYTES)
        .await
        .map_err(|e| from_transport(&e, scrubber))?;
    if truncated {
        return Err(Failure::Fatal(MinerError::Backend(format!(
            "the upstream answer is larger than {} MiB",
            MAX_COMPLETION_BYTES >> 20
        ))));
    }
    parse_completion(&body, scrubber).map_err(Failure::Fatal)
}

/// Parses a full chat completion body: `choices[0].message.content`, its `finish_reason` and
/// the `usage`.
pub(crate) fn parse_completion(body: &[u8], scrubber: Scrubber<'_>) -> Result<Answer, MinerError> {
    let completion: ChatCompletion = serde_json::from_slice(body).map_err(|e| {
        MinerError::Backend(format!(
            "the upstream answer is not a valid chat completion: {}",
            scrubber.scrub(&e.to_string())
        ))
    })?;
    let usage = completion.usage.map(Usage::into);
    let choice = completion
        .into_first_choice()
        .map_err(|why| MinerError::Backend(why.to_owned()))?;
    let finish_reason = choice.finish_reason.clone();
    let text = choice
        .into_content()
        .map_err(|why| MinerError::Backend(why.to_owned()))?;
    Ok(Answer {
        text,
        finish_reason,
        usage,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const NO_KEY: Scrubber<'static> = Scrubber { api_key: None };

    #[test]
    fn malformed_and_empty_answers_are_clear_backend_errors() {
        let error = parse_completion(b"{not json", NO_KEY).expect_err("malformed");
        assert!(
            matches!(&error, MinerError::Backend(m) if m.starts_with("the upstream answer is not a valid chat completion")),
            "{error:?}"
        );
        assert_eq!(
            parse_completion(br#"{"choices":[]}"#, NO_KEY),
            Err(MinerError::Backend(
                "the upstream answer has no choices".into()
            ))
        );
        assert_eq!(
            parse_completion(br#"{"choices":[{"message":{"content":"ok"}}]}"#, NO_KEY),
            Ok(Answer {
                text: "ok".into(),
                finish_reason: None,
                usage: None
            })
        );
    }
}
